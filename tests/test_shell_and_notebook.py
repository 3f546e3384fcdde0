"""What a user at a shell or in a notebook sees: progress bars, the map
iterator, timeout messages, error messages, and who reads a topic.

Behaviour tests run over the memory transport and a real Kafka broker.
"""

from __future__ import annotations

import datetime
import re
import sys
import threading
import time
from typing import Any, Callable

import pytest

import replies
from replies.core.codec import Codec

pytestmark = pytest.mark.timeout(120)

MakeApp = Callable[..., replies.App]


@pytest.fixture
def echo(make_app: MakeApp) -> replies.Agent:
    app = make_app("echo")

    @app.agent(concurrency=4)
    def echo(value: Any) -> Any:
        return value

    app.start()
    app.serve()
    return echo


def test_map_returns_an_iterator_with_len_and_a_repr(echo: replies.Agent) -> None:
    replies_ = echo.map([1, 2, 3])
    assert isinstance(replies_, replies.ReplyIterator)
    assert len(replies_) == 3
    assert repr(replies_).startswith(f"<ReplyIterator {echo.topic_name}: 0 of 3 replies taken")
    assert sorted(replies_) == [1, 2, 3]
    assert repr(replies_) == f"<ReplyIterator {echo.topic_name}: 3 of 3 replies taken, done>"


def test_closing_a_map_stops_waiting(echo: replies.Agent) -> None:
    replies_ = echo.kvmap([(None, i) for i in range(5)])
    next(replies_)
    replies_.close()
    assert len(echo.app.reply_consumer.table) == 0
    with pytest.raises(StopIteration):
        next(replies_)


def _last_bar(stderr: str) -> str:
    # tqdm redraws the line with carriage returns; the last state counts.
    return re.split(r"[\r\n]", stderr.strip())[-1]


def test_progress_bar_of_map_counts_the_replies(
    echo: replies.Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sorted(echo.map(range(7), progress=True)) == list(range(7))
    bar = _last_bar(capsys.readouterr().err)
    assert bar.startswith(echo.topic_name) and "7/7" in bar and "100%" in bar


def test_progress_bar_of_join_counts_the_replies(
    echo: replies.Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    assert echo.kvjoin([(None, i) for i in range(5)], progress=True) == list(range(5))
    assert "5/5" in _last_bar(capsys.readouterr().err)


def test_no_progress_bar_by_default(echo: replies.Agent, capsys: pytest.CaptureFixture[str]) -> None:
    echo.join(range(3))
    list(echo.map(range(3)))
    assert capsys.readouterr().err == ""


def test_progress_without_tqdm_says_what_to_install_and_sends_nothing(
    echo: replies.Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # makes the import fail
    for call in (echo.map, echo.join):
        with pytest.raises(ImportError, match=r"replies\[progress\]"):
            call([1], progress=True)
    assert len(echo.app.reply_consumer.table) == 0


def test_a_timeout_names_the_topic_and_hints_at_the_cause(make_app: MakeApp) -> None:
    app = make_app()
    release = threading.Event()

    @app.agent(concurrency=4)  # three requests below get stuck
    def slow(value: Any) -> Any:
        if value == "stuck":
            release.wait(10)
        return value

    app.start()
    app.serve()
    hint = f"is a worker serving it? `replies ping {slow.topic_name}`"
    try:
        with pytest.raises(replies.ReplyTimeoutError) as caught:
            slow.ask("stuck", timeout=0.5)
        assert str(caught.value) == f"nobody answered on topic {slow.topic_name} within 0.5 s: {hint}"
        assert caught.value.topic == slow.topic_name
        # Every way a wait runs out says the same: the promise's own deadline...
        promise = slow.ask_nowait("stuck", timeout=0.3)
        assert str(promise.exception(10)) == str(caught.value).replace("0.5", "0.3")
        # ...and a map or join that got some of its replies says how many not.
        with pytest.raises(replies.ReplyTimeoutError) as partly:
            slow.join(["stuck", "fine"], timeout=3)
        assert str(partly.value) == (
            f"1 of 2 replies missing on topic {slow.topic_name} after 3.0 s: {hint}"
        )
        with pytest.raises(replies.ReplyTimeoutError) as mapped:
            list(slow.map(["stuck"], timeout=0.5))
        assert str(mapped.value).startswith(f"nobody answered on topic {slow.topic_name}")
    finally:
        release.set()


# Tansu: kafka-python cannot read its DescribeGroups answers, so ping cannot work there.
@pytest.mark.kafka_only
def test_describe_readers_sees_the_group_serving_a_topic(make_app: MakeApp) -> None:
    app = make_app()

    @app.agent(concurrency=2)
    def double(value: int) -> int:
        return value * 2

    app.start()
    app.serve()
    assert double.join([1, 2, 3]) == [2, 4, 6]
    transport = app.transport
    assert transport.describe_readers(f"{app.id}-missing") is None
    deadline = time.monotonic() + 30
    while True:  # offsets are committed just after the replies leave
        readers = transport.describe_readers(double.topic_name)
        assert readers is not None
        assert readers.partitions == 2
        assert [(g.group_id, g.members) for g in readers.groups] == [(double.group_id, 1)]
        if readers.groups[0].lag == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert readers.groups[0].lag == 0


def test_codec_names_the_value_it_cannot_encode() -> None:
    codec = Codec()
    message = "cannot encode a set as JSON"
    with pytest.raises(TypeError, match=message):
        codec.encode_reply("cid", {"tags": {"a", "b"}})

    def dates_only(obj: Any) -> Any:
        if isinstance(obj, datetime.date):
            return obj.isoformat()
        raise TypeError(f"not a date: {obj!r}")

    with pytest.raises(TypeError, match=message):
        Codec(json_default=dates_only).dumps([datetime.date(2026, 1, 2), {1}])


def test_a_misspelt_setting_gets_a_suggestion() -> None:
    with pytest.raises(TypeError, match=r"request_timout \(did you mean request_timeout\?\)"):
        replies.App("x", request_timout=2)
    with pytest.raises(TypeError, match=r"securty_protocol \(did you mean security_protocol\?\)"):
        replies.App("x", securty_protocol="SSL")


# Tansu: kafka-python cannot read its DescribeGroups answers, so ping cannot work there.
@pytest.mark.kafka_only
def test_describe_readers_counts_the_lag_of_a_group_whose_members_left(
    make_app: MakeApp,
) -> None:
    server = make_app("server")

    @server.agent()
    def double(value: int) -> int:
        return value * 2

    server.start()
    server.serve()
    assert double.join([1]) == [2]
    group = double.group_id
    deadline = time.monotonic() + 30
    while server.transport.describe_readers(double.topic_name).groups[0].lag:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the answered request was never committed"
        time.sleep(0.1)
    server.close()  # the only member leaves the group

    client = make_app("client")
    client.start()
    for value in (2, 3, 4):
        client.topic(double.topic_name).cast(value).result(20)
    readers = client.transport.describe_readers(double.topic_name)
    assert readers is not None
    assert [(g.group_id, g.members, g.lag) for g in readers.groups] == [(group, 0, 3)]
