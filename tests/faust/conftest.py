"""Fixtures for tests that run real Faust processes next to the suite's broker.

* ``faust_python``: the interpreter of ``.venv-faust`` (built once; see
  ``setup_venv.py``).
* ``faust_worker``: a running ``fapp`` worker with a fresh app id on the
  session's broker; ``faust_worker.topics["double"]`` etc. name its topics.
* ``faust_client``: ``faust_client(ops, **kw)`` runs ``client.py`` once
  against the session's broker and returns its JSON output.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Sequence

import pytest

from tests.faust import procs


@pytest.fixture(scope="session")
def faust_python() -> Path:
    try:
        return procs.faust_python()
    except Exception as exc:  # no PyPI, pip failure: say so plainly
        pytest.fail(f"cannot set up the Faust virtualenv: {exc!r}", pytrace=False)


@pytest.fixture
def faust_worker(kafka_bootstrap: str, faust_python: Path) -> Iterator[procs.FaustWorker]:
    worker = procs.FaustWorker(kafka_bootstrap, app_id=f"fz{uuid.uuid4().hex[:8]}",
                               python=faust_python)
    try:
        worker.start()
    except procs.FaustWorkerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield worker
    finally:
        worker.stop()


FaustClient = Callable[..., Dict[str, Any]]


@pytest.fixture
def faust_client(kafka_bootstrap: str, faust_python: Path) -> FaustClient:
    def run(ops: Sequence[Mapping[str, Any]], **kwargs: Any) -> Dict[str, Any]:
        return procs.run_client(kafka_bootstrap, ops, python=faust_python, **kwargs)

    return run
