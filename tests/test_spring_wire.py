"""Spring's wire and reply partitions, without a broker (codec and memory transport)."""

from __future__ import annotations

import struct
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import replies
from replies.core.codec import (
    HEADER_REPLY_PARTITION,
    SPRING_CORRELATION_ID,
    SPRING_EXCEPTION_FQCN,
    SPRING_EXCEPTION_MESSAGE,
    SPRING_REPLY_PARTITION,
    SPRING_REPLY_TOPIC,
    Codec,
)
from replies.errors import DecodeError, RemoteError


def test_spring_request_headers_binary_correlation_and_reply_partition() -> None:
    cid = str(uuid.uuid4())
    message = Codec(wire="spring", reply_partition=3).encode_request(
        {"a": 1}, key="k1", reply_to="shop-replies", correlation_id=cid
    )
    headers = dict(message.headers)
    assert message.key == b"k1" and message.value == b'{"a":1}'
    assert headers[SPRING_REPLY_TOPIC] == b"shop-replies"
    assert headers[SPRING_CORRELATION_ID] == uuid.UUID(cid).bytes
    assert headers[SPRING_REPLY_PARTITION] == b"\x00\x00\x00\x03"
    assert "Faust-Ag-CorrelationId" not in headers


def test_spring_request_string_correlation() -> None:
    cid = str(uuid.uuid4())
    message = Codec(wire="spring", spring_correlation="string").encode_request(
        1, reply_to="r", correlation_id=cid
    )
    assert dict(message.headers)[SPRING_CORRELATION_ID] == cid.encode()
    assert SPRING_REPLY_PARTITION not in dict(message.headers)


def test_faust_request_asks_for_a_reply_partition_with_a_header_of_ours() -> None:
    message = Codec(reply_partition=5).encode_request(1, reply_to="r", correlation_id="c")
    headers = dict(message.headers)
    assert headers[HEADER_REPLY_PARTITION] == struct.pack(">i", 5)
    request = Codec().decode_request(None, message.value, message.headers)
    assert (request.wire, request.reply_partition, request.correlation_id) == ("faust", 5, "c")
    reply = Codec().encode_reply("c", 2, request=request)
    assert reply.partition == 5 and reply.key is None  # Faust's reply shape, our partition


@pytest.mark.parametrize("raw_cid", [uuid.uuid4().bytes, str(uuid.uuid4()).encode(), b"\xff\xfe-odd-id"])
def test_an_agent_answers_a_spring_request_in_spring_format(raw_cid: bytes) -> None:
    codec = Codec()  # an agent's codec: the request's headers decide
    headers = [
        (SPRING_REPLY_TOPIC, b"replies"),
        (SPRING_CORRELATION_ID, raw_cid),
        (SPRING_REPLY_PARTITION, b"\x00\x00\x00\x02"),
        ("__TypeId__", b"java.util.LinkedHashMap"),
    ]
    request = codec.decode_request(b"k9", b'{"n":4}', headers)
    assert request.value == {"n": 4} and request.wire == "spring"
    assert request.reply_to == "replies" and request.reply_partition == 2
    reply = codec.encode_reply(request.correlation_id or "", {"double": 8}, key=request.key, request=request)
    assert reply.key == b"k9"  # Spring keeps the request key on the reply
    assert reply.value == b'{"double":8}'  # the value itself, no Faust envelope
    assert reply.partition == 2
    assert dict(reply.headers)[SPRING_CORRELATION_ID] == raw_cid  # echoed byte for byte
    # and our own Spring-wire client reads it back
    back = Codec(wire="spring").decode_reply(reply.value, reply.headers)
    assert back.value == {"double": 8} and back.correlation_id == request.correlation_id


def test_spring_text_values_that_are_not_json_are_strings() -> None:
    request = Codec().decode_request(None, b"hello", [(SPRING_REPLY_TOPIC, b"r"), (SPRING_CORRELATION_ID, b"c")])
    assert request.value == "hello"
    assert Codec().decode_reply(b"42", [(SPRING_CORRELATION_ID, b"c")]).value == 42


