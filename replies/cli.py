"""The command line: ``python -m replies worker MODULE:APP`` and ``demo``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

from replies.app import App

__all__ = ["main", "load_app"]


def load_app(spec: str) -> App:
    """Import ``"package.module:attribute"`` and return the App it names.

    Raises:
        ValueError: the spec is not ``MODULE:APP`` or names no App.
        ImportError: the module cannot be imported.
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


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m replies", description="Request/reply over Apache Kafka."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="serve an App's agents until SIGINT/SIGTERM")
    worker.add_argument("app", metavar="MODULE:APP", help="e.g. myproject.service:app")
    worker.add_argument("--loglevel", default="info", help="debug, info, warning, error")
    demo = commands.add_parser("demo", help="a short tour: ask, map, join, timeout, error")
    demo.add_argument("--broker", default="memory://demo", help="e.g. kafka://127.0.0.1:9092")
    demo.add_argument("--loglevel", default="critical", help="library log level")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=args.loglevel.upper(),
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
    )
    if args.command == "demo":
        from replies.demo import run_demo

        return run_demo(args.broker)
    # The worker's module is looked up from the current directory, as
    # `python -m` users expect.
    sys.path.insert(0, "")
    try:
        app = load_app(args.app)
    except (ValueError, ImportError, AttributeError) as exc:
        parser.error(str(exc))
    app.run_worker()
    return 0
