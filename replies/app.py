"""The App: settings, lifecycle, and the registry of agents."""

from __future__ import annotations

import atexit
import contextlib
import datetime
import inspect
import logging
import os
import signal
import sys
import threading
import time
import uuid
import warnings
import weakref
from concurrent.futures import Future
from types import FrameType, TracebackType
from typing import (
    Any,
    Callable,
    Collection,
    Dict,
    FrozenSet,
    Iterator,
    List,
    Optional,
    Type,
    TypeVar,
    Union,
)

from replies.agent import Agent
from replies.core.codec import Codec, Message
from replies.errors import ClosedError, ReplyTimeoutError, TransportError
from replies.observe.observer import Observer
from replies.threads.agent_worker import AgentWorker
from replies.threads.reply_consumer import ReplyConsumer
from replies.topic import DEFAULT, Topic
from replies.transport import Transport, check_broker, open_transport

__all__ = ["App"]

logger = logging.getLogger("replies")

_F = TypeVar("_F", bound=Callable[..., Any])


class App:
    """A client and server of request/reply over Kafka (or in memory).

    Args:
        id: the application id; agents' topics are ``f"{id}-{name}"``.
        broker: ``"kafka://host:port[,host:port]"``, or ``"memory://"`` (the
            default: an in-process broker shared by the process's Apps).
        reply_to: the reply topic. By default each process makes its own
            when it starts the App, ``f"{reply_to_prefix}{uuid4()}"``, and
            deletes it on close (a forked child gets a new one). Name one to
            share a reply topic among processes: each reads it from the end
            and drops replies it did not ask for, and none deletes it.
        reply_to_prefix: prefix of generated reply topics (``"f-reply-"``).
        reply_partition: read only this partition of ``reply_to`` and ask
            agents to reply there: many processes share one reply topic of
            N partitions, each with a partition of its own (e.g. its pod
            ordinal), and none creates or deletes a topic. Needs ``reply_to``.
        wire: whose request headers this App writes when it asks:
            ``"faust"`` (the default) or ``"spring"`` (Spring for Apache
            Kafka's ``kafka_replyTopic``/``kafka_correlationId``/
            ``kafka_replyPartition``, for ``@KafkaListener`` + ``@SendTo``
            services). Agents answer both kinds of caller whatever it says.
        spring_correlation: ``"binary"`` (a UUID's 16 bytes, Spring's
            default) or ``"string"`` (its text) for ``wire="spring"``.
        reply_create_topic: create a named ``reply_to`` topic if missing
            (generated ones are always created).
        reply_expires: the reply topic's ``retention.ms``, in seconds or a
            ``timedelta`` (one day): the backstop if a process dies before
            deleting its topic.
        reply_delete_topic: delete the reply topic on close; by default only
            a generated one (a named one is shared: no user deletes it).
        replace_serving: when this App serves, another App of this process
            with the same id and broker that serves the same agents (a
            notebook cell run again) stops serving them, with a warning, so
            no stale handler answers. ``False`` lets both serve (two members
            of the group in one process).
        request_timeout: default seconds to wait for a reply (30); ``None``
            waits forever.
        request_mode: ``"headers"`` (Faust >= 1.10) or ``"envelope"``.
        value_serializer: ``"json"`` or ``"raw"`` (bytes values).
        json_object_hook: turns each decoded JSON object of a value into
            something else, e.g. Faust ``Record`` dicts into your classes.
        json_default: encodes objects :mod:`json` cannot.
        topic_partitions: partitions of agent topics this App creates (8).
        replication_factor: of topics this App creates (-1: broker default).
        reply_tracebacks: agents include the traceback in error replies.
        shutdown_timeout: seconds close() waits for handlers to finish (30).
        connect_timeout: seconds :meth:`start` and :meth:`serve` wait to
            reach a Kafka broker and log in (10); then they fail with a
            :class:`~replies.TransportError` whose ``cause`` names why
            (``"connection_refused"``, ``"name_not_resolved"``,
            ``"tls_failed"``, ``"authentication_failed"`` ...).
        auto_create_topics: let a request to a topic that does not exist
            create it (the broker's ``auto.create.topics.enable`` decides on
            Kafka), as before 0.2. Off by default: such a request fails at
            once with :class:`~replies.NoRespondersError`, and a reply never
            re-creates a deleted reply topic.
        metrics: count requests for :meth:`stats` and tell listeners
            (:meth:`add_listener`); on by default, a few microseconds per
            request. ``False`` turns both off.
        **kafka_settings: passed to kafka-python's clients (``client_id``,
            ``security_protocol``, ``sasl_*``, ``ssl_*``, ``acks`` ...).

    Raises:
        ValueError: a bad id, URL or setting value.
        TypeError: an unknown setting.

    Lifecycle: an App may be made at import time. Asking one that was
    never started starts it (once, whichever thread asks first), so a web
    application needs nothing but the module-level ``App(...)``;
    :meth:`start` and ``with app:`` still work, and :meth:`close` is final
    until the next :meth:`start` (asking a closed App raises
    :class:`ClosedError`). Open Apps are closed at interpreter exit.

    Resources belong to one process: in a child made by ``fork`` (a
    pre-fork web server, ``multiprocessing``), an App made or started in
    the parent forgets the parent's connections, threads and generated
    reply topic, and starts afresh on first use; the parent is unaffected
    and the child never deletes the parent's topic.

    Threading model: one App is meant to be shared by all threads of a
    process. It owns one producer (shared by callers), one reply consumer
    thread (started by :meth:`start` or the first ask) and, when serving,
    one poll thread and a handler pool per agent. :meth:`start`,
    :meth:`serve` and :meth:`close` are idempotent and serialised by
    ``_lock``; asking takes it only while the App is not started.
    """

    def __init__(
        self,
        id: str,
        *,
        broker: str = "memory://",
        reply_to: Optional[str] = None,
        reply_partition: Optional[int] = None,
        wire: str = "faust",
        spring_correlation: str = "binary",
        reply_to_prefix: str = "f-reply-",
        reply_create_topic: bool = False,
        reply_expires: Union[float, datetime.timedelta] = datetime.timedelta(days=1),
        reply_delete_topic: Optional[bool] = None,
        replace_serving: bool = True,
        request_timeout: Optional[float] = 30.0,
        request_mode: str = "headers",
        value_serializer: str = "json",
        json_object_hook: Optional[Callable[[Dict[str, Any]], Any]] = None,
        json_default: Optional[Callable[[Any], Any]] = None,
        topic_partitions: int = 8,
        replication_factor: int = -1,
        reply_tracebacks: bool = False,
        shutdown_timeout: float = 30.0,
        auto_create_topics: bool = False,
        connect_timeout: float = 10.0,
        metrics: bool = True,
        **kafka_settings: Any,
    ) -> None:
        if not id:
            raise ValueError("an App needs an id")
        if request_timeout is not None and request_timeout <= 0:
            raise ValueError(f"request_timeout must be > 0 or None, not {request_timeout!r}")
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be > 0, not {connect_timeout!r}")
        if topic_partitions < 1:
            raise ValueError(f"topic_partitions must be >= 1, not {topic_partitions}")
        if reply_partition is not None and reply_to is None:
            raise ValueError("reply_partition needs reply_to: the shared reply topic to read")
        if reply_partition is not None and (reply_create_topic or reply_delete_topic):
            raise ValueError(
                "a client reading one partition of a shared reply topic neither creates nor deletes it"
            )
        if isinstance(reply_expires, datetime.timedelta):
            reply_expires = reply_expires.total_seconds()
        if reply_expires <= 0:
            raise ValueError(f"reply_expires must be > 0, not {reply_expires!r}")
        # Checked now, not at start(), so a typo fails where it is made.
        check_broker(broker, kafka_settings, also_known=_app_settings())
        self.id = id
        self.broker = broker
        # A named reply topic, or None: each process generates its own.
        self._named_reply_to = reply_to or None
        self.reply_to_prefix = reply_to_prefix
        self.reply_partition = reply_partition
        self.reply_create_topic = reply_create_topic or reply_to is None
        self.reply_expires = float(reply_expires)
        self.reply_delete_topic = reply_to is None if reply_delete_topic is None else reply_delete_topic
        self.replace_serving = replace_serving
        self.request_timeout = request_timeout
        self.topic_partitions = topic_partitions
        self.replication_factor = replication_factor
        self.reply_tracebacks = reply_tracebacks
        self.shutdown_timeout = shutdown_timeout
        self.auto_create_topics = auto_create_topics
        self.connect_timeout = float(connect_timeout)
        self.kafka_settings = kafka_settings
        self.codec = Codec(
            value_serializer=value_serializer,
            json_object_hook=json_object_hook,
            json_default=json_default,
            request_mode=request_mode,
            wire=wire,
            spring_correlation=spring_correlation,
            reply_partition=reply_partition,
        )
        self.agents: Dict[str, Agent] = {}
        #: Counts requests and tells listeners; None with ``metrics=False``.
        self.observer: Optional[Observer] = Observer() if metrics else None
        # Serialises start/serve/close; the fields below change only under it.
        self._lock = threading.Lock()
        self._transport: Optional[Transport] = None
        self._consumer: Optional[ReplyConsumer] = None
        self._workers: List[AgentWorker] = []
        self._pid = os.getpid()
        # Set by close(), cleared by start()/serve(): asking does not reopen.
        self._closed = False
        # Guards `_reply_to`, this process's reply topic (None: not named
        # yet); never held with `_lock` taken after it.
        self._name_lock = threading.Lock()
        self._reply_to: Optional[str] = self._named_reply_to
        # Whether `_reply_to` was used by a start, so a restart names anew.
        self._reply_to_used = False
        with _live_lock:
            _live_apps.add(self)

    def __repr__(self) -> str:
        reply_to = self._reply_to or "<named at start>"
        return f"<App {self.id} {self.broker} reply_to={reply_to}>"

    @property
    def reply_to(self) -> str:
        """This process's reply topic.

        The named ``reply_to``; or one generated for this process, named
        when it starts the App (reading it earlier names it).
        """
        with self._name_lock:
            if self._reply_to is None:
                self._reply_to = f"{self.reply_to_prefix}{uuid.uuid4()}"
            return self._reply_to

    # -- declaring ----------------------------------------------------------

    def agent(
        self,
        name: Optional[str] = None,
        *,
        topic: Optional[str] = None,
        concurrency: int = 1,
        partitions: Optional[int] = None,
        dead_letter_topic: Optional[str] = None,
        max_in_flight: Optional[int] = None,
        max_in_flight_bytes: Optional[int] = None,
    ) -> Callable[[Callable[..., Any]], Agent]:
        """Register a function as an agent (a decorator).

        Args:
            name: the agent's name (default: the function's name).
            topic: its request topic (default ``f"{app.id}-{name}"``).
            concurrency: requests handled at once by this process.
            partitions: partitions of its topic if this App creates it.
            dead_letter_topic: copy each record the agent could not serve
                normally (undecodable, the handler raised, the reply could
                not be encoded or delivered) to this topic, with headers
                naming the failure and the record's origin
                (``Replies-Dead-Letter-Error``, ``-Message``, ``-Topic``,
                ``-Partition``, ``-Offset``). Created by :meth:`serve` if
                missing. Off by default.
            max_in_flight: requests one process holds at most (queued,
                being handled, or waiting for the reply's acknowledgement)
                before it stops fetching more (default 1000).
            max_in_flight_bytes: the same bound in bytes of request keys
                and values (default 16 MiB).

        Raises:
            ValueError: the name is taken, or a bad number.
        """

        def register(function: Callable[..., Any]) -> Agent:
            agent = Agent(
                self,
                function,
                name=name,
                topic=topic,
                concurrency=concurrency,
                partitions=partitions,
                dead_letter_topic=dead_letter_topic,
                max_in_flight=max_in_flight,
                max_in_flight_bytes=max_in_flight_bytes,
            )
            if agent.name in self.agents:
                raise ValueError(f"agent {agent.name!r} is already registered")
            self.agents[agent.name] = agent
            return agent

        return register

    def topic(self, name: str) -> Topic:
        """A handle to ask the agent (of any app, Faust's too) serving ``name``."""
        return Topic(self, name)

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> "App":
        """Connect and start the reply consumer, so the App can ask.

        Blocks until the reply topic exists and the reply consumer is
        positioned at its end (a few admin round trips on Kafka).
        Idempotent.

        Asking starts an App that was never started, so calling this is
        optional; after :meth:`close` it opens the App again.

        Returns:
            The App itself.

        Raises:
            TransportError: the broker could not be reached.
        """
        self._check_process()
        with self._lock:
            self._closed = False
            self._start_locked()
        return self

    def _start_locked(self) -> ReplyConsumer:
        if self._consumer is not None:
            return self._consumer
        if self._named_reply_to is None and self._reply_to_used:
            with self._name_lock:  # a generated topic deleted by close()
                self._reply_to = None
        fresh = self._transport is None
        transport = self._transport_locked()
        consumer = ReplyConsumer(self)
        try:
            self._reply_to_used = True
            consumer.on_start()
        except BaseException:
            if fresh:  # leave nothing running behind a failed start
                self._transport = None
                transport.close(0)
            raise
        self._consumer = consumer
        return consumer

    def serve(self) -> "App":
        """Start serving this App's agents in background threads.

        Does not block beyond joining the consumer groups (each agent's
        topic is created first if missing). Idempotent.

        Another App of this process with the same id and broker that
        serves the same agents stops serving them first, with a warning
        (unless either App has ``replace_serving=False``).

        Raises:
            ValueError: no agent is registered.
            TransportError: the broker could not be reached.
        """
        self._check_process()
        if not self.agents:
            raise ValueError(f"App {self.id!r} has no agents to serve")
        if self.replace_serving:
            self._replace_older_servers()
        with self._lock:
            self._closed = False
            if self._workers:
                return self
            transport = self._transport_locked()
            for agent in self.agents.values():
                transport.create_topic(
                    agent.topic_name, partitions=agent.partitions or self.topic_partitions
                )
                worker = AgentWorker(self, agent)
                worker.start()
                self._workers.append(worker)
                logger.info("serving agent %s on topic %s", agent.name, agent.topic_name)
        return self

    def run_worker(self) -> None:
        """Serve the agents until SIGINT or SIGTERM, then close gracefully.

        Blocks. On the signal, handlers finish the requests already
        consumed, replies are sent, offsets committed and the group left.
        Must run on the main thread (signal handlers live there).

        Raises:
            ReplyError: an agent's poll thread died (after closing).
        """
        stop = threading.Event()

        def on_signal(signum: int, _: Optional[FrameType]) -> None:
            logger.info("received %s: stopping", signal.Signals(signum).name)
            stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.serve()
            while not stop.wait(0.5):
                dead = [w for w in self._workers if not w.alive]
                if dead:
                    raise TransportError(
                        f"agent {dead[0].agent.name} stopped: {dead[0].error!r}"
                    ) from dead[0].error
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.close()

    def _replace_older_servers(self) -> None:
        """Stop other Apps of this process serving this App's agents.

        Each App's lock is taken alone (never two at once).
        """
        groups = {agent.group_id for agent in self.agents.values()}
        with _live_lock:
            others = [
                app
                for app in _live_apps
                if app is not self
                and app.id == self.id
                and app.broker == self.broker
                and app.replace_serving
            ]
        for other in others:
            stopped = other._stop_serving(groups)
            if stopped:
                message = (
                    f"App {self.id!r}: another App of this process was serving "
                    f"{', '.join(sorted(stopped))}; it stopped serving them for this "
                    "one (a notebook cell run again?). Pass replace_serving=False "
                    "to let both serve."
                )
                logger.warning("%s", message)
                warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _stop_serving(self, groups: Collection[str]) -> List[str]:
        """Stop this App's workers of the given consumer groups; their names."""
        with self._lock:
            if os.getpid() != self._pid:
                return []
            stopping = [w for w in self._workers if w.agent.group_id in groups]
            self._workers = [w for w in self._workers if w not in stopping]
            for worker in stopping:
                worker.stop(self.shutdown_timeout)
        return [worker.agent.name for worker in stopping]

    def close(self, timeout: Optional[float] = None) -> None:
        """Stop serving and asking, and disconnect. Idempotent.

        Agents finish what they consumed (up to ``shutdown_timeout``);
        every pending promise fails with :class:`ClosedError`; a reply topic
        this process generated is deleted (a named one is left alone).
        Asking the App afterwards raises :class:`ClosedError` until it is
        started again. Blocks until done, at most about
        ``shutdown_timeout`` plus ``timeout`` seconds.
        """
        self._check_process()
        with self._lock:
            self._closed = True
            transport = self._transport
            if transport is None:
                self._consumer = None
                self._workers = []
                return
            # Agents first: they still reply through the transport.
            for worker in self._workers:
                worker.stop(self.shutdown_timeout)
            self._workers = []
            # `timeout` bounds the rest: stopping, deleting and disconnecting.
            deadline = None if timeout is None else time.monotonic() + timeout

            def left() -> Optional[float]:
                return None if deadline is None else max(0.0, deadline - time.monotonic())

            consumer, self._consumer = self._consumer, None
            if consumer is not None:
                consumer.stop(timeout)
                if self.reply_delete_topic:
                    try:
                        transport.delete_topic(self.reply_to, timeout=left())
                    except TransportError as exc:
                        logger.warning("could not delete reply topic %s: %s", self.reply_to, exc)
            self._transport = None
            transport.close(left())

    def __enter__(self) -> "App":
        return self.start()

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    # -- observing ----------------------------------------------------------

    def stats(self, *, lag: bool = False) -> Dict[str, Any]:
        """A snapshot of this App's figures, as plain data.

        Safe to call from any thread at any time; does not block (unless
        ``lag``). Each count is exact; the snapshot is not atomic across
        counts. Durations are in seconds, over the most recent 1024 events.

        Args:
            lag: also ask the broker for each served agent's consumer-group
                lag (a few admin round trips); otherwise ``lag`` is None.

        Returns:
            ``{"app": id, "asking": {"total": {...}, "topics": {topic:
            {...}}}, "serving": {agent: {...}}}``. Asking, per topic and in
            total: ``sent``; how they settled: ``replies`` (including
            ``error_replies``), ``timeouts``, ``cancelled``, ``closed`` (the
            App closed, or its reply consumer could not read),
            ``send_errors``, ``undecodable``; ``pending`` (not settled
            yet); ``ask_seconds`` (``count``, ``p50``, ``p99``, ``max`` of
            single requests' round trips). In total only, since the App
            last started: ``dropped_replies`` (late, duplicate or another
            client's), ``undecodable_replies`` (reply records that could
            not be read) and ``reply_poll_errors`` (failed polls of the
            reply topic, retried). Serving, per agent of this process,
            counted once a request is completely served (its replies
            acknowledged): ``topic``, ``handled``, ``error_replies``,
            ``skipped_expired``, ``skipped_undecodable``, ``casts``,
            ``reply_failures``, ``dead_lettered``, ``in_flight``,
            ``handler_seconds`` (as ``ask_seconds``), ``lag``.

        Raises:
            ValueError: the App was made with ``metrics=False``.
        """
        if self.observer is None:
            raise ValueError(f"App {self.id!r} was made with metrics=False: it counts nothing")
        return self.observer.stats(self, lag=lag)

    def add_listener(self, listener: object) -> None:
        """Call ``listener``'s methods on request events.

        See :class:`replies.Listener` for the methods (all optional), the
        threads they run on, and what happens when one raises (it is
        logged, never propagated). Idempotent.

        Raises:
            ValueError: the App was made with ``metrics=False``.
        """
        if self.observer is None:
            raise ValueError(f"App {self.id!r} was made with metrics=False: no events")
        self.observer.add_listener(listener)

    def remove_listener(self, listener: object) -> None:
        """Stop calling a listener added with :meth:`add_listener`."""
        if self.observer is not None:
            self.observer.remove_listener(listener)

    # -- for the handles ----------------------------------------------------

    @property
    def transport(self) -> Transport:
        """The open transport.

        Raises:
            ClosedError: the App is not started.
        """
        transport = self._transport
        if transport is None:
            raise self._closed_error()
        return transport

    @property
    def reply_consumer(self) -> Optional[ReplyConsumer]:
        """The running reply consumer, or None before start / after close."""
        return self._consumer

    def _closed_error(self) -> ClosedError:
        if self._closed:
            return ClosedError(
                f"App {self.id!r} was closed: start it again (app.start() or "
                "`with app:`) to ask"
            )
        return ClosedError(f"App {self.id!r} is not started: use `with app:` or app.start()")

    def _reply_topic(self, timeout: Optional[float] = None) -> str:
        """This process's reply topic, starting the App if it never was.

        Blocks while another thread starts the App (at most ``timeout``
        for the lock), or while this one starts it.

        Raises:
            ClosedError: the App was closed.
            ReplyTimeoutError: another thread's start took ``timeout``.
            TransportError: the broker could not be reached.
        """
        self._reply_consumer(timeout)
        return self.reply_to

    def _reply_consumer(self, timeout: Optional[float] = None) -> ReplyConsumer:
        # No _check_process() on the paths of every request (it costs a
        # system call): in a child, the at-fork hook has reset the App.
        consumer = self._consumer
        if consumer is not None:
            return consumer
        with self._locked_for_lazy_start(timeout):
            return self._start_locked()

    def _produce(
        self, topic: str, message: Message, timeout: Optional[float] = None
    ) -> Future[None]:
        return self._sending_transport(timeout).produce(topic, message, timeout=timeout)

    def _sending_transport(self, timeout: Optional[float] = None) -> Transport:
        """The transport to produce with, starting the App on first use."""
        transport = self._transport  # see _reply_consumer: no _check_process()
        if transport is None:
            with self._locked_for_lazy_start(timeout):
                transport = self._transport_locked()
        return transport

    @contextlib.contextmanager
    def _locked_for_lazy_start(self, timeout: Optional[float]) -> Iterator[None]:
        """Hold ``_lock`` to start the App on first use, unless it was closed."""
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            raise ReplyTimeoutError(
                f"App {self.id!r} was still being started by another thread after "
                f"{timeout} s",
                timeout=timeout,
            )
        try:
            if self._closed:
                raise self._closed_error()
            yield
        finally:
            self._lock.release()

    def _timeout(self, timeout: Any) -> Optional[float]:
        if timeout is DEFAULT:
            return self.request_timeout
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 or None, not {timeout!r}")
        return None if timeout is None else float(timeout)

    def _transport_locked(self) -> Transport:
        if self._transport is None:
            self._transport = open_transport(
                self.broker,
                self.kafka_settings,
                replication_factor=self.replication_factor,
                auto_create_topics=self.auto_create_topics,
                connect_timeout=self.connect_timeout,
            )
            _close_at_exit()
        return self._transport

    def _check_process(self) -> None:
        """Forget a parent's resources if ``fork`` ran without its hooks.

        Called where an App starts, serves and closes, not per request: a
        fork through ``os.fork`` (and multiprocessing) runs the hook that
        resets every App in the child.
        """
        if os.getpid() != self._pid:
            self._reset_in_child()

    def _reset_in_child(self) -> None:
        """Drop what belongs to the parent process (in a forked child).

        The parent's threads do not exist here and its sockets are shared
        with it, so nothing is closed (that could disturb the parent): the
        objects are dropped, and the App starts afresh on first use, with a
        reply topic of its own if the parent's was generated. A lock held
        by a parent thread at the fork would never be released: made anew.
        """
        self._lock = threading.Lock()
        self._name_lock = threading.Lock()
        if self._transport is not None:
            self._transport.abandon()
        self._transport = None
        self._consumer = None
        self._workers = []
        self._pid = os.getpid()
        if self._named_reply_to is None:
            self._reply_to = None
            self._reply_to_used = False


