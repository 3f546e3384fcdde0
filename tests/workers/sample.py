"""A worker module for tests that serve from another process.

Configured by environment: ``REPLIES_TEST_BROKER_URL`` (a kafka:// URL),
``REPLIES_TEST_APP_ID``, ``REPLIES_TEST_KAFKA_SETTINGS`` (JSON: the
kafka-python settings the broker under test needs) and
``REPLIES_TEST_HANDLER_SECONDS`` (how long ``work`` takes per request).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict

import replies

app = replies.App(
    os.environ.get("REPLIES_TEST_APP_ID", "sample"),
    broker=os.environ.get("REPLIES_TEST_BROKER_URL", "memory://"),
    topic_partitions=4,
    **json.loads(os.environ.get("REPLIES_TEST_KAFKA_SETTINGS", "{}")),
)


@app.agent(concurrency=4)
def work(value: Any) -> Dict[str, Any]:
    """Reply with the value and which process served it."""
    time.sleep(float(os.environ.get("REPLIES_TEST_HANDLER_SECONDS", "0")))
    return {"value": value, "pid": os.getpid()}


@app.agent()
def fail(value: Any) -> Any:
    raise KeyError(value)
