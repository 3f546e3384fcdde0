"""The Kafka transport, on kafka-python. The only module that imports ``kafka``.

One :class:`kafka.KafkaProducer` (thread-safe) is shared by every caller; a
:class:`kafka.KafkaAdminClient` is made on first use and serialised by a
lock; each reader owns its own :class:`kafka.KafkaConsumer` (not
thread-safe) and is used only by the thread that polls it. kafka-python
errors are re-raised as :class:`TransportError` with the cause chained.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import socket
import ssl
import struct
import threading
import time
from typing import (
    Any,
    Callable,
    Collection,
    Dict,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Set,
    Tuple,
    Union,
)

import kafka
import kafka.errors
from kafka.admin import ConfigResource, ConfigResourceType, OffsetSpec
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.net.sasl import get_sasl_mechanism
from kafka.net.transport import KafkaSSLTransport
from kafka.protocol.metadata.api_versions import ApiVersionsRequest
from kafka.protocol.parser import KafkaProtocol
from kafka.protocol.sasl import SaslAuthenticateRequest, SaslHandshakeRequest
from kafka.structs import OffsetAndMetadata

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

__all__ = ["KafkaTransport", "KAFKA_SETTINGS", "DEFAULT_CONNECT_TIMEOUT", "check_connection", "check_settings"]

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

#: Seconds to reach a broker, log in and bootstrap, unless told otherwise.
DEFAULT_CONNECT_TIMEOUT = 10.0

#: Settings of every client (producer, consumers, admin) unless the App sets
#: them. kafka-python backs off reconnecting to a broker exponentially up to
#: 30 s, so after an outage of a few seconds a client may wait as long again
#: before it tries the broker that is back; Kafka's Java clients cap that
#: pause at 1 s, as here.
_CLIENT_DEFAULTS: Dict[str, Any] = {"reconnect_backoff_max_ms": 1000}

#: Producer settings of this library's own unless the App sets them.
#: ``max_block_ms`` bounds a send whose caller gave no timeout.
_PRODUCER_DEFAULTS: Dict[str, Any] = {"max_block_ms": 10_000}

#: Record batch overhead beyond a record's key, value and headers, in bytes
#: (a v2 batch header plus one record's framing, rounded up).
_BATCH_OVERHEAD = 128
_SIZE_ERRORS = (kafka.errors.MessageSizeTooLargeError, kafka.errors.RecordListTooLargeError)
_AUTH_ERRORS = (
    kafka.errors.TopicAuthorizationFailedError,
    kafka.errors.GroupAuthorizationFailedError,
    kafka.errors.ClusterAuthorizationFailedError,
)

#: How long metadata must keep saying a topic is missing before a record to
#: it is refused: a topic another client has just created can be unknown to
#: the broker's metadata for a moment (a Faust client creates its reply
#: topic right before it sends a request).
MISSING_GRACE = 1.0
#: Pause between two metadata requests while a topic looks missing.
_MISSING_RETRY = 0.05
#: For how long after a topic was found missing a send to it gets no grace
#: (refused as soon as metadata still lacks it): a worker going through the
#: backlog of a client that left (its reply topic deleted) would otherwise
#: wait the grace for every record.
MISSING_REMEMBERED = 10.0
# Most topics remembered as missing; the memory is cleared when full.
_MISSING_MAX = 10_000


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
        # Positions skipped to, not yet handed out by take_skipped().
        self._skips: List[Tuple[TopicPartition, int]] = []

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
        self._skips.append(((tp.topic, tp.partition), after))
        logger.warning(
            "skipped records %s[%d]@%d..%d: kafka-python cannot read them (%s)",
            tp.topic,
            tp.partition,
            first,
            after - 1,
            exc.__context__ or exc,
        )
        return True

    def take_skipped(self) -> List[Tuple[TopicPartition, int]]:
        skips, self._skips = self._skips, []
        return skips

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
    headers = list(r.headers) if r.headers else []  # kafka-python's (key, value) tuples
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
        connect_timeout: seconds to reach a bootstrap server, log in and
            bootstrap (:func:`check_connection`, then kafka-python's
            bootstrap); also each client's ``bootstrap_timeout_ms`` unless
            the settings give one, which then bounds it too. None:
            ``bootstrap_timeout_ms`` if set, else
            :data:`DEFAULT_CONNECT_TIMEOUT`.

    Raises:
        TypeError: a setting that no kafka-python client accepts, or one
            this library manages itself.
        TransportError: the broker could not be reached, or refused the
            login, within ``connect_timeout``; ``cause`` names why (see
            :func:`check_connection`).

    Threading model: the producer is shared by every thread; one that
    kafka-python marked fatally failed is replaced by the next
    :meth:`produce` (``_producer_lock`` guards the swap). Records not yet
    acknowledged are tracked in ``_pending`` (under ``_pending_lock``) so
    that :meth:`flush` and :meth:`close` keep their timeouts, which
    kafka-python's do not (its ``close`` raises when its flush times out).
    Whichever thread takes a record out of ``_pending`` (its acknowledgement,
    its failure, :meth:`close`, or the news that its topic was deleted)
    calls its ``on_done``: once.
    """

    def __init__(
        self,
        bootstrap_servers: List[str],
        settings: Optional[Mapping[str, Any]] = None,
        *,
        replication_factor: int = -1,
        auto_create_topics: bool = False,
        connect_timeout: Optional[float] = None,
    ) -> None:
        settings = dict(settings or {})
        check_settings(settings)
        if "bootstrap_timeout_ms" in settings:
            # Given explicitly, kafka-python's own bound is honoured too.
            bound = settings["bootstrap_timeout_ms"] / 1000
            connect_timeout = bound if connect_timeout is None else min(connect_timeout, bound)
        elif connect_timeout is None:
            connect_timeout = DEFAULT_CONNECT_TIMEOUT
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be > 0, not {connect_timeout!r}")
        deadline = time.monotonic() + connect_timeout
        check_connection(bootstrap_servers, settings, deadline)
        # Every client bootstraps within the connect timeout unless told
        # otherwise (kafka-python's default is 30 s).
        settings.setdefault("bootstrap_timeout_ms", max(1, int(connect_timeout * 1000)))
        settings = {**_CLIENT_DEFAULTS, **settings}
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
        # Guards `_pending` (kafka-python's future of each record not
        # settled yet -> its number, topic and on_done) and `_flushes`.
        self._pending_lock = threading.Lock()
        self._pending: Dict[Any, _Pending] = {}
        self._numbers = itertools.count()
        # flush() calls waiting, notified when the last record each waits
        # for is settled.
        self._flushes: List[_Flush] = []
        self._flushed = threading.Condition(self._pending_lock)
        # Topics the last metadata responses said are missing, with how
        # many said so in a row (the producer's IO thread only).
        self._missing_strikes: Dict[str, int] = {}
        # Topics a send found missing, and when (any thread: single dict
        # operations, and a race only looks a topic up once more).
        self._missing_since: Dict[str, float] = {}
        self._producer = self._new_producer(deadline)

    def _new_producer(self, deadline: float) -> kafka.KafkaProducer:
        config = dict(self._producer_config)
        config["bootstrap_timeout_ms"] = max(
            1, min(config["bootstrap_timeout_ms"], int((deadline - time.monotonic()) * 1000))
        )
        try:
            producer = kafka.KafkaProducer(bootstrap_servers=self._bootstrap, **config)
        except kafka.errors.KafkaError as exc:
            raise _connect_error(self._bootstrap, exc) from exc
        _set_auto_create(producer._metadata, self._auto_create)
        accumulator = producer._accumulator
        producer._metadata.add_listener(lambda cluster: self._on_metadata(cluster, accumulator))
        return producer

    def _on_metadata(self, cluster: Any, accumulator: Any) -> None:
        """Forget topics that no longer exist, failing records sent to them.

        kafka-python never forgets a topic it sent to: once a client's reply
        topic is deleted, a worker's producer would ask for it (and log an
        error) every ``retry_backoff_ms``, for good, and retry records to it
        until ``delivery_timeout_ms`` (two minutes). A topic that metadata
        responses list neither with partitions nor with an id, twice in a
        row (once could predate a send that is waiting for it), is gone.
        Runs on the producer's IO thread after each metadata update: reads
        and completes futures, never blocks.
        """
        strikes = self._missing_strikes  # only this thread uses it
        gone = set()
        for topic in cluster._topics:
            if cluster.partitions_for_topic(topic) is None and cluster.topic_id(topic) is None:
                strikes[topic] = strikes.get(topic, 0) + 1
                if strikes[topic] >= 2:
                    gone.add(topic)
        for topic in set(strikes) - set(cluster._topics) | gone:
            strikes.pop(topic, None)
        if not gone:
            return
        _untrack(cluster, gone)
        _drop_empty_queues(accumulator, gone)
        with self._pending_lock:
            lost = [sent for sent, pending in self._pending.items() if pending.topic in gone]
        for sent in lost:
            pending = self._take_pending(sent)
            if pending is not None:
                deleted = pending.topic
                error = NoRespondersError(f"topic {deleted} does not exist (deleted)", topic=deleted)
                call_on_done(pending.on_done, error)

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
            raise _connect_error(self._bootstrap, exc) from exc
        _set_auto_create(consumer._client.cluster, False)
        return consumer

    def _admin_locked(self) -> kafka.KafkaAdminClient:
        if self._admin is None:
            self._admin = self._new_admin({})
        return self._admin

    def _new_admin(self, overrides: Mapping[str, Any]) -> kafka.KafkaAdminClient:
        """A connected admin client, or a TransportError naming the cause.

        The broker is checked first: a KafkaAdminClient that cannot
        bootstrap raises from its constructor and leaves its IO thread
        running (kafka-python 3.0), so none is made while the broker is
        known to be out of reach.
        """
        config = {**_pick(self._settings, _ADMIN), **overrides}
        check_connection(
            self._bootstrap, self._settings, time.monotonic() + config["bootstrap_timeout_ms"] / 1000
        )
        try:
            return kafka.KafkaAdminClient(bootstrap_servers=self._bootstrap, **config)
        except kafka.errors.KafkaError as exc:
            raise _connect_error(self._bootstrap, exc) from exc

    # -- producing ----------------------------------------------------------

    def produce_then(
        self,
        topic: str,
        message: Message,
        on_done: OnDone,
        *,
        timeout: Optional[float] = None,
    ) -> None:
        deadline = time.monotonic() + (self._max_block if timeout is None else timeout)
        producer = self._live_producer(deadline)
        self._await_partitions(producer, topic, deadline)
        try:
            sent = producer.send(
                topic,
                value=message.value,
                key=message.key,
                headers=message.headers,
                partition=message.partition,
            )
        except _SIZE_ERRORS as exc:
            limit = self._producer_config.get(
                "max_request_size", kafka.KafkaProducer.DEFAULT_CONFIG["max_request_size"]
            )
            raise TransportError(
                f"a record of {_size(message)} bytes to topic {topic} is larger than the "
                f"producer's max_request_size ({limit} bytes)",
                topic=topic,
                cause="too_large",
            ) from exc
        except kafka.errors.KafkaError as exc:
            if _authorization_failure(exc):
                raise self._denied(exc, "WRITE", topic=topic) from exc
            raise TransportError(f"cannot send to {topic}: {exc}", topic=topic) from exc
        with self._pending_lock:
            self._pending[sent] = _Pending(next(self._numbers), topic, on_done)
        # Bound methods with arguments, not closures: this runs per record.
        sent.add_callback(self._on_sent, sent)
        sent.add_errback(self._on_send_error, sent, message)

    def _take_pending(self, sent: Any) -> Optional[_Pending]:
        """Take a record out of ``_pending``: its ``on_done`` is the caller's
        to call. None if another thread took it first."""
        with self._pending_lock:
            pending = self._pending.pop(sent, None)
            if pending is not None:
                for flush in self._flushes:
                    if pending.number <= flush.last:
                        flush.left -= 1
                        if not flush.left:
                            self._flushed.notify_all()
        return pending

    def _on_sent(self, sent: Any, metadata: Any) -> None:
        # On kafka-python's IO thread: never block here.
        pending = self._take_pending(sent)
        if pending is not None:
            call_on_done(pending.on_done, None)

    def _on_send_error(self, sent: Any, message: Message, exc: BaseException) -> None:
        # On kafka-python's IO thread: never block here.
        pending = self._take_pending(sent)
        if pending is None:
            return
        topic = pending.topic
        if isinstance(exc, _SIZE_ERRORS):
            # Naming the limit takes an admin round trip.
            threading.Thread(
                target=self._fail_too_large,
                args=(pending.on_done, topic, _size(message), exc),
                name="replies-producer-error",
                daemon=True,
            ).start()
            return
        if _authorization_failure(exc):
            error = self._denied(exc, "WRITE", topic=topic)
        else:
            error = TransportError(
                f"send to {topic} failed: {exc}",
                topic=topic,
                cause="closed" if self._closed else None,
            )
        error.__cause__ = exc
        call_on_done(pending.on_done, error)

    def _live_producer(self, deadline: float) -> kafka.KafkaProducer:
        """The producer to send with, replacing one that failed for good."""
        # Fast path without the lock, which every handler thread would
        # contend for: reading the two fields is atomic, and a close that
        # races with this read is the same as one just after it.
        producer = self._producer
        if not self._closed and not _fatally_failed(producer):
            return producer
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
        own metadata, and refuse a topic that metadata responses have said
        is missing for ``MISSING_GRACE`` seconds (or until the deadline);
        one found missing in the last ``MISSING_REMEMBERED`` seconds is
        refused on the first response that still lacks it.

        Raises:
            NoRespondersError: the topic does not exist.
            TransportError: no metadata by the deadline.
        """
        # Private: the producer's ClusterMetadata; the methods used on it
        # are public ones of that class.
        cluster = producer._metadata
        if cluster.partitions_for_topic(topic) is not None:
            return
        # A topic found missing lately is refused on the first metadata
        # response that still lacks it: no grace.
        found_missing = self._missing_since.get(topic)
        grace = MISSING_GRACE
        if found_missing is not None and time.monotonic() - found_missing < MISSING_REMEMBERED:
            grace = 0.0
        sender = producer._sender
        covered = 0  # metadata responses that covered the topic
        missing_since: Optional[float] = None  # first response that lacked it
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
            if not done and missing_since is None:
                raise TransportError(
                    f"no metadata for topic {topic} in time: is the broker reachable?",
                    topic=topic,
                    cause="timeout",
                )
            error = update.exception if done and update.failed() else None
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
                    now = time.monotonic()
                    missing_since = now if missing_since is None else missing_since
                    if not self._auto_create and now - missing_since >= grace:
                        self._remember_missing(cluster, topic)
                        raise NoRespondersError(f"topic {topic} does not exist", topic=topic)
                    time.sleep(max(0.0, min(_MISSING_RETRY, deadline - now)))
            elif isinstance(error, _AUTH_ERRORS):
                _untrack(cluster, topic)
                raise self._denied(error, "WRITE", topic=topic) from error
            elif not error.retriable:
                raise TransportError(
                    f"cannot get metadata for topic {topic}: {error}", topic=topic
                ) from error
            if time.monotonic() >= deadline:
                if missing_since is not None and not self._auto_create:
                    self._remember_missing(cluster, topic)
                    raise NoRespondersError(f"topic {topic} does not exist", topic=topic)
                raise TransportError(
                    f"no partitions for topic {topic} in time", topic=topic, cause="timeout"
                )

    def _remember_missing(self, cluster: Any, topic: str) -> None:
        """Refuse ``topic`` at once for ``MISSING_REMEMBERED`` seconds."""
        _untrack(cluster, topic)
        if len(self._missing_since) >= _MISSING_MAX:
            self._missing_since.clear()
        self._missing_since[topic] = time.monotonic()

    def _fail_too_large(self, on_done: OnDone, topic: str, size: int, exc: BaseException) -> None:
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
        call_on_done(on_done, error)

    def _topic_limit(self, topic: str) -> int:
        """The topic's effective ``max.message.bytes``: one admin round trip."""
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, ["max.message.bytes"])
        with self._admin_lock:
            found = self._admin_locked().describe_configs([resource], config_filter="all")
        return int(found["topic"][topic]["max.message.bytes"]["value"])

    def flush(self, timeout: Optional[float] = None) -> None:
        # Waits for the records pending now to be settled: kafka-python's
        # flush() applies its timeout to each batch in turn, not to the whole.
        with self._flushed:
            if not self._pending:
                return
            flush = _Flush(next(reversed(self._pending.values())).number, len(self._pending))
            self._flushes.append(flush)
            try:
                if not self._flushed.wait_for(lambda: not flush.left, timeout):
                    raise TransportError(
                        f"{flush.left} records not acknowledged within {timeout} s",
                        cause="timeout",
                    )
            finally:
                self._flushes.remove(flush)

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
                except _AUTH_ERRORS as exc:
                    # The broker checks CREATE before it looks whether the
                    # topic exists: a principal without CREATE may use a
                    # topic made for it.
                    if name not in admin.list_topics():
                        raise self._denied(exc, "CREATE", topic=name) from exc
                    created = False
                # A consumer group that subscribes before every partition of
                # a new topic has a leader gets an assignment that leaves
                # some partitions to nobody; so wait until they all have one.
                admin.wait_for_topics([name])
        except _AUTH_ERRORS as exc:
            raise self._denied(exc, "CREATE", topic=name) from exc
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
                admin = self._new_admin(bounds)
                admin.delete_topics([name])
            except kafka.errors.UnknownTopicOrPartitionError:
                pass
            except _AUTH_ERRORS as exc:
                raise self._denied(exc, "DELETE", topic=name) from exc
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

    def reply_reader(self, topic: str, timeout: float, *, partition: Optional[int] = None) -> Reader:
        consumer = self._consumer()
        try:
            partitions = self._partitions(consumer, topic, timeout)
            if partition is not None:
                if partition not in {tp.partition for tp in partitions}:
                    raise TransportError(
                        f"reply topic {topic} has no partition {partition} "
                        f"(it has {len(partitions)})",
                        topic=topic,
                    )
                partitions = [kafka.TopicPartition(topic, partition)]
            consumer.assign(partitions)
            consumer.seek_to_end(*partitions)
            for tp in partitions:
                consumer.position(tp)  # resolves the end offset now, not lazily
        except BaseException as exc:
            consumer.close(autocommit=False)
            if isinstance(exc, _AUTH_ERRORS):
                raise self._denied(exc, "READ", topic=topic) from exc
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
            self._partitions(consumer, topic, timeout=30.0)
            if str(self._settings.get("security_protocol", "PLAINTEXT")).upper() != "PLAINTEXT":
                self._check_read(topic, group_id)
            listener = _Listener(on_revoke)
            consumer.subscribe([topic], listener=listener)
        except BaseException:
            consumer.close(autocommit=False)
            raise
        return _KafkaGroupReader(consumer, listener)

    def abandon(self) -> None:
        # kafka-python registers an exit hook per producer that flushes it:
        # in a child the producer's sender thread does not exist, so the
        # hook would wait, time out and print a traceback at exit.
        _drop_exit_hook(self._producer)

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
        for sent in left:
            pending = self._take_pending(sent)
            if pending is not None:
                call_on_done(
                    pending.on_done,
                    TransportError(
                        "the transport closed before the broker acknowledged the record",
                        cause="closed",
                        topic=pending.topic,
                    ),
                )
        with self._admin_lock:
            if self._admin is not None:
                self._admin.close()
                self._admin = None

    # -- authorization --------------------------------------------------------

    def _denied(
        self,
        exc: BaseException,
        operation: str,
        *,
        topic: Optional[str] = None,
        group: Optional[str] = None,
    ) -> TransportError:
        """The error for an operation the broker's ACLs refused."""
        what = f"group {group}" if group else f"topic {topic}" if topic else "the cluster"
        user = self._settings.get("sasl_plain_username")
        who = f"user {user!r}" if user else "this client's principal"
        return TransportError(
            f"not authorized: {operation} on {what} is denied to {who} by the "
            f"broker's ACLs ({type(exc).__name__}); see the README's Security section",
            topic=topic,
            group=group,
            cause="authorization_failed",
            operation=operation,
        )

    def _partitions(
        self, consumer: kafka.KafkaConsumer, topic: str, timeout: float
    ) -> List[kafka.TopicPartition]:
        """The partitions of a topic to read; refused at once if it may not
        even be described (READ implies DESCRIBE)."""
        try:
            if not consumer.partitions_for_topic(topic):
                self._check_describe(topic)
            return _wait_for_partitions(consumer, topic, timeout)
        except _AUTH_ERRORS as exc:
            raise self._denied(exc, "READ", topic=topic) from exc

    def _check_describe(self, topic: str) -> None:
        """Raise TopicAuthorizationFailedError if ``topic`` may not be described.

        A consumer's metadata of all topics silently leaves out those it
        may not see; a request naming the topic gets the error (which the
        broker gives whether or not the topic exists).
        """
        try:
            with self._admin_lock:
                (described,) = self._admin_locked().describe_topics([topic])
        except (kafka.errors.KafkaError, TransportError, ValueError) as exc:
            logger.debug("cannot describe topic %s: %s", topic, exc)
            return
        if described.get("error_code") == kafka.errors.TopicAuthorizationFailedError.errno:
            raise kafka.errors.TopicAuthorizationFailedError(topic)

    def _check_read(self, topic: str, group_id: str) -> None:
        """Refuse at once a group member that may not read its topic or group.

        Without this, the missing right shows only in the poll thread,
        after the join. A throw-away consumer of the group fetches the
        committed offset (DESCRIBE on the group) and one fetch at the end
        of partition 0 (READ on the topic); it joins nothing and commits
        nothing. Costs one short connection and about 0.2 s per agent at
        serve(), so it runs only with a security protocol (ACLs need an
        authenticated principal in practice).
        """
        probe = self._consumer(group_id=group_id)
        tp = kafka.TopicPartition(topic, 0)
        try:
            probe.assign([tp])
            try:
                probe.committed(tp)
            except _AUTH_ERRORS as exc:
                raise self._denied(exc, "READ", group=group_id) from exc
            probe.seek_to_end(tp)
            try:
                probe.position(tp)
                probe.poll(timeout_ms=0)
                probe.poll(timeout_ms=200)
            except _AUTH_ERRORS as exc:
                raise self._denied(exc, "READ", topic=topic) from exc
        except kafka.errors.KafkaError as exc:
            raise TransportError(f"cannot read topic {topic}: {exc}", topic=topic) from exc
        finally:
            probe.close(autocommit=False)

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
        except ValueError as exc:
            # kafka-python could not parse the broker's DescribeGroups answer
            # (Tansu's authorized operations, for one).
            raise TransportError(
                f"cannot describe the readers of {topic}: the broker's consumer-group "
                f"description could not be read ({exc})",
                topic=topic,
            ) from exc


