"""Asking: send requests to a topic and wait for the replies.

Every request is registered with the reply consumer *before* it is
produced, so an early reply is never lost; a waiter leaves the correlation
table when it is answered, times out, is cancelled, or the App closes.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Dict, Generator, Iterable, Iterator, List, Optional, Tuple, Union

from replies.core.codec import Message, deadline_after
from replies.core.promise import (
    BarrierState,
    ReplyPromise,
    ReplyStream,
    new_correlation_id,
    on_reply_thread,
)
from replies.errors import DeadlockError, NoRespondersError, ReplyTimeoutError
from replies.observe import otel
from replies.observe.observer import CountedBarrier

if TYPE_CHECKING:
    from replies.app import App

__all__ = ["Topic", "ReplyIterator", "DEFAULT"]


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


#: Stands for "the App's ``request_timeout``" in ``timeout=`` arguments.
DEFAULT: Any = _Default()

Timeout = Union[float, None, _Default]


def _refuse_on_reply_thread(what: str) -> None:
    if on_reply_thread():
        raise DeadlockError(
            f"{what} blocks until a reply arrives, but this is the reply thread "
            "(a done-callback?), which delivers replies: it would wait forever. "
            "Use ask_nowait() here, or hand the work to another thread."
        )


def _progress_class(progress: bool) -> Any:
    """tqdm's bar class when ``progress`` asks for one (``tqdm.auto``: a
    widget in Jupyter, text elsewhere), else None.

    Raises:
        ImportError: progress was asked for and tqdm is not installed.
    """
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError as exc:
        raise ImportError(
            "progress=True needs tqdm: pip install 'replies[progress]'"
        ) from exc
    return tqdm


class ReplyIterator(Iterator[Any]):
    """The replies of :meth:`Topic.map`, yielded as they arrive.

    Every request was sent when this is returned; ``len()`` is how many
    were sent, and the repr says how many replies were taken so far.
    Iterating blocks until the next reply (within the map's timeout).
    Closing it (or dropping it) stops waiting for the rest.

    Threading model: like a generator, one thread iterates it at a time.
    """

    def __init__(
        self,
        topic: str,
        barrier: BarrierState,
        seconds: Optional[float],
        progress: Any = None,
    ) -> None:
        self.topic_name = topic
        self._barrier = barrier
        self._replies = Topic._values(barrier, seconds)
        self._taken = 0
        self._bar = None if progress is None else progress(
            total=barrier.total, desc=topic, unit="reply"
        )

    def __len__(self) -> int:
        return self._barrier.total

    def __iter__(self) -> "ReplyIterator":
        return self

    def __next__(self) -> Any:
        try:
            value = next(self._replies)
        except BaseException:
            self._close_bar()
            raise
        self._taken += 1
        if self._bar is not None:
            self._bar.update(1)
        return value

    def close(self) -> None:
        """Stop waiting for the replies not taken yet. Does not block."""
        self._replies.close()
        # Closing a generator that never started skips its cleanup, so an
        # iterator closed before its first reply must cancel by itself.
        self._barrier.cancel()
        self._close_bar()

    def _close_bar(self) -> None:
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.close()

    def __repr__(self) -> str:
        state = "done" if self._barrier.done() else "waiting"
        return (
            f"<{type(self).__name__} {self.topic_name}: {self._taken} of "
            f"{len(self)} replies taken, {state}>"
        )


class Topic:
    """A request topic that can be asked: an agent of any app, by name.

    Get one from :meth:`App.topic` (or use an :class:`~replies.agent.Agent`,
    which is one). Asking starts the App if it was never started.

    Threading model: every method may be called from any thread at once;
    the blocking ones (:meth:`ask`, iterating :meth:`map`, :meth:`join`)
    raise :class:`DeadlockError` on the reply thread.
    """

    def __init__(self, app: "App", name: str) -> None:
        if not name:
            raise ValueError("a topic needs a name")
        self.app = app
        self.topic_name = name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.topic_name}>"

    # -- one request ------------------------------------------------------

    def ask(self, value: Any = None, *, key: Any = None, timeout: Timeout = DEFAULT) -> Any:
        """Send a request and block until its reply; return the reply value.

        Args:
            value: the request value (JSON-serializable by default).
            key: the request's Kafka key (bytes, str, or JSON-able).
            timeout: seconds to wait; ``None`` waits forever; by default the
                App's ``request_timeout``.

        Raises:
            ReplyTimeoutError: no reply in time (the waiter is removed).
            RemoteError: the agent raised.
            ClosedError: the App closed first.
            NoRespondersError: the topic does not exist (at once).
            TransportError: the request could not be sent.
            DeadlockError: called on the reply thread.
        """
        _refuse_on_reply_thread("ask()")
        promise = self.ask_nowait(value, key=key, timeout=timeout)
        try:
            # Sending may have taken part of the time (a metadata wait).
            left = None if promise.deadline is None else max(0.0, promise.deadline - time.monotonic())
            return promise.result(left)
        except ReplyTimeoutError:
            promise.cancel()
            # Report the request's timeout, not what was left of it.
            raise promise.timeout_error(promise.timeout) from None
        except BaseException:
            promise.cancel()  # Ctrl-C: stop waiting for it
            raise

    def ask_nowait(
        self, value: Any = None, *, key: Any = None, timeout: Timeout = DEFAULT
    ) -> ReplyPromise:
        """Send a request and return its promise at once.

        The promise is registered before the request leaves; it fails with
        :class:`ReplyTimeoutError` once ``timeout`` passes even if nobody
        waits on it. Cancel it to stop waiting. Its done-callbacks run on
        the reply thread. Blocks only while the topic's metadata is unknown
        (the first request to it), at most ``timeout``, and while the App
        starts (the first ask of an App never started).

        Raises:
            TypeError: the value cannot be serialized.
            ClosedError: the App was closed.
            NoRespondersError: the topic does not exist.
            TransportError: the request could not be queued.
        """
        seconds = self.app._timeout(timeout)
        reply_to = self.app._reply_topic(seconds)  # starts an App never started
        promise = ReplyPromise(reply_to, new_correlation_id(), timeout=seconds, topic=self.topic_name)
        self._request(promise, promise.correlation_id, key, value, seconds)
        return promise

    def stream(
        self, value: Any = None, *, key: Any = None, timeout: Timeout = DEFAULT
    ) -> Iterator[Any]:
        """Send a request and yield every reply of a streaming agent.

        An agent whose handler is a generator sends one reply per yielded
        value to a stream request; this yields each as it arrives and ends
        after the last. For a plain handler it yields its one reply.

        Args:
            timeout: for the whole stream (default: ``request_timeout``).

        Raises:
            as :meth:`ask`, while iterating.
        """
        seconds = self.app._timeout(timeout)
        reply_to = self.app._reply_topic(seconds)
        promise = ReplyStream(reply_to, new_correlation_id(), timeout=seconds, topic=self.topic_name)
        self._request(promise, promise.correlation_id, key, value, seconds, stream=True)
        return self._values(promise, seconds)

    # -- many requests ----------------------------------------------------

    def map(
        self,
        values: Iterable[Any],
        *,
        key: Any = None,
        timeout: Timeout = DEFAULT,
        progress: bool = False,
    ) -> ReplyIterator:
        """Send a request per value at once; yield replies as they arrive.

        All requests are sent before this returns (pipelined, not one round
        trip each); iterating blocks until the next reply. Replies come in
        arrival order; use :meth:`join` for input order.

        Args:
            values: request values; all get the same ``key``.
            timeout: for all the replies together.
            progress: show a tqdm progress bar while iterating (needs the
                ``progress`` extra; a widget in Jupyter).

        Returns:
            A :class:`ReplyIterator`: ``len()`` is the number of requests.

        Raises:
            as :meth:`ask` (sending errors at once, the rest while iterating;
            a :class:`RemoteError` when an error reply is reached).
            ImportError: ``progress=True`` without tqdm installed.
        """
        return self.kvmap(((key, value) for value in values), timeout=timeout, progress=progress)

    def kvmap(
        self,
        items: Iterable[Tuple[Any, Any]],
        *,
        timeout: Timeout = DEFAULT,
        progress: bool = False,
    ) -> ReplyIterator:
        """Like :meth:`map`, for ``(key, value)`` pairs: each its own key."""
        bar_class = _progress_class(progress)  # before sending: may raise
        barrier, _, seconds = self._send_all(items, timeout)
        return ReplyIterator(self.topic_name, barrier, seconds, bar_class)

    def join(
        self,
        values: Iterable[Any],
        *,
        key: Any = None,
        timeout: Timeout = DEFAULT,
        progress: bool = False,
    ) -> List[Any]:
        """Send a request per value; block until all replies; keep input order.

        Blocks up to ``timeout`` for all the replies together.

        Args:
            progress: show a tqdm progress bar while waiting (as :meth:`map`).

        Raises:
            as :meth:`ask`; the first error reply met is raised and the
            other waiters are removed.
            ImportError: ``progress=True`` without tqdm installed.
        """
        return self.kvjoin(((key, value) for value in values), timeout=timeout, progress=progress)

    def kvjoin(
        self,
        items: Iterable[Tuple[Any, Any]],
        *,
        timeout: Timeout = DEFAULT,
        progress: bool = False,
    ) -> List[Any]:
        """Like :meth:`join`, for ``(key, value)`` pairs: each its own key."""
        _refuse_on_reply_thread("join()")
        bar_class = _progress_class(progress)  # before sending: may raise
        barrier, order, seconds = self._send_all(items, timeout)
        bar = None if bar_class is None else bar_class(
            total=len(order), desc=self.topic_name, unit="reply"
        )
        replies: Dict[str, Any] = {}
        try:
            for reply in barrier.iterate(seconds):
                replies[reply.correlation_id] = reply.value
                if bar is not None:
                    bar.update(1)
        finally:
            barrier.cancel()  # a no-op once complete
            if bar is not None:
                bar.close()
        return [replies[cid] for cid in order]

    # -- without waiting ----------------------------------------------------

    def send(
        self,
        value: Any = None,
        *,
        key: Any = None,
        reply_to: Optional[str] = None,
        correlation_id: Optional[str] = None,
    ) -> Future[None]:
        """Send a request whose reply goes wherever ``reply_to`` says.

        Does not wait for a reply (this App does not expect one). Without
        ``reply_to`` it is a cast. A ``correlation_id`` is generated when
        ``reply_to`` is given without one.

        Returns:
            A future that completes when the broker acknowledged the request.
        """
        if reply_to is not None and not correlation_id:
            correlation_id = new_correlation_id()
        message = self.app.codec.encode_request(
            value, key=key, reply_to=reply_to, correlation_id=correlation_id
        )
        return self.app._produce(self.topic_name, message)

    def cast(self, value: Any = None, *, key: Any = None) -> Future[None]:
        """Send a request that wants no reply; see :meth:`send`."""
        return self.send(value, key=key)

    # -- internals ----------------------------------------------------------

    def _request(
        self,
        waiter: ReplyPromise,
        cid: str,
        key: Any,
        value: Any,
        seconds: Optional[float],
        *,
        stream: bool = False,
    ) -> None:
        """Encode, register the waiter for ``cid``, then produce."""
        message = self._encode(cid, key, value, seconds, waiter.reply_to, stream=stream)
        tracer = otel.tracer()
        if tracer is None:
            self._send(waiter, cid, message, seconds)
            return
        span = otel.start_client_span(tracer, self.topic_name, message.headers)
        otel.end_with(span, waiter)
        try:
            self._send(waiter, cid, message, seconds)
        except BaseException as exc:
            if not waiter.done():  # failed before it was registered
                otel.mark_failed(span, exc)
                span.end()
            raise

    def _encode(
        self,
        cid: str,
        key: Any,
        value: Any,
        seconds: Optional[float],
        reply_to: str,
        *,
        stream: bool = False,
    ) -> Message:
        return self.app.codec.encode_request(
            value,
            key=key,
            reply_to=reply_to,
            correlation_id=cid,
            deadline=deadline_after(seconds),
            stream=stream,
        )

    def _send(
        self, waiter: ReplyPromise, cid: str, message: Message, seconds: Optional[float]
    ) -> None:
        """Register the waiter for ``cid``, then produce ``message``."""
        app = self.app
        consumer = app._reply_consumer()
        observer = app.observer
        if observer is not None and not isinstance(waiter, CountedBarrier):
            observer.watch(observer.topic(self.topic_name), waiter)
        consumer.add(cid, waiter)

        def on_done(error: Optional[BaseException]) -> None:
            if error is not None:
                consumer.table.discard(cid)
                waiter.reject(cid, error)

        try:
            try:
                app._sending_transport(seconds).produce_then(
                    self.topic_name, message, on_done, timeout=seconds
                )
            except NoRespondersError as exc:
                raise NoRespondersError(
                    f"nobody serves topic {self.topic_name}: it does not exist. Is a "
                    f"worker serving it? Check with `replies ping {self.topic_name}`",
                    topic=self.topic_name,
                ) from exc
        except BaseException as exc:
            consumer.table.discard(cid)
            waiter.reject(cid, exc)
            raise
        if observer is not None:
            observer.sent(self.topic_name, cid)

    def _send_all(
        self, items: Iterable[Tuple[Any, Any]], timeout: Timeout
    ) -> Tuple[BarrierState, List[str], Optional[float]]:
        seconds = self.app._timeout(timeout)
        reply_to = self.app._reply_topic(seconds)  # starts an App never started
        observer = self.app.observer
        barrier: BarrierState
        if observer is None:
            barrier = BarrierState(reply_to, timeout=seconds, topic=self.topic_name)
        else:
            figures = observer.topic(self.topic_name)
            barrier = CountedBarrier(observer, figures, reply_to, timeout=seconds)
        tracer = otel.tracer()
        trace_headers: List[Tuple[str, bytes]] = []
        span = None
        if tracer is not None:
            span = otel.start_client_span(tracer, self.topic_name, trace_headers, operation="map")
            otel.end_with(span, barrier)
        order: List[str] = []
        try:
            for key, value in items:
                cid = new_correlation_id()
                message = self._encode(cid, key, value, seconds, barrier.reply_to)
                message.headers.extend(trace_headers)
                barrier.add_id(cid)
                order.append(cid)
                if observer is not None:
                    figures.sent.inc()
                self._send(barrier, cid, message, seconds)
        except BaseException:
            barrier.cancel()
            raise
        barrier.finalize()
        if span is not None and not barrier.done():
            span.set_attribute("messaging.batch.message_count", barrier.total)
        return barrier, order, seconds

    @staticmethod
    def _values(
        promise: Union[BarrierState, ReplyStream], seconds: Optional[float]
    ) -> Generator[Any, None, None]:
        try:
            for reply in promise.iterate(seconds):
                yield reply.value
        finally:
            promise.cancel()  # stop waiting if the reader gave up early
