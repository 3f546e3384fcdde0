"""The agent the web app asks, served by its own process:

    REPLIES_BROKER=kafka://localhost:9092 python -m replies worker examples.flask_app.agents:app
"""

from __future__ import annotations

import os
from typing import Any, Dict

import replies

app = replies.App("example", broker=os.environ.get("REPLIES_BROKER", "memory://"))


@app.agent(concurrency=8)
def square(n: int) -> Dict[str, Any]:
    """Square a number, saying which process did it."""
    return {"n": n, "square": n * n, "worker_pid": os.getpid()}