# -- reaching a broker ---------------------------------------------------------------

#: SASL mechanisms :func:`check_connection` logs in with; others (GSSAPI,
#: OAUTHBEARER) are left to kafka-python's own bootstrap.
_CHECKED_SASL = {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}


class _Unreachable(Exception):
    """One bootstrap server failed the check; ``cause`` as in TransportError."""

    def __init__(self, message: str, cause: str, *, final: bool) -> None:
        super().__init__(message)
        self.cause = cause
        #: Trying again cannot help (bad certificate, refused login).
        self.final = final


def check_connection(servers: List[str], settings: Mapping[str, Any], deadline: float) -> None:
    """Reach one bootstrap server as kafka-python will, or say why not.

    Per server: resolve its name, open TCP, then (``SSL``/``SASL_SSL``) the
    TLS handshake with kafka-python's own TLS settings, an ``ApiVersions``
    round trip (is it Kafka?), then (``SASL_*`` with PLAIN or SCRAM) the
    SASL login, all over one connection.
    A server that refused the certificate or the login ends the check at
    once; a refused connection or an unresolvable name is retried (a broker
    may be starting) until ``deadline``. Behind ``proxy_url`` nothing is
    checked here. Cost when all is well: one short connection.

    Args:
        servers: ``host:port`` strings.
        settings: the kafka-python settings.
        deadline: a :func:`time.monotonic` time.

    Raises:
        TransportError: with ``cause`` ``"name_not_resolved"``,
            ``"connection_refused"``, ``"unreachable"``, ``"timeout"``,
            ``"tls_failed"``, ``"protocol_mismatch"`` (not Kafka, or not
            this security protocol) or ``"authentication_failed"``, and a
            message naming the server and the cause.
    """
    if settings.get("proxy_url") or settings.get("socks5_proxy"):
        return
    backoff = 0.05
    while True:
        failures: List[_Unreachable] = []
        for server in servers:
            try:
                _check_server(server, settings, deadline)
                return
            except _Unreachable as failure:
                failures.append(failure)
        final = [f for f in failures if f.final]
        left = deadline - time.monotonic()
        if final or left <= 0:
            worst = (final or failures)[-1]
            raise TransportError(
                "; ".join(str(f) for f in failures), cause=worst.cause
            ) from worst.__cause__
        time.sleep(min(backoff, left))
        backoff = min(1.0, backoff * 2)


