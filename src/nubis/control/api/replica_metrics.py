"""The replicas' and the autoscaler's series for `GET /api/metrics` (beside the triggers' own,
`trigger_metrics.py`), from what each replica last reported (`nubis.processor.reporting`):

- `nubis_function_replicas{function, state}`: desired (the autoscaler's count), running
  (processes) and awake (with workers; a replica at zero is running but not awake);
- `nubis_replica_in_flight`, `nubis_replica_queued`, `nubis_replica_concurrency` (mean running +
  waiting over the last report), `nubis_replica_cpu_cores`, per `function` and `replica`;
- `nubis_events_total{function, replica, trigger, kind, outcome}`: events answered, by outcome
  (handled, handler error, timeout, worker lost, busy, shutting down);
- `nubis_event_duration_seconds{function, replica, trigger, kind}`: histogram of the handlers'
  durations, measured by the worker around the handler;
- `nubis_cold_starts_total`, `nubis_wake_failures_total` and the histogram
  `nubis_cold_start_seconds` (a wake from zero until the workers are ready), per replica;
- `nubis_autoscaler_decisions_total{function, direction}`: the autoscaler's changes (up, down,
  zero, from_zero) since the server started.

Per replica, so a restarted replica starts again from 0, as a restarted pod's counters do.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import accumulate
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from nubis.platforms.status import FunctionStatus

_REPLICA = ("function", "replica")
_TRIGGER = (*_REPLICA, "trigger", "kind")


def _buckets(histogram: dict[str, Any]) -> tuple[list[tuple[str, float]], float] | None:
    """Prometheus' cumulative buckets from a replica's `{bounds, counts, sum}`."""
    bounds, counts = histogram.get("bounds"), histogram.get("counts")
    if not isinstance(bounds, list) or not isinstance(counts, list) or len(counts) != len(bounds) + 1:
        return None
    edges = [f"{bound:g}" for bound in bounds] + ["+Inf"]
    return list(zip(edges, accumulate(counts), strict=True)), float(histogram.get("sum", 0.0))


class ReplicaCollector(Collector):
    def __init__(self, statuses: dict[str, FunctionStatus], decisions: dict[tuple[str, str], int]) -> None:
        self.statuses = statuses
        self.decisions = decisions

    def collect(self) -> Iterator[Metric]:
        replicas = GaugeMetricFamily(
            "nubis_function_replicas",
            "Replicas: desired, running (processes), awake (with workers).",
            labels=("function", "state"),
        )
        gauges = {
            key: GaugeMetricFamily(f"nubis_replica_{key}", text, labels=_REPLICA)
            for key, text in (
                ("in_flight", "Events being handled now."),
                ("queued", "Events waiting for a worker."),
                ("concurrency", "Mean running + waiting events over the last report (0.5 s)."),
                ("cpu_cores", "Cores the replica's processes used over the last report."),
            )
        }
        cold_starts = CounterMetricFamily("nubis_cold_starts", "Wakes from zero that served.", labels=_REPLICA)
        wake_failures = CounterMetricFamily("nubis_wake_failures", "Wakes from zero that failed.", labels=_REPLICA)
        cold_seconds = HistogramMetricFamily(
            "nubis_cold_start_seconds", "A wake from zero until the workers are ready.", labels=_REPLICA
        )
        events = CounterMetricFamily(
            "nubis_events", "Events answered, by trigger and outcome.", labels=(*_TRIGGER, "outcome")
        )
        durations = HistogramMetricFamily(
            "nubis_event_duration_seconds", "How long handlers took, by trigger.", labels=_TRIGGER
        )
        for function, status in sorted(self.statuses.items()):
            running = awake = 0
            for replica in status.replicas:
                if replica.state != "ready":
                    continue
                running += 1
                load = replica.load
                if load is None:
                    continue
                awake += load.state == "awake"
                labels = (function, replica.name)
                gauges["in_flight"].add_metric(labels, load.in_flight)
                gauges["queued"].add_metric(labels, load.queued)
                gauges["concurrency"].add_metric(labels, load.concurrency)
                gauges["cpu_cores"].add_metric(labels, load.cpu)
                cold_starts.add_metric(labels, load.cold_starts)
                wake_failures.add_metric(labels, load.wake_failures)
                if (cold := _buckets(load.cold_start_seconds)) is not None:
                    cold_seconds.add_metric(labels, cold[0], cold[1])
                for trigger, said in sorted(load.per_trigger.items()):
                    trigger_labels = (*labels, trigger, str(said.get("kind", "")))
                    for outcome, count in sorted((said.get("outcomes") or {}).items()):
                        events.add_metric((*trigger_labels, outcome), count)
                    if (spread := _buckets(said.get("duration") or {})) is not None:
                        durations.add_metric(trigger_labels, spread[0], spread[1])
            replicas.add_metric((function, "desired"), status.replicas_desired)
            replicas.add_metric((function, "running"), running)
            replicas.add_metric((function, "awake"), awake)
        scalings = CounterMetricFamily(
            "nubis_autoscaler_decisions",
            "The autoscaler's changes of a function's replicas since the server started (up, down, zero, from_zero).",
            labels=("function", "direction"),
        )
        for (function, direction), count in sorted(self.decisions.items()):
            scalings.add_metric((function, direction), count)
        yield from (replicas, *gauges.values(), cold_starts, wake_failures, cold_seconds, events, durations, scalings)
