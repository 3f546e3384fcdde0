"""README.rst's first example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def first_example() -> str:
    """The first Python code block under the "A first example" heading."""
    readme = (ROOT / "README.rst").read_text()
    section = readme[readme.index("A first example\n===============") :]
    match = re.search(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", section)
    assert match, "no code block in 'A first example'"
    return textwrap.dedent(match.group(1))


def test_the_first_example_runs_as_written(tmp_path: Path) -> None:
    script = tmp_path / "first.py"
    script.write_text(first_example())
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,  # as a user would: not from the clone's root
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["3", "3"]
    assert sorted(lines[2:4]) == ["2", "4"]
    assert lines[4:] == ["[2, 4]", "10"]
