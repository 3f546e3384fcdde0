"""The Django example project: its own tests on memory:// (the test
helper), management commands that never connect, the test client and a
threaded server asking an agent worker process on the real broker.

The figures (requests, answers, p50/p99) are printed; run with ``-s``.
"""

from __future__ import annotations

import signal
import subprocess
import textwrap
from pathlib import Path
from typing import Dict, Iterator

import pytest

from tests import web

pytestmark = pytest.mark.timeout(240)

PROJECT = web.ROOT / "examples" / "django_app"
REQUESTS = 100


def django_env(**extra: str) -> Dict[str, str]:
    env = web.env(DJANGO_SETTINGS_MODULE="exampleproject.settings", **extra)
    env["PYTHONPATH"] = f"{PROJECT}:{env['PYTHONPATH']}"
    return env


def run(args: list, **env: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(
        [web.PYTHON, *args], cwd=PROJECT, env=django_env(**env), capture_output=True,
        text=True, timeout=120,
    )


def test_the_projects_tests_run_on_memory_with_the_helper() -> None:
    done = run(["manage.py", "test", "shop"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Ran 2 tests" in done.stderr and "OK" in done.stderr


def test_management_commands_never_connect() -> None:
    # Nothing listens there: a command that connected would wait and fail.
    unreachable = f"kafka://127.0.0.1:{web.free_port()}"
    done = run(["manage.py", "check"], REPLIES_BROKER=unreachable)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no issues" in done.stdout
    done = run(
        ["manage.py", "shell", "-c",
         "import shop.views; from replies.contrib.django import get_app; "
         "app = get_app(); print(app.id, app.reply_consumer, app._transport)"],
        REPLIES_BROKER=unreachable,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].split() == ["example-django", "None", "None"]


def test_get_app_reads_settings_once_and_refuses_bad_ones() -> None:
    script = textwrap.dedent(
        """
        import django
        from django.conf import settings
        from django.core.exceptions import ImproperlyConfigured
        settings.configure(REPLIES={"broker": "memory://"})
        from replies.contrib import django as contrib
        try:
            contrib.get_app()
        except ImproperlyConfigured as exc:
            print("refused:", "'id'" in str(exc))
        settings.REPLIES = {"id": "x", "broker": "memory://d", "request_timeout": 4}
        app = contrib.get_app()
        print(app.id, app.broker, app.request_timeout, contrib.get_app() is app)
        """
    )
    done = subprocess.run([web.PYTHON, "-c", script], env=web.env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["refused: True", "x memory://d 4 True"]


# -- on the real broker ------------------------------------------------------


@pytest.fixture(scope="module")
def broker(kafka_bootstrap: str) -> str:
    return f"kafka://{kafka_bootstrap}"


@pytest.fixture(scope="module")
def agent_worker(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    log = tmp_path_factory.mktemp("django") / "agents.log"
    process = web.start(
        [web.PYTHON, "-m", "replies", "worker", "shop.agents:app"],
        log,
        django_env(REPLIES_BROKER=broker),
        cwd=PROJECT,
    )
    web.wait_for_log("serving agent square", process, log)
    yield
    assert web.stop(process) == 0, log.read_text()[-3000:]


# The example uses kafka-python's default settings, whose 45 s session
# timeout makes every group join take 22 s on Tansu: for Kafka.
@pytest.mark.integration
@pytest.mark.kafka_only
def test_the_test_client_on_kafka(broker: str, agent_worker: None) -> None:
    script = textwrap.dedent(
        """
        import django
        django.setup()
        from django.test import Client
        client = Client()
        for n in range(20):
            body = client.get(f"/square/{n}").json()
            assert (body["n"], body["square"]) == (n, n * n), body
        print("answered", n + 1)
        """
    )
    done = run(["-c", script], REPLIES_BROKER=broker)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "answered 20"


@pytest.mark.integration
@pytest.mark.kafka_only
def test_a_threaded_server_answers_concurrent_requests(
    broker: str, agent_worker: None, kafka_bootstrap: str, tmp_path: Path
) -> None:
    port = web.free_port()
    log = tmp_path / "runserver.log"
    server = web.start(
        [web.PYTHON, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        log,
        django_env(REPLIES_BROKER=broker),
        cwd=PROJECT,
    )
    try:
        web.wait_for_port(port, server, log)
        load = web.hammer(lambda n: f"http://127.0.0.1:{port}/square/{n}", REQUESTS, threads=32)
    finally:
        web.stop(server, sig=signal.SIGINT)  # Ctrl-C, as at a terminal
    print("\n" + load.summary("django runserver (threaded)"))
    assert load.errors == {}
    assert sorted(load.answers) == list(range(REQUESTS))
    for n, answer in load.answers.items():
        assert (answer["n"], answer["square"]) == (n, n * n)
    reply_topics = sorted({a["reply_to"] for a in load.answers.values()})
    assert len(reply_topics) == 1
    assert web.wait_until_gone(kafka_bootstrap, reply_topics) == []
