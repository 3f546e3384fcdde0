"""Unit tests for replies.core.table.CorrelationTable, with plain threads."""

from __future__ import annotations

import queue
import random
import threading
import time
import uuid
from concurrent.futures import CancelledError
from typing import Any, Callable, Dict, List

import pytest

from replies.core.promise import BarrierState, ReplyPromise, ReplyStream, ReplyTuple
from replies.core.table import CorrelationTable, Reply
from replies.errors import ClosedError, RemoteError, ReplyConsumerError, ReplyTimeoutError

TOPIC = "f-reply-test"


def new_id() -> str:
    return str(uuid.uuid4())


def waiting(table: CorrelationTable, **kwargs: Any) -> ReplyPromise:
    """A fresh promise, registered in ``table``."""
    promise = ReplyPromise(TOPIC, new_id(), **kwargs)
    table.add(promise.correlation_id, promise)
    return promise


def assert_empty(table: CorrelationTable) -> None:
    assert len(table) == 0
    assert table._ids_of == {}  # no promise is kept alive by the table


# -- register and deliver ---------------------------------------------------


def test_deliver_fulfills_the_waiter_and_drops_its_entry() -> None:
    table = CorrelationTable()
    first, second = waiting(table), waiting(table)
    assert len(table) == 2
    assert table.deliver(Reply(first.correlation_id, {"n": 1})) is True
    assert first.result(0) == {"n": 1}
    assert not second.done()
    assert len(table) == 1
    assert (table.delivered, table.unknown) == (1, 0)


def test_unknown_and_late_ids_are_counted_and_dropped() -> None:
    table = CorrelationTable()
    promise = waiting(table)
    assert table.deliver(Reply("nobody-waits", 1)) is False
    assert table.deliver(Reply(promise.correlation_id, 2)) is True
    assert table.deliver(Reply(promise.correlation_id, 3)) is False  # a duplicate
    assert promise.result(0) == 2
    assert (table.delivered, table.unknown) == (1, 2)
    assert_empty(table)


def test_registering_an_awaited_id_twice_raises() -> None:
    table = CorrelationTable()
    promise = waiting(table)
    with pytest.raises(ValueError, match="already awaited"):
        table.add(promise.correlation_id, ReplyPromise(TOPIC, promise.correlation_id))
    assert len(table) == 1
    table.deliver(Reply(promise.correlation_id, "x"))
    assert promise.result(0) == "x"


def test_error_reply_rejects_the_promise() -> None:
    table = CorrelationTable()
    promise = waiting(table)
    error = RemoteError("ValueError", "bad input", correlation_id=promise.correlation_id)
    assert table.deliver(Reply(promise.correlation_id, error=error))
    with pytest.raises(RemoteError) as info:
        promise.result(0)
    assert info.value is error
    assert_empty(table)


def test_a_promise_that_is_already_done_is_not_kept() -> None:
    table = CorrelationTable()
    promise = ReplyPromise(TOPIC, "cid")
    promise.cancel()
    table.add("cid", promise)
    assert_empty(table)
    assert table.deliver(Reply("cid", 1)) is False


def test_discard_stops_waiting_for_one_id() -> None:
    table = CorrelationTable()
    promise = waiting(table)
    table.discard(promise.correlation_id)
    assert len(table) == 0
    assert table.deliver(Reply(promise.correlation_id, 1)) is False
    assert table.unknown == 1 and not promise.done()
    table.discard("never-registered")  # harmless


# -- cancel, expire, close ----------------------------------------------------


def test_cancelling_a_promise_removes_it_from_the_table() -> None:
    table = CorrelationTable()
    promise, other = waiting(table), waiting(table)
    assert promise.cancel()
    assert len(table) == 1
    assert table.deliver(Reply(promise.correlation_id, 1)) is False
    with pytest.raises(CancelledError):
        promise.result(0)
    other.cancel()
    assert_empty(table)


