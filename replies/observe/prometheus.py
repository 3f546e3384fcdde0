"""An optional Prometheus collector exposing ``App.stats()``.

Needs the ``prometheus`` extra (``pip install 'replies[prometheus]'``)::

    from prometheus_client import start_http_server
    from replies.observe.prometheus import register

    register(app)             # into prometheus_client's default registry
    start_http_server(9100)   # or mount make_wsgi_app() in your web app

The collector reads :meth:`App.stats` at each scrape, so the figures are
the same as there. Counts are counters (``..._total``); pending requests
and requests in flight are gauges; latencies are gauges labelled
``quantile`` (``0.5``, ``0.99``, and ``1`` for the maximum) over the recent
window, with a counter of observations. Every metric is labelled ``app``;
the asking side's are labelled ``topic`` and the serving side's ``agent``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

if TYPE_CHECKING:
    from replies.app import App

__all__ = ["RepliesCollector", "register"]

# stats() names -> (metric suffix, help text), per side.
_ASK_COUNTS = {
    "sent": ("requests", "Requests sent"),
    "replies": ("replies", "Replies received (including error replies)"),
    "error_replies": ("error_replies", "Error replies received (the agent raised)"),
    "timeouts": ("timeouts", "Requests that got no reply in time"),
    "cancelled": ("cancelled", "Requests the caller stopped waiting for"),
    "closed": ("closed", "Requests failed because the App closed"),
    "send_errors": ("send_errors", "Requests that could not be sent"),
    "undecodable": ("undecodable", "Replies to requests that could not be decoded"),
}
_AGENT_COUNTS = {
    "handled": ("handled", "Requests handled"),
    "error_replies": ("error_replies", "Error replies sent"),
    "skipped_expired": ("skipped_expired", "Requests skipped: their caller stopped waiting"),
    "skipped_undecodable": ("skipped_undecodable", "Requests skipped: undecodable"),
    "casts": ("casts", "Requests that wanted no reply"),
    "reply_failures": ("reply_failures", "Replies that could not be delivered"),
    "dead_lettered": ("dead_lettered", "Records copied to the dead-letter topic"),
}
_QUANTILES = (("0.5", "p50"), ("0.99", "p99"), ("1", "max"))


class RepliesCollector(Collector):
    """Exposes one App's :meth:`~replies.App.stats` to Prometheus.

    Args:
        app: the App to read.
        lag: also report each served agent's consumer-group lag (a few admin
            round trips per scrape).
    """

    def __init__(self, app: "App", *, lag: bool = False) -> None:
        self.app = app
        self.lag = lag

    def collect(self) -> Iterator[Any]:
        stats = self.app.stats(lag=self.lag)
        app_id = stats["app"]
        yield from self._asking(app_id, stats["asking"])
        yield from self._serving(app_id, stats["serving"])

    def _asking(self, app_id: str, asking: Dict[str, Any]) -> Iterator[Any]:
        topics: Dict[str, Dict[str, Any]] = asking["topics"]
        labels = ["app", "topic"]
        for key, (suffix, text) in _ASK_COUNTS.items():
            family = CounterMetricFamily(f"replies_ask_{suffix}", text, labels=labels)
            for topic, figures in topics.items():
                family.add_metric([app_id, topic], figures[key])
            yield family
        pending = GaugeMetricFamily(
            "replies_ask_pending", "Requests sent and not settled yet", labels=labels
        )
        for topic, figures in topics.items():
            pending.add_metric([app_id, topic], figures["pending"])
        yield pending
        yield from _latency(
            "replies_ask",
            "round trip of single requests",
            labels,
            [([app_id, topic], figures["ask_seconds"]) for topic, figures in topics.items()],
        )
        total = asking["total"]
        for key, text in (
            ("dropped_replies", "Replies nobody waited for (late, duplicate, another client's)"),
            ("undecodable_replies", "Reply records that could not be decoded"),
        ):
            family = CounterMetricFamily(f"replies_{key}", text, labels=["app"])
            family.add_metric([app_id], total[key])
            yield family

    def _serving(self, app_id: str, serving: Dict[str, Dict[str, Any]]) -> Iterator[Any]:
        labels = ["app", "agent"]
        for key, (suffix, text) in _AGENT_COUNTS.items():
            family = CounterMetricFamily(f"replies_agent_{suffix}", text, labels=labels)
            for agent, figures in serving.items():
                family.add_metric([app_id, agent], figures[key])
            yield family
        in_flight = GaugeMetricFamily(
            "replies_agent_in_flight", "Requests being handled now", labels=labels
        )
        lag = GaugeMetricFamily(
            "replies_agent_lag", "Records of the agent's topic not committed yet", labels=labels
        )
        for agent, figures in serving.items():
            in_flight.add_metric([app_id, agent], figures["in_flight"])
            if figures.get("lag") is not None:
                lag.add_metric([app_id, agent], figures["lag"])
        yield in_flight
        if self.lag:
            yield lag
        yield from _latency(
            "replies_agent_handler",
            "time in the handler",
            labels,
            [([app_id, agent], figures["handler_seconds"]) for agent, figures in serving.items()],
        )


def _latency(
    prefix: str, what: str, labels: List[str], rows: List[Any]
) -> Iterator[Any]:
    gauge = GaugeMetricFamily(
        f"{prefix}_latency_seconds",
        f"Recent {what}: quantile 0.5, 0.99 and 1 (the maximum)",
        labels=labels + ["quantile"],
    )
    count = CounterMetricFamily(
        f"{prefix}_latency_observations", f"Observations of {what}", labels=labels
    )
    for values, window in rows:
        count.add_metric(values, window["count"])
        for quantile, key in _QUANTILES:
            if window[key] is not None:
                gauge.add_metric(values + [quantile], window[key])
    yield gauge
    yield count


def register(
    app: "App", registry: Optional[CollectorRegistry] = None, *, lag: bool = False
) -> RepliesCollector:
    """Register a :class:`RepliesCollector` for ``app``.

    Args:
        registry: default: prometheus_client's global ``REGISTRY``.
        lag: as for :class:`RepliesCollector`.

    Returns:
        The collector (unregister it with ``registry.unregister(...)``).
    """
    collector = RepliesCollector(app, lag=lag)
    (REGISTRY if registry is None else registry).register(collector)
    return collector
