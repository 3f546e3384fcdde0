"""The App's lifecycle as users meet it: started by the first ask, closed
for good by close(), closed at interpreter exit, and one server per agent
per process (a notebook cell run again replaces the older App's serving).

Behaviour tests run over the memory transport and a real Kafka broker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

import replies

pytestmark = pytest.mark.timeout(120)

MakeApp = Callable[..., replies.App]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def echo(make_app: MakeApp) -> replies.Agent:
    server = make_app("server")

    @server.agent(concurrency=4)
    def echo(value: Any) -> Any:
        return value

    server.serve()
    return echo


def test_the_first_ask_starts_an_app_never_started(make_app: MakeApp, echo: replies.Agent) -> None:
    client = make_app("client")
    assert client.reply_consumer is None
    assert "<named at start>" in repr(client)
    assert client.topic(echo.topic_name).ask("hello") == "hello"
    assert client.reply_consumer is not None
    assert client.reply_to in repr(client)


def test_threads_asking_at_once_start_the_app_once(make_app: MakeApp, echo: replies.Agent) -> None:
    client = make_app("client")
    topic = client.topic(echo.topic_name)
    barrier = threading.Barrier(16)
    answers: Dict[int, Any] = {}
    consumers: List[Any] = []

    def ask(n: int) -> None:
        barrier.wait()
        answers[n] = topic.ask(n)
        consumers.append(client.reply_consumer)

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert answers == {n: n for n in range(16)}
    assert len({id(c) for c in consumers}) == 1
    reply_threads = [t for t in threading.enumerate() if t.name.startswith("replies-reply-")]
    assert [t for t in reply_threads if t is client.reply_consumer.thread] == [
        client.reply_consumer.thread
    ]


def test_map_join_and_cast_start_an_app_never_started(
    make_app: MakeApp, echo: replies.Agent
) -> None:
    assert make_app("a").topic(echo.topic_name).join([1, 2, 3]) == [1, 2, 3]
    assert sorted(make_app("b").topic(echo.topic_name).map([1, 2])) == [1, 2]
    sender = make_app("c")
    sender.topic(echo.topic_name).cast("fire and forget").result(20)
    assert sender.reply_consumer is None  # sending wants no reply topic


def test_a_closed_app_refuses_until_started_again(make_app: MakeApp, echo: replies.Agent) -> None:
    client = make_app("client")
    topic = client.topic(echo.topic_name)
    assert topic.ask(1) == 1
    first = client.reply_to
    client.close()
    for attempt in (lambda: topic.ask(2), lambda: topic.join([2]), lambda: topic.cast(2)):
        with pytest.raises(replies.ClosedError, match="was closed"):
            attempt()
    with client:  # starting again opens it, on a fresh reply topic
        assert topic.ask(3) == 3
        assert client.reply_to != first
    with pytest.raises(replies.ClosedError, match="was closed"):
        topic.ask(4)


def test_the_reply_topic_is_named_when_the_app_starts(make_app: MakeApp) -> None:
    app = make_app("client", reply_to_prefix="mine-")
    assert app._reply_to is None  # nothing named at construction
    app.start()
    assert app.reply_to.startswith("mine-")
    assert app.reply_consumer is not None


def test_a_named_reply_topic_is_not_deleted_by_its_users(
    make_app: MakeApp, echo: replies.Agent
) -> None:
    shared = f"shared-replies-{uuid.uuid4().hex[:8]}"
    first = make_app("one", reply_to=shared, reply_create_topic=True)
    second = make_app("two", reply_to=shared)
    assert first.topic(echo.topic_name).ask("a") == "a"
    first.close()
    assert second.topic(echo.topic_name).ask("b") == "b"  # the topic is still there
    second.close()
    observer = make_app("observer").start()
    assert observer.transport.topic_exists(shared)
    observer.transport.delete_topic(shared)


def test_serving_the_same_agents_again_replaces_the_older_app(make_app: MakeApp) -> None:
    # A notebook cell that makes and serves the App, run twice.
    def cell(version: str) -> replies.App:
        app = make_app("notebook")

        @app.agent(concurrency=2)
        def which(value: Any) -> Any:
            return [version, value]

        return app.serve()

    old = cell("old")
    # Answered: its member has joined the group (Tansu holds a group whose
    # member leaves in the middle of joining in a rebalance for a while).
    assert old.agents["which"].ask(0, timeout=60) == ["old", 0]
    with pytest.warns(RuntimeWarning, match="stopped serving them"):
        new = cell("new")
    assert old._workers == [] and len(new._workers) == 1
    answers = new.agents["which"].join(range(40), timeout=60)
    assert answers == [["new", i] for i in range(40)]


def test_replace_serving_false_lets_two_members_serve(make_app: MakeApp) -> None:
    apps = []
    for _ in range(2):
        app = make_app("members", replace_serving=False)

        @app.agent()
        def member(value: Any) -> Any:
            return value

        apps.append(app.serve())
    assert all(len(app._workers) == 1 for app in apps)


@pytest.mark.integration
def test_open_apps_are_closed_at_exit(
    kafka_bootstrap: str, kafka_client_settings: Dict[str, Any]
) -> None:
    # A process that serves, asks (starting a client lazily) and then
    # simply ends with requests still in flight: the exit hook closes the
    # Apps before the interpreter stops thread pools (agents finish their
    # work) and deletes the client's reply topic.
    script = """
