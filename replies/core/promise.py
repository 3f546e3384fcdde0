"""Promises for replies: one reply, a stream of replies, or a barrier of many.

Theory of operation
-------------------
A :class:`ReplyPromise` is a :class:`concurrent.futures.Future` that one
thread (the reply thread) completes with :meth:`ReplyPromise.fulfill` while
other threads wait on it. It only holds state and synchronises; routing
replies to it is the job of :class:`replies.core.table.CorrelationTable`.

:class:`BarrierState` and :class:`ReplyStream` complete after *many* replies
and let waiters read replies as they arrive. Both buffer replies in an
unbounded :class:`queue.Queue`. When the promise itself finishes (result,
exception or cancellation), a done-callback puts one end marker into the
queue; every reply was put before it, so a reader that meets the end marker
has seen everything, and then learns how the promise ended.

Callbacks never run while a lock of this module is held: ``Future`` runs its
done-callbacks after releasing its own condition, and the barrier completes
itself only after releasing its lock. The one exception is
``ReplyPromise.settle_hook``, the library's own counting (never user code):
it runs under the future's condition, so that a count is updated before
any waiter wakes. Lock order: the condition, then a barrier's ``_lock``;
nothing takes the condition while holding ``_lock``.

Waiting on the reply thread would wait for a reply that only that thread can
deliver, so every blocking wait here raises :class:`DeadlockError` on a
thread marked with :func:`mark_reply_thread` instead of hanging.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any, Callable, Iterator, List, NamedTuple, Optional, Set, Union

from replies.errors import DeadlockError, ReplyTimeoutError

__all__ = [
    "ReplyTuple",
    "ReplyPromise",
    "BarrierState",
    "ReplyStream",
    "mark_reply_thread",
    "on_reply_thread",
    "new_correlation_id",
]

_thread_role = threading.local()

# concurrent.futures' states of a future not done yet (its `_state`).
_PENDING = "PENDING"
_NOT_DONE = frozenset({_PENDING, "RUNNING"})

# The RFC 4122 variant digit for each value of a random hex digit.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}

#: Correlation ids drawn from one ``os.urandom`` call: the call releases the
#: GIL, and getting it back behind busy threads cost more than the rest of
#: a request, so it is made once per batch rather than once per id.
_IDS_PER_DRAW = 256
# Each thread's unused random hex digits; made anew in a forked child, which
# must never draw the ids its parent will.
_id_bits = threading.local()
_NO_IDS: Iterator[str] = iter(())


def _forget_id_bits() -> None:
    global _id_bits
    _id_bits = threading.local()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_id_bits)


def new_correlation_id() -> str:
    """A fresh random (version 4) UUID in its text form, as Faust makes them.

    The same form and randomness as ``str(uuid.uuid4())`` (122 bits from
    ``os.urandom``), at a fraction of its cost: no :class:`uuid.UUID`
    object, and one system call per ``_IDS_PER_DRAW`` ids. Thread-safe.
    """
    bits = _id_bits
    h = next(getattr(bits, "ids", _NO_IDS), None)
    if h is None:
        digits = os.urandom(16 * _IDS_PER_DRAW).hex()
        bits.ids = ids = iter([digits[i : i + 32] for i in range(0, len(digits), 32)])
        h = next(ids)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


def mark_reply_thread() -> None:
    """Mark the calling thread as one that delivers replies (never waits)."""
    _thread_role.delivers_replies = True


def on_reply_thread() -> bool:
    """Return True on a thread marked by :func:`mark_reply_thread`."""
    return bool(getattr(_thread_role, "delivers_replies", False))


def _refuse_wait_on_reply_thread(what: str) -> None:
    if on_reply_thread():
        raise DeadlockError(
            f"{what} would block the reply thread, which is the thread that "
            "delivers replies: it would wait forever. Do not wait for replies "
            "inside a done-callback; hand the work to another thread."
        )


def _deadline(timeout: Optional[float]) -> Optional[float]:
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 or None, not {timeout!r}")
    return time.monotonic() + timeout


def _remaining(deadline: Optional[float]) -> Optional[float]:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def timeout_message(topic: Optional[str], timeout: Optional[float], missing: str = "") -> str:
    """The one wording of every reply timeout: what was asked, and a hint.

    Args:
        topic: the topic asked, if known.
        timeout: the seconds that ran out.
        missing: what was still awaited when some replies came, e.g.
            ``"3 of 10 replies"``; empty when nothing came.
    """
    seconds = "no time" if timeout is None else f"{float(timeout)} s"
    if topic is None:
        return f"no reply within {seconds}" + (f" ({missing} missing)" if missing else "")
    what = f"{missing} missing on topic {topic} after" if missing else (
        f"nobody answered on topic {topic} within"
    )
    return f"{what} {seconds}: is a worker serving it? `replies ping {topic}`"


class ReplyTuple(NamedTuple):
    """One reply: the request's correlation id and the reply value."""

    correlation_id: str
    value: Any


