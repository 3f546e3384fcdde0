"""Django integration: the project's :class:`replies.App` from ``settings.REPLIES``.

Settings::

    REPLIES = {
        "id": "shop",                      # required
        "broker": "kafka://kafka:9092",
        "request_timeout": 10,
        # ... any replies.App setting, kafka-python settings too
    }

Declare agents and ask them anywhere in the project::

    from replies.contrib.django import get_app

    app = get_app()

    @app.agent()
    def add(value):
        return value["a"] + value["b"]

    def view(request):
        return JsonResponse({"sum": add.ask({"a": 1, "b": 2})})

:func:`get_app` makes the App on first call, once per process, without
connecting; it connects when something first asks (or serves), in the
process that does. So ``manage.py check``, ``migrate`` and every other
management command, and the autoreloader's parent process, never touch the
broker; a pre-fork server's workers each get their own connections and
reply topic; the App is closed when the process exits. Nothing runs in
``AppConfig.ready()`` and nothing needs adding to ``INSTALLED_APPS``.

Serve the agents with ``python -m replies worker myproject.agents:app``
(with ``DJANGO_SETTINGS_MODULE`` set). In tests, :func:`serving_in_memory`
serves them in the test process on ``memory://``.

Django is imported only when these functions are called.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from typing import Any, Dict, Iterator, Optional

import replies

__all__ = ["get_app", "serving_in_memory", "SETTING"]

#: The Django setting holding the App's settings.
SETTING = "REPLIES"

# Guards `_app`, the process's App, made on the first get_app().
_lock = threading.Lock()
_app: Optional[replies.App] = None


def get_app() -> replies.App:
    """The project's App, made from ``settings.REPLIES`` on first call.

    Does not connect. Thread-safe; the same App for the whole process.

    Raises:
        django.core.exceptions.ImproperlyConfigured: ``REPLIES`` is
            missing, not a dict, or has no ``id``.
        TypeError, ValueError: a bad App setting.
    """
    global _app
    app = _app
    if app is not None:
        return app
    with _lock:
        if _app is None:
            _app = replies.App(**_settings())
        return _app


def _settings() -> Dict[str, Any]:
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    config = getattr(settings, SETTING, None)
    if not isinstance(config, dict) or not config.get("id"):
        raise ImproperlyConfigured(
            f"settings.{SETTING} must be a dict of replies.App settings with an 'id', "
            f'e.g. {SETTING} = {{"id": "shop", "broker": "kafka://localhost:9092"}}'
        )
    return dict(config)


@contextlib.contextmanager
def serving_in_memory(app: Optional[replies.App] = None) -> Iterator[replies.App]:
    """Serve the project's agents in this process on ``memory://``, for a test.

    Points the App (by default :func:`get_app`'s), which must not be
    started, at a fresh in-process broker, serves its agents in background
    threads, and yields it; views that ask are answered by the agents in
    this process, with no Kafka. On exit the App is closed and pointed back
    at its broker (asking it then raises :class:`replies.ClosedError` until
    it is used in a helper again or started). Usable as a decorator too.

    Raises:
        RuntimeError: the App is already started or serving.
    """
    app = app or get_app()
    if app.reply_consumer is not None or app._workers or app._transport is not None:
        raise RuntimeError(
            f"App {app.id!r} is already started; serving_in_memory() needs an App "
            "that has not connected to a broker"
        )
    broker = app.broker
    app.broker = f"memory://replies-test-{uuid.uuid4()}"
    try:
        if app.agents:
            app.serve()
        app.start()
        yield app
    finally:
        try:
            app.close()
        finally:
            app.broker = broker
