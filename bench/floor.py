"""The floor: request/reply with plain kafka-python and no library code.

Two halves, each a hand-written loop of the kind a user would write
instead of using a library:

* :func:`serve_echo` (run in its own process by ``python -m bench.floor
  echo ...``): a consumer-group member reading the request topic and
  producing each request's value back, unchanged, to the topic named in
  its ``Faust-Ag-ReplyTo`` header, with its ``Faust-Ag-CorrelationId``
  header copied.
* :class:`Requester` (in the benchmark's process): one producer, one
  consumer assigned to a one-partition reply topic, and a thread that
  matches replies to waiting requests by correlation id.

Both use kafka-python's default settings.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
import uuid
from types import FrameType
from typing import Dict, List, Optional

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

REPLY_TO = "Faust-Ag-ReplyTo"
CORRELATION_ID = "Faust-Ag-CorrelationId"
READY = "floor echo ready"


def serve_echo(bootstrap: str, topic: str, group: str) -> None:
    """Echo every request on ``topic`` to its reply topic until SIGTERM."""
    stop = threading.Event()

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                             auto_offset_reset="earliest")
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    announced = False
    try:
        while not stop.is_set():
            batches = consumer.poll(timeout_ms=100)
            if not announced and consumer.assignment():
                print(READY, flush=True)
                announced = True
            for records in batches.values():
                for record in records:
                    headers = dict(record.headers)
                    reply_to = headers.get(REPLY_TO)
                    cid = headers.get(CORRELATION_ID)
                    if reply_to is None or cid is None:
                        continue
                    producer.send(reply_to.decode(), record.value, headers=[(CORRELATION_ID, cid)])
    finally:
        producer.close(timeout=5)
        consumer.close()


class Requester:
    """Sends requests and waits for their replies, with kafka-python alone.

    Threading model: the reply thread owns the consumer (kafka-python's
    consumer is not thread-safe); callers share the producer (it is).
    ``_lock`` guards ``_waiting``; events are set after it is released.
    """

    def __init__(self, bootstrap: str, topic: str, reply_to: str) -> None:
        self.topic = topic
        self.reply_to = reply_to
        self.producer = KafkaProducer(bootstrap_servers=bootstrap)
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        partition = TopicPartition(reply_to, 0)
        self.consumer.assign([partition])
        self.consumer.seek_to_end(partition)
        self.consumer.position(partition)  # resolve now: no reply may be missed
        # Guards _waiting: correlation id -> (event, slot for the reply value).
        self._lock = threading.Lock()
        self._waiting: Dict[bytes, tuple[threading.Event, List[bytes]]] = {}
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run_replies, name="bench-floor-replies", daemon=True)
        self._thread.start()

    def _run_replies(self) -> None:
        while not self._closing.is_set():
            for records in self.consumer.poll(timeout_ms=100).values():
                for record in records:
                    cid = dict(record.headers).get(CORRELATION_ID)
                    with self._lock:
                        waiter = self._waiting.pop(cid, None) if cid else None
                    if waiter is not None:
                        waiter[1].append(record.value)
                        waiter[0].set()

    def send(self, value: bytes) -> tuple[threading.Event, List[bytes]]:
        """Send one request; return its (event, reply slot)."""
        cid = uuid.uuid4().hex.encode()
        waiter: tuple[threading.Event, List[bytes]] = (threading.Event(), [])
        with self._lock:
            self._waiting[cid] = waiter
        self.producer.send(self.topic, value,
                           headers=[(REPLY_TO, self.reply_to.encode()), (CORRELATION_ID, cid)])
        return waiter

    def ask(self, value: bytes, timeout: float) -> bytes:
        """One request, one reply; raises TimeoutError after ``timeout`` s."""
        event, slot = self.send(value)
        if not event.wait(timeout):
            raise TimeoutError(f"floor: no reply within {timeout} s")
        return slot[0]

    def join(self, values: List[bytes], timeout: float) -> List[bytes]:
        """Send all requests at once, then wait for every reply."""
        deadline = time.monotonic() + timeout
        waiters = [self.send(value) for value in values]
        for event, _ in waiters:
            if not event.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"floor: not all replies within {timeout} s")
        return [slot[0] for _, slot in waiters]

    def close(self) -> None:
        """Stop the reply thread and close both clients. Idempotent."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._thread.join(5)
        self.producer.close(timeout=5)
        self.consumer.close()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    commands = parser.add_subparsers(dest="command", required=True)
    echo = commands.add_parser("echo", help="serve the floor's echo until SIGTERM")
    echo.add_argument("--bootstrap", required=True)
    echo.add_argument("--topic", required=True)
    echo.add_argument("--group", required=True)
    args = parser.parse_args(argv)
    serve_echo(args.bootstrap, args.topic, args.group)
    return 0


if __name__ == "__main__":
    sys.exit(main())
