"""Our codec against Faust's own records, byte for byte.

``tests/fixtures/faust_wire.json`` holds what a real Faust worker and a
real Faust client (faust-streaming 0.15.3 on Apache Kafka) put on the wire,
read back with kafka-python by ``tests/faust/capture_wire.py``; rerun that
script to recapture (its docstring says how). No broker and no Faust are
needed here.

Expected values come from the capture, never from a reading of Faust's
code: what the Faust client was told to send (the fixture's
``scenarios``), the correlation ids it reported, and the values its own
``ask()``/``join()`` returned. Each test then holds our codec to Faust's
bytes: decoding what Faust wrote, and writing what Faust would have
written. Further down, the facts about Faust that the library's design
relies on (its reply topic, its silence when an agent raises, what its
reply consumer survives).
"""

from __future__ import annotations

import ast
import base64
import json
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from replies.core.codec import Codec, Message, Request
from replies.core.table import Reply
from replies.errors import DecodeError, RemoteError
from tests.faust.records import POINT_NS, Point, point_default, point_hook

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "faust_wire.json"
WIRE: Dict[str, Any] = json.loads(FIXTURE.read_text())
RECORDS: Dict[str, Dict[str, Any]] = {r["id"]: r for r in WIRE["records"]}
SCENARIOS: Dict[str, Dict[str, Any]] = {s["id"]: s for s in WIRE["scenarios"]}
#: Labels of the captured requests and replies ("ask_headers", "join_headers[1]", ...).
REQUESTS = [r["id"].rpartition("/")[0] for r in WIRE["records"] if r["kind"] == "request"]
REPLIES = [r["id"].rpartition("/")[0] for r in WIRE["records"] if r["kind"] == "reply"]
REPLY_TOPIC: str = WIRE["reply_topic"]
MODES = ["headers", "envelope"]


def _bytes(b64: Optional[str]) -> Optional[bytes]:
    return None if b64 is None else base64.b64decode(b64)


def _literal(text: Optional[str]) -> Optional[bytes]:
    if text is None:
        return None
    data = ast.literal_eval(text)
    assert isinstance(data, bytes)
    return data


def on_wire(rec: Dict[str, Any]) -> Message:
    """A captured record as our codec's ``Message`` (key, value, headers)."""
    headers = [(h["name"], _bytes(h["value_b64"]) or b"") for h in rec["headers"]]
    return Message(_bytes(rec["key_b64"]), _bytes(rec["value_b64"]), headers)


def _scenario(label: str) -> Tuple[Dict[str, Any], Optional[int]]:
    """The scenario of a label, and the index within a join (else None)."""
    name, _, index = label.partition("[")
    return SCENARIOS[name], (int(index.rstrip("]")) if index else None)


def asked(label: str) -> Tuple[Any, Optional[bytes]]:
    """The value and key the Faust client was told to send."""
    scenario, index = _scenario(label)
    value = scenario["request_value"] if index is None else scenario["request_value"][index]
    key = scenario["request_key"]
    return value, None if key is None else key.encode("utf-8")  # client.py sends UTF-8


def correlation_id(label: str) -> str:
    """The request's correlation id: as the Faust client reported it (an
    ask), or as the capture script read it off the record (one of a join)."""
    scenario, _ = _scenario(label)
    cid = scenario["correlation_id"] or RECORDS[f"{label}/request"]["correlation_id"]
    assert isinstance(cid, str)
    return cid


def faust_got(label: str) -> Any:
    """What the Faust client's own ask()/join() returned for this request."""
    scenario, index = _scenario(label)
    result = scenario["faust_client_result"]
    assert result["ok"], result
    return result["value"] if index is None else result["value"][index]


# -- the fixture itself -----------------------------------------------------


def test_fixture_is_a_complete_capture() -> None:
    assert WIRE["versions"]["faust_streaming"] == "0.15.3"
    assert WIRE["broker"]["version"]
    assert len(RECORDS) == len(WIRE["records"]), "record ids are unique"
    assert not [rid for rid in RECORDS if rid.startswith("unexpected")]
    # Every scenario's request was captured; every one but ask_fail was answered.
    for name in SCENARIOS:
        assert any(label.partition("[")[0] == name for label in REQUESTS), name
    assert sorted(REQUESTS) == sorted(REPLIES + ["ask_fail"])
    for rec in WIRE["records"]:  # the readable copies agree with the bytes
        assert _bytes(rec["value_b64"]) == _literal(rec["value_repr"])
        assert _bytes(rec["key_b64"]) == _literal(rec["key_repr"])


