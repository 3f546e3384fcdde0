"""The Faust side of the interoperability tests works on the suite's broker.

A real Faust client asks a real Faust worker (both from ``.venv-faust``, each
in its own process): if this fails, interoperability failures elsewhere say
nothing about ``replies``.
"""

from __future__ import annotations

import pytest

from tests.faust.conftest import FaustClient
from tests.faust.procs import FaustWorker
from tests.faust.records import record

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]



def test_faust_client_asks_faust_worker(faust_worker: FaustWorker, faust_client: FaustClient) -> None:
    topics = faust_worker.topics
    # Faust's own naming, f"{app_id}-{module}.{function}": the worker really
    # subscribed to the names the tests use.
    assert topics["double"] == f"{faust_worker.app_id}-fapp.double"
    assert f"{topics['double']} " in faust_worker.log_text()
    point = record(1, 2)
    out = faust_client([
        {"op": "ask", "topic": topics["double"], "value": 21},
        {"op": "ask", "topic": topics["double"], "value": 21, "key": "k1", "envelope": True},
        {"op": "join", "topic": topics["double"], "values": [1, 2, 3]},
        {"op": "ask", "topic": topics["flip"], "value": point},
        {"op": "ask", "topic": topics["fail"], "value": 7, "timeout": 3},
    ])
    results = [{k: r.get(k) for k in ("ok", "value", "error")} for r in out["results"]]
    assert results == [
        {"ok": True, "value": 42, "error": None},
        {"ok": True, "value": 42, "error": None},
        {"ok": True, "value": [2, 4, 6], "error": None},
        {"ok": True, "value": record(2, 1), "error": None},
        {"ok": False, "value": None, "error": "timeout"},
    ]
    assert out["reply_to"].startswith("f-reply-")
    assert out["faust"] == "0.15.3"

