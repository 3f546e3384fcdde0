"""What an App counts, and who hears of it: figures, listeners, stats().

Theory of operation
-------------------
One :class:`Observer` per App. The asking side reports each request twice:
when it is sent (:meth:`Observer.watch` for one request, or a
:class:`CountedBarrier` for ``map``/``join``) and when it settles, through
a done-callback on its promise (or the barrier's ``fulfill``/``reject`` for
each reply and its done-callback for the requests left unanswered). Every
request settles exactly once, as one of: a reply (``replies``, of which
``error_replies`` were the agent's errors), a timeout, a cancellation, a
close of the App (``closed``), a failure to send (``send_errors``), or a
reply that could not be decoded (``undecodable``); ``pending`` is what has
not settled yet. Counting is a ``next()`` on an :func:`itertools.count`
(see :mod:`replies.observe.metrics`): no lock on the hot path.

Listeners are called synchronously on the thread where the event happens
(see :class:`Listener`); an exception from one is logged and swallowed.
The listener set is an immutable tuple replaced under ``_lock``, so the hot
path reads it without locking.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from replies.core.promise import BarrierState, ReplyPromise, ReplyTuple
from replies.errors import (
    ClosedError,
    DecodeError,
    RemoteError,
    ReplyConsumerError,
    ReplyTimeoutError,
)
from replies.observe.context import RequestInfo
from replies.observe.metrics import Counter, LatencyWindow, _percentile

if TYPE_CHECKING:
    from replies.app import App

__all__ = ["Observer", "Listener", "TopicFigures", "AgentFigures", "CountedBarrier"]

logger = logging.getLogger("replies.ask")
_listener_logger = logging.getLogger("replies.listeners")

# A cancel this close to the deadline is the caller's wait running out: a
# timeout, not a change of mind.
_TIMEOUT_SLACK = 0.01

EVENTS = ("on_request_sent", "on_reply", "on_error_reply", "on_timeout", "on_request_handled")


class Listener:
    """Callbacks on request events; subclass it and override what you need.

    Attach one with :meth:`App.add_listener` (any object with some of these
    methods will do; it need not subclass this). Each method runs
    synchronously on the thread where the event happens, so keep it quick
    and never wait for a reply in it; an exception it raises is logged
    (logger ``replies.listeners``) and never reaches the library.
    """

    def on_request_sent(self, topic: str, correlation_id: str) -> None:
        """A request was handed to the producer (on the asking thread)."""

    def on_reply(self, topic: str, correlation_id: str, seconds: float) -> None:
        """A reply arrived (on the reply thread).

        ``seconds`` is the time since the request was sent; for the
        requests of a ``map``/``join``, since the batch began sending.
        """

    def on_error_reply(self, topic: str, correlation_id: str, error: RemoteError) -> None:
        """The agent answered with an error (on the reply thread)."""

    def on_timeout(self, topic: str, correlation_id: str, timeout: Optional[float]) -> None:
        """No reply came within ``timeout`` seconds (on the reply thread, or
        the waiting thread when its own wait ran out)."""

    def on_request_handled(
        self, agent: str, request: RequestInfo, seconds: float, error: Optional[BaseException]
    ) -> None:
        """An agent's handler finished a request (on the handler's thread).

        ``error`` is what the handler raised (an error reply was sent), or
        None.
        """


# How a request settled.
REPLY = "reply"
ERROR_REPLY = "error_reply"
TIMEOUT = "timeout"
CANCELLED = "cancelled"
CLOSED = "closed"
SEND_ERROR = "send_error"
UNDECODABLE = "undecodable"

# The counters of each way to settle.
_COUNTERS_OF = {
    REPLY: ("replies",),
    ERROR_REPLY: ("replies", "error_replies"),
    TIMEOUT: ("timeouts",),
    CANCELLED: ("cancelled",),
    CLOSED: ("closed",),
    SEND_ERROR: ("send_errors",),
    UNDECODABLE: ("undecodable",),
}


def classify(promise: ReplyPromise, error: Optional[BaseException], cancelled: bool) -> str:
    """How a request settled, from how its promise completed."""
    if cancelled:
        deadline = promise.deadline
        if deadline is not None and time.monotonic() >= deadline - _TIMEOUT_SLACK:
            return TIMEOUT  # the caller's own wait ran out
        return CANCELLED
    if error is None:
        return REPLY
    if isinstance(error, RemoteError):
        return ERROR_REPLY
    if isinstance(error, ReplyTimeoutError):
        return TIMEOUT
    if isinstance(error, (ClosedError, ReplyConsumerError)):
        return CLOSED
    if isinstance(error, DecodeError):
        return UNDECODABLE
    return SEND_ERROR


class TopicFigures:
    """The asking side's counts for one request topic.

    Attributes are :class:`Counter` objects (``sent``, ``replies``,
    ``error_replies``, ``timeouts``, ``cancelled``, ``closed``,
    ``send_errors``, ``undecodable``) and ``ask_seconds``, a
    :class:`LatencyWindow` of single requests' round trips.
    """

    COUNTS = (
        "sent",
        "replies",
        "error_replies",
        "timeouts",
        "cancelled",
        "closed",
        "send_errors",
        "undecodable",
    )

    __slots__ = ("topic", *COUNTS, "ask_seconds")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.sent = Counter()
        self.replies = Counter()
        self.error_replies = Counter()
        self.timeouts = Counter()
        self.cancelled = Counter()
        self.closed = Counter()
        self.send_errors = Counter()
        self.undecodable = Counter()
        self.ask_seconds = LatencyWindow()

    def count(self, kind: str, n: int = 1) -> None:
        """Count ``n`` requests that settled as ``kind`` (see :func:`classify`)."""
        if n == 1:
            for name in _COUNTERS_OF[kind]:
                getattr(self, name).inc()
        else:
            for name in _COUNTERS_OF[kind]:
                getattr(self, name).add(n)

    def counts(self) -> Dict[str, int]:
        """The counts, with ``pending`` (sent and not settled yet)."""
        figures = {name: getattr(self, name).value for name in self.COUNTS}
        # Read `sent` last: a request settles only after it was counted
        # sent, so this never goes negative under concurrent updates.
        settled = sum(figures[n] for n in self.COUNTS[1:] if n != "error_replies")
        figures["sent"] = self.sent.value
        figures["pending"] = max(0, figures["sent"] - settled)
        return figures


class AgentFigures:
    """A served agent's counts kept by this module (the worker keeps the
    rest): handler time, casts served, requests in the handler now."""

    __slots__ = ("agent", "handler_seconds", "casts", "raised", "_in_handler", "_left_handler")

    def __init__(self, agent: str) -> None:
        self.agent = agent
        self.handler_seconds = LatencyWindow()
        self.casts = Counter()
        #: Handler calls that raised.
        self.raised = Counter()
        self._in_handler = Counter()
        self._left_handler = Counter()

    def entered(self) -> None:
        """A handler call starts."""
        self._in_handler.inc()

    def left(self, seconds: float) -> None:
        """A handler call ended after ``seconds``."""
        self.handler_seconds.record(seconds)
        self._left_handler.inc()

    @property
    def entered_handler(self) -> int:
        """Handler calls started in all."""
        return self._in_handler.value

    @property
    def in_handler(self) -> int:
        """Handler calls running now."""
        left = self._left_handler.value
        return max(0, self._in_handler.value - left)


class Observer:
    """Counts an App's requests and tells its listeners.

    Threading model: every method may be called from any thread; see the
    module's theory of operation. ``_lock`` guards the creation of figures
    and the replacement of the listener tuples, never the counting.
    """

    def __init__(self) -> None:
        # Guards creating entries of `_topics`/`_agents` and replacing the
        # listener tuples; lookups of existing entries and counting do not
        # take it.
        self._lock = threading.Lock()
        self._topics: Dict[str, TopicFigures] = {}
        self._agents: Dict[str, AgentFigures] = {}
        self._listeners: Tuple[object, ...] = ()
        self.on_request_sent: Tuple[Callable[..., Any], ...] = ()
        self.on_reply: Tuple[Callable[..., Any], ...] = ()
        self.on_error_reply: Tuple[Callable[..., Any], ...] = ()
        self.on_timeout: Tuple[Callable[..., Any], ...] = ()
        self.on_request_handled: Tuple[Callable[..., Any], ...] = ()
        # Bound once: the hot path then makes no bound-method objects.
        self._settle_hook = self._settle
        self._announce_hook = self._announce

    # -- listeners ----------------------------------------------------------

    def add_listener(self, listener: object) -> None:
        """Attach a listener (see :class:`Listener`). Idempotent."""
        with self._lock:
            if listener not in self._listeners:
                self._set_listeners_locked(self._listeners + (listener,))

    def remove_listener(self, listener: object) -> None:
        """Detach a listener; unknown ones are ignored."""
        with self._lock:
            self._set_listeners_locked(tuple(x for x in self._listeners if x is not listener))

    def _set_listeners_locked(self, listeners: Tuple[object, ...]) -> None:
        self._listeners = listeners
        for event in EVENTS:
            methods = tuple(
                m for m in (getattr(x, event, None) for x in listeners) if callable(m)
            )
            setattr(self, event, methods)

    @staticmethod
    def emit(methods: Tuple[Callable[..., Any], ...], *args: Any) -> None:
        """Call each listener method; log what one raises, never raise."""
        for method in methods:
            try:
                method(*args)
            except Exception:
                _listener_logger.exception("listener %r raised", method)

    # -- figures ------------------------------------------------------------

    def topic(self, topic: str) -> TopicFigures:
        """The figures of a request topic (made on first use)."""
        figures = self._topics.get(topic)
        if figures is None:
            with self._lock:
                figures = self._topics.setdefault(topic, TopicFigures(topic))
        return figures

    def agent(self, agent: str) -> AgentFigures:
        """The figures of a served agent (made on first use)."""
        figures = self._agents.get(agent)
        if figures is None:
            with self._lock:
                figures = self._agents.setdefault(agent, AgentFigures(agent))
        return figures

    # -- the asking side ----------------------------------------------------

    def watch(self, figures: TopicFigures, promise: ReplyPromise) -> None:
        """Count one request about to be sent and follow its promise."""
        figures.sent.inc()
        promise._obs_figures = figures  # type: ignore[attr-defined]
        promise._obs_started = time.perf_counter()  # type: ignore[attr-defined]
        promise.settle_hook = self._settle_hook
        if self.on_reply or self.on_error_reply or self.on_timeout or logger.isEnabledFor(
            logging.DEBUG
        ):
            promise.add_done_callback(self._announce_hook)

    def sent(self, topic: str, correlation_id: str) -> None:
        """A request left (listeners and the debug log)."""
        if self.on_request_sent:
            self.emit(self.on_request_sent, topic, correlation_id)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("sent request %s to %s", correlation_id, topic)

    def _settle(
        self, promise: ReplyPromise, error: Optional[BaseException], cancelled: bool
    ) -> None:
        # The settle hook of a watched promise: count, before waiters wake.
        figures: TopicFigures = promise._obs_figures  # type: ignore[attr-defined]
        seconds = time.perf_counter() - promise._obs_started  # type: ignore[attr-defined]
        kind = REPLY if error is None and not cancelled else classify(promise, error, cancelled)
        if kind == REPLY:
            figures.replies.inc()
            figures.ask_seconds.record(seconds)
        else:
            figures.count(kind)
            if kind == ERROR_REPLY:
                figures.ask_seconds.record(seconds)
        promise._obs_outcome = (kind, seconds, error)  # type: ignore[attr-defined]

    def _announce(self, promise: "Future[Any]") -> None:
        # The done-callback of a watched promise: listeners and logs.
        outcome = getattr(promise, "_obs_outcome", None)
        if outcome is None:
            return
        kind, seconds, error = outcome
        assert isinstance(promise, ReplyPromise)
        figures: TopicFigures = promise._obs_figures  # type: ignore[attr-defined]
        self.announce(figures.topic, promise.correlation_id, kind, seconds, error, promise.timeout)

    def announce(
        self,
        topic: str,
        correlation_id: str,
        kind: str,
        seconds: float,
        error: Optional[BaseException],
        timeout: Optional[float],
    ) -> None:
        """Tell listeners and the debug log how a request settled."""
        if kind == REPLY:
            if self.on_reply:
                self.emit(self.on_reply, topic, correlation_id, seconds)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("answered %s from %s in %.1f ms", correlation_id, topic, seconds * 1e3)
        elif kind == ERROR_REPLY:
            if self.on_error_reply:
                self.emit(self.on_error_reply, topic, correlation_id, error)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "error reply to %s from %s in %.1f ms: %s",
                    correlation_id,
                    topic,
                    seconds * 1e3,
                    error,
                )
        elif kind == TIMEOUT:
            if self.on_timeout:
                self.emit(self.on_timeout, topic, correlation_id, timeout)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("timed out: %s to %s after %s s", correlation_id, topic, timeout)
        elif logger.isEnabledFor(logging.DEBUG):
            logger.debug("request %s to %s ended: %s %r", correlation_id, topic, kind, error)

    # -- the snapshot -------------------------------------------------------

    def stats(self, app: "App", *, lag: bool = False) -> Dict[str, Any]:
        """The figures as plain data; see :meth:`App.stats`."""
        with self._lock:
            topics = list(self._topics.values())
        by_topic: Dict[str, Dict[str, Any]] = {}
        total: Dict[str, Any] = {name: 0 for name in TopicFigures.COUNTS}
        total["pending"] = 0
        samples: List[float] = []
        count = 0
        for figures in topics:
            entry: Dict[str, Any] = dict(figures.counts())
            entry["ask_seconds"] = figures.ask_seconds.snapshot()
            by_topic[figures.topic] = entry
            for name, value in entry.items():
                if name != "ask_seconds":
                    total[name] += value
            count += figures.ask_seconds.count
            samples += figures.ask_seconds.samples()
        samples.sort()
        total["ask_seconds"] = {
            "count": count,
            "p50": _percentile(samples, 0.5),
            "p99": _percentile(samples, 0.99),
            "max": samples[-1] if samples else None,
        }
        consumer = app.reply_consumer
        table = getattr(consumer, "table", None)
        total["dropped_replies"] = int(getattr(table, "unknown", 0))
        total["undecodable_replies"] = int(getattr(consumer, "undecodable", 0))
        total["reply_poll_errors"] = int(getattr(consumer, "poll_errors", 0))
        return {
            "app": app.id,
            "asking": {"total": total, "topics": by_topic},
            "serving": self._serving(app, lag),
        }

    def _serving(self, app: "App", lag: bool) -> Dict[str, Dict[str, Any]]:
        serving: Dict[str, Dict[str, Any]] = {}
        for worker in list(getattr(app, "_workers", ())):
            name = worker.agent.name
            figures = self.agent(name)
            entry: Dict[str, Any] = {"topic": worker.agent.topic_name}
            # The worker's own counts where it keeps them; else ours.
            fallback = {"handled": figures.entered_handler, "error_replies": figures.raised.value}
            for counter in WORKER_COUNTS:
                entry[counter] = int(getattr(worker, counter, fallback.get(counter, 0)))
            entry["casts"] = figures.casts.value
            entry["in_flight"] = figures.in_handler
            entry["handler_seconds"] = figures.handler_seconds.snapshot()
            entry["lag"] = _lag(app, worker) if lag else None
            serving[name] = entry
        return serving


#: The per-agent counts an AgentWorker keeps as plain ints.
WORKER_COUNTS = (
    "handled",
    "error_replies",
    "skipped_expired",
    "skipped_undecodable",
    "reply_failures",
    "dead_lettered",
)


def _lag(app: "App", worker: Any) -> Optional[int]:
    """The agent's consumer group lag on its topic (admin round trips)."""
    try:
        readers = app.transport.describe_readers(worker.agent.topic_name)
    except Exception as exc:  # a broker that cannot say: unknown, not fatal
        logger.debug("no lag for %s: %r", worker.agent.name, exc)
        return None
    if readers is None:
        return None
    for group in readers.groups:
        if group.group_id == worker.agent.group_id:
            return group.lag
    return None


