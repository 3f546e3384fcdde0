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
