"""The in-process broker: partitions, retention, reply and group readers."""

from __future__ import annotations

import uuid
from typing import Collection, List

import pytest

from replies.core.codec import Message
from replies.transport.base import TopicPartition
from replies.errors import TransportError
from replies.transport.memory import MemoryBroker, MemoryTransport


def transport() -> MemoryTransport:
    return MemoryTransport(str(uuid.uuid4()))


def message(n: int, key: bytes = b"") -> Message:
    return Message(key or None, str(n).encode(), [("h", b"v")])


def test_reply_reader_starts_at_the_end_of_every_partition() -> None:
    t = transport()
    t.create_topic("replies", partitions=2)
    t.produce("replies", message(0)).result()
    reader = t.reply_reader("replies", timeout=1)
    assert reader.poll(0) == []
    t.produce("replies", message(1))
    t.produce("replies", message(2))
    got = reader.poll(1)
    assert sorted(r.value for r in got) == [b"1", b"2"]
    assert all(r.headers == [("h", b"v")] for r in got)


def test_retention_keeps_memory_bounded_and_readers_skip_ahead() -> None:
    t = transport()
    t.broker.retention = 100
    t.create_topic("log", partitions=1)
    revoked: List[Collection[TopicPartition]] = []
    group = t.group_reader("log", "g", on_revoke=revoked.append, max_records=1000)
    for n in range(1000):
        t.produce("log", message(n))
    (log,) = t.broker.topics["log"]
    assert len(log.records) <= 100
    got = group.poll(0.1)
    assert got and got[-1].offset == 999
    assert got[0].offset == log.base  # behind the oldest kept record: skipped ahead
    assert [r.offset for r in got] == list(range(log.base, 1000))


def test_group_members_split_partitions_and_resume_from_commits() -> None:
    t = transport()
    t.create_topic("work", partitions=4)
    for n in range(8):
        t.produce("work", message(n, key=f"k{n}".encode()))
    lost: List[Collection[TopicPartition]] = []
    first = t.group_reader("work", "g", on_revoke=lost.append, max_records=100)
    second = t.group_reader("work", "g", on_revoke=lambda _: None, max_records=100)
    a, b = first.poll(0.1), second.poll(0.1)
    assert {r.partition for r in a}.isdisjoint({r.partition for r in b})
    assert sorted(r.value for r in a + b) == sorted(str(n).encode() for n in range(8))
    second.commit({("work", r.partition): r.offset + 1 for r in b})
    second.close()
    # The first member takes over; the partitions it gains start at the
    # committed offsets, so nothing the second member finished comes back.
    assert first.poll(0.1) == []
    t.produce("work", message(99, key=b"k1"))
    assert [r.value for r in first.poll(0.1)] == [b"99"]
    first.close()
    assert lost == []  # the first member only gained partitions


def test_paused_reader_returns_nothing_until_resumed() -> None:
    t = transport()
    t.create_topic("p", partitions=1)
    reader = t.group_reader("p", "g", on_revoke=lambda _: None, max_records=10)
    reader.pause()
    t.produce("p", message(1))
    assert reader.poll(0.05) == []
    reader.resume()
    assert [r.value for r in reader.poll(0.1)] == [b"1"]
    reader.close()


def test_brokers_are_shared_by_name_only() -> None:
    name = str(uuid.uuid4())
    assert MemoryTransport(name).broker is MemoryTransport(name).broker
    assert MemoryTransport(name).broker is not transport().broker



def test_a_record_is_acknowledged_before_produce_returns() -> None:
    transport = MemoryTransport(f"acks-{uuid.uuid4().hex}", auto_create_topics=True)
    fates: List[object] = []
    transport.produce_then("t", Message(None, b"v", []), fates.append)
    assert fates == [None]
    assert transport.produce("t", Message(None, b"v", [])).result(timeout=0) is None
    transport.create_topic("small", config={"max.message.bytes": "10"})
    transport.produce_then("small", Message(None, b"x" * 11, []), fates.append)
    refused = transport.produce("small", Message(None, b"x" * 11, []))
    assert isinstance(fates[1], TransportError) and fates[1].cause == "too_large"
    assert isinstance(refused.exception(timeout=0), TransportError)


def test_an_on_done_that_raises_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    transport = MemoryTransport(f"acks-{uuid.uuid4().hex}", auto_create_topics=True)

    def broken(error: object) -> None:
        raise RuntimeError("callback bug")

    transport.produce_then("t", Message(None, b"v", []), broken)  # sent: not a failure to send
    assert "callback bug" in caplog.text