def _check_server(server: str, settings: Mapping[str, Any], deadline: float) -> None:
    host, _, port_text = server.rpartition(":")
    host = host.strip("[]")
    if not host or not port_text.isdigit():
        raise _Unreachable(f"bootstrap server {server!r} is not host:port", "unreachable", final=True)
    port = int(port_text)
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise _Unreachable(
            f"cannot resolve host name {host!r} of bootstrap server {server} ({exc.strerror})",
            "name_not_resolved",
            final=False,
        ) from exc
    sock = _open_tcp(server, addresses, deadline)
    try:
        protocol = str(settings.get("security_protocol") or "PLAINTEXT").upper()
        if protocol in ("SSL", "SASL_SSL"):
            sock = _tls_handshake(server, host, sock, settings, deadline)
        call = _caller(sock, deadline)
        try:
            call(ApiVersionsRequest(), 0)
        except socket.timeout as exc:
            raise _Unreachable(f"no answer from {server} in time", "timeout", final=False) from exc
        except (OSError, kafka.errors.KafkaError) as exc:
            hint = "" if protocol.endswith("SSL") else " (is it a TLS listener? then security_protocol must be SSL or SASL_SSL)"
            raise _Unreachable(
                f"{server} does not answer as a Kafka broker over {protocol}: {exc}{hint}",
                "protocol_mismatch",
                final=True,
            ) from exc
        mechanism = str(settings.get("sasl_mechanism") or "PLAIN").upper()
        if protocol.startswith("SASL_") and mechanism in _CHECKED_SASL:
            _sasl_login(server, host, call, settings, mechanism)
    finally:
        sock.close()


