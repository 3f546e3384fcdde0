"""What an agent worker reports about each request it serves.

The worker brackets the handling of one request (running the handler and
sending its replies) with :meth:`AgentObserver.start` and
:meth:`Handling.close`, setting :attr:`Handling.error` if the handler
raised (or use :meth:`AgentObserver.handling` as a context manager).
In between, on the
handler's thread: :func:`replies.current_request` returns the request's
metadata; when OpenTelemetry tracing is on, a SERVER span whose parent is
the caller's context is current (and :func:`reply_headers` adds it to the
replies); the time spent is recorded. At the end, one line at INFO on the
agent's logger (``replies.agent.<name>``): ``replied to <id> in 3.1 ms
(<topic>[<partition>]@<offset> -> <reply topic>)`` or ``error reply to ...:
ValueError: ...`` (``received`` on arrival is at DEBUG); and listeners hear
``on_request_handled``.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, List, Optional, Tuple, Type

from replies.observe import otel
from replies.observe.context import RequestInfo, reset_current, set_current
from replies.observe.observer import AgentFigures, Observer

if TYPE_CHECKING:
    from replies.core.codec import Request
    from replies.transport.base import Record

__all__ = ["AgentObserver", "reply_headers"]


class AgentObserver:
    """Observes one agent's requests in one worker.

    Args:
        observer: the App's observer, or None when metrics are off (then
            only the request context, tracing and logs remain).
        agent: the agent's name.
        logger: the agent's logger.
    """

    def __init__(self, observer: Optional[Observer], agent: str, logger: logging.Logger) -> None:
        self.observer = observer
        self.agent = agent
        self.logger = logger
        self.figures: Optional[AgentFigures] = None if observer is None else observer.agent(agent)

    def start(self, record: "Record", request: "Request") -> "Handling":
        """Begin serving one decoded request, on the handler's thread.

        Returns:
            The scope; call its :meth:`Handling.close` on the same thread
            when the replies are sent, in a ``finally`` clause.
        """
        handling = Handling(self, record, request)
        handling.__enter__()
        return handling

    def handling(self, record: "Record", request: "Request") -> "Handling":
        """A context manager around serving one decoded request."""
        return Handling(self, record, request)


class Handling:
    """The scope of one request in a handler thread (see the module).

    Attributes:
        error: what the handler raised, if it did (set by the worker).
    """

    __slots__ = ("_owner", "_info", "_token", "_started", "_span", "_span_scope", "error")

    def __init__(self, owner: AgentObserver, record: "Record", request: "Request") -> None:
        self._owner = owner
        self._info = RequestInfo(
            owner.agent,
            record.topic,
            record.partition,
            record.offset,
            record.key,
            record.headers,
            request.correlation_id,
            request.reply_to,
            request.deadline,
        )
        self._span: Any = None
        self._span_scope: Any = None
        self.error: Optional[BaseException] = None

    def __enter__(self) -> RequestInfo:
        owner, info = self._owner, self._info
        self._token = set_current(info)
        if owner.figures is not None:
            owner.figures.entered()
        if owner.logger.isEnabledFor(logging.DEBUG):
            owner.logger.debug(
                "received %s at %s[%d]@%d%s",
                info.correlation_id or "a cast",
                info.topic,
                info.partition,
                info.offset,
                f" (reply to {info.reply_to})" if info.reply_to else "",
            )
        tracer = otel.tracer()
        if tracer is not None:
            scope = otel.server_span(tracer, info.topic, info.headers, info.correlation_id)
            self._span = scope.__enter__()
            self._span_scope = scope
        self._started = time.perf_counter()
        return info

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc is not None and self.error is None:
            self.error = exc
        self.close()

    def close(self) -> None:
        """End the scope: record, log, tell listeners."""
        seconds = time.perf_counter() - self._started
        owner, info, exc = self._owner, self._info, self.error
        try:
            if self._span_scope is not None:
                if exc is not None:
                    otel.mark_failed(self._span, exc)
                self._span_scope.__exit__(None, None, None)
        finally:
            reset_current(self._token)
        figures = owner.figures
        if figures is not None:
            figures.left(seconds)
            if exc is not None:
                figures.raised.inc()
            if info.reply_to is None:
                figures.casts.inc()
        logger = owner.logger
        if logger.isEnabledFor(logging.INFO):
            # One line per request, like an access log: a second one on
            # arrival (at DEBUG) would double the logging cost per request.
            where = (info.topic, info.partition, info.offset)
            if info.reply_to is None:
                logger.info(
                    "handled %s in %.1f ms (%s[%d]@%d, no reply wanted)%s",
                    info.correlation_id or "a cast",
                    seconds * 1e3,
                    *where,
                    "" if exc is None else f": {type(exc).__name__}: {exc}",
                )
            elif exc is not None:
                logger.info(
                    "error reply to %s in %.1f ms (%s[%d]@%d -> %s): %s: %s",
                    info.correlation_id,
                    seconds * 1e3,
                    *where,
                    info.reply_to,
                    type(exc).__name__,
                    exc,
                )
            else:
                logger.info(
                    "replied to %s in %.1f ms (%s[%d]@%d -> %s)",
                    info.correlation_id,
                    seconds * 1e3,
                    *where,
                    info.reply_to,
                )
        observer = owner.observer
        if observer is not None and observer.on_request_handled:
            observer.emit(observer.on_request_handled, owner.agent, info, seconds, exc)


def reply_headers(headers: List[Tuple[str, bytes]]) -> None:
    """Add the current trace context to a reply's headers, when tracing."""
    if otel.tracer() is not None:
        otel.inject_current(headers)
