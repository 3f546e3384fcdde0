"""A shared reply topic with a partition per client, on the suite's Kafka broker.

Eight client processes share one 8-partition reply topic, each with
``reply_partition`` of its own; none creates or deletes a topic, each reads
only its partition, and no reply lands anywhere else.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from typing import Any, Dict, Iterator, List, cast

import kafka
import pytest
from kafka.admin import NewTopic

import replies

CLIENTS = 8
ASKS = 1000


@pytest.fixture
def echo_worker(kafka_bootstrap: str, kafka_client_settings: Dict[str, Any]) -> Iterator[replies.App]:
    app = replies.App(f"shared-{uuid.uuid4().hex[:8]}", broker=f"kafka://{kafka_bootstrap}",
                      topic_partitions=8, **kafka_client_settings)

    @app.agent(concurrency=8)
    def echo(value: Any) -> Any:
        return value

    app.serve()
    try:
        yield app
    finally:
        app.close()


def _topics(bootstrap: str) -> set[str]:
    consumer = kafka.KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        return set(consumer.topics())
    finally:
        consumer.close()


@pytest.mark.integration
@pytest.mark.kafka_only
@pytest.mark.timeout(420)
@pytest.mark.parametrize("wire", ["faust", "spring"])
def test_eight_clients_share_one_reply_topic_a_partition_each(
    kafka_bootstrap: str, kafka_client_settings: Dict[str, Any], echo_worker: replies.App, wire: str
) -> None:
    shared = f"shop-replies-{uuid.uuid4().hex[:8]}"
    admin = kafka.KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(shared, CLIENTS, 1)])
    finally:
        admin.close()
    topics_before = _topics(kafka_bootstrap)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    clients = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.workers.shared_reply_client", kafka_bootstrap, shared, str(p),
             echo_worker.agents["echo"].topic_name, str(ASKS), wire, json.dumps(kafka_client_settings)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for p in range(CLIENTS)
    ]
    reports: List[Dict[str, Any]] = []
    for proc in clients:
        out, err = proc.communicate(timeout=360)
        assert proc.returncode == 0, err[-3000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    for p, report in enumerate(reports):
        assert {k: report[k] for k in ("partition", "right", "assigned")} == {
            "partition": p, "right": ASKS, "assigned": [[p]]}
    # No client created or deleted a topic.
    assert _topics(kafka_bootstrap) == topics_before
    # Every reply sits in the partition of the client that asked for it.
    consumer = kafka.KafkaConsumer(bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                   consumer_timeout_ms=5000, **kafka_client_settings)
    try:
        partitions = [kafka.TopicPartition(shared, p) for p in range(CLIENTS)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        where: Counter[tuple[int, int]] = Counter()
        numbers: Dict[int, Counter[int]] = {p: Counter() for p in range(CLIENTS)}
        for record in consumer:
            value = cast(Dict[str, int], echo_worker.codec.decode_reply(record.value, list(record.headers)).value)
            where[(record.partition, value["client"])] += 1
            numbers[record.partition][value["n"]] += 1
    finally:
        consumer.close()
    assert set(where) == {(p, p) for p in range(CLIENTS)}
    for p in range(CLIENTS):
        # A rebalance of the agent's group (seen on a loaded machine) can
        # answer a request twice, at least once; the second answer goes to
        # the same partition, and is all a client may read and drop.
        assert set(numbers[p]) == set(range(ASKS))
        assert reports[p]["unknown"] <= sum(numbers[p].values()) - ASKS, reports[p]