class ReplyPromise(Future):  # type: ignore[type-arg]
    """The future reply to one request.

    Args:
        reply_to: the topic the reply is expected on.
        correlation_id: the request's correlation id; must not be empty.
        timeout: seconds from now after which the promise's owner (the
            correlation table) fails it with :class:`ReplyTimeoutError`;
            ``None`` for no deadline.
        topic: the topic the request was sent to, for error messages.

    Raises:
        ValueError: the correlation id is empty, or the timeout negative.

    Threading model: any thread may wait on the promise; the reply thread
    completes it. Done-callbacks run on the thread that completes it (the
    reply thread, or the thread that cancels it). Waiting with
    :meth:`result` or :meth:`exception` on the reply thread raises
    :class:`DeadlockError` unless the promise is already done.
    """

    #: Whether the promise takes every reply to its request (streams) rather
    #: than the first one.
    streaming = False

    #: Called as ``hook(promise, error, cancelled)`` once, as the promise
    #: completes (``error`` is None for a result), under the future's
    #: condition and so before any waiter wakes. For the library's counters
    #: only: it must be quick and must not block, log or call user code.
    settle_hook: Optional[
        Callable[["ReplyPromise", Optional[BaseException], bool], None]
    ] = None

    def __init__(
        self,
        reply_to: str,
        correlation_id: str = "",
        *,
        timeout: Optional[float] = None,
        topic: Optional[str] = None,
    ) -> None:
        super().__init__()
        self._check_correlation_id(correlation_id)
        self.reply_to = reply_to
        self.correlation_id = correlation_id
        self.timeout = timeout
        self.topic = topic
        #: ``time.monotonic()`` value after which the promise times out.
        self.deadline = _deadline(timeout)

    def set_result(self, result: Any) -> None:
        hook = self.settle_hook
        if hook is None:
            return super().set_result(result)
        with self._condition:
            if self._state in _NOT_DONE:
                hook(self, None, False)
            super().set_result(result)

    def set_exception(self, exception: Optional[BaseException]) -> None:
        hook = self.settle_hook
        if hook is None:
            return super().set_exception(exception)
        with self._condition:
            if self._state in _NOT_DONE:
                hook(self, exception, False)
            super().set_exception(exception)

    def cancel(self) -> bool:
        hook = self.settle_hook
        if hook is None:
            return super().cancel()
        with self._condition:
            if self._state == _PENDING:
                hook(self, None, True)
            return super().cancel()

    def _check_correlation_id(self, correlation_id: str) -> None:
        if not correlation_id:
            raise ValueError("ReplyPromise needs a non-empty correlation_id")

    def _check_own(self, correlation_id: str) -> None:
        if correlation_id != self.correlation_id:
            raise ValueError(
                f"reply for correlation id {correlation_id!r} given to the "
                f"promise for {self.correlation_id!r}"
            )

    def fulfill(self, correlation_id: str, value: Any) -> bool:
        """Complete the promise with a reply value.

        Does not block. Done-callbacks run on the calling thread.

        Returns:
            True if this call completed the promise; False if it was already
            done or cancelled (the late reply is ignored).

        Raises:
            ValueError: the correlation id is not this promise's.
        """
        self._check_own(correlation_id)
        try:
            self.set_result(value)
        except InvalidStateError:
            return False
        return True

    def reject(self, correlation_id: str, error: BaseException) -> bool:
        """Complete the promise with an error (e.g. a remote error reply).

        Same contract as :meth:`fulfill`, with the exception as outcome.
        """
        self._check_own(correlation_id)
        return self._fail(error)

    def _fail(self, error: BaseException) -> bool:
        try:
            self.set_exception(error)
        except InvalidStateError:
            return False
        return True

    def expire(self) -> bool:
        """Fail the promise with :class:`ReplyTimeoutError` (its deadline passed).

        Returns:
            True if this call completed the promise.
        """
        return self._fail(self.timeout_error(self.timeout))

    def result(self, timeout: Optional[float] = None) -> Any:
        """Block until the reply arrives and return it.

        Args:
            timeout: seconds to wait; ``None`` waits as long as it takes.

        Raises:
            ReplyTimeoutError: not done within ``timeout`` (the promise stays
                pending; cancel it if nobody will wait again).
            RemoteError: the agent raised.
            ClosedError: the client closed first.
            concurrent.futures.CancelledError: the promise was cancelled.
            DeadlockError: called on the reply thread before completion.
        """
        if not self.done():
            _refuse_wait_on_reply_thread("ReplyPromise.result()")
        try:
            return super().result(timeout)
        except FutureTimeoutError as exc:
            # The outcome itself may be a timeout error (the promise expired).
            # Compare identities rather than asking done(): the promise may
            # have completed just after the wait ran out.
            if self.done() and not self.cancelled() and super().exception(0) is exc:
                raise
            raise self.timeout_error(timeout) from None

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        """Block until done; return the exception, or None on success.

        Raises the same errors as :meth:`result`, but not the outcome's own.
        """
        if not self.done():
            _refuse_wait_on_reply_thread("ReplyPromise.exception()")
        try:
            return super().exception(timeout)
        except FutureTimeoutError:
            raise self.timeout_error(timeout) from None

    def timeout_error(self, timeout: Optional[float]) -> ReplyTimeoutError:
        """The error for "``timeout`` s passed without the reply".

        One wording for every way a wait runs out (the promise's own
        deadline, or a caller's shorter wait), naming the topic asked.
        """
        return ReplyTimeoutError(
            timeout_message(self.topic, timeout, self._missing()),
            correlation_id=self.correlation_id,
            timeout=timeout,
            topic=self.topic,
        )

    def _missing(self) -> str:
        """What is still awaited, for timeout messages ("" for one reply)."""
        return ""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.correlation_id} {self._state}>"


