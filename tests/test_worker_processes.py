"""Agents served by other processes (``python -m replies worker``), on a real broker.

Each worker logs to a file in the test's temporary directory; set
``REPLIES_TEST_WORKER_LOGLEVEL=debug`` to see kafka-python's side too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

import replies

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parent.parent


class Workers:
    """Starts worker processes for one App id and cleans them up."""

    def __init__(self, bootstrap: str, settings: Dict[str, Any], logs: Path) -> None:
        self.logs = logs
        self.app_id = f"w{uuid.uuid4().hex[:8]}"
        self.env = dict(
            os.environ,
            REPLIES_TEST_BROKER_URL=f"kafka://{bootstrap}",
            REPLIES_TEST_APP_ID=self.app_id,
            PYTHONPATH=str(ROOT),
        )
        self.env["REPLIES_TEST_KAFKA_SETTINGS"] = json.dumps(settings)
        self.processes: List[subprocess.Popen[bytes]] = []

    def start(self, handler_seconds: float = 0.0) -> "subprocess.Popen[bytes]":
        env = dict(self.env, REPLIES_TEST_HANDLER_SECONDS=str(handler_seconds))
        # A file, not a pipe: a pipe nobody reads blocks a chatty worker.
        with open(self.logs / f"worker-{len(self.processes)}.log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "replies", "worker", "tests.workers.sample:app", "--loglevel", os.environ.get("REPLIES_TEST_WORKER_LOGLEVEL", "info")],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        self._wait_until_serving(process, log.name)
        return process

    @staticmethod
    def _wait_until_serving(process: "subprocess.Popen[bytes]", log: str) -> None:
        # Asking before the worker created its topic would let the broker
        # auto-create it with one partition.
        deadline = time.monotonic() + 60
        while b"serving agent fail" not in Path(log).read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker did not start:\n{Path(log).read_text()[-3000:]}")
            time.sleep(0.05)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(30)


@pytest.fixture
def workers(
    kafka_bootstrap: str, kafka_client_settings: Dict[str, Any], tmp_path: Path
) -> Iterator[Workers]:
    pool = Workers(kafka_bootstrap, kafka_client_settings, tmp_path)
    yield pool
    pool.stop_all()


@pytest.fixture
def client(
    workers: Workers, kafka_bootstrap: str, kafka_client_settings: Dict[str, Any]
) -> Iterator[replies.App]:
    app = replies.App(
        f"{workers.app_id}-client",
        broker=f"kafka://{kafka_bootstrap}",
        request_timeout=90,
        **kafka_client_settings,
    )
    with app:
        yield app


def _committed_total(bootstrap: str, group_id: str) -> int:
    import kafka

    admin = kafka.KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    try:
        offsets = admin.list_group_offsets(group_id).get(group_id, {})
    finally:
        admin.close()
    return sum(meta.offset for meta in offsets.values() if meta.offset > 0)


def test_ask_map_join_an_agent_in_another_process(workers: Workers, client: replies.App) -> None:
    worker = workers.start()
    work = client.topic(f"{workers.app_id}-work")
    first = work.ask("hello")
    assert first["value"] == "hello" and first["pid"] == worker.pid
    assert sorted(r["value"] for r in work.map(range(20))) == list(range(20))
    assert [r["value"] for r in work.join(range(50))] == list(range(50))
    with pytest.raises(replies.RemoteError) as caught:
        client.topic(f"{workers.app_id}-fail").ask("x")
    assert caught.value.type_name == "KeyError"
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0


def test_two_workers_share_partitions_and_survive_a_sigkill(
    workers: Workers, client: replies.App
) -> None:
    first, second = workers.start(0.01), workers.start(0.01)
    work = client.topic(f"{workers.app_id}-work")
    # Distinct keys spread the requests over the topic's 4 partitions; ask
    # until the second worker has joined the group and taken its share.
    pids: set = set()
    deadline = time.monotonic() + 60
    while pids != {first.pid, second.pid} and time.monotonic() < deadline:
        served = work.kvjoin([(f"k{i}", i) for i in range(40)])
        assert [r["value"] for r in served] == list(range(40))
        pids |= {r["pid"] for r in served}
    assert pids == {first.pid, second.pid}, "both workers do work"

    items = [(f"k{i}", i) for i in range(200, 600)]
    received: List[Dict[str, Any]] = []
    for reply in work.kvmap(items, timeout=120):
        received.append(reply)
        if len(received) == 50:
            second.kill()  # SIGKILL mid-run: no goodbye to the group
    values = sorted(r["value"] for r in received)
    assert values == list(range(200, 600)), "every request answered exactly once"
    assert any(r["pid"] == first.pid for r in received[50:])
    assert len(client.reply_consumer.table) == 0


def test_sigterm_answers_every_request_it_consumed(
    workers: Workers, client: replies.App, kafka_bootstrap: str
) -> None:
    worker = workers.start(handler_seconds=0.3)
    work = client.topic(f"{workers.app_id}-work")
    # More requests than one worker consumes ahead (4 handlers, a bounded
    # backlog), so some are still in the topic when it stops.
    count = 120
    promises = [work.ask_nowait(i, key=f"k{i}", timeout=120) for i in range(count)]
    while not any(p.done() for p in promises):
        time.sleep(0.05)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0
    time.sleep(1.0)  # let the last replies travel to the reply consumer
    answered = [p for p in promises if p.done()]
    committed = _committed_total(kafka_bootstrap, f"{workers.app_id}-work")
    assert 1 <= len(answered) < len(promises), "stopped mid-run, as intended"
    assert committed == len(answered), "what was committed was answered, and only that"
    # The rest waits in the topic and is served once a worker is back.
    workers.start()
    assert sorted(p.result(90)["value"] for p in promises) == list(range(count))


# The demo uses kafka-python's default 45 s session timeout, and Tansu holds
# every group join for half of it: the demo on a broker is for Apache Kafka.
@pytest.mark.parametrize("where", ["memory", pytest.param("kafka", marks=pytest.mark.kafka_only)])
def test_demo_runs(where: str, request: pytest.FixtureRequest) -> None:
    command = [sys.executable, "-m", "replies", "demo"]
    if where == "kafka":
        command += ["--broker", "kafka://" + request.getfixturevalue("kafka_bootstrap")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for expected in ("-> 3", "-> [9, 1, 4]", "ReplyTimeoutError", "ZeroDivisionError", "done in"):
        assert expected in done.stdout
