"""Helpers for tests that run web servers as users would: free ports, a
process that must come up, and many concurrent HTTP requests."""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, process: "subprocess.Popen[bytes]", log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"server not listening after {timeout} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.1)


def wait_for_log(text: str, process: "subprocess.Popen[bytes]", log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} in the log:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)


def start(command: Sequence[str], log: Path, env: Dict[str, str], cwd: Path = ROOT) -> "subprocess.Popen[bytes]":
    """Start a process logging to a file (a pipe nobody reads would block it)."""
    with open(log, "wb") as out:
        return subprocess.Popen(list(command), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(process: "subprocess.Popen[bytes]", timeout: float = 60, sig: int = signal.SIGTERM) -> int:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


def env(**extra: str) -> Dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **extra)


@dataclass
class Load:
    """The outcome of many concurrent requests."""

    answers: Dict[int, Any] = field(default_factory=dict)
    errors: Dict[int, str] = field(default_factory=dict)
    seconds: List[float] = field(default_factory=list)

    def percentile(self, p: float) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def summary(self, what: str) -> str:
        return (
            f"{what}: {len(self.answers) + len(self.errors)} requests, {len(self.answers)} answered, "
            f"{len(self.errors)} failed, p50 {self.percentile(50) * 1000:.1f} ms, "
            f"p99 {self.percentile(99) * 1000:.1f} ms, mean {statistics.mean(self.seconds) * 1000:.1f} ms"
        )


def hammer(url_for: Callable[[int], str], count: int, threads: int, timeout: float = 30) -> Load:
    """GET ``url_for(i)`` for i in range(count) from ``threads`` threads at once."""
    load = Load()

    def get(i: int) -> None:
        started = time.monotonic()
        try:
            with urllib.request.urlopen(url_for(i), timeout=timeout) as response:
                body = json.loads(response.read())
            load.answers[i] = body
        except Exception as exc:  # each failure is reported, not raised
            load.errors[i] = repr(exc)
        load.seconds.append(time.monotonic() - started)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(get, range(count)))
    return load


def list_topics(bootstrap: str) -> List[str]:
    import kafka

    admin = kafka.KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    try:
        return list(admin.list_topics())
    finally:
        admin.close()


def wait_until_gone(bootstrap: str, topics: Sequence[str], timeout: float = 20) -> List[str]:
    """The topics still on the broker after waiting up to ``timeout``."""
    deadline = time.monotonic() + timeout
    left = [t for t in topics if t in list_topics(bootstrap)]
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = [t for t in topics if t in list_topics(bootstrap)]
    return left


PYTHON = sys.executable
