"""Create (or reuse) the virtualenv that runs faust-streaming.

Faust lives in its own virtualenv, ``.venv-faust`` at the repository root,
and never in the environment that runs ``replies`` and its tests:

* faust-streaming 0.15.3 does not depend on kafka-python (its client is
  aiokafka, and aiokafka 0.14 has no kafka-python dependency either; Faust
  mentions ``kafka`` only in a docstring), so the two do not conflict; but
  it pulls in aiohttp, mode-streaming, venusian, croniter and more, and
  leaves aiokafka unpinned (``aiokafka>=0.10.0``).  Keeping
  them out of the library's environment means the library's tests can never
  pass because of something only Faust installed.
* The aiokafka version decides which brokers Faust can talk to (aiokafka
  older than 0.13 sends CreateTopics v1, which Kafka 4 no longer accepts),
  so it is pinned here.
* Faust only ever runs in subprocesses (``fapp.py``, ``client.py``), so a
  separate interpreter costs nothing.

Usage::

    python tests/faust/setup_venv.py          # prints the venv's python

or from Python: ``ensure_venv()`` returns the path of that interpreter.
It is idempotent: a venv whose stamp matches the pinned requirements is
reused as is; otherwise it is (re)created.  A file lock makes concurrent
callers wait for one another.  ``REPLIES_FAUST_PYTHON`` names an existing
interpreter that already has Faust, to skip all of this.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

FAUST_VERSION = "0.15.3"
AIOKAFKA_VERSION = "0.14.0"
REQUIREMENTS = (
    f"faust-streaming=={FAUST_VERSION}",
    f"aiokafka=={AIOKAFKA_VERSION}",
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO_ROOT / ".venv-faust"
_STAMP = "replies-faust-stamp.txt"


def _python_of(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def _stamp_text() -> str:
    return "\n".join(REQUIREMENTS) + "\n"


def _is_ready(venv_dir: Path) -> bool:
    python = _python_of(venv_dir)
    stamp = venv_dir / _STAMP
    if not python.exists() or not stamp.exists():
        return False
    if stamp.read_text() != _stamp_text():
        return False
    probe = subprocess.run(
        [str(python), "-c", "import faust, aiokafka; print(faust.__version__)"],
        capture_output=True,
        text=True,
    )
    return probe.returncode == 0 and probe.stdout.strip() == FAUST_VERSION


def ensure_venv(venv_dir: Path | None = None, *, quiet: bool = True) -> Path:
    """Return the python of a virtualenv with faust-streaming installed."""
    override = os.environ.get("REPLIES_FAUST_PYTHON")
    if override:
        return Path(override)
    venv_dir = Path(venv_dir) if venv_dir is not None else DEFAULT_VENV
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    # The lock lives outside the work tree (nothing to ignore or clean up).
    digest = hashlib.sha1(str(venv_dir.resolve()).encode()).hexdigest()[:12]
    lock_path = Path(tempfile.gettempdir()) / f"replies-faust-venv-{digest}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_ready(venv_dir):
            _build(venv_dir, quiet=quiet)
    return _python_of(venv_dir)


def _build(venv_dir: Path, *, quiet: bool) -> None:
    stamp = venv_dir / _STAMP
    if stamp.exists():
        stamp.unlink()
    venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    python = str(_python_of(venv_dir))
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    if quiet:
        pip.append("-q")
    subprocess.run(pip + list(REQUIREMENTS), check=True)
    stamp.write_text(_stamp_text())


def main() -> int:
    python = ensure_venv(quiet=False)
    print(python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