def _caller(sock: socket.socket, deadline: float) -> Callable[[Any, int], Any]:
    """A blocking request/response function on ``sock``, framed by kafka-python."""
    protocol = KafkaProtocol(client_id="replies-connect-check")

    def call(request: Any, version: int) -> Any:
        request.API_VERSION = version
        protocol.send_request(request)
        sock.settimeout(_left(deadline))
        sock.sendall(protocol.send_bytes())
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the broker closed the connection")
            for _, response in protocol.receive_bytes(data):
                return response

    return call


def _left(deadline: float) -> float:
    return max(0.001, deadline - time.monotonic())


def _open_tcp(server: str, addresses: List[Any], deadline: float) -> socket.socket:
    errors: List[OSError] = []
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        sock.settimeout(_left(deadline))
        try:
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            errors.append(exc)
    last = errors[-1] if errors else OSError("no address")
    if isinstance(last, ConnectionRefusedError):
        raise _Unreachable(
            f"connection refused by {server}: is a broker listening there?",
            "connection_refused",
            final=False,
        ) from last
    if isinstance(last, socket.timeout):
        raise _Unreachable(f"no answer from {server} in time", "timeout", final=False) from last
    raise _Unreachable(f"cannot connect to {server}: {last}", "unreachable", final=False) from last