def test_faust_names_agent_topics_app_id_dash_qualified_name() -> None:
    app_id = WIRE["app_id"]
    for agent, topic in WIRE["agent_topics"].items():
        assert topic == f"{app_id}-fapp.{agent}"  # f"{app_id}-{module}.{function}"
    for label in REQUESTS:
        scenario, _ = _scenario(label)
        assert RECORDS[f"{label}/request"]["topic"] == scenario["agent_topic"]


# -- requests: (a) decoding Faust's, (b) writing them as Faust does -----------


@pytest.mark.parametrize("read_by", MODES)
@pytest.mark.parametrize("label", REQUESTS)
def test_decodes_faust_requests(label: str, read_by: str) -> None:
    # An agent reads both modes whatever its own request_mode.
    rec = on_wire(RECORDS[f"{label}/request"])
    value, key = asked(label)
    request = Codec(request_mode=read_by).decode_request(rec.key, rec.value, rec.headers)
    assert request == Request(value, key, REPLY_TOPIC, correlation_id(label), None)


@pytest.mark.parametrize("label", REQUESTS)
def test_encodes_requests_as_faust_does(label: str) -> None:
    # Same key, value bytes, and headers (names, values and order).
    rec = RECORDS[f"{label}/request"]
    value, key = asked(label)
    codec = Codec(request_mode=rec["mode"])
    message = codec.encode_request(value, key=key, reply_to=REPLY_TOPIC, correlation_id=correlation_id(label))
    assert message == on_wire(rec)


def test_captured_requests_cover_both_modes_keys_and_records() -> None:
    modes = {RECORDS[f"{label}/request"]["mode"] for label in REQUESTS}
    assert modes == set(MODES)
    assert {label for label in REQUESTS if asked(label)[1] is not None} >= {
        "ask_headers_key", "ask_envelope_key"}
    # Faust's correlation ids are uuid4 strings, one per request of a join.
    cids = [correlation_id(label) for label in REQUESTS]
    assert len(set(cids)) == len(cids)
    assert all(str(uuid.UUID(cid)) == cid and uuid.UUID(cid).version == 4 for cid in cids)
    # A Record in an envelope gets the model envelope's namespace.
    envelope = json.loads(on_wire(RECORDS["ask_record_envelope/request"]).value or b"")
    assert envelope["__faust"] == {"ns": "faust.agents.models.ModelReqRepRequest"}


# -- replies: (c) decoding Faust's, (d) writing them as Faust does ------------


@pytest.mark.parametrize("label", REPLIES)
def test_decodes_faust_replies(label: str) -> None:
    # The value our caller gets is the value Faust's own client got.
    rec = on_wire(RECORDS[f"{label}/reply"])
    assert Codec().decode_reply(rec.value, rec.headers) == Reply(correlation_id(label), faust_got(label))


@pytest.mark.parametrize("label", REPLIES)
def test_encodes_replies_as_faust_does(label: str) -> None:
    # The request key is echoed as str(bytes) ("b'k1'"); a Record value
    # gets faust.agents.models.ModelReqRepResponse; no key, no headers.
    rec = RECORDS[f"{label}/reply"]
    _, key = asked(label)
    message = Codec().encode_reply(correlation_id(label), faust_got(label), key=key)
    assert message == on_wire(rec)
    assert (rec["topic"], rec["partition"]) == (REPLY_TOPIC, 0)


def test_captured_replies_echo_keys_and_records() -> None:
    bodies = {label: json.loads(on_wire(RECORDS[f"{label}/reply"]).value or b"") for label in REPLIES}
    assert bodies["ask_headers_key"]["key"] == bodies["ask_envelope_key"]["key"] == "b'k1'"
    assert bodies["ask_record_headers"]["__faust"] == {"ns": "faust.agents.models.ModelReqRepResponse"}
    assert bodies["ask_record_to_dict"]["__faust"] == {"ns": "@ReqRepResponse"}


