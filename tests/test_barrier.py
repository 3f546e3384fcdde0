"""Unit tests for BarrierState (replies.core.promise), with plain threads."""

from __future__ import annotations

import queue
import threading
import uuid
from concurrent.futures import CancelledError
from typing import Any, Callable, Dict, List

import pytest

from replies.core.promise import BarrierState, ReplyPromise, ReplyTuple, mark_reply_thread
from replies.errors import DeadlockError, RemoteError, ReplyTimeoutError

TOPIC = "f-reply-test"


def make_barrier(n: int, **kwargs: Any) -> tuple[BarrierState, List[str]]:
    """A barrier of ``n`` fresh promises, not finalized; and their ids."""
    barrier = BarrierState(TOPIC, **kwargs)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for cid in ids:
        barrier.add(ReplyPromise(TOPIC, cid))
    return barrier, ids


def start(target: Callable[[], object], name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name)
    thread.start()
    return thread


def drain(barrier: BarrierState) -> List[ReplyTuple]:
    replies = []
    while True:
        try:
            replies.append(barrier.get_nowait())
        except queue.Empty:
            return replies


# -- building and counting -------------------------------------------------


def test_barrier_is_a_promise_that_needs_no_correlation_id() -> None:
    barrier = BarrierState(TOPIC)
    assert isinstance(barrier, ReplyPromise)
    assert barrier.reply_to == TOPIC
    assert uuid.UUID(barrier.correlation_id)  # a fresh uuid4 of its own
    assert BarrierState(TOPIC).correlation_id != barrier.correlation_id
    assert BarrierState(TOPIC, correlation_id="join-1").correlation_id == "join-1"


def test_size_grows_while_adding_and_finalize_fixes_total() -> None:
    barrier = BarrierState(TOPIC)
    promises = [ReplyPromise(TOPIC, f"c{i}") for i in range(3)]
    for n, promise in enumerate(promises, 1):
        barrier.add(promise)
        assert (barrier.size, barrier.total, barrier.fulfilled) == (n, 0, 0)
    assert barrier.pending == promises
    barrier.finalize()
    assert (barrier.size, barrier.total, barrier.fulfilled) == (3, 3, 0)
    assert not barrier.done()


def test_add_after_finalize_raises() -> None:
    barrier, _ = make_barrier(1)
    barrier.finalize()
    with pytest.raises(RuntimeError, match="finalized"):
        barrier.add(ReplyPromise(TOPIC, "late"))
    assert (barrier.size, barrier.total, len(barrier.pending)) == (1, 1, 1)


@pytest.mark.parametrize("answered_first", [False, True])
def test_adding_a_correlation_id_twice_raises(answered_first: bool) -> None:
    barrier, (cid,) = make_barrier(1)
    if answered_first:
        barrier.fulfill(cid, 1)
    with pytest.raises(ValueError, match="twice"):
        barrier.add(ReplyPromise(TOPIC, cid))
    assert barrier.size == 1


def test_add_id_counts_a_request_without_a_promise() -> None:
    barrier = BarrierState(TOPIC)
    barrier.add_id("a")
    barrier.add(ReplyPromise(TOPIC, "b"))
    assert (barrier.size, [p.correlation_id for p in barrier.pending]) == (2, ["b"])
    with pytest.raises(ValueError, match="twice"):
        barrier.add_id("b")
    with pytest.raises(ValueError, match="twice"):
        barrier.add(ReplyPromise(TOPIC, "a"))
    with pytest.raises(ValueError, match="non-empty"):
        barrier.add_id("")
    assert barrier.fulfill("a", 1) and not barrier.fulfill("c", 3)
    barrier.finalize()
    assert not barrier.done()
    assert barrier.fulfill("b", 2)
    assert barrier.result(0) is True
    assert sorted(drain(barrier)) == [("a", 1), ("b", 2)]
    with pytest.raises(RuntimeError, match="finalized"):
        barrier.add_id("late")


@pytest.mark.parametrize("before_finalize", [0, 1, 2, 3])
def test_result_is_true_once_every_reply_arrived_after_finalize(before_finalize: int) -> None:
    barrier, ids = make_barrier(3)
    for cid in ids[:before_finalize]:
        assert barrier.fulfill(cid, cid.upper())
    assert not barrier.done()  # all arrived, or not: no total before finalize
    barrier.finalize()
    for cid in ids[before_finalize:]:
        assert not barrier.done()
        assert barrier.fulfill(cid, cid.upper())
    assert barrier.result(0) is True
    assert barrier.fulfilled == barrier.total == 3
    assert drain(barrier) == [ReplyTuple(cid, cid.upper()) for cid in ids]


def test_empty_barrier_completes_on_finalize() -> None:
    barrier = BarrierState(TOPIC)
    barrier.finalize()
    assert barrier.result(0) is True
    assert list(barrier.iterate(timeout=1)) == []


