"""Interoperability with real Faust, each side in a process of its own.

On the suite's broker (Apache Kafka, or Tansu with REPLIES_TEST_BROKER=tansu):

1. A Faust worker (``fapp.py``; its agents ``yield`` their replies) is
   asked by this library's ``App.topic(...)``: ask, map, join, stream, in
   header mode and envelope mode, with Records as dicts or, through
   ``json_object_hook``/``json_default``, as a class of the caller's own.
2. This library's worker (``python -m replies worker tests.faust.ours:app``)
   is asked by a Faust client (``client.py``) with ``agent.ask()`` and
   ``agent.join()``, in both modes.
3. A Faust agent that raises: our caller times out.

Both workers run once per module and are ready before the first request
(a request sent before a worker made its topic would let the broker
auto-create it with one partition).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

import replies
from tests.faust import procs
from tests.faust.records import Point, point_default, point_hook, record

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MODES = ["headers", "envelope"]


@pytest.fixture
def asker(
    kafka_bootstrap: str, kafka_client_settings: Dict[str, Any]
) -> Iterator[Callable[..., replies.App]]:
    """Makes Apps on the suite's broker that only ask; closes them after."""
    apps: List[replies.App] = []

    def make(**settings: Any) -> replies.App:
        settings.setdefault("request_timeout", 30.0)
        app = replies.App(f"asker-{uuid.uuid4().hex[:8]}", broker=f"kafka://{kafka_bootstrap}",
                          **{**kafka_client_settings, **settings})
        apps.append(app)
        return app

    yield make
    for app in reversed(apps):
        app.close()


# -- 1. our App asks a Faust worker -------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_our_app_asks_a_faust_agent(
    faust_worker: procs.FaustWorker, asker: Callable[..., replies.App], mode: str
) -> None:
    # fapp's double is an async generator agent: `yield value * 2`.
    with asker(request_mode=mode) as app:
        double = app.topic(faust_worker.topics["double"])
        assert double.ask(21) == 42
        assert double.ask(21, key="k1") == 42
        assert sorted(double.map([1, 2, 3])) == [2, 4, 6]
        assert double.join([1, 2, 3]) == [2, 4, 6]
        assert double.kvjoin([(b"a", 4), (b"b", 5)]) == [8, 10]
        # A Faust reply is one whole answer: a stream of it ends after it.
        assert list(double.stream(6)) == [12]


@pytest.mark.parametrize("mode", MODES)
def test_faust_records_are_dicts_by_default(
    faust_worker: procs.FaustWorker, asker: Callable[..., replies.App], mode: str
) -> None:
    with asker(request_mode=mode) as app:
        # flip takes a Point and replies with a Point; norm replies a dict.
        assert app.topic(faust_worker.topics["flip"]).ask(record(1, 2)) == record(2, 1)
        assert app.topic(faust_worker.topics["norm"]).ask(record(3, 4)) == {"x": 3, "y": 4, "sum": 7}


@pytest.mark.parametrize("mode", MODES)
def test_faust_records_as_the_callers_own_class(
    faust_worker: procs.FaustWorker, asker: Callable[..., replies.App], mode: str
) -> None:
    with asker(request_mode=mode, json_object_hook=point_hook, json_default=point_default) as app:
        flip = app.topic(faust_worker.topics["flip"])
        assert flip.ask(Point(1, 2)) == Point(2, 1)
        assert flip.join([Point(1, 2), Point(5, 6)]) == [Point(2, 1), Point(6, 5)]
        norm = app.topic(faust_worker.topics["norm"])
        assert norm.ask(Point(3, 4)) == {"x": 3, "y": 4, "sum": 7}


# -- 3. a Faust agent that raises ---------------------------------------------


def test_faust_agent_that_raises_gives_our_caller_a_timeout(
    faust_worker: procs.FaustWorker, asker: Callable[..., replies.App]
) -> None:
    """Faust sends no reply when its agent raises, so the caller times out.

    Faust's agent logs the exception and sends nothing to the reply topic
    (no error reply exists in Faust's protocol; the captured wire records
    show the same). So the best our ``ask()`` can do is to raise
    ``ReplyTimeoutError`` (a builtin ``TimeoutError`` too) once its
    ``timeout`` passes; a remote error is impossible. The worker's log shows
    that the request did arrive and the agent did raise.
    """
    with asker() as app:
        started = time.monotonic()
        with pytest.raises(replies.ReplyTimeoutError) as info:
            app.topic(faust_worker.topics["fail"]).ask(7, timeout=2.0)
        assert time.monotonic() - started >= 2.0
        assert isinstance(info.value, TimeoutError)
        # The App is fine afterwards.
        assert app.topic(faust_worker.topics["double"]).ask(1) == 2
    deadline = time.monotonic() + 10
    while "fail agent refuses 7" not in faust_worker.log_text():
        assert time.monotonic() < deadline, faust_worker.log_tail()
        time.sleep(0.1)


