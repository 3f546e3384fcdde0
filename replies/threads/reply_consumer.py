"""The reply consumer: one thread reads the reply topic and wakes the waiters."""

from __future__ import annotations

import itertools
import logging
import threading
from typing import TYPE_CHECKING, Optional

from replies.core.promise import ReplyPromise, mark_reply_thread
from replies.core.table import CorrelationTable
from replies.errors import ClosedError, DecodeError, ReplyConsumerError
from replies.transport.base import Reader, Record

if TYPE_CHECKING:
    from replies.app import App

__all__ = ["ReplyConsumer"]

_thread_ids = itertools.count(1)

# How long one poll may block: bounds how late a stop or a deadline is seen.
POLL_INTERVAL = 0.1


class ReplyConsumer:
    """Routes replies from the App's reply topic to waiting promises.

    Threading model: :meth:`on_start` (called by ``App.start()``) creates
    the reply topic if needed, opens a reader positioned at the topic's
    end, and only then starts the thread ``replies-reply-N``, which alone
    uses the reader from then on. Any thread may :meth:`add` a promise;
    the reply thread completes promises, so their done-callbacks run on it
    and must not wait for replies (doing so raises ``DeadlockError``).
    The same thread times out promises whose deadline passed. If the
    thread dies, every pending promise fails with
    :class:`ReplyConsumerError`; :meth:`stop` fails them with
    :class:`ClosedError`.

    Args:
        app: the App whose transport, codec and reply settings to use.

    Attributes:
        logger: this consumer's logger (``replies.reply_consumer``).
        table: the correlation table of pending requests.
        undecodable: how many reply records could not be decoded.
    """

    def __init__(self, app: "App") -> None:
        self.app = app
        self.logger = logging.getLogger("replies.reply_consumer")
        self.table = CorrelationTable()
        self.undecodable = 0
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def thread(self) -> Optional[threading.Thread]:
        """The reply thread, once started."""
        return self._thread

    def on_start(self) -> None:
        """Prepare the reply topic and start the reply thread.

        Blocks until the reader is positioned at the end of the reply topic
        (at most the App's ``request_timeout``), so that no reply to a
        request sent afterwards can be missed.

        Raises:
            TransportError: the topic could not be created or read.
            ValueError: the reply topic does not exist and may not be created.
        """
        app = self.app
        transport = app.transport
        topic = app.reply_to
        if app.reply_create_topic:
            config = {
                "cleanup.policy": "delete",
                "retention.ms": str(int(app.reply_expires * 1000)),
            }
            transport.create_topic(topic, partitions=1, config=config)
        elif not transport.topic_exists(topic):
            raise ValueError(
                f"reply topic {topic!r} does not exist: create it, or pass "
                "reply_create_topic=True to the App"
            )
        reader = transport.reply_reader(topic, timeout=app.request_timeout or 30.0)
        self._stopping.clear()
        self.table.reopen()
        self._thread = threading.Thread(
            target=self._run_consumer,
            args=(reader,),
            name=f"replies-reply-{next(_thread_ids)}",
            daemon=True,
        )
        self._thread.start()
        self.logger.debug("reading replies on %s", topic)

    def add(self, correlation_id: str, promise: ReplyPromise) -> None:
        """Register a waiter; call it before the request is sent.

        Raises:
            ClosedError: the consumer stopped (the promise is failed too).
        """
        self.table.add(correlation_id, promise)

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop the thread and fail every pending promise with ClosedError.

        Blocks until the thread ended, at most ``timeout`` seconds.
        """
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self.table.close("the App was closed", ClosedError)

    def _run_consumer(self, reader: Reader) -> None:
        mark_reply_thread()
        try:
            while not self._stopping.is_set():
                for record in reader.poll(POLL_INTERVAL):
                    self._on_record(record)
                self.table.expire()
        except BaseException as exc:
            self.logger.exception("reply consumer thread died")
            self.table.close(f"the reply consumer thread died: {exc!r}", ReplyConsumerError)
        finally:
            reader.close()

    def _on_record(self, record: Record) -> None:
        try:
            reply = self.app.codec.decode_reply(record.value, record.headers)
        except DecodeError as exc:
            self.undecodable += 1
            self.logger.warning(
                "skipping undecodable reply at %s[%d]@%d: %s",
                record.topic,
                record.partition,
                record.offset,
                exc,
            )
            return
        if not self.table.deliver(reply):
            self.logger.debug(
                "dropping reply for unknown correlation id %s (late, duplicate, "
                "or another client's)",
                reply.correlation_id,
            )
