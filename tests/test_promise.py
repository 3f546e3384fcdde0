"""Unit tests for replies.core.promise: ReplyTuple, ReplyPromise, ReplyStream.

BarrierState has its own file, tests/test_barrier.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import CancelledError, Future
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

from replies.core.promise import (
    ReplyPromise,
    ReplyStream,
    ReplyTuple,
    mark_reply_thread,
    new_correlation_id,
    on_reply_thread,
)
from replies.errors import DeadlockError, RemoteError, ReplyError, ReplyTimeoutError

ROOT = Path(__file__).resolve().parent.parent


def run_in_thread(fn: Callable[[], Any], *, reply_thread: bool = False) -> Dict[str, Any]:
    """Run ``fn`` on a fresh thread (marked as reply thread if asked).

    Returns ``{"result": ...}`` or ``{"error": ...}``; the thread is joined.
    """
    outcome: Dict[str, Any] = {}

    def target() -> None:
        if reply_thread:
            mark_reply_thread()
        try:
            outcome["result"] = fn()
        except BaseException as exc:  # handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="test-worker")
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "worker thread is stuck"
    return outcome


# -- ReplyTuple ------------------------------------------------------------


def test_reply_tuple_holds_correlation_id_and_value() -> None:
    reply = ReplyTuple("cid-1", {"x": 1})
    assert reply.correlation_id == "cid-1"
    assert reply.value == {"x": 1}
    correlation_id, value = reply
    assert (correlation_id, value) == ("cid-1", {"x": 1})
    assert isinstance(reply, tuple)


# -- ReplyPromise: construction and fulfilment ------------------------------


def test_promise_is_a_future_that_knows_its_request() -> None:
    promise = ReplyPromise("f-reply-1", "cid-1")
    assert isinstance(promise, Future)
    assert (promise.reply_to, promise.correlation_id) == ("f-reply-1", "cid-1")
    assert promise.deadline is None
    assert not promise.done()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: ReplyPromise("t"), id="missing"),
        pytest.param(lambda: ReplyPromise("t", ""), id="empty"),
        pytest.param(lambda: ReplyPromise("t", None), id="none"),  # type: ignore[arg-type]
    ],
)
def test_promise_needs_a_correlation_id(make: Callable[[], ReplyPromise]) -> None:
    with pytest.raises(ValueError, match="correlation_id"):
        make()


def test_promise_timeout_sets_a_monotonic_deadline_and_must_not_be_negative() -> None:
    before = time.monotonic()
    promise = ReplyPromise("t", "c", timeout=30)
    assert promise.deadline is not None
    assert before + 30 <= promise.deadline <= time.monotonic() + 30
    with pytest.raises(ValueError, match="timeout"):
        ReplyPromise("t", "c", timeout=-1)


def test_fulfill_sets_the_result() -> None:
    promise = ReplyPromise("t", "cid")
    assert promise.fulfill("cid", {"sum": 3}) is True
    assert promise.done()
    assert promise.result(0) == {"sum": 3}


def test_fulfill_with_another_correlation_id_raises_and_leaves_promise_pending() -> None:
    promise = ReplyPromise("t", "mine")
    with pytest.raises(ValueError, match="theirs"):
        promise.fulfill("theirs", 1)
    with pytest.raises(ValueError, match="theirs"):
        promise.reject("theirs", RemoteError("KeyError", "k"))
    assert not promise.done()


def test_foreign_correlation_id_raises_even_under_python_dash_o() -> None:
    # The check must be an explicit raise, not an ``assert`` that -O strips.
    code = (
        "import sys\n"
        "from replies.core.promise import ReplyPromise, ReplyStream\n"
        "from replies.errors import RemoteError\n"
        "assert sys.flags.optimize == 1\n"
        "p = ReplyPromise('t', 'mine')\n"
        "s = ReplyStream('t', 'mine')\n"
        "calls = [lambda: p.fulfill('theirs', 1),\n"
        "         lambda: p.reject('theirs', RemoteError('E', 'm')),\n"
        "         lambda: s.fulfill('theirs', 1),\n"
        "         lambda: s.end('theirs')]\n"
        "raised = 0\n"
        "for call in calls:\n"
        "    try:\n"
        "        call()\n"
        "    except ValueError:\n"
        "        raised += 1\n"
        "print(raised, p.done(), s.done())\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-O", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["4", "False", "False"]


def _finish(promise: ReplyPromise, how: str) -> None:
    if how == "fulfilled":
        assert promise.fulfill(promise.correlation_id, "first")
    elif how == "rejected":
        assert promise.reject(promise.correlation_id, RemoteError("KeyError", "'x'"))
    elif how == "cancelled":
        assert promise.cancel()
    elif how == "expired":
        assert promise.expire()
    else:  # pragma: no cover - a typo in the parametrisation
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["fulfilled", "rejected", "cancelled", "expired"])
def test_late_reply_to_a_finished_promise_is_ignored(how: str) -> None:
    promise = ReplyPromise("t", "cid", timeout=30)
    _finish(promise, how)
    state = (promise.cancelled(), None if promise.cancelled() else promise.exception(0))

    assert promise.fulfill("cid", "late") is False
    assert promise.reject("cid", RemoteError("ValueError", "late")) is False
    assert promise.expire() is False

    assert (promise.cancelled(), None if promise.cancelled() else promise.exception(0)) == state
    if how == "fulfilled":
        assert promise.result(0) == "first"


def test_reject_makes_result_raise_the_remote_error() -> None:
    promise = ReplyPromise("t", "cid")
    error = RemoteError("ZeroDivisionError", "division by zero", correlation_id="cid")
    assert promise.reject("cid", error) is True
    with pytest.raises(RemoteError) as info:
        promise.result(0)
    assert info.value is error
    assert (info.value.type_name, info.value.message) == ("ZeroDivisionError", "division by zero")
    assert promise.exception(0) is error


def test_cancelled_promise_result_raises_cancelled_error() -> None:
    promise = ReplyPromise("t", "cid")
    assert promise.cancel()
    with pytest.raises(CancelledError):
        promise.result(0)


# -- waiting ---------------------------------------------------------------


@pytest.mark.timeout(10)
def test_result_waits_for_a_reply_from_another_thread() -> None:
    promise = ReplyPromise("t", "cid")
    timer = threading.Timer(0.05, promise.fulfill, ("cid", 42))
    timer.start()
    try:
        assert promise.result(timeout=5) == 42
    finally:
        timer.join()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("wait", ["result", "exception"])
def test_wait_that_times_out_raises_reply_timeout_error(wait: str) -> None:
    promise = ReplyPromise("t", "cid")
    started = time.monotonic()
    with pytest.raises(ReplyTimeoutError) as info:
        getattr(promise, wait)(timeout=0.05)
    assert time.monotonic() - started >= 0.05
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, ReplyError)
    assert (info.value.correlation_id, info.value.timeout) == ("cid", 0.05)
    assert not promise.done()  # a wait that times out leaves the promise pending
    assert promise.fulfill("cid", 1)


def test_expired_promise_raises_its_own_timeout_not_the_wait_timeout() -> None:
    promise = ReplyPromise("f-reply-1", "cid", timeout=30)
    assert promise.expire()
    with pytest.raises(ReplyTimeoutError) as info:
        promise.result(timeout=0.01)
    assert info.value.timeout == 30  # the promise's deadline, not the wait's 0.01 s
    assert info.value is promise.exception(0)
    assert "within 30.0 s" in str(info.value)


@pytest.mark.parametrize(
    "wait",
    [
        pytest.param(lambda p: p.result(), id="result"),
        pytest.param(lambda p: p.result(timeout=5), id="result-timeout"),
        pytest.param(lambda p: p.exception(), id="exception"),
    ],
)
@pytest.mark.timeout(15)
def test_waiting_on_the_reply_thread_raises_deadlock_error(
    wait: Callable[[ReplyPromise], Any],
) -> None:
    promise = ReplyPromise("t", "cid")
    outcome = run_in_thread(lambda: wait(promise), reply_thread=True)
    assert isinstance(outcome.get("error"), DeadlockError)
    assert isinstance(outcome["error"], RuntimeError)
    assert not on_reply_thread()  # the mark is thread-local


@pytest.mark.timeout(10)
def test_a_done_promise_can_be_read_on_the_reply_thread() -> None:
    promise = ReplyPromise("t", "cid")
    promise.fulfill("cid", "ok")
    assert run_in_thread(promise.result, reply_thread=True) == {"result": "ok"}
    assert run_in_thread(on_reply_thread, reply_thread=True) == {"result": True}


@pytest.mark.timeout(10)
def test_done_callback_runs_on_the_fulfilling_thread_and_may_use_the_promise() -> None:
    promise = ReplyPromise("t", "cid")
    seen = []
    promise.add_done_callback(
        lambda p: seen.append((threading.current_thread().name, p.result(), p.fulfill("cid", 2)))
    )
    run_in_thread(lambda: promise.fulfill("cid", 1))
    assert seen == [("test-worker", 1, False)]


# -- ReplyStream -------------------------------------------------------------


def test_stream_stays_open_while_more_replies_follow() -> None:
    stream = ReplyStream("t", "cid")
    assert stream.streaming and not ReplyPromise.streaming
    assert stream.fulfill("cid", 1, more=True)
    assert stream.fulfill("cid", 2, more=True)
    assert not stream.done()
    assert stream.get_nowait() == ReplyTuple("cid", 1)
    assert stream.fulfill("cid", 3)  # no ``more``: the last one
    assert stream.result(0) is True
    assert list(stream.iterate(timeout=1)) == [ReplyTuple("cid", 2), ReplyTuple("cid", 3)]
    assert stream.fulfill("cid", 4) is False
    assert stream.end("cid") is False


def test_stream_end_marker_completes_without_a_value() -> None:
    stream = ReplyStream("t", "cid")
    stream.fulfill("cid", "a", more=True)
    assert stream.end("cid") is True
    assert [r.value for r in stream.iterate(timeout=1)] == ["a"]
    with pytest.raises(ValueError):
        stream.end("other")


def test_stream_error_is_raised_after_the_replies_before_it() -> None:
    stream = ReplyStream("t", "cid")
    stream.fulfill("cid", "a", more=True)
    stream.reject("cid", RemoteError("RuntimeError", "boom"))
    iterator = stream.iterate(timeout=1)
    assert next(iterator) == ReplyTuple("cid", "a")
    with pytest.raises(RemoteError, match="boom"):
        next(iterator)


@pytest.mark.timeout(10)
def test_stream_iterate_times_out_while_more_replies_are_due() -> None:
    stream = ReplyStream("t", "cid")
    stream.fulfill("cid", "a", more=True)
    received = []
    with pytest.raises(ReplyTimeoutError):
        for reply in stream.iterate(timeout=0.05):
            received.append(reply.value)
    assert received == ["a"]


def test_timeout_error_is_caught_as_a_futures_timeout_too() -> None:
    import concurrent.futures

    error = ReplyTimeoutError("late")
    assert isinstance(error, concurrent.futures.TimeoutError)
    assert isinstance(error, TimeoutError)


def test_new_correlation_ids_are_random_uuid4_text():
    ids = [new_correlation_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for cid in ids:
        parsed = uuid.UUID(cid)
        assert str(parsed) == cid  # canonical lower-case text form, as Faust's
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    # Every variant digit (8, 9, a, b) and every random digit occur.
    assert {cid[19] for cid in ids} == set("89ab")
    assert {c for cid in ids for c in cid[:8]} == set("0123456789abcdef")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_draws_other_correlation_ids_than_its_parent():
    new_correlation_id()  # the parent holds a batch of ids not drawn yet
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id, and leave at once
        os.write(write_end, new_correlation_id().encode())
        os._exit(0)
    os.close(write_end)
    try:
        child = os.read(read_end, 100).decode()
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert uuid.UUID(child).version == 4
    assert child != new_correlation_id()  # the parent's next one