def test_expire_fails_promises_whose_deadline_passed() -> None:
    table = CorrelationTable()
    soon = waiting(table, timeout=10)
    later = waiting(table, timeout=60)
    forever = waiting(table)
    assert soon.deadline is not None and later.deadline is not None
    assert table.next_deadline() == soon.deadline

    assert table.expire(now=soon.deadline - 1) == 0
    assert table.expire(now=soon.deadline + 1) == 1
    with pytest.raises(ReplyTimeoutError) as info:
        soon.result(0)
    assert isinstance(info.value, TimeoutError)
    assert (info.value.correlation_id, info.value.timeout) == (soon.correlation_id, 10)
    assert not later.done() and not forever.done()
    assert len(table) == 2
    assert table.next_deadline() == later.deadline
    assert table.deliver(Reply(soon.correlation_id, "too late")) is False


@pytest.mark.timeout(10)
def test_expire_uses_the_monotonic_clock_by_default() -> None:
    table = CorrelationTable()
    promise = waiting(table, timeout=0.02)
    time.sleep(0.05)
    assert table.expire() == 1
    assert isinstance(promise.exception(0), ReplyTimeoutError)
    assert_empty(table)
    assert table.next_deadline() is None


def test_expire_skips_promises_that_finished_early() -> None:
    table = CorrelationTable()
    promise = waiting(table, timeout=10)
    table.deliver(Reply(promise.correlation_id, "in time"))
    assert promise.deadline is not None
    assert table.expire(now=promise.deadline + 1) == 0
    assert promise.result(0) == "in time"


def test_close_fails_every_waiter_and_refuses_new_ones() -> None:
    table = CorrelationTable()
    promises = [waiting(table), waiting(table, timeout=30)]
    barrier = BarrierState(TOPIC)
    table.add(new_id(), barrier)
    table.add(new_id(), barrier)
    assert table.close("client closed") == 3
    for promise in promises + [barrier]:
        with pytest.raises(ClosedError, match="client closed"):
            promise.result(0)
    assert_empty(table)

    late = ReplyPromise(TOPIC, "late")
    with pytest.raises(ClosedError):
        table.add("late", late)
    assert isinstance(late.exception(0), ClosedError)  # the promise is failed too
    assert_empty(table)

    table.reopen()
    again = waiting(table)
    assert len(table) == 1 and not again.done()


def test_close_builds_each_error_with_the_given_factory() -> None:
    table = CorrelationTable()
    first, second = waiting(table), waiting(table)
    assert table.close("consumer died", ReplyConsumerError) == 2
    errors = [first.exception(0), second.exception(0)]
    assert all(isinstance(e, ReplyConsumerError) for e in errors)
    assert errors[0] is not errors[1]
    assert table.close("again") == 0


def test_table_is_empty_after_all_promises_finish_in_every_way() -> None:
    table = CorrelationTable()
    fulfilled, cancelled = waiting(table), waiting(table)
    expired = waiting(table, timeout=5)
    rejected, closed = waiting(table), waiting(table, timeout=60)
    stream = ReplyStream(TOPIC, new_id())
    table.add(stream.correlation_id, stream)
    barrier = BarrierState(TOPIC)
    members = [ReplyPromise(TOPIC, new_id()) for _ in range(3)]
    for member in members:
        barrier.add(member)
        table.add(member.correlation_id, barrier)
    barrier.finalize()
    assert len(table) == 9

    table.deliver(Reply(fulfilled.correlation_id, 1))
    cancelled.cancel()
    assert expired.deadline is not None
    table.expire(now=expired.deadline)
    table.deliver(Reply(rejected.correlation_id, error=RemoteError("E", "m")))
    table.deliver(Reply(stream.correlation_id, 1, more=True))
    table.deliver(Reply(stream.correlation_id, end=True))
    for member in members:
        table.deliver(Reply(member.correlation_id, 2))
    assert len(table) == 1
    table.close("shutting down")

    assert all(p.done() for p in [fulfilled, cancelled, expired, rejected, closed, stream, barrier])
    assert isinstance(closed.exception(0), ClosedError)
    assert barrier.result(0) is True and stream.result(0) is True
    assert_empty(table)


