"""Observability: stats(), listeners, current_request, logs, Prometheus,
OpenTelemetry; over the memory transport and a real Kafka broker alike."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

import replies
from replies.observe.logs import BatchingHandler, LogFormatter

pytestmark = pytest.mark.timeout(120)

MakeApp = Callable[..., replies.App]
ROOT = Path(__file__).resolve().parent.parent


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def _topic_stats(app: replies.App, topic: str) -> Dict[str, Any]:
    stats: Dict[str, Any] = app.stats()["asking"]["topics"][topic]
    return stats


def _served(make_app: MakeApp) -> Tuple[replies.App, replies.Agent, threading.Event]:
    """An App serving ``work``: raises on "bad", waits for the event on
    "stuck" (at most 10 s), else echoes."""
    app = make_app("obs")
    release = threading.Event()

    @app.agent(concurrency=4)
    def work(value: Any) -> Any:
        if value == "bad":
            raise ValueError("bad value")
        if value == "stuck":
            release.wait(10)
        return value

    app.start()
    app.serve()
    return app, work, release


# -- the asking side ------------------------------------------------------------


def test_stats_count_replies_error_replies_and_latency(make_app: MakeApp) -> None:
    app, work, _ = _served(make_app)
    for i in range(3):
        assert work.ask(i) == i
    with pytest.raises(replies.RemoteError):
        work.ask("bad")
    assert work.join(range(4)) == [0, 1, 2, 3]
    assert sorted(work.map(range(2))) == [0, 1]
    assert list(work.stream(7)) == [7]

    figures = _topic_stats(app, work.topic_name)
    assert figures["sent"] == 3 + 1 + 4 + 2 + 1
    assert figures["replies"] == figures["sent"]
    assert figures["error_replies"] == 1
    assert figures["pending"] == 0
    assert figures["timeouts"] == figures["cancelled"] == figures["closed"] == 0
    latency = figures["ask_seconds"]
    # Single requests only (ask and stream), error replies included.
    assert latency["count"] == 5
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"] < 20
    total = app.stats()["asking"]["total"]
    assert total["sent"] == figures["sent"] and total["replies"] == figures["replies"]
    assert total["ask_seconds"]["count"] == 5
    json.dumps(app.stats())  # plain data


def test_stats_count_timeouts_cancellations_and_late_replies(make_app: MakeApp) -> None:
    app, work, release = _served(make_app)
    topic = work.topic_name
    with pytest.raises(replies.ReplyTimeoutError):
        work.ask("stuck", timeout=0.3)  # the caller's own wait runs out
    expiring = work.ask_nowait("stuck", timeout=0.3)  # the reply thread expires it
    with pytest.raises(replies.ReplyTimeoutError):
        expiring.result(10)
    with pytest.raises(replies.ReplyTimeoutError):
        work.join(["stuck", "stuck"], timeout=0.3)
    cancelled = work.ask_nowait("stuck", timeout=None)
    in_flight = _topic_stats(app, topic)
    assert in_flight["pending"] == 1
    _wait_for(lambda: app.stats()["serving"]["work"]["in_flight"] >= 1)
    assert cancelled.cancel()
    # A map whose reader stops early cancels the requests not answered.
    replies_so_far = work.map(["stuck", "stuck"], timeout=None)
    replies_so_far.close()

    figures = _topic_stats(app, topic)
    assert figures["sent"] == 7
    assert figures["timeouts"] == 4
    assert figures["cancelled"] == 3
    assert figures["pending"] == 0
    assert figures["replies"] == 0
    assert figures["pending"] == 0
    release.set()
    # The cancelled request has no deadline: its reply comes, to nobody.
    _wait_for(lambda: app.stats()["asking"]["total"]["dropped_replies"] >= 1)


def test_stats_count_send_errors_and_requests_failed_by_close(make_app: MakeApp) -> None:
    app, work, release = _served(make_app)
    client = make_app("client").start()
    missing = f"{client.id}-nobody"
    with pytest.raises(replies.NoRespondersError):
        client.topic(missing).ask(1, timeout=5)
    waiting = client.topic(work.topic_name).ask_nowait("stuck", timeout=None)
    client.close()
    with pytest.raises(replies.ClosedError):
        waiting.result(5)
    release.set()
    stats = client.stats()["asking"]
    assert stats["topics"][missing]["send_errors"] == 1
    assert stats["topics"][missing]["pending"] == 0
    assert stats["topics"][work.topic_name]["closed"] == 1
    assert stats["total"]["pending"] == 0
    assert stats["total"]["sent"] == 2


def test_undecodable_and_unknown_replies_are_counted(make_app: MakeApp) -> None:
    app, work, _ = _served(make_app)
    from replies.core.codec import Message

    app.transport.produce(app.reply_to, Message(None, b"\xff not json", [])).result(20)
    app.transport.produce(app.reply_to, app.codec.encode_reply("nobody", 1)).result(20)
    assert work.ask("after") == "after"
    _wait_for(
        lambda: app.stats()["asking"]["total"]["undecodable_replies"] >= 1
        and app.stats()["asking"]["total"]["dropped_replies"] >= 1
    )


def test_metrics_can_be_turned_off(make_app: MakeApp) -> None:
    app = make_app("off", metrics=False)

    @app.agent()
    def echo(value: Any) -> Any:
        return value

    app.start()
    app.serve()
    assert echo.ask(1) == 1 and echo.join([2, 3]) == [2, 3]
    assert app.observer is None
    with pytest.raises(ValueError, match="metrics=False"):
        app.stats()


# -- listeners ------------------------------------------------------------------


class Recorder(replies.Listener):
    def __init__(self) -> None:
        self.events: List[Tuple[Any, ...]] = []

    def on_request_sent(self, topic: str, correlation_id: str) -> None:
        self.events.append(("sent", topic, correlation_id))

    def on_reply(self, topic: str, correlation_id: str, seconds: float) -> None:
        assert seconds >= 0
        self.events.append(("reply", topic, correlation_id))

    def on_error_reply(
        self, topic: str, correlation_id: str, error: replies.RemoteError
    ) -> None:
        self.events.append(("error", topic, correlation_id, error.type_name))

    def on_timeout(self, topic: str, correlation_id: str, timeout: Optional[float]) -> None:
        self.events.append(("timeout", topic, correlation_id, timeout))

    def kinds(self) -> List[str]:
        return [event[0] for event in self.events]


class Raiser:
    """A listener (not a Listener subclass) whose every method raises."""

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("on_"):
            raise AttributeError(name)

        def fail(*args: Any) -> None:
            raise RuntimeError(f"listener bug in {name}")

        return fail


def test_listeners_hear_every_event_and_one_that_raises_breaks_nothing(
    make_app: MakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    app, work, release = _served(make_app)
    recorder = Recorder()
    app.add_listener(Raiser())
    app.add_listener(recorder)
    app.add_listener(recorder)  # once is enough
    with caplog.at_level(logging.ERROR, logger="replies.listeners"):
        promise = work.ask_nowait(1)
        assert promise.result(20) == 1
        with pytest.raises(replies.RemoteError):
            work.ask("bad")
        with pytest.raises(replies.ReplyTimeoutError):
            work.ask("stuck", timeout=0.3)
        assert work.join([5, 6]) == [5, 6]
    release.set()

    topic = work.topic_name
    # Listeners run on the reply thread, maybe just after the caller woke.
    _wait_for(lambda: recorder.kinds().count("reply") >= 3)
    assert recorder.kinds().count("sent") == 5
    assert all(event[1] == topic for event in recorder.events)
    assert ("reply", topic, promise.correlation_id) in recorder.events
    assert recorder.kinds().count("reply") == 3
    assert [e[3] for e in recorder.events if e[0] == "error"] == ["ValueError"]
    assert [e[3] for e in recorder.events if e[0] == "timeout"] == [0.3]
    assert "listener bug in on_reply" in caplog.text
    assert "listener bug in on_request_sent" in caplog.text

    app.remove_listener(recorder)
    before = len(recorder.events)
    assert work.ask(2) == 2
    time.sleep(0.1)
    assert len(recorder.events) == before


# -- optional parts stay unloaded ----------------------------------------------------


def _run(code: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **(env or {}), "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_opentelemetry_in_use_nothing_optional_is_imported() -> None:
    code = (
        "import json, sys, replies\n"
        "app = replies.App('plain', broker='memory://plain')\n"
        "@app.agent()\n"
        "def echo(v):\n"
        "    return v\n"
        "with app:\n"
        "    app.serve()\n"
        "    assert echo.ask(1, timeout=10) == 1 and echo.join([1, 2]) == [1, 2]\n"
        "    app.stats()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    assert "replies.observe.observer" in loaded  # the counting did run
    optional = [m for m in loaded if m.split(".")[0] in ("opentelemetry", "prometheus_client")]
    assert optional == []


# -- the serving side ---------------------------------------------------------------


def test_stats_count_what_an_agent_served(make_app: MakeApp) -> None:
    app, work, _ = _served(make_app)
    for i in range(2):
        assert work.ask(i) == i
    with pytest.raises(replies.RemoteError):
        work.ask("bad")
    work.cast("no reply").result(20)
    # A request whose caller stopped waiting before it was read.
    stale = app.codec.encode_request(
        "stale", reply_to=app.reply_to, correlation_id="stale-1", deadline=time.time() - 1
    )
    app.transport.produce(work.topic_name, stale).result(20)
    # A request that cannot be decoded and names no reply address.
    from replies.core.codec import Message

    app.transport.produce(work.topic_name, Message(None, b"\xff{", [])).result(20)

    def served() -> Dict[str, Any]:
        figures: Dict[str, Any] = app.stats()["serving"]["work"]
        return figures

    _wait_for(
        lambda: served()["handled"] == 4
        and served()["skipped_expired"] == 1
        and served()["skipped_undecodable"] == 1
    )
    figures = served()
    assert figures["topic"] == work.topic_name
    assert figures["error_replies"] == 1
    assert figures["casts"] == 1
    assert figures["in_flight"] == 0
    handler = figures["handler_seconds"]
    assert handler["count"] == 4
    assert 0 <= handler["p50"] <= handler["p99"] <= handler["max"] < 20
    assert figures["lag"] is None


# Lag comes from describe_readers, which kafka-python cannot do on Tansu.
@pytest.mark.kafka_only
def test_stats_report_the_lag_of_a_served_agent_on_request(make_app: MakeApp) -> None:
    app, work, _ = _served(make_app)
    assert work.join(range(3)) == [0, 1, 2]
    _wait_for(lambda: app.stats(lag=True)["serving"]["work"]["lag"] == 0)


def test_a_handler_reads_its_request_with_current_request(make_app: MakeApp) -> None:
    app = make_app("ctx")

    @app.agent()
    def meta(value: Any) -> Dict[str, Any]:
        request = replies.current_request()
        assert request is not None
        return {
            "agent": request.agent,
            "topic": request.topic,
            "partition": request.partition,
            "offset": request.offset,
            "key": request.key.decode() if request.key else None,
            "correlation_id": request.correlation_id,
            "header_cid": (request.header("Faust-Ag-CorrelationId") or b"").decode(),
            "reply_to": request.reply_to,
            "deadline": request.deadline,
        }

    app.start()
    app.serve()
    assert replies.current_request() is None
    before = time.time()
    promise = meta.ask_nowait("x", key="k1", timeout=20)
    got = promise.result(20)
    assert got["agent"] == "meta" and got["topic"] == meta.topic_name
    assert isinstance(got["partition"], int) and isinstance(got["offset"], int)
    assert got["key"] == "k1"
    assert got["correlation_id"] == got["header_cid"] == promise.correlation_id
    assert got["reply_to"] == app.reply_to
    assert before + 19 < got["deadline"] < time.time() + 21
    assert replies.current_request() is None


def test_listeners_hear_each_handled_request(make_app: MakeApp) -> None:
    app, work, _ = _served(make_app)
    handled: List[Tuple[str, Any, Optional[str]]] = []

    class Handled:
        def on_request_handled(
            self, agent: str, request: replies.RequestInfo, seconds: float, error: Any
        ) -> None:
            assert seconds >= 0
            handled.append((agent, request.correlation_id, type(error).__name__ if error else None))

    app.add_listener(Handled())
    promise = work.ask_nowait(1)
    assert promise.result(20) == 1
    with pytest.raises(replies.RemoteError):
        work.ask("bad")
    _wait_for(lambda: len(handled) == 2)
    assert handled[0] == ("work", promise.correlation_id, None)
    assert handled[1][0] == "work" and handled[1][2] == "ValueError"


# -- Prometheus ---------------------------------------------------------------------


def test_prometheus_exposes_the_same_figures(make_app: MakeApp) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from replies.observe.prometheus import register

    app, work, _ = _served(make_app)
    registry = prometheus_client.CollectorRegistry()
    register(app, registry)
    assert work.join(range(3)) == [0, 1, 2]
    with pytest.raises(replies.RemoteError):
        work.ask("bad")
    _wait_for(lambda: app.stats()["serving"]["work"]["handled"] == 4)
    from prometheus_client.parser import text_string_to_metric_families

    text = prometheus_client.generate_latest(registry).decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    asked = {"app": app.id, "topic": work.topic_name}
    assert value("replies_ask_requests_total", **asked) == 4
    assert value("replies_ask_replies_total", **asked) == 4
    assert value("replies_ask_error_replies_total", **asked) == 1
    assert value("replies_ask_timeouts_total", **asked) == 0
    assert value("replies_ask_pending", **asked) == 0
    assert value("replies_ask_latency_observations_total", **asked) == 1
    p99 = value("replies_ask_latency_seconds", quantile="0.99", **asked)
    assert p99 == app.stats()["asking"]["topics"][work.topic_name]["ask_seconds"]["p99"]
    served = {"app": app.id, "agent": "work"}
    assert value("replies_agent_handled_total", **served) == 4
    assert value("replies_agent_error_replies_total", **served) == 1
    assert value("replies_agent_in_flight", **served) == 0
    assert value("replies_agent_handler_latency_observations_total", **served) == 4
    assert value("replies_agent_handler_latency_seconds", quantile="1", **served) > 0
    assert value("replies_dropped_replies_total", app=app.id) == 0


# -- OpenTelemetry ------------------------------------------------------------------

TRACED = r'''
import json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import replies

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("test")

app = replies.App(sys.argv[2], broker=sys.argv[1], topic_partitions=2, **json.loads(sys.argv[3]))
inside = {}

@app.agent(concurrency=2)
def traced(value):
    with tracer.start_as_current_span("inside the handler") as span:
        inside[value] = format(span.get_span_context().trace_id, "032x")
    return value

@app.agent()
def broken(value):
    raise ValueError("broken on purpose")

with app:
    app.serve()
    replies_seen = app.transport.reply_reader(app.reply_to, timeout=20)
    with tracer.start_as_current_span("caller"):
        assert traced.ask(1, timeout=20) == 1
    with tracer.start_as_current_span("batch caller"):
        assert traced.join([2, 3], timeout=20) == [2, 3]
    with tracer.start_as_current_span("failing caller"):
        try:
            broken.ask(1, timeout=20)
        except replies.RemoteError:
            pass
    headers = []
    while len(headers) < 4:
        for record in replies_seen.poll(1.0):
            headers.append({k: v.decode() for k, v in record.headers if k == "traceparent"})
    replies_seen.close()
provider.force_flush()
spans = [
    {
        "name": s.name,
        "kind": s.kind.name,
        "trace": format(s.context.trace_id, "032x"),
        "id": format(s.context.span_id, "016x"),
        "parent": format(s.parent.span_id, "016x") if s.parent else None,
        "status": s.status.status_code.name,
    }
    for s in exporter.get_finished_spans()
]
print(json.dumps({"spans": spans, "inside": inside, "reply_headers": headers}))
'''


def test_one_trace_from_the_callers_span_to_the_handler_and_back(
    broker_url: str, client_settings: Dict[str, Any]
) -> None:
    pytest.importorskip("opentelemetry.sdk")
    app_id = f"tr{os.urandom(4).hex()}"
    proc = subprocess.run(
        [sys.executable, "-c", TRACED, broker_url, app_id, json.dumps(client_settings)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    spans = {(s["name"], s["trace"]): s for s in out["spans"]}
    topic = f"{app_id}-traced"

    def one(name: str, trace_id: Optional[str] = None) -> Dict[str, Any]:
        found = [s for s in out["spans"] if s["name"] == name and trace_id in (None, s["trace"])]
        assert len(found) == 1, (name, out["spans"])
        return found[0]

    # ask: caller -> CLIENT span -> SERVER span -> the handler's own span.
    caller = one("caller")
    trace_id = caller["trace"]
    client = one(f"ask {topic}", trace_id)
    server = one(f"process {topic}", trace_id)
    assert client["kind"] == "CLIENT" and client["parent"] == caller["id"]
    assert server["kind"] == "SERVER" and server["parent"] == client["id"]
    handler = one("inside the handler", trace_id)
    assert handler["parent"] == server["id"]
    assert out["inside"]["1"] == trace_id
    # The reply carries the server span's context back.
    reply_parents = [h["traceparent"].split("-") for h in out["reply_headers"]]
    assert [trace_id, server["id"]] in [p[1:3] for p in reply_parents]

    # join: one CLIENT span for the batch; each request's SERVER span under it.
    batch = one("batch caller")
    mapped = one(f"map {topic}", batch["trace"])
    assert mapped["parent"] == batch["id"]
    batch_servers = [s for s in out["spans"] if s["name"] == f"process {topic}" and s["trace"] == batch["trace"]]
    assert len(batch_servers) == 2
    assert all(s["parent"] == mapped["id"] for s in batch_servers)
    assert out["inside"]["2"] == out["inside"]["3"] == batch["trace"]
    assert all(s["status"] != "ERROR" for s in out["spans"] if "broken" not in s["name"])
    assert spans  # every span above was exported

    # An agent that raised: both ends of its round trip are marked failed.
    failing = one("failing caller")
    asked = one(f"ask {app_id}-broken", failing["trace"])
    served = one(f"process {app_id}-broken", failing["trace"])
    assert served["parent"] == asked["id"]
    assert asked["status"] == served["status"] == "ERROR"


# -- logs ------------------------------------------------------------------------------


def test_logs_follow_each_request_on_both_sides(
    make_app: MakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    app, work, release = _served(make_app)
    with caplog.at_level(logging.DEBUG, logger="replies.agent"), caplog.at_level(
        logging.DEBUG, logger="replies.ask"
    ):
        promise = work.ask_nowait(1)
        assert promise.result(20) == 1
        with pytest.raises(replies.RemoteError):
            work.ask("bad")
        with pytest.raises(replies.ReplyTimeoutError):
            work.ask("stuck", timeout=0.2)
        release.set()
        _wait_for(lambda: "replied to" in caplog.text and "error reply to" in caplog.text)
        _wait_for(lambda: "answered" in caplog.text and "timed out" in caplog.text)
    cid = promise.correlation_id
    served = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "replies.agent.work"]
    # One INFO line per request, when it is done; its arrival at DEBUG.
    assert any(
        level == logging.DEBUG and m.startswith(f"received {cid} at {work.topic_name}[")
        for level, m in served
    )
    assert any(
        level == logging.INFO
        and m.startswith(f"replied to {cid} in ")
        and f" ms ({work.topic_name}[" in m
        and m.endswith(f" -> {app.reply_to})")
        for level, m in served
    )
    assert any(
        level == logging.INFO and m.startswith("error reply to") and m.endswith("ValueError: bad value")
        for level, m in served
    )
    assert not any(level == logging.INFO and m.startswith("received") for level, m in served)
    asked = [r.getMessage() for r in caplog.records if r.name == "replies.ask"]
    assert f"sent request {cid} to {work.topic_name}" in asked
    assert any(m.startswith(f"answered {cid} from {work.topic_name} in ") for m in asked)
    assert any(m.startswith("timed out: ") and "after 0.2 s" in m for m in asked)


class _Recorder(io.StringIO):
    """A stream that counts its flushes and keeps what each one saw."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: List[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


