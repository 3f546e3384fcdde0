"""An App of this library that Faust clients ask, in the interoperability tests.

Served in a process of its own, from the repository root::

    OURS_BROKER=kafka://127.0.0.1:9092 OURS_APP_ID=ours \\
        python -m replies worker tests.faust.ours:app

Configuration, all from the environment:

``OURS_BROKER``
    The broker URL, ``kafka://host:port`` (default: the in-process one).
``OURS_APP_ID``
    The App id (default ``ours``); agent ``double`` serves topic
    ``f"{app_id}-double"``, which is the name a Faust client asks.
``OURS_KAFKA_SETTINGS``
    A JSON object of kafka-python settings, e.g. ``{"session_timeout_ms": 6000}``.

Agents (``AGENTS``):

``double``  replies ``value * 2``.
``keyed``   replies ``{"value": value, "key": <the request key as text>}``.
``flip``    takes a Faust ``Point`` Record (a dict here) and replies with a
            ``Point`` whose coordinates are swapped.
``fail``    raises ``ValueError``: the caller gets an error reply.
``count``   a generator yielding 1, 2, ... value: a Faust caller gets exactly
            one reply (the first value) per request.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterator, Optional

import replies

app = replies.App(
    os.environ.get("OURS_APP_ID", "ours"),
    broker=os.environ.get("OURS_BROKER", "memory://"),
    topic_partitions=2,
    **json.loads(os.environ.get("OURS_KAFKA_SETTINGS") or "{}"),
)


@app.agent()
def double(value: Any) -> Any:
    return value * 2


@app.agent()
def keyed(value: Any, key: Optional[bytes] = None) -> Dict[str, Any]:
    return {"value": value, "key": None if key is None else key.decode()}


@app.agent()
def flip(point: Dict[str, Any]) -> Dict[str, Any]:
    # A Record arrives as a dict with its "__faust" namespace; returning one
    # with the same namespace gives the Faust client a Record back.
    return {"x": point["y"], "y": point["x"], "__faust": point["__faust"]}


@app.agent()
def count(value: int) -> Iterator[int]:
    yield from range(1, value + 1)


@app.agent()
def fail(value: Any) -> Any:
    raise ValueError(f"fail agent refuses {value!r}")


AGENTS = tuple(app.agents)
