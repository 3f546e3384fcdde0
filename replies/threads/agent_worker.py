"""Serving one agent: a consumer-group member and a bounded pool of handlers.

Theory of operation
-------------------
The poll thread ``replies-agent-<name>-N`` owns the group reader. Each
record it polls is counted into the in-flight window (records and bytes,
``max_in_flight`` / ``max_in_flight_bytes`` of the agent) and put on the
work queue, from which ``concurrency`` handler threads take records
directly: no round trip through the poll thread between two records. A
record leaves the window once its replies are settled. While the window is
full the poll thread waits for the next record to finish (woken by it, no
fixed sleep) and polls, paused, every ``SATURATED_POLL_EVERY`` seconds to
stay in the group; so memory stays bounded by the window plus one poll's
records however slow the handlers are.

A handler thread serves one record (a :class:`_Job`): it decodes the
request, runs the user's function and sends the reply (or an error reply)
without waiting for the broker. The job holds one count per send not yet
settled; the last acknowledgement (or failure) reports the record done to
the poll thread, which notes, per partition, the offset after the longest
run of done records from the start, and commits that progress at most
every ``COMMIT_INTERVAL`` seconds and always on stop or rejoin: at least
once, a crash replays and never skips, and no offset is committed before
its reply is settled.

No record can stop the agent. Every failure while serving one record
(decode, handler, encode of the reply, a reply refused by the broker, a
reply topic that is gone or illegal, a send that timed out) ends as an
error reply when one can be sent, or as a logged, counted skip; either way
the record is done and its offset committed, so a poison record is handled
once, never in a loop. With a dead-letter topic set, each such record is
copied there with headers naming the failure. Failures reported on a
transport thread (an acknowledgement that failed) are handled by a
follow-up on a handler thread (through the work queue), never on that
thread.

Polling errors (the broker unreachable, a reader kafka-python gave up on)
never kill the poll thread: it retries with backoff, logs, and after a few
failures in a row re-opens its reader (rejoins the group); records not yet
committed are then read again by whichever member gets their partitions.

When partitions are revoked, the transport tells us on whatever thread it
rebalances on (kafka-python's IO thread, where blocking calls are
forbidden), so the callback only queues them. The poll thread then drops
their bookkeeping and their generation before it takes more records;
handler threads skip queued records of an old generation, and the new
owner reads everything uncommitted from the committed offset. Records
being served are answered but not committed, so a rebalance can answer a
request twice; callers ignore the duplicate. While a rebalance is under
way the poll thread only polls, with a long timeout, and holds the records
it gets until the assignment is settled: kafka-python completes a group
join inside ``poll()``, and can lose one whose last response arrives
between two polls; a rebalance that still has not finished after
``REBALANCE_STUCK`` seconds is abandoned by rejoining with a new consumer.
Stopping lets the handlers finish the records they started (the ones
still queued are left uncommitted, for the next owner), waits for their
replies to settle, commits, then leaves the group.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import queue
import re
import threading
import time
import traceback
from collections import OrderedDict
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Collection,
    Dict,
    List,
    Optional,
    Set,
    Tuple,
    Union,
)

from replies.core.codec import Message, Request
from replies.errors import DecodeError, NoRespondersError, RemoteError, TransportError
from replies.observe.serving import AgentObserver, reply_headers
from replies.transport.base import GroupReader, Record, TopicPartition

if TYPE_CHECKING:
    from replies.agent import Agent
    from replies.app import App

__all__ = ["AgentWorker", "COUNTERS"]

_worker_ids = itertools.count(1)

POLL_INTERVAL = 0.1
# How often a saturated worker polls (paused) to stay in the group; between
# polls it waits for records to finish, woken by the first.
SATURATED_POLL_EVERY = 0.2
# Most records one poll returns.
MAX_POLL_RECORDS = 500
#: Progress is committed at most this often (and always on stop).
COMMIT_INTERVAL = 0.1
# Polls during a rebalance: long, so the join completes inside one.
REBALANCE_POLL = 1.0
# A rebalance unfinished after this long is taken as stuck: rejoin.
REBALANCE_STUCK = 15.0
#: How long sending one reply may block (waiting for the reply topic's
#: metadata): a reply that cannot be queued in time counts as failed.
REPLY_SEND_TIMEOUT = 5.0
# Backoff after a polling error: doubles from the first to the last.
POLL_RETRY_FIRST = 0.1
POLL_RETRY_MAX = 5.0
# Polling errors in a row after which the reader is re-opened.
REOPEN_AFTER = 3
# Reply topics remembered as failing (each is logged once); the memory is
# cleared when full, so a flood of distinct bad names stays bounded.
_FAILING_TOPICS_MAX = 1000
# Longest traceback sent in an error reply (its last characters).
_TRACEBACK_MAX = 16_000
# Kafka's rule for topic names.
_LEGAL_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}\Z")

#: The per-agent counters an :class:`AgentWorker` keeps (plain ints).
COUNTERS = (
    "handled",
    "error_replies",
    "skipped_undecodable",
    "skipped_expired",
    "reply_failures",
    "dead_lettered",
)

#: Headers added to a dead-lettered record, naming the failure.
HEADER_DLT_ERROR = "Replies-Dead-Letter-Error"
HEADER_DLT_MESSAGE = "Replies-Dead-Letter-Message"
HEADER_DLT_TOPIC = "Replies-Dead-Letter-Topic"
HEADER_DLT_PARTITION = "Replies-Dead-Letter-Partition"
HEADER_DLT_OFFSET = "Replies-Dead-Letter-Offset"


class AgentWorker:
    """Consumes one agent's requests and replies to them.

    Threading model: :meth:`start` starts the poll thread, which alone uses
    the group reader, the per-partition bookkeeping and the counters;
    ``concurrency`` handler threads (``replies-handler-<name>-N``) take
    records from the ``_work`` queue, run the user's function and send
    replies through the App's thread-safe transport; each record's outcome
    reaches the poll thread on the ``_done`` queue once its sends are
    settled. :meth:`stop` may be called from any thread.

    Args:
        app: the App whose transport and codec to use.
        agent: the agent to serve.

    Attributes:
        handled: requests whose handler ran (it returned or raised).
        error_replies: error replies sent (the handler raised, the request
            or the reply could not be encoded, the reply was too large).
        skipped_undecodable: records dropped because they could not be
            decoded and named no usable reply address.
        skipped_expired: requests dropped because their caller's deadline
            had passed.
        reply_failures: replies that could not be delivered (reply topic
            gone or illegal, refused, timed out).
        dead_lettered: records copied to the dead-letter topic.

        The counters are plain ints written by the poll thread only; read
        them from any thread (a read may be a moment behind).
    """

    def __init__(self, app: "App", agent: "Agent") -> None:
        self.app = app
        self.agent = agent
        self.logger = logging.getLogger(f"replies.agent.{agent.name}")
        self._observing = AgentObserver(app.observer, agent.name, self.logger)
        self.handled = 0
        self.error_replies = 0
        self.skipped_undecodable = 0
        self.skipped_expired = 0
        self.reply_failures = 0
        self.dead_lettered = 0
        self._stopping = threading.Event()
        # (partition, offset, generation, counters to bump) of each record
        # whose sends are settled; from handler and transport threads.
        self._done: "queue.SimpleQueue[_Done]" = queue.SimpleQueue()
        # Records (with their partition's generation) and follow-ups for
        # the handler threads; None tells one handler thread to stop.
        self._work: "queue.SimpleQueue[Optional[_Work]]" = queue.SimpleQueue()
        self._handlers = [
            threading.Thread(
                target=self._run_handler,
                name=f"replies-handler-{agent.name}-{n}",
                daemon=True,
            )
            for n in range(agent.concurrency)
        ]
        # Poll-thread state. Per partition: the offsets taken and not yet
        # committable, in order, each with its size while pending (-1 once
        # done); the generation of its current assignment (handler threads
        # read it to drop records of a partition lost meanwhile); progress
        # not yet committed.
        self._outstanding: Dict[TopicPartition, OrderedDict[int, int]] = {}
        self._generations: Dict[TopicPartition, int] = {}
        self._next_generation = itertools.count(1)
        self._uncommitted: Dict[TopicPartition, int] = {}
        self._last_commit = 0.0
        # Records taken and not done, and their bytes: the in-flight window.
        self._held = 0
        self._held_bytes = 0
        self._max_in_flight = agent.max_in_flight
        self._max_in_flight_bytes = agent.max_in_flight_bytes
        self._paused = False
        self._last_poll = 0.0
        # Records polled while a rebalance was under way, not yet taken.
        self._parked: List[Record] = []
        # Partitions lost in a rebalance, from the transport's thread.
        self._revoked: "queue.SimpleQueue[List[TopicPartition]]" = queue.SimpleQueue()
        # When the rebalance under way was first seen (poll thread only).
        self._rebalance_started: Optional[float] = None
        # Reply topics already reported as failing. Written by handler and
        # transport threads without a lock: a race only logs twice.
        self._failing_topics: Set[Tuple[str, str]] = set()
        self._reader: Optional[GroupReader] = None
        self._thread = threading.Thread(
            target=self._run_poller,
            name=f"replies-agent-{agent.name}-{next(_worker_ids)}",
            daemon=True,
        )
        self.error: Optional[BaseException] = None

    def start(self) -> None:
        """Join the consumer group and start polling.

        Blocks while the dead-letter topic (if any) is created and the
        group joined.

        Raises:
            TransportError: the broker could not be reached.
        """
        dead_letter = self.agent.dead_letter_topic
        if dead_letter is not None:
            self.app.transport.create_topic(dead_letter, partitions=self.app.topic_partitions)
        self._reader = self._open_reader()
        for handler in self._handlers:
            handler.start()
        self._thread.start()

    def _open_reader(self) -> GroupReader:
        return self.app.transport.group_reader(
            self.agent.topic_name,
            self.agent.group_id,
            on_revoke=self._on_revoke,
            max_records=min(self._max_in_flight, MAX_POLL_RECORDS),
        )

    def stop(self, timeout: Optional[float] = None) -> None:
        """Finish consumed requests, commit, and leave the group.

        Blocks until done, at most ``timeout`` seconds.
        """
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Whether the poll thread runs."""
        return self._thread.is_alive()

    @property
    def in_flight(self) -> int:
        """Records taken from the broker and not yet done (approximate)."""
        return self._held

    def counters(self) -> Dict[str, int]:
        """A snapshot of the counters (see the class attributes)."""
        return {name: getattr(self, name) for name in COUNTERS}

    # -- the poll thread --------------------------------------------------

    def _run_poller(self) -> None:
        failures = 0
        try:
            while not self._stopping.is_set():
                try:
                    self._poll_once()
                    failures = 0
                except Exception as exc:
                    failures += 1
                    self._poll_failed(exc, failures)
            self._finish()
        except BaseException as exc:
            self.error = exc
            self.logger.exception("agent %s stopped by an error", self.agent.name)
        finally:
            try:
                self._close_reader()
            finally:
                self._stop_handlers()

    def _stop_handlers(self) -> None:
        for _ in self._handlers:
            self._work.put(None)
        deadline = time.monotonic() + self.app.shutdown_timeout
        for handler in self._handlers:
            if handler.is_alive():
                handler.join(max(0.0, deadline - time.monotonic()))

    def _window_full(self) -> bool:
        return bool(
            self._held >= self._max_in_flight or self._held_bytes >= self._max_in_flight_bytes
        )

    def _poll_once(self) -> None:
        if self._reader is None:
            self._reader = self._open_reader()
            self._paused = False
        reader = self._reader
        if reader.rebalancing:
            # Wait inside poll(), where kafka-python completes a group
            # join: one whose last response arrives between two polls can
            # be lost, leaving the member stuck.
            records = reader.poll(REBALANCE_POLL)
            self._forget_revoked()
            # Served once the assignment is settled (or dropped by a rejoin).
            self._parked += records
            self._check_rebalance_progress()
            return
        self._rebalance_started = None
        if self._parked:
            parked, self._parked = self._parked, []
            self._take(parked)
        self._collect_done()
        if self._window_full():
            # Saturated: wait for records to finish (woken by the first),
            # polling now and then, paused, to stay in the group.
            now = time.monotonic()
            if now - self._last_poll < SATURATED_POLL_EVERY:
                self._collect_done(block=SATURATED_POLL_EVERY - (now - self._last_poll))
                return
            reader.pause()  # each time: a rebalance may have added partitions
            self._paused = True
            records = reader.poll(0)
        else:
            if self._paused:
                reader.resume()
                self._paused = False
            records = reader.poll(POLL_INTERVAL)
        self._last_poll = time.monotonic()
        # Revocations first: these records may come from the positions a
        # new assignment started at.
        self._forget_revoked()
        self._take(records)
        self._take_skips(reader.take_skipped())
        self._maybe_commit()

    def _poll_failed(self, exc: Exception, failures: int) -> None:
        """Back off after a polling error; re-open the reader if it persists."""
        delay = min(POLL_RETRY_MAX, POLL_RETRY_FIRST * 2 ** (failures - 1))
        self.logger.warning(
            "agent %s: polling failed (%d in a row), retrying in %.1f s: %r",
            self.agent.name,
            failures,
            delay,
            exc,
        )
        if failures >= REOPEN_AFTER:
            self.logger.warning("agent %s: re-opening its reader (rejoining the group)", self.agent.name)
            self._drop_all()
            self._close_reader()
        self._stopping.wait(delay)
        # Handlers may have finished meanwhile: keep the window moving.
        self._collect_done()

    def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is None:
            return
        try:
            reader.close()
        except Exception as exc:
            self.logger.debug("closing the reader failed: %r", exc)

    def _drop_all(self) -> None:
        """Forget every partition: what is uncommitted is read again."""
        self._commit_now()
        self._parked = []
        self._revoked.put(list(self._outstanding))
        self._forget_revoked()

    def _check_rebalance_progress(self) -> None:
        """Rejoin the group if a rebalance has not finished in time."""
        now = time.monotonic()
        if self._rebalance_started is None:
            self._rebalance_started = now
        elif now - self._rebalance_started > REBALANCE_STUCK:
            self.logger.warning(
                "agent %s: group rebalance unfinished after %.0f s; rejoining the group",
                self.agent.name,
                now - self._rebalance_started,
            )
            # Everything uncommitted is read again by whoever gets it.
            self._drop_all()
            self._close_reader()
            self._reader = self._open_reader()
            self._paused = False
            self._rebalance_started = None

    def _take(self, records: List[Record]) -> None:
        """Account for new records and hand them to the handler threads."""
        put = self._work.put
        for record in records:
            tp = (record.topic, record.partition)
            marks = self._outstanding.get(tp)
            if marks is None:
                marks = self._outstanding[tp] = OrderedDict()
                self._generations[tp] = next(self._next_generation)
            size = len(record.value or b"") + len(record.key or b"")
            marks[record.offset] = size
            self._held += 1
            self._held_bytes += size
            put((record, self._generations[tp]))

    def _take_skips(self, skips: List[Tuple[TopicPartition, int]]) -> None:
        """Count records the reader could not read as served: committed
        like the others, so no member meets them again."""
        for tp, after in skips:
            marks = self._outstanding.get(tp)
            if marks is None:
                marks = self._outstanding[tp] = OrderedDict()
                self._generations[tp] = next(self._next_generation)
            marks[after - 1] = _SERVED
            self._advance(marks, tp)

    def _collect_done(self, block: float = 0.0) -> None:
        """Take finished records off the done queue; note commit progress.

        Args:
            block: wait this long for the first one (0: do not wait).
        """
        try:
            item = self._done.get(timeout=block) if block > 0 else self._done.get_nowait()
        except queue.Empty:
            return
        get = self._done.get_nowait
        while True:
            tp, offset, generation, counts = item
            if counts is not _DROPPED:
                for name in counts:
                    setattr(self, name, getattr(self, name) + 1)
            marks = self._outstanding.get(tp)
            # A record of a partition revoked meanwhile was forgotten then.
            if marks is not None and self._generations.get(tp) == generation:
                self._settle(marks, tp, offset, _NOT_SERVED if counts is _DROPPED else _SERVED)
            try:
                item = get()
            except queue.Empty:
                break

    def _settle(
        self, marks: "OrderedDict[int, int]", tp: TopicPartition, offset: int, state: int
    ) -> None:
        """Mark an offset served (or dropped); note committable progress."""
        size = marks.get(offset, _SERVED)
        if size < 0:
            return  # settled already
        marks[offset] = state
        self._held -= 1
        self._held_bytes -= size
        self._advance(marks, tp)

    def _advance(self, marks: "OrderedDict[int, int]", tp: TopicPartition) -> None:
        """Drop the leading run of served offsets; note the commit it allows."""
        committable = None
        for first, mark in marks.items():
            if mark != _SERVED:
                break
            committable = first
        if committable is not None:
            while marks.popitem(last=False)[0] != committable:
                pass
            self._uncommitted[tp] = committable + 1

    def _maybe_commit(self) -> None:
        """Commit progress if enough time passed since the last commit."""
        if self._uncommitted and time.monotonic() - self._last_commit >= COMMIT_INTERVAL:
            self._commit_now()

    def _commit_now(self) -> None:
        offsets, self._uncommitted = self._uncommitted, {}
        self._last_commit = time.monotonic()
        if not offsets or self._reader is None:
            return
        try:
            self._reader.commit(offsets)
        except Exception as exc:
            # The partition moved to another member, or the broker is away:
            # it replays from the last commit, and callers ignore duplicate
            # replies.
            self.logger.warning("commit failed, records may be served again: %r", exc)

    def _finish(self) -> None:
        """Wait for the records taken to be done, and commit."""
        deadline = time.monotonic() + self.app.shutdown_timeout
        try:
            while self._held:
                if time.monotonic() > deadline:
                    self.logger.warning(
                        "agent %s stopped with %d requests unfinished; they will be served again",
                        self.agent.name,
                        self._held,
                    )
                    return
                self._collect_done(block=POLL_INTERVAL)
        finally:
            self._commit_now()

    def _on_revoke(self, partitions: Collection[TopicPartition]) -> None:
        # Any thread: hand the news to the poll thread.
        self._revoked.put(list(partitions))

    def _forget_revoked(self) -> None:
        """Drop the bookkeeping of revoked partitions.

        Their records still queued are dropped by the handler threads (the
        partition's generation changed); those being served finish, but are
        not committed.
        """
        while True:
            try:
                revoked = set(self._revoked.get_nowait())
            except queue.Empty:
                return
            self.logger.debug("partitions revoked: %s", sorted(revoked))
            self._parked = [r for r in self._parked if (r.topic, r.partition) not in revoked]
            for tp in revoked:
                marks = self._outstanding.pop(tp, None)
                self._generations.pop(tp, None)
                self._uncommitted.pop(tp, None)
                for size in (marks or {}).values():
                    if size >= 0:
                        self._held -= 1
                        self._held_bytes -= size

    # -- handler threads ----------------------------------------------------

    def _run_handler(self) -> None:
        work = self._work
        while True:
            item = work.get()
            if item is None:
                return
            if callable(item):
                item()  # a follow-up; it reports its own errors
                continue
            record, generation = item
            tp = (record.topic, record.partition)
            if self._generations.get(tp) != generation:
                continue  # the partition was lost meanwhile: its new owner serves it
            if self._stopping.is_set():
                # Not started: left uncommitted, for the next owner to serve,
                # so that stopping waits only for the records being handled.
                self._done.put((tp, record.offset, generation, _DROPPED))
                continue
            self._handle(record, generation)

    def _handle(self, record: Record, generation: int) -> None:
        job = _Job(self, record, generation)
        try:
            self._serve(job)
        except BaseException as exc:
            # A failure of ours, not of the record: still never lose the
            # record's slot, nor stop the agent.
            self.logger.exception("agent %s: cannot serve %s", self.agent.name, _where(record))
            job.note("reply_failures")
            self._dead_letter(job, exc)
        finally:
            job.release()

    def _serve(self, job: _Job) -> None:
        """Run the handler for one record and send its replies."""
        record = job.record
        try:
            request = self.app.codec.decode_request(record.key, record.value, record.headers)
        except Exception as exc:
            # The codec hands back a usable reply address or none at all.
            partial = exc.request if isinstance(exc, DecodeError) else None
            usable = partial is not None and partial.reply_to is not None
            self.logger.warning(
                "undecodable request at %s%s: %s",
                _where(record),
                "" if usable else " (skipped: no usable reply address)",
                _brief(exc),
            )
            if usable:
                assert partial is not None
                self._reply(job, partial, None, error=exc)
            else:
                job.note("skipped_undecodable")
            self._dead_letter(job, exc)
            return
        deadline = request.deadline
        if isinstance(deadline, float) and time.time() > deadline:
            self.logger.debug(
                "skipping request %s at %s: its caller stopped waiting %.3f s ago",
                request.correlation_id,
                _where(record),
                time.time() - deadline,
            )
            job.note("skipped_expired")
            return
        job.note("handled")
        handling = self._observing.start(record, request)
        try:
            result = self.agent.invoke(request.value, request.key)
            if not inspect.isgenerator(result):
                self._reply(job, request, result)
            elif request.stream:
                for value in result:  # each yielded value is sent at once
                    if not self._reply(job, request, value, more=True):
                        result.close()
                        return
                self._reply(job, request, None, end=True)
            else:
                # One reply per request, as Faust callers require (a second
                # one with the same correlation id breaks their consumer).
                try:
                    self._reply(job, request, next(result, None))
                finally:
                    result.close()
        except Exception as exc:
            handling.error = exc
            self.logger.exception(
                "agent %s raised on request %s", self.agent.name, request.correlation_id
            )
            self._reply(job, request, None, error=exc)
            self._dead_letter(job, exc)
        finally:
            handling.close()

    def _reply(
        self,
        job: _Job,
        request: Request,
        value: Any,
        *,
        more: bool = False,
        end: bool = False,
        error: Optional[BaseException] = None,
    ) -> bool:
        """Send one reply, unless the request is a cast.

        A value that cannot be encoded is answered by an error reply naming
        its type. Never raises.

        Returns:
            Whether the reply (not an error reply in its place) was queued.
        """
        if not request.reply_to or not request.correlation_id:
            return True
        if error is not None:
            self._send_error(job, request, error)
            return False
        try:
            message = self.app.codec.encode_reply(
                request.correlation_id, value, key=request.key, more=more, end=end, request=request
            )
        except Exception as exc:
            self.logger.warning(
                "agent %s: cannot encode the reply to %s: %s",
                self.agent.name,
                request.correlation_id,
                _brief(exc),
            )
            self._send_error(job, request, exc)
            self._dead_letter(job, exc)
            return False
        return self._send_reply(job, request, message, retry=True)

    def _send_error(self, job: _Job, request: Request, error: BaseException) -> bool:
        """Send an error reply describing ``error``; whether it was queued."""
        trace = None
        if self.app.reply_tracebacks:
            trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            if len(trace) > _TRACEBACK_MAX:  # the error reply must stay small
                trace = "...\n" + trace[-_TRACEBACK_MAX:]
        remote = RemoteError(type(error).__name__, _brief(error, 2000), remote_traceback=trace)
        assert request.correlation_id is not None
        try:
            message = self.app.codec.encode_reply(
                request.correlation_id, None, key=request.key, error=remote, request=request
            )
        except Exception as exc:  # the codec is not expected to fail here
            self.logger.error("cannot encode an error reply: %r", exc)
            job.note("reply_failures")
            return False
        job.note("error_replies")
        return self._send_reply(job, request, message, retry=False)

    def _send_reply(self, job: _Job, request: Request, message: Message, *, retry: bool) -> bool:
        """Queue one reply record; failures go to :meth:`_reply_failed`."""
        reply_headers(message.headers)
        topic = request.reply_to
        assert topic is not None

        def failed(exc: BaseException) -> None:
            self._reply_failed(job, request, message, exc, retry=retry)

        return self._send(job, topic, message, failed)

    def _send(
        self,
        job: _Job,
        topic: str,
        message: Message,
        on_failure: Callable[[BaseException], None],
        *,
        counter: Optional[str] = None,
    ) -> bool:
        """Produce one record for ``job``; whether it was queued.

        ``on_failure`` runs on this thread if the record cannot be queued,
        else (if the broker fails it) as a follow-up on a handler thread.
        ``counter`` is counted once the broker acknowledged the record.
        """

        def on_done(error: Optional[BaseException]) -> None:
            # On a transport thread: never block here.
            try:
                if error is not None:
                    self._follow_up(job, on_failure, error)
                elif counter is not None:
                    job.note(counter)
            finally:
                job.release()

        job.hold()  # before sending: on memory://, on_done runs at once
        try:
            if not _LEGAL_TOPIC.match(topic):
                raise ValueError(f"{topic!r} is not a legal topic name")
            self.app.transport.produce_then(topic, message, on_done, timeout=REPLY_SEND_TIMEOUT)
        except Exception as exc:
            job.release()
            on_failure(exc)
            return False
        return True

    def _follow_up(
        self, job: _Job, action: Callable[[BaseException], None], error: BaseException
    ) -> None:
        """Run ``action(error)`` on a handler thread, holding ``job`` meanwhile."""
        job.hold()

        def run() -> None:
            try:
                action(error)
            except BaseException:
                self.logger.exception("agent %s: a follow-up failed", self.agent.name)
            finally:
                job.release()

        self._work.put(run)

    def _reply_failed(
        self, job: _Job, request: Request, message: Message, exc: BaseException, *, retry: bool
    ) -> None:
        """A reply could not be delivered: answer with an error, or count it."""
        topic = request.reply_to
        assert topic is not None
        cause = getattr(exc, "cause", None)
        if retry and cause == "too_large":
            # A small error reply still fits: the caller hears at once.
            self.logger.warning(
                "agent %s: the reply to %s is too large: %s",
                self.agent.name,
                request.correlation_id,
                _brief(exc),
            )
            self._send_error(job, request, exc)
            self._dead_letter(job, exc)
            return
        if retry and cause == "producer_reset":
            # Lost with another record's failure, not for its own: once more.
            self._send_reply(job, request, message, retry=False)
            return
        job.note("reply_failures")
        self._log_failing_topic(topic, exc)
        self._dead_letter(job, exc)

    def _log_failing_topic(self, topic: str, exc: BaseException) -> None:
        """Log a reply failure once per reply topic and kind of failure."""
        key = (topic, type(exc).__name__)
        if key in self._failing_topics:
            self.logger.debug("agent %s: reply to %s failed: %r", self.agent.name, topic, exc)
            return
        if len(self._failing_topics) >= _FAILING_TOPICS_MAX:
            self._failing_topics.clear()
        self._failing_topics.add(key)
        what = (
            "does not exist (any more)"
            if isinstance(exc, NoRespondersError)
            else f"cannot be sent to: {_brief(exc)}"
        )
        self.logger.warning(
            "agent %s: reply topic %s %s; dropping replies to it (logged once)",
            self.agent.name,
            topic,
            what,
        )

    def _dead_letter(self, job: _Job, error: BaseException) -> None:
        """Copy the job's record to the dead-letter topic, once, if one is set."""
        topic = self.agent.dead_letter_topic
        if topic is None or job.dead_lettered:
            return
        job.dead_lettered = True
        record = job.record
        headers = list(record.headers) + [
            (HEADER_DLT_ERROR, type(error).__name__.encode()),
            (HEADER_DLT_MESSAGE, _brief(error, 2000).encode("utf-8", "replace")),
            (HEADER_DLT_TOPIC, record.topic.encode()),
            (HEADER_DLT_PARTITION, str(record.partition).encode()),
            (HEADER_DLT_OFFSET, str(record.offset).encode()),
        ]

        def failed(exc: BaseException) -> None:
            self._log_failing_topic(topic, exc)

        self._send(
            job, topic, Message(record.key, record.value, headers), failed, counter="dead_lettered"
        )


