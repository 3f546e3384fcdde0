"""The Spring for Apache Kafka program of the interop tests, built and run from Python.

``pom.xml`` and ``src/`` beside this file hold a small Java program (no Spring
Boot): ``serve`` runs ``@KafkaListener`` + ``@SendTo`` listeners, ``ask`` runs
a ``ReplyingKafkaTemplate``. :func:`spring_jars` builds it with Maven once
per content of those files into ``cache_dir()/spring/<hash>/`` (beside the
Kafka jars, outside the repository); :class:`SpringService` and
:func:`spring_ask` run it with ``java -cp``.

``python -m tests.spring`` builds it and prints the folder, for CI's
preparation step.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Sequence

from tests.kafka.harness import BrokerError, _java, _which, cache_dir

__all__ = ["SpringService", "spring_ask", "spring_classpath", "spring_jars"]

HERE = Path(__file__).resolve().parent
_LOG_LEVEL = "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn"


def _source_hash() -> str:
    digest = hashlib.sha256()
    files = [HERE / "pom.xml", *sorted((HERE / "src").rglob("*.java"))]
    for path in files:
        digest.update(str(path.relative_to(HERE)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def spring_jars() -> Path:
    """Return the folder holding ``replies-spring.jar`` and ``lib/``, building them once.

    The build (``mvn -B -q package dependency:copy-dependencies``) runs into
    ``cache_dir()/spring/<hash of pom.xml and src>``; later calls, in any
    process, reuse it. A file lock keeps concurrent first calls from racing.

    Raises:
        BrokerError: Maven is missing or the build failed (with its output).
    """
    root = cache_dir() / "spring"
    folder = root / _source_hash()
    done = folder / "complete"
    if done.exists():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return folder
        mvn = _which("mvn", "Maven builds the Spring interop program")
        staging = Path(tempfile.mkdtemp(prefix="build-", dir=root))
        cmd = [mvn, "-B", "-q", "-f", str(HERE / "pom.xml"), f"-Dbuild.dir={staging}",
               "package", "dependency:copy-dependencies"]
        started = time.monotonic()
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=900)
        if proc.returncode != 0 or not (staging / "replies-spring.jar").exists():
            shutil.rmtree(staging, ignore_errors=True)
            tail = "\n".join(proc.stdout.splitlines()[-40:])
            raise BrokerError(f"Maven could not build tests/spring (exit {proc.returncode}):\n{tail}")
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
        done.write_text(f"built in {time.monotonic() - started:.1f} s\n")
        return folder


def spring_classpath() -> str:
    """Return the ``java -cp`` argument that runs ``replies.spring.Main``."""
    folder = spring_jars()
    return f"{folder / 'replies-spring.jar'}{os.pathsep}{folder / 'lib' / '*'}"


def _argv(*args: str) -> list[str]:
    return [_java(), "-Xmx256m", "-XX:TieredStopAtLevel=1", _LOG_LEVEL, "-cp", spring_classpath(),
            "replies.spring.Main", *args]


class SpringService:
    """The Spring listeners (``serve``) as a child process, for a ``with`` block.

    Listeners serve ``<topic>-double`` (a number as text, doubled; a request
    that is not a number throws, and Spring sends no reply) and
    ``<topic>-json`` (a JSON object gets ``"seen_by": "spring"`` and
    ``"key"`` added; ``{"fail": true}`` throws, and a listener error handler
    replies with ``kafka_exception-fqcn``/``kafka_exception-message`` headers).
    The topics must exist before it starts. ``start()`` blocks until every
    listener has its partitions.
    """

    def __init__(self, bootstrap: str, topic: str, log_path: Path):
        self.bootstrap, self.topic, self.log_path = bootstrap, topic, log_path
        self._popen: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 120.0) -> None:
        """Start the service and wait for its "READY" line.

        Raises:
            BrokerError: it exited or was not ready within ``timeout`` seconds.
        """
        log = open(self.log_path, "w")
        self._popen = subprocess.Popen(_argv("serve", self.bootstrap, self.topic), stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=log, text=True)
        assert self._popen.stdout is not None
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(self._popen.stdout.readline()),  # type: ignore[union-attr]
                                  name="spring-ready", daemon=True)
        reader.start()
        reader.join(timeout)
        if not ready or ready[0].strip() != "READY":
            self.stop()
            raise BrokerError(f"Spring service not ready in {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """Close its stdin (it shuts its context down), killing it after ``timeout``."""
        if self._popen is None:
            return
        if self._popen.stdin:
            self._popen.stdin.close()
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait()
        if self._popen.stdout:
            self._popen.stdout.close()
        self._popen = None

    def __enter__(self) -> SpringService:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def spring_ask(bootstrap: str, topic: str, reply_topic: str, count: int, *, reply_partition: int | None = None,
               string_correlation: bool = False, json_values: bool = False, timeout_ms: int = 20000,
               process_timeout: float = 180.0) -> list[dict[str, Any]]:
    """Ask ``topic`` ``count`` times with Spring's ``ReplyingKafkaTemplate``; return one dict per request.

    Request ``i`` has key ``"k<i>"`` and value ``"i"`` (or ``{"n": i}`` through
    ``JacksonJsonSerializer`` with ``json_values``). Each dict has ``i`` and
    either ``key``, ``value`` (the reply as text), ``partition``, ``headers``
    (name to hex), ``sent_correlation`` and ``sent_reply_partition`` (hex),
    or ``timeout: True``, or ``error`` (the reply carried
    ``kafka_exception-fqcn``).

    Raises:
        AssertionError: the program failed (with its output).
    """
    args: list[str] = ["ask", bootstrap, topic, reply_topic, str(count), "--timeout-ms", str(timeout_ms)]
    if reply_partition is not None:
        args += ["--reply-partition", str(reply_partition)]
    if string_correlation:
        args.append("--string-correlation")
    if json_values:
        args.append("--json")
    proc = subprocess.run(_argv(*args), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=process_timeout)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines and lines[-1] == {"done": count}, (
        f"Spring client failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return lines[:-1]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.spring``: build (or find) the program and print its folder."""
    print(spring_jars())
    return 0