def _batching_logger(stream: _Recorder) -> Tuple[logging.Logger, BatchingHandler]:
    handler = BatchingHandler(stream)
    handler.setFormatter(LogFormatter("%(levelname)s %(message)s"))
    log = logging.getLogger(f"replies.test.batching.{os.urandom(4).hex()}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    return log, handler


def test_the_worker_log_handler_flushes_warnings_at_once_and_info_soon() -> None:
    stream = _Recorder()
    log, handler = _batching_logger(stream)
    for n in range(50):
        log.info("line %d", n)
    log.warning("careful")
    # The warning flushed itself and every line before it, in order; the
    # fifty INFO lines did not flush one by one.
    expected = "".join(f"INFO line {n}\n" for n in range(50)) + "WARNING careful\n"
    assert expected in stream.flushed
    assert len(stream.flushed) <= 2  # the flusher thread may have run once
    log.info("later")
    _wait_for(lambda: bool(stream.flushed) and stream.flushed[-1].endswith("INFO later\n"), 5)
    handler.close()
    handler._flusher.join(5)
    assert not handler._flusher.is_alive()


def test_the_worker_log_keeps_the_stream_it_was_given_open(tmp_path: Path) -> None:
    # The handler writes through a buffered stream of its own onto the given
    # stream's file descriptor: that stream must not be collected (closing it).
    path = tmp_path / "worker.log"
    code = (
        "import gc, logging, sys\n"
        "from replies.cli import _configure_logging\n"
        "_configure_logging('info', None, open(sys.argv[1], 'w'))\n"
        "gc.collect()\n"
        "logging.getLogger('replies.x').info('kept')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert path.read_text().endswith("INFO MainThread replies.x: kept\n")


def test_the_worker_log_handler_lets_a_process_exit() -> None:
    # logging.shutdown closes handlers holding their locks, which the
    # flushing thread may be waiting for.
    code = (
        "import logging, sys\n"
        "from replies.cli import _configure_logging\n"
        "_configure_logging('info', None, sys.stderr)\n"
        "for n in range(1000): logging.getLogger('replies.x').info('line %d', n)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1000 and lines[-1].endswith("INFO MainThread replies.x: line 999")


def test_the_worker_log_formatter_writes_the_standard_time() -> None:
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    ours, standard = LogFormatter(fmt), logging.Formatter(fmt)
    for created in (1_765_000_000.0, 1_765_000_000.999, 1_765_000_001.5, 1_765_000_001.004, 1_765_086_400.25):
        record = logging.LogRecord("replies.x", logging.INFO, __file__, 1, "m %s", ("a",), None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.format(record) == standard.format(record)
    record.created = 1_765_000_000.5
    assert LogFormatter("%(asctime)s").formatTime(record, "%H") == standard.formatTime(record, "%H")


def test_the_cli_keeps_kafka_python_at_warning_unless_asked() -> None:
    code = (
        "import logging, sys\n"
        "from replies.cli import _configure_logging\n"
        "_configure_logging(sys.argv[1], sys.argv[2] or None, sys.stderr)\n"
        "print(logging.getLogger('replies.agent.x').getEffectiveLevel(),"
        " logging.getLogger('kafka.conn').getEffectiveLevel())\n"
    )
    levels = {}
    for args in (("info", ""), ("debug", "info"), ("error", "")):
        proc = subprocess.run(
            [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        levels[args] = tuple(int(x) for x in proc.stdout.split())
    assert levels[("info", "")] == (logging.INFO, logging.WARNING)
    assert levels[("debug", "info")] == (logging.DEBUG, logging.INFO)
    assert levels[("error", "")] == (logging.ERROR, logging.ERROR)


@pytest.mark.integration
def test_a_worker_logs_each_request_and_no_kafka_chatter(
    kafka_bootstrap: str, kafka_client_settings: Dict[str, Any], tmp_path: Path
) -> None:
    app_id = f"w{os.urandom(4).hex()}"
    env = dict(
        os.environ,
        REPLIES_TEST_BROKER_URL=f"kafka://{kafka_bootstrap}",
        REPLIES_TEST_APP_ID=app_id,
        REPLIES_TEST_KAFKA_SETTINGS=json.dumps(kafka_client_settings),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "replies", "worker", "tests.workers.sample:app", "--loglevel", "info"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(lambda: b"serving agent fail" in log.read_bytes() or worker.poll() is not None, 60)
        client = replies.App(f"{app_id}-client", broker=f"kafka://{kafka_bootstrap}", **kafka_client_settings)
        with client:
            promise = client.topic(f"{app_id}-work").ask_nowait("hi", timeout=60)
            assert promise.result(60)["value"] == "hi"
            with pytest.raises(replies.RemoteError):
                client.topic(f"{app_id}-fail").ask("x", timeout=60)
        _wait_for(lambda: b"error reply to" in log.read_bytes(), 20)
    finally:
        worker.terminate()
        worker.wait(60)
    text = log.read_text()
    cid = promise.correlation_id
    assert f"replies.agent.work: received {cid}" not in text  # DEBUG
    assert f"INFO replies-handler-work-0 replies.agent.work: replied to {cid} in " in text
    assert f" ms ({app_id}-work[" in text
    assert "replies.agent.fail: error reply to " in text and "KeyError: 'x'" in text
    chatter = [line for line in text.splitlines() if " INFO " in line and " kafka." in line]
    assert chatter == []


def test_opentelemetry_without_a_tracer_provider_adds_nothing(make_app: MakeApp) -> None:
    pytest.importorskip("opentelemetry.trace")
    from opentelemetry import trace

    from replies.observe import otel

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        pytest.skip("a tracer provider was set in this process")
    assert otel.tracer() is None
    app = make_app("untraced")

    @app.agent()
    def names(value: Any) -> List[str]:
        request = replies.current_request()
        assert request is not None
        return [name for name, _ in request.headers]

    app.start()
    app.serve()
    assert "traceparent" not in names.ask(1)
    assert all("traceparent" not in headers for headers in names.join([1, 2]))


def test_closing_a_map_before_its_first_reply_stops_waiting(make_app: MakeApp) -> None:
    app, work, release = _served(make_app)
    pending = work.map(["stuck", "stuck", "stuck"], timeout=None)
    consumer = app.reply_consumer
    assert consumer is not None and len(consumer.table) == 3
    pending.close()
    assert len(consumer.table) == 0
    assert _topic_stats(app, work.topic_name)["cancelled"] == 3
    release.set()
