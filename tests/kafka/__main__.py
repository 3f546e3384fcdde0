"""Run a test broker from the shell.

Usage::

    python -m tests.kafka start [--broker kafka|tansu] [--brokers 1|3] [--port N] [--version V] [--secure]
    python -m tests.kafka stop
    python -m tests.kafka jars [--version V]

``start`` prints the bootstrap servers (one line) once the broker is ready and
runs until ``stop``, Ctrl-C or SIGTERM; if the broker cannot start it prints
the log tail and exits 1. ``jars`` only resolves (and caches) the Kafka jars.

``start --secure`` starts one Apache Kafka node that clients reach only over
``SASL_SSL`` (SCRAM-SHA-512, a CA made at start) with ACLs enforced; it also
writes the CA, address and super user's credentials to ``access.json`` in the
data dir and prints ``export REPLIES_SECURE_BROKER=<that file>`` on stderr,
which the secure tests then use instead of starting a broker of their own.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Sequence

from tests.kafka.harness import (
    DEFAULT_KAFKA_VERSION,
    Broker,
    BrokerError,
    SecureKafka,
    cache_dir,
    kafka_jars,
    make_broker,
)


def _state_file() -> Path:
    return cache_dir() / "cli-broker.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running() -> dict[str, object] | None:
    """The state of a ``start`` still running, or None."""
    try:
        state: dict[str, object] = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return None
    return state if _alive(int(str(state["pid"]))) else None


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def start(args: argparse.Namespace) -> int:
    running = _running()
    if running:
        print(f"a broker is already running (pid {running['pid']}, {running['bootstrap']}); "
              "run `python -m tests.kafka stop` first", file=sys.stderr)
        return 1
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_stop)
    broker: Broker
    try:
        if args.secure:
            if args.broker != "kafka" or args.brokers != 1:
                raise ValueError("--secure runs one Apache Kafka node (--broker kafka --brokers 1)")
            broker = SecureKafka(port=args.port, version=args.version)
        else:
            broker = make_broker(args.broker, brokers=args.brokers, port=args.port, version=args.version)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        started = time.monotonic()
        broker.start()
        state = {"pid": os.getpid(), "bootstrap": broker.bootstrap_servers, "kind": broker.kind}
        _state_file().parent.mkdir(parents=True, exist_ok=True)
        _state_file().write_text(json.dumps(state))
        print(f"{broker.kind} ready in {time.monotonic() - started:.1f} s; data in {broker.data_dir}",
              file=sys.stderr)
        if isinstance(broker, SecureKafka):
            assert broker.data_dir is not None
            access = broker.data_dir / "access.json"
            access.write_text(json.dumps(broker.access().to_json()))
            print(f"SASL_SSL/SCRAM-SHA-512, CA {broker.ca_file}, super user {broker.admin_user}\n"
                  f"export REPLIES_SECURE_BROKER={access}", file=sys.stderr)
        print(broker.bootstrap_servers, flush=True)
        while True:  # a broker that dies ends this command too
            broker.check_alive()
            time.sleep(1)
    except BrokerError as exc:
        print(f"{exc}\n{broker.log_tail()}" if broker.data_dir else exc, file=sys.stderr)
        return 1
    except _Stop as exc:
        print(f"{exc}: stopping", file=sys.stderr)
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)  # finish stopping undisturbed
        broker.stop()
        if (_running() or {}).get("pid") == os.getpid():
            _state_file().unlink()


def stop(args: argparse.Namespace) -> int:
    running = _running()
    if not running:
        print("no broker started by `python -m tests.kafka start` is running", file=sys.stderr)
        return 0
    pid = int(str(running["pid"]))
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            print(f"pid {pid} still running after {args.timeout:.0f} s", file=sys.stderr)
            return 1
        time.sleep(0.2)
    print(f"stopped {running['kind']} at {running['bootstrap']}", file=sys.stderr)
    return 0


def jars(args: argparse.Namespace) -> int:
    try:
        print(kafka_jars(args.version))
    except BrokerError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.kafka", description="Run a broker for the tests.")
    commands = parser.add_subparsers(dest="command", required=True)
    p_start = commands.add_parser("start", help="start a broker and print its bootstrap servers")
    p_start.add_argument("--broker", choices=("kafka", "tansu"), default="kafka")
    p_start.add_argument("--brokers", type=int, choices=(1, 3), default=1, help="Kafka nodes (default 1)")
    p_start.add_argument("--port", type=int, help="client port of the first node (default: a free one)")
    p_start.add_argument("--version", default=DEFAULT_KAFKA_VERSION, help="Kafka version (default %(default)s)")
    p_start.add_argument("--secure", action="store_true",
                         help="TLS + SASL/SCRAM-SHA-512 listener with ACLs enforced (Apache Kafka only)")
    p_start.set_defaults(func=start)
    p_stop = commands.add_parser("stop", help="stop the broker that `start` runs")
    p_stop.add_argument("--timeout", type=float, default=60.0)
    p_stop.set_defaults(func=stop)
    p_jars = commands.add_parser("jars", help="resolve and cache the Kafka jars; print their folder")
    p_jars.add_argument("--version", default=DEFAULT_KAFKA_VERSION)
    p_jars.set_defaults(func=jars)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
