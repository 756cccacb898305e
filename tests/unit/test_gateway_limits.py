"""The gateway's token buckets (an injected clock) and the metrics children they and requests use."""

from __future__ import annotations

import pytest

from nubis.gateway import metrics
from nubis.gateway.limits import RateLimiter, rate_limiter, retry_after
from nubis.gateway.replicas import Upstream
from nubis.gateway.routes import Route


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_then_one_token_per_interval() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)  # empty: a token in 1 / rate seconds
    clock.now += 0.25
    assert limiter.take("a") == pytest.approx(0.25)  # half a token came, half is missing
    clock.now += 0.25
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == pytest.approx(0.5)


def test_refill_stops_at_the_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(10.0, 2, clock=clock)
    limiter.take("a")
    clock.now += 3600
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]


def test_clients_have_buckets_of_their_own() -> None:
    limiter = RateLimiter(1.0, 1, clock=Clock())
    assert limiter.take(("/f", "10.0.0.1")) == 0.0
    assert limiter.take(("/f", "10.0.0.1")) > 0
    assert limiter.take(("/f", "10.0.0.2")) == 0.0
    assert limiter.take(("/g", "10.0.0.1")) == 0.0


def test_a_bucket_full_again_is_forgotten() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 5, clock=clock)  # refilled in 5 s
    for client in range(100):
        limiter.take(client)
    assert len(limiter) == 100
    clock.now += 4.0
    limiter.take("late")
    assert len(limiter) == 101  # not full yet: kept, or a client would get its burst back early
    clock.now += 1.0
    limiter.take("last")
    assert set(limiter.buckets) == {"late", "last"}
    assert limiter.take("late") == 0.0


def test_past_max_buckets_the_least_recently_used_go() -> None:
    limiter = RateLimiter(1.0, 1, clock=Clock(), max_buckets=3)
    for client in ("a", "b", "c", "a", "d"):
        limiter.take(client)
    assert list(limiter.buckets) == ["c", "a", "d"]


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert [retry_after(s) for s in (0.001, 0.5, 1.0, 1.01, 7.9)] == [1, 1, 1, 2, 8]


def test_the_settings_limiter() -> None:
    assert rate_limiter(None, 4) is None
    assert rate_limiter(2.5, None).burst == 3  # type: ignore[union-attr]  # one second's worth
    assert rate_limiter(100.0, 7).burst == 7  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        RateLimiter(0.0, 1)


def _sample(name: str, labels: dict[str, str]) -> float | None:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return None if value is None else float(value)


def test_route_metrics_are_cached_and_count_requests_by_status() -> None:
    route = Route("limits-unit", Upstream("127.0.0.1", 1))
    labels = {"function": "limits-unit", "route": "/limits-unit"}
    assert metrics.of(route) is metrics.of(route)
    measured = metrics.of(route)
    measured.begin()
    assert _sample("nubis_gateway_requests_in_flight", labels) == 1
    measured.end(200, 0.003)
    measured.begin()
    measured.end(429, 0.0001)
    assert _sample("nubis_gateway_requests_in_flight", labels) == 0
    assert _sample("nubis_gateway_requests_total", {**labels, "status": "200"}) == 1
    assert _sample("nubis_gateway_requests_total", {**labels, "status": "429"}) == 1
    assert _sample("nubis_gateway_request_duration_seconds_count", labels) == 2
    assert _sample("nubis_gateway_request_duration_seconds_bucket", {**labels, "le": "0.0025"}) == 1
    measured.upstream_error("refused")
    assert _sample("nubis_gateway_upstream_errors_total", {**labels, "kind": "refused"}) == 1
    metrics.unauthorised(route)
    assert _sample("nubis_gateway_unauthorised_total", {"route": "/limits-unit"}) == 1


def test_metrics_answer_at_the_reserved_path_and_at_metrics_unless_claimed() -> None:
    assert metrics.wants_scrape(b"/__internal/metrics?x=1", lambda: True)
    assert metrics.wants_scrape(b"/metrics", lambda: False)
    assert not metrics.wants_scrape(b"/metrics", lambda: True)
    assert not metrics.wants_scrape(b"/metrics/x", lambda: False)
    answer = metrics.scrape_answer(True)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"nubis_gateway_requests_total" in answer
