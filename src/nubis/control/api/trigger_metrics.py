"""`GET /api/metrics` (a Nubis extension): the message and cron triggers' counters in Prometheus'
text format, from what each replica last reported (`nubis.trigger_reports`, through the platform).

Series, each labelled `function`, `trigger`, `kind` and `replica`:

- `nubis_trigger_events_total{outcome}`: received, handled, failed, retried, dead_lettered,
  returned (given back to the broker), redelivered; cron: fired. Per replica, so a restarted
  replica starts again from 0, as a restarted pod's counters do;
- `nubis_trigger_reconnects_total`;
- `nubis_trigger_up`: 1 while the trigger consumes (or a cron is scheduled), 0 while it waits for
  its broker;
- `nubis_trigger_lag` and `nubis_trigger_pending`: the broker's backlog (not yet delivered; delivered
  and not acknowledged), where the kind can ask for it; `nubis_trigger_lag_bytes`: WAL bytes a
  postgres-cdc slot has not confirmed.

The replicas' load, scale state, events by outcome and latency histograms are added by
`replica_metrics.py`. Behind the API's authentication like every `/api` path (Prometheus: `authorization` with a token
that may read). The gateway's HTTP metrics are on its own `/__internal/metrics`.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from nubis.auth.principals import Action
from nubis.control.api.replica_metrics import ReplicaCollector
from nubis.platforms.status import FunctionStatus

_LABELS = ("function", "trigger", "kind", "replica")
_GAUGES = ("lag", "pending", "lag_bytes")
_UP_STATES = ("consuming", "scheduled")


class ReportCollector(Collector):
    def __init__(self, statuses: dict[str, FunctionStatus]) -> None:
        self.statuses = statuses

    def collect(self) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "nubis_trigger_events", "Events of a message or cron trigger, by outcome.", labels=(*_LABELS, "outcome")
        )
        reconnects = CounterMetricFamily(
            "nubis_trigger_reconnects", "Times a trigger lost its broker and connected again.", labels=_LABELS
        )
        up = GaugeMetricFamily("nubis_trigger_up", "1 while the trigger consumes, 0 while it waits.", labels=_LABELS)
        gauges = {
            "lag": GaugeMetricFamily("nubis_trigger_lag", "Messages the broker has not delivered yet.", labels=_LABELS),
            "pending": GaugeMetricFamily(
                "nubis_trigger_pending", "Messages delivered and not acknowledged yet.", labels=_LABELS
            ),
            "lag_bytes": GaugeMetricFamily(
                "nubis_trigger_lag_bytes",
                "Bytes of log the trigger has not confirmed yet (postgres-cdc).",
                labels=_LABELS,
            ),
        }
        for function, status in sorted(self.statuses.items()):
            for replica in status.replicas:
                for report in replica.triggers:
                    labels = (function, report.name, report.kind, replica.name)
                    up.add_metric(labels, 1 if report.state in _UP_STATES else 0)
                    for key, value in sorted(report.counts.items()):
                        if key in _GAUGES:
                            gauges[key].add_metric(labels, value)
                        elif key == "reconnects":
                            reconnects.add_metric(labels, value)
                        else:
                            events.add_metric((*labels, key), value)
        yield from (events, reconnects, up, *gauges.values())


async def visible_functions(request: Request, action: Action) -> set[str]:
    """The names of the request's tenant's functions whose project the caller may `action` in."""
    principal, tenant = request.state.principal, request.state.tenant
    places = await request.app.state.control.store.function_places(None, tenant)
    return {name for name, _, _, project in places if principal.may(action, tenant, project)}


async def trigger_metrics(request: Request) -> Response:
    control = request.app.state.control
    statuses = await control.platform.statuses()
    visible = await visible_functions(request, "read")
    statuses = {name: status for name, status in statuses.items() if name in visible}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReportCollector(statuses))
    registry.register(ReplicaCollector(statuses, dict(control.autoscaler.decisions)))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
