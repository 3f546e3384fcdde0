"""Blocking request/reply over Apache Kafka, wire-compatible with Faust agents."""

from replies.agent import Agent
from replies.app import App
from replies.core.promise import BarrierState, ReplyPromise, ReplyStream, ReplyTuple
from replies.threads.reply_consumer import ReplyConsumer
from replies.topic import DEFAULT, Topic
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
    "Agent",
    "App",
    "DEFAULT",
    "ReplyConsumer",
    "Topic",
    "BarrierState",
    "ClosedError",
    "DeadlockError",
    "DecodeError",
    "ForkedError",
    "NoRespondersError",
    "RemoteError",
    "ReplyConsumerError",
    "ReplyError",
    "ReplyPromise",
    "ReplyStream",
    "ReplyTimeoutError",
    "ReplyTuple",
    "TransportError",
]
