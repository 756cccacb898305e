"""The gateway's Prometheus metrics (prometheus-client), and the answer to a scrape.

Served by the gateway itself, like `/__internal/health`: always at METRICS_PATH, and at
`/metrics` too as long as no route claims that path (a function named `metrics` keeps its path;
the reserved one still answers). Scrapes and health checks are not counted as requests.

Labels are bounded: a function and its route (`-` for requests no route matched, never the path a
client sent), a status, an error kind. The hot path stays cheap: what every request counts (in
flight, latency, status) is kept in plain integers of its route's `RouteMetrics` (looked up once
per function and route), which `RouteCollector` turns into Prometheus' families only when scraped:
prometheus-client's own children take a lock per update, a few microseconds a request that the
single-threaded gateway does not need. Rare counts (upstream errors, refusals) use its counters.
What the authentication and the limits count goes through `unauthorised(route)`,
`rate_limited(route)` and `refused_connection()`; requests held for a replica (`hold.py`) are
counted in their route's numbers (`held`, `holds`, `hold_timeouts`).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Literal

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from nubis.processor.triggers.http_heads import status_line

if TYPE_CHECKING:
    from nubis.gateway.routes import Route

METRICS_PATH = b"/__internal/metrics"
#: also answered here unless a route claims the path
PUBLIC_METRICS_PATH = b"/metrics"
#: a request that no route matched (404, a malformed request)
NO_ROUTE = "-"
#: the status of a request whose client went away before it was answered (nginx's)
CLIENT_GONE = 499
#: seconds; from 0.5 ms (a warm pass-through) to 60 s (the default upstream timeout)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

UpstreamError = Literal["refused", "dropped", "timeout", "retried"]

REGISTRY = CollectorRegistry(auto_describe=True)
_ROUTE = ("function", "route")
UPSTREAM_ERRORS = Counter(
    "nubis_gateway_upstream_errors",
    "Upstream failures: refused (no connection), dropped (closed or broke before its answer ended), timeout; "
    "retried: a request sent again to another replica after one of those.",
    (*_ROUTE, "kind"),
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "nubis_gateway_rate_limited", "Requests answered 429 by a rate limit.", ("route",), registry=REGISTRY
)
UNAUTHORISED = Counter(
    "nubis_gateway_unauthorised", "Requests refused by a route's authentication.", ("route",), registry=REGISTRY
)
REFUSED_CONNECTIONS = Counter(
    "nubis_gateway_refused_connections", "Connections answered 503 past --max-connections.", registry=REGISTRY
)


class RouteMetrics:
    """What the requests of one (function, route) count, as plain numbers (the event loop's only)."""

    __slots__ = (
        "buckets",
        "function",
        "held",
        "hold_timeouts",
        "holds",
        "in_flight",
        "route",
        "statuses",
        "total_seconds",
    )

    def __init__(self, function: str, route: str) -> None:
        self.function = function
        self.route = route
        self.in_flight = 0
        #: requests held now for a replica of the function (`hold.py`), ever held, held past the wake timeout
        self.held = 0
        self.holds = 0
        self.hold_timeouts = 0
        #: requests per latency bucket (not cumulative; the last one is +Inf)
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total_seconds = 0.0
        self.statuses: dict[int, int] = {}

    def begin(self) -> None:
        self.in_flight += 1

    def end(self, status: int, seconds: float) -> None:
        self.in_flight -= 1
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total_seconds += seconds
        statuses = self.statuses
        statuses[status] = statuses.get(status, 0) + 1

    def upstream_error(self, kind: UpstreamError) -> None:
        UPSTREAM_ERRORS.labels(self.function, self.route, kind).inc()


class RouteCollector(Collector):
    """Every route's numbers as Prometheus families, made at scrape time."""

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "nubis_gateway_requests", "Requests answered, by function, route and status.", labels=(*_ROUTE, "status")
        )
        latency = HistogramMetricFamily(
            "nubis_gateway_request_duration_seconds",
            "Time from a request's head to the end of its answer.",
            labels=_ROUTE,
        )
        in_flight = GaugeMetricFamily(
            "nubis_gateway_requests_in_flight", "Requests received and not yet answered.", labels=_ROUTE
        )
        held = GaugeMetricFamily(
            "nubis_gateway_requests_held",
            "Requests waiting for a replica of their function to take connections (--wake-timeout).",
            labels=_ROUTE,
        )
        holds = CounterMetricFamily(
            "nubis_gateway_holds", "Requests held because no replica of their function took connections.", labels=_ROUTE
        )
        hold_timeouts = CounterMetricFamily(
            "nubis_gateway_hold_timeouts",
            "Held requests answered 503 because no replica took connections within --wake-timeout.",
            labels=_ROUTE,
        )
        for metrics in list(_by_route.values()):
            labels = (metrics.function, metrics.route)
            for status, count in sorted(metrics.statuses.items()):
                requests.add_metric((*labels, str(status)), count)
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, math.inf), metrics.buckets, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), cumulative))
            latency.add_metric(labels, buckets, metrics.total_seconds)
            in_flight.add_metric(labels, metrics.in_flight)
            if metrics.holds:
                held.add_metric(labels, metrics.held)
                holds.add_metric(labels, metrics.holds)
                hold_timeouts.add_metric(labels, metrics.hold_timeouts)
        yield from (requests, latency, in_flight, held, holds, hold_timeouts)


_by_route: dict[tuple[str, str], RouteMetrics] = {}
REGISTRY.register(RouteCollector())


def of(route: Route | None) -> RouteMetrics:
    """The metrics of `route` (None: the requests no route matched)."""
    key = (route.function, route.name) if route is not None else (NO_ROUTE, NO_ROUTE)
    metrics = _by_route.get(key)
    if metrics is None:
        metrics = _by_route[key] = RouteMetrics(*key)
    return metrics


def unauthorised(route: Route) -> None:
    """A request `route`'s authentication refused (401/403)."""
    UNAUTHORISED.labels(route.name).inc()


def rate_limited(route: Route) -> None:
    RATE_LIMITED.labels(route.name).inc()


def refused_connection() -> None:
    REFUSED_CONNECTIONS.inc()


def wants_scrape(target: bytes, claimed: Callable[[], bool]) -> bool:
    """Whether a request target is a scrape; `claimed()`: whether a route matches it (then
    `/metrics` is that route's)."""
    path = target.partition(b"?")[0]
    return path == METRICS_PATH or (path == PUBLIC_METRICS_PATH and not claimed())


def scrape_answer(keep_alive: bool) -> bytes:
    """A whole HTTP answer with the current metrics in Prometheus' text format."""
    body = generate_latest(REGISTRY)
    parts = [status_line(200), b"Content-Type: ", CONTENT_TYPE_LATEST.encode(), b"\r\n"]
    parts.append(b"Content-Length: %d\r\n" % len(body))
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    parts += (b"\r\n", body)
    return b"".join(parts)