# -- 2. a Faust client asks our worker ----------------------------------------


def _client_ops(topics: Dict[str, str], mode: str) -> List[Dict[str, Any]]:
    envelope = mode == "envelope"
    ops: List[Dict[str, Any]] = [
        {"label": "ask", "op": "ask", "topic": topics["double"], "value": 21},
        {"label": "ask_key", "op": "ask", "topic": topics["keyed"], "value": "v", "key": "k1"},
        {"label": "join", "op": "join", "topic": topics["double"], "values": [1, 2, 3]},
        {"label": "join_key", "op": "join", "topic": topics["keyed"], "values": [1, 2], "key": "k2"},
        {"label": "record", "op": "ask", "topic": topics["flip"], "value": record(1, 2)},
        {"label": "fail", "op": "ask", "topic": topics["fail"], "value": 7},
        {"label": "after_fail", "op": "ask", "topic": topics["double"], "value": 5},
        {"label": "generator", "op": "ask", "topic": topics["count"], "value": 3},
        {"label": "generator_join", "op": "join", "topic": topics["count"], "values": [2, 5]},
        {"label": "after_generator", "op": "ask", "topic": topics["double"], "value": 6},
    ]
    for op in ops:
        op.update(label=f"{mode}:{op['label']}", envelope=envelope, timeout=20.0)
    return ops


@pytest.fixture(scope="module")
def faust_asked_ours(
    our_worker: procs.OurWorker, kafka_bootstrap: str, faust_python: Path
) -> Dict[str, Dict[str, Any]]:
    """One Faust client run (both modes): its results by label."""
    ops = [op for mode in MODES for op in _client_ops(our_worker.topics, mode)]
    out = procs.run_client(kafka_bootstrap, ops, python=faust_python)
    assert out["faust"] == "0.15.3"
    return {result["label"]: result for result in out["results"]}


def _got(results: Dict[str, Dict[str, Any]], mode: str, label: str) -> Any:
    result = results[f"{mode}:{label}"]
    assert result["ok"], result
    return result["value"]


@pytest.mark.parametrize("mode", MODES)
def test_faust_client_asks_our_agent(faust_asked_ours: Dict[str, Dict[str, Any]], mode: str) -> None:
    assert _got(faust_asked_ours, mode, "ask") == 42
    assert _got(faust_asked_ours, mode, "join") == [2, 4, 6]
    # Our agent got the Faust client's key.
    assert _got(faust_asked_ours, mode, "ask_key") == {"value": "v", "key": "k1"}
    assert _got(faust_asked_ours, mode, "join_key") == [
        {"value": 1, "key": "k2"}, {"value": 2, "key": "k2"}]


@pytest.mark.parametrize("mode", MODES)
def test_faust_client_sends_records_to_our_agent(
    faust_asked_ours: Dict[str, Dict[str, Any]], mode: str
) -> None:
    # The Record arrives as a dict; the dict our agent returns with the same
    # namespace reaches the Faust client as a Point again (client.py shows
    # a Record as its JSON).
    assert _got(faust_asked_ours, mode, "record") == record(2, 1)


@pytest.mark.parametrize("mode", MODES)
def test_faust_client_gets_our_error_reply_as_a_value(
    faust_asked_ours: Dict[str, Dict[str, Any]], mode: str
) -> None:
    # Faust has no error replies: its ask() returns our error description
    # as the value. The reply is a complete @ReqRepResponse, so the
    # client's reply consumer keeps working: the next ask is answered.
    assert _got(faust_asked_ours, mode, "fail") == {
        "type": "ValueError", "message": "fail agent refuses 7", "traceback": None}
    assert _got(faust_asked_ours, mode, "after_fail") == 10


@pytest.mark.parametrize("mode", MODES)
def test_faust_client_gets_one_reply_from_our_generator_agent(
    faust_asked_ours: Dict[str, Dict[str, Any]], mode: str
) -> None:
    # A Faust client's reply consumer breaks on a second reply to one
    # request, so a generator agent answers a Faust request once, with its
    # first value; the client keeps working afterwards.
    assert _got(faust_asked_ours, mode, "generator") == 1
    assert _got(faust_asked_ours, mode, "generator_join") == [1, 1]
    assert _got(faust_asked_ours, mode, "after_generator") == 12
