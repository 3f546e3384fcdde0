"""A broker that goes away and comes back: the App and the worker heal by themselves.

One Apache Kafka node of this test's own (the suite's shared broker is never
stopped) serves an agent run by a ``python -m replies worker`` process and
an App asking it from 8 threads. The node is stopped (SIGKILL, or SIGTERM
and a clean shutdown), stays down for 5 s, and is started again on the same
port with the same data. Throughout, no ask may outlast its timeout (plus a
small tolerance for a loaded machine); after the restart, asks on the same
App are answered again by the same worker process, neither restarted.

The test prints its figures (asks answered, timed out, failed during the
outage and after; seconds from the restart to the first answer); run it
with ``-s`` or ``-rP`` to see them. Tansu keeps its data in memory, so a
restart loses it: Apache Kafka only.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

import replies
from replies.transport.kafka import KafkaTransport
from tests.kafka.harness import KafkaCluster
from tests.test_worker_processes import Workers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

THREADS = 8
#: Each ask's timeout, in seconds.
ASK_TIMEOUT = 3.0
#: How much longer than its timeout an ask may take on a loaded machine.
TOLERANCE = 1.5
#: How long the broker stays down.
DOWN = 5.0
#: Asks must be answered again within this long after the broker is back.
HEAL_BOUND = 60.0
#: Answers each thread must get in a row, after the restart, to end the run.
STREAK = 5


@dataclass
class Ask:
    thread: int
    started: float
    ended: float
    outcome: str  # "answered", "timeout", or the error's type name
    pid: Optional[int] = None

    @property
    def took(self) -> float:
        return self.ended - self.started


class Askers:
    """THREADS threads asking in a loop until told to stop; every ask is recorded."""

    def __init__(self, app: replies.App, topic: str) -> None:
        self.topic = app.topic(topic)
        self.asks: List[Ask] = []
        self.streaks = [0] * THREADS
        self._lock = threading.Lock()  # guards asks and streaks
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run_asker, args=(i,), name=f"test-asker-{i}", daemon=True)
            for i in range(THREADS)
        ]

    def __enter__(self) -> "Askers":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(ASK_TIMEOUT + 30)
        assert not any(t.is_alive() for t in self._threads), "an asker is stuck"

    def _run_asker(self, index: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            value = f"{index}-{n}"
            started = time.monotonic()
            pid = None
            try:
                reply = self.topic.ask(value, timeout=ASK_TIMEOUT)
                assert reply["value"] == value, reply
                outcome, pid = "answered", int(reply["pid"])
            except replies.ReplyTimeoutError:
                outcome = "timeout"
            except replies.ReplyError as exc:
                outcome = type(exc).__name__
            ask = Ask(index, started, time.monotonic(), outcome, pid)
            with self._lock:
                self.asks.append(ask)
                self.streaks[index] = self.streaks[index] + 1 if outcome == "answered" else 0
            if outcome != "answered":
                self._stop.wait(0.05)  # an error that comes at once must not spin

    def answered_since(self, moment: float) -> int:
        with self._lock:
            return sum(1 for a in self.asks if a.outcome == "answered" and a.started >= moment)

    def settled(self) -> bool:
        """Every thread's last STREAK asks were answered."""
        with self._lock:
            return min(self.streaks) >= STREAK


def _tally(asks: List[Ask]) -> Dict[str, int]:
    return dict(collections.Counter(a.outcome for a in asks))


@pytest.fixture
def broker() -> Iterator[KafkaCluster]:
    cluster = KafkaCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _stop_broker(cluster: KafkaCluster, how: str) -> None:
    if how == "SIGKILL":
        popen = cluster.nodes[0].process.popen
        assert popen is not None
        popen.send_signal(signal.SIGKILL)
        popen.wait(30)
    else:
        cluster.stop_node(0)  # SIGTERM: a clean shutdown


