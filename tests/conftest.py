"""Suite-wide fixtures: the broker plugin and a guard against leaked threads."""

from __future__ import annotations

import threading
import time
from typing import Iterator

import pytest

pytest_plugins = ["tests.kafka.plugin"]

# Threads that libraries start once per process and keep on purpose.
_LONG_LIVED_PREFIXES = ("pytest_timeout", "asyncio_")


def _library_threads() -> set[threading.Thread]:
    return {
        t
        for t in threading.enumerate()
        if t is not threading.main_thread()
        and t.is_alive()
        and not t.name.startswith(_LONG_LIVED_PREFIXES)
    }


@pytest.fixture(autouse=True)
def no_leaked_threads(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves threads behind (after a short grace period)."""
    before = _library_threads()
    yield
    deadline = time.monotonic() + 5.0
    leaked = _library_threads() - before
    while leaked and time.monotonic() < deadline:
        time.sleep(0.05)
        leaked = _library_threads() - before
    if leaked:
        names = sorted(t.name for t in leaked)
        pytest.fail(f"test left threads running: {names}", pytrace=False)
