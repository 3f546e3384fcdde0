"""Compatibility probes: how real Faust reacts to records it did not write.

Two sets, both run by ``capture_wire.py`` into the fixture's ``probes``:

* ``foreign_replies``: a Faust client asks a topic that a kafka-python
  responder serves; the responder answers each request with a variation
  of Faust's reply (extra headers, extra JSON fields, no ``__faust``,
  a stray correlation id, broken values, ...).  Each outcome says what the
  client's ``ask()`` returned and whether the client's reply consumer still
  worked afterwards (a follow-up ask answered normally).
* ``foreign_requests``: kafka-python sends requests to the Faust worker of
  ``fapp.py`` (header mode with other header orders and extra headers,
  envelopes with other spacing, Records in envelopes, ...) and records the
  replies that came back (or that none did).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Tuple

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from tests.faust import procs

REPLY_TO = "Faust-Ag-ReplyTo"
CID = "Faust-Ag-CorrelationId"
Sent = Tuple[Optional[bytes], Optional[bytes], List[Tuple[str, bytes]]]  # key, value, headers


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _faust_reply(cid: str, value: Any, key: Any = None) -> bytes:
    return _compact({"key": key, "value": value, "correlation_id": cid,
                     "__faust": {"ns": "@ReqRepResponse"}})


def _create_topics(bootstrap: str, *names: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(n, 1, 1) for n in names])
    finally:
        admin.close()


def _sent_json(sent: Sent) -> Dict[str, Any]:
    key, value, headers = sent
    return {"key_repr": repr(key) if key is not None else None,
            "value_repr": repr(value) if value is not None else None,
            "headers": [[n, repr(v)] for n, v in headers]}


# -- foreign replies ---------------------------------------------------------

#: probe id -> (description, crashes expected to be checked alone, make replies)
ReplyMaker = Callable[[str], List[Sent]]
FOREIGN_REPLIES: Dict[str, Tuple[str, ReplyMaker]] = {
    "stray_cid_first": (
        "a reply with an unknown correlation id, then the right reply",
        lambda cid: [(None, _faust_reply(str(uuid.UUID(int=0)), "stray"), []),
                     (None, _faust_reply(cid, "ok"), [])]),
    "reply_headers": (
        "Faust's reply plus headers of another library (an error marker, binary bytes)",
        lambda cid: [(None, _faust_reply(cid, "ok"),
                      [("replies-error", b"1"), ("replies-x", b"\xff\x00")])]),
    "no_faust_field": (
        "reply JSON without the __faust field",
        lambda cid: [(None, _compact({"key": None, "value": "ok", "correlation_id": cid}), [])]),
    "extra_fields": (
        "reply JSON with an extra top-level field (error details)",
        lambda cid: [(None, _compact({"key": None, "value": "ok", "correlation_id": cid,
                                      "error": {"type": "ValueError", "message": "m"},
                                      "__faust": {"ns": "@ReqRepResponse"}}), [])]),
    "unknown_ns": (
        "reply JSON whose __faust namespace Faust does not know",
        lambda cid: [(None, _compact({"key": None, "value": "ok", "correlation_id": cid,
                                      "__faust": {"ns": "replies.Error"}}), [])]),
    "spaced_reordered_keyed": (
        "reply JSON indented, fields in another order, the record with a Kafka key",
        lambda cid: [(b"somekey", json.dumps({"correlation_id": cid, "value": "ok",
                                              "__faust": {"ns": "@ReqRepResponse"},
                                              "key": "whatever"}, indent=1).encode(), [])]),
    "null_value_field": (
        "reply JSON whose value field is null",
        lambda cid: [(None, _faust_reply(cid, None), [])]),
    "missing_key_field": (
        "reply JSON without the key field",
        lambda cid: [(None, _compact({"value": "ok", "correlation_id": cid,
                                      "__faust": {"ns": "@ReqRepResponse"}}), [])]),
    "missing_value_field": (
        "reply JSON without the value field",
        lambda cid: [(None, _compact({"key": None, "correlation_id": cid,
                                      "__faust": {"ns": "@ReqRepResponse"}}), [])]),
    "not_json": (
        "a reply value that is not JSON, then the right reply",
        lambda cid: [(None, b"\x00not json", []), (None, _faust_reply(cid, "ok"), [])]),
    "tombstone": (
        "a record with a null value (a tombstone), then the right reply",
        lambda cid: [(b"k", None, []), (None, _faust_reply(cid, "ok"), [])]),
}
#: Probes that may break the client's reply consumer: each gets a client alone.
RISKY = ("missing_key_field", "missing_value_field", "not_json", "tombstone")
_FOLLOW_UP = "follow_up"


class _Responder(threading.Thread):
    """Answers requests on ``topic``: value {"probe": id} picks the replies."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(name="faust-probe-responder", daemon=True)
        self.bootstrap = bootstrap
        self.topic = topic
        self.sent: Dict[str, List[Sent]] = {}
        self.error: Optional[BaseException] = None
        self._stop_event = threading.Event()
        self._ready = threading.Event()

    def run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # reported by stop()
            self.error = exc
            self._ready.set()

    def _serve(self) -> None:
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        producer = KafkaProducer(bootstrap_servers=self.bootstrap)
        try:
            tp = TopicPartition(self.topic, 0)
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            consumer.position(tp)
            self._ready.set()
            while not self._stop_event.is_set():
                for batch in consumer.poll(timeout_ms=200).values():
                    for rec in batch:
                        self._answer(producer, rec)
        finally:
            consumer.close()
            producer.close()

    def _answer(self, producer: KafkaProducer, rec: Any) -> None:
        headers = dict(rec.headers)
        reply_to = headers[REPLY_TO].decode()
        cid = headers[CID].decode()
        probe = json.loads(rec.value)["probe"]
        if probe == _FOLLOW_UP:
            replies: List[Sent] = [(None, _faust_reply(cid, "follow-up ok"), [])]
        else:
            replies = FOREIGN_REPLIES[probe][1](cid)
        self.sent.setdefault(cid, []).extend(replies)
        for key, value, hdrs in replies:
            producer.send(reply_to, key=key, value=value, headers=hdrs)
        producer.flush()

    def wait_ready(self, timeout: float = 30.0) -> None:
        self._ready.wait(timeout)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)
        if self.error is not None:
            raise RuntimeError(f"probe responder failed: {self.error!r}") from self.error


