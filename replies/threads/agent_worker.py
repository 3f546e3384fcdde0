"""Serving one agent: a consumer-group member and a bounded pool of handlers.

Theory of operation
-------------------
The poll thread ``replies-agent-<name>-N`` owns the group reader. Records
it polls go to a backlog; it hands them to the handler pool only while
fewer than ``concurrency`` are in flight, and pauses the reader while the
backlog is not empty, so it keeps polling (and stays in the group) however
slow the handlers are, and memory stays bounded by one poll's records.

A handler thread decodes the request, runs the user's function, sends the
reply (or an error reply) and waits for the broker's acknowledgement; only
then does it report the record done. The poll thread commits, per
partition, the offset after the longest run of done records from the
start: at least once, a crash replays and never skips.

When partitions are revoked, the transport tells us on whatever thread it
rebalances on (kafka-python's IO thread, where blocking calls are
forbidden), so the callback only queues them. The poll thread then drops
their backlog and bookkeeping before it takes more records: the new owner
reads everything uncommitted from the committed offset. Records still in
flight are answered but not committed, so a rebalance can answer a request
twice; callers ignore the duplicate. We commit after every batch of
finished records to keep that window small. While a rebalance is under
way the poll thread only polls, with a long timeout: kafka-python completes
a group join inside ``poll()``, and can lose one whose last response
arrives between two polls; a rebalance that still has not finished after
``REBALANCE_STUCK`` seconds is abandoned by rejoining with a new consumer.
Stopping handles the backlog, waits for the records in flight, commits,
then leaves the group.
"""

from __future__ import annotations

import collections
from collections import OrderedDict
import inspect
import itertools
import logging
import queue
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Collection,
    Deque,
    Dict,
    Iterator,
    List,
    Optional,
    Tuple,
)

from replies.core.codec import Request
from replies.errors import DecodeError, RemoteError, TransportError
from replies.observe.serving import AgentObserver, reply_headers
from replies.transport.base import GroupReader, Record, TopicPartition

if TYPE_CHECKING:
    from replies.agent import Agent
    from replies.app import App

__all__ = ["AgentWorker"]

_worker_ids = itertools.count(1)

POLL_INTERVAL = 0.1
# How long a saturated worker's poll may block: short, to refill handlers
# quickly, but not zero, which would never let a group join progress.
SATURATED_POLL = 0.01
# Polls during a rebalance: long, so the join completes inside one.
REBALANCE_POLL = 1.0
# A rebalance unfinished after this long is taken as stuck: rejoin.
REBALANCE_STUCK = 15.0


