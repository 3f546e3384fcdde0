"""Observability: stats(), listeners, current_request, logs, Prometheus,
OpenTelemetry; over the memory transport and a real Kafka broker alike."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

import replies

pytestmark = pytest.mark.timeout(120)

MakeApp = Callable[..., replies.App]
ROOT = Path(__file__).resolve().parent.parent


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def _topic_stats(app: replies.App, topic: str) -> Dict[str, Any]:
    stats: Dict[str, Any] = app.stats()["asking"]["topics"][topic]
    return stats


def _served(make_app: MakeApp) -> Tuple[replies.App, replies.Agent, threading.Event]:
    """An App serving ``work``: raises on "bad", waits for the event on
    "stuck" (at most 10 s), else echoes."""
    app = make_app("obs")
    release = threading.Event()

    @app.agent(concurrency=4)
    def work(value: Any) -> Any:
        if value == "bad":
            raise ValueError("bad value")
        if value == "stuck":
            release.wait(10)
        return value

    app.start()
    app.serve()
    return app, work, release


# -- the asking side ------------------------------------------------------------


def test_stats_count_replies_error_replies_and_latency(make_app: MakeApp) -> None:
    app, work, _ = _served(make_app)
    for i in range(3):
        assert work.ask(i) == i
    with pytest.raises(replies.RemoteError):
        work.ask("bad")
    assert work.join(range(4)) == [0, 1, 2, 3]
    assert sorted(work.map(range(2))) == [0, 1]
    assert list(work.stream(7)) == [7]

    figures = _topic_stats(app, work.topic_name)
    assert figures["sent"] == 3 + 1 + 4 + 2 + 1
    assert figures["replies"] == figures["sent"]
    assert figures["error_replies"] == 1
    assert figures["pending"] == 0
    assert figures["timeouts"] == figures["cancelled"] == figures["closed"] == 0
    latency = figures["ask_seconds"]
    # Single requests only (ask and stream), error replies included.
    assert latency["count"] == 5
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"] < 20
    total = app.stats()["asking"]["total"]
    assert total["sent"] == figures["sent"] and total["replies"] == figures["replies"]
    assert total["ask_seconds"]["count"] == 5
    json.dumps(app.stats())  # plain data


def test_stats_count_timeouts_cancellations_and_late_replies(make_app: MakeApp) -> None:
    app, work, release = _served(make_app)
    topic = work.topic_name
    with pytest.raises(replies.ReplyTimeoutError):
        work.ask("stuck", timeout=0.3)  # the caller's own wait runs out
    expiring = work.ask_nowait("stuck", timeout=0.3)  # the reply thread expires it
    with pytest.raises(replies.ReplyTimeoutError):
        expiring.result(10)
    with pytest.raises(replies.ReplyTimeoutError):
        work.join(["stuck", "stuck"], timeout=0.3)
    cancelled = work.ask_nowait("stuck", timeout=None)
    in_flight = _topic_stats(app, topic)
    assert in_flight["pending"] == 1
    assert cancelled.cancel()

    figures = _topic_stats(app, topic)
    assert figures["sent"] == 5
    assert figures["timeouts"] == 4
    assert figures["cancelled"] == 1
    assert figures["replies"] == 0
    assert figures["pending"] == 0
    release.set()
    # The cancelled request has no deadline: its reply comes, to nobody.
    _wait_for(lambda: app.stats()["asking"]["total"]["dropped_replies"] >= 1)


def test_stats_count_send_errors_and_requests_failed_by_close(make_app: MakeApp) -> None:
    app, work, release = _served(make_app)
    client = make_app("client").start()
    missing = f"{client.id}-nobody"
    with pytest.raises(replies.NoRespondersError):
        client.topic(missing).ask(1, timeout=5)
    waiting = client.topic(work.topic_name).ask_nowait("stuck", timeout=None)
    client.close()
    with pytest.raises(replies.ClosedError):
        waiting.result(5)
    release.set()
    stats = client.stats()["asking"]
    assert stats["topics"][missing]["send_errors"] == 1
    assert stats["topics"][missing]["pending"] == 0
    assert stats["topics"][work.topic_name]["closed"] == 1
    assert stats["total"]["pending"] == 0
    assert stats["total"]["sent"] == 2


def test_undecodable_and_unknown_replies_are_counted(make_app: MakeApp) -> None:
    app, work, _ = _served(make_app)
    from replies.core.codec import Message

    app.transport.produce(app.reply_to, Message(None, b"\xff not json", [])).result(20)
    app.transport.produce(app.reply_to, app.codec.encode_reply("nobody", 1)).result(20)
    assert work.ask("after") == "after"
    _wait_for(
        lambda: app.stats()["asking"]["total"]["undecodable_replies"] >= 1
        and app.stats()["asking"]["total"]["dropped_replies"] >= 1
    )


def test_metrics_can_be_turned_off(make_app: MakeApp) -> None:
    app = make_app("off", metrics=False)

    @app.agent()
    def echo(value: Any) -> Any:
        return value

    app.start()
    app.serve()
    assert echo.ask(1) == 1 and echo.join([2, 3]) == [2, 3]
    assert app.observer is None
    with pytest.raises(ValueError, match="metrics=False"):
        app.stats()


# -- listeners ------------------------------------------------------------------


class Recorder(replies.Listener):
    def __init__(self) -> None:
        self.events: List[Tuple[Any, ...]] = []

    def on_request_sent(self, topic: str, correlation_id: str) -> None:
        self.events.append(("sent", topic, correlation_id))

    def on_reply(self, topic: str, correlation_id: str, seconds: float) -> None:
        assert seconds >= 0
        self.events.append(("reply", topic, correlation_id))

    def on_error_reply(
        self, topic: str, correlation_id: str, error: replies.RemoteError
    ) -> None:
        self.events.append(("error", topic, correlation_id, error.type_name))

    def on_timeout(self, topic: str, correlation_id: str, timeout: Optional[float]) -> None:
        self.events.append(("timeout", topic, correlation_id, timeout))

    def kinds(self) -> List[str]:
        return [event[0] for event in self.events]


class Raiser:
    """A listener (not a Listener subclass) whose every method raises."""

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("on_"):
            raise AttributeError(name)

        def fail(*args: Any) -> None:
            raise RuntimeError(f"listener bug in {name}")

        return fail


def test_listeners_hear_every_event_and_one_that_raises_breaks_nothing(
    make_app: MakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    app, work, release = _served(make_app)
    recorder = Recorder()
    app.add_listener(Raiser())
    app.add_listener(recorder)
    app.add_listener(recorder)  # once is enough
    with caplog.at_level(logging.ERROR, logger="replies.listeners"):
        promise = work.ask_nowait(1)
        assert promise.result(20) == 1
        with pytest.raises(replies.RemoteError):
            work.ask("bad")
        with pytest.raises(replies.ReplyTimeoutError):
            work.ask("stuck", timeout=0.3)
        assert work.join([5, 6]) == [5, 6]
    release.set()

    topic = work.topic_name
    # Listeners run on the reply thread, maybe just after the caller woke.
    _wait_for(lambda: recorder.kinds().count("reply") >= 3)
    assert recorder.kinds().count("sent") == 5
    assert all(event[1] == topic for event in recorder.events)
    assert ("reply", topic, promise.correlation_id) in recorder.events
    assert recorder.kinds().count("reply") == 3
    assert [e[3] for e in recorder.events if e[0] == "error"] == ["ValueError"]
    assert [e[3] for e in recorder.events if e[0] == "timeout"] == [0.3]
    assert "listener bug in on_reply" in caplog.text
    assert "listener bug in on_request_sent" in caplog.text

    app.remove_listener(recorder)
    before = len(recorder.events)
    assert work.ask(2) == 2
    time.sleep(0.1)
    assert len(recorder.events) == before


# -- optional parts stay unloaded ----------------------------------------------------


def _run(code: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **(env or {}), "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_opentelemetry_in_use_nothing_optional_is_imported() -> None:
    code = (
        "import json, sys, replies\n"
        "app = replies.App('plain', broker='memory://plain')\n"
        "@app.agent()\n"
        "def echo(v):\n"
        "    return v\n"
        "with app:\n"
        "    app.serve()\n"
        "    assert echo.ask(1, timeout=10) == 1 and echo.join([1, 2]) == [1, 2]\n"
        "    app.stats()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    assert "replies.observe.observer" in loaded  # the counting did run
    optional = [m for m in loaded if m.split(".")[0] in ("opentelemetry", "prometheus_client")]
    assert optional == []