#: Every App of this process not yet garbage collected, for the fork and
#: exit hooks and for replacing a stale server; guarded by `_live_lock`.
_live_apps: "weakref.WeakSet[App]" = weakref.WeakSet()
_live_lock = threading.Lock()

#: How long closing at interpreter exit may take per App, beyond handlers.
EXIT_CLOSE_TIMEOUT = 5.0


def _reset_apps_in_child() -> None:
    """``os.register_at_fork`` hook: runs in the child, before any thread."""
    global _live_lock
    _live_lock = threading.Lock()  # may have been held by a parent thread
    for app in list(_live_apps):
        app._reset_in_child()


def _open_apps() -> List[App]:
    with _live_lock:
        return [
            app for app in _live_apps if app._transport is not None and app._pid == os.getpid()
        ]


def _stop_serving_at_exit() -> None:
    """Stop this process's agents as the interpreter begins to exit.

    Runs among threading's exit hooks: after the main thread ended, before
    ``concurrent.futures`` shuts down thread pools (registered earlier, so
    run later), while agents' handler pools still take work; they finish
    what they consumed, and their replies reach this process's own asks.
    """
    for app in _open_apps():
        try:
            app._stop_serving({agent.group_id for agent in app.agents.values()})
        except Exception:  # exiting anyway: say so, go on with the others
            logger.exception("stopping App %r's agents at exit failed", app.id)


