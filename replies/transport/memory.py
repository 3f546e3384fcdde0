"""An in-process broker: topics, partitions, offsets and consumer groups.

``memory://`` (or ``memory://NAME``) makes every App of the process with the
same URL share one :class:`MemoryBroker`, so a client and an agent in one
Python process (a notebook, a demo, a unit test) talk to each other exactly
as over Kafka, with no broker to run.

Theory of operation: one broker lock guards all topics and groups. A
reader that finds nothing to read registers its waker (a :class:`_Waker`)
under the topic it reads, under the lock, and waits on it outside the lock
against a deadline; an append wakes the readers of its topic only, after
releasing the lock (so a woken reader never finds the lock still held by
the thread that woke it), and a change of group membership wakes every
reader.
Group assignment is recomputed on every join and leave (a new generation);
a member sees the new generation on its next poll, calls its revoke
callback (outside the lock) for partitions it lost, and starts the ones it
gained at their committed offsets. As with Kafka, a handover can replay
records the previous owner had not committed: delivery is at least once.
"""

from __future__ import annotations

import itertools
import threading
import time
import zlib
from typing import Callable, Dict, List, Mapping, Optional, Set

from replies.core.codec import Message
from replies.errors import NoRespondersError, TransportError
from replies.transport.base import (
    GroupReader,
    OnDone,
    Reader,
    Record,
    ReaderGroup,
    RevokeCallback,
    TopicPartition,
    TopicReaders,
    Transport,
    call_on_done,
)

__all__ = ["MemoryBroker", "MemoryTransport"]


