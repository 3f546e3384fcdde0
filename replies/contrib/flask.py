"""Flask integration: one :class:`replies.App` per Flask app, from its config.

Usage::

    from flask import Flask
    from replies.contrib.flask import Replies

    web = Flask(__name__)
    web.config["REPLIES"] = {"id": "shop-web", "broker": "kafka://kafka:9092"}
    replies_ext = Replies(web)

    @web.get("/add/<int:a>/<int:b>")
    def add(a, b):
        return {"sum": replies_ext.topic("shop-add").ask({"a": a, "b": b})}

The App is made when the extension is initialised and connects only when a
request first asks (once per process, whichever thread asks first), so the
module may be imported by a pre-fork server's master (``gunicorn
--preload``): each worker process gets its own connections, threads and
reply topic. The App is closed when the process exits. Nothing else is
needed: no ``post_fork`` or ``worker_exit`` hooks.

Flask is imported only by :meth:`Replies.init_app` callers, never by
``import replies``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import replies

__all__ = ["Replies", "CONFIG_KEY"]

#: The Flask config key holding the App's settings.
CONFIG_KEY = "REPLIES"


class Replies:
    """A Flask extension holding the process's :class:`replies.App`.

    Args:
        flask_app: the Flask application; or call :meth:`init_app` later.
        **defaults: App settings used where ``config["REPLIES"]`` has none.

    Attributes:
        app: the :class:`replies.App` (``None`` before :meth:`init_app`).

    The settings are ``replies.App``'s keywords plus ``id`` (default: the
    Flask app's name) and ``broker``.

    Threading model: the App is shared by all request threads; it starts
    on the first ask in each process (see :class:`replies.App`).
    """

    def __init__(self, flask_app: Any = None, **defaults: Any) -> None:
        self.defaults = defaults
        self.app: Optional[replies.App] = None
        if flask_app is not None:
            self.init_app(flask_app)

    def init_app(self, flask_app: Any) -> replies.App:
        """Make the App from ``flask_app.config["REPLIES"]``. Does not connect.

        Returns:
            The App, also kept in ``flask_app.extensions["replies"]``.

        Raises:
            TypeError: the config is not a dict, or holds an unknown setting.
            ValueError: a bad setting value.
        """
        settings = _settings(flask_app.config.get(CONFIG_KEY), self.defaults)
        settings.setdefault("id", flask_app.name)
        self.app = replies.App(**settings)
        flask_app.extensions["replies"] = self.app
        return self.app

    def topic(self, name: str) -> replies.Topic:
        """A handle to ask the agent serving topic ``name``."""
        return self._app().topic(name)

    def _app(self) -> replies.App:
        if self.app is not None:
            return self.app
        return current_app()

    def __repr__(self) -> str:
        return f"<Replies {self.app!r}>"


def current_app() -> replies.App:
    """The :class:`replies.App` of the Flask app handling this request.

    Raises:
        RuntimeError: outside a Flask application context, or the extension
            was not initialised for the current Flask app.
    """
    import flask

    try:
        return flask.current_app.extensions["replies"]  # type: ignore[no-any-return]
    except KeyError:
        raise RuntimeError(
            "replies is not initialised for this Flask app: call Replies(app) or "
            "Replies().init_app(app)"
        ) from None


def _settings(config: Any, defaults: Dict[str, Any]) -> Dict[str, Any]:
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise TypeError(f"config[{CONFIG_KEY!r}] must be a dict of App settings, not {config!r}")
    return {**defaults, **config}
