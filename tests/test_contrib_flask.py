"""The Flask example under real WSGI servers, asking an agent worker process
on the real broker: gunicorn pre-forking with ``--preload`` (the App is made
in the master, started in each worker) and recycling workers mid-run, and
waitress (threads in one process). Every response must carry its own answer.

The figures (requests, answers, p50/p99) are printed; run with ``-s``.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Dict, Iterator

import pytest

import replies
from replies.contrib.flask import Replies
from tests import web

pytestmark = pytest.mark.timeout(240)

# The example uses kafka-python's default settings, whose 45 s session
# timeout makes every group join take 22 s on Tansu: the tests on a broker
# are marked kafka_only.

REQUESTS = 200


@pytest.fixture(scope="module")
def broker(kafka_bootstrap: str) -> str:
    return f"kafka://{kafka_bootstrap}"


@pytest.fixture(scope="module")
def agent_worker(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One worker process serving the example's agent for the whole module."""
    log = tmp_path_factory.mktemp("flask") / "agents.log"
    process = web.start(
        [web.PYTHON, "-m", "replies", "worker", "examples.flask_app.agents:app"],
        log,
        web.env(REPLIES_BROKER=broker),
    )
    web.wait_for_log("serving agent square", process, log)
    yield
    assert web.stop(process) == 0, log.read_text()[-3000:]


def _check(load: web.Load) -> None:
    assert load.errors == {}
    assert sorted(load.answers) == list(range(REQUESTS))
    for n, answer in load.answers.items():
        assert (answer["n"], answer["square"]) == (n, n * n)
    # One reply topic per web process, never shared.
    topics: Dict[int, set] = {}
    for answer in load.answers.values():
        topics.setdefault(answer["web_pid"], set()).add(answer["reply_to"])
    assert all(len(t) == 1 for t in topics.values())
    assert len({t for ts in topics.values() for t in ts}) == len(topics)


@pytest.mark.integration
@pytest.mark.kafka_only
def test_gunicorn_preload_gthread_with_workers_recycled(
    broker: str, agent_worker: None, kafka_bootstrap: str, tmp_path: Path
) -> None:
    port = web.free_port()
    log = tmp_path / "gunicorn.log"
    server = web.start(
        [
            web.PYTHON, "-m", "gunicorn", "--preload", "--workers", "2", "--threads", "8",
            "-k", "gthread", "--max-requests", "40", "--max-requests-jitter", "10",
            "--bind", f"127.0.0.1:{port}", "examples.flask_app.app:web",
        ],
        log,
        web.env(REPLIES_BROKER=broker),
    )
    try:
        web.wait_for_port(port, server, log)
        load = web.hammer(lambda n: f"http://127.0.0.1:{port}/square/{n}", REQUESTS, threads=32)
    finally:
        assert web.stop(server) == 0, log.read_text()[-3000:]
    print("\n" + load.summary("gunicorn --preload -w 2 --threads 8 -k gthread --max-requests 40"))
    _check(load)
    pids = {a["web_pid"] for a in load.answers.values()}
    assert len(pids) >= 3, f"workers were recycled mid-run: {pids}"
    # Each worker closed its App at exit, deleting its own reply topic.
    reply_topics = sorted({a["reply_to"] for a in load.answers.values()})
    assert web.wait_until_gone(kafka_bootstrap, reply_topics) == []
    assert "Traceback" not in log.read_text(errors="replace"), log.read_text()[-3000:]


@pytest.mark.integration
@pytest.mark.kafka_only
def test_waitress(broker: str, agent_worker: None, kafka_bootstrap: str, tmp_path: Path) -> None:
    port = web.free_port()
    log = tmp_path / "waitress.log"
    server = web.start(
        [web.PYTHON, "-m", "waitress", "--threads=16", f"--listen=127.0.0.1:{port}",
         "examples.flask_app.app:web"],
        log,
        web.env(REPLIES_BROKER=broker),
    )
    try:
        web.wait_for_port(port, server, log)
        load = web.hammer(lambda n: f"http://127.0.0.1:{port}/square/{n}", REQUESTS, threads=32)
    finally:
        # Ctrl-C: waitress has no SIGTERM handler, and a process killed by
        # a signal runs no exit hooks (its topic would expire after
        # reply_expires instead).
        web.stop(server, sig=signal.SIGINT)
    print("\n" + load.summary("waitress --threads=16"))
    _check(load)
    assert len({a["web_pid"] for a in load.answers.values()}) == 1
    reply_topics = sorted({a["reply_to"] for a in load.answers.values()})
    assert web.wait_until_gone(kafka_bootstrap, reply_topics) == []


def test_settings_come_from_the_flask_config() -> None:
    flask = pytest.importorskip("flask")
    site = flask.Flask("site")
    site.config["REPLIES"] = {"id": "site-x", "broker": "memory://flask-config", "request_timeout": 3}
    ext = Replies(site, reply_to_prefix="site-")
    assert isinstance(ext.app, replies.App)
    assert (ext.app.id, ext.app.broker, ext.app.request_timeout) == ("site-x", "memory://flask-config", 3)
    assert site.extensions["replies"] is ext.app
    assert ext.app.reply_consumer is None  # nothing connects before an ask
    with site.app_context():
        from replies.contrib.flask import current_app

        assert current_app() is ext.app
    late = Replies()
    other = flask.Flask("other")
    late.init_app(other)
    assert late.app is not None and late.app.id == "other"
    with pytest.raises(TypeError):
        bad = flask.Flask("bad")
        bad.config["REPLIES"] = ["not", "a", "dict"]
        Replies(bad)


def test_the_frameworks_are_imported_only_when_used() -> None:
    import subprocess

    script = (
        "import sys, replies, replies.contrib.flask, replies.contrib.django; "
        "print('flask' in sys.modules, 'django' in sys.modules)"
    )
    done = subprocess.run([web.PYTHON, "-c", script], env=web.env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
