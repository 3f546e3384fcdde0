"""A Faust app for the interoperability tests: a worker serving agents.

Runs only under the Faust virtualenv (``setup_venv.py``) and only as
module ``fapp``, with ``tests/faust`` on ``PYTHONPATH``::

    FAPP_BROKER=kafka://127.0.0.1:9092 FAPP_ID=fz \\
        .venv-faust/bin/python -m faust -A fapp worker -l info

(run it from a scratch directory: Faust creates ``<app id>-data/`` in the
working directory unless ``FAPP_DATADIR`` says otherwise).

Configuration, all from the environment:

``FAPP_BROKER``
    Faust broker URL, ``kafka://host:port`` (several: ``;``-separated).
``FAPP_ID``
    The app id (default ``fz``).  It is also the consumer group.
``FAPP_TOPIC_PREFIX``
    Empty (the default): every agent keeps Faust's own topic name,
    ``f"{app_id}-{module}.{function}"``, i.e. ``fz-fapp.double``.  Faust
    builds it from the agent's name, ``mode.utils.objects.canonshortname``
    of the function (``__module__`` + ``__name__``); that is why this
    module must be imported as ``fapp``: imported as ``tests.faust.fapp``
    the topic would be ``fz-tests.faust.fapp.double``, and run as a script
    (``__main__``) mode guesses the name from the package folders, in
    reverse order here: ``fz-faust.tests.fapp.double``.  Non-empty: agent
    ``double`` reads topic ``f"{prefix}double"`` instead.
``FAPP_PARTITIONS``
    Partitions of the topics Faust creates for its agents (default 1).
``FAPP_DATADIR``
    Faust's data directory (default: a fresh temporary directory).

Agents:

``double``  yields ``value * 2`` for each request (plain JSON values).
``echo``    yields each request value unchanged.
``fail``    raises ``ValueError`` for each request; Faust then sends no
            reply at all, the caller can only time out.
``flip``    takes a ``Point`` record and replies with a ``Point`` whose
            coordinates are swapped (shows how Records look on the wire:
            ``{"x": 1, "y": 2, "__faust": {"ns": "fapp.Point"}}``).
``norm``    takes a ``Point`` record and replies with a plain dict.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, AsyncIterator, Dict, Optional

import faust

BROKER = os.environ.get("FAPP_BROKER", "kafka://127.0.0.1:9092")
APP_ID = os.environ.get("FAPP_ID", "fz")
TOPIC_PREFIX = os.environ.get("FAPP_TOPIC_PREFIX", "")
PARTITIONS = int(os.environ.get("FAPP_PARTITIONS", "1"))
DATADIR = os.environ.get("FAPP_DATADIR") or tempfile.mkdtemp(prefix="fapp-")

app = faust.App(
    APP_ID,
    broker=BROKER,
    store="memory://",
    datadir=DATADIR,
    web_enabled=False,
    topic_partitions=PARTITIONS,
    topic_replication_factor=1,
    # Tests start and stop workers often; do not wait long for a group.
    broker_session_timeout=10.0,
    broker_heartbeat_interval=1.0,
    # Do not wait for in-flight events on shutdown (SIGTERM stops at once).
    stream_wait_empty=False,
)


def _topic(name: str) -> Optional[str]:
    """Topic for agent ``name``: None keeps Faust's default naming."""
    return f"{TOPIC_PREFIX}{name}" if TOPIC_PREFIX else None


class Point(faust.Record):
    """A record; its namespace is ``fapp.Point`` (module + class name)."""

    x: int
    y: int


@app.agent(_topic("double"))
async def double(stream: Any) -> AsyncIterator[Any]:
    async for value in stream:
        yield value * 2


@app.agent(_topic("echo"))
async def echo(stream: Any) -> AsyncIterator[Any]:
    async for value in stream:
        yield value


@app.agent(_topic("fail"))
async def fail(stream: Any) -> AsyncIterator[Any]:
    async for value in stream:
        raise ValueError(f"fail agent refuses {value!r}")
        yield value  # pragma: no cover  (makes this an async generator)


@app.agent(_topic("flip"), value_type=Point)
async def flip(stream: Any) -> AsyncIterator[Point]:
    async for point in stream:
        yield Point(x=point.y, y=point.x)


@app.agent(_topic("norm"), value_type=Point)
async def norm(stream: Any) -> AsyncIterator[Dict[str, int]]:
    async for point in stream:
        yield {"x": point.x, "y": point.y, "sum": point.x + point.y}


def agent_topics() -> Dict[str, str]:
    """Map each agent's short name to the topic it serves."""
    agents: Dict[str, Any] = {"double": double, "echo": echo, "fail": fail, "flip": flip, "norm": norm}
    return {name: str(agent.channel.get_topic_name()) for name, agent in agents.items()}


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit("run me as: python -m faust -A fapp worker (see docstring)")
