"""Faust's wire format as captured in ``tests/fixtures/faust_wire.json``.

No broker and no Faust needed: these tests read the fixture written by
``tests/faust/capture_wire.py`` and pin down, byte for byte, what Faust
0.15.3 puts on the wire, so a codec can be checked against the fixture and
a recapture with another Faust shows what changed.
"""

from __future__ import annotations

import ast
import base64
import json
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "faust_wire.json"
REPLY_TO = "Faust-Ag-ReplyTo"
CID = "Faust-Ag-CorrelationId"


@pytest.fixture(scope="module")
def wire() -> Dict[str, Any]:
    data: Dict[str, Any] = json.loads(FIXTURE.read_text())
    return data


def _bytes(b64: Optional[str]) -> Optional[bytes]:
    return None if b64 is None else base64.b64decode(b64)


def record(wire: Dict[str, Any], rid: str) -> Dict[str, Any]:
    matches = [r for r in wire["records"] if r["id"] == rid]
    assert len(matches) == 1, f"{rid}: {len(matches)} records"
    found: Dict[str, Any] = matches[0]
    return found


def headers(rec: Dict[str, Any]) -> List[Tuple[str, Optional[bytes]]]:
    return [(h["name"], _bytes(h["value_b64"])) for h in rec["headers"]]


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def is_uuid4(text: str) -> bool:
    try:
        return uuid.UUID(text).version == 4 and str(uuid.UUID(text)) == text
    except ValueError:
        return False


def test_fixture_metadata(wire: Dict[str, Any]) -> None:
    assert wire["versions"]["faust_streaming"] == "0.15.3"
    assert wire["broker"]["version"]
    app_id = wire["app_id"]
    for agent, topic in wire["agent_topics"].items():
        assert topic == f"{app_id}-fapp.{agent}"  # f"{app_id}-{module}.{function}"
    for r in wire["records"]:
        assert _bytes(r["value_b64"]) == (None if r["value_repr"] is None else ast.literal_eval(r["value_repr"]))
        assert _bytes(r["key_b64"]) == (None if r["key_repr"] is None else ast.literal_eval(r["key_repr"]))


@pytest.mark.parametrize("rid, key", [("ask_headers", None), ("ask_headers_key", b"k1")])
def test_header_mode_request(wire: Dict[str, Any], rid: str, key: Optional[bytes]) -> None:
    rec = record(wire, f"{rid}/request")
    assert rec["topic"] == wire["agent_topics"]["double"]
    assert _bytes(rec["key_b64"]) == key
    assert _bytes(rec["value_b64"]) == b"21"
    (n1, reply_to), (n2, cid) = headers(rec)
    assert (n1, n2) == (REPLY_TO, CID)
    assert reply_to == wire["reply_topic"].encode()
    assert wire["reply_topic"].startswith("f-reply-")
    assert is_uuid4(wire["reply_topic"][len("f-reply-"):])
    assert cid is not None and is_uuid4(cid.decode())
    assert rec["correlation_id"] == cid.decode()


@pytest.mark.parametrize("rid, key, ns, value", [
    ("ask_envelope", None, "@ReqRepRequest", 21),
    ("ask_envelope_key", b"k1", "@ReqRepRequest", 21),
    # A Record value changes the envelope's namespace to the model class's.
    ("ask_record_envelope", None, "faust.agents.models.ModelReqRepRequest",
     {"x": 1, "y": 2, "__faust": {"ns": "fapp.Point"}}),
])
def test_envelope_mode_request(wire: Dict[str, Any], rid: str, key: Optional[bytes],
                               ns: str, value: Any) -> None:
    rec = record(wire, f"{rid}/request")
    assert rec["headers"] == []
    assert _bytes(rec["key_b64"]) == key
    expected = compact({"value": value, "reply_to": wire["reply_topic"],
                        "correlation_id": rec["correlation_id"], "__faust": {"ns": ns}})
    assert _bytes(rec["value_b64"]) == expected  # field order and spacing exactly


@pytest.mark.parametrize("rid, key, value, ns", [
    ("ask_headers", None, 42, "@ReqRepResponse"),
    ("ask_headers_key", "b'k1'", 42, "@ReqRepResponse"),  # str() of the key bytes
    ("ask_envelope", None, 42, "@ReqRepResponse"),
    ("ask_envelope_key", "b'k1'", 42, "@ReqRepResponse"),
    ("ask_record_headers", None, {"x": 2, "y": 1, "__faust": {"ns": "fapp.Point"}},
     "faust.agents.models.ModelReqRepResponse"),
    ("ask_record_envelope", None, {"x": 2, "y": 1, "__faust": {"ns": "fapp.Point"}},
     "faust.agents.models.ModelReqRepResponse"),
    ("ask_record_to_dict", None, {"x": 3, "y": 4, "sum": 7}, "@ReqRepResponse"),
    ("join_headers[0]", None, 2, "@ReqRepResponse"),
    ("join_headers[1]", None, 4, "@ReqRepResponse"),
    ("join_headers[2]", None, 6, "@ReqRepResponse"),
])
def test_reply(wire: Dict[str, Any], rid: str, key: Any, value: Any, ns: str) -> None:
    request = record(wire, f"{rid}/request")
    rec = record(wire, f"{rid}/reply")
    assert rec["topic"] == wire["reply_topic"]
    assert rec["partition"] == 0
    assert rec["key_b64"] is None  # the reply record has no Kafka key
    assert rec["headers"] == []  # and no headers
    expected = compact({"key": key, "value": value, "correlation_id": request["correlation_id"],
                        "__faust": {"ns": ns}})
    assert _bytes(rec["value_b64"]) == expected


