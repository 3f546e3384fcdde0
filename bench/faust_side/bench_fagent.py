"""The benchmark's Faust worker: one agent, ``double``, on 8 partitions.

Runs only under Faust's virtualenv, imported as ``bench_fagent`` with
``bench/faust_side`` on ``PYTHONPATH``::

    BENCH_FAUST_BROKER=kafka://127.0.0.1:9092 BENCH_FAUST_ID=fb \\
        python -m faust -A bench_fagent worker -l info --without-web

Faust names the agent's topic ``f"{app_id}-bench_fagent.double"``.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, AsyncIterator

import faust

app = faust.App(
    os.environ.get("BENCH_FAUST_ID", "fb"),
    broker=os.environ["BENCH_FAUST_BROKER"],
    store="memory://",
    datadir=os.environ.get("BENCH_FAUST_DATADIR") or tempfile.mkdtemp(prefix="bench-faust-"),
    web_enabled=False,
    topic_partitions=8,
    topic_replication_factor=1,
    broker_session_timeout=10.0,
    broker_heartbeat_interval=1.0,
    stream_wait_empty=False,
)


@app.agent()
async def double(stream: Any) -> AsyncIterator[Any]:
    async for value in stream:
        yield value * 2