def test_each_correlation_id_counts_once() -> None:
    barrier, ids = make_barrier(2)
    assert barrier.fulfill(ids[0], "first") is True
    assert barrier.fulfill(ids[0], "again") is False
    assert barrier.fulfilled == 1
    barrier.finalize()
    assert not barrier.done()
    assert drain(barrier) == [ReplyTuple(ids[0], "first")]


def test_reply_that_is_not_part_of_the_barrier_is_ignored() -> None:
    barrier, (cid,) = make_barrier(1)
    barrier.finalize()
    assert barrier.fulfill("stranger", 1) is False
    assert barrier.reject("stranger", RemoteError("E", "m")) is False
    assert barrier.fulfilled == 0 and not barrier.done()
    with pytest.raises(queue.Empty):
        barrier.get_nowait()
    barrier.fulfill(cid, 2)
    assert barrier.result(0) is True


def test_fulfill_after_the_barrier_finished_is_ignored() -> None:
    barrier, ids = make_barrier(2)
    barrier.finalize()
    assert barrier.cancel()
    assert barrier.fulfill(ids[0], 1) is False
    assert barrier.fulfilled == 0
    with pytest.raises(CancelledError):
        list(barrier.iterate(timeout=1))


def test_reply_racing_cancel_is_not_buffered_after_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    barrier, ids = make_barrier(2)
    barrier.cancel()
    # As if fulfill() had checked done() just before cancel() won the race.
    monkeypatch.setattr(barrier, "done", lambda: False)
    assert barrier.fulfill(ids[0], 1) is False
    assert barrier.fulfilled == 0
    for _ in range(2):  # nothing hides behind the end marker
        with pytest.raises(queue.Empty):
            barrier.get_nowait()


# -- reading ----------------------------------------------------------------


def test_get_nowait_returns_replies_in_arrival_order_then_raises_empty() -> None:
    barrier, ids = make_barrier(3)
    with pytest.raises(queue.Empty):
        barrier.get_nowait()
    barrier.fulfill(ids[2], "c")
    barrier.fulfill(ids[0], "a")
    assert barrier.get_nowait() == ReplyTuple(ids[2], "c")
    assert barrier.get_nowait() == ReplyTuple(ids[0], "a")
    with pytest.raises(queue.Empty):
        barrier.get_nowait()
    barrier.finalize()
    barrier.fulfill(ids[1], "b")
    assert barrier.get_nowait() == ReplyTuple(ids[1], "b")
    for _ in range(2):  # stays empty once complete and read
        with pytest.raises(queue.Empty):
            barrier.get_nowait()


@pytest.mark.timeout(20)
def test_iterate_yields_each_reply_as_it_arrives_and_ends_when_complete() -> None:
    barrier, ids = make_barrier(3)
    barrier.finalize()
    arrived: queue.Queue[object] = queue.Queue()
    errors: List[BaseException] = []

    def read() -> None:
        try:
            for reply in barrier.iterate(timeout=10):
                arrived.put(reply)
        except BaseException as exc:  # handed back to the test
            errors.append(exc)
        arrived.put("end")

    reader = start(read, "test-reader")
    for n, cid in enumerate(ids):
        assert arrived.empty()
        barrier.fulfill(cid, n)
        # The reader gets this reply while the barrier is still incomplete.
        assert arrived.get(timeout=5) == ReplyTuple(cid, n)
    assert arrived.get(timeout=5) == "end"
    reader.join(5)
    assert not reader.is_alive() and errors == []


@pytest.mark.timeout(10)
@pytest.mark.parametrize("finalized", [False, True])
def test_iterate_times_out_when_the_barrier_is_not_complete(finalized: bool) -> None:
    barrier, ids = make_barrier(2)
    if finalized:
        barrier.finalize()
    barrier.fulfill(ids[0], "a")
    received = []
    with pytest.raises(ReplyTimeoutError) as info:
        for reply in barrier.iterate(timeout=0.05):
            received.append(reply)
    assert isinstance(info.value, TimeoutError)
    assert info.value.timeout == 0.05
    assert received == [ReplyTuple(ids[0], "a")]
    assert not barrier.done()


@pytest.mark.parametrize("read", ["iterate", "get_nowait"])
def test_member_error_is_raised_when_reached(read: str) -> None:
    barrier, ids = make_barrier(3)
    barrier.finalize()
    error = RemoteError("KeyError", "'sku'", correlation_id=ids[1])
    barrier.fulfill(ids[0], "a")
    assert barrier.reject(ids[1], error)
    barrier.fulfill(ids[2], "c")
    assert barrier.result(0) is True  # an error reply still answers its request
    if read == "iterate":
        iterator = barrier.iterate(timeout=1)
        assert next(iterator) == ReplyTuple(ids[0], "a")
        with pytest.raises(RemoteError) as info:
            next(iterator)
    else:
        assert barrier.get_nowait() == ReplyTuple(ids[0], "a")
        with pytest.raises(RemoteError) as info:
            barrier.get_nowait()
    assert info.value is error
    assert barrier.get_nowait() == ReplyTuple(ids[2], "c")  # the rest is still there


