"""No record can stop an agent: garbage, unusable reply addresses, replies
the broker refuses, reply topics that are gone, polling errors.

Garbage goes onto live agent topics through a raw kafka-python producer on
the real broker (and through the transport on ``memory://``) while
legitimate asks run; afterwards the worker is alive, every legitimate ask
was answered, the garbage offsets are committed, and a restarted worker
does not see them again.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

import replies
from replies.core.codec import Headers, Message
from replies.threads.agent_worker import AgentWorker
from tests.test_serving import _wait_for, committed, recording_echo

pytestmark = pytest.mark.timeout(120)

MakeApp = Callable[..., replies.App]

DEEP = b"[" * 1000 + b"]" * 1000


def _bootstrap(app: replies.App) -> List[str]:
    return app.broker[len("kafka://") :].split(",")


def produce_raw(app: replies.App, topic: str, records: List[Tuple[Optional[bytes], Headers]]) -> None:
    """Write records (value, headers) as another client would: raw bytes."""
    if app.broker.startswith("memory://"):
        for value, headers in records:
            app.transport.produce(topic, Message(None, value, headers)).result(10)
        return
    import kafka

    producer = kafka.KafkaProducer(bootstrap_servers=_bootstrap(app))
    try:
        for value, headers in records:
            producer.send(topic, value=value, headers=headers).get(10)
    finally:
        producer.close()


def end_offsets(app: replies.App, topic: str) -> Dict[int, int]:
    if app.broker.startswith("memory://"):
        broker = app.transport.broker  # type: ignore[attr-defined]
        with broker.lock:
            return {p: log.end for p, log in enumerate(broker.topics[topic])}
    import kafka

    consumer = kafka.KafkaConsumer(bootstrap_servers=_bootstrap(app))
    try:
        partitions = [kafka.TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


def read_all(app: replies.App, topic: str, count: int) -> List[Tuple[Optional[bytes], Dict[str, bytes]]]:
    """The first ``count`` records of ``topic``: (value, headers)."""
    if app.broker.startswith("memory://"):
        broker = app.transport.broker  # type: ignore[attr-defined]

        def records() -> List[Any]:
            with broker.lock:
                return [r for log in broker.topics[topic] for r in log.records]

        _wait_for(lambda: len(records()) >= count)
        return [(r.value, dict(r.headers)) for r in records()]
    import kafka

    consumer = kafka.KafkaConsumer(
        topic, bootstrap_servers=_bootstrap(app), auto_offset_reset="earliest", group_id=None
    )
    got: List[Tuple[Optional[bytes], Dict[str, bytes]]] = []
    try:
        deadline = time.monotonic() + 20
        while len(got) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                got += [(r.value, dict(r.headers)) for r in batch]
    finally:
        consumer.close()
    return got


def asks_in_background(agent: replies.Topic, count: int) -> Tuple[threading.Thread, List[Any]]:
    """Ask ``count`` times on a thread; the list gets each answer (or error)."""
    answers: List[Any] = []

    def run() -> None:
        for i in range(count):
            try:
                answers.append(agent.ask(f"legit-{i}", timeout=30))
            except Exception as exc:  # recorded, asserted by the test
                answers.append(exc)

    thread = threading.Thread(target=run, name="test-asker")
    thread.start()
    return thread, answers


def _worker(app: replies.App) -> AgentWorker:
    (worker,) = app._workers
    return worker


def test_garbage_on_an_agent_topic_is_handled_once_and_committed(make_app: MakeApp) -> None:
    server = make_app("srv", topic_partitions=1)
    echo, calls = recording_echo(server)
    server.serve()
    client = make_app("client").start()
    asker = client.topic(echo.topic_name)
    thread, answers = asks_in_background(asker, 20)
    envelope = {"value": 1, "correlation_id": "c1", "__faust": {"ns": "@ReqRepRequest"}}
    garbage: List[Tuple[Optional[bytes], Headers]] = [
        (DEEP, []),  # RecursionError in the codec
        (DEEP, [("Faust-Ag-ReplyTo", client.reply_to.encode()), ("Faust-Ag-CorrelationId", b"deep")]),
        (json.dumps({**envelope, "reply_to": 5}).encode(), []),
        (json.dumps({**envelope, "reply_to": [None]}).encode(), []),
        (b'"bad topic"', [("Faust-Ag-ReplyTo", b"bad topic!"), ("Faust-Ag-CorrelationId", b"c2")]),
        (b'"bad cid"', [("Faust-Ag-ReplyTo", client.reply_to.encode()), ("Faust-Ag-CorrelationId", b"\xff")]),
        (b"\xff\xfe not utf-8", []),
    ]
    promise = replies.ReplyPromise(client.reply_to, "deep", timeout=30)
    client.reply_consumer.add("deep", promise)
    produce_raw(server, echo.topic_name, garbage)
    thread.join(60)
    assert answers == [f"legit-{i}" for i in range(20)]
    with pytest.raises(replies.RemoteError) as caught:
        promise.result(30)
    assert caught.value.type_name in ("DecodeError", "RecursionError")
    worker = _worker(server)
    assert worker.alive
    assert asker.ask("after") == "after"
    total = 20 + len(garbage) + 1
    _wait_for(lambda: committed(server, echo.group_id) == end_offsets(server, echo.topic_name))
    assert end_offsets(server, echo.topic_name) == {0: total}
    _wait_for(lambda: worker.handled + worker.skipped_undecodable + worker.error_replies == total)
    # An illegal reply topic makes the request undecodable: its handler never
    # runs for an answer nobody could receive, and nothing is sent there.
    assert worker.skipped_undecodable == 6 and worker.error_replies == 1
    assert worker.reply_failures == 0
    assert worker.handled == 21  # the 21 legit asks
    seen = [calls.get_nowait() for _ in range(calls.qsize())]
    assert "bad topic" not in seen and len(seen) == 21

    # A restarted worker starts after the garbage: nothing is served again.
    server.close()
    again = make_app("srv", topic_partitions=1)
    echo_again, calls_again = recording_echo(again)
    again.serve()
    assert asker.ask("restarted") == "restarted"
    assert calls_again.get(timeout=10) == "restarted"
    time.sleep(0.3)
    assert calls_again.empty()
    assert _worker(again).counters() == {
        "handled": 1,
        "error_replies": 0,
        "skipped_undecodable": 0,
        "skipped_expired": 0,
        "reply_failures": 0,
        "dead_lettered": 0,
    }


def test_a_reply_value_that_cannot_be_encoded_gets_an_error_reply(make_app: MakeApp) -> None:
    app = make_app(topic_partitions=1)

    @app.agent()
    def odd(value: Any) -> Any:
        return {1, 2} if value == "set" else value

    app.start().serve()
    with pytest.raises(replies.RemoteError) as caught:
        odd.ask("set")
    assert caught.value.type_name == "TypeError"
    assert "set" in caught.value.message
    assert odd.ask("fine") == "fine"
    worker = _worker(app)
    assert worker.alive
    _wait_for(lambda: committed(app, odd.group_id).get(0) == 2)
    assert worker.error_replies == 1


def _small_reply_topic(app: replies.App, limit: int) -> str:
    """Create a reply topic that takes records of at most ``limit`` bytes."""
    name = f"small-replies-{uuid.uuid4().hex[:8]}"
    app.transport.create_topic(name, config={"max.message.bytes": str(limit)})
    return name


# Tansu does not enforce max.message.bytes (the memory broker does).
@pytest.mark.kafka_only
def test_a_reply_too_large_for_its_topic_gets_a_small_error_reply(make_app: MakeApp) -> None:
    server = make_app("srv", topic_partitions=1)

    @server.agent()
    def sized(value: Any) -> Any:
        return "x" * value if isinstance(value, int) else value

    server.serve()
    reply_to = _small_reply_topic(server, 2000)
    client = make_app("client", reply_to=reply_to, reply_delete_topic=True).start()
    asker = client.topic(sized.topic_name)
    thread, answers = asks_in_background(client.topic(sized.topic_name), 10)
    with pytest.raises(replies.RemoteError) as caught:
        asker.ask(10_000)
    assert caught.value.type_name == "TransportError"
    assert "too large" in caught.value.message
    thread.join(60)
    assert answers == [f"legit-{i}" for i in range(10)]
    assert asker.ask(5) == "xxxxx"
    worker = _worker(server)
    assert worker.alive
    _wait_for(lambda: committed(server, sized.group_id).get(0) == 12)
    assert worker.error_replies == 1 and worker.reply_failures == 0


def test_a_reply_to_a_deleted_topic_is_dropped_without_stopping(
    make_app: MakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_app("srv", topic_partitions=1)
    entered, release = threading.Semaphore(0), threading.Event()

    @server.agent(concurrency=2)
    def gated(value: Any) -> Any:
        if str(value).startswith("held"):
            entered.release()
            release.wait(30)
        return value

    server.serve()
    leaving = make_app("leaving").start()
    for name in ("held-1", "held-2"):
        leaving.topic(gated.topic_name).ask_nowait(name, timeout=30)
    assert entered.acquire(timeout=20) and entered.acquire(timeout=20)
    leaving.close()  # deletes its reply topic while its requests are served
    staying = make_app("staying").start()
    asker = staying.topic(gated.topic_name)
    release.set()
    assert asker.join(range(10)) == list(range(10))
    worker = _worker(server)
    _wait_for(lambda: committed(server, gated.group_id).get(0) == 12)
    assert worker.alive and worker.reply_failures == 2
    assert not server.transport.topic_exists(leaving.reply_to)  # never re-created
    gone = [r for r in caplog.records if leaving.reply_to in r.getMessage() and r.levelname == "WARNING"]
    assert len(gone) == 1, "a gone reply topic is logged once, not per record"


def test_failing_records_go_to_the_dead_letter_topic(make_app: MakeApp) -> None:
    app = make_app(topic_partitions=1)
    dlt = f"{app.id}-dead"

    @app.agent(dead_letter_topic=dlt)
    def picky(value: Any) -> Any:
        if value == "boom":
            raise ValueError("no boom here")
        return value

    app.start().serve()
    with pytest.raises(replies.RemoteError):
        picky.ask("boom")
    produce_raw(app, picky.topic_name, [(DEEP, [])])
    assert picky.ask("fine") == "fine"
    dead = read_all(app, dlt, 2)
    assert [value for value, _ in dead][1] == DEEP
    errors = [headers["Replies-Dead-Letter-Error"] for _, headers in dead]
    assert errors[0] == b"ValueError" and errors[1] in (b"DecodeError", b"RecursionError")
    assert dead[0][1]["Replies-Dead-Letter-Message"] == b"no boom here"
    assert dead[1][1]["Replies-Dead-Letter-Topic"] == picky.topic_name.encode()
    assert [h["Replies-Dead-Letter-Offset"] for _, h in dead] == [b"0", b"1"]
    worker = _worker(app)
    _wait_for(lambda: worker.dead_lettered == 2)
    assert worker.skipped_undecodable == 1


def test_polling_errors_are_retried_and_the_reader_reopened(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from replies.threads import agent_worker

    monkeypatch.setattr(agent_worker, "POLL_RETRY_FIRST", 0.01)
    app = replies.App("poll-errors", broker=f"memory://{uuid.uuid4()}")
    echo, _ = recording_echo(app)
    app.start()
    open_reader = app.transport.group_reader
    opened: List[Any] = []

    def group_reader(*args: Any, **kwargs: Any) -> Any:
        reader = open_reader(*args, **kwargs)
        if not opened:  # the first reader fails every poll
            def broken(timeout: float) -> Any:
                raise replies.TransportError("the broker is away (simulated)")

            reader.poll = broken
        opened.append(reader)
        return reader

    monkeypatch.setattr(app.transport, "group_reader", group_reader)
    try:
        app.serve()
        assert echo.ask("after reopening", timeout=10) == "after reopening"
        assert len(opened) == 2
        assert "polling failed" in caplog.text and "re-opening" in caplog.text
        assert _worker(app).alive
    finally:
        app.close()