class _Waker:
    """Wakes one waiting reader: a lock used as a binary semaphore.

    Held while no wake-up is pending; :meth:`wake` releases it (at most one
    wake-up is kept), :meth:`wait` takes it. A wake-up that comes while
    the reader is not waiting makes its next wait return at once, and the
    reader looks again: harmless.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        # Held: no wake-up pending.
        self._pending = threading.Lock()
        self._pending.acquire()

    def wait(self, timeout: float) -> bool:
        """Block until woken, at most ``timeout`` s; whether woken."""
        return self._pending.acquire(timeout=timeout)

    def wake(self) -> None:
        try:
            self._pending.release()
        except RuntimeError:
            pass  # a wake-up is pending already


class _Log:
    """One partition: records with offsets from ``base`` on.

    Keeps at most ``retention`` records, like a size-based retention: a
    long-running notebook or demo stays bounded in memory. A reader behind
    the oldest kept record goes on from it.
    """

    def __init__(self, retention: int) -> None:
        self.records: List[Record] = []
        self.base = 0
        self._retention = retention

    @property
    def end(self) -> int:
        return self.base + len(self.records)

    def append(self, record: Record) -> None:
        self.records.append(record)
        if len(self.records) > self._retention:
            drop = len(self.records) - self._retention // 2
            del self.records[:drop]
            self.base += drop

    def read(self, position: int, limit: int) -> List[Record]:
        start = max(position, self.base) - self.base
        return self.records[start : start + limit]


class _Group:
    def __init__(self) -> None:
        self.members: List[int] = []
        self.generation = 0
        self.committed: Dict[TopicPartition, int] = {}
        #: The topics its members subscribed to.
        self.topics: Set[str] = set()


class MemoryBroker:
    """The shared state behind every memory transport of one name."""

    _registry: Dict[str, "MemoryBroker"] = {}
    # Guards the registry of brokers by name.
    _registry_lock = threading.Lock()

    def __init__(self) -> None:
        # Guards topics, groups and `_waiting` (the wakers of the readers
        # waiting for each topic).
        self.lock = threading.Lock()
        self._waiting: Dict[str, Set["_Waker"]] = {}
        self.topics: Dict[str, List[_Log]] = {}
        self.configs: Dict[str, Dict[str, str]] = {}
        self.groups: Dict[str, _Group] = {}
        self._member_ids = itertools.count(1)
        self._round_robin = itertools.count()

    def wait_locked(self, topic: str, waker: "_Waker") -> None:
        """Register ``waker`` to be woken by the next change to ``topic``."""
        self._waiting.setdefault(topic, set()).add(waker)

    def unwait_locked(self, topic: str, waker: "_Waker") -> None:
        waiting = self._waiting.get(topic)
        if waiting is not None:
            waiting.discard(waker)

    def read_waiting(
        self,
        topic: str,
        waker: "_Waker",
        timeout: float,
        take_locked: Callable[[], Optional[List[Record]]],
        catch_up: Optional[Callable[[], None]] = None,
    ) -> List[Record]:
        """A reader's poll: what ``take_locked()`` returns (called under the
        lock), waiting on ``waker`` up to ``timeout`` seconds for records of
        ``topic``. ``take_locked`` returns None to be called again after
        ``catch_up()`` (called outside the lock)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                records = take_locked()
                if records is not None:
                    remaining = deadline - time.monotonic()
                    if records or remaining <= 0:
                        return records
                    self.wait_locked(topic, waker)
            if records is None:
                assert catch_up is not None
                catch_up()
            elif not waker.wait(remaining):
                with self.lock:
                    self.unwait_locked(topic, waker)

    def _take_wakers_locked(self, topic: Optional[str] = None) -> List["_Waker"]:
        """Unregister and return the wakers of ``topic`` (of all: None)."""
        if topic is not None:
            return list(self._waiting.pop(topic, ()))
        wakers = [w for waiting in self._waiting.values() for w in waiting]
        self._waiting.clear()
        return wakers

    #: Records kept per partition (see :class:`_Log`).
    retention = 10_000

    def new_log(self) -> _Log:
        return _Log(self.retention)

    @classmethod
    def named(cls, name: str) -> "MemoryBroker":
        """The process-wide broker called ``name`` (created on first use)."""
        with cls._registry_lock:
            broker = cls._registry.get(name)
            if broker is None:
                broker = cls._registry[name] = cls()
            return broker

    def _partitions_locked(self, topic: str) -> List[_Log]:
        # Like Kafka's auto-creation: a topic used before it exists gets one
        # partition.
        partitions = self.topics.get(topic)
        if partitions is None:
            partitions = self.topics[topic] = [self.new_log()]
        return partitions

    def append(self, topic: str, message: Message, *, create: bool = True) -> None:
        """Append a record; a missing topic is created only if ``create``.

        Raises:
            NoRespondersError: the topic does not exist (and not ``create``).
            TransportError: the record is larger than the topic's
                ``max.message.bytes`` config (``cause="too_large"``).
        """
        with self.lock:
            if not create and topic not in self.topics:
                raise NoRespondersError(f"topic {topic} does not exist", topic=topic)
            limit = self.configs.get(topic, {}).get("max.message.bytes")
            if limit is not None:
                size = _size(message)
                if size > int(limit):
                    raise TransportError(
                        f"the broker refused a record of {size} bytes to topic {topic} "
                        f"as too large (topic max.message.bytes: {limit} bytes)",
                        topic=topic,
                        cause="too_large",
                    )
            partitions = self._partitions_locked(topic)
            if message.partition is not None:
                if message.partition >= len(partitions):
                    raise TransportError(
                        f"topic {topic} has no partition {message.partition}", topic=topic
                    )
                index = message.partition
            elif message.key is None:
                index = next(self._round_robin) % len(partitions)
            else:
                index = zlib.crc32(message.key) % len(partitions)
            log = partitions[index]
            log.append(
                Record(topic, index, log.end, message.key, message.value, list(message.headers))
            )
            wakers = self._take_wakers_locked(topic) if topic in self._waiting else ()
        for waker in wakers:
            waker.wake()

    def join(self, group_id: str) -> int:
        with self.lock:
            group = self.groups.setdefault(group_id, _Group())
            member = next(self._member_ids)
            group.members.append(member)
            group.generation += 1
            wakers = self._take_wakers_locked()
        for waker in wakers:
            waker.wake()
        return member

    def leave(self, group_id: str, member: int) -> None:
        with self.lock:
            group = self.groups[group_id]
            group.members.remove(member)
            group.generation += 1
            wakers = self._take_wakers_locked()
        for waker in wakers:
            waker.wake()

    def assignment_locked(self, group_id: str, member: int, topic: str) -> Set[int]:
        """Partitions of ``topic`` for ``member``: spread round-robin."""
        group = self.groups[group_id]
        index = group.members.index(member)
        count = len(self._partitions_locked(topic))
        return {p for p in range(count) if p % len(group.members) == index}


