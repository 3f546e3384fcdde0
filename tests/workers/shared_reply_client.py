"""A client process of the shared-reply-topic test (tests/test_shared_reply.py).

``python -m tests.workers.shared_reply_client BOOTSTRAP REPLY_TOPIC PARTITION AGENT_TOPIC COUNT WIRE SETTINGS``
asks AGENT_TOPIC COUNT times with ``App(reply_to=REPLY_TOPIC,
reply_partition=PARTITION, wire=WIRE)`` and prints one JSON line: how many
replies were right, the partitions its reply reader was assigned, and how
many replies it read that were not its own.
"""

from __future__ import annotations

import json
import sys
from typing import Any, List

import replies
from replies.transport.kafka import KafkaTransport


def main(argv: List[str]) -> int:
    bootstrap, reply_topic, partition, agent_topic, count, wire, settings = argv
    me, total = int(partition), int(count)
    assigned: List[List[int]] = []
    open_reader = KafkaTransport.reply_reader

    def recording_reader(self: KafkaTransport, topic: str, timeout: float, **kw: Any) -> Any:
        # Records what the reply reader's consumer was assigned.
        reader = open_reader(self, topic, timeout, **kw)
        assigned.append(sorted(tp.partition for tp in reader._consumer.assignment()))  # type: ignore[attr-defined]
        return reader

    KafkaTransport.reply_reader = recording_reader  # type: ignore[method-assign]
    app = replies.App(f"shared-client-{me}", broker=f"kafka://{bootstrap}", reply_to=reply_topic,
                      reply_partition=me, wire=wire, connect_timeout=60.0, request_timeout=240.0,
                      **json.loads(settings))
    with app:
        values = [{"client": me, "n": n} for n in range(total)]
        answers = app.topic(agent_topic).join(values, timeout=240)
        right = sum(1 for value, answer in zip(values, answers) if answer == value)
        assert app._consumer is not None
        unknown = app._consumer.table.unknown
    print(json.dumps({"partition": me, "right": right, "assigned": assigned, "unknown": unknown}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
