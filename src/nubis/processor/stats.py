"""Counters a replica keeps for its metrics: a fixed-bucket histogram cheap enough for the event
path (one bisect and two additions per observation), reported as plain numbers
(`reporting.py`) and turned into Prometheus histograms by the control plane (`/api/metrics`)."""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

#: upper bounds (seconds) of the handler-duration buckets, Prometheus' defaults plus sub-ms ones
EVENT_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: upper bounds (seconds) of the cold-start buckets (a wake from zero to the workers ready)
COLD_START_BOUNDS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        #: one count per bound, and the last for above them all (not cumulative)
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def report(self) -> dict[str, Any]:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": round(self.total, 6)}
