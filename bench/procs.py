"""Processes the benchmark starts: each in its own session, always stopped.

Every wait here has a deadline and raises :class:`StartError` (a timeout
or an early exit, with the log's tail) instead of blocking.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]


class StartError(RuntimeError):
    """A process did not get ready in time, or exited early."""


class Process:
    """One subprocess logging to a file; ``stop()`` ends its whole group."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, *,
                 env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "wb") as log:
            # A file, not a pipe: nobody has to read it for the process to go on.
            self.proc = subprocess.Popen(
                list(argv), cwd=cwd or REPO_ROOT, env=env, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, marks: List[str], timeout: float) -> float:
        """Block until every mark is in the log; return the seconds it took.

        Raises:
            StartError: the process exited, or ``timeout`` passed first.
        """
        started = time.monotonic()
        deadline = started + timeout
        while True:
            text = self.log_text()
            if all(mark in text for mark in marks):
                return time.monotonic() - started
            if self.proc.poll() is not None:
                raise StartError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise StartError(f"{self.name} not ready after {timeout:.0f} s (timeout):\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group; SIGKILL it after ``timeout`` seconds."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)


def rss_bytes(pid: Optional[int] = None) -> int:
    """Resident set size of a process (this one by default), from /proc."""
    path = f"/proc/{pid or 'self'}/status"
    with open(path) as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS in {path}")
