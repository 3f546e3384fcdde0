"""The ``replies`` command against a real Faust worker: ask it and ping it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faust import procs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]


def replies_command(kafka_bootstrap: str, *args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(
        [sys.executable, "-m", "replies", *args],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), REPLIES_BROKER=f"kafka://{kafka_bootstrap}"),
        capture_output=True,
        text=True,
        timeout=120,
    )


# Tansu: kafka-python cannot read its DescribeGroups answers, so ping cannot work there.
@pytest.mark.kafka_only
def test_ask_and_ping_a_faust_agent_from_the_shell(
    faust_worker: procs.FaustWorker, kafka_bootstrap: str
) -> None:
    topic = faust_worker.topics["double"]
    asked = replies_command(kafka_bootstrap, "ask", topic, "21", "--timeout", "60")
    assert (asked.returncode, json.loads(asked.stdout or "null")) == (0, 42), asked.stderr
    # Faust's members subscribe with user data kafka-python cannot decode;
    # ping still finds them.
    pinged = replies_command(kafka_bootstrap, "ping", topic)
    assert pinged.returncode == 0, pinged
    assert "1 member, lag " in pinged.stdout
