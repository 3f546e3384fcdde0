"""A Flask app that asks an agent per HTTP request.

Run it under any WSGI server; no hooks are needed, even with a pre-fork
server that imports it in its master process::

    export REPLIES_BROKER=kafka://localhost:9092
    gunicorn --preload --workers 2 --threads 8 -k gthread examples.flask_app.app:web
    waitress-serve --threads 16 examples.flask_app.app:web

Each worker process starts the App on its first request, with its own
connections and reply topic, and closes it (deleting the topic) when it
exits.
"""

from __future__ import annotations

import os
from typing import Any, Dict

from flask import Flask

from replies.contrib.flask import Replies

web = Flask(__name__)
web.config["REPLIES"] = {
    "id": "example-web",
    "broker": os.environ.get("REPLIES_BROKER", "memory://"),
    "request_timeout": 10,
}
replies_ext = Replies(web)

#: The agent of examples/flask_app/agents.py.
SQUARE = "example-square"


@web.get("/square/<int:n>")
def square(n: int) -> Dict[str, Any]:
    answer = replies_ext.topic(SQUARE).ask(n)
    assert replies_ext.app is not None
    # Which web process asked, and on which reply topic: one per process.
    return {**answer, "web_pid": os.getpid(), "reply_to": replies_ext.app.reply_to}
