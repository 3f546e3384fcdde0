"""The agent the benchmark serves with ``python -m replies worker bench.agent:app``.

Configuration from the environment: ``BENCH_BROKER`` (``kafka://host:port``)
and ``BENCH_APP_ID``. The agent ``double`` serves topic
``f"{BENCH_APP_ID}-double"`` with 8 partitions and default agent settings.
"""

from __future__ import annotations

import os
from typing import Any

import replies

app = replies.App(
    os.environ.get("BENCH_APP_ID", "bench"),
    broker=os.environ.get("BENCH_BROKER", "memory://"),
    topic_partitions=8,
)


@app.agent()
def double(value: Any) -> Any:
    return value * 2
