"""Counters and latency windows: the figures behind ``App.stats()``.

Theory of operation
-------------------
Counting sits on the hot path of every request, so a count is one call of
``next()`` on an :func:`itertools.count`: a single C call, atomic under the
GIL, with no lock of ours and no allocation. A latency sample is one
``append`` on a bounded :class:`collections.deque` (atomic too), plus a
count. Reading does the work instead: :meth:`Counter.value` parses the
count's repr, and :meth:`LatencyWindow.snapshot` sorts a copy of the window.
Readers may run on any thread at any time; a snapshot is not atomic across
counters (each figure is exact, but two figures may be a few events apart).

Latencies are kept for the most recent ``WINDOW`` observations only, so
memory stays bounded and p50/p99/max describe the present, not the whole
life of the process; ``count`` is the total since the start.
"""

from __future__ import annotations

import collections
import itertools
import math
import threading
from typing import Deque, Dict, Optional, Union

__all__ = ["Counter", "LatencyWindow", "WINDOW", "Figures"]

#: How many recent observations a :class:`LatencyWindow` keeps.
WINDOW = 1024

#: A snapshot's values: counts, or (for latency) a nested dict.
Figures = Dict[str, Union[int, float, None, Dict[str, Union[int, float, None]]]]


class Counter:
    """A monotonic event count, safe to bump from any thread.

    ``counter.inc()`` is the hot-path call (``next()`` of an
    :func:`itertools.count`); :meth:`add` is for the rare bulk update (it
    takes a lock). :attr:`value` reads the sum.
    """

    __slots__ = ("inc", "_count", "_bulk", "_lock")

    def __init__(self) -> None:
        self._count = itertools.count()
        #: Count one event. Bound once here so a call costs no lookups.
        self.inc = self._count.__next__
        # Guards ``_bulk``, the sum of :meth:`add` calls.
        self._lock = threading.Lock()
        self._bulk = 0

    def add(self, n: int) -> None:
        """Count ``n`` events at once."""
        if n:
            with self._lock:
                self._bulk += n

    @property
    def value(self) -> int:
        """The events counted so far."""
        # repr(count(7)) == "count(7)": the next number it would give, which
        # is how many times next() was called. itertools.count offers no
        # other way to read it without advancing it.
        return int(repr(self._count)[6:-1]) + self._bulk

    def __repr__(self) -> str:
        return f"<Counter {self.value}>"


class LatencyWindow:
    """Durations of recent events: total count, and p50/p99/max of the last
    ``size`` observations (in seconds).

    Threading model: :meth:`record` may be called from any thread without a
    lock; :meth:`snapshot` from any other thread at the same time.
    """

    __slots__ = ("_samples", "_count")

    def __init__(self, size: int = WINDOW) -> None:
        self._samples: Deque[float] = collections.deque(maxlen=size)
        self._count = Counter()

    def record(self, seconds: float) -> None:
        """Add one duration."""
        self._samples.append(seconds)
        self._count.inc()

    @property
    def count(self) -> int:
        """How many durations were recorded in all."""
        return self._count.value

    def samples(self) -> "list[float]":
        """A copy of the window's durations, oldest first."""
        return _copy(self._samples)

    def snapshot(self) -> Dict[str, Union[int, float, None]]:
        """``{"count", "p50", "p99", "max"}``: seconds, over the window.

        The percentiles are ``None`` before the first observation.
        """
        samples = self.samples()
        samples.sort()
        return {
            "count": self.count,
            "p50": _percentile(samples, 0.50),
            "p99": _percentile(samples, 0.99),
            "max": samples[-1] if samples else None,
        }


def _copy(samples: Deque[float]) -> "list[float]":
    # Copying a deque is one C call under the GIL, but a build without the
    # GIL could see it change meanwhile: retry then rather than fail.
    for _ in range(100):
        try:
            return list(samples)
        except RuntimeError:  # "deque mutated during iteration"
            continue
    return []


def _percentile(ordered: "list[float]", q: float) -> Optional[float]:
    """The nearest-rank percentile ``q`` (0-1) of sorted samples."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]
