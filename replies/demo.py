"""``python -m replies demo``: an agent and a client in one process."""

from __future__ import annotations

import time
import uuid
from typing import Any, Iterator

from replies.app import App
from replies.errors import RemoteError, ReplyTimeoutError


def build_demo_app(broker: str, **settings: Any) -> App:
    """The demo's App: four small agents.

    Args:
        broker: where to serve and ask them.
        **settings: more App settings (e.g. kafka-python's).
    """
    # A fresh id on a real broker, so reruns never see old topics.
    suffix = "" if broker.startswith("memory://") else f"-{uuid.uuid4().hex[:6]}"
    app = App(
        f"demo{suffix}", broker=broker, topic_partitions=1, request_timeout=30, **settings
    )

    @app.agent()
    def add(value: Any) -> Any:
        return value["a"] + value["b"]

    @app.agent(concurrency=4)
    def slow_square(value: int) -> int:
        time.sleep(0.1 * value)
        return value * value

    @app.agent()
    def divide(value: Any) -> float:
        return float(value["a"] / value["b"])

    @app.agent()
    def countdown(n: int) -> Iterator[int]:
        for i in range(n, 0, -1):
            time.sleep(0.05)
            yield i

    return app


def run_demo(broker: str, **settings: Any) -> int:
    """Print a short tour of asking; returns the exit code.

    Raises:
        TransportError: the broker could not be reached.
    """
    app = build_demo_app(broker, **settings)
    add, slow_square = app.agents["add"], app.agents["slow_square"]
    divide, countdown = app.agents["divide"], app.agents["countdown"]
    print(f"replies demo on {broker}: agents {', '.join(app.agents)} served in this process\n")
    started = time.monotonic()
    with app:
        app.serve()
        print(f"started in {time.monotonic() - started:.2f} s\n")

        t = time.monotonic()
        print("ask   add.ask({'a': 1, 'b': 2})")
        print(f"      -> {add.ask({'a': 1, 'b': 2})}   ({(time.monotonic() - t) * 1000:.1f} ms)\n")

        print("map   slow_square.map([3, 1, 2]): replies as they arrive")
        t = time.monotonic()
        for reply in slow_square.map([3, 1, 2]):
            print(f"      {time.monotonic() - t:5.2f} s  -> {reply}")

        print("\njoin  slow_square.join([3, 1, 2]): all replies, in input order")
        print(f"      -> {slow_square.join([3, 1, 2])}\n")

        print("stream countdown.stream(3): every reply of a generator agent")
        print(f"      -> {list(countdown.stream(3))}\n")

        print("timeout slow_square.ask(6, timeout=0.3)")
        try:
            slow_square.ask(6, timeout=0.3)
        except ReplyTimeoutError as exc:
            print(f"      -> {type(exc).__name__}: {exc}\n")

        print("error divide.ask({'a': 1, 'b': 0})")
        try:
            divide.ask({"a": 1, "b": 0})
        except RemoteError as exc:
            print(f"      -> RemoteError: the agent raised {exc.type_name}: {exc.message}\n")
    print(f"done in {time.monotonic() - started:.2f} s")
    return 0