@pytest.mark.kafka_only
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_broker_restart_under_load(broker: KafkaCluster, how: str, tmp_path: Path) -> None:
    bootstrap = broker.bootstrap_servers
    workers = Workers(bootstrap, {}, tmp_path)
    try:
        worker = workers.start()
        app = replies.App(f"{workers.app_id}-client", broker=f"kafka://{bootstrap}")
        with app:
            reply_thread = app.reply_consumer.thread
            with Askers(app, f"{workers.app_id}-work") as askers:
                deadline = time.monotonic() + 60
                while not askers.settled():  # all 8 threads answered before the outage
                    assert time.monotonic() < deadline, _tally(askers.asks)
                    time.sleep(0.1)

                stopped = time.monotonic()
                _stop_broker(broker, how)
                down = time.monotonic()
                time.sleep(DOWN)
                broker.start_node(0)  # same port, same data; waits until it serves
                back = time.monotonic()

                deadline = back + HEAL_BOUND
                while not askers.answered_since(back):
                    assert time.monotonic() < deadline, (
                        f"no ask answered {HEAL_BOUND:.0f} s after the restart: {_tally(askers.asks)}"
                        f"\n{(tmp_path / 'worker-0.log').read_text()[-3000:]}"
                    )
                    time.sleep(0.05)
                # Then every thread is answered again, STREAK times in a row.
                while not askers.settled():
                    assert time.monotonic() < deadline, (
                        f"asks not answered steadily {HEAL_BOUND:.0f} s after the restart: "
                        f"{_tally([a for a in askers.asks if a.started >= back])}"
                    )
                    time.sleep(0.1)
            assert app.reply_consumer.thread is reply_thread and reply_thread is not None
            assert reply_thread.is_alive()
            asks = list(askers.asks)

        before = [a for a in asks if a.ended < stopped]
        outage = [a for a in asks if a.ended >= stopped and a.started < back]
        after = [a for a in asks if a.started >= back]
        first = min(a.ended for a in after if a.outcome == "answered")
        figures = {
            "stop": how,
            "broker_down_s": round(back - down, 1),
            "restart_s": round(back - down - DOWN, 1),
            "asks_before": _tally(before),
            "asks_during_outage": _tally(outage),
            "asks_after_restart": _tally(after),
            "first_answer_after_restart_s": round(first - back, 2),
            "longest_ask_s": round(max(a.took for a in asks), 2),
        }
        print(f"\nbroker restart figures: {json.dumps(figures)}")

        # No ask outlasted its timeout.
        late = [a for a in asks if a.took > ASK_TIMEOUT + TOLERANCE]
        assert not late, f"{len(late)} asks outlasted their timeout, longest {max(a.took for a in late):.1f} s"
        # Only timeouts or errors the library names; nothing else escaped an ask.
        assert {a.outcome for a in asks} <= {
            "answered", "timeout", "TransportError", "ReplyConsumerError", "NoRespondersError"
        }, _tally(asks)
        # The same worker process answered before and after, never restarted.
        assert worker.poll() is None, (tmp_path / "worker-0.log").read_text()[-3000:]
        assert {a.pid for a in asks if a.outcome == "answered"} == {worker.pid}
        assert len(workers.processes) == 1
    finally:
        workers.stop_all()


def _timed(call: Any, bound: float) -> Tuple[float, Optional[BaseException]]:
    """Run ``call`` on a thread; fail if it is still running after ``bound`` s.

    Returns:
        How long it took, and what it raised (or None).
    """
    outcome: Dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            call()
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc
        outcome["took"] = time.monotonic() - started

    thread = threading.Thread(target=run, name="test-timed", daemon=True)
    thread.start()
    thread.join(bound)
    assert not thread.is_alive(), f"still blocked after {bound} s"
    return outcome["took"], outcome.get("error")


