"""The Kafka transport, on kafka-python. The only module that imports ``kafka``.

One :class:`kafka.KafkaProducer` (thread-safe) is shared by every caller; a
:class:`kafka.KafkaAdminClient` is made on first use and serialised by a
lock; each reader owns its own :class:`kafka.KafkaConsumer` (not
thread-safe) and is used only by the thread that polls it. kafka-python
errors are re-raised as :class:`TransportError` with the cause chained.
"""

from __future__ import annotations

import difflib
import logging
import threading
import time
from concurrent.futures import Future
from typing import Any, Collection, Dict, List, Mapping, Optional, Set

import kafka
import kafka.errors
from kafka.admin import OffsetSpec
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata

from replies.core.codec import Message
from replies.errors import TransportError
from replies.transport.base import (
    GroupReader,
    Reader,
    Record,
    ReaderGroup,
    RevokeCallback,
    TopicPartition,
    TopicReaders,
    Transport,
)

__all__ = ["KafkaTransport", "KAFKA_SETTINGS", "check_settings"]

logger = logging.getLogger(__name__)

_CONSUMER = set(kafka.KafkaConsumer.DEFAULT_CONFIG)
_PRODUCER = set(kafka.KafkaProducer.DEFAULT_CONFIG)
_ADMIN = set(kafka.KafkaAdminClient.DEFAULT_CONFIG)
#: Every setting kafka-python's clients accept; each client gets its own.
KAFKA_SETTINGS = frozenset(_CONSUMER | _PRODUCER | _ADMIN)
# Serializers are the codec's job; group and offset handling is ours.
_RESERVED = {
    "bootstrap_servers",
    "key_serializer",
    "value_serializer",
    "key_deserializer",
    "value_deserializer",
    "group_id",
    "enable_auto_commit",
}


def check_settings(settings: Mapping[str, Any], also_known: Collection[str] = ()) -> None:
    """Refuse settings no kafka-python client accepts, or that we manage.

    Args:
        settings: the kafka-python settings to check.
        also_known: other valid names (the App's own settings), offered
            with the Kafka ones as "did you mean" suggestions.

    Raises:
        TypeError: naming the offending settings.
    """
    unknown = sorted(set(settings) - KAFKA_SETTINGS)
    if unknown:
        candidates = sorted(KAFKA_SETTINGS | set(also_known))
        raise TypeError(
            "unknown App or Kafka client settings: "
            + ", ".join(_with_suggestion(name, candidates) for name in unknown)
        )
    reserved = sorted(set(settings) & _RESERVED)
    if reserved:
        raise TypeError(f"these settings are managed by replies: {', '.join(reserved)}")