def _tls_handshake(
    server: str, host: str, sock: socket.socket, settings: Mapping[str, Any], deadline: float
) -> socket.socket:
    tls = {k: settings[k] for k in KafkaSSLTransport.DEFAULT_CONFIG if k in settings}
    try:
        context = KafkaSSLTransport._build_ssl_context({**KafkaSSLTransport.DEFAULT_CONFIG, **tls})
    except (OSError, ssl.SSLError) as exc:
        raise _Unreachable(f"cannot load the TLS settings (ssl_*): {exc}", "tls_failed", final=True) from exc
    wrapped: ssl.SSLSocket = context.wrap_socket(
        sock, server_hostname=host.rstrip("."), do_handshake_on_connect=False
    )
    wrapped.settimeout(_left(deadline))
    try:
        wrapped.do_handshake()
    except ssl.SSLCertVerificationError as exc:
        wrapped.close()
        raise _Unreachable(
            f"TLS verification of {server} failed: {exc.verify_message} "
            "(is ssl_cafile the CA that signed the broker's certificate, and is the "
            "broker's certificate for this host name?)",
            "tls_failed",
            final=True,
        ) from exc
    except ssl.SSLError as exc:
        wrapped.close()
        raise _Unreachable(
            f"TLS handshake with {server} failed: {exc.reason or exc} "
            "(does this listener speak TLS?)",
            "tls_failed",
            final=True,
        ) from exc
    except socket.timeout as exc:
        wrapped.close()
        raise _Unreachable(f"no TLS handshake from {server} in time", "timeout", final=False) from exc
    except OSError as exc:
        wrapped.close()
        raise _Unreachable(
            f"TLS handshake with {server} failed: {exc} (does this listener speak TLS?)",
            "tls_failed",
            final=True,
        ) from exc
    return wrapped


