"""Prometheus metrics, per app: plain counters on the hot path, rendered only when scraped.

A request costs a few dict updates and one bisect: no locks (one event loop updates them),
no label formatting, no prometheus_client objects. At scrape time a collector registered
on the app's own CollectorRegistry (never the global default one: tests build many apps)
turns the counters into metric families, and reads the pool's gauges from asyncpg.

Events appended are counted from what the write paths report (infra/appended.py; no extra
query), once their unit of work succeeded: a request answered < 400, or a sweeper move
that returned (the store functions own those transactions).
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Iterable, Iterator

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

# Request duration buckets (seconds): the API answers in milliseconds; long-polls wait ~25s.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BUCKET_LABELS = (*(repr(b) for b in BUCKETS), "+Inf")
# Webhook delivery lag buckets (seconds): milliseconds when healthy, hours when retried.
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0, 3600.0, 36000.0)
_LAG_LABELS = (*(repr(b) for b in LAG_BUCKETS), "+Inf")
UNMATCHED = "unmatched"  # the route label of requests no route matched (404, 405)
OTHER_METHOD = "OTHER"  # any method but these, so callers cannot mint label values
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """The counters of one app, and the registry that exposes them."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}  # (method, route, status)
        # route -> [count per bucket (the last is +Inf)..., sum of seconds]
        self.durations: dict[str, list] = {}
        self.appended: dict[str, int] = {}
        self.in_flight = 0  # requests being handled now
        self.sweeps = 0
        self.sweep_failures = 0
        self.timed_out = {"run": 0, "stage_run": 0}
        self.pool: asyncpg.Pool | None = None
        self.webhook_deliveries: dict[str, int] = {}  # outcome -> attempts
        self.webhook_lag = [0] * (len(LAG_BUCKETS) + 1) + [0.0]  # per bucket, then the sum
        self.webhooks_disabled = 0
        self.replicas = None  # infra/replicas.ReplicaSet, with READ_DATABASE_URLS
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # --- hot path -------------------------------------------------------------------

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        if method not in _METHODS:
            method = OTHER_METHOD
        key = (method, route, status)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        histogram = self.durations.get(route)
        if histogram is None:
            histogram = self.durations[route] = [0] * (len(BUCKETS) + 1) + [0.0]
        histogram[bisect_left(BUCKETS, seconds)] += 1
        histogram[-1] += seconds

    def count_appended(self, pending: Iterable[tuple[str, int]]) -> None:
        appended = self.appended
        for event_type, count in pending:
            appended[event_type] = appended.get(event_type, 0) + count

    def webhook_outcome(self, outcome: str) -> None:
        self.webhook_deliveries[outcome] = self.webhook_deliveries.get(outcome, 0) + 1

    def webhook_delivered(self, lag_seconds: float) -> None:
        """A delivery answered 2xx, `lag_seconds` after its event happened."""
        self.webhook_outcome("delivered")
        self.webhook_lag[bisect_left(LAG_BUCKETS, lag_seconds)] += 1
        self.webhook_lag[-1] += lag_seconds

    # --- scrape time ----------------------------------------------------------------

    def collect(self) -> Iterator:
        requests = CounterMetricFamily(
            "pipeline_runs_http_requests_total", "HTTP requests answered, by route template",
            labels=("method", "route", "status"))
        for (method, route, status), count in self.requests.items():
            requests.add_metric((method, route, str(status)), count)
        yield requests

        durations = HistogramMetricFamily(
            "pipeline_runs_http_request_duration_seconds", "HTTP request duration, by route",
            labels=("route",))
        for route, histogram in self.durations.items():
            cumulative, buckets = 0, []
            for label, count in zip(_BUCKET_LABELS, histogram):
                cumulative += count
                buckets.append((label, cumulative))
            durations.add_metric((route,), buckets, histogram[-1])
        yield durations

        appended = CounterMetricFamily(
            "pipeline_runs_events_appended_total", "Events appended to run_events, by type",
            labels=("type",))
        for event_type, count in self.appended.items():
            appended.add_metric((event_type,), count)
        yield appended

        yield GaugeMetricFamily(
            "pipeline_runs_http_requests_in_flight", "Requests being handled now",
            value=self.in_flight)
        yield CounterMetricFamily(
            "pipeline_runs_sweeps_total", "Timeout sweeps this process ran", value=self.sweeps)
        yield CounterMetricFamily(
            "pipeline_runs_sweep_failures_total", "Timeout sweeps that failed",
            value=self.sweep_failures)
        timed_out = CounterMetricFamily(
            "pipeline_runs_timed_out_total", "Runs and stage runs the sweeper timed out",
            labels=("kind",))
        for kind, count in self.timed_out.items():
            timed_out.add_metric((kind,), count)
        yield timed_out

        yield from self._collect_webhooks()

        pool = self.pool
        if pool is not None:
            size = pool.get_size()
            yield GaugeMetricFamily(
                "pipeline_runs_db_pool_size", "Open connections in the pool", value=size)
            yield GaugeMetricFamily(
                "pipeline_runs_db_pool_in_use", "Pool connections checked out",
                value=size - pool.get_idle_size())
            yield GaugeMetricFamily(
                "pipeline_runs_db_pool_max", "The pool's maximum size", value=pool.get_max_size())

        if self.replicas is not None:
            yield from _replica_families(self.replicas)

    def _collect_webhooks(self) -> Iterator:
        deliveries = CounterMetricFamily(
            "pipeline_runs_webhook_deliveries_total",
            "Webhook delivery attempts by outcome (delivered, retry, exhausted, gone)",
            labels=("outcome",))
        for outcome, count in self.webhook_deliveries.items():
            deliveries.add_metric((outcome,), count)
        yield deliveries
        lag = HistogramMetricFamily(
            "pipeline_runs_webhook_delivery_lag_seconds",
            "From an event's occurred_at to its delivery's 2xx")
        cumulative, buckets = 0, []
        for label, count in zip(_LAG_LABELS, self.webhook_lag):
            cumulative += count
            buckets.append((label, cumulative))
        lag.add_metric((), buckets, self.webhook_lag[-1])
        yield lag
        yield CounterMetricFamily(
            "pipeline_runs_webhooks_disabled_total",
            "Subscriptions this process disabled (410 Gone, or every attempt failed)",
            value=self.webhooks_disabled)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _replica_families(replicas) -> Iterator:
    reads = CounterMetricFamily(
        "pipeline_runs_db_reads_total", "Reads served, by target (primary or a replica)",
        labels=("target", "replica"))
    for name, count in replicas.reads.items():
        target = "primary" if name == "primary" else "replica"
        reads.add_metric((target, "" if target == "primary" else name), count)
    yield reads
    fallbacks = CounterMetricFamily(
        "pipeline_runs_replica_fallbacks_total",
        "Reads sent to the primary although replicas are configured, by reason",
        labels=("reason",))
    for reason, count in replicas.fallbacks.items():
        fallbacks.add_metric((reason,), count)
    yield fallbacks
    lag = GaugeMetricFamily("pipeline_runs_replica_lag_seconds",
                            "Replay lag of each replica at its last probe", labels=("replica",))
    healthy = GaugeMetricFamily("pipeline_runs_replica_healthy",
                                "1 while a replica is in the read rotation", labels=("replica",))
    for replica in replicas.replicas:
        if replica.lag_seconds is not None:
            lag.add_metric((replica.name,), replica.lag_seconds)
        healthy.add_metric((replica.name,), 1 if replica.healthy else 0)
    yield lag
    yield healthy


def handler(metrics: Metrics):
    """GET /metrics: the Prometheus text format; no token (its own port, loopback by default)."""

    async def serve_metrics(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return serve_metrics


def metrics_app(metrics: Metrics) -> web.Application:
    """The app served on METRICS_PORT: /metrics only."""
    app = web.Application()
    app.router.add_get("/metrics", handler(metrics))
    return app
