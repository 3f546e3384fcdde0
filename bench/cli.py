"""The command line of ``python -m bench``."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import List, Optional

from bench.procs import REPO_ROOT
from bench.report import table, write_json
from bench.runner import Run, log, undo_safely


def _on_sigterm(signum: int, frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def faust_python(given: Optional[str]) -> Optional[str]:
    """The interpreter of Faust's virtualenv, building it if needed (10 min at most)."""
    python = given or os.environ.get("REPLIES_FAUST_PYTHON")
    if python:
        return python
    default = REPO_ROOT / ".venv-faust" / "bin" / "python"
    log("Faust: setting up its virtualenv (tests/faust/setup_venv.py)")
    try:
        out = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "faust" / "setup_venv.py")],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        log("Faust: its virtualenv was not ready within 600 s (timeout)")
        return None
    if out.returncode != 0:
        log(f"Faust: no virtualenv: {out.stderr[-500:]}")
        return None
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else str(default)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(
        "Side-by-side request/reply benchmark on one Apache Kafka broker: raw kafka-python (the floor), "
        "Faust, this library on Kafka and on memory://."))
    parser.add_argument("--broker", metavar="kafka://HOST:PORT",
                        help="an existing broker (default: start Apache Kafka with tests/kafka's harness)")
    parser.add_argument("--broker-port", type=int, help="port for the broker this starts (default: a free one)")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_const", const="quick", dest="size",
                       help="smaller counts: under 2 minutes once the broker is up")
    sizes.add_argument("--smoke", action="store_const", const="smoke", dest="size",
                       help="the smallest counts: only checks that every row can be measured")
    parser.add_argument("--json", metavar="PATH", help="also write every figure and ratio to PATH")
    parser.add_argument("--faust-python", metavar="PATH",
                        help="Faust's interpreter (default: $REPLIES_FAUST_PYTHON, else .venv-faust, built if missing)")
    parser.add_argument("--no-faust", action="store_true", help="leave the Faust column out")
    parser.add_argument("--columns", default="floor,faust,kafka,memory", metavar="LIST",
                        help="measure only these columns (comma-separated; default: %(default)s)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs (path printed)")
    args = parser.parse_args(argv)
    size = args.size or "full"
    columns = {c.strip() for c in args.columns.split(",") if c.strip()}
    if not columns or columns - {"floor", "faust", "kafka", "memory"}:
        parser.error(f"--columns takes floor, faust, kafka, memory; not {args.columns!r}")
    if args.no_faust:
        columns.discard("faust")
    if args.broker and not args.broker.startswith("kafka://"):
        parser.error("--broker takes kafka://HOST:PORT[,HOST:PORT]")

    signal.signal(signal.SIGTERM, _on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="replies-bench-"))
    run: Optional[Run] = None
    status = 0
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        if not args.keep_logs:
            stack.callback(shutil.rmtree, workdir, True)
        try:
            if args.broker:
                bootstrap = args.broker[len("kafka://"):]
                broker_note = f"given: {args.broker}"
            elif columns == {"memory"}:
                bootstrap, broker_note = "", "no broker (memory:// only)"
            else:
                from tests.kafka.harness import DEFAULT_KAFKA_VERSION, make_broker

                broker = make_broker("kafka", port=args.broker_port)
                stack.callback(undo_safely, "stop the broker", broker.stop)
                log(f"starting Apache Kafka {DEFAULT_KAFKA_VERSION} (tests/kafka harness)")
                t = time.monotonic()
                broker.start()
                bootstrap = broker.bootstrap_servers
                broker_note = f"Apache Kafka {DEFAULT_KAFKA_VERSION}, started by the benchmark"
                log(f"broker ready at {bootstrap} in {time.monotonic() - t:.1f} s")
            python = faust_python(args.faust_python) if "faust" in columns else None
            run = Run(bootstrap, size, stack, workdir, python)
            run.describe(broker_note)
            if args.broker and columns != {"memory"}:
                stack.callback(undo_safely, "delete the run's topics", run.delete_topics)
            measured = time.monotonic()
            log(f"{size} run {run.run_id} on {bootstrap}" + (
                " (smaller counts than the full run)" if size != "full" else ""))
            if "floor" in columns:
                run.floor()
            if "kafka" in columns:
                run.replies_kafka()
                run.replies_kafka(quiet=True)
            if {"floor", "kafka"} <= columns:
                run.by_turns()
            if "faust" in columns:
                run.faust()
            if "memory" in columns:
                run.replies_memory()
            run.share_references()
            run.meta["seconds"] = round(time.monotonic() - measured, 1)
        except KeyboardInterrupt as exc:
            log(f"interrupted ({exc or 'Ctrl-C'}): cleaning up")
            status = 130
        except Exception as exc:
            log(f"failed: {type(exc).__name__}: {exc}")
            status = 1
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # clean up undisturbed
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if args.keep_logs:
        log(f"logs kept in {workdir}")
    if run is None:
        return status or 1
    rows = list(run.rows.values())
    meta = run.meta
    if status:
        meta["interrupted"] = True
    m = meta["machine"]
    if args.json:  # first: the table below may meet a closed stdout
        write_json(args.json, rows, meta)
        log(f"figures written to {args.json}")
    print()
    print(f"{meta['broker']}; {meta['size']} run" + (
        f" (SMALLER COUNTS than the full run: {meta['sizes']})" if size != "full" else ""))
    print(f"machine: {m['cpus']} cores {m['cpu']}, {m['memory']}, {m['system']}; Python {meta['python']}, "
          f"kafka-python {meta['kafka_python']}, Faust {meta.get('faust', '-')}; "
          f"replies at {meta['replies_commit']}; load average at start {m['load'][0]:.2f}")
    print("ratios: replies on Kafka divided by the other column; 'better'/'worse' follows each row's "
          "direction (lower is better for ms, s and MiB; higher for /s)")
    if status:
        print("\nINTERRUPTED OR FAILED: partial figures only")
    print()
    print(table(rows))
    print(f"\nmeasured in {meta.get('seconds', '?')} s; whole run {time.monotonic() - began:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