# -- (e) Records as the user's own type -------------------------------------


def point_codec(mode: str = "headers") -> Codec:
    return Codec(json_object_hook=point_hook, json_default=point_default, request_mode=mode)


def test_records_arrive_as_plain_dicts_by_default() -> None:
    rec = on_wire(RECORDS["ask_record_headers/reply"])
    value = Codec().decode_reply(rec.value, rec.headers).value
    assert value == {"x": 2, "y": 1, "__faust": {"ns": POINT_NS}}


def test_object_hook_turns_faust_records_into_user_types() -> None:
    codec = point_codec()
    for label in ("ask_record_headers", "ask_record_envelope"):
        rec = on_wire(RECORDS[f"{label}/reply"])
        assert codec.decode_reply(rec.value, rec.headers).value == Point(2, 1)
        rec = on_wire(RECORDS[f"{label}/request"])
        assert codec.decode_request(rec.key, rec.value, rec.headers).value == Point(1, 2)
    # A reply that is a plain dict stays one.
    rec = on_wire(RECORDS["ask_record_to_dict/reply"])
    assert codec.decode_reply(rec.value, rec.headers).value == {"x": 3, "y": 4, "sum": 7}


@pytest.mark.parametrize("label", ["ask_record_headers", "ask_record_envelope"])
def test_user_types_are_written_as_faust_records(label: str) -> None:
    # With json_default, a Point goes out exactly as Faust's Record would:
    # in envelope mode under the model envelope's namespace (a Record in a
    # plain @ReqRepRequest envelope crashes a typed Faust agent, see the
    # probe envelope_record_plain_ns below), and as an agent's reply.
    request = RECORDS[f"{label}/request"]
    message = point_codec(request["mode"]).encode_request(
        Point(1, 2), reply_to=REPLY_TOPIC, correlation_id=correlation_id(label))
    assert message == on_wire(request)
    reply = point_codec().encode_reply(correlation_id(label), Point(2, 1))
    assert reply == on_wire(RECORDS[f"{label}/reply"])


# -- requests Faust did not write (the fixture's probes) ----------------------


def _probes(kind: str) -> Dict[str, Dict[str, Any]]:
    return {p["id"]: p for p in WIRE["probes"][kind]}


FOREIGN = _probes("foreign_requests")


def _sent(probe: Dict[str, Any]) -> Message:
    sent = probe["request_sent"]
    headers = [(name, _literal(value) or b"") for name, value in sent["headers"]]
    return Message(_literal(sent["key_repr"]), _literal(sent["value_repr"]), headers)


@pytest.mark.parametrize("pid", sorted(p for p, probe in FOREIGN.items()
                                       if probe["replies"] and p != "reply_to_without_cid"))
def test_answers_foreign_requests_as_faust_does(pid: str) -> None:
    # Where a Faust agent answered a request some other client wrote, our
    # codec reads the same reply address and key from it, and our reply
    # carrying the agent's value is byte-identical to Faust's. This covers
    # headers in another order with extra headers, a binary key, envelopes
    # with other spacing and field order, and an envelope that also has
    # reply headers (the envelope wins, as in Faust).
    probe = FOREIGN[pid]
    sent = _sent(probe)
    request = Codec().decode_request(sent.key, sent.value, sent.headers)
    (faust_reply,) = probe["replies"]
    faust_message = Message(_literal(faust_reply["key_repr"]), _literal(faust_reply["value_repr"]),
                            [(name, _literal(value) or b"") for name, value in faust_reply["headers"]])
    body = json.loads(faust_message.value or b"")
    # probes.py read Faust's replies from its one reply topic, probe-requests-<hex>.
    assert request.reply_to is not None and request.reply_to.startswith("probe-requests-")
    cid = request.correlation_id
    assert cid is not None and cid == probe["correlation_id"] == body["correlation_id"]
    reply = Codec().encode_reply(cid, body["value"], key=request.key)
    assert reply == faust_message


def test_which_foreign_requests_faust_answered() -> None:
    # Not answered: an unknown "__faust" namespace, or a Record inside a
    # plain @ReqRepRequest envelope sent to a typed agent (both crash the
    # Faust agent), and an envelope without "__faust" (see below).
    assert {pid for pid, probe in FOREIGN.items() if not probe["replies"]} == {
        "headers_unknown_ns", "envelope_record_plain_ns", "envelope_without_faust_field"}


