"""The Kafka transport, on kafka-python. The only module that imports ``kafka``.

One :class:`kafka.KafkaProducer` (thread-safe) is shared by every caller; a
:class:`kafka.KafkaAdminClient` is made on first use and serialised by a
lock; each reader owns its own :class:`kafka.KafkaConsumer` (not
thread-safe) and is used only by the thread that polls it. kafka-python
errors are re-raised as :class:`TransportError` with the cause chained.
"""

from __future__ import annotations

import concurrent.futures
import difflib
import logging
import struct
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Collection, Dict, List, Mapping, Optional, Set, Tuple

import kafka
import kafka.errors
from kafka.admin import ConfigResource, ConfigResourceType, OffsetSpec
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata

from replies.core.codec import Message
from replies.errors import NoRespondersError, TransportError
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
    # The App's `auto_create_topics` decides (kafka-python would ignore it).
    "allow_auto_create_topics",
}

#: Producer settings of this library's own unless the App sets them.
#: ``max_block_ms`` bounds a send whose caller gave no timeout.
_PRODUCER_DEFAULTS: Dict[str, Any] = {"max_block_ms": 10_000}

#: Record batch overhead beyond a record's key, value and headers, in bytes
#: (a v2 batch header plus one record's framing, rounded up).
_BATCH_OVERHEAD = 128
_SIZE_ERRORS = (kafka.errors.MessageSizeTooLargeError, kafka.errors.RecordListTooLargeError)


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
    """A reader on one KafkaConsumer; reply readers are exactly this.

    A record kafka-python cannot parse (a header key that is not UTF-8,
    which other clients can write, or a corrupt batch) makes its ``poll``
    raise, and every later ``poll`` spin without end on the same data; so
    :meth:`poll` seeks past the rest of that record's batch, logs it, and
    counts it in ``skipped``. A batch comes from one producer's request, so
    what is skipped with it was written by the same client.
    """

    def __init__(self, consumer: kafka.KafkaConsumer) -> None:
        self._consumer = consumer
        self.skipped = 0

    def poll(self, timeout: float) -> List[Record]:
        try:
            batches = self._consumer.poll(timeout_ms=int(timeout * 1000))
        except Exception as exc:
            if not self._skip_unreadable(exc):
                raise TransportError(f"polling failed: {exc!r}") from exc
            return []
        return [_record(r) for batch in batches.values() for r in batch]

    def _skip_unreadable(self, exc: Exception) -> bool:
        """Seek past the records that made ``poll`` raise, if that was the cause.

        Returns:
            Whether the consumer was moved past them.
        """
        found = _unreadable_records(exc)
        if found is None:
            return False
        tp, first, after = found
        try:
            self._consumer.seek(tp, after)
        except (kafka.errors.KafkaError, ValueError, TypeError) as error:
            logger.debug("cannot seek past unreadable records: %s", error)
            return False
        self.skipped += after - first
        logger.warning(
            "skipped records %s[%d]@%d..%d: kafka-python cannot read them (%s)",
            tp.topic,
            tp.partition,
            first,
            after - 1,
            exc.__context__ or exc,
        )
        return True

    def close(self) -> None:
        # For a group member this leaves the group, so the others take over.
        self._consumer.close(autocommit=False)


