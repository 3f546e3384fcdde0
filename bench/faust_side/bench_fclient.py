"""The benchmark's Faust client: times asks and a join against a Faust agent.

Runs only under Faust's virtualenv::

    python bench/faust_side/bench_fclient.py --broker kafka://127.0.0.1:9092 \\
        --topic fb-bench_fagent.double --asks 200 --warmup 20 --join 10000 --join-timeout 60

Prints one JSON object per line, one per phase, as soon as the phase ends
(so that a phase that hangs, and the process being killed for it, does not
lose the figures before it):

    {"phase": "version", "faust": V}          Faust's version
    {"phase": "start", "seconds": S}          app made and started, first reply in
    {"phase": "ask", "latencies": [...]}      seconds per sequential ask
    {"phase": "join", "n": N, "seconds": S}   or {"phase": "join", "timeout": T}
    {"phase": "error", "error": "..."}

Faust asks only through an agent object, so a stub agent whose channel is
the serving agent's topic is declared; it never runs (client-only mode).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import faust


def emit(record: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def run(args: argparse.Namespace) -> None:
    emit({"phase": "version", "faust": faust.__version__})
    started = time.perf_counter()
    app = faust.App(
        args.app_id,
        broker=args.broker,
        store="memory://",
        datadir=tempfile.mkdtemp(prefix="bench-fclient-"),
        web_enabled=False,
        topic_replication_factor=1,
        reply_to_prefix=args.reply_to_prefix,
        stream_wait_empty=False,
    )

    async def stub(stream: Any) -> Any:  # never runs: client-only mode
        async for value in stream:
            yield value

    agent = app.agent(app.topic(args.topic), name="bench-stub")(stub)
    try:
        reply = await asyncio.wait_for(agent.ask(1), args.ask_timeout)
        if reply != 2:
            raise RuntimeError(f"double(1) answered {reply!r}")
        emit({"phase": "start", "seconds": time.perf_counter() - started})
        for i in range(args.warmup):
            await asyncio.wait_for(agent.ask(i), args.ask_timeout)
        latencies: List[float] = []
        for i in range(args.asks):
            t = time.perf_counter()
            reply = await asyncio.wait_for(agent.ask(i), args.ask_timeout)
            latencies.append(time.perf_counter() - t)
            if reply != 2 * i:
                raise RuntimeError(f"double({i}) answered {reply!r}")
        emit({"phase": "ask", "latencies": latencies})
        if args.join:
            values = list(range(args.join))
            t = time.perf_counter()
            try:
                joined = await asyncio.wait_for(agent.join(values), args.join_timeout)
            except asyncio.TimeoutError:
                emit({"phase": "join", "n": args.join, "timeout": args.join_timeout})
            else:
                seconds = time.perf_counter() - t
                if joined != [2 * v for v in values]:
                    raise RuntimeError("join answered wrong values")
                emit({"phase": "join", "n": args.join, "seconds": seconds})
    except asyncio.TimeoutError:
        emit({"phase": "error", "error": f"an ask got no reply within {args.ask_timeout} s"})
    except Exception as exc:
        emit({"phase": "error", "error": f"{type(exc).__name__}: {exc}"})
    finally:
        try:
            await asyncio.wait_for(app.stop(), 10)
        except BaseException as exc:  # the results are out already
            print(f"bench_fclient: app.stop() failed: {exc!r}", file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--app-id", default="bench-fclient")
    parser.add_argument("--reply-to-prefix", default="f-reply-")
    parser.add_argument("--asks", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--ask-timeout", type=float, default=30.0)
    parser.add_argument("--join", type=int, default=0)
    parser.add_argument("--join-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
