"""The asking side under hostile records and a failing reply reader (issue 9).

Garbage is written onto the live reply topic of a started App (with a raw
kafka-python producer on Kafka, through the transport on memory) while
legitimate asks run against a served agent: afterwards the reply thread
is alive and every legitimate ask got its own answer. Poll failures of
the reply reader are injected with a reader that raises; those tests run
on the memory transport.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

import replies
from replies.core.codec import HEADER_CORRELATION_ID, HEADER_ERROR, HEADER_MORE, Message
from replies.errors import DecodeError, ReplyConsumerError, TransportError
from replies.threads import reply_consumer
from replies.transport.base import Reader, Record
from replies.transport.memory import MemoryTransport

pytestmark = pytest.mark.timeout(120)

MakeApp = Callable[..., replies.App]
Garbage = Tuple[Optional[bytes], Optional[bytes], List[Tuple[str, Optional[bytes]]]]
SendRaw = Callable[[replies.App, Sequence[Garbage]], None]

DEEP = b"[" * 1000 + b"]" * 1000


class RawKey(str):
    """A header key that kafka-python writes as the given raw bytes.

    kafka-python encodes each header key with ``str.encode("utf-8")``;
    this one encodes to bytes that are not UTF-8, as other clients can
    write them.
    """

    def __new__(cls, raw: bytes) -> "RawKey":
        key = super().__new__(cls, raw.decode("latin-1"))
        key.raw = raw
        return key

    raw: bytes

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


@pytest.fixture
def send_raw(broker_url: str, request: pytest.FixtureRequest) -> Iterator[SendRaw]:
    """Write records as they are onto a topic of the App's broker, and wait
    for the broker's acknowledgement: a raw kafka-python producer on Kafka,
    the transport itself on memory."""
    producers: List[Any] = []

    def send(app: replies.App, records: Sequence[Garbage], topic: Optional[str] = None) -> None:
        topic = topic or app.reply_to
        if broker_url.startswith("memory://"):
            for key, value, headers in records:
                app.transport.produce(topic, Message(key, value, list(headers))).result(10)
            return
        import kafka

        if not producers:
            producers.append(
                kafka.KafkaProducer(bootstrap_servers=request.getfixturevalue("kafka_bootstrap"))
            )
        sent = [
            producers[0].send(topic, key=key, value=value, headers=list(headers))
            for key, value, headers in records
        ]
        for future in sent:
            future.get(10)

    yield send
    for producer in producers:
        producer.close(5)


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y


def point_app(make_app: MakeApp, hooked: List[Dict[str, Any]]) -> Tuple[replies.App, Any]:
    """An App that asks with the README's ``to_point`` as its object hook
    (it needs ``x`` and ``y``), recording every object the hook is called
    with; it asks an agent served by another App (without a hook) that
    doubles numbers and echoes anything else.

    Returns:
        The asking App, and its Topic for the agent.
    """

    def to_point(obj: Dict[str, Any]) -> Any:
        hooked.append(obj)
        if obj.get("__faust") == {"ns": "fapp.Point"}:
            return Point(obj["x"], obj["y"])
        return obj

    server = make_app("server")

    @server.agent(concurrency=4)
    def double(value: Any) -> Any:
        return value * 2 if isinstance(value, int) else value

    server.serve()
    asker = make_app("asker", json_object_hook=to_point)
    asker.start()
    return asker, asker.topic(double.topic_name)


def ask_while(agent: Any, action: Callable[[], None], threads: int = 4, asks: int = 10) -> None:
    """Run ``action`` while ``threads`` threads ask the agent; every ask must
    get its own answer."""
    results: Dict[int, Any] = {}
    errors: List[BaseException] = []
    go = threading.Barrier(threads + 1)

    def asker(first: int) -> None:
        go.wait()
        for n in range(first, first + asks):
            try:
                results[n] = agent.ask(n, timeout=20)
            except BaseException as exc:  # reported below
                errors.append(exc)

    workers = [
        threading.Thread(target=asker, args=(i * 1000,), name=f"asker-{i}") for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    go.wait()
    action()
    for worker in workers:
        worker.join(60)
    assert errors == []
    assert results == {n: 2 * n for n in results} and len(results) == threads * asks


def assert_alive(app: replies.App, agent: Any) -> None:
    consumer = app.reply_consumer
    assert consumer is not None and consumer.thread is not None
    assert consumer.thread.is_alive()
    assert agent.ask(21, timeout=20) == 42


def reply_for(cid: str, value: Any, headers: Sequence[Tuple[str, Optional[bytes]]] = ()) -> Garbage:
    body = {"key": None, "value": value, "correlation_id": cid, "__faust": {"ns": "@ReqRepResponse"}}
    return None, json.dumps(body).encode(), list(headers)


POINT_WITHOUT_X = {"y": 1, "__faust": {"ns": "fapp.Point"}}


# -- garbage on the reply topic ------------------------------------------------------


def test_deeply_nested_json_on_the_reply_topic(make_app: MakeApp, send_raw: SendRaw) -> None:
    hooked: List[Dict[str, Any]] = []
    app, double = point_app(make_app, hooked)
    garbage = [
        (None, DEEP, []),
        (None, b'{"correlation_id":"x","value":' + DEEP + b"}", []),
        (None, b'{"a":' * 3000 + b"1" + b"}" * 3000, []),
    ]
    ask_while(double, lambda: send_raw(app, garbage))
    assert_alive(app, double)
    assert app.reply_consumer is not None and app.reply_consumer.undecodable == len(garbage)


def test_reply_meant_for_nobody_is_never_passed_to_the_hook(
    make_app: MakeApp, send_raw: SendRaw
) -> None:
    hooked: List[Dict[str, Any]] = []
    app, double = point_app(make_app, hooked)
    garbage = [reply_for(f"nobody-{n}", POINT_WITHOUT_X) for n in range(3)]
    ask_while(double, lambda: send_raw(app, garbage))
    assert_alive(app, double)
    assert hooked == []  # the legitimate values are numbers: no object at all
    assert app.reply_consumer is not None and app.reply_consumer.table.unknown >= len(garbage)


def test_undecodable_value_fails_only_the_request_waiting_for_it(
    make_app: MakeApp, send_raw: SendRaw
) -> None:
    hooked: List[Dict[str, Any]] = []
    app, double = point_app(make_app, hooked)
    good = double.ask_nowait({"x": 1, "y": 2, "__faust": {"ns": "fapp.Point"}}, timeout=20)
    with pytest.raises(DecodeError, match="KeyError"):
        double.ask(POINT_WITHOUT_X, timeout=20)
    assert isinstance(good.result(20), Point)
    assert_alive(app, double)
    assert app.reply_consumer is not None and app.reply_consumer.undecodable == 1


@pytest.mark.integration
@pytest.mark.parametrize("broker_url", ["kafka"], indirect=True)
def test_header_key_that_is_not_utf8_on_the_reply_topic(
    make_app: MakeApp, send_raw: SendRaw
) -> None:
    hooked: List[Dict[str, Any]] = []
    app, double = point_app(make_app, hooked)
    bad_key = [(RawKey(b"\xff\xfe"), b"v")]
    garbage = [
        reply_for("nobody", 1, bad_key),
        (None, b"anything", bad_key),
    ]
    ask_while(double, lambda: send_raw(app, garbage))
    assert_alive(app, double)
    assert app.reply_consumer is not None and app.reply_consumer.undecodable >= 1


def test_garbage_storm_while_asks_run(
    make_app: MakeApp, send_raw: SendRaw, broker_url: str
) -> None:
    hooked: List[Dict[str, Any]] = []
    app, double = point_app(make_app, hooked)
    rng = random.Random(9)
    garbage: List[Garbage] = [
        (None, bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 300))), [])
        for _ in range(20)
    ]
    valid = json.dumps({"key": None, "value": 1, "correlation_id": "c"}).encode()
    garbage += [(None, valid[: rng.randrange(len(valid))], []) for _ in range(5)]
    garbage += [
        (b"k", None, []),
        (None, DEEP, []),
        (None, b"1" * 5000, []),
        (b"\xff", b"\xff\xfe\x00{", [(HEADER_ERROR, b"\xff")]),
        reply_for(5, 1),  # type: ignore[arg-type]
        reply_for([None], 1),  # type: ignore[arg-type]
        reply_for("", 1),
        reply_for("nobody", POINT_WITHOUT_X, [(HEADER_MORE, b"\xff")]),
        reply_for("nobody-error", {"type": [[[1]]], "message": {}, "traceback": 5}, [(HEADER_ERROR, b"1")]),
        (None, json.dumps([{"correlation_id": "x"}]).encode(), [(HEADER_CORRELATION_ID, b"\xff")]),
    ]
    if broker_url.startswith("memory://"):
        # Null header values and odd keys (kafka-python's producer refuses them).
        garbage += [
            (None, b"1", [(HEADER_ERROR, None), ("\udcff", None)]),
            reply_for("nobody-null", 1, [(HEADER_MORE, None), (HEADER_ERROR, None)]),
        ]
    else:
        garbage.append((None, b"x", [(RawKey(b"\xc3\x28"), b"")]))

    def storm() -> None:
        for start in range(0, len(garbage), 7):
            send_raw(app, garbage[start : start + 7])

    ask_while(double, storm)
    assert_alive(app, double)
    assert hooked == []


# -- a reply reader that fails ---------------------------------------------------------


class FlakyReader(Reader):
    """Wraps a reader: raises TransportError while ``down`` is set, and
    RuntimeError at every poll if it is ``broken``."""

    def __init__(self, inner: Reader, down: threading.Event, broken: bool) -> None:
        self.inner = inner
        self.down = down
        self.broken = broken
        self.failures = 0

    def poll(self, timeout: float) -> List[Record]:
        if self.broken:
            self.failures += 1
            raise RuntimeError("this reader cannot go on")
        if self.down.is_set():
            self.failures += 1
            raise TransportError("broker unreachable (injected)")
        return self.inner.poll(timeout)

    def close(self) -> None:
        self.inner.close()


class Injector:
    """Makes every reply reader of the memory transport a FlakyReader.

    Attributes:
        down: while set, polls fail, and so does opening a new reader.
        broken_first: the first reader made is broken for good.
        readers: the readers made, in order.
    """

    def __init__(self) -> None:
        self.down = threading.Event()
        self.broken_first = False
        self.readers: List[FlakyReader] = []


@pytest.fixture
def injector(monkeypatch: pytest.MonkeyPatch) -> Injector:
    injector = Injector()
    real = MemoryTransport.reply_reader

    def reply_reader(self: MemoryTransport, topic: str, timeout: float, **kw: Any) -> Reader:
        if injector.readers and injector.down.is_set():
            raise TransportError("broker unreachable (injected)")
        broken = injector.broken_first and not injector.readers
        reader = FlakyReader(real(self, topic, timeout, **kw), injector.down, broken)
        injector.readers.append(reader)
        return reader

    monkeypatch.setattr(MemoryTransport, "reply_reader", reply_reader)
    # Short pauses between retries keep the tests short.
    monkeypatch.setattr(reply_consumer, "RETRY_MAX", 0.2, raising=False)
    return injector


def memory_app(name: str, **settings: Any) -> replies.App:
    app = replies.App(f"t{uuid.uuid4().hex[:8]}-{name}", broker=f"memory://{uuid.uuid4()}", **settings)

    @app.agent()
    def double(value: Any) -> Any:
        return value * 2

    return app


def test_poll_errors_are_retried_and_the_pending_ask_is_answered(injector: Injector) -> None:
    with memory_app("retry") as app:
        app.serve()
        double = app.agents["double"]
        assert double.ask(1, timeout=10) == 2
        injector.down.set()
        promise = double.ask_nowait(21, timeout=20)
        while injector.readers[0].failures < 3:
            threading.Event().wait(0.05)
        injector.down.clear()
        assert promise.result(10) == 42
        consumer = app.reply_consumer
        assert consumer is not None and consumer.thread is not None and consumer.thread.is_alive()
        assert consumer.poll_errors >= 3
        assert len(injector.readers) == 1  # a transient failure: the same reader goes on
        assert double.ask(5, timeout=10) == 10


def test_persistent_poll_failure_fails_the_waiters_and_the_app_heals(injector: Injector) -> None:
    # The first reader raises at every poll: only a new one can go on, and
    # while the broker is "down" no new one can be made either.
    injector.broken_first = True
    with memory_app("persistent", request_timeout=1.0) as app:
        app.serve()
        double = app.agents["double"]
        injector.down.set()
        promise = double.ask_nowait(21, timeout=None)
        with pytest.raises(ReplyConsumerError, match="cannot read replies"):
            promise.result(10)
        injector.down.clear()
        # The same App answers, without being re-created. An ask made before
        # the new reader is in place fails at once (its reply may be missed).
        for attempt in range(20):
            try:
                assert double.ask(4, timeout=10) == 8
                break
            except ReplyConsumerError:
                threading.Event().wait(0.1)
        else:
            pytest.fail("the App did not recover")
        consumer = app.reply_consumer
        assert consumer is not None and consumer.thread is not None and consumer.thread.is_alive()
        assert len(injector.readers) == 2 and injector.readers[0].failures >= 3


# -- records kafka-python cannot parse, at the transport --------------------------------


@pytest.mark.integration
def test_kafka_readers_skip_records_kafka_python_cannot_parse(
    kafka_bootstrap: str, kafka_client_settings: Dict[str, Any]
) -> None:
    import kafka

    from replies.transport.kafka import KafkaTransport

    topic = f"t{uuid.uuid4().hex[:8]}-unreadable"
    transport = KafkaTransport(kafka_bootstrap.split(","), kafka_client_settings)
    readers: List[Reader] = []
    producer = kafka.KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        transport.create_topic(topic, partitions=1)
        reply_reader = transport.reply_reader(topic, timeout=20)
        group_reader = transport.group_reader(
            topic, f"{topic}-group", on_revoke=lambda _: None, max_records=100
        )
        readers += [reply_reader, group_reader]
        bad_key = [(RawKey(b"\xff\xfe"), b"v")]
        producer.send(topic, b"good-1").get(10)
        producer.send(topic, b"bad-1", headers=bad_key).get(10)  # a batch of its own
        producer.send(topic, b"good-2").get(10)
        producer.send(topic, b"bad-2", headers=bad_key).get(10)
        producer.send(topic, b"good-3").get(10)
        for reader in readers:
            values: List[Optional[bytes]] = []
            for _ in range(100):
                values += [r.value for r in reader.poll(0.2)]
                if len(values) >= 3:
                    break
            assert values == [b"good-1", b"good-2", b"good-3"]
            assert reader.skipped == 2
    finally:
        producer.close(5)
        for reader in readers:
            reader.close()
        transport.delete_topic(topic, timeout=10)
        transport.close(5)


@pytest.mark.integration
def test_an_agent_commits_past_records_kafka_python_cannot_read(
    kafka_bootstrap: str, kafka_client_settings: Dict[str, Any]
) -> None:
    # The unreadable record is the last one of its partition: no later
    # record's commit moves past it, so the worker must commit past it itself
    # or every member that gets the partition meets it again.
    import time

    import kafka

    url = f"kafka://{kafka_bootstrap}"
    app = replies.App(f"t{uuid.uuid4().hex[:8]}", broker=url, topic_partitions=1,
                      **kafka_client_settings)

    @app.agent()
    def echo(value: Any) -> Any:
        return value

    producer = kafka.KafkaProducer(bootstrap_servers=kafka_bootstrap)
    admin = kafka.KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        with app:
            app.serve()
            assert echo.ask("first", timeout=30) == "first"
            producer.send(echo.topic_name, b"1", headers=[(RawKey(b"\xff\xfe"), b"v")]).get(10)
            (worker,) = app._workers
            deadline = time.monotonic() + 20
            while worker._reader is not None and worker._reader.skipped == 0:
                assert time.monotonic() < deadline, "the worker never met the record"
                time.sleep(0.05)
        tp = kafka.TopicPartition(echo.topic_name, 0)
        committed = admin.list_group_offsets(echo.group_id)[echo.group_id][tp].offset
        assert committed == 2, "the offset after the unreadable record is committed"
    finally:
        producer.close(5)
        admin.close()