def _sasl_login(
    server: str,
    host: str,
    call: Callable[[Any, int], Any],
    settings: Mapping[str, Any],
    mechanism: str,
) -> None:
    """Log in with kafka-python's SASL mechanism classes.

    Requests are pinned to version 1 (Kafka 1.0 and later). kafka-python's
    own clients drop the broker's reason for a failed login (the broker
    then closes the connection); this reads it.
    """
    user = settings.get("sasl_plain_username")
    who = f"SASL {mechanism} login of user {user!r} at {server}"
    try:
        handshake = call(SaslHandshakeRequest(mechanism=mechanism), 1)
        if handshake.error_code or mechanism not in handshake.mechanisms:
            raise _Unreachable(
                f"authentication failed: {who}: the broker offers {handshake.mechanisms}",
                "authentication_failed",
                final=True,
            )
        login = get_sasl_mechanism(mechanism)(host=host, **settings)
        while not login.is_done():
            response = call(SaslAuthenticateRequest(login.auth_bytes()), 1)
            if response.error_code:
                raise _Unreachable(
                    f"authentication failed: {who} refused: {response.error_message} "
                    "(check sasl_plain_username, sasl_plain_password and sasl_mechanism)",
                    "authentication_failed",
                    final=True,
                )
            login.receive(response.auth_bytes)
        if not login.is_authenticated():
            raise _Unreachable(
                f"authentication failed: {who}: the broker's proof did not verify",
                "authentication_failed",
                final=True,
            )
    except socket.timeout as exc:
        raise _Unreachable(f"no answer to the {who} in time", "timeout", final=False) from exc
    except (OSError, kafka.errors.KafkaError) as exc:
        raise _Unreachable(
            f"authentication failed: {who}: {exc}", "authentication_failed", final=False
        ) from exc


