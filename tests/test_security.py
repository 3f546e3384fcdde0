"""TLS, SASL and ACLs on a real broker, and the least privilege each side needs.

The broker (fixture ``secure_kafka``) takes clients only over SASL_SSL with
SCRAM-SHA-512 and denies whatever no ACL allows. Each test makes users of
its own and grants them exactly the ACLs the README's Security section
lists (:func:`grant_client`, :func:`grant_worker`), so these tests are also
the proof that those ACLs are enough.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, List

import kafka
import kafka.errors
import pytest
from kafka.admin import NewTopic

import replies
from replies.transport.kafka import KafkaTransport
from tests.kafka.harness import SecureAccess, make_ca

pytestmark = [pytest.mark.integration, pytest.mark.kafka_only, pytest.mark.timeout(90)]


# -- the documented least privilege -----------------------------------------------


def grant_client(
    access: SecureAccess, user: str, agent_topics: List[str], reply_to_prefix: str
) -> None:
    """What an asking App needs: write the agent topics it asks; create,
    read, describe and delete its own reply topics, by prefix."""
    for topic in agent_topics:
        access.allow(user, ["WRITE", "DESCRIBE"], "TOPIC", topic)
    access.allow(
        user, ["CREATE", "READ", "DESCRIBE", "DELETE"], "TOPIC", reply_to_prefix, "PREFIXED"
    )


def grant_worker(
    access: SecureAccess, user: str, agent_topic: str, group: str, reply_to_prefix: str
) -> None:
    """What a serving App needs: read its topic and its consumer group, write
    the reply topics of the clients it answers (by their prefix)."""
    access.allow(user, ["READ"], "TOPIC", agent_topic)
    access.allow(user, ["READ"], "GROUP", group)
    access.allow(user, ["WRITE"], "TOPIC", reply_to_prefix, "PREFIXED")


# -- fixtures ------------------------------------------------------------------------


@dataclass
class Scene:
    """Names and users of one test; Apps made here are closed after it."""

    access: SecureAccess
    prefix: str
    apps: List[replies.App] = field(default_factory=list)

    @property
    def app_id(self) -> str:
        return f"{self.prefix}shop"

    def topic(self, agent: str) -> str:
        return f"{self.app_id}-{agent}"

    def user(self, name: str) -> str:
        user = f"{self.prefix}{name}"
        self.access.add_user(user, self.password(user))
        return user

    @staticmethod
    def password(user: str) -> str:
        return f"pw-{user}"

    def settings(self, user: str, **overrides: Any) -> dict[str, Any]:
        return {**self.access.client_settings(user, self.password(user)), **overrides}

    def app(self, user: str, **settings: Any) -> replies.App:
        settings.setdefault("connect_timeout", 5)
        settings.setdefault("request_timeout", 20)
        settings.setdefault("topic_partitions", 2)
        app = replies.App(
            self.app_id,
            broker=f"kafka://{self.access.bootstrap_servers}",
            **{**self.settings(user), **settings},
        )
        self.apps.append(app)
        return app

    def create_topic(self, name: str, partitions: int = 2) -> None:
        with self.access.admin() as admin:
            admin.create_topics([NewTopic(name, partitions, 1)])

    def worker(self, user: str, **settings: Any) -> replies.App:
        """An App serving ``double`` on its (pre-created) topic."""
        app = self.app(user, **settings)

        @app.agent()
        def double(value: int) -> int:
            return 2 * value

        return app


@pytest.fixture
def scene(secure_kafka: SecureAccess, topic_prefix: str) -> Iterator[Scene]:
    scene = Scene(secure_kafka, topic_prefix)
    yield scene
    for app in reversed(scene.apps):
        app.close(timeout=10)


def _served(scene: Scene, reply_to_prefix: str) -> replies.App:
    """A worker with exactly the worker ACLs, serving ``double``."""
    scene.create_topic(scene.topic("double"))
    user = scene.user("worker")
    grant_worker(scene.access, user, scene.topic("double"), scene.topic("double"), reply_to_prefix)
    return scene.worker(user).serve()


# -- tests ---------------------------------------------------------------------------


def test_ask_and_serve_over_tls_with_least_privilege(scene: Scene) -> None:
    replies_prefix = f"{scene.prefix}c-"
    _served(scene, replies_prefix)
    user = scene.user("client")
    grant_client(scene.access, user, [scene.topic("double")], replies_prefix)
    client = scene.app(user, reply_to_prefix=replies_prefix).start()
    topic = client.topic(scene.topic("double"))
    assert topic.ask(21) == 42
    assert topic.join(range(10)) == [2 * i for i in range(10)]
    reply_topic = client.reply_to
    client.close(timeout=10)
    with scene.access.admin() as admin:  # its DELETE right removed its topic
        assert reply_topic not in admin.list_topics()


def test_a_shared_reply_topic_needs_only_read(scene: Scene) -> None:
    """A client that reads a pre-created reply topic needs no CREATE or DELETE."""
    shared = f"{scene.prefix}replies"
    scene.create_topic(shared, partitions=1)
    _served(scene, shared)
    user = scene.user("client")
    scene.access.allow(user, ["WRITE"], "TOPIC", scene.topic("double"))
    scene.access.allow(user, ["READ"], "TOPIC", shared)
    client = scene.app(user, reply_to=shared).start()
    assert client.topic(scene.topic("double")).ask(5) == 10


def test_wrong_password_is_an_authentication_error(scene: Scene) -> None:
    user = scene.user("client")
    app = scene.app(user, sasl_plain_password="not-the-password")
    with pytest.raises(replies.TransportError) as caught:
        app.start()
    assert caught.value.cause == "authentication_failed"
    message = str(caught.value)
    assert "authentication failed" in message
    assert f"user {user!r}" in message
    assert "invalid credentials" in message  # the broker's own reason


def test_unknown_user_is_an_authentication_error(scene: Scene) -> None:
    app = scene.app(f"{scene.prefix}nobody")
    with pytest.raises(replies.TransportError) as caught:
        app.start()
    assert caught.value.cause == "authentication_failed"


def test_untrusted_ca_is_a_tls_error(scene: Scene, tmp_path: Path) -> None:
    other_ca, _ = make_ca(tmp_path, "someone-else")
    user = scene.user("client")
    app = scene.app(user, ssl_cafile=str(other_ca))
    with pytest.raises(replies.TransportError) as caught:
        app.start()
    assert caught.value.cause == "tls_failed"
    assert "TLS verification of" in str(caught.value)
    assert "certificate" in str(caught.value)


def test_client_without_write_gets_an_authorization_error(scene: Scene) -> None:
    replies_prefix = f"{scene.prefix}c-"
    _served(scene, replies_prefix)
    user = scene.user("client")
    # Everything but WRITE on the agent's topic.
    scene.access.allow(user, ["DESCRIBE"], "TOPIC", scene.topic("double"))
    scene.access.allow(
        user, ["CREATE", "READ", "DESCRIBE", "DELETE"], "TOPIC", replies_prefix, "PREFIXED"
    )
    client = scene.app(user, reply_to_prefix=replies_prefix, request_timeout=60).start()
    with pytest.raises(replies.TransportError) as caught:
        client.topic(scene.topic("double")).ask(1)
    assert not isinstance(caught.value, replies.ReplyTimeoutError)
    _assert_denied(caught.value, "WRITE", scene.topic("double"), user)


def test_client_with_no_acl_on_the_topic_gets_an_authorization_error(scene: Scene) -> None:
    replies_prefix = f"{scene.prefix}c-"
    scene.create_topic(scene.topic("double"))
    user = scene.user("client")
    scene.access.allow(
        user, ["CREATE", "READ", "DESCRIBE", "DELETE"], "TOPIC", replies_prefix, "PREFIXED"
    )
    client = scene.app(user, reply_to_prefix=replies_prefix, request_timeout=60).start()
    with pytest.raises(replies.TransportError) as caught:
        client.topic(scene.topic("double")).ask(1)
    _assert_denied(caught.value, "WRITE", scene.topic("double"), user)


def test_client_without_create_on_its_reply_topic(scene: Scene) -> None:
    user = scene.user("client")
    app = scene.app(user)
    with pytest.raises(replies.TransportError) as caught:
        app.start()
    _assert_denied(caught.value, "CREATE", app.reply_to, user)


def test_worker_without_read_on_its_topic_is_refused(scene: Scene) -> None:
    scene.create_topic(scene.topic("double"))
    user = scene.user("worker")
    scene.access.allow(user, ["READ"], "GROUP", scene.topic("double"))
    scene.access.allow(user, ["DESCRIBE"], "TOPIC", scene.topic("double"))
    with pytest.raises(replies.TransportError) as caught:
        scene.worker(user).serve()
    _assert_denied(caught.value, "READ", scene.topic("double"), user)


def test_worker_with_no_acl_on_its_topic_is_refused(scene: Scene) -> None:
    scene.create_topic(scene.topic("double"))
    user = scene.user("worker")
    scene.access.allow(user, ["READ"], "GROUP", scene.topic("double"))
    with pytest.raises(replies.TransportError) as caught:
        scene.worker(user).serve()
    # Without CREATE the broker will not say whether the topic exists.
    assert caught.value.cause == "authorization_failed"
    assert caught.value.operation in ("CREATE", "READ")
    assert scene.topic("double") in str(caught.value)


def test_worker_without_read_on_its_group_is_refused(scene: Scene) -> None:
    scene.create_topic(scene.topic("double"))
    user = scene.user("worker")
    scene.access.allow(user, ["READ"], "TOPIC", scene.topic("double"))
    with pytest.raises(replies.TransportError) as caught:
        scene.worker(user).serve()
    error = caught.value
    assert error.cause == "authorization_failed"
    assert error.operation == "READ"
    assert error.group == scene.topic("double")
    assert f"group {scene.topic('double')}" in str(error)


def test_a_client_cannot_read_another_clients_reply_topic(scene: Scene) -> None:
    replies_a, replies_b = f"{scene.prefix}a-", f"{scene.prefix}b-"
    _served(scene, scene.prefix)  # the worker may answer both
    alice, bob = scene.user("alice"), scene.user("bob")
    grant_client(scene.access, alice, [scene.topic("double")], replies_a)
    grant_client(scene.access, bob, [scene.topic("double")], replies_b)
    app_a = scene.app(alice, reply_to_prefix=replies_a).start()
    assert app_a.topic(scene.topic("double")).ask(4) == 8  # a reply is on alice's topic

    # Through this library: bob's transport may not read alice's topic.
    transport = KafkaTransport([scene.access.bootstrap_servers], scene.settings(bob))
    try:
        with pytest.raises(replies.TransportError) as caught:
            transport.reply_reader(app_a.reply_to, timeout=10)
    finally:
        transport.close(5)
    _assert_denied(caught.value, "READ", app_a.reply_to, bob)

    # With kafka-python directly: the broker will not even describe the
    # topic to bob, so no consumer of his can find it, from its start or not.
    admin = kafka.KafkaAdminClient(
        bootstrap_servers=scene.access.bootstrap_servers, **scene.settings(bob)
    )
    try:
        (described,) = admin.describe_topics([app_a.reply_to])
    finally:
        admin.close()
    assert described["error_code"] == kafka.errors.TopicAuthorizationFailedError.errno
    consumer = kafka.KafkaConsumer(
        bootstrap_servers=scene.access.bootstrap_servers,
        auto_offset_reset="earliest",
        **scene.settings(bob),
    )
    try:
        assert not consumer.partitions_for_topic(app_a.reply_to)
        consumer.assign([kafka.TopicPartition(app_a.reply_to, 0)])
        assert not any(consumer.poll(timeout_ms=200) for _ in range(10))
    finally:
        consumer.close()

    # Nor may bob name alice's topic as his own reply topic.
    app_b = scene.app(bob, reply_to=app_a.reply_to)
    with pytest.raises((replies.TransportError, ValueError)):
        app_b.start()


@pytest.mark.xfail(
    reason="worker side (issue 9): an agent whose reply the broker refuses stops "
    "instead of skipping that reply; remove this mark once the worker contains it",
    strict=False,
)
def test_worker_without_write_on_a_reply_topic_keeps_serving_others(
    scene: Scene, caplog: pytest.LogCaptureFixture
) -> None:
    allowed, denied = f"{scene.prefix}ok-", f"{scene.prefix}no-"
    worker = _served(scene, allowed)
    ok, refused = scene.user("ok"), scene.user("refused")
    grant_client(scene.access, ok, [scene.topic("double")], allowed)
    grant_client(scene.access, refused, [scene.topic("double")], denied)
    good = scene.app(ok, reply_to_prefix=allowed, request_timeout=10).start()
    bad = scene.app(refused, reply_to_prefix=denied, request_timeout=3).start()
    with caplog.at_level(logging.WARNING, logger="replies"):
        for round in range(2):
            with pytest.raises(replies.ReplyTimeoutError):
                bad.topic(scene.topic("double")).ask(round)
            assert good.topic(scene.topic("double")).ask(round + 10) == 2 * (round + 10)
    logged = [r.getMessage() for r in caplog.records if bad.reply_to in r.getMessage()]
    assert logged, "the refused reply was not logged"
    assert all(w.alive for w in worker._workers)  # private: no public liveness yet


def test_nothing_decodes_received_data_into_code() -> None:
    """No decoder that can run code (pickle and kin, eval/exec) is in the
    package: values are JSON (or raw bytes), parsed by :mod:`json`."""
    root = Path(replies.__file__).parent
    forbidden = re.compile(
        r"\b(pickle|cPickle|dill|cloudpickle|marshal|shelve|jsonpickle|yaml)\b|\b(eval|exec)\s*\("
    )
    offenders = [
        f"{path.relative_to(root)}:{number}: {line.strip()}"
        for path in sorted(root.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if forbidden.search(line)
    ]
    assert offenders == []


def _assert_denied(error: replies.TransportError, operation: str, topic: str, user: str) -> None:
    assert error.cause == "authorization_failed", repr(error)
    assert error.operation == operation
    assert error.topic == topic
    message = str(error)
    assert f"{operation} on topic {topic}" in message
    assert f"user {user!r}" in message