class CountedBarrier(BarrierState):
    """A :class:`BarrierState` that counts each of its requests' outcomes.

    Replies and error replies are counted as each is buffered (under the
    barrier's lock, so before the barrier can complete); the requests still
    unanswered when the barrier ends are counted by how it ended (timed
    out, cancelled, closed) by its settle hook, which also stops further
    replies from being buffered so none is counted twice.
    """

    def __init__(
        self,
        observer: Observer,
        figures: TopicFigures,
        reply_to: str,
        *,
        timeout: Optional[float] = None,
    ) -> None:
        super().__init__(reply_to, timeout=timeout, topic=figures.topic)
        self._observer = observer
        self._figures = figures
        self._started = time.perf_counter()
        # Under `_lock` (the base class's): set once the end was counted.
        self._settled = False
        self._ending: Tuple[str, List[str]] = (REPLY, [])
        self.settle_hook = self._on_settle
        if observer.on_timeout or logger.isEnabledFor(logging.DEBUG):
            self.add_done_callback(self._on_finished)

    def _put_locked(self, entry: Any) -> bool:
        if self._settled or not super()._put_locked(entry):
            return False
        if type(entry) is ReplyTuple:
            self._figures.replies.inc()
        else:  # a failure buffered in place of a reply
            self._figures.count(classify(self, entry.error, False))
        return True

    def fulfill(self, correlation_id: str, value: Any) -> bool:
        if not super().fulfill(correlation_id, value):
            return False
        self._tell(correlation_id, REPLY, None)
        return True

    def reject(self, correlation_id: str, error: BaseException) -> bool:
        if not super().reject(correlation_id, error):
            return False
        self._tell(correlation_id, classify(self, error, False), error)
        return True

    def _tell(self, correlation_id: str, kind: str, error: Optional[BaseException]) -> None:
        observer = self._observer
        if observer.on_reply or observer.on_error_reply or logger.isEnabledFor(logging.DEBUG):
            observer.announce(
                self._figures.topic,
                correlation_id,
                kind,
                time.perf_counter() - self._started,
                error,
                self.timeout,
            )

    def _on_settle(
        self, promise: ReplyPromise, error: Optional[BaseException], cancelled: bool
    ) -> None:
        # Under the future's condition (then `_lock`: the documented order).
        with self._lock:
            self._settled = True
            unanswered = list(self._unanswered)
        if unanswered:
            kind = classify(self, error, cancelled)
            self._figures.count(kind, len(unanswered))
            self._ending = (kind, unanswered)

    def _on_finished(self, _: "Future[Any]") -> None:
        kind, unanswered = self._ending
        if kind != TIMEOUT:
            return
        observer = self._observer
        if observer.on_timeout:
            for cid in unanswered:
                observer.emit(observer.on_timeout, self._figures.topic, cid, self.timeout)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "timed out: %d of %d requests to %s after %s s",
                len(unanswered),
                self.size,
                self._figures.topic,
                self.timeout,
            )
