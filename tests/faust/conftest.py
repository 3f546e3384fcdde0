"""Fixtures for tests that run real Faust processes next to the suite's broker.

* ``faust_python``: the interpreter of ``.venv-faust``, built on first use
  (see ``setup_venv.py``); a venv that cannot be built fails the tests,
  it never skips them.
* ``faust_worker``: a running ``fapp`` worker with a fresh app id on the
  session's broker, one per test module; ``faust_worker.topics["double"]``
  etc. name its topics.
* ``faust_client``: ``faust_client(ops, **kw)`` runs ``client.py`` once
  against the session's broker and returns its JSON output.
* ``our_worker``: ``python -m replies worker tests.faust.ours:app`` with a
  fresh app id on the session's broker, one per test module;
  ``our_worker.topics["double"]`` etc. name its topics.

Every process logs to a file in the test run's temporary directory and is
stopped when its fixture ends, however the test went.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Sequence, TypeVar

import pytest

from tests.faust import procs


@pytest.fixture(scope="session")
def faust_python() -> Path:
    try:
        return procs.faust_python()
    except Exception as exc:  # no PyPI, pip failure: say so plainly
        pytest.fail(f"cannot set up the Faust virtualenv: {exc!r}", pytrace=False)


_Worker = TypeVar("_Worker", procs.FaustWorker, procs.OurWorker)


def _running(worker: _Worker) -> Iterator[_Worker]:
    """Start ``worker`` for a fixture, fail the test if it cannot, stop it after."""
    try:
        worker.start()
        yield worker
    except procs.WorkerError as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def faust_worker(
    kafka_bootstrap: str, faust_python: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[procs.FaustWorker]:
    app_id = f"fz{uuid.uuid4().hex[:8]}"
    worker = procs.FaustWorker(kafka_bootstrap, app_id=app_id, python=faust_python,
                               workdir=tmp_path_factory.mktemp(f"faust-worker-{app_id}"))
    yield from _running(worker)


FaustClient = Callable[..., Dict[str, Any]]


@pytest.fixture
def faust_client(kafka_bootstrap: str, faust_python: Path) -> FaustClient:
    def run(ops: Sequence[Mapping[str, Any]], **kwargs: Any) -> Dict[str, Any]:
        return procs.run_client(kafka_bootstrap, ops, python=faust_python, **kwargs)

    return run


@pytest.fixture(scope="module")
def our_worker(
    kafka_bootstrap: str, kafka_client_settings: Dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[procs.OurWorker]:
    app_id = f"ours{uuid.uuid4().hex[:8]}"
    worker = procs.OurWorker(kafka_bootstrap, app_id=app_id, kafka_settings=kafka_client_settings,
                             workdir=tmp_path_factory.mktemp(f"replies-worker-{app_id}"))
    yield from _running(worker)
