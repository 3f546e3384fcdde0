"""Asking, over the memory transport and a real Kafka broker alike."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import CancelledError
from typing import Any, Callable, List, Optional, Tuple

import pytest

import replies
from replies.core.codec import Message

pytestmark = pytest.mark.timeout(120)

MakeApp = Callable[..., replies.App]


def running(app: replies.App) -> replies.App:
    """Start the App for asking and serve its agents."""
    app.start()
    app.serve()
    return app


def stuck_agent(app: replies.App) -> Tuple[replies.Agent, threading.Event]:
    """An agent that answers only once the returned event is set (or 10 s)."""
    release = threading.Event()

    @app.agent()
    def stuck(value: Any) -> Any:
        release.wait(10)
        return value

    return stuck, release


@pytest.fixture
def echo_app(make_app: MakeApp) -> replies.App:
    app = make_app("echo")

    @app.agent(concurrency=4)
    def echo(value: Any, key: Optional[bytes] = None) -> Any:
        return {"value": value, "key": key.decode() if key is not None else None}

    return running(app)


def test_ask_returns_the_reply(make_app: MakeApp) -> None:
    app = make_app()

    @app.agent()
    def add(value: Any) -> int:
        return value["a"] + value["b"]

    running(app)
    assert add.ask({"a": 1, "b": 2}, timeout=20) == 3
    assert app.topic(add.topic_name).ask({"a": 20, "b": 22}) == 42


def test_ask_sends_the_key(echo_app: replies.App) -> None:
    echo = echo_app.agents["echo"]
    assert echo.ask("v", key="k1") == {"value": "v", "key": "k1"}
    assert echo.ask("v") == {"value": "v", "key": None}


def test_ask_nowait_returns_a_registered_promise(echo_app: replies.App) -> None:
    echo = echo_app.agents["echo"]
    promise = echo.ask_nowait(7)
    assert isinstance(promise, replies.ReplyPromise)
    assert promise.reply_to == echo_app.reply_to
    assert promise.result(20) == {"value": 7, "key": None}
    assert len(echo_app.reply_consumer.table) == 0


def test_map_yields_replies_and_sends_all_requests_first(make_app: MakeApp) -> None:
    app = make_app()
    count = 6
    # Every handler waits until all `count` requests are being handled: if
    # map() waited for a reply before sending the next request, this would
    # never complete.
    all_in = threading.Barrier(count, timeout=15)

    @app.agent(concurrency=count)
    def square(value: int) -> int:
        all_in.wait()
        return value * value

    running(app)
    replies_seen = list(square.map(range(count)))
    assert sorted(replies_seen) == [v * v for v in range(count)]


def test_kvmap_sends_each_key(echo_app: replies.App) -> None:
    echo = echo_app.agents["echo"]
    got = list(echo.kvmap([("a", 1), ("b", 2), (None, 3)]))
    assert sorted(got, key=lambda r: r["value"]) == [
        {"value": 1, "key": "a"},
        {"value": 2, "key": "b"},
        {"value": 3, "key": None},
    ]


def test_join_keeps_input_order(make_app: MakeApp) -> None:
    app = make_app()

    @app.agent(concurrency=5)
    def slow_first(value: int) -> int:
        time.sleep(0.05 * (5 - value))  # earlier inputs answer later
        return value * 10

    running(app)
    assert slow_first.join(range(5)) == [0, 10, 20, 30, 40]
    assert slow_first.kvjoin([(b"k", 3), ("j", 1)]) == [30, 10]
    assert slow_first.join([]) == []
    assert len(app.reply_consumer.table) == 0


def test_join_of_many_more_items_than_a_queue_of_1000(echo_app: replies.App) -> None:
    echo = echo_app.agents["echo"]
    values = list(range(3000))
    assert [r["value"] for r in echo.join(values, timeout=60)] == values
    assert len(echo_app.reply_consumer.table) == 0


def test_ask_times_out_and_removes_its_waiter(make_app: MakeApp) -> None:
    app = make_app()
    stuck, release = stuck_agent(app)
    running(app)
    started = time.monotonic()
    with pytest.raises(replies.ReplyTimeoutError) as caught:
        stuck.ask(1, timeout=0.5)
    assert time.monotonic() - started < 5
    assert isinstance(caught.value, TimeoutError)
    assert len(app.reply_consumer.table) == 0

    promise = stuck.ask_nowait(2, timeout=0.3)  # nobody waits: still expires
    assert isinstance(promise.exception(10), replies.ReplyTimeoutError)
    assert len(app.reply_consumer.table) == 0

    with pytest.raises(replies.ReplyTimeoutError):
        list(stuck.map([3, 4], timeout=0.5))
    with pytest.raises(replies.ReplyTimeoutError):
        stuck.join([5, 6], timeout=0.5)
    assert len(app.reply_consumer.table) == 0
    release.set()


def test_cancelling_a_promise_removes_its_waiter(make_app: MakeApp) -> None:
    app = make_app()
    stuck, release = stuck_agent(app)
    running(app)
    promise = stuck.ask_nowait(1)
    assert len(app.reply_consumer.table) == 1
    assert promise.cancel()
    assert len(app.reply_consumer.table) == 0
    with pytest.raises(CancelledError):
        promise.result(1)
    release.set()


def test_stream_takes_every_reply_of_a_generator_agent(make_app: MakeApp) -> None:
    app = make_app()

    @app.agent()
    def countdown(n: int) -> Any:
        yield from range(n, 0, -1)

    running(app)
    assert list(countdown.stream(3)) == [3, 2, 1]
    assert list(countdown.stream(0)) == []
    assert countdown.ask(2) == 2  # a plain ask takes the first reply
    assert len(app.reply_consumer.table) == 0


def test_remote_error_names_the_remote_exception(make_app: MakeApp) -> None:
    app = make_app()

    @app.agent()
    def picky(value: int) -> int:
        if value < 0:
            raise ValueError(f"negative: {value}")
        return value

    running(app)
    with pytest.raises(replies.RemoteError) as caught:
        picky.ask(-1)
    assert caught.value.type_name == "ValueError"
    assert caught.value.message == "negative: -1"
    assert "ValueError" in str(caught.value)
    with pytest.raises(replies.RemoteError):
        picky.join([1, -2, 3])
    assert picky.ask(5) == 5  # the agent goes on serving
    assert len(app.reply_consumer.table) == 0


def _produce_reply(app: replies.App, message: Message) -> None:
    app.transport.produce(app.reply_to, message).result(20)


def test_unknown_duplicate_and_undecodable_replies_are_dropped(echo_app: replies.App) -> None:
    echo = echo_app.agents["echo"]
    consumer = echo_app.reply_consumer
    codec = echo_app.codec
    _produce_reply(echo_app, codec.encode_reply("nobody-asked", 1))
    _produce_reply(echo_app, Message(None, b"\xff not json", []))
    _produce_reply(echo_app, Message(None, b'{"no": "correlation id"}', []))
    assert echo.ask("still works") == {"value": "still works", "key": None}

    promise = echo.ask_nowait("dup")
    assert promise.result(20)["value"] == "dup"
    # A second reply to an answered request is a duplicate.
    _produce_reply(echo_app, codec.encode_reply(promise.correlation_id, "again"))
    assert echo.ask("after") == {"value": "after", "key": None}
    assert promise.result() == {"value": "dup", "key": None}
    _wait_for(lambda: consumer.table.unknown >= 2 and consumer.undecodable >= 2)
    assert consumer.thread is not None and consumer.thread.is_alive()
    assert len(consumer.table) == 0


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_close_fails_requests_in_flight(make_app: MakeApp) -> None:
    server = make_app("server")
    stuck, release = stuck_agent(server)
    server.serve()
    client = make_app("client").start()
    promises = [client.topic(stuck.topic_name).ask_nowait(i, timeout=None) for i in range(3)]
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 10
    for promise in promises:
        with pytest.raises(replies.ClosedError):
            promise.result(1)
    with pytest.raises(replies.ClosedError):
        client.topic(stuck.topic_name).ask(1)
    release.set()


def test_many_threads_share_one_app(echo_app: replies.App) -> None:
    echo = echo_app.agents["echo"]
    threads, per_thread = 50, 200
    wrong: "queue.Queue[Any]" = queue.Queue()

    def caller(n: int) -> None:
        for i in range(per_thread):
            value = f"{n}-{i}"
            reply = echo.ask(value, timeout=60)
            if reply["value"] != value:
                wrong.put((value, reply))

    workers = [threading.Thread(target=caller, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(110)
    assert not any(worker.is_alive() for worker in workers)
    assert wrong.empty(), wrong.get()
    assert len(echo_app.reply_consumer.table) == 0
    assert echo_app.reply_consumer.table.delivered >= threads * per_thread


def test_ask_on_the_reply_thread_raises_instead_of_deadlocking(echo_app: replies.App) -> None:
    echo = echo_app.agents["echo"]
    outcome: "queue.Queue[BaseException]" = queue.Queue()

    def on_done(_: Any) -> None:
        try:
            echo.ask("nested", timeout=5)
        except BaseException as exc:
            outcome.put(exc)

    echo.ask_nowait("outer").add_done_callback(on_done)
    assert isinstance(outcome.get(timeout=20), replies.DeadlockError)


def test_send_and_cast(make_app: MakeApp) -> None:
    app = make_app()
    seen: "queue.Queue[Any]" = queue.Queue()

    @app.agent()
    def record(value: Any) -> str:
        seen.put(value)
        return "ok"

    running(app)
    record.cast({"n": 1}).result(20)
    assert seen.get(timeout=20) == {"n": 1}

    reader = app.transport.reply_reader(app.reply_to, timeout=20)
    try:
        # A reply to a request this App does not await is dropped by its
        # reply consumer, but it does arrive on the named topic.
        record.send({"n": 2}, reply_to=app.reply_to, correlation_id="cid-2").result(20)
        got = []
        deadline = time.monotonic() + 20
        while not got and time.monotonic() < deadline:
            got = reader.poll(0.2)
    finally:
        reader.close()
    assert seen.get(timeout=20) == {"n": 2}
    assert app.codec.decode_reply(got[0].value, got[0].headers).correlation_id == "cid-2"


def test_shared_reply_topic(make_app: MakeApp) -> None:
    server = make_app("server")

    @server.agent(concurrency=2)
    def double(value: int) -> int:
        return value * 2

    server.serve()
    shared = f"{server.id}-replies"
    first = make_app("c1", reply_to=shared, reply_create_topic=True).start()
    second = make_app("c2", reply_to=shared, reply_create_topic=True).start()
    ask1 = first.topic(double.topic_name)
    ask2 = second.topic(double.topic_name)
    assert ask1.join(range(10)) == [v * 2 for v in range(10)]
    assert ask2.join(range(10, 20)) == [v * 2 for v in range(10, 20)]
    # Each saw the other's replies and dropped them.
    _wait_for(lambda: first.reply_consumer.table.unknown >= 10)
    _wait_for(lambda: second.reply_consumer.table.unknown >= 10)
    first.close()
    assert second.transport.topic_exists(shared)  # a named topic is kept


def test_generated_reply_topic_is_deleted_on_close(make_app: MakeApp) -> None:
    app = make_app().start()
    observer = make_app("observer").start()
    topic = app.reply_to
    assert topic.startswith("f-reply-")
    assert observer.transport.topic_exists(topic)
    app.close()
    _wait_for(lambda: not observer.transport.topic_exists(topic))


def test_start_and_close_are_idempotent(make_app: MakeApp) -> None:
    app = make_app()
    assert app.start() is app.start()
    app.close()
    app.close()
    with pytest.raises(replies.ClosedError):
        app.topic("anything").ask(1)


def test_asking_an_app_that_was_closed_is_a_clear_error(make_app: MakeApp) -> None:
    app = make_app().start()
    app.close()
    with pytest.raises(replies.ClosedError, match="was closed"):
        app.topic("anything").ask_nowait(1)


def test_bad_settings_fail_early() -> None:
    with pytest.raises(TypeError, match="reply_too"):
        replies.App("x", reply_too="typo")
    with pytest.raises(ValueError):
        replies.App("x", broker="http://nope")
    with pytest.raises(ValueError):
        replies.App("")
    with pytest.raises(ValueError):
        replies.App("x", request_mode="carrier-pigeon")


def test_table_is_empty_after_20000_asks(echo_app: replies.App) -> None:
    echo = echo_app.agents["echo"]
    threads, per_thread = 20, 1000
    failures: "queue.Queue[Any]" = queue.Queue()

    def caller(n: int) -> None:
        for i in range(per_thread):
            if echo.ask(i, timeout=60)["value"] != i:
                failures.put((n, i))

    workers = [threading.Thread(target=caller, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(110)
    assert failures.empty()
    table = echo_app.reply_consumer.table
    assert table.delivered >= threads * per_thread
    assert len(table) == 0
    assert len(table._deadlines) <= 64, "finished deadlines do not pile up"


def test_a_missing_named_reply_topic_fails_start_cleanly(make_app: MakeApp) -> None:
    app = make_app(reply_to="nobody-made-this-topic")
    with pytest.raises(ValueError, match="reply_create_topic"):
        app.start()
    with pytest.raises(replies.ClosedError):
        app.transport  # nothing left open; the thread-leak guard checks threads


def test_a_generator_agent_sends_one_reply_unless_asked_to_stream(make_app: MakeApp) -> None:
    app = make_app()
    closed = threading.Event()

    @app.agent()
    def numbers(n: int) -> Any:
        try:
            yield from range(1, n + 1)
        finally:
            closed.set()

    running(app)
    reader = app.transport.reply_reader(app.reply_to, timeout=20)
    try:
        assert numbers.ask(3) == 1
        assert closed.wait(10), "the generator is closed after its first value"
        assert numbers.ask(0) is None
        assert list(numbers.stream(3)) == [1, 2, 3]
        records: List[Any] = []
        deadline = time.monotonic() + 10
        while len(records) < 6 and time.monotonic() < deadline:
            records += reader.poll(0.2)
    finally:
        reader.close()
    # ask(3), ask(0): one reply each; stream(3): three values and an end marker.
    assert len(records) == 6
    assert app.reply_consumer.table.unknown == 0