@pytest.mark.timeout(10)
def test_iterate_raises_cancelled_error_after_buffered_replies() -> None:
    barrier, ids = make_barrier(2)
    barrier.fulfill(ids[0], "a")
    barrier.cancel()
    iterator = barrier.iterate(timeout=1)
    assert next(iterator) == ReplyTuple(ids[0], "a")
    with pytest.raises(CancelledError):
        next(iterator)


@pytest.mark.timeout(10)
def test_iterate_on_the_reply_thread_raises_deadlock_error_instead_of_blocking() -> None:
    barrier, ids = make_barrier(2)
    barrier.fulfill(ids[0], "a")
    outcome: Dict[str, Any] = {"got": []}

    def read_on_reply_thread() -> None:
        mark_reply_thread()
        try:
            for reply in barrier.iterate():
                outcome["got"].append(reply)  # buffered replies need no wait
        except BaseException as exc:  # handed back to the test
            outcome["error"] = exc
        try:
            barrier.result()
        except BaseException as exc:  # handed back to the test
            outcome["result_error"] = exc

    start(read_on_reply_thread, "test-reply-thread").join(5)
    assert outcome["got"] == [ReplyTuple(ids[0], "a")]
    assert isinstance(outcome.get("error"), DeadlockError)
    assert isinstance(outcome.get("result_error"), DeadlockError)


# -- threads ----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_ten_thousand_replies_from_four_threads_reach_one_reader_exactly_once() -> None:
    barrier, ids = make_barrier(10_000)
    received: List[ReplyTuple] = []
    errors: List[BaseException] = []
    accepted = [0] * 4
    go = threading.Barrier(5)

    def read() -> None:
        try:
            received.extend(barrier.iterate(timeout=30))
        except BaseException as exc:  # handed back to the test
            errors.append(exc)

    def send(k: int) -> None:
        go.wait()
        accepted[k] = sum(barrier.fulfill(cid, f"v-{cid}") for cid in ids[k::4])

    reader = start(read, "test-reader")
    senders = [start(lambda k=k: send(k), f"test-sender-{k}") for k in range(4)]
    go.wait()
    barrier.finalize()  # races with the senders on purpose
    for thread in senders + [reader]:
        thread.join(30)
    assert not any(t.is_alive() for t in senders + [reader])
    assert errors == []
    assert sum(accepted) == 10_000
    assert len(received) == 10_000
    assert {r.correlation_id: r.value for r in received} == {cid: f"v-{cid}" for cid in ids}
    assert barrier.result(0) is True and barrier.fulfilled == 10_000


@pytest.mark.timeout(60)
def test_concurrent_duplicates_count_once_and_several_readers_share_the_replies() -> None:
    barrier, ids = make_barrier(2_000)
    barrier.finalize()
    received: List[List[ReplyTuple]] = [[], []]
    accepted = [0] * 4

    def read(k: int) -> None:
        received[k].extend(barrier.iterate(timeout=30))

    def send(k: int) -> None:
        accepted[k] = sum(barrier.fulfill(cid, k) for cid in ids)  # every id, 4 times

    threads = [start(lambda k=k: read(k), f"test-reader-{k}") for k in range(2)]
    threads += [start(lambda k=k: send(k), f"test-sender-{k}") for k in range(4)]
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads)
    assert sum(accepted) == barrier.fulfilled == 2_000
    got = [r.correlation_id for r in received[0] + received[1]]
    assert sorted(got) == sorted(ids)  # each once, between both readers


@pytest.mark.timeout(20)
@pytest.mark.parametrize("finish", ["finalize", "fulfill", "reject", "cancel"])
def test_done_callback_may_call_back_into_the_barrier_without_deadlock(finish: str) -> None:
    barrier, ids = make_barrier(2)
    barrier.fulfill(ids[0], "a")
    if finish != "finalize":
        barrier.finalize()
    seen: List[Any] = []

    def reenter(b: Any) -> None:
        seen.append(b.get_nowait())
        seen.append((b.fulfilled, b.total, b.done(), b.fulfill(ids[1], "late")))
        with pytest.raises(RuntimeError):
            b.add(ReplyPromise(TOPIC, "more"))
        seen.append(repr(b))

    barrier.add_done_callback(reenter)
    if finish == "finalize":
        barrier.fulfill(ids[1], "b")
    actions: Dict[str, Callable[[], object]] = {
        "finalize": barrier.finalize,
        "fulfill": lambda: barrier.fulfill(ids[1], "b"),
        "reject": lambda: barrier.reject(ids[1], RemoteError("E", "m")),
        "cancel": barrier.cancel,
    }
    finisher = start(actions[finish], "test-finisher")
    finisher.join(10)
    assert not finisher.is_alive(), "a done-callback deadlocked"
    assert len(seen) == 3
    assert seen[0] == ReplyTuple(ids[0], "a")
    assert seen[1][2] is True and seen[1][3] is False