def _unreadable_records(exc: BaseException) -> Optional[Tuple[Any, int, int]]:
    """Where the records are that kafka-python failed to parse.

    kafka-python parses a fetched batch lazily in
    ``Fetcher.PartitionRecords._unpack_records`` (locals ``tp`` and
    ``batch``), and wraps a record it cannot read (``_read_msg``, local
    ``offset``) in a ``CorruptRecordError``; the partition's generator is
    dead after that. Its frames stay on the exception's traceback.

    Returns:
        ``(partition, first offset to skip, offset to resume at)``: from
        the unreadable record (or the partition's next fetch offset) to
        the end of its batch; or None if ``exc`` did not come from parsing.
    """
    tp = batch = fetch_offset = None
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "_unpack_records":
            tp = frame.f_locals.get("tp")
            batch = frame.f_locals.get("batch")
            fetch_offset = getattr(frame.f_locals.get("self"), "next_fetch_offset", None)
        tb = tb.tb_next
    if not isinstance(tp, kafka.TopicPartition) or not isinstance(fetch_offset, int):
        return None
    first = fetch_offset
    cause = exc.__context__
    tb = cause.__traceback__ if cause is not None else None
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "_read_msg":
            offset = tb.tb_frame.f_locals.get("offset")
            if isinstance(offset, int) and offset >= fetch_offset:
                first = offset
        tb = tb.tb_next
    after = getattr(batch, "next_offset", None)
    if not isinstance(after, int) or after <= first:
        return None  # nothing known to skip: moving on would lose records or loop
    return tp, first, after


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
        auto_create_topics: let the broker create a topic a record is sent
            to (its ``auto.create.topics.enable`` decides); by default a
            topic that does not exist is refused with
            :class:`NoRespondersError`.

    Raises:
        TypeError: a setting that no kafka-python client accepts, or one
            this library manages itself.
        TransportError: the producer could not be created.

    Threading model: the producer is shared by every thread; one that
    kafka-python marked fatally failed is replaced by the next
    :meth:`produce` (``_producer_lock`` guards the swap). Records not yet
    acknowledged are tracked in ``_pending`` (under ``_pending_lock``) so
    that :meth:`flush` and :meth:`close` keep their timeouts, which
    kafka-python's do not (its ``close`` raises when its flush times out).
    """

    def __init__(
        self,
        bootstrap_servers: List[str],
        settings: Optional[Mapping[str, Any]] = None,
        *,
        replication_factor: int = -1,
        auto_create_topics: bool = False,
    ) -> None:
        settings = dict(settings or {})
        check_settings(settings)
        self._settings = settings
        self._bootstrap = bootstrap_servers
        self._replication_factor = replication_factor
        self._auto_create = auto_create_topics
        # Guards the lazily made admin client, which is not thread-safe.
        self._admin_lock = threading.Lock()
        self._admin: Optional[kafka.KafkaAdminClient] = None
        self._producer_config = {**_PRODUCER_DEFAULTS, **_pick(settings, _PRODUCER)}
        self._max_block = self._producer_config["max_block_ms"] / 1000
        # Guards `_producer` (replaced after a fatal error) and `_closed`.
        self._producer_lock = threading.Lock()
        self._closed = False
        # Guards `_pending`: acknowledgement futures not yet done, with
        # the topic of each.
        self._pending_lock = threading.Lock()
        self._pending: Dict[Future[None], str] = {}
        self._producer = self._new_producer(time.monotonic() + self._max_block)

    def _new_producer(self, deadline: float) -> kafka.KafkaProducer:
        config = dict(self._producer_config)
        if "bootstrap_timeout_ms" not in self._settings:
            config["bootstrap_timeout_ms"] = max(1, int((deadline - time.monotonic()) * 1000))
        try:
            producer = kafka.KafkaProducer(bootstrap_servers=self._bootstrap, **config)
        except kafka.errors.KafkaError as exc:
            raise TransportError(f"cannot connect to {self._bootstrap}: {exc}") from exc
        _set_auto_create(producer._metadata, self._auto_create)
        producer._metadata.add_listener(self._on_metadata)
        return producer

    def _on_metadata(self, cluster: Any) -> None:
        """Fail records to topics that were deleted since they were sent.

        kafka-python retries such a record until ``delivery_timeout_ms``
        (two minutes); a metadata response without the topic, nor an id for
        it, says it is gone. Runs on the producer's IO thread after each
        metadata update: reads and completes futures, never blocks.
        """
        with self._pending_lock:
            topics = set(self._pending.values())
        gone = {
            topic
            for topic in topics
            if topic in cluster._topics
            and cluster.partitions_for_topic(topic) is None
            and cluster.topic_id(topic) is None
        }
        if not gone:
            return
        with self._pending_lock:
            lost = [(acked, topic) for acked, topic in self._pending.items() if topic in gone]
        for topic in gone:
            _untrack(cluster, topic)
        for acked, topic in lost:
            _settle(acked, NoRespondersError(f"topic {topic} does not exist (deleted)", topic=topic))

    def _consumer(self, **config: Any) -> kafka.KafkaConsumer:
        merged = {**_pick(self._settings, _CONSUMER - {"allow_auto_create_topics"}), **config}
        try:
            # Consumers never create topics: a reply reader polling a topic
            # just deleted on close would bring it back.
            consumer = kafka.KafkaConsumer(
                bootstrap_servers=self._bootstrap,
                enable_auto_commit=False,
                allow_auto_create_topics=False,
                **merged,
            )
        except kafka.errors.KafkaError as exc:
            raise TransportError(f"cannot connect to {self._bootstrap}: {exc}") from exc
        _set_auto_create(consumer._client.cluster, False)
        return consumer

    def _admin_locked(self) -> kafka.KafkaAdminClient:
        if self._admin is None:
            self._admin = kafka.KafkaAdminClient(
                bootstrap_servers=self._bootstrap, **_pick(self._settings, _ADMIN)
            )
        return self._admin

    # -- producing ----------------------------------------------------------

    def produce(
        self, topic: str, message: Message, *, timeout: Optional[float] = None
    ) -> Future[None]:
        deadline = time.monotonic() + (self._max_block if timeout is None else timeout)
        producer = self._live_producer(deadline)
        self._await_partitions(producer, topic, deadline)
        size = _size(message)
        try:
            sent = producer.send(
                topic, value=message.value, key=message.key, headers=message.headers
            )
        except _SIZE_ERRORS as exc:
            limit = self._producer_config.get(
                "max_request_size", kafka.KafkaProducer.DEFAULT_CONFIG["max_request_size"]
            )
            raise TransportError(
                f"a record of {size} bytes to topic {topic} is larger than the "
                f"producer's max_request_size ({limit} bytes)",
                topic=topic,
                cause="too_large",
            ) from exc
        except kafka.errors.KafkaError as exc:
            raise TransportError(f"cannot send to {topic}: {exc}", topic=topic) from exc
        acked: Future[None] = Future()
        with self._pending_lock:
            self._pending[acked] = topic
        acked.add_done_callback(self._forget)

        def on_error(exc: BaseException) -> None:
            # On kafka-python's IO thread: never block here.
            if isinstance(exc, _SIZE_ERRORS):
                # Naming the limit takes an admin round trip.
                threading.Thread(
                    target=self._fail_too_large,
                    args=(acked, topic, size, exc),
                    name="replies-producer-error",
                    daemon=True,
                ).start()
                return
            error = TransportError(
                f"send to {topic} failed: {exc}",
                topic=topic,
                cause="closed" if self._closed else None,
            )
            error.__cause__ = exc
            _settle(acked, error)

        sent.add_callback(lambda _: _settle(acked, None))
        sent.add_errback(on_error)
        return acked

    def _forget(self, acked: Future[None]) -> None:
        with self._pending_lock:
            self._pending.pop(acked, None)

    def _live_producer(self, deadline: float) -> kafka.KafkaProducer:
        """The producer to send with, replacing one that failed for good."""
        with self._producer_lock:
            if self._closed:
                raise TransportError("the transport is closed", cause="closed")
            producer = self._producer
        if not _fatally_failed(producer):
            return producer
        # Made outside the lock (it connects); the first thread to finish
        # installs its producer, the others close theirs.
        fresh = self._new_producer(deadline)
        with self._producer_lock:
            current = self._producer
            if current is producer and not self._closed:
                self._producer = current = fresh
                retired: Optional[kafka.KafkaProducer] = producer
            else:
                retired = fresh
        logger.warning(
            "replaced the Kafka producer after a fatal error: %s",
            producer._transaction_manager.last_error,
        )
        if retired is not None:
            _shutdown(retired)
        if self._closed:
            raise TransportError("the transport is closed", cause="closed")
        return current

    def _await_partitions(
        self, producer: kafka.KafkaProducer, topic: str, deadline: float
    ) -> None:
        """Make sure the producer knows the topic's partitions, by ``deadline``.

        kafka-python's ``send()`` waits up to ``max_block_ms`` for them and
        cannot tell a topic that does not exist from a broker that is slow
        to answer; so wait here with the caller's time, on the producer's
        own metadata, and refuse a missing topic after the first metadata
        response that covers it.

        Raises:
            NoRespondersError: the topic does not exist.
            TransportError: no metadata by the deadline.
        """
        # Private: the producer's ClusterMetadata; the methods used on it
        # are public ones of that class.
        cluster = producer._metadata
        if cluster.partitions_for_topic(topic) is not None:
            return
        sender = producer._sender
        covered = 0  # metadata responses that covered the topic
        while True:
            # The sender thread owns the set of topics kafka-python asks
            # metadata for; this is its own way to add one from elsewhere.
            sender.add_topic(topic)
            tracked = topic in cluster._topics
            update = cluster.request_update()
            sender.wakeup()
            done = _wait_kafka(update, deadline - time.monotonic())
            if cluster.partitions_for_topic(topic) is not None:
                return
            if not done:
                raise TransportError(
                    f"no metadata for topic {topic} in time: is the broker reachable?",
                    topic=topic,
                    cause="timeout",
                )
            error = update.exception if update.failed() else None
            missing = (
                isinstance(error, kafka.errors.UnknownTopicOrPartitionError)
                and error.args[:1] == (topic,)
            )
            if error is None or missing:
                # A response answers for the topics tracked when its request
                # left: the first one after tracking began may predate it,
                # the second cannot. An existing topic (it has an id) may
                # just be electing leaders: keep waiting for it.
                covered += 1 if tracked else 0
                if (missing or covered >= 2) and cluster.topic_id(topic) is None:
                    if not self._auto_create:
                        _untrack(cluster, topic)
                        raise NoRespondersError(f"topic {topic} does not exist", topic=topic)
            elif not error.retriable:
                raise TransportError(
                    f"cannot get metadata for topic {topic}: {error}", topic=topic
                ) from error
            if time.monotonic() >= deadline:
                raise TransportError(
                    f"no partitions for topic {topic} in time", topic=topic, cause="timeout"
                )

    def _fail_too_large(
        self, acked: Future[None], topic: str, size: int, exc: BaseException
    ) -> None:
        """Fail a record the broker refused for size, naming the limit."""
        try:
            limit: Optional[int] = self._topic_limit(topic)
        except (kafka.errors.KafkaError, TransportError, ValueError, KeyError) as lookup:
            logger.debug("cannot read max.message.bytes of %s: %s", topic, lookup)
            limit = None
        if limit is not None and size + _BATCH_OVERHEAD <= limit:
            # kafka-python fails every record it held with the error that
            # broke it; this one was not the cause.
            error = TransportError(
                f"send to {topic} failed: another record made the producer fail "
                f"({exc}); this one ({size} bytes) was not sent, and the producer "
                "is replaced for later sends",
                topic=topic,
                cause="producer_reset",
            )
        else:
            known = "unknown" if limit is None else f"{limit} bytes"
            error = TransportError(
                f"the broker refused a record of {size} bytes to topic {topic} as too "
                f"large (topic max.message.bytes / broker message.max.bytes: {known})",
                topic=topic,
                cause="too_large",
            )
        error.__cause__ = exc
        _settle(acked, error)

    def _topic_limit(self, topic: str) -> int:
        """The topic's effective ``max.message.bytes``: one admin round trip."""
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, ["max.message.bytes"])
        with self._admin_lock:
            found = self._admin_locked().describe_configs([resource], config_filter="all")
        return int(found["topic"][topic]["max.message.bytes"]["value"])

    def flush(self, timeout: Optional[float] = None) -> None:
        # Waits on the records' own futures: kafka-python's flush() applies
        # its timeout to each batch in turn, not to the whole.
        with self._pending_lock:
            pending = list(self._pending)
        _, late = concurrent.futures.wait(pending, timeout)
        if late:
            raise TransportError(
                f"{len(late)} records not acknowledged within {timeout} s", cause="timeout"
            )

    # -- topics ---------------------------------------------------------------

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
            raise TransportError(f"cannot create topic {name}: {exc}", topic=name) from exc
        return created

    def delete_topic(self, name: str, *, timeout: Optional[float] = None) -> None:
        bounds: Dict[str, int] = {}
        if timeout is not None:
            # A fresh admin client connects first (bootstrap_timeout_ms, 30 s
            # by default) and then waits for the answer (request_timeout_ms):
            # both within the caller's time.
            ms = max(1, int(timeout * 1000))
            for setting in ("bootstrap_timeout_ms", "request_timeout_ms"):
                default = kafka.KafkaAdminClient.DEFAULT_CONFIG[setting]
                bounds[setting] = min(ms, self._settings.get(setting, default))
        with self._admin_lock:
            # The shared admin client waited for this topic's metadata and
            # would keep asking for it, and a broker that auto-creates topics
            # may bring a topic back for that; so retire it and delete with
            # a fresh client, closed at once.
            if self._admin is not None:
                self._admin.close()
                self._admin = None
            admin: Optional[kafka.KafkaAdminClient] = None
            try:
                admin = kafka.KafkaAdminClient(
                    bootstrap_servers=self._bootstrap,
                    **{**_pick(self._settings, _ADMIN), **bounds},
                )
                admin.delete_topics([name])
            except kafka.errors.UnknownTopicOrPartitionError:
                pass
            except kafka.errors.KafkaError as exc:
                raise TransportError(
                    f"cannot delete topic {name}: {exc}",
                    topic=name,
                    cause="timeout" if isinstance(exc, kafka.errors.KafkaTimeoutError) else None,
                ) from exc
            finally:
                if admin is not None:
                    admin.close()

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
        with self._producer_lock:
            if self._closed:
                return
            self._closed = True
            producer = self._producer
        try:
            self.flush(timeout)
        except TransportError as exc:
            logger.warning("closing with records unsent: %s", exc)
        _shutdown(producer)
        with self._pending_lock:
            left = list(self._pending)
        for acked in left:
            _settle(
                acked,
                TransportError(
                    "the transport closed before the broker acknowledged the record",
                    cause="closed",
                ),
            )
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