def test_spring_error_replies_both_ways() -> None:
    codec = Codec()
    request = codec.decode_request(None, b"1", [(SPRING_REPLY_TOPIC, b"r"), (SPRING_CORRELATION_ID, b"c1")])
    reply = codec.encode_reply("c1", None, error=RemoteError("ValueError", "bad"), request=request)
    headers = dict(reply.headers)
    assert headers[SPRING_EXCEPTION_FQCN] == b"ValueError"
    assert headers[SPRING_EXCEPTION_MESSAGE] == b"bad"
    back = codec.decode_reply(reply.value, reply.headers)
    assert isinstance(back.error, RemoteError) and back.error.type_name == "ValueError"
    # A Spring listener error handler's reply (headers only, any body)
    spring = codec.decode_reply(b'{"error":"x"}', [(SPRING_CORRELATION_ID, b"c2"),
                                                  (SPRING_EXCEPTION_FQCN, b"java.lang.IllegalStateException"),
                                                  (SPRING_EXCEPTION_MESSAGE, b"nope")])
    assert spring.error is not None and spring.error.type_name == "java.lang.IllegalStateException"
    assert spring.error.message == "nope"


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        Codec(wire="kafka-streams")
    with pytest.raises(ValueError):
        Codec(wire="spring", request_mode="envelope")
    with pytest.raises(ValueError):
        Codec(spring_correlation="hex")
    with pytest.raises(ValueError, match="needs reply_to"):
        replies.App("a", reply_partition=1)
    with pytest.raises(ValueError, match="neither creates nor deletes"):
        replies.App("a", reply_to="shared", reply_partition=1, reply_create_topic=True)


@pytest.mark.parametrize("wire", ["faust", "spring"])
def test_clients_on_a_shared_reply_topic_read_only_their_partition(wire: str) -> None:
    broker = f"memory://{uuid.uuid4()}"
    server = replies.App("srv", broker=broker)

    @server.agent()
    def echo(value: object) -> object:
        return value

    with server:
        server.transport.create_topic("shared", partitions=3)
        server.serve()
        clients = [replies.App(f"c{p}", broker=broker, reply_to="shared", reply_partition=p, wire=wire)
                   for p in range(3)]
        try:
            for client in clients:
                client.start()  # every reader is open before anyone asks
            for p, client in enumerate(clients):
                assert client.topic(echo.topic_name).join([[p, n] for n in range(20)], timeout=10) == [
                    [p, n] for n in range(20)
                ]
            for client in clients:
                assert client._consumer is not None and client._consumer.table.unknown == 0
        finally:
            for client in clients:
                client.close()


_spring_headers = st.lists(
    st.tuples(
        st.sampled_from([SPRING_REPLY_TOPIC, SPRING_CORRELATION_ID, SPRING_REPLY_PARTITION,
                         SPRING_EXCEPTION_FQCN, SPRING_EXCEPTION_MESSAGE, HEADER_REPLY_PARTITION,
                         "__TypeId__", "Faust-Ag-ReplyTo"]),
        st.one_of(st.none(), st.binary(max_size=40), st.sampled_from([b"replies", b"\x00\x00\x00\x01", b"\xff" * 4])),
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(key=st.one_of(st.none(), st.binary(max_size=8)), value=st.one_of(st.none(), st.binary(max_size=40)),
       headers=_spring_headers, raw=st.booleans())
def test_decoding_spring_records_is_total(key: bytes | None, value: bytes | None, headers: list, raw: bool) -> None:
    codec = Codec(value_serializer="raw" if raw else "json")
    try:
        request = codec.decode_request(key, value, headers)
    except DecodeError:
        pass
    else:
        assert (request.reply_to is None) == (request.correlation_id is None)
        assert request.reply_partition is None or request.reply_partition >= 0
        if request.reply_to is not None:
            reply = codec.encode_reply(request.correlation_id or "", None, key=key, request=request)
            assert reply.partition == request.reply_partition
    try:
        codec.decode_reply(value, headers)
    except DecodeError:
        pass
