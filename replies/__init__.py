"""Blocking request/reply over Apache Kafka, wire-compatible with Faust agents."""

#: The package version (setup.cfg reads it from here).
__version__ = "0.1.0"

from replies.agent import Agent
from replies.app import App
from replies.core.promise import BarrierState, ReplyPromise, ReplyStream, ReplyTuple
from replies.threads.reply_consumer import ReplyConsumer
from replies.topic import DEFAULT, ReplyIterator, Topic
from replies.observe import Listener, RequestInfo, current_request
from replies.errors import (
    ClosedError,
    DeadlockError,
    DecodeError,
    ForkedError,
    NoRespondersError,
    RemoteError,
    ReplyConsumerError,
    ReplyError,
    ReplyTimeoutError,
    TransportError,
)

__all__ = [
    "__version__",
    "Agent",
    "App",
    "DEFAULT",
    "ReplyConsumer",
    "Topic",
    "BarrierState",
    "ClosedError",
    "DeadlockError",
    "DecodeError",
    "Listener",
    "RequestInfo",
    "current_request",
    "ForkedError",
    "NoRespondersError",
    "RemoteError",
    "ReplyConsumerError",
    "ReplyError",
    "ReplyIterator",
    "ReplyPromise",
    "ReplyStream",
    "ReplyTimeoutError",
    "ReplyTuple",
    "TransportError",
]