# -- kafka-python internals, each used in one place -------------------------------

#: How long a forced close waits for the producer's sender thread to stop.
_FORCE_CLOSE_WAIT = 1.0


def _set_auto_create(cluster: Any, enabled: bool) -> None:
    """Set whether a client's metadata requests may create topics.

    kafka-python 3.0 builds each client's ClusterMetadata without passing
    on ``allow_auto_create_topics``, so its metadata requests always allow
    creation; set it on the metadata object itself.
    """
    cluster.config["allow_auto_create_topics"] = enabled


def _fatally_failed(producer: kafka.KafkaProducer) -> bool:
    """Whether kafka-python gave this producer up for good.

    An idempotent producer enters a fatal state on any non-retriable error
    for a batch (a record too large for the topic among them) and fails
    every later send; the state lives on its transaction manager.
    """
    manager = producer._transaction_manager
    return manager is not None and bool(manager.has_fatal_error())


def _untrack(cluster: Any, topic: str) -> None:
    """Stop the producer asking metadata for a topic that does not exist.

    kafka-python never forgets a topic it was asked to send to, and while
    one is missing it refreshes metadata every ``retry_backoff_ms``.
    Rebinding the set (not changing it in place) keeps a request being
    built from it on the IO thread intact; if the sender thread adds a
    topic at the same moment, that topic is added again by its next send.
    """
    cluster._topics = cluster._topics - {topic}