import json, os, sys, time
import replies
settings = json.loads(os.environ["SETTINGS"])
server = replies.App(os.environ["APP_ID"], broker=os.environ["BROKER"], topic_partitions=1, **settings)
@server.agent(concurrency=2)
def echo(value):
    time.sleep(0.01)
    return value
server.serve()
client = replies.App(os.environ["APP_ID"] + "-client", broker=os.environ["BROKER"], **settings)
assert client.topic(echo.topic_name).join(range(30), timeout=20) == list(range(30))
pending = [client.topic(echo.topic_name).ask_nowait(i) for i in range(20)]
print(client.reply_to, flush=True)
"""
    env = dict(
        os.environ,
        BROKER=f"kafka://{kafka_bootstrap}",
        APP_ID=f"exit{uuid.uuid4().hex[:8]}",
        SETTINGS=json.dumps(kafka_client_settings),
        PYTHONPATH=str(ROOT),
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "stopped" not in done.stderr, done.stderr[-3000:]
    reply_to = done.stdout.strip()
    assert reply_to.startswith("f-reply-")
    observer = replies.App("observer", broker=f"kafka://{kafka_bootstrap}", **kafka_client_settings)
    try:
        assert not observer.start().transport.topic_exists(reply_to)
    finally:
        observer.close()


@pytest.mark.integration
def test_threads_still_asking_when_main_ends_are_answered_then_closed(
    kafka_bootstrap: str, kafka_client_settings: Dict[str, Any], tmp_path: Path
) -> None:
    # The main thread ends while a non-daemon thread has yet to ask: its
    # asks (the first one starting the App) are answered by a worker
    # process, and the App is closed, its topic deleted, after it ends.
    from tests.test_worker_processes import Workers

    workers = Workers(kafka_bootstrap, kafka_client_settings, tmp_path)
    try:
        workers.start()
        script = """
import json, os, threading, time
import replies
settings = json.loads(os.environ["REPLIES_TEST_KAFKA_SETTINGS"])
client = replies.App(os.environ["REPLIES_TEST_APP_ID"] + "-client",
                     broker=os.environ["REPLIES_TEST_BROKER_URL"], request_timeout=30, **settings)
work = client.topic(os.environ["REPLIES_TEST_APP_ID"] + "-work")

def asker():
    time.sleep(0.5)
    answers = [work.ask(i)["value"] for i in range(20)]
    print(json.dumps({"answers": answers, "reply_to": client.reply_to}), flush=True)

threading.Thread(target=asker, name="asker").start()
"""
        done = subprocess.run(
            [sys.executable, "-c", script], env=workers.env, capture_output=True, text=True,
            timeout=90,
        )
    finally:
        workers.stop_all()
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["answers"] == list(range(20))
    observer = replies.App("observer", broker=f"kafka://{kafka_bootstrap}", **kafka_client_settings)
    try:
        assert not observer.start().transport.topic_exists(result["reply_to"])
    finally:
        observer.close()
