"""Apps across ``fork``: each process gets its own connections, threads and
reply topic; the parent is unaffected; a child never deletes the parent's
topic. On the real broker, in a separate process (``tests/workers/forking.py``)
so that pytest itself is never forked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Dict

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def forked(kafka_bootstrap: str, kafka_client_settings: Dict[str, Any]) -> Dict[str, Any]:
    env = dict(
        os.environ,
        REPLIES_TEST_BROKER_URL=f"kafka://{kafka_bootstrap}",
        REPLIES_TEST_APP_ID=f"fork{uuid.uuid4().hex[:8]}",
        REPLIES_TEST_KAFKA_SETTINGS=json.dumps(kafka_client_settings),
        PYTHONPATH=str(ROOT),
    )
    done = subprocess.run(
        [sys.executable, "-m", "tests.workers.forking"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    result: Dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["stderr"] = done.stderr
    return result


def test_children_answer_through_apps_made_and_started_before_the_fork(
    forked: Dict[str, Any]
) -> None:
    assert forked["statuses"] == [0, 0]
    assert len(forked["children"]) == 2
    for child in forked["children"]:
        pid = child["pid"]
        assert child["started_answer"]["value"] == f"started {pid}"
        assert child["lazy_answer"]["value"] == f"lazy {pid}"
        assert child["joined"] == [{"value": i, "served_by": forked["parent_pid"]} for i in range(20)]


def test_every_process_has_its_own_reply_topic(forked: Dict[str, Any]) -> None:
    topics = [forked["parent_reply_to"]]
    for child in forked["children"]:
        topics += [child["started_reply_to"], child["lazy_reply_to"]]
    assert len(set(topics)) == len(topics) == 5
    assert forked["parent_reply_to_after"] == forked["parent_reply_to"]


def test_the_parent_is_unaffected_and_keeps_its_topic(forked: Dict[str, Any]) -> None:
    assert forked["before"]["value"] == "parent before"
    assert [a["value"] for a in forked["after"]] == [f"parent after {i}" for i in range(20)]
    assert forked["parent_topic_exists"] is True
    assert "Traceback" not in forked["stderr"], forked["stderr"][-3000:]


def test_children_delete_their_own_topics_at_exit(forked: Dict[str, Any]) -> None:
    assert forked["child_topics_left"] == []


MULTIPROCESSING_CHILD = """
import json, multiprocessing, os
import replies
settings = json.loads(os.environ["REPLIES_TEST_KAFKA_SETTINGS"])
broker = os.environ["REPLIES_TEST_BROKER_URL"]
app_id = os.environ["REPLIES_TEST_APP_ID"]
server = replies.App(app_id, broker=broker, topic_partitions=1, **settings)
@server.agent()
def echo(value):
    return value
client = replies.App(app_id + "-client", broker=broker, request_timeout=20, **settings)

def child(results):
    results.put((client.topic(echo.topic_name).ask(os.getpid()), client.reply_to))

if __name__ == "__main__":
    server.serve()
    results = multiprocessing.get_context("fork").Queue()
    process = multiprocessing.get_context("fork").Process(target=child, args=(results,))
    process.start()
    answer, reply_to = results.get(timeout=60)
    process.join(60)
    print(json.dumps({"answer": answer, "child": process.pid, "code": process.exitcode,
                      "reply_to": reply_to, "exists": server.transport.topic_exists(reply_to)}))
    server.close()
"""


def test_a_multiprocessing_child_closes_its_app(
    kafka_bootstrap: str, kafka_client_settings: Dict[str, Any], tmp_path: Path
) -> None:
    # multiprocessing ends a child with os._exit(): no exit hooks, only its
    # own finalizers; the child's reply topic must still be deleted.
    script = tmp_path / "mp_child.py"
    script.write_text(MULTIPROCESSING_CHILD)
    env = dict(
        os.environ,
        REPLIES_TEST_BROKER_URL=f"kafka://{kafka_bootstrap}",
        REPLIES_TEST_APP_ID=f"mp{uuid.uuid4().hex[:8]}",
        REPLIES_TEST_KAFKA_SETTINGS=json.dumps(kafka_client_settings),
        PYTHONPATH=str(ROOT),
    )
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["answer"] == result["child"] and result["code"] == 0
    assert result["exists"] is False, "the child deleted its own reply topic"


INHERITED_PRODUCER_CHILD = """
import json, os, sys
import replies
app = replies.App("exit-hook", broker=os.environ["REPLIES_TEST_BROKER_URL"],
                  **json.loads(os.environ["REPLIES_TEST_KAFKA_SETTINGS"]))
app.start()
inherited = app.transport
pid = os.fork()
if pid == 0:
    # The reset ran at the fork: the parent's producer must not be flushed
    # by kafka-python's exit hook here, where its sender thread is missing.
    hook = inherited._producer._cleanup
    os._exit(0 if hook is None else 3)
_, status = os.waitpid(pid, 0)
app.close()
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_child_never_runs_the_parents_producer_exit_hook(
    kafka_bootstrap: str, kafka_client_settings: Dict[str, Any]
) -> None:
    env = dict(
        os.environ,
        REPLIES_TEST_BROKER_URL=f"kafka://{kafka_bootstrap}",
        REPLIES_TEST_KAFKA_SETTINGS=json.dumps(kafka_client_settings),
    )
    done = subprocess.run(
        [sys.executable, "-c", INHERITED_PRODUCER_CHILD],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
