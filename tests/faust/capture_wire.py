"""Capture Faust's request/reply wire format into a fixture file.

Runs a real Faust worker (``fapp.py``) and a real Faust client
(``client.py``), each in its own process under ``.venv-faust``, against a
running broker; then reads back with kafka-python every record they put on
the agents' request topics and on the client's reply topic, byte for byte,
and writes them to ``tests/fixtures/faust_wire.json``::

    python -m tests.kafka start            # in another shell; prints HOST:PORT
    python tests/faust/capture_wire.py --bootstrap HOST:PORT --broker-version 4.4.0

What the client asks (each a scenario in the fixture, by id):

* ``ask_headers``            ``double.ask(21)``, key null, header mode
* ``ask_headers_key``        ``double.ask(21, key=b"k1")``, header mode
* ``ask_envelope``           ``double.ask(21)``, envelope mode
  (``use_reply_headers=False``)
* ``ask_envelope_key``       the same with key ``b"k1"``
* ``ask_record_headers``     ``flip.ask(Point(x=1, y=2))``: a Record in and out
* ``ask_record_envelope``    the same in envelope mode
* ``ask_record_to_dict``     ``norm.ask(Point(x=3, y=4))``: a Record in, a dict out
* ``join_headers``           ``double.join([1, 2, 3])``, header mode
* ``ask_fail``               ``fail.ask(7)``: the agent raises, no reply comes

Records carry base64 bytes (``*_b64``) and a readable ``repr`` beside them.
Timestamps are left out.  On a broker used before, only records newer than
the topics' end offsets at the start are captured.

Then the compatibility probes of ``probes.py`` run (``--no-probes`` skips
them): kafka-python requests to the Faust worker, and kafka-python replies
to a Faust client, each with its outcome.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

REPO_ROOT = Path(__file__).resolve().parents[2]
if __package__ in (None, ""):  # run as a script: make ``tests`` importable
    sys.path.insert(0, str(REPO_ROOT))

from tests.faust import probes, procs  # noqa: E402
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "faust_wire.json"
POINT_NS = "fapp.Point"

REPLY_HEADER = "Faust-Ag-ReplyTo"
CID_HEADER = "Faust-Ag-CorrelationId"


def _point(x: int, y: int) -> Dict[str, Any]:
    return {"x": x, "y": y, "__faust": {"ns": POINT_NS}}


def scenarios(topics: Dict[str, str], fail_timeout: float) -> List[Dict[str, Any]]:
    """The client's operations, each labelled with a scenario id."""
    d, f, n, x = topics["double"], topics["flip"], topics["norm"], topics["fail"]
    return [
        {"label": "ask_headers", "op": "ask", "topic": d, "value": 21,
         "about": "double.ask(21), key null, header mode (Faust's default)"},
        {"label": "ask_headers_key", "op": "ask", "topic": d, "value": 21, "key": "k1",
         "about": "double.ask(21, key=b'k1'), header mode"},
        {"label": "ask_envelope", "op": "ask", "topic": d, "value": 21, "envelope": True,
         "about": "double.ask(21), key null, envelope mode (use_reply_headers=False)"},
        {"label": "ask_envelope_key", "op": "ask", "topic": d, "value": 21, "key": "k1",
         "envelope": True,
         "about": "double.ask(21, key=b'k1'), envelope mode (use_reply_headers=False)"},
        {"label": "ask_record_headers", "op": "ask", "topic": f, "value": _point(1, 2),
         "about": "flip.ask(Point(x=1, y=2)): a Record request, a Record reply, header mode"},
        {"label": "ask_record_envelope", "op": "ask", "topic": f, "value": _point(1, 2),
         "envelope": True,
         "about": "flip.ask(Point(x=1, y=2)): a Record request, a Record reply, envelope mode"},
        {"label": "ask_record_to_dict", "op": "ask", "topic": n, "value": _point(3, 4),
         "about": "norm.ask(Point(x=3, y=4)): a Record request, a dict reply, header mode"},
        {"label": "join_headers", "op": "join", "topic": d, "values": [1, 2, 3],
         "about": "double.join([1, 2, 3]), header mode: one request per value"},
        {"label": "ask_fail", "op": "ask", "topic": x, "value": 7, "timeout": fail_timeout,
         "about": "fail.ask(7): the agent raises ValueError; Faust sends no reply"},
    ]


# -- reading the topics back -------------------------------------------------

def _b64(data: Optional[bytes]) -> Optional[str]:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _repr(data: Optional[bytes]) -> Optional[str]:
    return None if data is None else repr(data)