class AgentWorker:
    """Consumes one agent's requests and replies to them.

    Threading model: :meth:`start` starts the poll thread, which alone uses
    the group reader and the per-partition bookkeeping; ``concurrency``
    handler threads (``replies-handler-<name>-N``) run the user's function
    and send replies through the App's thread-safe transport, then report
    back on the ``_done`` queue. :meth:`stop` may be called from any
    thread.

    Args:
        app: the App whose transport and codec to use.
        agent: the agent to serve.
    """

    def __init__(self, app: "App", agent: "Agent") -> None:
        self.app = app
        self.agent = agent
        self.logger = logging.getLogger(f"replies.agent.{agent.name}")
        self._observing = AgentObserver(app.observer, agent.name, self.logger)
        self._stopping = threading.Event()
        # (topic, partition, offset, ok) of each finished record.
        self._done: queue.Queue[Tuple[str, int, int, bool]] = queue.Queue()
        self._pool = ThreadPoolExecutor(
            max_workers=agent.concurrency,
            thread_name_prefix=f"replies-handler-{agent.name}",
        )
        # Poll-thread state: offsets in flight or in the backlog, per
        # partition, in order, with whether each is done.
        self._outstanding: Dict[TopicPartition, OrderedDict[int, bool]] = {}
        self._backlog: Deque[Record] = collections.deque()
        # Partitions lost in a rebalance, from the transport's thread.
        self._revoked: queue.Queue[List[TopicPartition]] = queue.Queue()
        self._in_flight = 0
        # Records handed to the pool and not yet acknowledged: handlers are
        # free while the broker acknowledges, so allow a few per thread.
        self._max_in_flight = 4 * agent.concurrency
        self._failed: Optional[str] = None
        # When the rebalance under way was first seen (poll thread only).
        self._rebalance_started: Optional[float] = None
        self._thread = threading.Thread(
            target=self._run_poller,
            name=f"replies-agent-{agent.name}-{next(_worker_ids)}",
            daemon=True,
        )
        self.error: Optional[BaseException] = None

    def start(self) -> None:
        """Join the consumer group and start polling. Does not block."""
        self._reader = self._open_reader()
        self._thread.start()

    def _open_reader(self) -> GroupReader:
        return self.app.transport.group_reader(
            self.agent.topic_name,
            self.agent.group_id,
            on_revoke=self._on_revoke,
            max_records=self._max_in_flight,
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

    # -- the poll thread --------------------------------------------------

    def _run_poller(self) -> None:
        try:
            while not self._stopping.is_set() and self._failed is None:
                if self._reader.rebalancing:
                    # Wait inside poll(), where kafka-python completes a
                    # group join: one whose last response arrives between
                    # two polls can be lost, leaving the member stuck.
                    records = self._reader.poll(REBALANCE_POLL)
                    self._forget_revoked()
                    self._take(records)
                    self._check_rebalance_progress()
                    continue
                self._rebalance_started = None
                self._collect_done()
                self._dispatch_backlog()
                if self._backlog:
                    # Saturated: keep polling (paused, so no records) to stay
                    # in the group, then wait for a handler to finish.
                    self._reader.pause()
                    records = self._reader.poll(SATURATED_POLL)
                    self._collect_done(block=POLL_INTERVAL)
                else:
                    self._reader.resume()
                    records = self._reader.poll(POLL_INTERVAL)
                # Revocations first: these records may come from the
                # positions a new assignment started at.
                self._forget_revoked()
                self._take(records)
            self._finish()
        except BaseException as exc:
            self.error = exc
            self.logger.exception("agent %s stopped by an error", self.agent.name)
        finally:
            try:
                self._reader.close()
            finally:
                self._pool.shutdown(wait=True)
        if self._failed is not None:
            self.logger.error("agent %s stopped: %s", self.agent.name, self._failed)

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
            self._revoked.put(list(self._outstanding))
            self._forget_revoked()
            self._reader.close()
            self._reader = self._open_reader()
            self._rebalance_started = None

    def _take(self, records: List[Record]) -> None:
        for record in records:
            marks = self._outstanding.setdefault((record.topic, record.partition), OrderedDict())
            marks[record.offset] = False
            self._backlog.append(record)

    def _dispatch_backlog(self) -> None:
        while self._backlog and self._in_flight < self._max_in_flight:
            record = self._backlog.popleft()
            self._in_flight += 1
            self._pool.submit(self._handle, record)

    def _collect_done(self, block: float = 0.0) -> None:
        """Take finished records off the done queue and commit progress."""
        try:
            item = self._done.get(timeout=block) if block else self._done.get_nowait()
        except queue.Empty:
            return
        progressed: Dict[TopicPartition, int] = {}
        while True:
            topic, partition, offset, ok = item
            self._in_flight -= 1
            if not ok:
                self._failed = f"the reply to {topic}[{partition}]@{offset} could not be sent"
            else:
                marks = self._outstanding.get((topic, partition))
                if marks is not None and offset in marks:
                    marks[offset] = True
                    while marks:
                        first = next(iter(marks))
                        if not marks[first]:
                            break
                        del marks[first]
                        progressed[(topic, partition)] = first + 1
            try:
                item = self._done.get_nowait()
            except queue.Empty:
                break
        if progressed:
            self._commit(progressed)

    def _commit(self, offsets: Dict[TopicPartition, int]) -> None:
        try:
            self._reader.commit(offsets)
        except TransportError as exc:
            # The partition moved to another member: it replays from the
            # last commit, and callers ignore duplicate replies.
            self.logger.warning("commit failed, records may be served again: %s", exc)

    def _finish(self) -> None:
        """Handle the backlog, wait for what is in flight, and commit."""
        deadline = time.monotonic() + self.app.shutdown_timeout
        while self._in_flight or (self._backlog and self._failed is None):
            if time.monotonic() > deadline:
                self.logger.warning(
                    "agent %s stopped with %d requests unfinished; they will be served again",
                    self.agent.name,
                    self._in_flight + len(self._backlog),
                )
                return
            if self._failed is None:
                self._dispatch_backlog()
            self._collect_done(block=POLL_INTERVAL)

    def _on_revoke(self, partitions: Collection[TopicPartition]) -> None:
        # Any thread: hand the news to the poll thread.
        self._revoked.put(list(partitions))

    def _forget_revoked(self) -> None:
        """Drop the backlog and bookkeeping of revoked partitions."""
        while True:
            try:
                revoked = set(self._revoked.get_nowait())
            except queue.Empty:
                return
            self.logger.debug("partitions revoked: %s", sorted(revoked))
            for tp in revoked:
                self._outstanding.pop(tp, None)
            self._backlog = collections.deque(
                r for r in self._backlog if (r.topic, r.partition) not in revoked
            )

    # -- handler threads ----------------------------------------------------

    def _handle(self, record: Record) -> None:
        def done(ok: bool) -> None:
            self._done.put((record.topic, record.partition, record.offset, ok))

        try:
            acks = self._serve(record)
        except BaseException:
            # A reply could not even be queued: never commit past it.
            self.logger.exception("cannot serve %s", _where(record))
            done(False)
            return
        _when_acked(acks, done)

    def _serve(self, record: Record) -> List[Future[None]]:
        """Run the handler for one record and send its replies.

        Returns:
            The broker acknowledgements of the replies sent.
        """
        app = self.app
        try:
            request = app.codec.decode_request(record.key, record.value, record.headers)
        except DecodeError as exc:
            partial: Optional[Request] = exc.request
            self.logger.warning("undecodable request at %s: %s", _where(record), exc)
            return [] if partial is None else self._reply(partial, None, error=exc)
        if request.deadline is not None and time.time() > request.deadline:
            self.logger.debug(
                "skipping request %s at %s: its caller stopped waiting %.3f s ago",
                request.correlation_id,
                _where(record),
                time.time() - request.deadline,
            )
            return []
        acks: List[Future[None]] = []
        handling = self._observing.start(record, request)
        try:
            result = self.agent.invoke(request.value, request.key)
            if not inspect.isgenerator(result):
                acks += self._reply(request, result)
            elif request.stream:
                for value in result:  # each yielded value is sent at once
                    acks += self._reply(request, value, more=True)
                acks += self._reply(request, None, end=True)
            else:
                # One reply per request, as Faust callers require (a second
                # one with the same correlation id breaks their consumer).
                try:
                    acks += self._reply(request, next(result, None))
                finally:
                    result.close()
        except Exception as exc:
            handling.error = exc
            self.logger.exception(
                "agent %s raised on request %s", self.agent.name, request.correlation_id
            )
            acks += self._reply(request, None, error=exc)
        finally:
            handling.close()
        return acks

    def _reply(
        self,
        request: Request,
        value: Any,
        *,
        more: bool = False,
        end: bool = False,
        error: Optional[BaseException] = None,
    ) -> List[Future[None]]:
        """Send one reply, unless the request is a cast."""
        if not request.reply_to or not request.correlation_id:
            return []
        remote = None
        if error is not None:
            trace = None
            if self.app.reply_tracebacks:
                trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            remote = RemoteError(type(error).__name__, str(error), remote_traceback=trace)
        message = self.app.codec.encode_reply(
            request.correlation_id, value, key=request.key, more=more, end=end, error=remote
        )
        reply_headers(message.headers)
        ack = self.app.transport.produce(request.reply_to, message)
        ack.add_done_callback(self._on_reply_acked)
        return [ack]

    def _on_reply_acked(self, ack: Future[None]) -> None:
        error = ack.exception()
        if error is not None:
            self.logger.error("a reply could not be sent: %s", error)


def _where(record: Record) -> str:
    return f"{record.topic}[{record.partition}]@{record.offset}"



def _when_acked(acks: List[Future[None]], then: Callable[[bool], None]) -> None:
    """Call ``then(ok)`` once every ack is done; ok if none failed.

    Runs ``then`` on the thread that completes the last ack (a transport
    thread), or at once if there is nothing to wait for.
    """
    if not acks:
        then(True)
        return
    # Guards the countdown, which the transport's threads decrement.
    lock = threading.Lock()
    state = {"left": len(acks), "ok": True}

    def on_ack(ack: Future[None]) -> None:
        with lock:
            state["left"] -= 1
            state["ok"] = state["ok"] and ack.exception() is None
            last, ok = state["left"] == 0, bool(state["ok"])
        if last:
            then(ok)

    for ack in acks:
        ack.add_done_callback(on_ack)