def _authorization_failure(exc: BaseException) -> bool:
    """Whether a kafka-python error is an ACL refusal.

    The idempotent producer reports a refused ``InitProducerId`` (no WRITE
    on any topic, hence no implied IDEMPOTENT_WRITE) as a plain KafkaError
    whose text names the error; so the text is looked at too.
    """
    return isinstance(exc, _AUTH_ERRORS) or (
        isinstance(exc, kafka.errors.KafkaError) and "AuthorizationFailed" in str(exc)
    )


def _connect_error(servers: List[str], exc: BaseException) -> TransportError:
    """A kafka-python client that could not bootstrap, after the check passed."""
    timeout = isinstance(exc, kafka.errors.KafkaTimeoutError)
    return TransportError(
        f"cannot bootstrap from {', '.join(servers)}: {exc}",
        cause="timeout" if timeout else None,
    )


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


def _untrack(cluster: Any, topics: Union[str, Set[str]]) -> None:
    """Stop the producer asking metadata for topics that do not exist.

    kafka-python never forgets a topic it was asked to send to, and while
    one is missing it refreshes metadata every ``retry_backoff_ms``.
    Rebinding the set (not changing it in place) keeps a request being
    built from it on the IO thread intact; if the sender thread adds a
    topic at the same moment, that topic is added again by its next send.
    """
    cluster._topics = cluster._topics - ({topics} if isinstance(topics, str) else topics)