def _with_suggestion(name: str, candidates: Collection[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1)
    return f"{name} (did you mean {close[0]}?)" if close else name


def _pick(settings: Mapping[str, Any], names: Set[str]) -> Dict[str, Any]:
    return {k: v for k, v in settings.items() if k in names}


class _KafkaReader(Reader):
    """A reader on one KafkaConsumer; reply readers are exactly this."""

    def __init__(self, consumer: kafka.KafkaConsumer) -> None:
        self._consumer = consumer

    def poll(self, timeout: float) -> List[Record]:
        try:
            batches = self._consumer.poll(timeout_ms=int(timeout * 1000))
        except kafka.errors.KafkaError as exc:
            raise TransportError(f"polling failed: {exc}") from exc
        return [_record(r) for batch in batches.values() for r in batch]

    def close(self) -> None:
        # For a group member this leaves the group, so the others take over.
        self._consumer.close(autocommit=False)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Reports the partitions a rebalance really took away.

    With the eager protocol every partition is revoked and the new
    assignment handed out after; kafka-python keeps the position of those
    assigned again, so only the difference is lost.
    """

    def __init__(self, on_revoke: RevokeCallback) -> None:
        self._on_revoke = on_revoke
        self._revoked: Set[TopicPartition] = set()
        #: From the start of a rebalance (revocation) to its end (assignment).
        self.rebalancing = False

    def on_partitions_revoked(self, revoked: Collection[Any]) -> None:
        self.rebalancing = True
        self._revoked = {(tp.topic, tp.partition) for tp in revoked}

    def on_partitions_assigned(self, assigned: Collection[Any]) -> None:
        kept = {(tp.topic, tp.partition) for tp in assigned}
        logger.debug("assigned %s", sorted(kept))
        lost, self._revoked = self._revoked - kept, set()
        self.rebalancing = False
        if lost:
            self._on_revoke(sorted(lost))


class _KafkaGroupReader(_KafkaReader, GroupReader):
    def __init__(self, consumer: kafka.KafkaConsumer, listener: _Listener) -> None:
        super().__init__(consumer)
        self._listener = listener

    @property
    def rebalancing(self) -> bool:
        return self._listener.rebalancing

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if not offsets:
            return
        try:
            self._consumer.commit(
                {
                    kafka.TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
                    for (topic, partition), offset in offsets.items()
                }
            )
        except kafka.errors.KafkaError as exc:
            raise TransportError(f"commit of {dict(offsets)} failed: {exc}") from exc

    def pause(self) -> None:
        self._consumer.pause(*self._consumer.assignment())

    def resume(self) -> None:
        self._consumer.resume(*self._consumer.paused())


def _record(r: Any) -> Record:
    headers = [(k, v) for k, v in (r.headers or [])]
    return Record(r.topic, r.partition, r.offset, r.key, r.value, headers)


class KafkaTransport(Transport):
    """A transport to a Kafka cluster.

    Args:
        bootstrap_servers: ``"host:port"`` strings.
        settings: any setting of kafka-python's clients (security, SASL,
            SSL, ``client_id``, timeouts, ``acks`` ...); each client takes
            those it knows.
        replication_factor: for topics this library creates; ``-1`` lets
            the broker choose (its ``default.replication.factor``).

    Raises:
        TypeError: a setting that no kafka-python client accepts, or one
            this library manages itself.
        TransportError: the producer could not be created.
    """

    def __init__(
        self,
        bootstrap_servers: List[str],
        settings: Optional[Mapping[str, Any]] = None,
        *,
        replication_factor: int = -1,
    ) -> None:
        settings = dict(settings or {})
        check_settings(settings)
        self._settings = settings
        self._bootstrap = bootstrap_servers
        self._replication_factor = replication_factor
        # Guards the lazily made admin client, which is not thread-safe.
        self._admin_lock = threading.Lock()
        self._admin: Optional[kafka.KafkaAdminClient] = None
        try:
            self._producer = kafka.KafkaProducer(
                bootstrap_servers=bootstrap_servers, **_pick(settings, _PRODUCER)
            )
        except kafka.errors.KafkaError as exc:
            raise TransportError(f"cannot connect to {bootstrap_servers}: {exc}") from exc

    def _consumer(self, **config: Any) -> kafka.KafkaConsumer:
        merged = {**_pick(self._settings, _CONSUMER - {"allow_auto_create_topics"}), **config}
        try:
            # Consumers never create topics: a reply reader polling a topic
            # just deleted on close would bring it back.
            return kafka.KafkaConsumer(
                bootstrap_servers=self._bootstrap,
                enable_auto_commit=False,
                allow_auto_create_topics=False,
                **merged,
            )
        except kafka.errors.KafkaError as exc:
            raise TransportError(f"cannot connect to {self._bootstrap}: {exc}") from exc

    def _admin_locked(self) -> kafka.KafkaAdminClient:
        if self._admin is None:
            self._admin = kafka.KafkaAdminClient(
                bootstrap_servers=self._bootstrap, **_pick(self._settings, _ADMIN)
            )
        return self._admin

    def produce(self, topic: str, message: Message) -> Future[None]:
        acked: Future[None] = Future()
        try:
            sent = self._producer.send(
                topic, value=message.value, key=message.key, headers=message.headers
            )
        except kafka.errors.KafkaError as exc:
            raise TransportError(f"cannot send to {topic}: {exc}") from exc

        def on_error(exc: BaseException) -> None:
            error = TransportError(f"send to {topic} failed: {exc}")
            error.__cause__ = exc
            acked.set_exception(error)

        sent.add_callback(lambda _: acked.set_result(None))
        sent.add_errback(on_error)
        return acked

    def flush(self, timeout: Optional[float] = None) -> None:
        try:
            self._producer.flush(timeout=timeout)
        except kafka.errors.KafkaError as exc:
            raise TransportError(f"flush failed: {exc}") from exc

    def create_topic(
        self, name: str, *, partitions: int = 1, config: Optional[Dict[str, str]] = None
    ) -> bool:
        spec = {
            name: {
                "num_partitions": partitions,
                "replication_factor": self._replication_factor,
                "configs": config or {},
            }
        }
        created = True
        try:
            with self._admin_lock:
                admin = self._admin_locked()
                try:
                    admin.create_topics(spec)
                except kafka.errors.TopicAlreadyExistsError:
                    created = False
                # A consumer group that subscribes before every partition of
                # a new topic has a leader gets an assignment that leaves
                # some partitions to nobody; so wait until they all have one.
                admin.wait_for_topics([name])
        except kafka.errors.KafkaError as exc:
            raise TransportError(f"cannot create topic {name}: {exc}") from exc
        return created

    def delete_topic(self, name: str) -> None:
        with self._admin_lock:
            # The shared admin client waited for this topic's metadata and
            # would keep asking for it, and a broker that auto-creates topics
            # may bring a topic back for that; so retire it and delete with
            # a fresh client, closed at once.
            if self._admin is not None:
                self._admin.close()
                self._admin = None
            try:
                admin = self._admin_locked()
                admin.delete_topics([name])
            except kafka.errors.UnknownTopicOrPartitionError:
                pass
            except kafka.errors.KafkaError as exc:
                raise TransportError(f"cannot delete topic {name}: {exc}") from exc
            finally:
                if self._admin is not None:
                    self._admin.close()
                    self._admin = None

    def topic_exists(self, name: str) -> bool:
        try:
            with self._admin_lock:
                return name in self._admin_locked().list_topics()
        except kafka.errors.KafkaError as exc:
            raise TransportError(f"cannot list topics: {exc}") from exc

    def reply_reader(self, topic: str, timeout: float) -> Reader:
        consumer = self._consumer()
        try:
            partitions = _wait_for_partitions(consumer, topic, timeout)
            consumer.assign(partitions)
            consumer.seek_to_end(*partitions)
            for tp in partitions:
                consumer.position(tp)  # resolves the end offset now, not lazily
        except BaseException as exc:
            consumer.close(autocommit=False)
            if isinstance(exc, kafka.errors.KafkaError):
                raise TransportError(f"cannot read reply topic {topic}: {exc}") from exc
            raise
        return _KafkaReader(consumer)

    def group_reader(
        self, topic: str, group_id: str, *, on_revoke: RevokeCallback, max_records: int
    ) -> GroupReader:
        consumer = self._consumer(
            group_id=group_id,
            auto_offset_reset="earliest",
            max_poll_records=max_records,
        )
        try:
            # A member that joins before its own metadata knows the topic is
            # assigned nothing, and kafka-python may notice only at its next
            # periodic metadata refresh (minutes): learn the partitions first.
            _wait_for_partitions(consumer, topic, timeout=30.0)
            listener = _Listener(on_revoke)
            consumer.subscribe([topic], listener=listener)
        except BaseException:
            consumer.close(autocommit=False)
            raise
        return _KafkaGroupReader(consumer, listener)

    def close(self, timeout: Optional[float] = None) -> None:
        self._producer.close(timeout=timeout)
        with self._admin_lock:
            if self._admin is not None:
                self._admin.close()
                self._admin = None


    def describe_readers(self, topic: str) -> Optional[TopicReaders]:
        """See :meth:`Transport.describe_readers`.

        Looks at every classic consumer group of the cluster: a group reads
        ``topic`` if a member subscribes to it, or if it has committed
        offsets on it (a group whose members are all gone). Each admin
        request is bounded by the admin client's ``request_timeout_ms``.
        """
        try:
            with self._admin_lock:
                return _describe_readers(self._admin_locked(), topic)
        except kafka.errors.KafkaError as exc:
            raise TransportError(f"cannot describe the readers of {topic}: {exc}") from exc

def _wait_for_partitions(
    consumer: kafka.KafkaConsumer, topic: str, timeout: float
) -> List[kafka.TopicPartition]:
    """The topic's partitions, waiting for its metadata to appear."""
    deadline = time.monotonic() + timeout
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return [kafka.TopicPartition(topic, p) for p in sorted(partitions)]
        if time.monotonic() >= deadline:
            raise TransportError(f"topic {topic} has no partitions after {timeout} s")
        time.sleep(0.05)


