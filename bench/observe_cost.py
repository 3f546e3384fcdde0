"""What counting and tracing cost: ask and join on memory://, on and off.

Usage::

    python bench/observe_cost.py [--asks 3000] [--join 10000] [--rounds 3]
                                 [--broker kafka://HOST:PORT]

By default on ``memory://``, where the library's own overhead is all
there is to see. Runs each mode in its own process (an OpenTelemetry tracer provider is
process-wide), round after round, interleaved, and prints the median of the
rounds: sequential ``ask`` p50, ``join`` throughput, and the CPU time
(all threads of the process, asking and serving) per request of the
``join``, which a busy machine disturbs less than wall-clock figures; and
each mode's ratio to the mode with everything off. Modes:

- ``off``: ``App(metrics=False)``, no tracer provider;
- ``metrics``: the default (counters and latency windows on);
- ``metrics+otel``: also an OpenTelemetry SDK tracer provider with a
  batch span processor (spans exported to nowhere), so every request has a
  client span and a server span.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List

MODES = ("off", "metrics", "metrics+otel")


def measure(mode: str, asks: int, join: int, broker: str) -> Dict[str, float]:
    """One round in this process: ask p50 (s) and join replies/s."""
    if mode == "metrics+otel":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class Nowhere(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Nowhere()))
        trace.set_tracer_provider(provider)

    import replies

    if broker == "memory://":
        broker = f"memory://{uuid.uuid4()}"
    app_id = f"bench-{uuid.uuid4().hex[:6]}"
    server = replies.App(app_id, broker=broker, metrics=mode != "off", topic_partitions=4)

    @server.agent(concurrency=8)
    def echo(value: Any) -> Any:
        return value

    server.serve()
    client = replies.App(f"{app_id}-client", broker=broker, metrics=mode != "off", request_timeout=120)
    asker = client.topic(echo.topic_name)
    try:
        client.start()
        for i in range(200):  # warm up
            asker.ask(i)
        latencies: List[float] = []
        for i in range(asks):
            started = time.perf_counter()
            asker.ask(i)
            latencies.append(time.perf_counter() - started)
        started, cpu = time.perf_counter(), time.process_time()
        assert asker.join(range(join)) == list(range(join))
        rate = join / (time.perf_counter() - started)
        cpu_per_request = (time.process_time() - cpu) / join
    finally:
        client.close()
        server.close()
    return {
        "ask_p50": statistics.median(latencies),
        "join_per_s": rate,
        "join_cpu": cpu_per_request,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--asks", type=int, default=3000)
    parser.add_argument("--join", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--broker", default="memory://")
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.asks, args.join, args.broker)))
        return
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    results: Dict[str, List[Dict[str, float]]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            out = subprocess.run(
                [sys.executable, __file__, "--one", mode, "--asks", str(args.asks),
                 "--join", str(args.join), "--broker", args.broker],
                env=env, capture_output=True, text=True, check=True,
            ).stdout
            results[mode].append(json.loads(out))
    keys = ("ask_p50", "join_per_s", "join_cpu")
    median = {m: {k: statistics.median(r[k] for r in results[m]) for k in keys} for m in MODES}
    base = median["off"]
    print(f"{args.broker}: medians of {args.rounds} rounds")
    print(
        f"{'mode':<14} {'ask p50':>10} {'ratio':>6} {'join/s':>8} {'ratio':>6}"
        f" {'join CPU/request':>17} {'ratio':>6}"
    )
    for mode in MODES:
        got = median[mode]
        print(
            f"{mode:<14} {got['ask_p50'] * 1e3:7.3f} ms {got['ask_p50'] / base['ask_p50']:6.2f}"
            f" {got['join_per_s']:8.0f} {got['join_per_s'] / base['join_per_s']:6.2f}"
            f" {got['join_cpu'] * 1e6:14.1f} us {got['join_cpu'] / base['join_cpu']:6.2f}"
        )


if __name__ == "__main__":
    main()