def _drop_empty_queues(accumulator: Any, topics: Set[str]) -> None:
    """Forget the producer's (empty) record queues for deleted topics.

    kafka-python keeps a queue per partition ever sent to; the sender
    checks each one's leader on every pass and, finding none for a deleted
    topic, asks for a metadata update and wakes itself again: work on each
    send that grows with every departed client. A queue still holding
    records stays (they fail with their topic).
    """
    batches = accumulator._batches
    for tp in [tp for tp in list(batches) if tp.topic in topics]:
        with accumulator._tp_lock(tp):
            if not batches.get(tp, True):
                del batches[tp]


def _drop_exit_hook(producer: kafka.KafkaProducer) -> None:
    """Unregister the exit hook kafka-python registered for ``producer``."""
    producer._unregister_cleanup()


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


class _Pending(NamedTuple):
    """A record sent and not settled yet."""

    #: Records are numbered in the order they were sent (for flush()).
    number: int
    topic: str
    on_done: OnDone


class _Flush:
    """One :meth:`KafkaTransport.flush` waiting: for the records up to
    number ``last``, of which ``left`` are not settled yet."""

    __slots__ = ("last", "left")

    def __init__(self, last: int, left: int) -> None:
        self.last = last
        self.left = left




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
        # Private: the consumer's ClusterMetadata, which records the topics
        # a metadata response refused.
        if topic in consumer._client.cluster.unauthorized_topics:
            raise kafka.errors.TopicAuthorizationFailedError(topic)
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
