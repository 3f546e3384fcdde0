"""A worker module for tests that serve from another process.

Configured by environment: ``REPLIES_TEST_BROKER_URL`` (a kafka:// URL),
``REPLIES_TEST_APP_ID``, and ``REPLIES_TEST_HANDLER_SECONDS`` (how long
``work`` takes per request).
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict

import replies

app = replies.App(
    os.environ.get("REPLIES_TEST_APP_ID", "sample"),
    broker=os.environ.get("REPLIES_TEST_BROKER_URL", "memory://"),
    topic_partitions=4,
    session_timeout_ms=int(os.environ.get("REPLIES_TEST_SESSION_TIMEOUT_MS", "6000")),
    heartbeat_interval_ms=1000,
)


@app.agent(concurrency=4)
def work(value: Any) -> Dict[str, Any]:
    """Reply with the value and which process served it."""
    time.sleep(float(os.environ.get("REPLIES_TEST_HANDLER_SECONDS", "0")))
    return {"value": value, "pid": os.getpid()}


@app.agent()
def fail(value: Any) -> Any:
    raise KeyError(value)