@pytest.mark.kafka_only
def test_asks_keep_their_timeout_when_the_broker_is_down(broker: KafkaCluster, topic_prefix: str) -> None:
    """Issue 9, case 6: with the broker down, an ask to a topic whose metadata
    the App has not seen yet (kafka-python's send() would wait up to
    max_block_ms for it) returns within its timeout, as do asks, joins and
    close() on a topic it knows."""
    app = replies.App(f"{topic_prefix}down", broker=f"kafka://{broker.bootstrap_servers}", connect_timeout=3)
    took: Dict[str, float] = {}
    try:
        app.start()
        known, unknown = app.topic(topic_prefix + "known"), app.topic(topic_prefix + "unknown")
        # Both exist; only `known` has been sent to (nobody serves it).
        app.transport.create_topic(known.topic_name, partitions=1)
        app.transport.create_topic(unknown.topic_name, partitions=1)
        with pytest.raises(replies.ReplyTimeoutError):
            known.ask(0, timeout=0.5)
        _stop_broker(broker, "SIGKILL")

        took["unknown ask"], error = _timed(lambda: unknown.ask(1, timeout=5), bound=5 + TOLERANCE)
        assert isinstance(error, replies.TransportError) and error.cause == "timeout", repr(error)
        assert unknown.topic_name in str(error)
        took["unknown join"], error = _timed(lambda: unknown.join([1, 2], timeout=3), bound=3 + TOLERANCE)
        assert isinstance(error, replies.TransportError) and error.cause == "timeout", repr(error)
        took["known ask"], error = _timed(lambda: known.ask(2, timeout=3), bound=3 + TOLERANCE)
        assert isinstance(error, replies.ReplyTimeoutError), repr(error)
        took["known join"], error = _timed(lambda: known.join([3, 4], timeout=3), bound=3 + TOLERANCE)
        assert isinstance(error, replies.ReplyTimeoutError), repr(error)
        pending = known.ask_nowait(5, timeout=None)  # waits in the producer's buffer
        took["close(5)"], error = _timed(lambda: app.close(timeout=5), bound=5 + TOLERANCE)
        assert error is None, repr(error)
        assert isinstance(pending.exception(timeout=5), replies.ReplyError)
    finally:
        app.close(timeout=1)
    print(f"\nwith the broker down, seconds taken: {json.dumps({k: round(v, 2) for k, v in took.items()})}")


@pytest.mark.parametrize("given", [None, 5000])
def test_clients_retry_a_broker_that_is_back_within_a_second(
    kafka_bootstrap: str, kafka_client_settings: Dict[str, Any], topic_prefix: str, given: Optional[int]
) -> None:
    """kafka-python's reconnect back-off grows to 30 s: after a 10 s outage a
    client may wait that long again before it sees the broker back (asks
    timed out for 16 s after the restart above). Every client of the
    transport caps it at 1 s, as Kafka's Java clients do, unless told otherwise."""
    settings = dict(kafka_client_settings)
    if given is not None:
        settings["reconnect_backoff_max_ms"] = given
    expected = 1000 if given is None else given
    transport = KafkaTransport(kafka_bootstrap.split(","), settings)
    topic = topic_prefix + "backoff"
    try:
        transport.create_topic(topic, partitions=1)
        reader = transport.reply_reader(topic, timeout=10)
        group = transport.group_reader(topic, topic_prefix + "group", on_revoke=lambda _: None, max_records=1)
        try:
            # Private: each kafka-python client's configuration.
            configs = {
                "producer": transport._producer.config,
                "reply reader": reader._consumer.config,  # type: ignore[attr-defined]
                "group reader": group._consumer.config,  # type: ignore[attr-defined]
                "admin": transport._admin.config,  # type: ignore[union-attr]
            }
            assert {name: c["reconnect_backoff_max_ms"] for name, c in configs.items()} == {
                name: expected for name in configs
            }
        finally:
            reader.close()
            group.close()
        transport.delete_topic(topic, timeout=10)
    finally:
        transport.close(timeout=5)