@pytest.mark.timeout(30)
def test_deadline_heap_stays_bounded_when_promises_finish_early() -> None:
    table = CorrelationTable()
    for _ in range(10_000):
        promise = waiting(table, timeout=3600)
        table.deliver(Reply(promise.correlation_id, None))
    assert_empty(table)
    assert len(table._deadlines) <= 64  # not one entry per finished promise

    live = [waiting(table, timeout=3600) for _ in range(100)]
    for _ in range(5_000):
        waiting(table, timeout=3600).cancel()
    assert len(table._deadlines) <= 2 * len(live) + 64
    assert table.expire(now=time.monotonic() + 7200) == 100
    assert all(isinstance(p.exception(0), ReplyTimeoutError) for p in live)
    assert_empty(table)


# -- streams and barriers ----------------------------------------------------


@pytest.mark.parametrize("last", [Reply("cid", "c"), Reply("cid", end=True)], ids=["plain", "end"])
def test_stream_takes_every_reply_until_one_without_more(last: Reply) -> None:
    table = CorrelationTable()
    stream = ReplyStream(TOPIC, "cid")
    table.add("cid", stream)
    for value in ("a", "b"):
        assert table.deliver(Reply("cid", value, more=True))
        assert len(table) == 1 and not stream.done()
    assert table.deliver(last)
    assert stream.result(0) is True
    expected = ["a", "b"] + ([] if last.end else ["c"])
    assert [r.value for r in stream.iterate(timeout=1)] == expected
    assert_empty(table)
    assert table.deliver(Reply("cid", "d", more=True)) is False


def test_stream_error_reply_ends_the_stream() -> None:
    table = CorrelationTable()
    stream = ReplyStream(TOPIC, "cid")
    table.add("cid", stream)
    table.deliver(Reply("cid", "a", more=True))
    table.deliver(Reply("cid", error=RemoteError("OSError", "disk full")))
    iterator = stream.iterate(timeout=1)
    assert next(iterator).value == "a"
    with pytest.raises(RemoteError, match="disk full"):
        next(iterator)
    assert_empty(table)


def test_barrier_member_error_reaches_the_reader() -> None:
    table = CorrelationTable()
    barrier = BarrierState(TOPIC)
    ids = [new_id(), new_id()]
    for cid in ids:
        barrier.add(ReplyPromise(TOPIC, cid))
        table.add(cid, barrier)
    barrier.finalize()
    table.deliver(Reply(ids[0], error=RemoteError("KeyError", "'sku'")))
    table.deliver(Reply(ids[1], "ok"))
    iterator = barrier.iterate(timeout=1)
    with pytest.raises(RemoteError, match="sku"):
        next(iterator)
    assert barrier.get_nowait() == ReplyTuple(ids[1], "ok")
    assert_empty(table)


def test_barrier_deadline_expires_the_whole_barrier() -> None:
    table = CorrelationTable()
    barrier = BarrierState(TOPIC, timeout=5)
    ids = [new_id(), new_id()]
    for cid in ids:
        barrier.add(ReplyPromise(TOPIC, cid))
        table.add(cid, barrier)
    barrier.finalize()
    table.deliver(Reply(ids[0], "a"))
    assert barrier.deadline is not None
    assert table.expire(now=barrier.deadline) == 1
    received = []
    with pytest.raises(ReplyTimeoutError):
        for reply in barrier.iterate(timeout=1):
            received.append(reply)
    assert received == [ReplyTuple(ids[0], "a")]
    assert_empty(table)


@pytest.mark.timeout(60)
def test_join_of_5000_with_no_reader_while_sending() -> None:
    table = CorrelationTable()
    barrier = BarrierState(TOPIC)
    expected: Dict[str, Any] = {}
    for n in range(5_000):
        cid = new_id()
        barrier.add(ReplyPromise(TOPIC, cid))
        table.add(cid, barrier)
        expected[cid] = {"n": n, "double": 2 * n}
    assert len(table) == 5_000

    replies = [Reply(cid, value) for cid, value in expected.items()]
    random.Random(5000).shuffle(replies)
    assert all(table.deliver(reply) for reply in replies)  # nobody reads yet
    assert len(table) == 0 and not barrier.done()

    barrier.finalize()
    assert barrier.result(0) is True
    received = list(barrier.iterate(timeout=10))
    assert len(received) == 5_000
    assert dict(received) == expected
    with pytest.raises(queue.Empty):
        barrier.get_nowait()
    assert_empty(table)


