"""The library's exception tree.

Everything the library raises on purpose derives from :class:`ReplyError`, so
``except replies.ReplyError`` catches all of it. Local failures (transport,
closed client, misuse) are kept apart from :class:`RemoteError`, which means
the remote agent ran and raised.
"""

from __future__ import annotations

import concurrent.futures as _futures
from typing import Any, Optional

__all__ = [
    "ReplyError",
    "ReplyTimeoutError",
    "RemoteError",
    "ClosedError",
    "TransportError",
    "ReplyConsumerError",
    "DeadlockError",
    "ForkedError",
    "DecodeError",
    "NoRespondersError",
]


class ReplyError(Exception):
    """Root of every exception this library raises on purpose."""


# Before Python 3.11, concurrent.futures had a TimeoutError of its own; be
# both, so `except concurrent.futures.TimeoutError` catches ours everywhere.
_TIMEOUT_BASES = tuple(dict.fromkeys((_futures.TimeoutError, TimeoutError)))


class ReplyTimeoutError(ReplyError, *_TIMEOUT_BASES):  # type: ignore[misc]
    """No reply came in time. Also a builtin :class:`TimeoutError`.

    Attributes:
        correlation_id: the request that timed out, if it was a single one.
        timeout: the timeout in seconds that ran out.
        topic: the topic that was asked, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        correlation_id: Optional[str] = None,
        timeout: Optional[float] = None,
        topic: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.correlation_id = correlation_id
        self.timeout = timeout
        self.topic = topic


class RemoteError(ReplyError):
    """The agent that served the request raised an exception.

    Attributes:
        type_name: the remote exception's class name, e.g. ``"ValueError"``.
        message: ``str()`` of the remote exception.
        remote_traceback: the formatted remote traceback, when the agent was
            configured to send it; else ``None``.
        correlation_id: the request this error answers.
    """

    def __init__(
        self,
        type_name: str,
        message: str,
        *,
        remote_traceback: Optional[str] = None,
        correlation_id: Optional[str] = None,
    ) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        self.correlation_id = correlation_id


class NoRespondersError(ReplyError):
    """Nobody can answer: the topic asked does not exist.

    Raised at once instead of waiting for a timeout (and instead of letting
    the broker auto-create the topic with one partition).

    Attributes:
        topic: the topic that was asked.
    """

    def __init__(self, message: str, *, topic: Optional[str] = None) -> None:
        super().__init__(message)
        self.topic = topic


class ClosedError(ReplyError):
    """The client was closed (or closing) before the reply came."""


class TransportError(ReplyError):
    """The broker or the network failed; the cause is chained.

    Attributes:
        topic: the topic the failed operation was about, if any.
        cause: a short keyword for what went wrong, when known:
            ``"too_large"`` (the broker or the client refused a record for
            its size), ``"producer_reset"`` (the record was lost because
            another one made the producer fail and it was replaced),
            ``"timeout"`` (the operation's time ran out, e.g. waiting for a
            topic's metadata with the broker down), ``"closed"``;
            connecting: ``"connection_refused"``, ``"name_not_resolved"``,
            ``"unreachable"``, ``"tls_failed"`` (certificate not trusted,
            host name mismatch, not a TLS listener), ``"protocol_mismatch"``
            (not a Kafka broker, or another security protocol),
            ``"authentication_failed"`` (SASL login refused);
            ``"authorization_failed"`` (the broker's ACLs deny
            ``operation`` on ``topic`` or ``group``); else ``None``.
        operation: with ``"authorization_failed"``, the ACL operation that
            was denied (``"READ"``, ``"WRITE"``, ``"CREATE"``, ``"DELETE"``,
            ``"DESCRIBE"``); else ``None``.
        group: the consumer group concerned, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        topic: Optional[str] = None,
        cause: Optional[str] = None,
        operation: Optional[str] = None,
        group: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.topic = topic
        self.cause = cause
        self.operation = operation
        self.group = group


class ReplyConsumerError(TransportError):
    """The reply consumer thread died; no reply can arrive any more."""


class DeadlockError(ReplyError, RuntimeError):
    """A blocking wait was attempted on the thread that delivers replies.

    Done-callbacks run on the reply thread; waiting there for another reply
    would wait forever, so the library raises this instead.
    """


class ForkedError(ReplyError, RuntimeError):
    """Kept for compatibility; no longer raised.

    An App used in a forked child now forgets the parent's threads,
    connections and generated reply topic and starts afresh on first use.
    """


class DecodeError(ReplyError, ValueError):
    """A record could not be decoded as a request or a reply.

    Attributes:
        request: for a request, what could still be read of it (reply topic
            and correlation id from its headers), so an agent can send an
            error reply; else ``None``.
    """

    request: Any = None
