"""Log output for ``python -m replies worker``: cheap enough per request.

A worker logs one line per request at INFO. Written the standard way
(one ``write`` and ``flush`` per line, the time formatted anew each
time), two such lines per request roughly halved a worker's throughput,
largely because each flush is a system call that gives up the GIL in the
middle of the handler's work. :class:`BatchingHandler` writes lines as they come but
flushes at most every :data:`FLUSH_EVERY` seconds (a warning or worse at
once, and everything on exit); :class:`LogFormatter` formats the time
once per second.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import IO, Optional

__all__ = ["BatchingHandler", "LogFormatter", "FLUSH_EVERY"]

#: Longest time a logged line below WARNING waits in the buffer.
FLUSH_EVERY = 0.1

_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class LogFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose default ``asctime`` (as
    ``2026-12-07 21:59:31,355``) formats the date once per second."""

    def __init__(self, fmt: Optional[str] = None) -> None:
        super().__init__(fmt)
        # The second last formatted and its text; formatting runs under the
        # handler's lock, and a race between two handlers only formats twice.
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: Optional[str] = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime(_TIME_FORMAT, self.converter(record.created))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"


class BatchingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that flushes in batches, on its own thread.

    Lines below WARNING are written to the stream's buffer and flushed by a
    daemon thread at most :data:`FLUSH_EVERY` seconds later; a WARNING or
    worse flushes at once (with everything before it, in order), and so
    does :func:`logging.shutdown` at exit.

    Args:
        stream: where to write. One with a file descriptor (like
            ``sys.stderr``, which flushes on every newline) is written
            through a buffered stream of this handler's own onto that
            descriptor, and kept referenced so that the descriptor stays
            open; one without (a ``StringIO``) is written as it is.
    """

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(_buffered(stream))
        self._origin = stream
        self._dirty = threading.Event()
        self._closing = False
        self._flusher = threading.Thread(
            target=self._run_flusher, name="replies-log-flush", daemon=True
        )
        self._flusher.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING:
                self.flush()
            elif not self._dirty.is_set():
                self._dirty.set()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        """Flush, and tell the flushing thread to stop.

        Not waiting for it: :func:`logging.shutdown` calls this holding
        the handler's lock, which that thread may be waiting for.
        """
        self._closing = True
        self._dirty.set()
        self.flush()
        super().close()

    def _run_flusher(self) -> None:
        while True:
            self._dirty.wait()
            if self._closing:
                return
            time.sleep(FLUSH_EVERY)
            # Lines written after this clear set it again.
            self._dirty.clear()
            try:
                self.flush()
            except Exception:  # a closed stream: nothing left to do
                return


def _buffered(stream: IO[str]) -> IO[str]:
    """A block-buffered text stream onto ``stream``'s file descriptor, or
    ``stream`` itself when it has none (a ``StringIO``)."""
    try:
        fileno = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return stream
    return open(  # noqa: SIM115 - lives as long as the process's logging
        fileno,
        "w",
        buffering=1 << 16,
        encoding=getattr(stream, "encoding", None) or "utf-8",
        errors="backslashreplace",
        closefd=False,
    )
