"""The transport interface: what the threads above need from a broker.

Two implementations: :mod:`replies.transport.kafka` (a real broker through
kafka-python) and :mod:`replies.transport.memory` (in-process, for demos,
notebooks and tests). Both are used the same way:

- :meth:`Transport.produce` is thread-safe and returns a future that
  completes once the broker acknowledged the record;
  :meth:`Transport.produce_then` calls a function instead, which saves
  making a future per record on the hot paths (a future costs about as
  much as kafka-python's own send);
- a :class:`Reader` belongs to one thread (the one that polls it); a reply
  reader is assigned every partition of its topic and positioned at the end
  before :meth:`Transport.reply_reader` returns; a :class:`GroupReader` is a
  member of a consumer group.
"""

from __future__ import annotations

import abc
import functools
import logging
from concurrent.futures import Future, InvalidStateError
from typing import Callable, Collection, Dict, List, Mapping, NamedTuple, Optional, Tuple

from replies.core.codec import Headers, Message

__all__ = [
    "Record",
    "Reader",
    "GroupReader",
    "Transport",
    "TopicPartition",
    "RevokeCallback",
    "OnDone",
    "call_on_done",
    "ReaderGroup",
    "TopicReaders",
]

TopicPartition = Tuple[str, int]

#: Called with the partitions a group reader lost in a rebalance. It may run
#: on a transport thread (kafka-python's IO thread), so it must not block.
RevokeCallback = Callable[[Collection[TopicPartition]], None]

#: Called once with a produced record's fate: None when the broker
#: acknowledged it, else the error that failed it. It may run on a
#: transport thread (kafka-python's IO thread), so it must not block.
OnDone = Callable[[Optional[BaseException]], None]


class Record(NamedTuple):
    """A consumed record."""

    topic: str
    partition: int
    offset: int
    key: Optional[bytes]
    value: Optional[bytes]
    headers: Headers


class ReaderGroup(NamedTuple):
    """A consumer group that reads a topic, as :meth:`Transport.describe_readers` sees it."""

    group_id: str
    #: Members reading the topic now (0: the group exists but nobody is in it).
    members: int
    #: Records of the topic the group has not committed yet.
    lag: int


class TopicReaders(NamedTuple):
    """Who reads a topic: its partition count and the groups reading it."""

    topic: str
    partitions: int
    groups: List[ReaderGroup]


class Reader(abc.ABC):
    """Consumes records. Owned by one thread: not thread-safe."""

    #: Records this reader could not read at all (e.g. a header key the
    #: client library cannot decode), logged and skipped past.
    skipped: int = 0

    @abc.abstractmethod
    def poll(self, timeout: float) -> List[Record]:
        """Return the records that arrived, waiting up to ``timeout`` s."""

    def take_skipped(self) -> List[Tuple[TopicPartition, int]]:
        """Where this reader skipped unreadable records to since the last call.

        Returns:
            ``((topic, partition), next offset)`` for each skip, so that a
            group member can commit past records it never got.
        """
        return []

    @abc.abstractmethod
    def close(self) -> None:
        """Release the reader. Idempotent."""


