"""The ``replies`` command (also ``python -m replies``).

Subcommands: ``ask``, ``map``, ``send`` and ``ping`` talk to agents on a
broker; ``agents`` and ``worker`` load an App from ``MODULE:APP``; ``demo``
runs a short tour. Values are JSON in and JSON out; replies go to stdout,
one line each, and everything else to stderr.

A failure prints one line on stderr (``--traceback`` adds the traceback)
and exits with a code that says what kind of failure it was; see
:data:`EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import traceback
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import IO, Any, Callable, Dict, List, NoReturn, Optional, Sequence, Tuple

from replies import __version__
from replies.app import App
from replies.errors import (
    NoRespondersError,
    RemoteError,
    ReplyError,
    ReplyTimeoutError,
    TransportError,
)
from replies.observe.logs import BatchingHandler, LogFormatter
from replies.transport import check_broker, open_transport

__all__ = ["main", "load_app", "EXIT_CODES"]

logger = logging.getLogger("replies.cli")

EXIT_OK = 0
#: A failure of no kind below (a bug, or an error the library did not expect).
EXIT_ERROR = 1
#: Bad command line or input: unknown option, value that is not JSON, URL
#: without a port, module that cannot be imported.
EXIT_USAGE = 2
#: No reply within ``--timeout``.
EXIT_TIMEOUT = 3
#: The agent raised: its exception's type and message are printed.
EXIT_REMOTE = 4
#: Nobody serves the topic (it does not exist, or no consumer reads it).
EXIT_NO_RESPONDERS = 5
#: The broker could not be reached or refused an operation.
EXIT_CONNECTION = 6
#: Interrupted by Ctrl-C.
EXIT_INTERRUPTED = 130

#: Every exit code and its meaning, as documented in README.rst.
EXIT_CODES: Dict[int, str] = {
    EXIT_OK: "success",
    EXIT_ERROR: "an unexpected error",
    EXIT_USAGE: "bad command line or input",
    EXIT_TIMEOUT: "no reply in time (ReplyTimeoutError)",
    EXIT_REMOTE: "the agent raised (RemoteError)",
    EXIT_NO_RESPONDERS: "nobody serves the topic (NoRespondersError)",
    EXIT_CONNECTION: "the broker could not be reached (TransportError)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}

PROG = "replies"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
#: Seconds the client commands wait to reach a broker (``--connect-timeout``).
DEFAULT_CONNECT_TIMEOUT = 10.0


class UsageError(Exception):
    """A mistake on the command line or in the input: exit code 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def load_app(spec: str) -> App:
    """Import ``"package.module:attribute"`` and return the App it names.

    Raises:
        ValueError: the spec is not ``MODULE:APP`` or names no App.
        ImportError: the module cannot be imported.
        AttributeError: the module has no such attribute.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"expected MODULE:APP (e.g. myproject.service:app), not {spec!r}")
    target: object = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    if not isinstance(target, App):
        raise ValueError(f"{spec} is a {type(target).__name__}, not a replies.App")
    return target


# -- parsing --------------------------------------------------------------


def _broker_url(text: str) -> str:
    """An argparse type: a broker URL, checked without connecting."""
    try:
        check_broker(text, {})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if text.startswith("kafka://"):
        for host in text[len("kafka://") :].rstrip("/").split(","):
            name, _, port = host.strip().rpartition(":")
            if not name or not port.isdigit():
                raise argparse.ArgumentTypeError(
                    f"{host.strip()!r} in {text!r} has no port: use kafka://HOST:PORT, "
                    "e.g. kafka://127.0.0.1:9092"
                )
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, not {text}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def _build_parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        description="Request/reply over Apache Kafka: ask agents, serve them, check them.",
        epilog="Exit codes: "
        + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items()),
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "--traceback", action="store_true", help="print the traceback of a failure"
    )
    # Every subcommand takes these too (SUPPRESS: do not override the main
    # parser's value when not given after the subcommand).
    common = _Parser(add_help=False)
    common.add_argument(
        "--traceback",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the traceback of a failure",
    )
    common.add_argument(
        "--loglevel",
        type=str.lower,
        choices=LOG_LEVELS,
        default=argparse.SUPPRESS,
        help="log level of the library (client commands: critical; worker: info)",
    )
    common.add_argument(
        "--kafka-loglevel",
        type=str.lower,
        choices=LOG_LEVELS,
        default=argparse.SUPPRESS,
        help="log level of kafka-python (default: warning, or --loglevel if higher)",
    )
    client = _Parser(add_help=False, parents=[common])
    client.add_argument(
        "--broker",
        type=_broker_url,
        default=None,
        help="kafka://HOST:PORT[,HOST:PORT] (default: $REPLIES_BROKER)",
    )
    client.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=DEFAULT_CONNECT_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for the broker (default {DEFAULT_CONNECT_TIMEOUT:g})",
    )
    asking = _Parser(add_help=False, parents=[client])
    asking.add_argument("--key", help="the request's Kafka key (text)")
    asking.add_argument(
        "--timeout", type=_seconds, default=30.0, metavar="S", help="seconds to wait (30)"
    )

    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ask = commands.add_parser(
        "ask", parents=[asking], help="send one request, print its reply (JSON)"
    )
    ask.add_argument("topic", metavar="TOPIC")
    ask.add_argument(
        "value",
        metavar="VALUE",
        nargs="?",
        default=None,
        help="the request value as JSON ('-': read it from stdin; default null)",
    )
    map_ = commands.add_parser(
        "map", parents=[asking], help="a request per JSON line, replies as they arrive"
    )
    map_.add_argument("topic", metavar="TOPIC")
    map_.add_argument(
        "--file",
        default="-",
        metavar="FILE",
        help="JSON lines, one request value each ('-', the default: stdin)",
    )
    send = commands.add_parser(
        "send", parents=[client], help="send a request that wants no reply"
    )
    send.add_argument("topic", metavar="TOPIC")
    send.add_argument("value", metavar="VALUE", help="the value as JSON ('-': from stdin)")
    send.add_argument("--key", help="the request's Kafka key (text)")
    ping = commands.add_parser(
        "ping", parents=[client], help="who reads TOPIC: consumer groups, members, lag"
    )
    ping.add_argument("topic", metavar="TOPIC")
    agents = commands.add_parser(
        "agents", parents=[common], help="list an App's agents and their topics"
    )
    agents.add_argument("app", metavar="MODULE:APP", help="e.g. myproject.service:app")
    worker = commands.add_parser(
        "worker", parents=[common], help="serve an App's agents until SIGINT/SIGTERM"
    )
    worker.add_argument("app", metavar="MODULE:APP", help="e.g. myproject.service:app")
    worker.add_argument(
        "--broker", type=_broker_url, default=None, help="instead of the App's own broker"
    )
    worker.add_argument(
        "--concurrency",
        type=_positive,
        default=None,
        metavar="N",
        help="requests each agent handles at once (default: as declared)",
    )
    worker.add_argument(
        "--agent",
        action="append",
        default=None,
        metavar="NAME",
        help="serve only this agent (repeat for more; default: all)",
    )
    demo = commands.add_parser(
        "demo", parents=[common], help="a short tour: ask, map, join, timeout, error"
    )
    demo.add_argument(
        "--broker",
        type=_broker_url,
        default="memory://demo",
        help="memory://demo (default) or kafka://HOST:PORT",
    )
    demo.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=DEFAULT_CONNECT_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for a Kafka broker (default {DEFAULT_CONNECT_TIMEOUT:g})",
    )
    return parser


# -- helpers of the commands ---------------------------------------------------


def _client_broker(args: argparse.Namespace) -> str:
    """The broker of a client command: ``--broker``, else ``$REPLIES_BROKER``."""
    url: Optional[str] = args.broker
    if url is None:
        from_env = os.environ.get("REPLIES_BROKER")
        if not from_env:
            raise UsageError(
                "no broker: pass --broker kafka://HOST:PORT or set REPLIES_BROKER"
            )
        try:
            url = _broker_url(from_env)
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"REPLIES_BROKER: {exc}") from None
    if url.startswith("memory://"):
        raise UsageError(
            f"{url} is an in-process broker: no other process serves it; "
            "use kafka://HOST:PORT"
        )
    return url


def _kafka_settings(broker: str, connect_timeout: float) -> Dict[str, Any]:
    """Client settings that make an unreachable broker fail fast."""
    if not broker.startswith("kafka://"):
        return {}
    return {"bootstrap_timeout_ms": int(connect_timeout * 1000)}


def _client_app(args: argparse.Namespace, **settings: Any) -> App:
    broker = _client_broker(args)
    return App(
        "replies-cli",
        broker=broker,
        **settings,
        **_kafka_settings(broker, args.connect_timeout),
    )


def _parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(
            f"{what} is not JSON ({exc}): {text[:60]!r}; a string needs quotes, "
            """e.g. '"hello"'"""
        ) from None


def _value(text: Optional[str], stdin: IO[str]) -> Any:
    if text is None:
        return None
    if text == "-":
        return _parse_json(stdin.read(), "the value on stdin")
    return _parse_json(text, "VALUE")


def _read_values(path: str, stdin: IO[str]) -> List[Any]:
    """Every value of a JSON-lines file (blank lines skipped), read up front,
    so a bad line fails before anything is sent."""
    name = "stdin" if path == "-" else path
    try:
        if path == "-":
            lines = stdin.readlines()
        else:
            with open(path, encoding="utf-8") as file:
                lines = file.readlines()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    return [
        _parse_json(line, f"line {number} of {name}")
        for number, line in enumerate(lines, 1)
        if line.strip()
    ]


def _print_json(value: Any, out: IO[str]) -> None:
    out.write(json.dumps(value, ensure_ascii=False) + "\n")
    out.flush()  # a reader of a pipe sees each reply as it arrives


def _progress_wanted(err: IO[str]) -> bool:
    """A bar on a terminal only, and only if tqdm is installed."""
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    isatty: Callable[[], bool] = getattr(err, "isatty", lambda: False)
    return isatty()


def _loaded_app(spec: str) -> App:
    # The App's module is looked up from the current directory, as with
    # `python -m`.
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        return load_app(spec)
    except (ValueError, ImportError, AttributeError) as exc:
        raise UsageError(f"cannot load {spec}: {exc}") from None


# -- the commands ----------------------------------------------------------------


def _ask(args: argparse.Namespace, out: IO[str], stdin: IO[str]) -> int:
    value = _value(args.value, stdin)
    with _client_app(args) as app:
        reply = app.topic(args.topic).ask(value, key=args.key, timeout=args.timeout)
    _print_json(reply, out)
    return EXIT_OK


def _map(args: argparse.Namespace, out: IO[str], stdin: IO[str], err: IO[str]) -> int:
    values = _read_values(args.file, stdin)
    progress = _progress_wanted(err)
    write = _print_json
    if progress:
        from tqdm.auto import tqdm

        def write(value: Any, out: IO[str]) -> None:
            # Clears the bar, prints, redraws it: no line is drawn over.
            with tqdm.external_write_mode(file=out):
                _print_json(value, out)

    with _client_app(args) as app:
        replies = app.topic(args.topic).map(
            values, key=args.key, timeout=args.timeout, progress=progress
        )
        try:
            for reply in replies:
                write(reply, out)
        finally:
            replies.close()
    return EXIT_OK


def _send(args: argparse.Namespace, stdin: IO[str]) -> int:
    value = _value(args.value, stdin)
    app = _client_app(args)
    # Only a producer is needed: no reply topic, no reply consumer.
    transport = open_transport(app.broker, app.kafka_settings)
    try:
        message = app.codec.encode_request(value, key=args.key)
        # Raises NoRespondersError at once for a topic that does not exist.
        acked = transport.produce(args.topic, message, timeout=args.connect_timeout)
        try:
            acked.result(args.connect_timeout)
        except FutureTimeoutError:
            raise TransportError(
                f"the broker did not acknowledge the request within {args.connect_timeout} s"
            ) from None
    finally:
        transport.close(args.connect_timeout)
    return EXIT_OK


def _ping(args: argparse.Namespace, out: IO[str]) -> int:
    app = _client_app(args)
    transport = open_transport(app.broker, app.kafka_settings)
    try:
        readers = transport.describe_readers(args.topic)
    finally:
        transport.close(args.connect_timeout)
    if readers is None:
        raise NoRespondersError(
            f"topic {args.topic} does not exist: nobody serves it", topic=args.topic
        )
    count = readers.partitions
    out.write(f"topic {readers.topic}: {count} partition{'' if count == 1 else 's'}\n")
    for group in readers.groups:
        plural = "" if group.members == 1 else "s"
        out.write(f"  group {group.group_id}: {group.members} member{plural}, lag {group.lag}\n")
    out.flush()
    if not any(group.members for group in readers.groups):
        what = "no consumer group reads it" if not readers.groups else "its groups have no members"
        raise NoRespondersError(
            f"nobody serves topic {args.topic}: {what}; start a worker", topic=args.topic
        )
    return EXIT_OK


def _agents(args: argparse.Namespace, out: IO[str]) -> int:
    app = _loaded_app(args.app)
    out.write(f"App {app.id} on {app.broker}\n")
    rows: List[Tuple[str, str, str]] = [("agent", "topic", "concurrency")] + [
        (agent.name, agent.topic_name, str(agent.concurrency)) for agent in app.agents.values()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for name, topic, concurrency in rows:
        out.write(f"  {name:<{widths[0]}}  {topic:<{widths[1]}}  {concurrency}\n")
    out.flush()
    return EXIT_OK


def _worker(args: argparse.Namespace) -> int:
    app = _loaded_app(args.app)
    if args.broker is not None:
        check_broker(args.broker, app.kafka_settings)
        app.broker = args.broker
    if args.agent:
        unknown = [name for name in args.agent if name not in app.agents]
        if unknown:
            raise UsageError(
                f"App {app.id} has no agent {', '.join(unknown)}; "
                f"it has: {', '.join(app.agents) or 'none'}"
            )
        app.agents = {name: app.agents[name] for name in args.agent}
    if args.concurrency is not None:
        for agent in app.agents.values():
            agent.concurrency = args.concurrency
            logger.info("agent %s handles %d requests at once", agent.name, agent.concurrency)
    if app.broker.startswith("memory://"):
        logger.warning(
            "App %s uses %s, an in-process broker: no other process can reach "
            "these agents. Serve on a real broker: --broker kafka://HOST:PORT",
            app.id,
            app.broker,
        )
    app.run_worker()
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from replies.demo import run_demo

    return run_demo(args.broker, **_kafka_settings(args.broker, args.connect_timeout))


# -- running --------------------------------------------------------------------


def _exit_code(exc: BaseException) -> Tuple[int, str]:
    """The exit code and the one-line message for a failure."""
    if isinstance(exc, UsageError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(exc, ReplyTimeoutError):
        return EXIT_TIMEOUT, str(exc)
    if isinstance(exc, RemoteError):
        return EXIT_REMOTE, f"the agent raised {exc.type_name}: {exc.message}"
    if isinstance(exc, NoRespondersError):
        return EXIT_NO_RESPONDERS, str(exc)
    if isinstance(exc, TransportError):
        return EXIT_CONNECTION, str(exc)
    if isinstance(exc, (TypeError, ValueError)) and not isinstance(exc, ReplyError):
        # Raised by the library for values and settings it refuses.
        return EXIT_USAGE, f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ReplyError):
        return EXIT_ERROR, f"{type(exc).__name__}: {exc}"
    return EXIT_ERROR, f"unexpected {type(exc).__name__}: {exc} (rerun with --traceback)"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _configure_logging(level: str, kafka_level: Optional[str], stream: IO[str]) -> None:
    """Log to ``stream``: this library at ``level``; kafka-python at
    ``kafka_level``, by default at warning (or ``level`` if higher), since
    its info lines are connection chatter, not news. Lines are flushed in
    batches (see :mod:`replies.observe.logs`): a worker logs per request."""
    if not logging.root.handlers:  # as basicConfig: logging set up already stays
        handler = BatchingHandler(stream)
        handler.setFormatter(LogFormatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
        logging.basicConfig(level=level.upper(), handlers=[handler])
    if kafka_level is None:
        kafka_level = max(level, "warning", key=LOG_LEVELS.index)
    logging.getLogger("kafka").setLevel(kafka_level.upper())


def main(
    argv: Optional[Sequence[str]] = None,
    *,
    stdout: Optional[IO[str]] = None,
    stderr: Optional[IO[str]] = None,
    stdin: Optional[IO[str]] = None,
) -> int:
    """Run the command line; returns the process exit code.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
        stdout, stderr, stdin: streams to use instead of the process's.
    """
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    inp = sys.stdin if stdin is None else stdin
    show_traceback = "--traceback" in (sys.argv[1:] if argv is None else argv)
    try:
        try:
            args = _build_parser().parse_args(argv)
        except SystemExit as exc:  # --help and --version
            return int(exc.code or 0)
        default_level = {"worker": "info"}.get(args.command, "critical")
        _configure_logging(
            getattr(args, "loglevel", default_level),
            getattr(args, "kafka_loglevel", None),
            err,
        )
        if args.command == "ask":
            return _ask(args, out, inp)
        if args.command == "map":
            return _map(args, out, inp, err)
        if args.command == "send":
            return _send(args, inp)
        if args.command == "ping":
            return _ping(args, out)
        if args.command == "agents":
            return _agents(args, out)
        if args.command == "worker":
            return _worker(args)
        return _demo(args)
    except (Exception, KeyboardInterrupt) as exc:
        code, message = _exit_code(exc)
        if show_traceback:
            traceback.print_exc(file=err)
        err.write(f"{PROG}: {_one_line(message)}\n")
        err.flush()
        return code