def _size(message: Message) -> int:
    """A record's key, value and header bytes."""
    headers = sum(len(k.encode()) + len(v or b"") for k, v in message.headers)
    return len(message.key or b"") + len(message.value or b"") + headers


class _MemoryReplyReader(Reader):
    def __init__(self, broker: MemoryBroker, topic: str, partition: Optional[int] = None) -> None:
        self._broker = broker
        self._topic = topic
        self._only = partition
        self._waker = _Waker()
        with broker.lock:
            partitions = broker._partitions_locked(topic)
            if partition is not None and partition >= len(partitions):
                raise TransportError(f"reply topic {topic} has no partition {partition}", topic=topic)
            self._positions = [log.end for log in partitions]

    def poll(self, timeout: float) -> List[Record]:
        return self._broker.read_waiting(self._topic, self._waker, timeout, self._take_locked)

    def _take_locked(self) -> List[Record]:
        partitions = self._broker._partitions_locked(self._topic)
        self._positions += [0] * (len(partitions) - len(self._positions))
        taken: List[Record] = []
        for index, log in enumerate(partitions):
            if self._only is not None and index != self._only:
                continue
            taken += log.read(self._positions[index], log.end)
            self._positions[index] = log.end
        return taken

    def close(self) -> None:
        pass


class _MemoryGroupReader(GroupReader):
    def __init__(
        self,
        broker: MemoryBroker,
        topic: str,
        group_id: str,
        on_revoke: RevokeCallback,
        max_records: int,
    ) -> None:
        self._broker = broker
        self._topic = topic
        self._group_id = group_id
        self._on_revoke = on_revoke
        self._max_records = max_records
        self._generation = -1
        self._positions: Dict[int, int] = {}
        self._paused = False
        self._waker = _Waker()
        self._member: Optional[int] = broker.join(group_id)
        with broker.lock:
            broker.groups[group_id].topics.add(topic)

    def _rebalance(self) -> None:
        """Catch up with the group's generation; revoke outside the lock."""
        broker = self._broker
        with broker.lock:
            group = broker.groups[self._group_id]
            if group.generation == self._generation or self._member is None:
                return
            assigned = broker.assignment_locked(self._group_id, self._member, self._topic)
        lost = [(self._topic, p) for p in self._positions if p not in assigned]
        if lost:
            self._on_revoke(lost)
        with broker.lock:
            group = broker.groups[self._group_id]
            # Recompute: the group may have changed again during revocation.
            assigned = broker.assignment_locked(self._group_id, self._member, self._topic)
            self._generation = group.generation
            # Partitions kept go on where they were; gained ones start at
            # the group's committed offset.
            self._positions = {
                p: self._positions.get(p, group.committed.get((self._topic, p), 0))
                for p in sorted(assigned)
            }

    def poll(self, timeout: float) -> List[Record]:
        if self._member is None:
            raise TransportError("poll() on a closed group reader")
        return self._broker.read_waiting(
            self._topic, self._waker, timeout, self._take_current_locked, catch_up=self._rebalance
        )

    def _take_current_locked(self) -> Optional[List[Record]]:
        """Records to serve, or None if the group changed since the last
        rebalance (catch up first)."""
        if self._broker.groups[self._group_id].generation != self._generation:
            return None
        return [] if self._paused else self._take_locked()

    def _take_locked(self) -> List[Record]:
        partitions = self._broker._partitions_locked(self._topic)
        taken: List[Record] = []
        for index, position in self._positions.items():
            if position >= partitions[index].end:
                continue
            batch = partitions[index].read(position, self._max_records - len(taken))
            taken += batch
            if batch:
                self._positions[index] = batch[-1].offset + 1
        return taken

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        with self._broker.lock:
            group = self._broker.groups[self._group_id]
            if group.generation != self._generation:
                lost = [tp for tp in offsets if tp[1] not in self._positions]
                if lost:
                    raise TransportError(f"cannot commit {lost}: no longer assigned")
            group.committed.update(offsets)

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def close(self) -> None:
        if self._member is not None:
            member, self._member = self._member, None
            self._broker.leave(self._group_id, member)