def foreign_replies(bootstrap: str, *, timeout: float = 6.0) -> List[Dict[str, Any]]:
    topic = f"probe-replies-{uuid.uuid4().hex[:8]}"
    _create_topics(bootstrap, topic)
    responder = _Responder(bootstrap, topic)
    responder.start()
    responder.wait_ready()

    def op(probe: str) -> Dict[str, Any]:
        return {"op": "ask", "topic": topic, "value": {"probe": probe}, "timeout": timeout}

    follow = op(_FOLLOW_UP)
    safe = [p for p in FOREIGN_REPLIES if p not in RISKY]
    batches = [safe + [_FOLLOW_UP]] + [[p, _FOLLOW_UP] for p in RISKY]
    try:
        with ThreadPoolExecutor(max_workers=len(batches)) as pool:
            runs = list(pool.map(
                lambda batch: procs.run_client(
                    bootstrap, [op(p) if p != _FOLLOW_UP else follow for p in batch]),
                batches))
    finally:
        responder.stop()
    out: List[Dict[str, Any]] = []
    for batch, run in zip(batches, runs):
        results = run["results"]
        follow_up = results[-1]
        for probe, result in zip(batch[:-1], results[:-1]):
            description = FOREIGN_REPLIES[probe][0]
            out.append({
                "id": probe,
                "description": description,
                "replies_sent": [_sent_json(s) for s in responder.sent.get(result["correlation_id"], [])],
                "ask_result": {k: v for k, v in result.items() if k in ("ok", "value", "error")},
                "later_ask_answered": bool(follow_up.get("ok")),
                "alone": probe in RISKY,
            })
    return out


# -- foreign requests --------------------------------------------------------

