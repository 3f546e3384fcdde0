"""The ``replies`` command, run as a process against a worker on a real broker.

One worker process (``python -m replies worker tests.workers.sample:app``)
serves the module's tests; every command runs in its own process, as from
a shell, so exit codes and stderr are the real ones.
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
from typing import Any, Dict, Iterator, List, NamedTuple

import pytest

import replies
from replies import cli

ROOT = Path(__file__).resolve().parent.parent

# Generous: each command is a fresh interpreter that connects to the broker.
COMMAND_TIMEOUT = 90


class Done(NamedTuple):
    code: int
    stdout: str
    stderr: str


def run(*args: str, stdin: str = "", env: Dict[str, str] | None = None) -> Done:
    """Run ``python -m replies ARGS`` and return its exit code and output."""
    done = subprocess.run(
        [sys.executable, "-m", "replies", *args],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    return Done(done.returncode, done.stdout, done.stderr)


def assert_one_line_error(done: Done, code: int) -> str:
    """The command failed with ``code`` and said why in one line, no traceback."""
    assert done.code == code, done
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("replies: "), done.stderr
    return lines[0]


# -- without a broker ---------------------------------------------------------


def test_version_is_the_package_version() -> None:
    done = run("--version")
    assert (done.code, done.stdout.strip()) == (0, f"replies {replies.__version__}")
    assert "version = attr: replies.__version__" in (ROOT / "setup.cfg").read_text()


@pytest.mark.parametrize(
    "args, says",
    [
        (["demo", "--broker", "memory"], "needs a scheme"),
        (["demo", "--loglevel", "bogus"], "invalid choice: 'bogus'"),
        (["ask", "t", "1", "--broker", "kafka://localhost"], "has no port"),
        (["ask", "t", "hello", "--broker", "kafka://127.0.0.1:9"], "is not JSON"),
        (["ask", "t", "--broker", "memory://"], "in-process broker"),
        (["map", "t", "--file", "/no/such/file", "--broker", "kafka://127.0.0.1:9"], "cannot read"),
        (["ask", "t", "1", "--timeout", "soon", "--broker", "kafka://127.0.0.1:9"], "not a number"),
        (["ask", "t"], "no broker: pass --broker"),
        (["worker", "no_such_module:app"], "No module named 'no_such_module'"),
        (["worker", "tests.workers.sample:app", "--agent", "nope"], "has no agent nope"),
        (["agents", "tests.workers.sample"], "expected MODULE:APP"),
        (["frob"], "invalid choice: 'frob'"),
    ],
)
def test_bad_input_fails_at_once_with_one_line_and_exit_2(args: List[str], says: str) -> None:
    env = {"REPLIES_BROKER": ""}
    line = assert_one_line_error(run(*args, env=env), cli.EXIT_USAGE)
    assert says in line


def test_a_bad_json_line_fails_before_anything_is_sent() -> None:
    done = run("map", "t", "--broker", "kafka://127.0.0.1:9", stdin='1\n{"a": \n')
    assert "line 2 of stdin is not JSON" in assert_one_line_error(done, cli.EXIT_USAGE)


def test_traceback_on_request() -> None:
    done = run("--traceback", "demo", "--broker", "memory")
    assert done.code == cli.EXIT_USAGE
    assert "Traceback" in done.stderr and "needs a scheme" in done.stderr


def test_agents_lists_names_and_topics() -> None:
    done = run("agents", "tests.workers.sample:app", env={"REPLIES_TEST_APP_ID": "listed"})
    assert done.code == 0, done
    assert "listed-work" in done.stdout and "listed-fail" in done.stdout
    assert "work" in done.stdout and "4" in done.stdout  # its concurrency


def test_a_memory_worker_warns_that_no_other_process_can_reach_it(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("REPLIES_TEST_BROKER_URL", None)  # the sample App then uses memory://
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "replies", "worker", "tests.workers.sample:app"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while b"serving agent fail" not in log.read_bytes():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert "no other process can reach" in log.read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


# -- against a worker on the real broker ------------------------------------------


class Served(NamedTuple):
    app_id: str
    broker: str
    pid: int


@pytest.fixture(scope="module")
def served(
    kafka_bootstrap: str, kafka_client_settings: Dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """A worker process serving the sample agents ``work`` and ``fail``."""
    app_id = f"c{uuid.uuid4().hex[:8]}"
    broker = f"kafka://{kafka_bootstrap}"
    log = tmp_path_factory.mktemp("cli") / "worker.log"
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        REPLIES_TEST_BROKER_URL=broker,
        REPLIES_TEST_APP_ID=app_id,
        REPLIES_TEST_KAFKA_SETTINGS=json.dumps(kafka_client_settings),
    )
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "replies", "worker", "tests.workers.sample:app"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        while b"serving agent fail" not in log.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        yield Served(app_id, broker, process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(30)


def client(served: Served, *args: str, stdin: str = "") -> Done:
    """A client command with the broker from ``$REPLIES_BROKER``, as a user sets it."""
    return run(*args, stdin=stdin, env={"REPLIES_BROKER": served.broker})


@pytest.mark.integration
def test_ask_prints_the_reply_as_json(served: Served) -> None:
    done = client(served, "ask", f"{served.app_id}-work", '{"a": [1, 2]}', "--key", "k1")
    assert done.code == 0, done
    assert json.loads(done.stdout) == {"value": {"a": [1, 2]}, "pid": served.pid}
    assert done.stderr == ""


@pytest.mark.integration
def test_ask_reads_the_value_from_stdin(served: Served) -> None:
    done = client(served, "ask", f"{served.app_id}-work", "-", stdin='"from stdin"\n')
    assert done.code == 0, done
    assert json.loads(done.stdout)["value"] == "from stdin"


@pytest.mark.integration
def test_map_prints_a_json_line_per_reply(served: Served, tmp_path: Path) -> None:
    values = tmp_path / "values.jsonl"
    values.write_text("".join(f"{json.dumps({'n': i})}\n" for i in range(25)) + "\n")
    done = client(served, "map", f"{served.app_id}-work", "--file", str(values))
    assert done.code == 0, done
    replies_ = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(r["value"]["n"] for r in replies_) == list(range(25))
    assert done.stderr == ""  # not a terminal: no progress bar


@pytest.mark.integration
def test_send_delivers_a_request_that_wants_no_reply(
    served: Served, kafka_bootstrap: str
) -> None:
    import kafka

    marker = uuid.uuid4().hex
    done = client(served, "send", f"{served.app_id}-work", json.dumps(marker))
    assert (done.code, done.stdout, done.stderr) == (0, "", "")
    consumer = kafka.KafkaConsumer(
        f"{served.app_id}-work",
        bootstrap_servers=kafka_bootstrap.split(","),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=10_000,
    )
    try:
        found = [r for r in consumer if r.value == json.dumps(marker).encode()]
    finally:
        consumer.close()
    assert len(found) == 1
    assert not any(key == "Faust-Ag-ReplyTo" for key, _ in found[0].headers)


# Tansu: kafka-python cannot read its DescribeGroups answers, so ping cannot work there.
@pytest.mark.kafka_only
@pytest.mark.integration
def test_ping_reports_the_group_and_its_members(served: Served) -> None:
    done = client(served, "ping", f"{served.app_id}-work")
    assert done.code == 0, done
    assert f"topic {served.app_id}-work: 4 partitions" in done.stdout
    assert f"group {served.app_id}-work: 1 member, lag " in done.stdout


@pytest.mark.integration
def test_remote_error_exits_4(served: Served) -> None:
    line = assert_one_line_error(
        client(served, "ask", f"{served.app_id}-fail", '"x"'), cli.EXIT_REMOTE
    )
    assert line == "replies: the agent raised KeyError: 'x'"


# Tansu: kafka-python cannot read its DescribeGroups answers, so ping cannot work there.
@pytest.mark.kafka_only
@pytest.mark.integration
def test_timeout_exits_3_and_names_the_topic(served: Served, kafka_bootstrap: str) -> None:
    # A topic that exists but that nobody reads.
    import kafka

    topic = f"{served.app_id}-unread"
    admin = kafka.KafkaAdminClient(bootstrap_servers=kafka_bootstrap.split(","))
    try:
        admin.create_topics({topic: {"num_partitions": 1, "replication_factor": -1}})
    finally:
        admin.close()
    line = assert_one_line_error(
        client(served, "ask", topic, "1", "--timeout", "1"), cli.EXIT_TIMEOUT
    )
    assert f"nobody answered on topic {topic} within 1.0 s" in line
    assert f"`replies ping {topic}`" in line
    # ping says the same thing without waiting: nobody serves it.
    done = client(served, "ping", topic)
    line = assert_one_line_error(done, cli.EXIT_NO_RESPONDERS)
    assert "no consumer group reads it" in line
    assert f"topic {topic}: 1 partition\n" == done.stdout


@pytest.mark.integration
def test_no_responders_exits_5(served: Served) -> None:
    missing = f"{served.app_id}-missing-{uuid.uuid4().hex[:6]}"
    for args in (["ask", missing, "1"], ["map", missing], ["send", missing, "1"], ["ping", missing]):
        line = assert_one_line_error(client(served, *args, stdin="1\n"), cli.EXIT_NO_RESPONDERS)
        assert missing in line and "does not exist" in line


@pytest.mark.integration
def test_unreachable_broker_exits_6_after_the_connect_timeout() -> None:
    # Nothing listens on port 9: without --connect-timeout kafka-python
    # would try for 30 s.
    for command in (["ask", "t", "1"], ["ping", "t"], ["send", "t", "1"], ["demo"]):
        line = assert_one_line_error(
            run(*command, "--broker", "kafka://127.0.0.1:9", "--connect-timeout", "1"),
            cli.EXIT_CONNECTION,
        )
        assert "127.0.0.1:9" in line


# Tansu holds a group join for half kafka-python's default 45 s session timeout.
@pytest.mark.kafka_only
@pytest.mark.integration
def test_worker_serves_only_the_agents_named_with_the_concurrency_given(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    app_id = f"o{uuid.uuid4().hex[:8]}"
    broker = f"kafka://{kafka_bootstrap}"
    log = tmp_path / "worker.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), REPLIES_TEST_APP_ID=app_id)
    env.pop("REPLIES_TEST_BROKER_URL", None)  # --broker replaces the App's memory://
    command = ["worker", "tests.workers.sample:app", "--broker", broker]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "replies", *command, "--agent", "work", "--concurrency", "2"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        while b"serving agent work" not in log.read_bytes():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        client_env = {"REPLIES_BROKER": broker}
        done = run("ask", f"{app_id}-work", "7", env=client_env)
        assert done.code == 0 and json.loads(done.stdout)["value"] == 7, done
        # `fail` is not served: its topic was never created.
        assert_one_line_error(run("ask", f"{app_id}-fail", "7", env=client_env), cli.EXIT_NO_RESPONDERS)
        text = log.read_text()
        assert "serving agent fail" not in text and "in-process broker" not in text
        assert "agent work handles 2 requests at once" in text
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