def _shutdown(producer: kafka.KafkaProducer) -> None:
    """Stop a producer now, failing the records it still holds.

    kafka-python's ``close()`` flushes first and raises if that times out,
    never reaching its forced close; so force its sender thread to stop
    (it fails every incomplete record) and close it after.
    """
    sender = producer._sender
    sender.force_close()
    if sender is not threading.current_thread():
        sender.join(_FORCE_CLOSE_WAIT)
    try:
        producer.close(timeout=0)
    except (kafka.errors.KafkaError, ValueError) as exc:
        logger.debug("producer close: %s", exc)


def _wait_kafka(future: Any, timeout: float) -> bool:
    """Wait for a kafka-python future; whether it completed in time."""
    if future.is_done:
        return True
    if timeout <= 0:
        return False
    done = threading.Event()
    future.add_both(lambda *_: done.set())
    return done.wait(timeout)


def _settle(acked: Future[None], error: Optional[BaseException]) -> None:
    """Complete an acknowledgement future once; later outcomes are dropped."""
    try:
        if error is None:
            acked.set_result(None)
        else:
            acked.set_exception(error)
    except concurrent.futures.InvalidStateError:
        pass  # close() failed it first


def _size(message: Message) -> int:
    """A record's key, value and header bytes."""
    headers = sum(len(k.encode()) + len(v) for k, v in message.headers)
    return len(message.key or b"") + len(message.value or b"") + headers


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
            topic in _subscription(member.get("member_metadata"))
            for member in group.get("members") or ()
        )
    # Committed offsets on this topic tell which member-less groups read it.
    committed = _committed_offsets(admin, group_ids, partitions)
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


