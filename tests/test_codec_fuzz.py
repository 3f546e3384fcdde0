"""Fuzzing the codec: whatever a record holds, decoding it returns a
well-typed result or raises DecodeError, and nothing else.

Inputs: random bytes, truncated and deeply nested JSON, envelopes and
replies with arbitrary JSON in every field, odd headers (null values,
non-UTF-8 bytes, duplicates, unknown names), and object hooks that
misbehave. Each property runs a bounded number of examples, so the file
takes a few seconds.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Dict, List, Optional, Tuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replies.core.codec import (
    HEADER_CORRELATION_ID,
    HEADER_DEADLINE,
    HEADER_END,
    HEADER_ERROR,
    HEADER_MORE,
    HEADER_REPLY_TO,
    HEADER_STREAM,
    Codec,
    Request,
    legal_topic,
)
from replies.core.table import Reply
from replies.errors import DecodeError, RemoteError

FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

CID = "0b7d4c52-5d1c-4c8b-9f7e-1d2f3a4b5c6d"
REPLY_TO = "f-reply-9a3e1c0e"

# -- strategies ------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from([REPLY_TO, CID, "", ".", "..", "bad topic!", "x" * 250]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)


def nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"value":' + b"[" * depth + b"]" * depth + b',"correlation_id":"c"}'


deep_json = st.builds(
    nested, st.integers(min_value=1, max_value=3000), st.sampled_from(["list", "object", "reply"])
)


@st.composite
def request_envelopes(draw: st.DrawFn) -> bytes:
    body: Dict[str, Any] = {"__faust": {"ns": draw(st.sampled_from(
        ["@ReqRepRequest", "faust.agents.models.ModelReqRepRequest"]
    ))}}
    for field, usual in (("value", 1), ("reply_to", REPLY_TO), ("correlation_id", CID)):
        choice = draw(st.sampled_from(["usual", "missing", "other"]))
        if choice == "usual":
            body[field] = usual
        elif choice == "other":
            body[field] = draw(json_values)
    return json.dumps(body).encode()


@st.composite
def reply_bodies(draw: st.DrawFn) -> bytes:
    body: Dict[str, Any] = {}
    for field, usual in (
        ("key", None),
        ("value", {"x": 1, "__faust": {"ns": "fapp.Point"}}),
        ("correlation_id", CID),
        ("__faust", {"ns": "@ReqRepResponse"}),
    ):
        choice = draw(st.sampled_from(["usual", "missing", "other"]))
        if choice == "usual":
            body[field] = usual
        elif choice == "other":
            body[field] = draw(json_values)
    return json.dumps(body).encode()


def truncated(data: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.tuples(data, st.integers(min_value=0)).map(lambda t: t[0][: t[1] % (len(t[0]) + 1)])


well_formed = st.builds(lambda v: json.dumps(v).encode(), json_values)
values = st.one_of(
    st.none(),
    st.binary(max_size=64),
    well_formed,
    deep_json,
    request_envelopes(),
    reply_bodies(),
    truncated(st.one_of(well_formed, request_envelopes(), reply_bodies())),
    st.sampled_from([b"1" * 5000, b"1e99999", b"NaN", b'"\\ud800"', b"\xef\xbb\xbf1"]),
)

header_names = st.one_of(
    st.sampled_from(
        [
            HEADER_REPLY_TO,
            HEADER_CORRELATION_ID,
            HEADER_DEADLINE,
            HEADER_STREAM,
            HEADER_ERROR,
            HEADER_MORE,
            HEADER_END,
        ]
    ),
    st.text(max_size=10),
)
header_values = st.one_of(
    st.none(),
    st.binary(max_size=20),
    st.sampled_from([REPLY_TO.encode(), CID.encode(), b"bad topic!", b"\xff\xfe", b"nan", b"1e400"]),
    st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
headers = st.lists(st.tuples(header_names, header_values), max_size=6)


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise ValueError("unprintable")


def make_hook(kind: str) -> Optional[Callable[[Dict[str, Any]], Any]]:
    if kind == "none":
        return None
    if kind == "identity":
        return lambda obj: obj
    if kind == "to_point":  # the README's example, which meets objects without "x"
        return lambda obj: ("point", obj["x"]) if "__faust" in obj else obj
    errors = {
        "value": ValueError("bad"),
        "recursion": RecursionError("deep"),
        "broken_str": BrokenStr(),
        "memory": MemoryError(),
    }

    def hook(obj: Dict[str, Any]) -> Any:
        raise errors[kind]

    return hook


hooks = st.sampled_from(["none", "identity", "to_point", "value", "recursion", "broken_str", "memory"])
serializers = st.sampled_from(["json", "raw"])
modes = st.sampled_from(["headers", "envelope"])


def codec_for(hook: str, serializer: str, mode: str) -> Codec:
    if serializer == "raw":
        mode = "headers"
    return Codec(json_object_hook=make_hook(hook), value_serializer=serializer, request_mode=mode)


# -- properties ------------------------------------------------------------------


def check_address(request: Request) -> None:
    assert (request.reply_to is None) == (request.correlation_id is None)
    if request.reply_to is not None:
        assert legal_topic(request.reply_to)
        assert isinstance(request.correlation_id, str) and request.correlation_id


def check_request(request: Request, key: Optional[bytes]) -> None:
    assert isinstance(request, Request)
    assert request.key == key
    check_address(request)
    assert request.deadline is None or (
        isinstance(request.deadline, float) and math.isfinite(request.deadline)
    )
    assert isinstance(request.stream, bool)


@FUZZ
@given(
    key=st.one_of(st.none(), st.binary(max_size=8)),
    value=values,
    headers=headers,
    hook=hooks,
    serializer=serializers,
    mode=modes,
)
def test_decode_request_returns_a_request_or_raises_decode_error(
    key: Optional[bytes],
    value: Optional[bytes],
    headers: List[Tuple[str, Optional[bytes]]],
    hook: str,
    serializer: str,
    mode: str,
) -> None:
    codec = codec_for(hook, serializer, mode)
    try:
        request = codec.decode_request(key, value, headers)  # type: ignore[arg-type]
    except DecodeError as exc:
        assert isinstance(str(exc), str)
        if exc.request is not None:
            check_request(exc.request, key)
    else:
        check_request(request, key)


def check_reply(reply: Reply) -> None:
    assert isinstance(reply, Reply)
    assert isinstance(reply.correlation_id, str) and reply.correlation_id
    assert isinstance(reply.more, bool) and isinstance(reply.end, bool)
    if reply.error is not None:
        assert isinstance(reply.error, RemoteError)
        assert isinstance(reply.error.type_name, str) and isinstance(reply.error.message, str)
        assert reply.error.remote_traceback is None or isinstance(reply.error.remote_traceback, str)
        assert reply.error.correlation_id == reply.correlation_id


@FUZZ
@given(value=values, headers=headers, hook=hooks)
def test_decode_reply_returns_a_reply_or_raises_decode_error(
    value: Optional[bytes], headers: List[Tuple[str, Optional[bytes]]], hook: str
) -> None:
    codec = codec_for(hook, "json", "headers")
    try:
        envelope = codec.decode_reply_envelope(value, headers)  # type: ignore[arg-type]
    except DecodeError:
        envelope = None
    else:
        check_reply(envelope)
    try:
        reply = codec.decode_reply(value, headers)  # type: ignore[arg-type]
    except DecodeError:
        return
    check_reply(reply)
    # The value is decoded only from an envelope that decodes.
    assert envelope is not None and envelope.correlation_id == reply.correlation_id


@FUZZ
@given(value=json_values, reply_to=json_values, cid=json_values)
def test_whatever_an_envelope_holds_the_address_is_usable_or_absent(
    value: Any, reply_to: Any, cid: Any
) -> None:
    body = {"value": value, "reply_to": reply_to, "correlation_id": cid,
            "__faust": {"ns": "@ReqRepRequest"}}
    try:
        request = Codec().decode_request(None, json.dumps(body).encode(), [])
    except DecodeError as exc:
        assert exc.request is not None
        check_request(exc.request, None)
        assert exc.request.reply_to is None  # nobody to answer
    else:
        check_request(request, None)
        assert request.value == value
