"""The App: settings, lifecycle, and the registry of agents."""

from __future__ import annotations

import datetime
import inspect
import logging
import os
import signal
import threading
import time
import uuid
from concurrent.futures import Future
from types import FrameType, TracebackType
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Type, TypeVar, Union

from replies.agent import Agent
from replies.core.codec import Codec, Message
from replies.errors import ClosedError, ForkedError, TransportError
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
        reply_to: the reply topic. By default each App makes its own,
            ``f"{reply_to_prefix}{uuid4()}"``, and deletes it on close. Name
            one to share a reply topic among processes: each reads it from
            the end and drops replies it did not ask for.
        reply_to_prefix: prefix of generated reply topics (``"f-reply-"``).
        reply_create_topic: create a named ``reply_to`` topic if missing
            (generated ones are always created).
        reply_expires: the reply topic's ``retention.ms``, in seconds or a
            ``timedelta`` (one day): the backstop if a process dies before
            deleting its topic.
        reply_delete_topic: delete the reply topic on close; by default only
            a generated one.
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

    Threading model: one App is meant to be shared by all threads of a
    process. It owns one producer (shared by callers), one reply consumer
    thread (started by :meth:`start`) and, when serving, one poll thread and
    a handler pool per agent. :meth:`start`, :meth:`serve` and :meth:`close`
    are idempotent and serialised by ``_lock``; asking never takes it.
    """

    def __init__(
        self,
        id: str,
        *,
        broker: str = "memory://",
        reply_to: Optional[str] = None,
        reply_to_prefix: str = "f-reply-",
        reply_create_topic: bool = False,
        reply_expires: Union[float, datetime.timedelta] = datetime.timedelta(days=1),
        reply_delete_topic: Optional[bool] = None,
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
        metrics: bool = True,
        **kafka_settings: Any,
    ) -> None:
        if not id:
            raise ValueError("an App needs an id")
        if request_timeout is not None and request_timeout <= 0:
            raise ValueError(f"request_timeout must be > 0 or None, not {request_timeout!r}")
        if topic_partitions < 1:
            raise ValueError(f"topic_partitions must be >= 1, not {topic_partitions}")
        if isinstance(reply_expires, datetime.timedelta):
            reply_expires = reply_expires.total_seconds()
        if reply_expires <= 0:
            raise ValueError(f"reply_expires must be > 0, not {reply_expires!r}")
        # Checked now, not at start(), so a typo fails where it is made.
        check_broker(broker, kafka_settings, also_known=_app_settings())
        self.id = id
        self.broker = broker
        self.reply_to = reply_to or f"{reply_to_prefix}{uuid.uuid4()}"
        self.reply_create_topic = reply_create_topic or reply_to is None
        self.reply_expires = float(reply_expires)
        self.reply_delete_topic = reply_to is None if reply_delete_topic is None else reply_delete_topic
        self.request_timeout = request_timeout
        self.topic_partitions = topic_partitions
        self.replication_factor = replication_factor
        self.reply_tracebacks = reply_tracebacks
        self.shutdown_timeout = shutdown_timeout
        self.auto_create_topics = auto_create_topics
        self.kafka_settings = kafka_settings
        self.codec = Codec(
            value_serializer=value_serializer,
            json_object_hook=json_object_hook,
            json_default=json_default,
            request_mode=request_mode,
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

    def __repr__(self) -> str:
        return f"<App {self.id} {self.broker} reply_to={self.reply_to}>"

    # -- declaring ----------------------------------------------------------

    def agent(
        self,
        name: Optional[str] = None,
        *,
        topic: Optional[str] = None,
        concurrency: int = 1,
        partitions: Optional[int] = None,
    ) -> Callable[[Callable[..., Any]], Agent]:
        """Register a function as an agent (a decorator).

        Args:
            name: the agent's name (default: the function's name).
            topic: its request topic (default ``f"{app.id}-{name}"``).
            concurrency: requests handled at once by this process.
            partitions: partitions of its topic if this App creates it.

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

        Returns:
            The App itself.

        Raises:
            TransportError: the broker could not be reached.
            ForkedError: started in a parent process before a fork.
        """
        with self._lock:
            self._check_process()
            if self._consumer is None:
                fresh = self._transport is None
                transport = self._transport_locked()
                consumer = ReplyConsumer(self)
                try:
                    consumer.on_start()
                except BaseException:
                    if fresh:  # leave nothing running behind a failed start
                        self._transport = None
                        transport.close(0)
                    raise
                self._consumer = consumer
        return self

    def serve(self) -> "App":
        """Start serving this App's agents in background threads.

        Does not block beyond joining the consumer groups (each agent's
        topic is created first if missing). Idempotent.

        Raises:
            ValueError: no agent is registered.
            TransportError: the broker could not be reached.
        """
        with self._lock:
            self._check_process()
            if not self.agents:
                raise ValueError(f"App {self.id!r} has no agents to serve")
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

    def close(self, timeout: Optional[float] = None) -> None:
        """Stop serving and asking, and disconnect. Idempotent.

        Agents finish what they consumed (up to ``shutdown_timeout``);
        every pending promise fails with :class:`ClosedError`; a reply topic
        of this App's own is deleted. Blocks until done, at most about
        ``shutdown_timeout`` plus ``timeout`` seconds.
        """
        with self._lock:
            transport = self._transport
            if transport is None or os.getpid() != self._pid:
                self._transport = self._consumer = None
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
            raise ClosedError(f"App {self.id!r} is not started: use `with app:` or app.start()")
        return transport

    @property
    def reply_consumer(self) -> Optional[ReplyConsumer]:
        """The running reply consumer, or None before start / after close."""
        return self._consumer

    def _reply_consumer(self) -> ReplyConsumer:
        self._check_process()
        consumer = self._consumer
        if consumer is None:
            raise ClosedError(
                f"App {self.id!r} is not started for asking: use `with app:` or app.start()"
            )
        return consumer

    def _produce(
        self, topic: str, message: Message, timeout: Optional[float] = None
    ) -> Future[None]:
        self._check_process()
        return self.transport.produce(topic, message, timeout=timeout)

    def _timeout(self, timeout: Any) -> Optional[float]:
        if timeout is DEFAULT:
            return self.request_timeout
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 or None, not {timeout!r}")
        return None if timeout is None else float(timeout)

    def _transport_locked(self) -> Transport:
        if self._transport is None:
            self._pid = os.getpid()
            self._transport = open_transport(
                self.broker,
                self.kafka_settings,
                replication_factor=self.replication_factor,
                auto_create_topics=self.auto_create_topics,
            )
        return self._transport

    def _check_process(self) -> None:
        if os.getpid() != self._pid and self._transport is not None:
            raise ForkedError(
                f"App {self.id!r} was started in process {self._pid} and used in "
                f"forked process {os.getpid()}: its threads and connections do not "
                "exist here. Start the App after forking (e.g. in gunicorn's "
                "post_fork hook, or lazily on first request)."
            )




def _app_settings() -> FrozenSet[str]:
    """The App's own keyword settings, offered when a setting is misspelt."""
    return frozenset(inspect.signature(App.__init__).parameters) - {"self", "id", "kafka_settings"}
