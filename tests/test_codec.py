"""Unit tests for replies.core.codec: Faust's request/reply wire format."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import pytest

from replies.core.codec import (
    HEADER_CORRELATION_ID,
    HEADER_DEADLINE,
    HEADER_END,
    HEADER_ERROR,
    HEADER_MORE,
    HEADER_REPLY_TO,
    Codec,
    Headers,
    Message,
    Request,
    deadline_after,
    echo_key,
)
from replies.core.table import Reply
from replies.errors import DecodeError, RemoteError, ReplyError

CID = "0b7d4c52-5d1c-4c8b-9f7e-1d2f3a4b5c6d"
REPLY_TO = "f-reply-9a3e1c0e-7a57-4c2a-b1de-0c5f1f3c2b11"
MODES = ["headers", "envelope"]


@dataclass
class Hooked:
    """What the test object hook turns every JSON object into."""

    data: Dict[str, Any]


def request_headers(reply_to: str = REPLY_TO, cid: str = CID) -> Headers:
    return [(HEADER_REPLY_TO, reply_to.encode()), (HEADER_CORRELATION_ID, cid.encode())]


# -- construction, values and keys ---------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"value_serializer": "pickle"},
        {"request_mode": "body"},
        {"request_mode": "envelope", "value_serializer": "raw"},
    ],
)
def test_codec_rejects_unknown_settings(kwargs: Dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Codec(**kwargs)


@pytest.mark.parametrize(
    "key, encoded",
    [
        (None, None),
        (b"\x00raw", b"\x00raw"),
        ("sku-1", b"sku-1"),
        ("clé", "clé".encode("utf-8")),
        (7, b"7"),
        ({"a": [1, 2]}, b'{"a":[1,2]}'),
    ],
)
def test_key_encoding(key: Any, encoded: Optional[bytes]) -> None:
    assert Codec.encode_key(key) == encoded


def test_values_are_compact_json_and_json_default_extends_them() -> None:
    codec = Codec()
    assert codec.dumps({"a": 1, "b": [1, 2], "c": None}) == b'{"a":1,"b":[1,2],"c":null}'
    with pytest.raises(TypeError, match="json_default"):
        codec.dumps({"when": object()})
    assert Codec(json_default=lambda o: "obj").dumps([object()]) == b'["obj"]'


@pytest.mark.parametrize("data", [b"{", b"", b"\xff\xfe\x00{", b"nul"])
def test_loads_raises_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        Codec.loads(data)
    assert isinstance(info.value, ValueError) and isinstance(info.value, ReplyError)


@pytest.mark.parametrize(
    "data",
    [
        '{"a": ["\u00e9", 1]}'.encode("utf-8"),
        '{"a": ["\u00e9", 1]}'.encode("utf-8-sig"),
        '{"a": ["\u00e9", 1]}'.encode("utf-16"),
        '{"a": ["\u00e9", 1]}'.encode("utf-32-be"),
        bytearray(b'{"a": ["\xc3\xa9", 1]}'),
    ],
)
def test_loads_reads_every_encoding_json_allows(data: bytes) -> None:
    # UTF-8 text takes a shorter path; the others must still be read.
    assert Codec.loads(data) == {"a": ["\u00e9", 1]}


def test_loads_keeps_lone_surrogates_as_json_does() -> None:
    data = '["\ud800"]'.encode("utf-8", "surrogatepass")
    assert Codec.loads(data) == json.loads(data) == ["\ud800"]


def test_raw_serializer_passes_bytes_through() -> None:
    codec = Codec(value_serializer="raw")
    message = codec.encode_request(b"\xff\x00", reply_to=REPLY_TO, correlation_id=CID)
    assert message == Message(None, b"\xff\x00", request_headers())
    request = codec.decode_request(None, b"\xff\x00", message.headers)
    assert (request.value, request.reply_to, request.correlation_id) == (b"\xff\x00", REPLY_TO, CID)
    assert codec.encode_value(None) is None
    with pytest.raises(TypeError, match="bytes"):
        codec.encode_value("text")


# -- requests --------------------------------------------------------------------


def test_header_mode_request_is_the_bare_value_with_two_utf8_headers() -> None:
    message = Codec().encode_request(21, reply_to=REPLY_TO, correlation_id=CID)
    assert message == Message(None, b"21", request_headers())

    message = Codec().encode_request(
        {"a": 1, "b": "ü"}, key="k1", reply_to="réponses", correlation_id=CID
    )
    assert message.key == b"k1"
    assert json.loads(message.value or b"") == {"a": 1, "b": "ü"}
    assert b" " not in (message.value or b"")
    assert message.headers == [
        (HEADER_REPLY_TO, "réponses".encode("utf-8")),
        (HEADER_CORRELATION_ID, CID.encode("utf-8")),
    ]
    assert (HEADER_REPLY_TO, HEADER_CORRELATION_ID) == ("Faust-Ag-ReplyTo", "Faust-Ag-CorrelationId")


def test_envelope_mode_request_is_a_faust_reqrep_request_object() -> None:
    message = Codec(request_mode="envelope").encode_request(
        {"a": 1}, key=b"k1", reply_to=REPLY_TO, correlation_id=CID
    )
    assert message.key == b"k1"
    assert message.headers == []
    assert message.value == (
        b'{"value":{"a":1},"reply_to":"' + REPLY_TO.encode() + b'","correlation_id":"'
        + CID.encode() + b'","__faust":{"ns":"@ReqRepRequest"}}'
    )


@pytest.mark.parametrize("sent_as", MODES)
@pytest.mark.parametrize("read_by", MODES)
def test_agents_decode_requests_in_both_modes(sent_as: str, read_by: str) -> None:
    message = Codec(request_mode=sent_as).encode_request(
        {"a": [1, {"b": 2}]}, key=b"k", reply_to=REPLY_TO, correlation_id=CID
    )
    request = Codec(request_mode=read_by).decode_request(message.key, message.value, message.headers)
    assert request == Request({"a": [1, {"b": 2}]}, b"k", REPLY_TO, CID, None)


def test_decode_a_faust_client_request() -> None:
    # As a Faust client's ask(21) writes it (see DESIGN.md, section 3).
    request = Codec().decode_request(None, b"21", request_headers())
    assert request == Request(21, None, REPLY_TO, CID, None)


@pytest.mark.parametrize("mode", MODES)
def test_cast_carries_no_reply_information(mode: str) -> None:
    codec = Codec(request_mode=mode)
    message = codec.encode_request({"event": "clicked"}, key="user-1")
    assert message == Message(b"user-1", b'{"event":"clicked"}', [])
    request = codec.decode_request(message.key, message.value, message.headers)
    assert request == Request({"event": "clicked"}, b"user-1", None, None, None)


@pytest.mark.parametrize("mode", MODES)
def test_deadline_travels_in_a_header_of_its_own(mode: str) -> None:
    codec = Codec(request_mode=mode)
    message = codec.encode_request(1, reply_to=REPLY_TO, correlation_id=CID, deadline=1700000000.25)
    assert message.headers[-1] == (HEADER_DEADLINE, b"1700000000.25")
    assert codec.decode_request(None, message.value, message.headers).deadline == 1700000000.25
    cast = codec.encode_request(1, deadline=5.0)
    assert cast.headers == [(HEADER_DEADLINE, b"5.0")]


def test_malformed_deadline_never_stops_a_request() -> None:
    headers = request_headers() + [(HEADER_DEADLINE, b"soon")]
    request = Codec().decode_request(None, b"1", headers)
    assert (request.value, request.correlation_id, request.deadline) == (1, CID, None)


def test_deadline_after_is_wall_clock() -> None:
    assert deadline_after(None) is None
    before = time.time()
    deadline = deadline_after(10)
    assert deadline is not None and before + 10 <= deadline <= time.time() + 10


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("value", [b"{not json", b"\xff\xfe", b""])
def test_undecodable_request_keeps_what_the_headers_say(mode: str, value: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        Codec(request_mode=mode).decode_request(b"k", value, request_headers())
    assert info.value.request == Request(None, b"k", REPLY_TO, CID, None)


def test_request_header_that_is_not_utf8_raises_decode_error() -> None:
    headers = [(HEADER_REPLY_TO, b"\xff\xfe"), (HEADER_CORRELATION_ID, CID.encode())]
    with pytest.raises(DecodeError, match=HEADER_REPLY_TO):
        Codec().decode_request(None, b"1", headers)


def test_request_with_null_value_decodes_to_none() -> None:
    request = Codec().decode_request(None, None, request_headers())
    assert request == Request(None, None, REPLY_TO, CID, None)


# -- replies -----------------------------------------------------------------------


def test_reply_is_a_faust_reqrep_response_object_with_null_key() -> None:
    message = Codec().encode_reply(CID, 42)
    assert message == Message(
        None,
        b'{"key":null,"value":42,"correlation_id":"' + CID.encode()
        + b'","__faust":{"ns":"@ReqRepResponse"}}',
        [],
    )


@pytest.mark.parametrize("key, echoed", [(None, None), (b"k1", "b'k1'"), (b"\xff", "b'\\xff'")])
def test_reply_echoes_the_request_key_as_faust_does(key: Optional[bytes], echoed: Optional[str]) -> None:
    assert echo_key(key) == echoed
    body = json.loads(Codec().encode_reply(CID, 1, key=key).value or b"")
    assert body["key"] == echoed


def test_decode_a_faust_agent_reply() -> None:
    # As a Faust agent answers (see DESIGN.md, section 3): no headers.
    value = (
        b'{"key":"b\'k1\'","value":42,"correlation_id":"' + CID.encode()
        + b'","__faust":{"ns":"@ReqRepResponse"}}'
    )
    assert Codec().decode_reply(value, []) == Reply(CID, 42)


@pytest.mark.parametrize(
    "flags, headers",
    [
        ({}, []),
        ({"more": True}, [(HEADER_MORE, b"1")]),
        ({"end": True}, [(HEADER_END, b"1")]),
    ],
)
def test_reply_round_trip_with_stream_headers(flags: Dict[str, bool], headers: Headers) -> None:
    codec = Codec()
    value = None if flags.get("end") else {"items": [1, 2]}
    message = codec.encode_reply(CID, value, key=b"k", **flags)
    assert (message.key, message.headers) == (None, headers)
    assert codec.decode_reply(message.value, message.headers) == Reply(CID, value, **flags)


def test_error_reply_round_trip() -> None:
    codec = Codec()
    error = RemoteError("ZeroDivisionError", "division by zero", remote_traceback="Traceback ...")
    message = codec.encode_reply(CID, None, error=error)
    assert message.headers == [(HEADER_ERROR, b"1")]
    body = json.loads(message.value or b"")
    assert body["correlation_id"] == CID and body["__faust"] == {"ns": "@ReqRepResponse"}
    reply = codec.decode_reply(message.value, message.headers)
    assert (reply.correlation_id, reply.value) == (CID, None)
    assert isinstance(reply.error, RemoteError)
    assert (reply.error.type_name, reply.error.message) == ("ZeroDivisionError", "division by zero")
    assert (reply.error.remote_traceback, reply.error.correlation_id) == ("Traceback ...", CID)


def test_error_reply_with_an_unexpected_body_still_rejects() -> None:
    value = json.dumps({"value": "oops", "correlation_id": CID}).encode()
    reply = Codec().decode_reply(value, [(HEADER_ERROR, b"1")])
    assert reply.error is not None
    assert (reply.error.type_name, reply.error.message) == ("Exception", "'oops'")


@pytest.mark.parametrize(
    "value",
    [None, b"not json", b"[1,2]", b'{"value":1}', b'{"value":1,"correlation_id":5}'],
)
def test_undecodable_reply_raises_decode_error(value: Optional[bytes]) -> None:
    with pytest.raises(DecodeError):
        Codec().decode_reply(value, [])


# -- the JSON object hook ------------------------------------------------------------


def recording_codec(seen: List[Dict[str, Any]], **kwargs: Any) -> Codec:
    def hook(obj: Dict[str, Any]) -> Hooked:
        seen.append(obj)
        return Hooked(obj)

    return Codec(json_object_hook=hook, **kwargs)


@pytest.mark.parametrize("mode", MODES)
def test_object_hook_applies_to_request_values_only(mode: str) -> None:
    seen: List[Dict[str, Any]] = []
    codec = recording_codec(seen, request_mode=mode)
    message = codec.encode_request(
        [{"a": {"b": 1}}, 2], reply_to=REPLY_TO, correlation_id=CID
    )
    request = codec.decode_request(None, message.value, message.headers)
    assert request.value == [Hooked({"a": Hooked({"b": 1})}), 2]
    assert (request.reply_to, request.correlation_id) == (REPLY_TO, CID)
    assert seen == [{"b": 1}, {"a": Hooked({"b": 1})}]  # innermost first; no envelope


def test_object_hook_applies_to_reply_values_only() -> None:
    seen: List[Dict[str, Any]] = []
    codec = recording_codec(seen)
    record = {"id": 1, "__faust": {"ns": "shop.Order"}}
    reply = codec.decode_reply(codec.encode_reply(CID, record).value, [])
    assert reply == Reply(CID, Hooked({"id": 1, "__faust": Hooked({"ns": "shop.Order"})}))
    assert seen == [{"ns": "shop.Order"}, {"id": 1, "__faust": Hooked({"ns": "shop.Order"})}]


def test_object_hook_leaves_scalars_and_error_bodies_alone() -> None:
    seen: List[Dict[str, Any]] = []
    codec = recording_codec(seen)
    assert codec.decode_request(None, b'"text"', request_headers()).value == "text"
    assert codec.decode_reply(codec.encode_reply(CID, 3).value, []).value == 3
    error = codec.encode_reply(CID, None, error=RemoteError("E", "m"))
    assert codec.decode_reply(error.value, error.headers).error is not None
    assert seen == []


def test_reply_to_without_correlation_id_is_an_error() -> None:
    with pytest.raises(ValueError, match="go together"):
        Codec().encode_request(1, reply_to="r")
    with pytest.raises(ValueError, match="go together"):
        Codec().encode_request(1, correlation_id="c")


# -- hostile input: every malformed record is a DecodeError ------------------------

DEEP = b"[" * 1000 + b"]" * 1000


@pytest.mark.parametrize("value", [DEEP, b'{"a":' * 5000 + b"1" + b"}" * 5000, b"1" * 5000])
def test_deep_nesting_and_huge_numbers_are_decode_errors(value: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        Codec().decode_request(b"k", value, request_headers())
    # The address is usable: the agent can still send an error reply.
    assert info.value.request == Request(None, b"k", REPLY_TO, CID, None)
    with pytest.raises(DecodeError):
        Codec().decode_reply(value, [])


def test_deep_value_the_decoder_accepts_gets_the_hook_without_recursion() -> None:
    depth = 600  # json.loads takes it; a recursive walk would not
    value = b'{"a":' * depth + b"1" + b"}" * depth
    seen: List[Dict[str, Any]] = []
    request = recording_codec(seen).decode_request(None, value, request_headers())
    assert len(seen) == depth
    inner = request.value
    for _ in range(depth):
        assert isinstance(inner, Hooked)
        inner = inner.data["a"]
    assert inner == 1


def test_encoding_a_value_nested_too_deeply_is_a_type_error() -> None:
    deep: List[Any] = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(TypeError, match="deeply"):
        Codec().encode_reply(CID, deep)


def envelope(**fields: Any) -> bytes:
    body = {"value": 1, "__faust": {"ns": "@ReqRepRequest"}, **fields}
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    "fields",
    [
        {"reply_to": 5, "correlation_id": CID},
        {"reply_to": [None], "correlation_id": CID},
        {"reply_to": "bad topic!", "correlation_id": CID},
        {"reply_to": "", "correlation_id": ""},
        {"reply_to": ".", "correlation_id": CID},
        {"reply_to": "..", "correlation_id": CID},
        {"reply_to": "x" * 250, "correlation_id": CID},
        {"reply_to": REPLY_TO, "correlation_id": 5},
        {"reply_to": REPLY_TO, "correlation_id": ""},
        {"reply_to": REPLY_TO, "correlation_id": {"id": CID}},
        {"reply_to": REPLY_TO},
        {"correlation_id": CID},
    ],
)
def test_envelope_with_an_unusable_reply_address_answers_nobody(fields: Dict[str, Any]) -> None:
    with pytest.raises(DecodeError, match="unusable reply address") as info:
        Codec().decode_request(b"k", envelope(**fields), [])
    assert info.value.request == Request(None, b"k", None, None, None)


@pytest.mark.parametrize(
    "headers",
    [
        [(HEADER_REPLY_TO, b"bad topic!"), (HEADER_CORRELATION_ID, CID.encode())],
        [(HEADER_REPLY_TO, b"\xff\xfe"), (HEADER_CORRELATION_ID, CID.encode())],
        [(HEADER_REPLY_TO, REPLY_TO.encode()), (HEADER_CORRELATION_ID, b"\xff")],
        [(HEADER_REPLY_TO, None), (HEADER_CORRELATION_ID, CID.encode())],
        [(HEADER_REPLY_TO, REPLY_TO.encode()), (HEADER_CORRELATION_ID, None)],
        [(HEADER_REPLY_TO, REPLY_TO.encode())],
        [(HEADER_CORRELATION_ID, CID.encode())],
    ],
)
@pytest.mark.parametrize("value", [b"1", b"{not json", None])
def test_headers_with_an_unusable_reply_address_answer_nobody(
    headers: Headers, value: Optional[bytes]
) -> None:
    with pytest.raises(DecodeError) as info:
        Codec().decode_request(b"k", value, headers)
    assert info.value.request == Request(None, b"k", None, None, None)


def test_legal_topic_names() -> None:
    from replies.core.codec import legal_topic

    for name in ["a", "f-reply-1", "A.b_c-9", "x" * 249, "..."]:
        assert legal_topic(name), name
    for name in ["", ".", "..", "x" * 250, "a b", "é", "a/b", None, 5, b"abc"]:
        assert not legal_topic(name), name


def test_envelope_with_a_usable_address_wins_over_broken_headers() -> None:
    headers = [(HEADER_REPLY_TO, b"bad topic!")]
    request = Codec().decode_request(
        None, envelope(reply_to=REPLY_TO, correlation_id=CID), headers
    )
    assert request == Request(1, None, REPLY_TO, CID, None)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


@pytest.mark.parametrize(
    "error", [KeyError("x"), TypeError("no"), RecursionError("deep"), Unprintable(), MemoryError()]
)
@pytest.mark.parametrize("mode", MODES)
def test_object_hook_that_raises_is_a_decode_error_keeping_the_address(
    error: Exception, mode: str
) -> None:
    def hook(obj: Dict[str, Any]) -> Any:
        raise error

    codec = Codec(json_object_hook=hook, request_mode=mode)
    message = codec.encode_request({"a": 1}, key=b"k", reply_to=REPLY_TO, correlation_id=CID)
    with pytest.raises(DecodeError, match=type(error).__name__) as info:
        codec.decode_request(message.key, message.value, message.headers)
    assert info.value.request == Request(None, b"k", REPLY_TO, CID, None)
    assert info.value.__cause__ is error


def test_reply_envelope_is_read_without_the_hook_and_its_value_after() -> None:
    calls: List[Dict[str, Any]] = []

    def hook(obj: Dict[str, Any]) -> Any:
        calls.append(obj)
        if "x" not in obj:
            raise KeyError("x")
        return ("point", obj["x"])

    codec = Codec(json_object_hook=hook)
    bad = codec.encode_reply(CID, {"__faust": {"ns": "fapp.Point"}})
    reply = codec.decode_reply_envelope(bad.value, bad.headers)
    assert reply == Reply(CID, {"__faust": {"ns": "fapp.Point"}})
    assert calls == []
    with pytest.raises(DecodeError, match="KeyError"):
        codec.decode_reply_value(reply)
    good = codec.encode_reply(CID, {"x": 1})
    assert codec.decode_reply(good.value, good.headers) == Reply(CID, ("point", 1))


@pytest.mark.parametrize(
    "info, type_name, message",
    [
        ({"type": 5, "message": ["m"], "traceback": 7}, "5", "['m']"),
        ({"type": None}, "None", ""),
        ([[[[[[[[1]]]]]]]], "Exception", None),
        ("x" * 1000, "Exception", None),
    ],
)
def test_error_reply_fields_of_the_wrong_type_are_shown_not_trusted(
    info: Any, type_name: str, message: Optional[str]
) -> None:
    value = json.dumps({"value": info, "correlation_id": CID}).encode()
    reply = Codec().decode_reply(value, [(HEADER_ERROR, b"1")])
    assert reply.error is not None
    assert reply.error.type_name == type_name
    assert isinstance(reply.error.message, str) and len(reply.error.message) < 100
    if message is not None:
        assert reply.error.message == message
    assert reply.error.remote_traceback is None


@pytest.mark.parametrize("raw", [b"nan", b"inf", b"-inf", b"1e999"])
def test_deadline_that_is_not_finite_is_ignored(raw: bytes) -> None:
    request = Codec().decode_request(None, b"1", request_headers() + [(HEADER_DEADLINE, raw)])
    assert request.deadline is None


@pytest.mark.parametrize("cid", [b'""', b"5", b"null", b"[]"])
def test_reply_with_an_empty_or_non_string_correlation_id_is_undecodable(cid: bytes) -> None:
    with pytest.raises(DecodeError):
        Codec().decode_reply(b'{"value":1,"correlation_id":' + cid + b"}", [])
