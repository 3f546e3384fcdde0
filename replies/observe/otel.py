"""OpenTelemetry tracing of the round trip, when the application uses it.

Nothing here imports OpenTelemetry unless the application already has:
:func:`tracer` looks for ``opentelemetry.trace`` among the loaded modules
and for a configured tracer provider (not the API's default proxy), so a
program without the ``otel`` extra, or with it installed and unused, pays
one dictionary lookup per request and loads nothing.

When tracing is on:

- ``ask``/``ask_nowait``/``stream`` start a CLIENT span per request and
  ``map``/``join`` one per batch, as children of the caller's current span;
  each request record carries the span's context as W3C ``traceparent``
  and ``tracestate`` headers (Faust agents ignore them). The span ends when
  the request's promise is done, with an error status if it failed.
- An agent extracts that context from the request headers and runs the
  handler inside a SERVER span whose parent it is, made current on the
  handler's thread, so spans the handler starts join the caller's trace.
- The reply records carry the server span's context back the same way.
"""

from __future__ import annotations

import contextlib
import sys
from concurrent.futures import CancelledError, Future
from typing import Any, Iterator, List, Optional, Sequence, Tuple

__all__ = ["tracer", "start_client_span", "end_with", "server_span", "inject_current"]

# The provider seen last and the tracer made from it (None: tracing off).
# Replaced as a whole, so readers on other threads see a consistent pair.
_cache: Tuple[Any, Any] = (object(), None)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"


def tracer() -> Any:
    """This library's OpenTelemetry tracer, or None when tracing is off.

    Tracing is on when the application imported OpenTelemetry and set a
    tracer provider (``trace.set_tracer_provider(...)``, or the SDK's
    auto-configuration). Cheap enough to call per request.
    """
    global _cache
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    try:
        provider = trace.get_tracer_provider()
    except Exception:  # a module still being imported, or a broken setup
        return None
    cached_provider, cached_tracer = _cache
    if provider is cached_provider:
        return cached_tracer
    made = None
    if not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        from replies import __version__

        made = provider.get_tracer("replies", __version__)
    _cache = (provider, made)
    return made


class _Headers:
    """Reads and writes W3C trace headers in a record's header list."""

    @staticmethod
    def getter() -> Any:
        from opentelemetry.propagators.textmap import Getter

        class HeaderGetter(Getter[Sequence[Tuple[str, Optional[bytes]]]]):
            def get(
                self, carrier: Sequence[Tuple[str, Optional[bytes]]], key: str
            ) -> Optional[List[str]]:
                found = [
                    value.decode("utf-8", "replace")
                    for name, value in carrier
                    if name.lower() == key and value is not None
                ]
                return found or None

            def keys(self, carrier: Sequence[Tuple[str, Optional[bytes]]]) -> List[str]:
                return [name for name, _ in carrier]

        return HeaderGetter()

    @staticmethod
    def setter() -> Any:
        from opentelemetry.propagators.textmap import Setter

        class HeaderSetter(Setter[List[Tuple[str, bytes]]]):
            def set(self, carrier: List[Tuple[str, bytes]], key: str, value: str) -> None:
                carrier.append((key, value.encode("utf-8")))

        return HeaderSetter()


_getter: Any = None
_setter: Any = None


def _propagation() -> Tuple[Any, Any]:
    global _getter, _setter
    if _getter is None:
        _getter, _setter = _Headers.getter(), _Headers.setter()
    return _getter, _setter


def start_client_span(
    tracer: Any, topic: str, headers: List[Tuple[str, bytes]], *, operation: str = "ask"
) -> Any:
    """Start the CLIENT span of a request (or a batch) to ``topic``.

    Its parent is the calling thread's current span. Its context is added
    to ``headers`` (``traceparent``, ``tracestate``); for a batch, copy
    those headers onto each of its requests.

    Args:
        operation: ``"ask"``, or ``"map"`` for a batch (``map``/``join``).

    Returns:
        The span; end it with :func:`end_with`.
    """
    from opentelemetry import propagate, trace

    attributes = {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.operation.type": "send",
    }
    span = tracer.start_span(
        f"{operation} {topic}", kind=trace.SpanKind.CLIENT, attributes=attributes
    )
    _, setter = _propagation()
    propagate.inject(headers, context=trace.set_span_in_context(span), setter=setter)
    return span


def end_with(span: Any, future: "Future[Any]") -> None:
    """End ``span`` when ``future`` is done, marked failed if it failed.

    The span ends on the thread that completes the future.
    """

    def on_done(done: "Future[Any]") -> None:
        try:
            error = done.exception(0)
        except CancelledError:
            error = None
            span.set_attribute("replies.cancelled", True)
        if error is not None:
            _mark_failed(span, error)
        span.end()

    future.add_done_callback(on_done)


def _mark_failed(span: Any, error: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def mark_failed(span: Any, error: BaseException) -> None:
    """Record ``error`` on ``span`` and give it an error status."""
    _mark_failed(span, error)


@contextlib.contextmanager
def server_span(
    tracer: Any,
    topic: str,
    headers: Sequence[Tuple[str, Optional[bytes]]],
    correlation_id: Optional[str],
) -> Iterator[Any]:
    """Run the block inside a SERVER span, current on this thread.

    Its parent is the context in the request's ``headers`` (the caller's
    CLIENT span), if any. An exception leaving the block marks it failed.
    """
    from opentelemetry import propagate, trace

    getter, _ = _propagation()
    parent = propagate.extract(headers, getter=getter)
    attributes = {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.operation.type": "process",
    }
    if correlation_id:
        attributes["messaging.message.conversation_id"] = correlation_id
    with tracer.start_as_current_span(
        f"process {topic}",
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes=attributes,
    ) as span:
        yield span


def inject_current(headers: List[Tuple[str, bytes]]) -> None:
    """Add the current span's context to ``headers`` (a reply's)."""
    from opentelemetry import propagate

    _, setter = _propagation()
    propagate.inject(headers, setter=setter)
