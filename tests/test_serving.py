"""Serving: agents consume requests and reply, over memory and Kafka alike."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

import replies
from replies.core.codec import Codec, Message

pytestmark = pytest.mark.timeout(120)

MakeApp = Callable[..., replies.App]


def _wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def committed(app: replies.App, group_id: str) -> Dict[int, int]:
    """The consumer group's committed offsets by partition, from the broker."""
    transport = app.transport
    if app.broker.startswith("memory://"):
        with transport.broker.lock:  # type: ignore[attr-defined]
            group = transport.broker.groups[group_id]  # type: ignore[attr-defined]
            return {p: offset for (_, p), offset in group.committed.items()}
    import kafka

    admin = kafka.KafkaAdminClient(bootstrap_servers=app.broker[len("kafka://") :].split(","))
    try:
        offsets = admin.list_group_offsets(group_id).get(group_id, {})
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


def recording_echo(app: replies.App) -> Tuple[replies.Agent, "queue.Queue[Any]"]:
    """An agent that replies with the value and records each value it got."""
    calls: "queue.Queue[Any]" = queue.Queue()

    @app.agent()
    def echo(value: Any) -> Any:
        calls.put(value)
        return value

    return echo, calls


def test_handler_may_take_the_key(make_app: MakeApp) -> None:
    app = make_app()

    @app.agent()
    def keyed(value: Any, key: Optional[bytes]) -> Any:
        return [value, key.decode() if key else None]

    app.start().serve()
    assert keyed.ask(1, key="k") == [1, "k"]
    assert keyed(2, key=b"direct") == [2, "direct"]  # calling an agent calls its function


def test_error_reply_with_traceback_when_configured(make_app: MakeApp) -> None:
    app = make_app(reply_tracebacks=True)

    @app.agent()
    def broken(value: Any) -> Any:
        return {}["missing"]

    app.start().serve()
    with pytest.raises(replies.RemoteError) as caught:
        broken.ask(1)
    assert caught.value.type_name == "KeyError"
    assert caught.value.remote_traceback is not None
    assert "broken" in caught.value.remote_traceback
    with pytest.raises(replies.RemoteError) as caught:
        broken.ask(2)
    assert caught.value.type_name == "KeyError"


def test_undecodable_requests_get_error_replies_or_are_skipped(make_app: MakeApp) -> None:
    app = make_app()
    echo, calls = recording_echo(app)
    app.start().serve()
    promise = replies.ReplyPromise(app.reply_to, "bad-json", timeout=20)
    app.reply_consumer.add(promise.correlation_id, promise)
    headers = [
        ("Faust-Ag-ReplyTo", app.reply_to.encode()),
        ("Faust-Ag-CorrelationId", b"bad-json"),
    ]
    app.transport.produce(echo.topic_name, Message(None, b"{not json", headers)).result(20)
    app.transport.produce(echo.topic_name, Message(None, b"{not json either", [])).result(20)
    with pytest.raises(replies.RemoteError) as caught:
        promise.result(20)
    assert caught.value.type_name == "DecodeError"
    assert echo.ask("fine") == "fine"
    assert calls.get_nowait() == "fine" and calls.empty()


def test_requests_past_their_deadline_are_skipped(make_app: MakeApp) -> None:
    app = make_app()
    echo, calls = recording_echo(app)
    app.start().serve()
    stale = app.codec.encode_request(
        "stale", reply_to=app.reply_to, correlation_id="stale-1", deadline=time.time() - 1
    )
    app.transport.produce(echo.topic_name, stale).result(20)
    assert echo.ask("fresh") == "fresh"
    assert calls.get(timeout=5) == "fresh"
    assert calls.empty()


def test_envelope_mode_requests_are_served(make_app: MakeApp) -> None:
    server = make_app("server")

    @server.agent()
    def echo(value: Any, key: Optional[bytes] = None) -> Any:
        return {"value": value, "key": key.decode() if key else None}

    server.serve()
    old_style = make_app("client", request_mode="envelope").start()
    asker = old_style.topic(echo.topic_name)
    assert asker.ask({"x": 1}, key="k") == {"value": {"x": 1}, "key": "k"}
    assert asker.join([1, 2, 3]) == [{"value": v, "key": None} for v in (1, 2, 3)]