def foreign_requests(bootstrap: str, topics: Dict[str, str], *,
                     wait: float = 8.0) -> List[Dict[str, Any]]:
    """Requests made by kafka-python, sent to a running ``fapp`` worker."""
    reply_to = f"probe-requests-{uuid.uuid4().hex[:8]}"
    _create_topics(bootstrap, reply_to)
    rt = reply_to.encode()
    point = {"x": 5, "y": 6, "__faust": {"ns": "fapp.Point"}}

    def hdrs(cid: str) -> List[Tuple[str, bytes]]:
        return [(REPLY_TO, rt), (CID, cid.encode())]

    def envelope(cid: str, value: Any, ns: str = "@ReqRepRequest", **dumps: Any) -> bytes:
        body = {"value": value, "reply_to": reply_to, "correlation_id": cid, "__faust": {"ns": ns}}
        return json.dumps(body, **dumps).encode() if dumps else _compact(body)

    cases: List[Tuple[str, str, str, Callable[[str], Sent]]] = [
        ("headers_reversed_extra", "double",
         "header mode, headers in reverse order plus a header of another library",
         lambda c: (None, b"21", hdrs(c)[::-1] + [("replies-deadline", b"1234")])),
        ("headers_binary_key", "echo",
         "header mode, a key that is not UTF-8 (the reply echoes str(bytes))",
         lambda c: (b"\xff\x00", b'"s"', hdrs(c))),
        ("envelope_spaced_reordered", "double",
         "envelope with json.dumps' default spacing, fields in another order",
         lambda c: (None, json.dumps({"__faust": {"ns": "@ReqRepRequest"}, "correlation_id": c,
                                      "reply_to": reply_to, "value": 5}).encode(), [])),
        ("headers_plain_dict_to_record_agent", "flip",
         "header mode, a plain JSON object (no __faust) to an agent typed Point",
         lambda c: (None, b'{"x":1,"y":2}', hdrs(c))),
        ("headers_record", "echo",
         "header mode, a Record value to an untyped agent",
         lambda c: (None, _compact(point), hdrs(c))),
        ("headers_unknown_ns", "echo",
         "header mode, a value whose __faust namespace the worker does not know",
         lambda c: (None, b'{"x":5,"__faust":{"ns":"nowhere.Thing"}}', hdrs(c))),
        ("envelope_record_plain_ns", "flip",
         "a Record inside an @ReqRepRequest envelope, to an agent typed Point",
         lambda c: (None, envelope(c, point), [])),
        ("envelope_record_model_ns", "flip",
         "a Record inside a faust.agents.models.ModelReqRepRequest envelope (what Faust sends)",
         lambda c: (None, envelope(c, point, "faust.agents.models.ModelReqRepRequest"), [])),
        ("envelope_without_faust_field", "echo",
         "an envelope-shaped object without __faust, no headers",
         lambda c: (None, _compact({"value": 1, "reply_to": reply_to, "correlation_id": c}), [])),
        ("envelope_and_headers", "echo",
         "an envelope and reply headers with another correlation id",
         lambda c: (None, envelope(c, "env"), [(REPLY_TO, rt), (CID, b"header-cid")])),
        ("reply_to_without_cid", "echo",
         "header mode with Faust-Ag-ReplyTo but no Faust-Ag-CorrelationId",
         lambda c: (None, _compact(f"no-cid {c}"), [(REPLY_TO, rt)])),
    ]
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    sent: Dict[str, Tuple[str, str, str, Sent]] = {}
    try:
        for probe, agent, description, make in cases:
            cid = str(uuid.uuid4())
            record = make(cid)
            key, value, headers = record
            producer.send(topics[agent], key=key, value=value, headers=headers)
            sent[cid] = (probe, agent, description, record)
        producer.flush()
    finally:
        producer.close()
    time.sleep(wait)
    replies = _read_all(bootstrap, reply_to)
    by_probe: Dict[str, List[Any]] = {}
    for rec in replies:
        try:
            body = json.loads(rec.value)
        except ValueError:
            body = {}
        cid = body.get("correlation_id")
        if cid in sent:
            by_probe.setdefault(sent[cid][0], []).append(rec)
        else:  # the reply without a correlation id echoes its cid in the value
            for c, (probe, *_rest) in sent.items():
                if c in json.dumps(body.get("value")):
                    by_probe.setdefault(probe, []).append(rec)
    out = []
    for cid, (probe, agent, description, record) in sent.items():
        out.append({
            "id": probe,
            "description": description,
            "agent_topic": topics[agent],
            "request_sent": _sent_json(record),
            "correlation_id": cid,
            "replies": [{"key_repr": repr(r.key) if r.key is not None else None,
                         "value_repr": repr(r.value) if r.value is not None else None,
                         "headers": [[n, repr(v)] for n, v in r.headers]}
                        for r in by_probe.get(probe, [])],
        })
    return out


def _read_all(bootstrap: str, topic: str) -> List[Any]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        records: List[Any] = []
        deadline = time.monotonic() + 30
        while consumer.position(tp) < end and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()
