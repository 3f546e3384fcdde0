"""Tracing headers do not disturb a Faust agent, on a real broker."""

from __future__ import annotations

import uuid
from typing import Any, Dict, Iterator

import pytest

import replies
from replies.observe import otel
from tests.faust import procs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Traces this test's requests with a provider of its own (not the
    process-wide one, which other tests must not see)."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    monkeypatch.setattr(otel, "tracer", lambda: provider.get_tracer("test"))
    yield spans
    provider.shutdown()


@pytest.mark.parametrize("mode", ["headers", "envelope"])
def test_a_faust_agent_answers_traced_requests(
    faust_worker: procs.FaustWorker,
    kafka_bootstrap: str,
    kafka_client_settings: Dict[str, Any],
    exporter: Any,
    mode: str,
) -> None:
    app = replies.App(
        f"traced-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{kafka_bootstrap}",
        request_mode=mode,
        request_timeout=30,
        **kafka_client_settings,
    )
    with app:
        double = app.topic(faust_worker.topics["double"])
        assert double.ask(21) == 42
        assert double.join([1, 2, 3]) == [2, 4, 6]
        figures = app.stats()["asking"]["topics"][double.topic_name]
    assert figures["sent"] == figures["replies"] == 4
    names = sorted(span.name for span in exporter.get_finished_spans())
    assert names == [f"ask {double.topic_name}", f"map {double.topic_name}"]
    assert all(span.status.is_ok for span in exporter.get_finished_spans())