class _Failure(NamedTuple):
    """An error reply buffered in place of a value."""

    correlation_id: str
    error: BaseException


# Put into the reply queue once, when the promise finishes.
_END = object()

_Entry = Union[ReplyTuple, _Failure, object]


class _BufferedReplies(ReplyPromise):
    """A promise whose replies can be read one by one as they arrive."""

    def __init__(
        self,
        reply_to: str,
        correlation_id: str,
        *,
        timeout: Optional[float] = None,
        topic: Optional[str] = None,
    ) -> None:
        super().__init__(reply_to, correlation_id, timeout=timeout, topic=topic)
        # Unbounded on purpose: replies must never be dropped because the
        # reader is slow or has not started reading yet.
        self._replies: queue.Queue[_Entry] = queue.Queue()
        # Guards ``_ended`` and so orders puts into ``_replies``: no reply is
        # put after the end marker, even when one races with cancel().
        # Subclasses guard their own counters with it too.
        self._lock = threading.Lock()
        self._ended = False
        self.add_done_callback(self._on_done)

    def _on_done(self, _: Future) -> None:  # type: ignore[type-arg]
        with self._lock:
            self._ended = True
            self._replies.put(_END)

    def _put_locked(self, entry: _Entry) -> bool:
        """Buffer one reply unless the end marker is already in."""
        if self._ended:
            return False
        self._replies.put(entry)
        return True

    def _unpack(self, entry: _Entry) -> ReplyTuple:
        if isinstance(entry, _Failure):
            raise entry.error
        assert isinstance(entry, ReplyTuple)
        return entry

    def _raise_outcome(self) -> None:
        # Leave the marker for other readers, then report how it ended.
        self._replies.put(_END)
        if self.cancelled():
            raise CancelledError()
        error = super().exception(0)
        if error is not None:
            raise error

    def get_nowait(self) -> ReplyTuple:
        """Return the next buffered reply without blocking.

        Raises:
            queue.Empty: no reply is buffered (also once all were read).
            RemoteError: the next buffered reply is an error reply.
        """
        entry = self._replies.get_nowait()
        if entry is _END:
            self._replies.put(_END)
            raise queue.Empty
        return self._unpack(entry)

    def iterate(self, timeout: Optional[float] = None) -> Iterator[ReplyTuple]:
        """Yield replies as they arrive until the promise is complete.

        Blocks between replies. Several readers may iterate at once; each
        reply goes to one of them.

        Args:
            timeout: seconds for the whole iteration; ``None`` for no limit.

        Raises:
            ReplyTimeoutError: not complete within ``timeout``.
            RemoteError: an error reply was reached.
            ClosedError: the client closed before completion.
            concurrent.futures.CancelledError: the promise was cancelled.
            DeadlockError: called on the reply thread.
        """
        deadline = _deadline(timeout)
        while True:
            try:
                entry = self._replies.get_nowait()
            except queue.Empty:
                _refuse_wait_on_reply_thread(f"{type(self).__name__}.iterate()")
                try:
                    entry = self._replies.get(timeout=_remaining(deadline))
                except queue.Empty:
                    raise self.timeout_error(timeout) from None
            if entry is _END:
                self._raise_outcome()
                return
            yield self._unpack(entry)