def test_join_sends_one_header_mode_request_per_value(wire: Dict[str, Any]) -> None:
    values = [_bytes(record(wire, f"join_headers[{i}]/request")["value_b64"]) for i in range(3)]
    assert values == [b"1", b"2", b"3"]
    cids = {record(wire, f"join_headers[{i}]/request")["correlation_id"] for i in range(3)}
    assert len(cids) == 3


def test_record_request_in_header_mode(wire: Dict[str, Any]) -> None:
    rec = record(wire, "ask_record_headers/request")
    assert _bytes(rec["value_b64"]) == b'{"x":1,"y":2,"__faust":{"ns":"fapp.Point"}}'
    assert [n for n, _ in headers(rec)] == [REPLY_TO, CID]


def test_failing_agent_sends_nothing(wire: Dict[str, Any]) -> None:
    record(wire, "ask_fail/request")
    assert not [r for r in wire["records"] if r["id"] == "ask_fail/reply"]
    scenario = next(s for s in wire["scenarios"] if s["id"] == "ask_fail")
    assert scenario["faust_client_result"] == {"ok": False, "error": "timeout"}
    assert not [r for r in wire["records"] if r["id"].startswith("unexpected")]


def test_reply_topic_as_faust_creates_it(wire: Dict[str, Any]) -> None:
    topic = wire["topics"][wire["reply_topic"]]
    assert topic["partitions"] == 1
    assert topic["configs"] == {"cleanup.policy": "delete", "retention.ms": "86400000"}


def _probes(wire: Dict[str, Any], kind: str) -> Dict[str, Dict[str, Any]]:
    return {p["id"]: p for p in wire["probes"][kind]}


def test_faust_client_tolerates_these_replies(wire: Dict[str, Any]) -> None:
    probes = _probes(wire, "foreign_replies")
    for pid in ("stray_cid_first", "reply_headers", "no_faust_field", "extra_fields",
                "unknown_ns", "spaced_reordered_keyed"):
        assert probes[pid]["ask_result"] == {"ok": True, "value": "ok"}, pid
        assert probes[pid]["later_ask_answered"], pid
    assert probes["null_value_field"]["ask_result"] == {"ok": True, "value": None}


def test_faust_client_reply_consumer_dies_on_these_replies(wire: Dict[str, Any]) -> None:
    probes = _probes(wire, "foreign_replies")
    for pid in ("missing_key_field", "missing_value_field", "not_json", "tombstone"):
        assert probes[pid]["ask_result"] == {"ok": False, "error": "timeout"}, pid
        assert not probes[pid]["later_ask_answered"], pid


def test_faust_worker_answers_foreign_requests(wire: Dict[str, Any]) -> None:
    probes = _probes(wire, "foreign_requests")
    answered = {pid for pid, p in probes.items() if p["replies"]}
    assert answered == {
        "headers_reversed_extra", "headers_binary_key", "envelope_spaced_reordered",
        "headers_plain_dict_to_record_agent", "headers_record", "envelope_record_model_ns",
        "envelope_and_headers", "reply_to_without_cid",
    }
    # An unknown __faust namespace, or a Record in a plain @ReqRepRequest
    # envelope sent to a typed agent, crash the agent: no reply.
    assert not probes["headers_unknown_ns"]["replies"]
    assert not probes["envelope_record_plain_ns"]["replies"]
    # Without "__faust" an envelope is just a dict value, and without
    # headers nobody asked for a reply.
    assert not probes["envelope_without_faust_field"]["replies"]
    # The envelope wins over headers.
    both = probes["envelope_and_headers"]
    assert json.loads(ast.literal_eval(both["replies"][0]["value_repr"]))["correlation_id"] == both["correlation_id"]
    # No correlation id header: Faust still replies, with correlation_id null.
    nocid = probes["reply_to_without_cid"]
    assert json.loads(ast.literal_eval(nocid["replies"][0]["value_repr"]))["correlation_id"] is None
    binkey = probes["headers_binary_key"]
    assert json.loads(ast.literal_eval(binkey["replies"][0]["value_repr"]))["key"] == "b'\\xff\\x00'"
