"""Run each side in processes of its own: Faust's worker and client, and ours.

Used by ``capture_wire.py`` and by the interoperability tests; imports
nothing from Faust (the Faust processes run the interpreter of
``.venv-faust``).  ``OurWorker`` runs ``python -m replies worker`` on
``ours.py`` with the interpreter of the tests.

    python = faust_python()                       # builds the venv once
    with FaustWorker("127.0.0.1:9092", app_id="fz") as worker:
        worker.topics["double"]                   # -> "fz-fapp.double"
        out = run_client("127.0.0.1:9092", [
            {"op": "ask", "topic": worker.topics["double"], "value": 21},
        ])
        out["results"][0]["value"]                # -> 42
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Dict, List, Mapping, Optional, Sequence, Type, TypeVar

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
FAPP_AGENTS = ("double", "echo", "fail", "flip", "norm")
#: The agents of ``ours.py`` (its ``AGENTS``), in the order it serves them.
OURS_AGENTS = ("double", "keyed", "flip", "count", "fail")

#: What a Faust worker logs once its agents are subscribed and assigned.
_READY_MARK = "[^Worker]: Ready"


_W = TypeVar("_W", bound="_WorkerProcess")


def faust_python() -> Path:
    """The interpreter of the Faust virtualenv (created on first use)."""
    from tests.faust import setup_venv

    return setup_venv.ensure_venv()


def broker_url(bootstrap: str) -> str:
    """Faust's broker URL for kafka-python style bootstrap servers."""
    servers = [s.strip() for s in bootstrap.split(",") if s.strip()]
    return ";".join(f"kafka://{s}" for s in servers)


def faust_env(extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Environment for a Faust process: ``tests/faust`` on the path, no more.

    ``tests/`` itself must never be on ``sys.path`` there: ``tests/faust``
    would then shadow the real ``faust`` package.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(HERE)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONHOME", None)
    if extra:
        env.update(extra)
    return env


def agent_topic(app_id: str, agent: str, topic_prefix: str = "") -> str:
    """The topic ``fapp`` serves agent ``agent`` on (see ``fapp.py``)."""
    if topic_prefix:
        return f"{topic_prefix}{agent}"
    return f"{app_id}-fapp.{agent}"


class WorkerError(RuntimeError):
    """A worker process did not start, or died."""


class FaustWorkerError(WorkerError):
    """The Faust worker did not start, or died."""


class _WorkerProcess:
    """A worker process logging to a file; a context manager that stops it.

    Subclasses set ``proc``, ``log_path`` and ``stop_timeout`` and define
    ``start()``, which returns the worker once it is ready.
    """

    proc: Optional["subprocess.Popen[bytes]"]
    log_path: Path
    stop_timeout: float

    def start(self: _W) -> _W:
        raise NotImplementedError

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            _terminate(proc, self.stop_timeout)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self: _W) -> _W:
        return self.start()

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()