class BarrierState(_BufferedReplies):
    """Waits for the replies to many requests (``map`` and ``join``).

    Build it with :meth:`add` (one :class:`ReplyPromise` per request), then
    :meth:`finalize`. The reply thread calls :meth:`fulfill` for each reply;
    readers take replies with :meth:`get_nowait` or :meth:`iterate` in
    arrival order. Once finalized and every request is answered, the
    barrier's own result is ``True``.

    Each correlation id counts once: duplicates and ids that are not part of
    the barrier are ignored. Replies are buffered without limit.

    Args:
        reply_to: the reply topic of the requests.
        correlation_id: an id for the barrier itself (for logs); a fresh
            uuid4 by default.
        timeout: as for :class:`ReplyPromise`.
        topic: the topic the requests were sent to, for error messages.

    Threading model: :meth:`add` and :meth:`finalize` are called by the
    thread that builds the barrier; :meth:`fulfill` by the reply thread,
    possibly before :meth:`finalize`; readers on any other threads.
    ``_lock`` guards ``size``, ``total``, ``fulfilled``, the finalized flag,
    the sets of added and unanswered ids, and the end-of-replies flag.
    """

    def __init__(
        self,
        reply_to: str,
        correlation_id: Optional[str] = None,
        *,
        timeout: Optional[float] = None,
        topic: Optional[str] = None,
    ) -> None:
        super().__init__(
            reply_to, correlation_id or new_correlation_id(), timeout=timeout, topic=topic
        )
        # ``_lock`` (from the base class) also guards the fields below; it is
        # never held while completing the future.
        self.size = 0
        self.total = 0
        self.fulfilled = 0
        self.pending: List[ReplyPromise] = []
        self._added: Set[str] = set()
        self._unanswered: Set[str] = set()
        self._finalized = False

    def add(self, promise: ReplyPromise) -> None:
        """Add the promise of one request. Does not block.

        Raises:
            RuntimeError: the barrier is already finalized.
            ValueError: the promise's correlation id was already added.
        """
        self.add_id(promise.correlation_id)
        self.pending.append(promise)

    def add_id(self, correlation_id: str) -> None:
        """Add one request by its correlation id alone, as :meth:`add` does.

        Saves building a promise per request for a big ``join`` or ``map``
        (it is not kept in :attr:`pending`). Does not block.

        Raises:
            RuntimeError: the barrier is already finalized.
            ValueError: the correlation id was already added, or is empty.
        """
        self._check_correlation_id(correlation_id)
        with self._lock:
            if self._finalized:
                raise RuntimeError("cannot add to a finalized BarrierState")
            if correlation_id in self._added:
                raise ValueError(f"correlation id {correlation_id} added twice")
            self._added.add(correlation_id)
            self._unanswered.add(correlation_id)
            self.size += 1

    def finalize(self) -> None:
        """Fix the total; complete now if every reply already arrived."""
        with self._lock:
            self._finalized = True
            self.total = self.size
            complete = self.fulfilled == self.total
        if complete:
            self._complete()

    def _record(self, correlation_id: str, entry: _Entry) -> bool:
        with self._lock:
            if correlation_id not in self._unanswered:
                return False  # a duplicate, or not one of ours
            if not self._put_locked(entry):
                return False  # lost a race with cancel(), close or expiry
            self._unanswered.discard(correlation_id)
            self.fulfilled += 1
            complete = self._finalized and self.fulfilled == self.total
        if complete:
            self._complete()
        return True

    def _complete(self) -> None:
        try:
            self.set_result(True)
        except InvalidStateError:
            pass  # cancelled, closed or timed out meanwhile

    def fulfill(self, correlation_id: str, value: Any) -> bool:
        """Record one reply. Does not block; never raises for unknown ids.

        Returns:
            True if the reply was recorded; False for a duplicate, an id not
            in the barrier, or a barrier that is already done.
        """
        if self.done():
            return False
        return self._record(correlation_id, ReplyTuple(correlation_id, value))

    def reject(self, correlation_id: str, error: BaseException) -> bool:
        """Record an error reply for one request; readers raise it in turn."""
        if self.done():
            return False
        return self._record(correlation_id, _Failure(correlation_id, error))

    def _missing(self) -> str:
        with self._lock:
            unanswered, size = len(self._unanswered), self.size
        return "" if unanswered == size else f"{unanswered} of {size} replies"

    def __repr__(self) -> str:
        return (
            f"<BarrierState {self.correlation_id} {self.fulfilled}/"
            f"{self.total if self._finalized else str(self.size) + '+'} {self._state}>"
        )


class ReplyStream(_BufferedReplies):
    """Takes every reply to one request, for agents that yield many.

    Replies that say more will follow are buffered; the last reply (or the
    end marker) completes the stream with result ``True``.

    Threading model: as :class:`BarrierState`; one reply thread feeds it.
    """

    streaming = True

    def fulfill(self, correlation_id: str, value: Any, *, more: bool = False) -> bool:
        """Buffer one reply; without ``more`` it is the last one."""
        self._check_own(correlation_id)
        if self.done():
            return False
        with self._lock:
            if not self._put_locked(ReplyTuple(correlation_id, value)):
                return False
        if not more:
            self.end(correlation_id)
        return True

    def end(self, correlation_id: str) -> bool:
        """Complete the stream: no more replies will come."""
        self._check_own(correlation_id)
        try:
            self.set_result(True)
        except InvalidStateError:
            return False
        return True