def test_envelope_wins_over_reply_headers() -> None:
    sent = _sent(FOREIGN["envelope_and_headers"])
    request = Codec().decode_request(sent.key, sent.value, sent.headers)
    assert (request.value, request.correlation_id) == ("env", FOREIGN["envelope_and_headers"]["correlation_id"])


def test_envelope_without_faust_field_is_a_plain_value() -> None:
    # Faust did not answer it: without "__faust" it is just a dict, and
    # without headers nobody asked for a reply. Our codec reads it the same.
    probe = FOREIGN["envelope_without_faust_field"]
    assert probe["replies"] == []
    sent = _sent(probe)
    request = Codec().decode_request(sent.key, sent.value, sent.headers)
    assert request.reply_to is None and request.correlation_id is None
    assert isinstance(request.value, dict) and request.value["value"] == 1


def test_reply_to_without_correlation_id() -> None:
    # Faust answers with "correlation_id": null, which no caller can match;
    # our codec reports the unusable address and our agents send nothing.
    probe = FOREIGN["reply_to_without_cid"]
    assert json.loads(_literal(probe["replies"][0]["value_repr"]) or b"")["correlation_id"] is None
    sent = _sent(probe)
    with pytest.raises(DecodeError, match="unusable reply address") as info:
        Codec().decode_request(sent.key, sent.value, sent.headers)
    assert info.value.request is not None
    assert (info.value.request.reply_to, info.value.request.correlation_id) == (None, None)


# -- what the library relies on about Faust ---------------------------------


def test_failing_faust_agent_sends_nothing() -> None:
    assert "ask_fail/request" in RECORDS
    assert "ask_fail/reply" not in RECORDS
    assert SCENARIOS["ask_fail"]["faust_client_result"] == {"ok": False, "error": "timeout"}


def test_reply_topic_as_faust_creates_it() -> None:
    assert REPLY_TOPIC.startswith("f-reply-")
    assert uuid.UUID(REPLY_TOPIC[len("f-reply-"):]).version == 4
    assert WIRE["topics"][REPLY_TOPIC] == {
        "partitions": 1, "configs": {"cleanup.policy": "delete", "retention.ms": "86400000"}}


FOREIGN_REPLIES = _probes("foreign_replies")


def test_faust_clients_survive_these_replies() -> None:
    # Extra headers (such as our error marker) and extra fields are fine.
    for pid in ("stray_cid_first", "reply_headers", "no_faust_field", "extra_fields",
                "unknown_ns", "spaced_reordered_keyed"):
        assert FOREIGN_REPLIES[pid]["ask_result"] == {"ok": True, "value": "ok"}, pid
        assert FOREIGN_REPLIES[pid]["later_ask_answered"], pid
    assert FOREIGN_REPLIES["null_value_field"]["ask_result"] == {"ok": True, "value": None}


def test_faust_clients_stop_reading_replies_on_these() -> None:
    # A reply without "key" or "value", not JSON, or a tombstone kills the
    # Faust client's reply consumer: every later ask() times out.
    for pid in ("missing_key_field", "missing_value_field", "not_json", "tombstone"):
        assert FOREIGN_REPLIES[pid]["ask_result"] == {"ok": False, "error": "timeout"}, pid
        assert not FOREIGN_REPLIES[pid]["later_ask_answered"], pid


@pytest.mark.parametrize("flags", [{}, {"more": True}, {"end": True}, {"error": RemoteError("KeyError", "7")}])
def test_our_replies_are_complete_reqrep_responses(flags: Dict[str, Any]) -> None:
    # So a Faust client asking our agents survives every reply we send,
    # error replies and stream markers included.
    message = Codec().encode_reply("cid", 1, key=b"k1", **flags)
    assert message.key is None
    body = json.loads(message.value or b"")
    assert list(body) == ["key", "value", "correlation_id", "__faust"]
    assert body["key"] == "b'k1'" and body["__faust"] == {"ns": "@ReqRepResponse"}
    names: List[str] = [name for name, _ in message.headers]
    assert all(not name.startswith("Faust-") for name in names)