def _close_open_apps() -> None:
    """Close this process's open Apps as it ends, deleting their reply topics.

    Runs from ``atexit``: after the threads that were still asking ended.
    """
    _stop_serving_at_exit()
    for app in _open_apps():
        try:
            app.close(EXIT_CLOSE_TIMEOUT)
        except Exception:
            logger.exception("closing App %r at exit failed", app.id)


def _close_at_exit() -> None:
    """Have :func:`_close_open_apps` run when this process ends.

    Called each time an App connects, after kafka-python's clients
    registered their own ``atexit`` hooks: registered again, ours runs
    before theirs (last in, first out), while the clients still work. A
    ``multiprocessing`` child ends with ``os._exit()``, which runs no
    ``atexit`` hooks, only multiprocessing's finalizers: register there too
    (once per process; each process starts with an empty registry).
    """
    global _finalizer_pid
    atexit.unregister(_close_open_apps)
    atexit.register(_close_open_apps)
    process = sys.modules.get("multiprocessing.process")
    if process is None or process.parent_process() is None or _finalizer_pid == os.getpid():
        return
    _finalizer_pid = os.getpid()
    from multiprocessing import util

    util.Finalize(None, _close_open_apps, exitpriority=100)


#: The process that registered a multiprocessing finalizer, if any.
_finalizer_pid: Optional[int] = None

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_apps_in_child)

_register_threading_exit = getattr(threading, "_register_atexit", None)
if _register_threading_exit is not None:
    _register_threading_exit(_stop_serving_at_exit)


def _app_settings() -> FrozenSet[str]:
    """The App's own keyword settings, offered when a setting is misspelt."""
    return frozenset(inspect.signature(App.__init__).parameters) - {"self", "id", "kafka_settings"}
