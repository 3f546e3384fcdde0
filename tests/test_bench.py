"""``python -m bench``: its smallest run against the suite's broker, and its report.

The run checks only that every row is measured and has numbers: speed is
what the benchmark reports, never something a test asserts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import Cell, Row, percentile, table
from tests.faust.procs import faust_python

REPO_ROOT = Path(__file__).resolve().parents[1]

#: The cells each column must fill (the rest of the grid does not apply).
EXPECTED = {
    "floor": {"ask_p50", "ask_p99", "threads_rate", "threads_p50", "threads_p99", "join", "map", "start",
              "ask_p50_turns", "join_turns", "ask_p50_turns_quiet", "join_turns_quiet"},
    "faust": {"ask_p50", "ask_p99", "join", "start"},
    "kafka": {"ask_p50", "ask_p99", "threads_rate", "threads_p50", "threads_p99", "join", "map", "start",
              "rss_client", "rss_worker", "ask_p50_quiet", "join_quiet", "map_quiet", "ask_p50_turns",
              "join_turns", "ask_p50_turns_quiet", "join_turns_quiet"},
    "memory": {"ask_p50", "ask_p99", "threads_rate", "threads_p50", "threads_p99", "join", "map"},
}


@pytest.mark.integration
@pytest.mark.kafka_only
@pytest.mark.timeout(150)
def test_smoke_run_measures_every_row(kafka_bootstrap: str, tmp_path: Path) -> None:
    try:
        python = faust_python()
    except Exception as exc:
        pytest.fail(f"cannot set up the Faust virtualenv: {exc!r}", pytrace=False)
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--broker", f"kafka://{kafka_bootstrap}",
         "--json", str(out), "--faust-python", str(python)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sequential ask p50" in proc.stdout and "smoke run" in proc.stdout
    report = json.loads(out.read_text())
    assert report["meta"]["size"] == "smoke" and "interrupted" not in report["meta"]
    rows = {row["key"]: row for row in report["rows"]}
    assert set(rows) == set().union(*EXPECTED.values())
    for column, keys in EXPECTED.items():
        for key in keys:
            cell = rows[key]["cells"][column]
            if column == "faust" and key == "join" and cell["status"] == "hang":
                assert cell["timeout_s"] > 0  # Faust hanging is a result, reported with its timeout
                continue
            assert cell["status"] == "ok", (key, column, cell)
            assert isinstance(cell["value"], (int, float)) and cell["n"] >= 1, (key, column, cell)
    for key in EXPECTED["floor"] & EXPECTED["kafka"]:
        ratio = rows[key]["ratios"]["kafka/floor"]
        value, floor = rows[key]["cells"]["kafka"]["value"], rows[key]["cells"]["floor"]["value"]
        assert ratio == pytest.approx(value / floor)
    # The rows measured again with a quiet worker are compared with the same floor.
    for quiet, base in (("ask_p50_quiet", "ask_p50"), ("join_quiet", "join"), ("map_quiet", "map")):
        assert rows[quiet]["cells"]["floor"] == rows[base]["cells"]["floor"]
        value = rows[quiet]["cells"]["kafka"]["value"]
        assert rows[quiet]["ratios"]["kafka/floor"] == pytest.approx(value / rows[base]["cells"]["floor"]["value"])
    # Nothing of the run's is left on the broker.
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        run_id = report["meta"]["run_id"]
        assert [t for t in admin.list_topics() if t.startswith(run_id)] == []
    finally:
        admin.close()


def test_percentile_is_nearest_rank() -> None:
    samples = [float(v) for v in range(100, 0, -1)]
    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 99) == 99.0
    assert percentile([3.0], 99) == 3.0


def test_table_shows_ratios_with_their_direction_and_hangs() -> None:
    latency = Row("ask_p50", "ask p50", "ms", "lower",
                  cells={"floor": Cell(5.0, 10), "faust": Cell(10.0, 10), "kafka": Cell(6.0, 10)})
    rate = Row("join", "join", "replies/s", "higher", 0,
               cells={"floor": Cell(1000.0, 100), "faust": Cell(status="hang", seconds=15.0),
                      "kafka": Cell(800.0, 100)})
    assert latency.ratio("kafka", "floor") == pytest.approx(1.2)
    assert latency.verdict("kafka", "floor") == "1.20x worse"
    assert latency.verdict("kafka", "faust") == "0.60x better"
    assert rate.verdict("kafka", "floor") == "0.80x worse"
    assert rate.ratio("kafka", "faust") is None
    text = table([latency, rate])
    assert "HANG >15s" in text and "1.20x worse" in text