def test_cast_runs_the_handler_without_reply(make_app: MakeApp) -> None:
    app = make_app()
    sink, calls = recording_echo(app)
    app.start().serve()
    sink.cast("fire").result(20)
    assert calls.get(timeout=20) == "fire"


def test_offsets_are_committed_only_after_the_reply(make_app: MakeApp) -> None:
    app = make_app(topic_partitions=1)
    entered, release = threading.Event(), threading.Event()

    @app.agent()
    def gated(value: Any) -> Any:
        entered.set()
        release.wait(20)
        return value

    app.start().serve()
    promise = gated.ask_nowait("first")
    assert entered.wait(20)
    time.sleep(0.5)  # give a wrong implementation time to commit early
    assert committed(app, gated.group_id).get(0, 0) == 0
    release.set()
    assert promise.result(20) == "first"
    _wait_for(lambda: committed(app, gated.group_id).get(0) == 1)
    assert gated.join(range(5)) == list(range(5))
    _wait_for(lambda: committed(app, gated.group_id).get(0) == 6)


def test_close_answers_requests_already_consumed(make_app: MakeApp) -> None:
    server = make_app("server")
    entered = threading.Semaphore(0)

    @server.agent(concurrency=3)
    def slow(value: Any) -> Any:
        entered.release()
        time.sleep(0.5)
        return value

    server.serve()
    client = make_app("client").start()
    promises = [client.topic(slow.topic_name).ask_nowait(i) for i in range(3)]
    for _ in range(3):
        assert entered.acquire(timeout=20)
    server.close()  # graceful: the handlers finish and their replies go out
    assert [p.result(20) for p in promises] == [0, 1, 2]


def test_serve_without_agents_is_an_error(make_app: MakeApp) -> None:
    with pytest.raises(ValueError, match="no agents"):
        make_app().serve()


def test_agent_names_must_be_unique(make_app: MakeApp) -> None:
    app = make_app()

    @app.agent(name="same")
    def one(value: Any) -> Any:
        return value

    with pytest.raises(ValueError, match="already registered"):

        @app.agent(name="same")
        def two(value: Any) -> Any:
            return value


def test_codec_round_trip_is_what_agents_and_callers_share() -> None:
    codec = Codec()
    message = codec.encode_request(1, reply_to="r", correlation_id="c")
    request = codec.decode_request(message.key, message.value, message.headers)
    assert (request.value, request.reply_to, request.correlation_id) == (1, "r", "c")


def test_group_members_share_the_work_and_take_over(make_app: MakeApp) -> None:
    def serving_member() -> replies.App:
        member = make_app("shared", topic_partitions=4, replace_serving=False)

        @member.agent(concurrency=2)
        def whoami(value: Any) -> Any:
            time.sleep(0.005)
            return [value, member.reply_to]

        return member.start().serve()

    first, second = serving_member(), serving_member()
    asker = first.agents["whoami"]
    seen: set = set()
    deadline = time.monotonic() + 60
    while len(seen) < 2 and time.monotonic() < deadline:
        got = asker.kvjoin([(f"k{i}", i) for i in range(40)])
        assert [v for v, _ in got] == list(range(40))
        seen |= {who for _, who in got}
    assert seen == {first.reply_to, second.reply_to}, "both members do work"

    stream = asker.kvmap([(f"k{i}", i) for i in range(300)], timeout=90)
    values = []
    for value, _ in stream:
        values.append(value)
        if len(values) == 30:
            second.close()  # leaves the group: first takes its partitions
    assert sorted(values) == list(range(300))