class GroupReader(Reader):
    """A consumer-group member subscribed to one topic.

    Offsets are never committed automatically: the owner commits what it
    has finished with :meth:`commit`.
    """

    @abc.abstractmethod
    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit, for each partition, the offset of the next record to read.

        Raises:
            TransportError: the commit failed (e.g. the partition was lost).
        """

    @abc.abstractmethod
    def pause(self) -> None:
        """Stop returning records from :meth:`poll` (group membership stays)."""

    @abc.abstractmethod
    def resume(self) -> None:
        """Undo :meth:`pause`."""

    @property
    def rebalancing(self) -> bool:
        """Whether a group rebalance is under way: keep polling to finish it."""
        return False


class Transport(abc.ABC):
    """A connection to a broker (or to the in-process memory broker).

    Threading model: :meth:`produce`, :meth:`flush`, topic administration
    and :meth:`close` may be called from any thread; readers are handed to
    the thread that owns them.
    """

    def produce(
        self, topic: str, message: Message, *, timeout: Optional[float] = None
    ) -> Future[None]:
        """Send a record; block only until it is queued.

        Blocks while the topic's partitions are unknown (the first record to
        a topic, or after the broker lost them), at most ``timeout`` seconds
        (``None``: the transport's own bound, ``max_block_ms`` on Kafka, 10 s
        by default). A topic that does not exist is refused after about a
        second (metadata must keep saying so, since a topic just created
        by another client can look missing for a moment), or at the
        deadline if that comes first, unless the transport auto-creates
        topics.

        Returns:
            A future that completes when the broker acknowledged the record,
            or fails with :class:`TransportError` (``.topic`` and ``.cause``
            set; a record refused for its size names its size and the
            limit). Its callbacks may run on a transport thread: keep them
            short.

        Raises:
            NoRespondersError: the topic does not exist.
            TransportError: the record could not be queued: no metadata in
                time (``cause="timeout"``), too large for the client
                (``cause="too_large"``), or the transport is closed.
        """
        acked: Future[None] = Future()
        self.produce_then(topic, message, functools.partial(_complete, acked), timeout=timeout)
        return acked

    @abc.abstractmethod
    def produce_then(
        self, topic: str, message: Message, on_done: OnDone, *, timeout: Optional[float] = None
    ) -> None:
        """Send a record as :meth:`produce` does; call ``on_done`` with its fate.

        ``on_done(None)`` once the broker acknowledged the record, or
        ``on_done(error)`` with the error :meth:`produce`'s future would
        hold; exactly once, on a transport thread or, on ``memory://``,
        before this returns. What it raises is logged, not raised.

        Raises:
            as :meth:`produce`; then ``on_done`` is never called.
        """

    @abc.abstractmethod
    def flush(self, timeout: Optional[float] = None) -> None:
        """Block until every produced record is acknowledged or failed.

        Raises:
            TransportError: ``timeout`` seconds passed first.
        """

    @abc.abstractmethod
    def create_topic(
        self, name: str, *, partitions: int = 1, config: Optional[Dict[str, str]] = None
    ) -> bool:
        """Create a topic unless it exists. Blocks for one admin round trip.

        Returns:
            True if it was created, False if it already existed.
        """

    @abc.abstractmethod
    def delete_topic(self, name: str, *, timeout: Optional[float] = None) -> None:
        """Delete a topic; a missing topic is not an error.

        Blocks at most ``timeout`` seconds (``None``: the client's own
        request timeout).

        Raises:
            TransportError: the broker could not be reached in time, or
                refused.
        """

    @abc.abstractmethod
    def topic_exists(self, name: str) -> bool:
        """Whether the topic exists."""

    @abc.abstractmethod
    def reply_reader(self, topic: str, timeout: float, *, partition: Optional[int] = None) -> Reader:
        """A reader of every partition of ``topic`` (or only ``partition``), positioned at its end.

        Blocks until positioned (at most ``timeout`` s), so a record
        produced after it returns is always read.

        Raises:
            TransportError: the topic has no such partition.
        """

    @abc.abstractmethod
    def group_reader(
        self, topic: str, group_id: str, *, on_revoke: RevokeCallback, max_records: int
    ) -> GroupReader:
        """A consumer-group member for ``topic``; reads from the committed
        offset, or the earliest one for a new group."""

    @abc.abstractmethod
    def close(self, timeout: Optional[float] = None) -> None:
        """Flush and release everything. Idempotent.

        Waits for produced records to be acknowledged, at most ``timeout``
        seconds (``None``: until each is acknowledged or fails on its own),
        then fails those still pending with :class:`TransportError`
        (``cause="closed"``) and returns, also with the broker down.
        """

    def abandon(self) -> None:
        """Forget this transport in a forked child, closing nothing.

        Its threads live in the parent and its sockets are shared with it,
        so nothing may be flushed or closed from here; this only makes sure
        no exit hook of the parent's clients runs in the child.
        """

    def describe_readers(self, topic: str) -> Optional[TopicReaders]:
        """Which consumer groups read ``topic``: members and lag of each.

        Blocks for a few admin round trips on Kafka (each bounded by the
        client's ``request_timeout_ms``).

        Returns:
            None if the topic does not exist.

        Raises:
            TransportError: the broker could not be asked.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot describe readers")


def _complete(acked: Future[None], error: Optional[BaseException]) -> None:
    """Settle :meth:`Transport.produce`'s future (unless its caller cancelled it)."""
    try:
        if error is None:
            acked.set_result(None)
        else:
            acked.set_exception(error)
    except InvalidStateError:
        pass  # cancelled by whoever holds it


def call_on_done(on_done: OnDone, error: Optional[BaseException]) -> None:
    """Tell a producer of its record's fate. What ``on_done`` raises is
    logged, never raised: it would reach kafka-python's IO thread, or look
    like a failure to send."""
    try:
        on_done(error)
    except Exception:
        logging.getLogger(__name__).exception("a produced record's on_done raised")