def _describe_readers(admin: kafka.KafkaAdminClient, topic: str) -> Optional[TopicReaders]:
    if topic not in admin.list_topics():
        return None
    (described,) = admin.describe_topics([topic])
    partitions = [kafka.TopicPartition(topic, p["partition_index"]) for p in described["partitions"]]
    group_ids = [
        g["group_id"]
        for g in admin.list_groups()
        if g.get("protocol_type") == "consumer" and g.get("group_type", "classic") == "classic"
    ]
    members: Dict[str, int] = {}
    for group_id, group in (admin.describe_groups(group_ids) if group_ids else {}).items():
        members[group_id] = sum(
            topic in ((member.get("member_metadata") or {}).get("topics") or ())
            for member in group.get("members") or ()
        )
    # Committed offsets on this topic tell which member-less groups read it.
    committed = admin.list_group_offsets({g: partitions for g in group_ids}) if group_ids else {}
    ends = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in partitions})
    starts = admin.list_partition_offsets({tp: OffsetSpec.EARLIEST for tp in partitions})
    groups: List[ReaderGroup] = []
    for group_id in sorted(group_ids):
        offsets = {tp: meta.offset for tp, meta in committed.get(group_id, {}).items()}
        if not members.get(group_id) and not any(o >= 0 for o in offsets.values()):
            continue  # neither reads nor ever read this topic
        lag = sum(
            ends[tp].offset - max(starts[tp].offset, offsets.get(tp, -1)) for tp in partitions
        )
        groups.append(ReaderGroup(group_id, members.get(group_id, 0), max(0, lag)))
    return TopicReaders(topic, len(partitions), groups)