class FaustWorker(_WorkerProcess):
    """``python -m faust -A fapp worker`` in a subprocess, as a context manager.

    ``start()`` returns once the worker logs that it is ready (its consumer
    group has its partitions); ``stop()`` sends SIGTERM and, if the worker
    is not gone within ``stop_timeout`` seconds, SIGKILL.  The worker's
    output goes to ``self.log_path`` (shown in errors).
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        app_id: str = "fz",
        topic_prefix: str = "",
        partitions: int = 1,
        ready_timeout: float = 90.0,
        stop_timeout: float = 20.0,
        python: Optional[Path] = None,
        workdir: Optional[Path] = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.app_id = app_id
        self.topic_prefix = topic_prefix
        self.partitions = partitions
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self._python = python
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"faust-worker-{app_id}-"))
        self.log_path = self.workdir / "worker.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.topics = {a: agent_topic(app_id, a, topic_prefix) for a in FAPP_AGENTS}

    def start(self) -> "FaustWorker":
        python = self._python or faust_python()
        env = faust_env({
            "FAPP_BROKER": broker_url(self.bootstrap),
            "FAPP_ID": self.app_id,
            "FAPP_TOPIC_PREFIX": self.topic_prefix,
            "FAPP_PARTITIONS": str(self.partitions),
            "FAPP_DATADIR": str(self.workdir / "data"),
        })
        cmd = [str(python), "-m", "faust", "-A", "fapp", "worker",
               "-l", "info", "--without-web"]
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                cmd, cwd=self.workdir, env=env, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if _READY_MARK in self.log_text():
                return self
            if self.proc.poll() is not None:
                raise FaustWorkerError(
                    f"Faust worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            time.sleep(0.2)
        self.stop()
        raise FaustWorkerError(
            f"Faust worker not ready after {self.ready_timeout:.0f} s:\n{self.log_tail()}")


class OurWorker(_WorkerProcess):
    """``python -m replies worker tests.faust.ours:app`` in a subprocess.

    ``start()`` returns once the worker logs that it serves every agent of
    ``ours.py`` (each agent's topic is created before that line, so a
    request sent afterwards cannot make the broker auto-create it);
    ``stop()`` sends SIGTERM and, if the worker is not gone within
    ``stop_timeout`` seconds, SIGKILL.  Its output goes to ``log_path``.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        app_id: str = "ours",
        kafka_settings: Optional[Mapping[str, Any]] = None,
        ready_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        workdir: Optional[Path] = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.app_id = app_id
        self.kafka_settings = dict(kafka_settings or {})
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"replies-worker-{app_id}-"))
        self.log_path = self.workdir / "worker.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.topics = {a: f"{app_id}-{a}" for a in OURS_AGENTS}

    def start(self) -> "OurWorker":
        env = dict(os.environ)
        env.update({
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            "OURS_BROKER": f"kafka://{self.bootstrap}",
            "OURS_APP_ID": self.app_id,
            "OURS_KAFKA_SETTINGS": json.dumps(self.kafka_settings),
        })
        cmd = [sys.executable, "-m", "replies", "worker", "tests.faust.ours:app"]
        # A file, not a pipe: a pipe nobody reads blocks a chatty worker.
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        assert self.proc is not None
        marks = [f"serving agent {a} on topic {t}" for a, t in self.topics.items()]
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            if all(mark in text for mark in marks):
                return
            if self.proc.poll() is not None:
                raise WorkerError(f"replies worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            time.sleep(0.1)
        raise WorkerError(f"replies worker not ready after {self.ready_timeout:.0f} s:\n{self.log_tail()}")


def _terminate(proc: "subprocess.Popen[bytes]", timeout: float) -> None:
    """SIGTERM the process group of ``proc``; SIGKILL it after ``timeout`` s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


class FaustClientError(RuntimeError):
    """The Faust client process failed (not: an operation timed out)."""


def run_client(
    bootstrap: str,
    ops: Sequence[Mapping[str, Any]],
    *,
    app_id: Optional[str] = None,
    reply_to_prefix: Optional[str] = None,
    timeout: Optional[float] = None,
    python: Optional[Path] = None,
) -> Dict[str, Any]:
    """Run ``client.py`` once with these operations; return its JSON output.

    Operations are as in ``client.py`` (``ask``/``join``, header or envelope
    mode).  An operation that gets no reply in its own ``timeout`` is
    reported as ``{"ok": false, "error": "timeout"}``; the process as a
    whole gets ``timeout`` seconds (default: the operations' timeouts plus
    a minute).
    """
    python = python or faust_python()
    cmd: List[str] = [str(python), str(HERE / "client.py"),
                      "--broker", broker_url(bootstrap), "--ops", json.dumps(list(ops))]
    if app_id:
        cmd += ["--app-id", app_id]
    if reply_to_prefix:
        cmd += ["--reply-to-prefix", reply_to_prefix]
    if timeout is None:
        timeout = 60.0 + sum(float(op.get("timeout", 30.0)) for op in ops)
    with tempfile.TemporaryDirectory(prefix="faust-client-") as cwd:
        try:
            proc = subprocess.run(cmd, cwd=cwd, env=faust_env(), capture_output=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            err = (exc.stderr or b"").decode(errors="replace")[-4000:]
            raise FaustClientError(f"Faust client still running after {timeout:.0f} s:\n{err}") from exc
    out = proc.stdout.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not out:
        err = proc.stderr.decode(errors="replace")[-4000:]
        raise FaustClientError(f"Faust client exited with {proc.returncode}:\n{err}")
    result: Dict[str, Any] = json.loads(out[-1])
    return result
