"""Interop with Spring for Apache Kafka, both directions, on the suite's Kafka broker.

A real Spring program (tests/spring, built once by Maven and cached) serves
``@KafkaListener`` + ``@SendTo`` listeners that our App asks with
``wire="spring"``, and asks our agents with ``ReplyingKafkaTemplate``, with
and without a reply partition, with binary and string correlation ids.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Dict, Iterator

import kafka
import pytest
from kafka.admin import NewTopic

import replies
from tests.spring import SpringService, spring_ask

pytestmark = [pytest.mark.integration, pytest.mark.kafka_only, pytest.mark.timeout(300)]


def _create_topics(bootstrap: str, partitions: Dict[str, int]) -> None:
    admin = kafka.KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, count, 1) for name, count in partitions.items()])
    finally:
        admin.close()


@pytest.fixture(scope="module")
def spring_topic(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base topic T of one Spring service for the module (T-double, T-json)."""
    base = f"spring-{uuid.uuid4().hex[:8]}"
    _create_topics(kafka_bootstrap, {f"{base}-double": 2, f"{base}-json": 2})
    log = Path(tmp_path_factory.mktemp("spring")) / "service.log"
    with SpringService(kafka_bootstrap, base, log):
        yield base


@pytest.fixture
def spring_app(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Iterator[replies.App]:
    settings: Dict[str, Any] = getattr(request, "param", {})
    app = replies.App(f"sp-{uuid.uuid4().hex[:8]}", broker=f"kafka://{kafka_bootstrap}",
                      wire="spring", request_timeout=30.0, **settings)
    with app:
        yield app


# -- our App asks the Spring service --------------------------------------------


@pytest.mark.parametrize("spring_app", [{"spring_correlation": "binary"}, {"spring_correlation": "string"}],
                         indirect=True, ids=["binary-correlation", "string-correlation"])
def test_ask_spring_listener(spring_app: replies.App, spring_topic: str) -> None:
    double = spring_app.topic(f"{spring_topic}-double")
    assert double.ask(21) == 42
    assert double.join(range(50)) == [2 * n for n in range(50)]
    assert double.kvjoin([(f"k{n}", n) for n in range(10)]) == [2 * n for n in range(10)]


def test_ask_spring_json_listener_keeps_key(spring_app: replies.App, spring_topic: str) -> None:
    reply = spring_app.topic(f"{spring_topic}-json").ask({"a": 1, "b": [1, 2]}, key="order-7")
    # The listener saw our key (KafkaHeaders.RECEIVED_KEY) and JSON object.
    assert reply == {"a": 1, "b": [1, 2], "seen_by": "spring", "key": "order-7"}


def test_spring_error_handler_reply_is_a_remote_error(spring_app: replies.App, spring_topic: str) -> None:
    with pytest.raises(replies.RemoteError) as caught:
        spring_app.topic(f"{spring_topic}-json").ask({"fail": True, "why": "out of stock"}, timeout=20)
    assert caught.value.type_name == "java.lang.IllegalStateException"
    assert "asked to fail: out of stock" in caught.value.message


def test_spring_listener_that_throws_without_error_handler_sends_nothing(
    spring_app: replies.App, spring_topic: str
) -> None:
    # Spring's container error handler retries, logs and moves on: no reply.
    with pytest.raises(TimeoutError):
        spring_app.topic(f"{spring_topic}-double").ask("not a number", timeout=4)
    assert spring_app.topic(f"{spring_topic}-double").ask(5) == 10  # the listener still serves


def test_ask_spring_listener_on_a_shared_reply_topic_partition(
    kafka_bootstrap: str, spring_topic: str
) -> None:
    shared = f"shared-{uuid.uuid4().hex[:8]}"
    _create_topics(kafka_bootstrap, {shared: 4})
    with replies.App(f"sp-{uuid.uuid4().hex[:8]}", broker=f"kafka://{kafka_bootstrap}", wire="spring",
                     reply_to=shared, reply_partition=2) as app:
        assert app.topic(f"{spring_topic}-double").join(range(20)) == [2 * n for n in range(20)]
    consumer = kafka.KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    try:
        ends = consumer.end_offsets([kafka.TopicPartition(shared, p) for p in range(4)])
    finally:
        consumer.close()
    # kafka_replyPartition was honoured: every reply is in partition 2.
    assert {tp.partition: end for tp, end in ends.items()} == {0: 0, 1: 0, 2: 20, 3: 0}


# -- Spring's ReplyingKafkaTemplate asks our worker -----------------------------


@pytest.fixture
def worker(kafka_bootstrap: str) -> Iterator[replies.App]:
    app = replies.App(f"spw-{uuid.uuid4().hex[:8]}", broker=f"kafka://{kafka_bootstrap}", topic_partitions=2)

    @app.agent()
    def double(value: Any, key: Any = None) -> Any:
        n = value["n"] if isinstance(value, dict) else value
        if n == 13:
            raise ValueError("unlucky 13")
        return {"n": n, "double": 2 * n} if isinstance(value, dict) else 2 * n

    app.serve()
    try:
        yield app
    finally:
        app.close()


def _reply_topic(bootstrap: str, partitions: int) -> str:
    name = f"spring-replies-{uuid.uuid4().hex[:8]}"
    _create_topics(bootstrap, {name: partitions})
    return name


@pytest.mark.parametrize("string_correlation", [False, True], ids=["binary-correlation", "string-correlation"])
@pytest.mark.parametrize("reply_partition", [None, 1], ids=["whole-topic", "reply-partition"])
def test_spring_template_asks_our_agent(
    kafka_bootstrap: str, worker: replies.App, reply_partition: int | None, string_correlation: bool
) -> None:
    reply_topic = _reply_topic(kafka_bootstrap, 2)
    results = spring_ask(kafka_bootstrap, worker.agents["double"].topic_name, reply_topic, 30,
                         reply_partition=reply_partition, string_correlation=string_correlation)
    assert [r["i"] for r in results] == list(range(30))
    for r in results:
        if r["i"] == 13:
            # Our error reply carries Spring's kafka_exception-* headers, which the
            # template's reply error checker turns into an exception.
            assert r["error"] == "ValueError: unlucky 13"
            continue
        assert r["value"] == str(2 * r["i"])
        assert r["key"] == f"k{r['i']}"  # the request key is kept on the reply
        assert r["headers"]["kafka_correlationId"] == r["sent_correlation"]
        assert len(bytes.fromhex(r["sent_correlation"])) == (36 if string_correlation else 16)
        if reply_partition is not None:
            assert r["sent_reply_partition"] == "00000001"
            assert r["partition"] == 1


def test_spring_template_json_values_and_faust_callers_at_once(kafka_bootstrap: str, worker: replies.App) -> None:
    reply_topic = _reply_topic(kafka_bootstrap, 1)
    topic = worker.agents["double"].topic_name
    with replies.App(f"fz-{uuid.uuid4().hex[:8]}", broker=f"kafka://{kafka_bootstrap}") as faust_wire_client:
        pending = faust_wire_client.topic(topic).ask_nowait(21)
        # JacksonJsonSerializer adds __TypeId__ headers; the agent reads the JSON.
        results = spring_ask(kafka_bootstrap, topic, reply_topic, 5, json_values=True)
        assert pending.result(timeout=30) == 42
    import json

    assert [json.loads(r["value"]) for r in results] == [{"n": i, "double": 2 * i} for i in range(5)]
