"""The request a handler is serving, for handlers that want its metadata."""

from __future__ import annotations

import contextvars
from typing import List, NamedTuple, Optional, Tuple

__all__ = ["RequestInfo", "current_request"]


class RequestInfo(NamedTuple):
    """Where a request came from and where its reply goes.

    Returned by :func:`replies.current_request` inside a handler.
    """

    #: The agent's name.
    agent: str
    topic: str
    partition: int
    offset: int
    #: The request's Kafka key, as raw bytes (or None).
    key: Optional[bytes]
    #: Every header of the request record, as ``(name, bytes)`` pairs.
    headers: List[Tuple[str, bytes]]
    #: None for a request that wants no reply (a cast).
    correlation_id: Optional[str]
    reply_to: Optional[str]
    #: ``time.time()`` after which the caller no longer waits, if it said.
    deadline: Optional[float]

    def header(self, name: str) -> Optional[bytes]:
        """The first header called ``name``, or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


_current: "contextvars.ContextVar[Optional[RequestInfo]]" = contextvars.ContextVar(
    "replies_current_request", default=None
)


def current_request() -> Optional[RequestInfo]:
    """The request the calling handler is serving.

    Call it from an agent's handler (on the handler's own thread) to read
    the request's headers, key, topic, partition, offset, correlation id,
    reply topic and deadline; the plain ``handler(value)`` form needs
    nothing else. Outside a handler it returns None.
    """
    return _current.get()


def set_current(info: Optional[RequestInfo]) -> "contextvars.Token[Optional[RequestInfo]]":
    """Make ``info`` the current request (for the worker); returns the token
    to pass to :func:`reset_current` afterwards."""
    return _current.set(info)


def reset_current(token: "contextvars.Token[Optional[RequestInfo]]") -> None:
    """Restore the current request as it was before :func:`set_current`."""
    _current.reset(token)
