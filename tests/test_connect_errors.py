"""start() and close() when the broker cannot be reached: bounded, and saying why.

``start()`` gives up after the App's ``connect_timeout`` with a
``TransportError`` whose ``cause`` and message name what went wrong;
``close(timeout)`` keeps its timeout with the broker gone. The bounds
checked here are generous (several times the timeout): they catch a call
that hangs, they do not measure speed.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List, Optional

import pytest

import replies
from replies.core.codec import Message
from replies.transport.kafka import check_connection
from tests.kafka.harness import KafkaCluster, SecureAccess, free_ports

pytestmark = pytest.mark.timeout(120)


def _bounded(call: Callable[[], Any], bound: float) -> Optional[BaseException]:
    """Run ``call`` in a thread; fail if it has not returned within ``bound`` s.

    Returns what it raised, or None.
    """
    outcome: Dict[str, BaseException] = {}

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="test-bounded", daemon=True)
    thread.start()
    thread.join(bound)
    assert not thread.is_alive(), f"still blocked after {bound} s"
    return outcome.get("error")


def _start_error(bound: float = 15.0, **settings: Any) -> replies.TransportError:
    app = replies.App("unreachable", **settings)
    error = _bounded(app.start, bound)
    app.close(timeout=1)
    assert isinstance(error, replies.TransportError), repr(error)
    return error


def test_nothing_listening_is_connection_refused() -> None:
    (port,) = free_ports(1)
    error = _start_error(broker=f"kafka://127.0.0.1:{port}", connect_timeout=1.5)
    assert error.cause == "connection_refused"
    assert f"connection refused by 127.0.0.1:{port}" in str(error)


def test_unknown_host_is_name_not_resolved() -> None:
    error = _start_error(broker="kafka://no-such-host.invalid:9092", connect_timeout=1.5)
    assert error.cause == "name_not_resolved"
    assert "cannot resolve host name 'no-such-host.invalid'" in str(error)


def test_the_first_reachable_server_is_enough() -> None:
    """A list of bootstrap servers fails only when none of them can be reached."""
    (port,) = free_ports(1)
    with pytest.raises(replies.TransportError) as caught:
        check_connection(
            [f"127.0.0.1:{port}", "no-such-host.invalid:9092"], {}, time.monotonic() + 0.5
        )
    # Both causes are named, each with its server.
    assert f"connection refused by 127.0.0.1:{port}" in str(caught.value)
    assert "no-such-host.invalid" in str(caught.value)


@pytest.mark.integration
def test_a_reachable_server_among_unreachable_ones(kafka_bootstrap: str) -> None:
    (port,) = free_ports(1)
    servers = [f"127.0.0.1:{port}", kafka_bootstrap.split(",")[0]]
    check_connection(servers, {}, time.monotonic() + 10)  # does not raise


@pytest.mark.integration
@pytest.mark.kafka_only
def test_plaintext_client_on_a_tls_listener(secure_kafka: SecureAccess) -> None:
    error = _start_error(broker=f"kafka://{secure_kafka.bootstrap_servers}", connect_timeout=3)
    assert error.cause == "protocol_mismatch"
    assert "security_protocol must be SSL or SASL_SSL" in str(error)


def test_connect_timeout_is_checked() -> None:
    with pytest.raises(ValueError, match="connect_timeout"):
        replies.App("x", connect_timeout=0)


@pytest.mark.integration
@pytest.mark.kafka_only
def test_close_and_start_with_the_broker_stopped() -> None:
    """Records in the producer's buffer and a reply topic to delete: close(5)
    with the broker gone still returns, and fails what it held; a new App's
    start() on that address says the connection is refused. One broker, started
    for this test alone since it is stopped."""
    broker = KafkaCluster()
    broker.start()
    try:
        app = replies.App(
            "closing",
            broker=f"kafka://{broker.bootstrap_servers}",
            connect_timeout=3,
            request_timeout=30,
        )
        try:
            app.start()
            topic = app.topic("closing-nobody")
            app.transport.create_topic("closing-nobody", partitions=1)
            pending = [topic.ask_nowait(0)]  # nobody serves it: stays pending
            app.transport.flush(10)
            broker.stop()
            # The topic's metadata is known: these wait in the producer's buffer.
            pending += [topic.ask_nowait(i) for i in range(1, 6)]
            record = Message(None, b"raw", [])
            acked = app.transport.produce("closing-nobody", record)
            fates: List[Optional[BaseException]] = []
            app.transport.produce_then("closing-nobody", record, fates.append)
            with pytest.raises(replies.TransportError, match="7 records not acknowledged") as late:
                app.transport.flush(0.5)
            assert late.value.cause == "timeout" and not acked.done() and not fates
            assert _bounded(lambda: app.close(timeout=5), bound=20) is None
            for promise in pending:
                assert isinstance(promise.exception(timeout=5), replies.ReplyError)
            # Each record unsent is failed once, whether it has a future or a callback.
            assert isinstance(acked.exception(timeout=5), replies.TransportError)
            assert len(fates) == 1 and isinstance(fates[0], replies.TransportError)
        finally:
            app.close(timeout=1)
        error = _start_error(broker=f"kafka://{broker.bootstrap_servers}", connect_timeout=2)
        assert error.cause == "connection_refused"
    finally:
        broker.stop()
