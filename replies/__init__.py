"""Blocking request/reply over Apache Kafka, wire-compatible with Faust agents."""

from replies.core.promise import BarrierState, ReplyPromise, ReplyStream, ReplyTuple
from replies.errors import (
    ClosedError,
    DeadlockError,
    DecodeError,
    ForkedError,
    RemoteError,
    ReplyConsumerError,
    ReplyError,
    ReplyTimeoutError,
    TransportError,
)

__all__ = [
    "BarrierState",
    "ClosedError",
    "DeadlockError",
    "DecodeError",
    "ForkedError",
    "RemoteError",
    "ReplyConsumerError",
    "ReplyError",
    "ReplyPromise",
    "ReplyStream",
    "ReplyTimeoutError",
    "ReplyTuple",
    "TransportError",
]
