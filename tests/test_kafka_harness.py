"""Tests of the broker harness and pytest plugin in tests/kafka.

The integration tests use plain kafka-python against whichever broker
``REPLIES_TEST_BROKER`` selects; the cluster tests need Apache Kafka itself
and are deselected on Tansu. The plugin's own rules run in a child pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from tests.kafka.harness import BrokerError, KafkaCluster

pytestmark = pytest.mark.timeout(180)
integration = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()


@integration
def test_record_with_headers_round_trip(kafka_bootstrap: str, kafka_client_settings: dict[str, Any],
                                        topic_prefix: str) -> None:
    topic = topic_prefix + "headers"
    create_topic(kafka_bootstrap, topic, 1)
    headers = [("Faust-Ag-ReplyTo", b"f-reply-x"), ("Faust-Ag-CorrelationId", b"c-1"), ("empty", b"")]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        producer.send(topic, b'{"a": 1}', key=b"k1", headers=headers).get(timeout=30)
    finally:
        producer.close()

    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                             **kafka_client_settings)
    try:
        consumer.assign([TopicPartition(topic, 0)])
        records: list[Any] = []
        deadline = time.monotonic() + 30
        while not records and time.monotonic() < deadline:
            records = [r for batch in consumer.poll(500).values() for r in batch]
    finally:
        consumer.close()
    assert [(r.key, r.value, list(r.headers)) for r in records] == [(b"k1", b'{"a": 1}', headers)]


class _Member(threading.Thread):
    """A consumer-group member polling in its own thread (consumers are not thread-safe)."""

    def __init__(self, name: str, bootstrap: str, topic: str, group: str, settings: dict[str, Any]):
        super().__init__(name=name, daemon=True)
        self.consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                      auto_offset_reset="earliest", **settings)
        self.assigned: frozenset[int] = frozenset()
        self.records: list[tuple[int, bytes]] = []
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while not self.done.is_set():
                for tp, batch in self.consumer.poll(100).items():
                    self.records.extend((tp.partition, r.value) for r in batch)
                self.assigned = frozenset(tp.partition for tp in self.consumer.assignment())
        except BaseException as exc:  # reported by the test thread
            self.error = exc
        finally:
            self.consumer.close()


@integration
def test_two_group_members_split_four_partitions(kafka_bootstrap: str,
                                                 kafka_client_settings: dict[str, Any],
                                                 topic_prefix: str) -> None:
    topic, group = topic_prefix + "split", topic_prefix + "group"
    create_topic(kafka_bootstrap, topic, 4)
    members = [_Member(f"group-member-{i}", kafka_bootstrap, topic, group, kafka_client_settings) for i in range(2)]
    for member in members:
        member.start()
    try:
        wait_for(lambda: [len(m.assigned) for m in members] == [2, 2]
                 and not members[0].assigned & members[1].assigned, 60, "two members with two partitions each")
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        try:
            for i in range(40):
                producer.send(topic, str(i).encode(), partition=i % 4)
            producer.flush(timeout=30)
        finally:
            producer.close()
        wait_for(lambda: sum(len(m.records) for m in members) >= 40 or any(m.error for m in members), 30,
                 "all 40 records")
    finally:
        for member in members:
            member.done.set()
        for member in members:
            member.join(30)
    assert [m.error for m in members] == [None, None]
    for member in members:
        assert {partition for partition, _ in member.records} == member.assigned
        assert len(member.records) == 20
    assert sorted(int(v) for m in members for _, v in m.records) == list(range(40))


def _isr_sizes(admin: KafkaAdminClient, topic: str) -> list[int]:
    (described,) = admin.describe_topics([topic])
    return [len(p["isr_nodes"]) for p in sorted(described["partitions"], key=lambda p: p["partition_index"])]


@integration
@pytest.mark.kafka_only
@pytest.mark.timeout(240)
def test_three_broker_cluster_survives_one_broker_down(topic_prefix: str) -> None:
    topic = topic_prefix + "replicated"
    with KafkaCluster(brokers=3) as cluster:
        bootstrap = cluster.bootstrap_servers
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        try:
            admin.create_topics([NewTopic(topic, 3, 3)])
            wait_for(lambda: _isr_sizes(admin, topic) == [3, 3, 3], 30, "three in-sync replicas")
            for i in range(10):
                producer.send(topic, str(i).encode(), partition=i % 3).get(timeout=30)

            # Stop the leader of partition 0, so that leadership has to move.
            (described,) = admin.describe_topics([topic])
            leader = next(p["leader_id"] for p in described["partitions"] if p["partition_index"] == 0)
            index = cluster.node_ids().index(leader)
            cluster.stop_node(index)
            wait_for(lambda: _isr_sizes(admin, topic) == [2, 2, 2], 30, "the stopped broker to leave the ISR")
            for i in range(10, 20):  # acks=all still works with min.insync.replicas=2
                producer.send(topic, str(i).encode(), partition=i % 3).get(timeout=30)

            cluster.start_node(index)
            wait_for(lambda: _isr_sizes(admin, topic) == [3, 3, 3], 60, "the restarted broker to rejoin the ISR")
        finally:
            producer.close()
            admin.close()

        consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        try:
            consumer.assign([TopicPartition(topic, p) for p in range(3)])
            values: list[int] = []
            deadline = time.monotonic() + 30
            while len(values) < 20 and time.monotonic() < deadline:
                values += [int(r.value) for batch in consumer.poll(500).values() for r in batch]
        finally:
            consumer.close()
        assert sorted(values) == list(range(20))
        pids = [n.process.pid for n in cluster.nodes]
    assert cluster.data_dir is None and not any(n.process.running() for n in cluster.nodes), pids


@integration
@pytest.mark.kafka_only
def test_failed_start_reports_the_broker_log() -> None:
    cluster = KafkaCluster(settings={"num.io.threads": "not-a-number"})
    with pytest.raises(BrokerError, match="num.io.threads"):
        cluster.start()
    assert cluster.data_dir is None


_PLUGIN_PROBE = """
import pytest

