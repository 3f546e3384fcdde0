"""Observability: counters behind ``App.stats()``, listeners, the current
request, and optional OpenTelemetry and Prometheus support.

The optional parts (:mod:`replies.observe.otel`,
:mod:`replies.observe.prometheus`) import their third-party packages only
when used.
"""

from replies.observe.context import RequestInfo, current_request
from replies.observe.observer import Listener, Observer

__all__ = ["Listener", "Observer", "RequestInfo", "current_request"]
