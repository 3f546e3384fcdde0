"""Suite-wide fixtures: the broker plugin and a guard against leaked threads."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List

import pytest

import replies

pytest_plugins = ["tests.kafka.plugin"]

# Threads that libraries start once per process and keep on purpose.
_LONG_LIVED_PREFIXES = ("pytest_timeout", "asyncio_", "tqdm_monitor")


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


# -- Apps over both transports ------------------------------------------------


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.integration)])
def broker_url(request: pytest.FixtureRequest) -> str:
    """A broker URL: a fresh in-process broker, or the suite's real one."""
    if request.param == "memory":
        return f"memory://{uuid.uuid4()}"
    return "kafka://" + request.getfixturevalue("kafka_bootstrap")


@pytest.fixture
def client_settings(broker_url: str, request: pytest.FixtureRequest) -> Dict[str, Any]:
    """kafka-python settings the broker under test needs (none for memory)."""
    if broker_url.startswith("memory://"):
        return {}
    return dict(request.getfixturevalue("kafka_client_settings"))


@pytest.fixture
def make_app(
    broker_url: str, client_settings: Dict[str, Any], request: pytest.FixtureRequest
) -> Iterator[Callable[..., replies.App]]:
    """Build Apps on the broker under test with fresh ids; close them after."""
    apps: List[replies.App] = []
    prefix = f"t{uuid.uuid4().hex[:8]}-"

    def make(id: str = "app", **settings: Any) -> replies.App:
        settings.setdefault("topic_partitions", 2)
        settings.setdefault("request_timeout", 20.0)
        app = replies.App(prefix + id, broker=broker_url, **{**client_settings, **settings})
        apps.append(app)
        return app

    yield make
    for app in reversed(apps):
        app.close()