@pytest.mark.integration
def test_skipped_integration():
    pytest.skip("no broker today")

def test_skipped_unit():
    pytest.skip("fine")

@pytest.mark.integration
@pytest.mark.kafka_only
def test_kafka_only():
    pass
"""


def _run_plugin_probe(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_probe.py").write_text(textwrap.dedent(_PLUGIN_PROBE))
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("REPLIES_") and k != "CI"}
    child_env.update(env, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.kafka.plugin", "-p", "no:cacheprovider",
                           "-c", os.devnull, "--rootdir", str(tmp_path), "-rA", "test_probe.py"],
                          capture_output=True, text=True, env=child_env, cwd=tmp_path, timeout=60)


def test_plugin_allows_skips_by_default(tmp_path: Path) -> None:
    done = _run_plugin_probe(tmp_path)
    assert done.returncode == 0, done.stdout
    assert "1 passed, 2 skipped" in done.stdout


def test_plugin_fails_skipped_integration_tests_when_asked(tmp_path: Path) -> None:
    done = _run_plugin_probe(tmp_path, REPLIES_FAIL_ON_SKIP="1")
    assert done.returncode == 1, done.stdout
    assert "FAILED test_probe.py::test_skipped_integration" in done.stdout
    assert "integration test skipped, which REPLIES_FAIL_ON_SKIP/CI forbids: Skipped: no broker today" in done.stdout
    assert "1 failed, 1 passed, 1 skipped" in done.stdout


def test_plugin_deselects_kafka_only_tests_on_tansu(tmp_path: Path) -> None:
    done = _run_plugin_probe(tmp_path, REPLIES_TEST_BROKER="tansu", CI="true")
    assert done.returncode == 1, done.stdout
    assert "1 failed, 1 skipped, 1 deselected" in done.stdout
