"""The correlation table: which promise waits for which correlation id.

Theory of operation
-------------------
Callers register a promise under a correlation id *before* the request is
sent, so a reply can never arrive before its waiter. A barrier registers
once per request, all under the same promise. The reply thread calls
:meth:`CorrelationTable.deliver` for every reply whose envelope it could
read; an id nobody waits for (late, duplicate, or another client's on a
shared reply topic) is counted and dropped, and the reply's value is never
decoded (``deliver``'s ``decode`` runs only for an awaited id), so a value
that the user's object hook cannot take harms nobody unless somebody waits
for it; then only that waiter fails.

An entry leaves the table when its reply is delivered (a stream's entry
stays until its last reply), and every entry of a promise leaves when that
promise finishes in any way: fulfilled, failed, cancelled, expired, or
failed by :meth:`close`. So the table holds only what is really awaited,
and its size is bounded by the requests in flight.

Deadlines sit in a heap that :meth:`expire` pops; entries of promises that
finished early are skipped then, and the heap is rebuilt when such dead
entries outnumber the live ones, so it stays bounded too.

``_lock`` guards every field. Promises are completed, and so their
callbacks run, only after it is released.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from concurrent.futures import Future
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Set, Tuple

from replies.core.promise import ReplyPromise
from replies.errors import ClosedError, RemoteError

__all__ = ["Reply", "CorrelationTable"]


class Reply(NamedTuple):
    """A decoded reply, as the reply thread hands it to the table."""

    correlation_id: str
    value: object = None
    #: Set when the agent raised; the value is then meaningless.
    error: Optional[RemoteError] = None
    #: Further replies to the same request follow (a streaming agent).
    more: bool = False
    #: An end-of-stream marker that carries no value.
    end: bool = False


class CorrelationTable:
    """Maps correlation ids to the promises that wait for them.

    Threading model: any thread may register; the reply thread delivers and
    expires; any thread may close. All methods are thread-safe and none
    blocks beyond the short internal lock.
    """

    def __init__(self) -> None:
        # Guards all fields below.
        self._lock = threading.Lock()
        self._waiters: Dict[str, ReplyPromise] = {}
        self._ids_of: Dict[ReplyPromise, Set[str]] = {}
        self._deadlines: List[Tuple[float, int, ReplyPromise]] = []
        self._seq = itertools.count()
        self._closed: Optional[str] = None
        #: Replies dropped because no promise waited for their id.
        self.unknown = 0
        #: Replies handed to a promise.
        self.delivered = 0

    def __len__(self) -> int:
        """The number of correlation ids awaited."""
        with self._lock:
            return len(self._waiters)

    def add(self, correlation_id: str, promise: ReplyPromise) -> None:
        """Register ``promise`` as the waiter for ``correlation_id``.

        Does not block. If the promise is already done, nothing stays
        registered.

        Raises:
            ValueError: the id is already registered.
            ClosedError: the table was closed (the promise is failed too).
        """
        with self._lock:
            closed = self._closed
            if closed is None:
                if correlation_id in self._waiters:
                    raise ValueError(f"correlation id {correlation_id} is already awaited")
                self._waiters[correlation_id] = promise
                ids = self._ids_of.get(promise)
                first = ids is None
                if first:
                    ids = self._ids_of[promise] = set()
                    if promise.deadline is not None:
                        heapq.heappush(
                            self._deadlines, (promise.deadline, next(self._seq), promise)
                        )
                assert ids is not None
                ids.add(correlation_id)
        if closed is not None:
            error = ClosedError(f"cannot wait for a reply: {closed}")
            promise._fail(error)
            raise error
        if first:
            # Outside the lock: runs at once if the promise is already done.
            promise.add_done_callback(self._on_done)

    def _on_done(self, promise: Future) -> None:  # type: ignore[type-arg]
        with self._lock:
            for correlation_id in self._ids_of.pop(promise, ()):  # type: ignore[call-overload]
                del self._waiters[correlation_id]
            self._compact_deadlines_locked()

    def _compact_deadlines_locked(self) -> None:
        if len(self._deadlines) > 64 and len(self._deadlines) > 2 * len(self._ids_of):
            self._deadlines = [e for e in self._deadlines if e[2] in self._ids_of]
            heapq.heapify(self._deadlines)

    def discard(self, correlation_id: str) -> None:
        """Stop waiting for one id (e.g. its request could not be sent)."""
        with self._lock:
            promise = self._waiters.pop(correlation_id, None)
            if promise is not None:
                self._ids_of[promise].discard(correlation_id)

    def deliver(self, reply: Reply, decode: Optional[Callable[[Reply], Reply]] = None) -> bool:
        """Hand a reply to its waiter. Called by the reply thread.

        Runs the waiter's done-callbacks on the calling thread.

        Args:
            reply: the reply, as far as it was decoded.
            decode: finishes decoding the reply (e.g. applies the user's
                object hook to its value); called only if a promise waits
                for the reply's id, outside the lock. If it raises an
                :class:`Exception`, the waiter fails with that exception.

        Returns:
            True if a promise waited for the reply's id.
        """
        cid = reply.correlation_id
        with self._lock:
            promise = self._waiters.get(cid)
            if promise is None:
                self.unknown += 1
                return False
            self.delivered += 1
            if not (promise.streaming and reply.more):
                del self._waiters[cid]
                self._ids_of[promise].discard(cid)
        if decode is not None and reply.error is None:
            try:
                reply = decode(reply)
            except Exception as exc:
                promise.reject(cid, exc)
                return True
        if reply.error is not None:
            promise.reject(cid, reply.error)
        elif promise.streaming:
            if reply.end:
                promise.end(cid)  # type: ignore[attr-defined]
            else:
                promise.fulfill(cid, reply.value, more=reply.more)  # type: ignore[call-arg]
        else:
            promise.fulfill(cid, reply.value)
        return True

    def next_deadline(self) -> Optional[float]:
        """The earliest ``time.monotonic()`` deadline registered, if any."""
        with self._lock:
            return self._deadlines[0][0] if self._deadlines else None

    def expire(self, now: Optional[float] = None) -> int:
        """Fail every promise whose deadline has passed.

        Returns:
            How many promises this call timed out.
        """
        now = time.monotonic() if now is None else now
        overdue: List[ReplyPromise] = []
        with self._lock:
            while self._deadlines and self._deadlines[0][0] <= now:
                _, _, promise = heapq.heappop(self._deadlines)
                if promise in self._ids_of:
                    overdue.append(promise)
        return sum(promise.expire() for promise in overdue)

    def close(
        self, reason: str, make_error: Callable[[str], BaseException] = ClosedError
    ) -> int:
        """Fail every waiting promise and refuse new ones.

        Args:
            reason: why, for the error messages.
            make_error: builds each promise's own exception from ``reason``.

        Returns:
            How many promises this call failed.
        """
        with self._lock:
            self._closed = reason
            promises: Iterable[ReplyPromise] = list(self._ids_of)
        return sum(promise._fail(make_error(reason)) for promise in promises)

    def fail_pending(
        self, reason: str, make_error: Callable[[str], BaseException]
    ) -> int:
        """Fail every waiting promise, but keep accepting new ones.

        For a reply consumer that cannot read for a while: those waiting
        now learn it, and requests made once it reads again are served.

        Returns:
            How many promises this call failed.
        """
        with self._lock:
            promises: Iterable[ReplyPromise] = list(self._ids_of)
        return sum(promise._fail(make_error(reason)) for promise in promises)

    def reopen(self) -> None:
        """Accept registrations again after :meth:`close`."""
        with self._lock:
            self._closed = None
