"""The reply consumer: one thread reads the reply topic and wakes the waiters."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING, Dict, Optional, Tuple

from replies.core.promise import ReplyPromise, mark_reply_thread
from replies.core.table import CorrelationTable, Reply
from replies.errors import ClosedError, DecodeError, ReplyConsumerError, TransportError
from replies.transport.base import Reader, Record

if TYPE_CHECKING:
    from replies.app import App

__all__ = ["ReplyConsumer"]

_thread_ids = itertools.count(1)

# How long one poll may block: bounds how late a stop or a deadline is seen.
POLL_INTERVAL = 0.1
#: The wait after a failed poll, doubled after each failure up to RETRY_MAX.
RETRY_MIN = 0.1
RETRY_MAX = 5.0
#: How long polls may fail before the waiting requests are failed, when the
#: App has no ``request_timeout``.
FAILING_BOUND = 30.0
#: At most one warning this often about the same kind of trouble.
WARN_EVERY = 30.0


class _Throttle:
    """Decides the level of repeated log lines: one warning per period.

    Used only by the reply thread: not thread-safe.
    """

    def __init__(self, every: float) -> None:
        self._every = every
        self._last: Dict[str, float] = {}
        self._quiet: Dict[str, int] = {}

    def level(self, kind: str) -> Tuple[int, int]:
        """The level for the next line of ``kind``, and how many went to DEBUG since."""
        now = time.monotonic()
        last = self._last.get(kind)
        if last is None or now - last >= self._every:
            self._last[kind] = now
            return logging.WARNING, self._quiet.pop(kind, 0)
        self._quiet[kind] = self._quiet.get(kind, 0) + 1
        return logging.DEBUG, 0


class ReplyConsumer:
    """Routes replies from the App's reply topic to waiting promises.

    Threading model: :meth:`on_start` (called by ``App.start()``) creates
    the reply topic if needed, opens a reader positioned at the topic's
    end, and only then starts the thread ``replies-reply-N``, which alone
    uses the reader from then on. Any thread may :meth:`add` a promise;
    the reply thread completes promises, so their done-callbacks run on it
    and must not wait for replies (doing so raises ``DeadlockError``).
    The same thread times out promises whose deadline passed.

    Nothing a record holds stops the thread: a reply that cannot be
    decoded is counted and skipped, and a reply is matched by correlation
    id before its value goes through the App's ``json_object_hook``, so a
    value the hook refuses fails only the request waiting for it (with
    :class:`DecodeError`) and a reply meant for nobody is never decoded.
    A poll that fails is retried with a growing pause (0.1 s doubling to
    5 s); when polls keep failing for the App's ``request_timeout`` (30 s
    without one), every waiting promise fails with
    :class:`ReplyConsumerError`, the reader is replaced by a new one
    positioned at the topic's end (requests still waiting when it is in
    place fail too: their replies may have come before it), and the thread
    carries on, so requests made once the broker answers again are served. If the thread dies all
    the same, every pending promise fails with :class:`ReplyConsumerError`;
    :meth:`stop` fails them with :class:`ClosedError`.

    Args:
        app: the App whose transport, codec and reply settings to use.

    Attributes:
        logger: this consumer's logger (``replies.reply_consumer``).
        table: the correlation table of pending requests.
        undecodable: how many reply records could not be decoded (their
            envelope, or the value of one somebody waited for, or a record
            the transport could not read at all).
        errors: how many records raised unexpectedly while being handled
            (skipped and logged).
        poll_errors: how many polls failed.
    """

    def __init__(self, app: "App") -> None:
        self.app = app
        self.logger = logging.getLogger("replies.reply_consumer")
        self.table = CorrelationTable()
        self.undecodable = 0
        self.errors = 0
        self.poll_errors = 0
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._throttle = _Throttle(WARN_EVERY)

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
        reader = self._open_reader(app.request_timeout or 30.0, check_exists=True)
        self._stopping.clear()
        self.table.reopen()
        self._thread = threading.Thread(
            target=self._run_consumer,
            args=(reader,),
            name=f"replies-reply-{next(_thread_ids)}",
            daemon=True,
        )
        self._thread.start()
        self.logger.debug("reading replies on %s", app.reply_to)

    def _open_reader(self, timeout: float, *, check_exists: bool = False) -> Reader:
        """Create the reply topic if that is ours to do, and read it from its end."""
        app = self.app
        transport = app.transport
        topic = app.reply_to
        if app.reply_create_topic:
            config = {
                "cleanup.policy": "delete",
                "retention.ms": str(int(app.reply_expires * 1000)),
            }
            transport.create_topic(topic, partitions=1, config=config)
        elif check_exists and not transport.topic_exists(topic):
            raise ValueError(
                f"reply topic {topic!r} does not exist: create it, or pass "
                "reply_create_topic=True to the App"
            )
        return transport.reply_reader(topic, timeout=timeout)

    def _reopen_reader(self) -> Reader:
        """A new reader at the end of the reply topic, for the reply thread.

        Creates the topic again (if that is ours to do) only when it cannot
        be read, e.g. because somebody deleted it: no admin round trip
        otherwise. Blocks for as long as the transport takes to connect
        and find the topic's partitions (about ``RETRY_MAX`` seconds).
        """
        try:
            return self.app.transport.reply_reader(self.app.reply_to, timeout=RETRY_MAX)
        except TransportError:
            if not self.app.reply_create_topic or self._stopping.is_set():
                raise
        return self._open_reader(RETRY_MAX)

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

    # -- the reply thread ------------------------------------------------------

    def _run_consumer(self, first: Reader) -> None:
        mark_reply_thread()
        reader: Optional[Reader] = first
        seen_skipped = 0  # the reader's count of records it could not read
        failing_since: Optional[float] = None
        failures = 0
        pause = RETRY_MIN
        try:
            while not self._stopping.is_set():
                try:
                    if reader is None:
                        reader = self._reopen_reader()
                        seen_skipped = 0
                        # The new reader starts at the end: replies to the
                        # requests still waiting may have come before it.
                        # Fail them now rather than let them time out.
                        failed = self.table.fail_pending(
                            f"the reply topic {self.app.reply_to} was read by no one "
                            "for a while: the reply may have been missed",
                            ReplyConsumerError,
                        )
                        self.logger.warning(
                            "reading replies on %s again, from its end (failed %d requests "
                            "sent while no reader was reading)",
                            self.app.reply_to,
                            failed,
                        )
                    records = reader.poll(POLL_INTERVAL)
                except Exception as exc:
                    now = time.monotonic()
                    if failing_since is None:
                        failing_since = now
                    failures += 1
                    self.poll_errors += 1
                    if self._on_poll_failure(exc, now - failing_since, failures) and reader:
                        # The reader may be what is broken: the next round
                        # opens a new one at the end of the topic (those
                        # waiting for replies before it were just failed).
                        self._close_reader(reader)
                        reader = None
                    self.table.expire()
                    self._stopping.wait(pause)
                    pause = min(pause * 2, RETRY_MAX)
                    continue
                if failing_since is not None:
                    self.logger.warning(
                        "reading replies on %s works again after %.1f s (%d failed polls)",
                        self.app.reply_to,
                        time.monotonic() - failing_since,
                        failures,
                    )
                    failing_since, failures, pause = None, 0, RETRY_MIN
                if reader.skipped != seen_skipped:
                    self.undecodable += reader.skipped - seen_skipped
                    seen_skipped = reader.skipped
                for record in records:
                    self._on_record(record)
                self.table.expire()
        except BaseException as exc:
            self.logger.exception("reply consumer thread died")
            self.table.close(f"the reply consumer thread died: {exc!r}", ReplyConsumerError)
        finally:
            if reader is not None:
                self._close_reader(reader)

    def _on_poll_failure(self, exc: Exception, failing_for: float, failures: int) -> bool:
        """Log a failed poll (throttled); fail the waiters if it lasts.

        Returns:
            Whether polls have failed for so long that the reader is to be
            replaced.
        """
        bound = self.app.request_timeout or FAILING_BOUND
        persistent = failing_for >= bound
        if persistent:
            failed = self.table.fail_pending(
                f"cannot read replies from {self.app.reply_to} for {failing_for:.0f} s: {exc}",
                ReplyConsumerError,
            )
            level = logging.ERROR if failed else self._throttle.level("poll")[0]
            self.logger.log(
                level,
                "reading replies on %s has failed for %.0f s (%d polls), failed %d "
                "waiting requests; retrying with a new reader: %s",
                self.app.reply_to,
                failing_for,
                failures,
                failed,
                exc,
            )
            return True
        if failures == 1:
            self.logger.warning(
                "polling reply topic %s failed, retrying: %s", self.app.reply_to, exc
            )
            return False
        level, _ = self._throttle.level("poll")
        self.logger.log(
            level,
            "polling reply topic %s still fails after %.1f s (%d polls): %s",
            self.app.reply_to,
            failing_for,
            failures,
            exc,
        )
        return False

    def _close_reader(self, reader: Reader) -> None:
        try:
            reader.close()
        except Exception as exc:
            self.logger.debug("closing the reply reader failed: %s", exc)

    def _on_record(self, record: Record) -> None:
        """Handle one record; nothing it holds may stop the thread."""
        try:
            self._dispatch(record)
        except Exception:
            self.errors += 1
            level, quiet = self._throttle.level("error")
            self.logger.log(
                level,
                "skipping reply at %s after an unexpected error%s",
                _where(record),
                _quiet(quiet),
                exc_info=True,
            )

    def _dispatch(self, record: Record) -> None:
        try:
            reply = self.app.codec.decode_reply_envelope(record.value, record.headers)
        except DecodeError as exc:
            self.undecodable += 1
            level, quiet = self._throttle.level("undecodable")
            self.logger.log(
                level, "skipping undecodable reply at %s: %s%s", _where(record), exc, _quiet(quiet)
            )
            return

        def decode(reply: Reply) -> Reply:
            # Runs only for a reply somebody waits for.
            try:
                return self.app.codec.decode_reply_value(reply)
            except DecodeError as exc:
                self.undecodable += 1
                self.logger.warning(
                    "reply %s at %s has a value that cannot be decoded: %s",
                    reply.correlation_id,
                    _where(record),
                    exc,
                )
                raise

        if not self.table.deliver(reply, decode):
            self.logger.debug(
                "dropping reply for unknown correlation id %s (late, duplicate, "
                "or another client's)",
                reply.correlation_id,
            )


def _where(record: Record) -> str:
    return f"{record.topic}[{record.partition}]@{record.offset}"


def _quiet(count: int) -> str:
    return f" ({count} more since the last warning)" if count else ""
