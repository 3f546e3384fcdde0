"""A process that forks with Apps made and started before the fork.

Run by tests/test_fork.py as ``python -m tests.workers.forking``, configured
like :mod:`tests.workers.sample` by ``REPLIES_TEST_BROKER_URL``,
``REPLIES_TEST_APP_ID`` and ``REPLIES_TEST_KAFKA_SETTINGS``. The parent
serves an agent, starts one client App and leaves another never started,
then forks two children. Each child asks through both Apps, reports what it
saw on a pipe and exits normally (so exit hooks run, the parent's inherited
ones too). The parent asks again afterwards and prints one JSON object with
everything the test checks.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any, Dict, List

import replies

BROKER = os.environ["REPLIES_TEST_BROKER_URL"]
APP_ID = os.environ["REPLIES_TEST_APP_ID"]
SETTINGS: Dict[str, Any] = json.loads(os.environ.get("REPLIES_TEST_KAFKA_SETTINGS", "{}"))

server = replies.App(APP_ID, broker=BROKER, topic_partitions=2, **SETTINGS)


@server.agent(concurrency=4)
def echo(value: Any) -> Dict[str, Any]:
    return {"value": value, "served_by": os.getpid()}


def client(name: str) -> replies.App:
    app = replies.App(f"{APP_ID}-{name}", broker=BROKER, request_timeout=20, **SETTINGS)
    return app


def ask(app: replies.App, value: Any) -> Any:
    return app.topic(echo.topic_name).ask(value)


def child(started: replies.App, lazy: replies.App, write_end: int) -> None:
    report = {
        "pid": os.getpid(),
        "started_answer": ask(started, f"started {os.getpid()}"),
        "lazy_answer": ask(lazy, f"lazy {os.getpid()}"),
        "started_reply_to": started.reply_to,
        "lazy_reply_to": lazy.reply_to,
        "joined": started.topic(echo.topic_name).join(range(20)),
    }
    os.write(write_end, (json.dumps(report) + "\n").encode())
    os.close(write_end)


def main() -> None:
    server.serve()
    started = client("started").start()
    lazy = client("lazy")  # made, never started, before the fork
    before = ask(started, "parent before")
    parent_reply_to = started.reply_to
    read_end, write_end = os.pipe()
    children: List[int] = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            code = 0
            try:
                child(started, lazy, write_end)
            except BaseException:
                traceback.print_exc()
                code = 3
            # A normal exit: the exit hooks close the child's Apps (and run
            # the hooks inherited from the parent's clients).
            sys.exit(code)
        children.append(pid)
    os.close(write_end)
    with os.fdopen(read_end) as reports_file:
        reports = [json.loads(line) for line in reports_file]
    statuses = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    after = [ask(started, f"parent after {i}") for i in range(20)]
    observer = client("observer").start()
    # The children's topics are deleted when they exit; deletion completes
    # asynchronously on the broker.
    deadline = time.monotonic() + 20
    child_topics = [r[k] for r in reports for k in ("started_reply_to", "lazy_reply_to")]
    while time.monotonic() < deadline and any(
        observer.transport.topic_exists(t) for t in child_topics
    ):
        time.sleep(0.2)
    result = {
        "parent_pid": os.getpid(),
        "before": before,
        "after": after,
        "parent_reply_to": parent_reply_to,
        "parent_reply_to_after": started.reply_to,
        "parent_topic_exists": observer.transport.topic_exists(parent_reply_to),
        "child_topics_left": [t for t in child_topics if observer.transport.topic_exists(t)],
        "children": reports,
        "statuses": statuses,
    }
    observer.close()
    started.close()
    server.close()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