def end_offsets(bootstrap: str, topics: Iterable[str]) -> Dict[Tuple[str, int], int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        existing = consumer.topics()
        tps = [TopicPartition(t, p) for t in topics if t in existing
               for p in sorted(consumer.partitions_for_topic(t) or ())]
        return {(tp.topic, tp.partition): off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def read_topics(bootstrap: str, topics: Iterable[str],
                start: Dict[Tuple[str, int], int]) -> List[Any]:
    """Every record of ``topics`` from ``start`` (default 0) to the end."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    records: List[Any] = []
    try:
        tps = [TopicPartition(t, p) for t in topics
               for p in sorted(consumer.partitions_for_topic(t) or ())]
        if not tps:
            return records
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start.get((tp.topic, tp.partition), 0))
        end = consumer.end_offsets(tps)
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise RuntimeError("could not read the topics to their end in 60 s")
            for batch in consumer.poll(timeout_ms=1000).values():
                records.extend(r for r in batch if r.offset < end[TopicPartition(r.topic, r.partition)])
    finally:
        consumer.close()
    order = {t: i for i, t in enumerate(topics)}
    records.sort(key=lambda r: (order[r.topic], r.partition, r.offset))
    return records


def describe_topics(bootstrap: str, topics: List[str]) -> Dict[str, Any]:
    """Partition count and the configs set on each topic (not broker defaults)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        out: Dict[str, Any] = {t: {"partitions": None, "configs": {}} for t in topics}
        for meta in admin.describe_topics(topics):
            out[meta["name"]]["partitions"] = len(meta["partitions"])
        for topic in topics:
            result = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            for entries in _config_entries(result, topic):
                out[topic]["configs"].update(entries)
        return out
    finally:
        admin.close()


def _config_entries(result: Any, topic: str) -> Iterable[Dict[str, str]]:
    # kafka-python 3 answers {"topic": {name: {name: {"value", "config_source", ...}}}}
    items = result if isinstance(result, list) else [result]
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("topic"), dict):
            configs = item["topic"].get(topic, {})
            yield {k: v.get("value") for k, v in sorted(configs.items())
                   if v.get("config_source") in ("DYNAMIC_TOPIC_CONFIG", 1)}


def broker_api_version(bootstrap: str) -> Optional[str]:
    """The broker version kafka-python infers from ApiVersions (a lower bound)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        version = admin.config.get("api_version") or admin._client.check_version()
        return ".".join(map(str, version)) if version else None
    except Exception:
        return None
    finally:
        admin.close()


# -- labelling ---------------------------------------------------------------

def record_json(record: Any) -> Dict[str, Any]:
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key_b64": _b64(record.key),
        "key_repr": _repr(record.key),
        "value_b64": _b64(record.value),
        "value_repr": _repr(record.value),
        "headers": [{"name": name, "value_b64": _b64(value), "value_repr": _repr(value)}
                    for name, value in record.headers],
    }


def _correlation_id(record: Any) -> Tuple[Optional[str], str]:
    """(correlation id, how it was found) for a request or reply record."""
    headers = dict(record.headers)
    if CID_HEADER in headers:
        return headers[CID_HEADER].decode(), "headers"
    try:
        body = json.loads(record.value)
    except (TypeError, ValueError):
        return None, "unknown"
    if isinstance(body, dict) and "correlation_id" in body:
        return body["correlation_id"], "envelope"
    return None, "unknown"


def label_records(requests: List[Any], replies: List[Any],
                  results: List[Dict[str, Any]], ops: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    by_cid: Dict[str, Tuple[str, str]] = {}
    for op, res in zip(ops, results):
        if res.get("correlation_id"):
            by_cid[res["correlation_id"]] = (op["label"], op["about"])
    joins = [op for op in ops if op["op"] == "join"]
    out: List[Dict[str, Any]] = []
    join_seq: Dict[str, int] = {}
    for rec in requests:
        cid, mode = _correlation_id(rec)
        if cid in by_cid:
            label, about = by_cid[cid]
        else:
            join = next((j for j in joins if j["topic"] == rec.topic), None)
            if join is None:
                label, about = "unexpected", "a request this capture did not send"
            else:
                i = join_seq[join["label"]] = join_seq.get(join["label"], -1) + 1
                label = f"{join['label']}[{i}]"
                about = f"{join['about']}; request {i}"
            if cid:
                by_cid[cid] = (label, about)
        out.append({"id": f"{label}/request", "kind": "request", "mode": mode,
                    "correlation_id": cid, "description": f"request: {about}",
                    **record_json(rec)})
    for rec in replies:
        cid, _ = _correlation_id(rec)
        label, about = by_cid.get(cid or "", ("unexpected", "a reply to no request of this capture"))
        out.append({"id": f"{label}/reply", "kind": "reply", "mode": None,
                    "correlation_id": cid, "description": f"reply from the Faust agent: {about}",
                    **record_json(rec)})
    return out


# -- main --------------------------------------------------------------------

def faust_versions(python: Path) -> Dict[str, str]:
    code = ("import json, sys; from importlib.metadata import version as v; print(json.dumps({"
            "'faust_streaming': v('faust-streaming'), 'aiokafka': v('aiokafka'), "
            "'mode_streaming': v('mode-streaming'), 'python': sys.version.split()[0]}))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                         check=True, env=procs.faust_env())
    versions: Dict[str, str] = json.loads(out.stdout)
    return versions


def capture(bootstrap: str, *, app_id: str, broker_version: Optional[str],
            fail_timeout: float, with_probes: bool = True) -> Dict[str, Any]:
    import kafka

    python = procs.faust_python()
    versions = faust_versions(python)
    worker = procs.FaustWorker(bootstrap, app_id=app_id, python=python)
    request_topics = [worker.topics[a] for a in ("double", "flip", "norm", "fail")]
    start = end_offsets(bootstrap, request_topics)
    ops = scenarios(worker.topics, fail_timeout)
    client_ops = [{k: v for k, v in op.items() if k != "about"} for op in ops]
    with worker:
        out = procs.run_client(bootstrap, client_ops, app_id=f"fzclient-{uuid.uuid4().hex[:8]}",
                               python=python)
        time.sleep(2.0)  # let any late reply land before reading back
        reply_topic = out["reply_to"]
        requests = read_topics(bootstrap, request_topics, start)
        replies = read_topics(bootstrap, [reply_topic], {})
        foreign_requests = probes.foreign_requests(bootstrap, worker.topics) if with_probes else []
    foreign_replies = probes.foreign_replies(bootstrap) if with_probes else []
    results = out["results"]
    scenario_list = []
    for op, res in zip(ops, results):
        scenario_list.append({
            "id": op["label"],
            "description": op["about"],
            "agent_topic": op["topic"],
            "mode": "envelope" if op.get("envelope") else "headers",
            "request_key": op.get("key"),
            "request_value": op.get("value", op.get("values")),
            "faust_client_result": {k: v for k, v in res.items() if k in ("ok", "value", "error")},
            "correlation_id": res.get("correlation_id"),
        })
    return {
        "about": ("Request/reply records written by a real Faust worker and a real Faust "
                  "client, read back byte for byte with kafka-python. Regenerate with "
                  "tests/faust/capture_wire.py. Bytes are base64 (*_b64) with Python's "
                  "repr() beside them (*_repr); null means no key / no value."),
        "generated_by": "python tests/faust/capture_wire.py --bootstrap HOST:PORT",
        "captured_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": {**versions, "kafka_python_reader": kafka.__version__},
        "broker": {"kind": "Apache Kafka (KRaft)", "version": broker_version,
                   "api_version_seen_by_kafka_python": broker_api_version(bootstrap)},
        "app_id": app_id,
        "agent_topics": worker.topics,
        "reply_topic": reply_topic,
        "topics": describe_topics(bootstrap, request_topics + [reply_topic]),
        "scenarios": scenario_list,
        "records": label_records(requests, replies, results, ops),
        "probes": {
            "about": ("How real Faust reacts to records it did not write (tests/faust/probes.py). "
                      "foreign_replies: a kafka-python responder answers a Faust client's "
                      "header-mode asks; ask_result is what ask() gave the client, "
                      "later_ask_answered whether that client's reply consumer still worked "
                      "afterwards. foreign_requests: kafka-python requests to the Faust "
                      "worker and the replies it sent back (none: the list is empty)."),
            "foreign_replies": foreign_replies,
            "foreign_requests": foreign_requests,
        },
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", required=True, help="HOST:PORT of a running broker")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fixture file to write")
    parser.add_argument("--app-id", default="fz", help="Faust app id of the worker (default fz)")
    parser.add_argument("--broker-version", help="broker version, recorded in the fixture")
    parser.add_argument("--no-probes", action="store_true",
                        help="skip the compatibility probes (tests/faust/probes.py)")
    parser.add_argument("--fail-timeout", type=float, default=10.0,
                        help="seconds to wait for the failing agent's (absent) reply")
    args = parser.parse_args(argv)
    data = capture(args.bootstrap, app_id=args.app_id, broker_version=args.broker_version,
                   fail_timeout=args.fail_timeout, with_probes=not args.no_probes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {len(data['records'])} records to {args.out}")
    bad = [s["id"] for s in data["scenarios"]
           if s["faust_client_result"].get("ok") != (s["id"] != "ask_fail")]
    if bad:
        print(f"unexpected outcome for: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