class _Job:
    """One record being served: what happened, and the sends not settled.

    Threading model: made and held by a handler thread; each send adds a
    hold that its acknowledgement (on a transport thread) or its follow-up
    (on a handler thread) releases. The last release reports the record
    done to the poll thread. ``_lock`` guards ``_holds`` and ``_counts``.
    """

    __slots__ = ("record", "dead_lettered", "_generation", "_worker", "_lock", "_holds", "_counts")

    def __init__(self, worker: AgentWorker, record: Record, generation: int) -> None:
        self.record = record
        self._generation = generation
        #: Set by the first dead-lettering (handler and follow-up threads,
        #: one at a time: a follow-up starts after the handler sent).
        self.dead_lettered = False
        self._worker = worker
        self._lock = threading.Lock()
        self._holds = 1  # the handler's own, released when it is done
        self._counts: List[str] = []

    def hold(self) -> None:
        with self._lock:
            self._holds += 1

    def note(self, counter: str) -> None:
        """Count ``counter`` (one of :data:`COUNTERS`) once the record is done."""
        with self._lock:
            self._counts.append(counter)

    def release(self) -> None:
        with self._lock:
            self._holds -= 1
            last = self._holds == 0
            counts = tuple(self._counts)
        if last:
            record = self.record
            self._worker._done.put(
                ((record.topic, record.partition), record.offset, self._generation, counts)
            )


# The state of an offset in `_outstanding`, besides its size (>= 0) while
# it is pending: served (its sends settled), or dropped unserved on stop.
_SERVED = -1
_NOT_SERVED = -2
# The counters of a record dropped unserved.
_DROPPED: Tuple[str, ...] = ("dropped",)

#: A finished record: its partition, offset, generation and counters.
_Done = Tuple[TopicPartition, int, int, Tuple[str, ...]]
#: Work for a handler thread: a record and its partition's generation, or
#: a follow-up to run.
_Work = Union[Tuple[Record, int], Callable[[], None]]


def _brief(exc: BaseException, limit: int = 300) -> str:
    """``str(exc)`` cut to ``limit`` characters (or its type if empty)."""
    try:
        text = str(exc)
    except Exception:
        text = ""
    text = text or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(record: Record) -> str:
    return f"{record.topic}[{record.partition}]@{record.offset}"
