"""Reply topics never leak, on a broker that auto-creates topics.

The harness's Apache Kafka has ``auto.create.topics.enable=true`` (Kafka's
default). An agent worker that answered a client knows the client's reply
topic in its producer's metadata; if its metadata requests allowed
auto-creation, the next refresh after the client deleted the topic would
bring it back, with broker defaults (no ``retention.ms``). Each new client
the worker answers makes its producer refresh metadata, so the traffic
after the closes is made of new clients as well as a steady one.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List

import pytest

import replies
from tests.test_worker_processes import Workers, workers  # noqa: F401 (fixture)

# About Apache Kafka's own auto.create.topics.enable.
pytestmark = [pytest.mark.integration, pytest.mark.kafka_only, pytest.mark.timeout(300)]

#: How long traffic goes on after the 20 clients closed.
TRAFFIC_SECONDS = 60.0


def _list_topics(bootstrap: str) -> List[str]:
    import kafka

    admin = kafka.KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    try:
        return list(admin.list_topics())
    finally:
        admin.close()


def test_closed_apps_reply_topics_stay_deleted(
    workers: Workers, kafka_bootstrap: str, kafka_client_settings: Dict[str, Any]
) -> None:
    workers.start()
    topic = f"{workers.app_id}-work"
    broker = f"kafka://{kafka_bootstrap}"

    def one_client(n: int) -> str:
        app = replies.App(
            f"{workers.app_id}-c{n}", broker=broker, request_timeout=60, **kafka_client_settings
        )
        try:
            assert app.topic(topic).ask(n)["value"] == n
            return app.reply_to
        finally:
            app.close()

    with ThreadPoolExecutor(5) as pool:
        closed = list(pool.map(one_client, range(20)))
    assert len(set(closed)) == 20

    later: List[str] = []
    asked = 0
    steady = replies.App(
        f"{workers.app_id}-steady", broker=broker, request_timeout=60, **kafka_client_settings
    )
    with steady:
        deadline = time.monotonic() + TRAFFIC_SECONDS
        next_client = time.monotonic()
        while time.monotonic() < deadline:
            assert steady.topic(topic).ask(asked)["value"] == asked
            asked += 1
            if time.monotonic() >= next_client:
                later.append(one_client(100 + len(later)))
                next_client = time.monotonic() + 3.0
            time.sleep(0.05)
    closed += later + [steady.reply_to]

    # Deletion finishes asynchronously; a re-created topic would stay.
    wait_until = time.monotonic() + 15
    left = [t for t in closed if t in _list_topics(kafka_bootstrap)]
    while left and time.monotonic() < wait_until:
        time.sleep(0.5)
        left = [t for t in closed if t in _list_topics(kafka_bootstrap)]
    print(
        f"\nreply topics: {len(closed)} closed ({len(later)} during {TRAFFIC_SECONDS:.0f} s of "
        f"traffic, {asked} steady asks); left on the broker: {len(left)}"
    )
    assert left == []