def _committed_offsets(
    admin: kafka.KafkaAdminClient, group_ids: List[str], partitions: List[kafka.TopicPartition]
) -> Dict[str, Dict[kafka.TopicPartition, Any]]:
    """Each group's committed offsets on ``partitions``, in one request if
    possible; group by group when one of them fails (e.g. it was deleted
    since it was listed), leaving that one out."""
    if not group_ids:
        return {}
    try:
        return dict(admin.list_group_offsets({g: partitions for g in group_ids}))
    except kafka.errors.KafkaError:
        pass
    committed = {}
    for group_id in group_ids:
        try:
            committed.update(admin.list_group_offsets({group_id: partitions}))
        except kafka.errors.KafkaError as exc:
            logger.debug("no offsets of group %s: %s", group_id, exc)
    return committed


def _subscription(metadata: Any) -> List[str]:
    """The topics a group member subscribes to, from its described metadata.

    kafka-python decodes the consumer protocol's subscription into a dict;
    one it cannot decode (Faust's members add user data it does not parse)
    comes as text, and its head is read here: a 16-bit version, a 32-bit
    count, then each topic as a 16-bit length and the name (topic names are
    ASCII, so the text holds their bytes unchanged).
    """
    if isinstance(metadata, dict):
        return list(metadata.get("topics") or ())
    if not isinstance(metadata, str):
        return []
    raw = metadata.encode("utf-8")
    try:
        (count,) = struct.unpack_from(">i", raw, 2)
        topics, offset = [], 6
        for _ in range(count):
            (size,) = struct.unpack_from(">h", raw, offset)
            topics.append(raw[offset + 2 : offset + 2 + size].decode("ascii"))
            offset += 2 + size
    except (struct.error, UnicodeDecodeError):
        return []
    return topics
