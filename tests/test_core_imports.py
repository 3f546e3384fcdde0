"""The core layer stays free of Kafka and strictly typed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE_MODULES = ["replies.errors", "replies.core.promise", "replies.core.table", "replies.core.codec"]


def run_python(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a fresh interpreter in the repository root."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_importing_the_core_loads_no_kafka_module() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for name in {CORE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = run_python("-c", code)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    assert set(CORE_MODULES) <= set(loaded)  # the imports really happened
    assert [m for m in loaded if m == "kafka" or m.startswith("kafka.")] == []


@pytest.mark.timeout(300)
def test_package_is_clean_under_mypy_strict() -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (it is in the test extras)")
    proc = run_python("-m", "mypy", "--strict", "replies")
    assert proc.returncode == 0, proc.stdout + proc.stderr
