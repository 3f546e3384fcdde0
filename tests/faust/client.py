"""A Faust client that asks agents of another app by topic name.

Runs only under the Faust virtualenv (``setup_venv.py``).  It prints one
JSON line on stdout and nothing else (Faust's own logging goes to
stderr)::

    .venv-faust/bin/python tests/faust/client.py \\
        --broker kafka://127.0.0.1:9092 --topic shop-add ask '{"a": 1}'
    .venv-faust/bin/python tests/faust/client.py \\
        --broker kafka://127.0.0.1:9092 --topic fz-fapp.double join 1 2 3
    .venv-faust/bin/python tests/faust/client.py \\
        --broker kafka://127.0.0.1:9092 --ops '[{"op": "ask", ...}, ...]'

Each value on the command line is JSON.  ``--ops`` takes a JSON list of
operations run in order by one client (one reply topic), each an object::

    {"op": "ask",  "topic": T, "value": V, "key": K, "envelope": false,
     "correlation_id": C, "timeout": S}
    {"op": "join", "topic": T, "values": [...], "key": K, "envelope": false,
     "timeout": S}

``topic`` defaults to ``--topic``; ``key`` is a string sent as UTF-8
bytes, or null; ``envelope`` true sends the request in envelope mode
instead of header mode; ``correlation_id`` defaults to a new uuid4.
A value that is a JSON object carrying ``{"__faust": {"ns":
"fapp.Point"}}`` is sent as a real Faust Record (class ``Point`` below).

Output: ``{"reply_to": ..., "faust": VERSION, "results": [...]}``, one
result per operation: ``{"op", "topic", "ok": true, "value": ...}`` or
``{"ok": false, "error": "timeout" | "<Type>: <message>"}``; an ask result
also names its ``correlation_id``.  Record results are shown with their
``__faust`` field.  Exit status 0 even when operations timed out.

How a Faust app asks an agent that lives in another app
--------------------------------------------------------
Faust can only ask through an ``Agent`` object: ``ask``/``join`` are
agent methods and they send to ``agent.channel``.  So the client declares
a stub agent whose channel is the foreign agent's topic, by its full name
(``app.topic("fz-fapp.double")``; a plain string as channel is used as is
too, with no app-id prefix, but makes the topic "internal", one that Faust
may create with its own settings).  The stub's body never runs: the client
never starts as a worker.  ``agent.ask()`` starts the app in client-only
mode (``App.maybe_start_client``), which starts only the producer, a
group-less consumer for the reply topic and the reply consumer; agents are
not started, so the stub does not consume the foreign topic.  Header mode
versus envelope mode is a per-agent setting in Faust 0.15.3:
``app.agent(channel, use_reply_headers=True)`` (the default) puts reply
topic and correlation id in the ``Faust-Ag-ReplyTo`` and
``Faust-Ag-CorrelationId`` headers; ``use_reply_headers=False`` wraps the
value in a ``@ReqRepRequest`` envelope.  Here each (topic, mode) pair gets
its own stub, named so that names do not clash.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from typing import Any, Dict, List, Optional, Tuple
from uuid import uuid4

import faust
from faust.models.base import maybe_model

STOP_TIMEOUT = 15.0
POINT_NS = os.environ.get("FCLIENT_POINT_NS", "fapp.Point")


class Point(faust.Record, namespace=POINT_NS):
    """Same namespace as ``fapp.Point``, so both sides agree on the wire."""

    x: int
    y: int


def _jsonable(value: Any) -> Any:
    if isinstance(value, faust.Record):
        return value.to_representation()
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _as_value(value: Any) -> Any:
    """Turn JSON objects carrying a known ``__faust`` namespace into Records."""
    return maybe_model(value)


def _as_key(key: Optional[str]) -> Optional[bytes]:
    return None if key is None else key.encode("utf-8")


def build_app(broker: str, app_id: str, reply_to_prefix: Optional[str]) -> faust.App:
    settings: Dict[str, Any] = dict(
        broker=broker,
        store="memory://",
        datadir=tempfile.mkdtemp(prefix="fclient-"),
        web_enabled=False,
        topic_replication_factor=1,
        # The reply stream never acks its last event; waiting for it would
        # hang App.stop() forever ("wait_empty: Waiting for tasks").
        stream_wait_empty=False,
    )
    if reply_to_prefix:
        settings["reply_to_prefix"] = reply_to_prefix
    return faust.App(app_id, **settings)


def declare_stubs(app: faust.App, ops: List[Dict[str, Any]]) -> Dict[Tuple[str, bool], Any]:
    """One stub agent per (topic, envelope) pair used by the operations."""
    stubs: Dict[Tuple[str, bool], Any] = {}
    for op in ops:
        slot = (op["topic"], bool(op.get("envelope", False)))
        if slot in stubs:
            continue
        topic, envelope = slot

        async def stub(stream: Any) -> Any:  # never runs: client-only mode
            async for value in stream:
                yield value

        name = f"stub{len(stubs)}-{'envelope' if envelope else 'headers'}-{topic}"
        stubs[slot] = app.agent(
            app.topic(topic), name=name, use_reply_headers=not envelope
        )(stub)
    return stubs


async def run_op(stubs: Dict[Tuple[str, bool], Any], op: Dict[str, Any]) -> Dict[str, Any]:
    agent = stubs[(op["topic"], bool(op.get("envelope", False)))]
    timeout = float(op.get("timeout", 30.0))
    key = _as_key(op.get("key"))
    result: Dict[str, Any] = {"op": op["op"], "topic": op["topic"]}
    for field in ("envelope", "key", "label"):
        if field in op:
            result[field] = op[field]
    try:
        if op["op"] == "ask":
            cid = op.get("correlation_id") or str(uuid4())
            result["correlation_id"] = cid
            call = agent.ask(_as_value(op.get("value")), key=key, correlation_id=cid)
        elif op["op"] == "join":
            values = [_as_value(v) for v in op["values"]]
            call = agent.join(values, key=key)
        else:
            raise ValueError(f"unknown op {op['op']!r}")
        value = await asyncio.wait_for(call, timeout)
    except asyncio.TimeoutError:
        result.update(ok=False, error="timeout")
    except Exception as exc:  # reported, not raised: one line of JSON out
        result.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    else:
        result.update(ok=True, value=_jsonable(value))
    return result


async def run(app: faust.App, ops: List[Dict[str, Any]]) -> Dict[str, Any]:
    stubs = declare_stubs(app, ops)
    results = []
    try:
        for op in ops:
            results.append(await run_op(stubs, op))
    finally:
        try:
            await asyncio.wait_for(app.stop(), STOP_TIMEOUT)
        except Exception as exc:  # never let shutdown trouble hide results
            print(f"client: app.stop() failed: {exc!r}", file=sys.stderr)
    return {
        "reply_to": app.conf.reply_to,
        "faust": faust.__version__,
        "results": results,
    }


def parse_ops(args: argparse.Namespace) -> List[Dict[str, Any]]:
    ops: List[Dict[str, Any]]
    if args.ops is not None:
        ops = json.loads(args.ops)
    elif args.command == "ask":
        ops = [{"op": "ask", "value": json.loads(args.values[0])}]
    elif args.command == "join":
        ops = [{"op": "join", "values": [json.loads(v) for v in args.values]}]
    else:
        raise SystemExit("give ask VALUE, join VALUE..., or --ops JSON")
    for op in ops:
        op.setdefault("topic", args.topic)
        if op["topic"] is None:
            raise SystemExit("an operation has no topic (use --topic)")
        if args.envelope:
            op.setdefault("envelope", True)
        if args.key is not None:
            op.setdefault("key", args.key)
        op.setdefault("timeout", args.timeout)
    return ops


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker", default=os.environ.get("FAPP_BROKER", "kafka://127.0.0.1:9092"))
    parser.add_argument("--app-id", default=f"fclient-{uuid4().hex[:8]}")
    parser.add_argument("--topic", help="topic of the agent to ask")
    parser.add_argument("--key", help="request key (UTF-8), default none")
    parser.add_argument("--envelope", action="store_true", help="envelope mode, not headers")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per operation")
    parser.add_argument("--reply-to-prefix", help="Faust's reply_to_prefix setting")
    parser.add_argument("--ops", help="JSON list of operations (see module doc)")
    parser.add_argument("command", nargs="?", choices=("ask", "join"))
    parser.add_argument("values", nargs="*", help="JSON values")
    args = parser.parse_args(argv)
    ops = parse_ops(args)
    app = build_app(args.broker, args.app_id, args.reply_to_prefix)
    out = asyncio.run(run(app, ops))
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