class MemoryTransport(Transport):
    """A transport to the process-wide :class:`MemoryBroker` of one name.

    Records are acknowledged as soon as they are appended: ``on_done`` of
    :meth:`produce_then` runs before it returns. A record to a
    topic that does not exist is refused with :class:`NoRespondersError`,
    unless ``auto_create_topics`` (then the topic is made, one partition).
    A record larger than its topic's ``max.message.bytes`` config (if one
    was given to :meth:`create_topic`) is refused as a broker would: its
    acknowledgement fails with :class:`TransportError` (``cause="too_large"``).
    """

    def __init__(self, name: str = "", *, auto_create_topics: bool = False) -> None:
        self.broker = MemoryBroker.named(name)
        self._auto_create = auto_create_topics
        self._closed = False

    def produce_then(
        self,
        topic: str,
        message: Message,
        on_done: OnDone,
        *,
        timeout: Optional[float] = None,
    ) -> None:
        if self._closed:
            raise TransportError("transport is closed", topic=topic, cause="closed")
        error: Optional[TransportError] = None
        try:
            self.broker.append(topic, message, create=self._auto_create)
        except NoRespondersError:
            raise
        except TransportError as exc:  # refused by the broker, as Kafka's ack would
            error = exc
        call_on_done(on_done, error)

    def flush(self, timeout: Optional[float] = None) -> None:
        pass

    def create_topic(
        self, name: str, *, partitions: int = 1, config: Optional[Dict[str, str]] = None
    ) -> bool:
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, not {partitions}")
        with self.broker.lock:
            if name in self.broker.topics:
                return False
            self.broker.topics[name] = [self.broker.new_log() for _ in range(partitions)]
            self.broker.configs[name] = dict(config or {})
            wakers = self.broker._take_wakers_locked(name)
        for waker in wakers:
            waker.wake()
        return True

    def delete_topic(self, name: str, *, timeout: Optional[float] = None) -> None:
        with self.broker.lock:
            self.broker.topics.pop(name, None)
            self.broker.configs.pop(name, None)

    def topic_exists(self, name: str) -> bool:
        with self.broker.lock:
            return name in self.broker.topics

    def reply_reader(self, topic: str, timeout: float, *, partition: Optional[int] = None) -> Reader:
        return _MemoryReplyReader(self.broker, topic, partition)

    def group_reader(
        self, topic: str, group_id: str, *, on_revoke: RevokeCallback, max_records: int
    ) -> GroupReader:
        return _MemoryGroupReader(self.broker, topic, group_id, on_revoke, max_records)

    def close(self, timeout: Optional[float] = None) -> None:
        self._closed = True

    def describe_readers(self, topic: str) -> Optional[TopicReaders]:
        with self.broker.lock:
            partitions = self.broker.topics.get(topic)
            if partitions is None:
                return None
            groups = [
                ReaderGroup(
                    group_id,
                    len(group.members),
                    sum(
                        log.end - max(log.base, group.committed.get((topic, index), 0))
                        for index, log in enumerate(partitions)
                    ),
                )
                for group_id, group in sorted(self.broker.groups.items())
                if topic in group.topics
            ]
            return TopicReaders(topic, len(partitions), groups)
