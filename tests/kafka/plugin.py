"""pytest plugin: a real broker for the integration tests.

Load it from ``tests/conftest.py`` with ``pytest_plugins = ["tests.kafka.plugin"]``.

Environment:
    REPLIES_TEST_BROKER: ``kafka`` (default) or ``tansu``.
    REPLIES_BOOTSTRAP_SERVERS: use this running broker instead of starting one.
    REPLIES_SECURE_BROKER: the ``access.json`` of a broker started by
        ``python -m tests.kafka start --secure``: the secure tests use it
        instead of starting their own.
    REPLIES_KAFKA_VERSION: Apache Kafka version to start (default: the harness's newest).
    REPLIES_KAFKA_CACHE: where resolved Kafka jars are kept (default ~/.cache/replies-kafka).
    REPLIES_FAIL_ON_SKIP (or CI): a skipped ``integration`` test counts as failed.

Markers:
    integration: needs a real broker.
    kafka_only: needs Apache Kafka itself; deselected when the broker is Tansu.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Generator

import pytest

from tests.kafka.harness import DEFAULT_KAFKA_VERSION, BrokerError, SecureAccess, SecureKafka, make_broker

BROKER_KINDS = ("kafka", "tansu")

#: Consumer settings Tansu needs. It holds a group join for half the session
#: timeout (kafka-python's default 45 s makes a join take 22 s; 6 s, Kafka's
#: smallest, makes it 3 s; heartbeats every second spread a rebalance fast),
#: and answers a fetch only after ``fetch_max_wait_ms`` even when records
#: arrive earlier (the default 500 ms would delay every reply).
_TANSU_CONSUMER = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "fetch_max_wait_ms": 50}


def _broker_kind() -> str:
    return os.environ.get("REPLIES_TEST_BROKER", "kafka").strip().lower() or "kafka"


def _fail_on_skip() -> bool:
    flag = os.environ.get("REPLIES_FAIL_ON_SKIP") or os.environ.get("CI") or ""
    return flag.strip().lower() not in ("", "0", "false", "no")


def pytest_configure(config: pytest.Config) -> None:
    if _broker_kind() not in BROKER_KINDS:
        raise pytest.UsageError(f"REPLIES_TEST_BROKER must be one of {BROKER_KINDS}, not {_broker_kind()!r}")
    config.addinivalue_line("markers", "integration: needs a real Kafka-compatible broker (started by the suite)")
    config.addinivalue_line("markers", "kafka_only: needs Apache Kafka itself; deselected when the broker is Tansu")


def pytest_report_header(config: pytest.Config) -> str:
    external = os.environ.get("REPLIES_BOOTSTRAP_SERVERS")
    kind = _broker_kind()
    what = f"{kind} {DEFAULT_KAFKA_VERSION}" if kind == "kafka" else kind
    where = f"at {external}" if external else "started on first use"
    return f"broker: {what}, {where}; fail on skipped integration tests: {_fail_on_skip()}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests of Apache Kafka's own features are left out on Tansu rather than
    # skipped, so that a skip always means something went wrong.
    if _broker_kind() == "kafka":
        return
    deselected = [item for item in items if item.get_closest_marker("kafka_only")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("kafka_only")]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and not hasattr(report, "wasxfail") and _fail_on_skip()
            and item.get_closest_marker("integration")):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"integration test skipped, which REPLIES_FAIL_ON_SKIP/CI forbids: {reason}"


@pytest.fixture(scope="session")
def broker_kind() -> str:
    """``"kafka"`` or ``"tansu"``: the broker the integration tests run against."""
    return _broker_kind()


@pytest.fixture(scope="session")
def kafka_bootstrap(broker_kind: str) -> Generator[str, None, None]:
    """Bootstrap servers (``"host:port[,host:port]"``) of one broker shared by the session.

    Uses ``$REPLIES_BOOTSTRAP_SERVERS`` when set; otherwise starts Apache
    Kafka (or Tansu) on first request and stops it at the end of the session.
    A broker that cannot start fails the requesting tests; it never skips them.
    """
    external = os.environ.get("REPLIES_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    broker = make_broker(broker_kind)
    try:
        broker.start()
    except BrokerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_client_settings(broker_kind: str) -> dict[str, Any]:
    """Extra kafka-python settings the broker under test needs (a fresh dict).

    Every key is a ``KafkaConsumer`` setting that ``KafkaProducer`` and
    ``KafkaAdminClient`` would reject: pass the dict to consumers, or to
    ``replies.App``, which hands each setting to the client that knows it.
    ``bootstrap_servers`` is not included: take it from ``kafka_bootstrap``.
    Merge a test's own settings over it (``{**kafka_client_settings, **own}``).

    * Kafka: ``{}``.
    * Tansu: ``session_timeout_ms=6000``, ``heartbeat_interval_ms=1000``,
      ``fetch_max_wait_ms=50``.
    """
    return dict(_TANSU_CONSUMER) if broker_kind == "tansu" else {}


@pytest.fixture
def topic_prefix() -> str:
    """A fresh prefix such as ``"t-1a2b3c4d-"`` for the topic and group names of one test."""
    return f"t-{uuid.uuid4().hex[:8]}-"


@pytest.fixture(scope="session")
def secure_kafka() -> Generator[SecureAccess, None, None]:
    """An Apache Kafka broker with TLS, SASL/SCRAM-SHA-512 and ACLs enforced.

    Started on first request, once per session, and stopped at its end (a
    few seconds: only sessions that run a secure test pay for it); or the
    one ``$REPLIES_SECURE_BROKER`` describes. Yields its
    :class:`~tests.kafka.harness.SecureAccess`: address, CA, super user, and
    helpers to add users and grant ACLs. Nothing is allowed but what a test
    grants, so tests give their users names of their own (``topic_prefix``).
    Mark tests that use it ``integration`` and ``kafka_only``.
    """
    external = os.environ.get("REPLIES_SECURE_BROKER")
    if external:
        with open(external) as fh:
            yield SecureAccess.from_json(json.load(fh))
        return
    broker = SecureKafka()
    try:
        broker.start()
    except BrokerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield broker.access()
    finally:
        broker.stop()