# -- threads ----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_callers_wait_while_a_reply_thread_delivers() -> None:
    table = CorrelationTable()
    requests: queue.Queue[object] = queue.Queue()
    results: List[List[Any]] = [[] for _ in range(4)]

    def deliver() -> None:
        while (cid := requests.get()) is not None:
            assert isinstance(cid, str)
            table.deliver(Reply(cid, cid[::-1]))

    def call(k: int) -> None:
        for _ in range(250):
            promise = waiting(table, timeout=30)
            requests.put(promise.correlation_id)
            results[k].append((promise.result(timeout=10), promise.correlation_id[::-1]))

    reply_thread = threading.Thread(target=deliver, name="test-reply-thread")
    reply_thread.start()
    callers = [threading.Thread(target=call, args=(k,), name=f"test-caller-{k}") for k in range(4)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join(30)
    requests.put(None)
    reply_thread.join(10)
    assert not any(t.is_alive() for t in callers + [reply_thread])
    assert sum(len(r) for r in results) == 1_000
    assert all(got == want for r in results for got, want in r)
    assert table.delivered == 1_000 and table.unknown == 0
    assert_empty(table)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("finish", ["deliver", "error", "cancel", "expire", "close"])
def test_done_callback_may_call_back_into_the_table_without_deadlock(finish: str) -> None:
    table = CorrelationTable()
    promise = waiting(table, timeout=30)
    seen: List[Any] = []

    def reenter(p: Any) -> None:
        seen.append(len(table))
        try:
            seen.append(waiting(table).correlation_id in table._waiters)
        except ClosedError:
            seen.append("closed")
        seen.append(table.deliver(Reply(p.correlation_id, "again")))

    promise.add_done_callback(reenter)
    cid = promise.correlation_id
    assert promise.deadline is not None
    actions: Dict[str, Callable[[], object]] = {
        "deliver": lambda: table.deliver(Reply(cid, 1)),
        "error": lambda: table.deliver(Reply(cid, error=RemoteError("E", "m"))),
        "cancel": promise.cancel,
        "expire": lambda: table.expire(now=promise.deadline),
        "close": lambda: table.close("closing"),
    }
    finisher = threading.Thread(target=actions[finish], name="test-finisher")
    finisher.start()
    finisher.join(10)
    assert not finisher.is_alive(), "a done-callback deadlocked"
    assert promise.done()
    assert seen == [0, "closed" if finish == "close" else True, False]


# -- decoding only what somebody waits for ------------------------------------


def test_deliver_decodes_only_replies_somebody_waits_for() -> None:
    table = CorrelationTable()
    promise = waiting(table)
    decoded: List[Reply] = []

    def decode(reply: Reply) -> Reply:
        decoded.append(reply)
        return reply._replace(value=("decoded", reply.value))

    assert table.deliver(Reply("nobody", {"raw": 1}), decode) is False
    assert decoded == [] and table.unknown == 1
    assert table.deliver(Reply(promise.correlation_id, {"raw": 2}), decode) is True
    assert promise.result(0) == ("decoded", {"raw": 2})
    assert len(decoded) == 1
    assert_empty(table)


def test_a_reply_that_fails_to_decode_fails_only_its_waiter() -> None:
    from replies.errors import DecodeError

    table = CorrelationTable()
    bad, good = waiting(table), waiting(table)
    error = DecodeError("json_object_hook raised KeyError: 'x'")

    def decode(reply: Reply) -> Reply:
        if reply.correlation_id == bad.correlation_id:
            raise error
        return reply

    assert table.deliver(Reply(bad.correlation_id, {}), decode) is True
    assert bad.exception(0) is error
    assert not good.done()
    assert table.deliver(Reply(good.correlation_id, 7), decode) is True
    assert good.result(0) == 7
    assert_empty(table)


def test_fail_pending_fails_the_waiters_and_keeps_the_table_open() -> None:
    table = CorrelationTable()
    first, second = waiting(table), waiting(table)
    assert table.fail_pending("cannot read", ReplyConsumerError) == 2
    for promise in (first, second):
        with pytest.raises(ReplyConsumerError, match="cannot read"):
            promise.result(0)
    assert_empty(table)
    later = waiting(table)  # still accepted
    assert table.deliver(Reply(later.correlation_id, 1)) is True
    assert later.result(0) == 1