def test_slow_handlers_neither_stall_polling_nor_buffer_without_bound(make_app: MakeApp) -> None:
    # Handling all requests takes twice max_poll_interval_ms: a worker that
    # stopped polling while its handler is busy would be thrown out of the
    # group and served the same records again.
    app = make_app(topic_partitions=1, max_poll_interval_ms=3000)
    calls: "queue.Queue[Any]" = queue.Queue()

    @app.agent(concurrency=1, max_in_flight=4)
    def slow(value: Any) -> Any:
        calls.put(value)
        time.sleep(0.25)
        return value

    app.start().serve()
    worker = app._workers[0]
    promises = [slow.ask_nowait(i, timeout=60) for i in range(24)]
    held = 0
    while not all(p.done() for p in promises):
        held = max(held, worker.in_flight)
        time.sleep(0.005)
    assert [p.result() for p in promises] == list(range(24))
    # One poll may overshoot the window by what it returns at once.
    assert held <= 2 * slow.max_in_flight, "records held in memory stay bounded"
    assert calls.qsize() == 24, "each request handled once: the member never left the group"


def test_a_reply_that_cannot_be_sent_is_counted_and_committed(make_app: MakeApp) -> None:
    # Stopping instead would leave the record uncommitted, and a restarted
    # worker would meet it again: a crash loop.
    app = make_app(topic_partitions=1)
    echo, calls = recording_echo(app)
    app.start().serve()
    transport = app.transport
    real_produce = transport.produce_then

    def produce_failing_replies(topic: str, message: Message, *args: Any, **options: Any) -> Any:
        if topic == app.reply_to and b"lost reply" in (message.value or b""):
            raise replies.TransportError("the broker is gone (simulated)")
        return real_produce(topic, message, *args, **options)

    transport.produce_then = produce_failing_replies  # type: ignore[method-assign]
    echo.ask_nowait("lost reply")
    assert calls.get(timeout=20) == "lost reply"
    worker = app._workers[0]
    assert echo.ask("next") == "next"
    assert worker.alive
    _wait_for(lambda: committed(app, echo.group_id).get(0) == 2)
    assert worker.reply_failures == 1 and worker.handled == 2


def test_a_rebalance_that_never_finishes_makes_the_member_rejoin(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from replies.threads import agent_worker

    monkeypatch.setattr(agent_worker, "REBALANCE_STUCK", 0.3)
    monkeypatch.setattr(agent_worker, "REBALANCE_POLL", 0.05)
    app = replies.App("stuck-rebalance", broker=f"memory://{uuid.uuid4()}")
    echo, calls = recording_echo(app)
    app.start()
    open_reader = app.transport.group_reader
    opened: List[Any] = []

    def group_reader(*args: Any, **kwargs: Any) -> Any:
        reader = open_reader(*args, **kwargs)
        if not opened:  # the first member never finishes its rebalance
            stuck = property(lambda self: self is opened[0])
            monkeypatch.setattr(type(reader), "rebalancing", stuck)
        opened.append(reader)
        return reader

    monkeypatch.setattr(app.transport, "group_reader", group_reader)
    try:
        app.serve()
        assert echo.ask("after rejoining", timeout=10) == "after rejoining"
        assert len(opened) == 2
        assert "rebalance unfinished" in caplog.text
    finally:
        app.close()


def test_the_in_flight_window_is_also_bounded_in_bytes(make_app: MakeApp) -> None:
    app = make_app(topic_partitions=1)

    @app.agent(max_in_flight=10, max_in_flight_bytes=3000)
    def slow(value: Any) -> Any:
        time.sleep(0.02)
        return len(value)

    app.start().serve()
    worker = app._workers[0]
    promises = [slow.ask_nowait("x" * 1000, timeout=60) for _ in range(30)]
    held = 0
    while not all(p.done() for p in promises):
        held = max(held, worker.in_flight)
        time.sleep(0.002)
    assert [p.result() for p in promises] == [1000] * 30
    # Three 1 KB requests fill the window; one poll may add what it
    # returns (at most max_in_flight records).
    assert held <= 3 + 10
    _wait_for(lambda: worker.in_flight == 0 and worker._held_bytes == 0)


def test_in_flight_settings_are_checked(make_app: MakeApp) -> None:
    app = make_app()
    with pytest.raises(ValueError, match="max_in_flight"):
        app.agent(max_in_flight=0)(lambda value: value)
    with pytest.raises(ValueError, match="max_in_flight_bytes"):
        app.agent(max_in_flight_bytes=0)(lambda value: value)
