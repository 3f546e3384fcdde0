"""Benchmark: time to first reply, ask latency, throughput, memory per ask.

Usage::

    python bench/asks.py                                  # memory://
    python bench/asks.py --broker kafka://127.0.0.1:9092  # a real broker

Prints one block of figures. Everything is measured in this one run, so
compare the figures with each other (ratios), not with another machine's.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import threading
import time
import uuid
from typing import Any, Callable, List

import replies


def rss_kib() -> int:
    """Resident set size of this process, from /proc (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def asks_from_threads(ask: Callable[[Any], Any], threads: int, per_thread: int) -> float:
    """Run ``threads`` threads of ``per_thread`` asks; return asks per second."""

    def run(n: int) -> None:
        for i in range(per_thread):
            value = n * per_thread + i
            assert ask(value) == value

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return threads * per_thread / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--broker", default="memory://bench")
    parser.add_argument("--asks", type=int, default=20_000, help="asks for the memory check")
    parser.add_argument("--threads", type=int, default=20)
    args = parser.parse_args()

    server = replies.App(f"bench-{uuid.uuid4().hex[:6]}", broker=args.broker, topic_partitions=4)

    @server.agent(concurrency=8)
    def echo(value: Any) -> Any:
        return value

    server.serve()
    client = replies.App(f"{server.id}-client", broker=args.broker, request_timeout=60)
    asker = client.topic(echo.topic_name)
    try:
        started = time.perf_counter()
        client.start()
        ready = time.perf_counter()
        asker.ask("first")
        first = time.perf_counter()
        print(f"broker                      {args.broker}")
        print(f"App.start()                 {ready - started:8.3f} s")
        print(f"start -> first reply        {first - started:8.3f} s")

        latencies: List[float] = []
        for i in range(200):
            t = time.perf_counter()
            asker.ask(i)
            latencies.append(time.perf_counter() - t)
        latencies.sort()
        print(f"ask latency p50             {statistics.median(latencies) * 1000:8.2f} ms")
        print(f"ask latency p99             {latencies[int(len(latencies) * 0.99)] * 1000:8.2f} ms")

        t = time.perf_counter()
        assert asker.join(range(5000)) == list(range(5000))
        print(f"join of 5000                {5000 / (time.perf_counter() - t):8.0f} replies/s")

        # Memory: asks after a warm-up must not grow the process with the
        # count. Compare RSS growth over the first and the second half.
        asks_from_threads(asker.ask, args.threads, 50)
        gc.collect()
        base = rss_kib()
        half = args.asks // 2 // args.threads
        rate = asks_from_threads(asker.ask, args.threads, half)
        gc.collect()
        middle = rss_kib()
        asks_from_threads(asker.ask, args.threads, half)
        gc.collect()
        end = rss_kib()
        table = client.reply_consumer.table  # type: ignore[union-attr]
        print(f"{args.threads} threads asking           {rate:8.0f} asks/s")
        print(f"RSS before/middle/end       {base} / {middle} / {end} KiB")
        print(f"RSS growth 1st half         {middle - base:8d} KiB over {half * args.threads} asks")
        print(f"RSS growth 2nd half         {end - middle:8d} KiB over {half * args.threads} asks")
        print(f"correlation table after     {len(table):8d} entries")
    finally:
        client.close()
        server.close()


if __name__ == "__main__":
    main()
