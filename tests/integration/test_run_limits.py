"""Worker allocation limits against real `nubis run` processes: eventTimeout (408),
workerAvailabilityTimeoutMilliseconds (503), maxQueuedEvents (503 + Retry-After), numWorkers."""

from __future__ import annotations

import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    FUNCTIONS,
    RawReader,
    RunFunction,
    RunningFunction,
    http_client,
    raw_connect,
    raw_request,
    wait_until,
)

BEHAVIOURS = FUNCTIONS / "behaviours"
TIMEOUTS = FUNCTIONS / "timeouts"


@dataclass
class Timed:
    status: int
    headers: dict[str, str]
    text: str
    #: seconds from sending the request to having the whole response
    elapsed: float

    def json(self) -> Any:
        return json.loads(self.text)


def timed_get(url: str, path: str, params: dict[str, str] | None = None, timeout: float = 20.0) -> Timed:
    """One request on its own connection (safe to run in parallel threads)."""
    with http_client(url, timeout) as client:
        start = time.monotonic()
        response = client.get(path, params=params)
        return Timed(response.status_code, dict(response.headers), response.text, time.monotonic() - start)


def one_worker(**trigger: Any) -> tuple[str, str]:
    """`--triggers` replacing the http trigger of `behaviours` with one worker and `trigger` on top."""
    attributes = trigger.pop("attributes", {})
    spec = {"kind": "http", "numWorkers": 1, "attributes": attributes, **trigger}
    return "--triggers", json.dumps({"http": spec})


def start_slow(pool: ThreadPoolExecutor, function: RunningFunction, started: Path, seconds: float) -> Future[Timed]:
    """A slow request that holds the function's only worker; returns once the handler runs."""
    slow = pool.submit(timed_get, function.url, "/sleep", {"seconds": str(seconds), "started": str(started)})
    wait_until(started.exists, 10, "the slow request to reach the handler")
    return slow


def warm_up(function: RunningFunction, requests: int = 20) -> None:
    """Fast requests first, as a function that has been serving for a while has seen."""
    with function.client() as client:
        for _ in range(requests):
            assert client.get("/str").text == "hello"


# -- eventTimeout --------------------------------------------------------------------------------------


def test_event_timeout_is_408_and_the_worker_is_replaced(run_function: RunFunction) -> None:
    function = run_function(TIMEOUTS)
    with function.client() as client:
        fast = client.get("/", params={"seconds": "0.1"})
        assert fast.status_code == 200
        before = fast.json()["pid"]
    timed_out = timed_get(function.url, "/", {"seconds": "5"})
    assert timed_out.status == 408
    assert timed_out.headers["content-type"] == "application/json"
    assert timed_out.json() == {"error": "handler timed out"}
    assert 0.9 <= timed_out.elapsed < 3.0
    after = timed_get(function.url, "/", {"seconds": "0"})
    assert after.status == 200
    assert after.json()["pid"] != before


def test_event_queued_behind_a_timed_out_event_is_served(run_function: RunFunction) -> None:
    function = run_function(TIMEOUTS)
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(timed_get, function.url, "/", {"seconds": "5"})
        quick = pool.submit(timed_get, function.url, "/", {"seconds": "0"})
        assert slow.result(30).status == 408
        assert quick.result(30).status == 200


# -- maxQueuedEvents -----------------------------------------------------------------------------------


def _check_full_queue(function: RunningFunction, tmp_path: Path) -> None:
    with ThreadPoolExecutor(3) as pool:
        slow = start_slow(pool, function, tmp_path / "started", 1.5)
        # The worker is busy: one of these waits in the queue (maxQueuedEvents: 1), the other finds
        # the queue full and is refused at once. Which one is which depends on arrival order.
        others = [pool.submit(timed_get, function.url, "/str") for _ in range(2)]
        results = sorted((future.result(30) for future in others), key=lambda r: r.status)
        assert slow.result(30).status == 200
    accepted, refused = results
    assert (accepted.status, refused.status) == (200, 503)
    assert accepted.text == "hello"
    assert refused.elapsed < 1.0, "a full queue must answer 503 at once, not when a worker frees up"
    assert "retry-after" in refused.headers


def test_full_queue_is_503_with_retry_after_at_once(run_function: RunFunction, tmp_path: Path) -> None:
    function = run_function(BEHAVIOURS, *one_worker(attributes={"maxQueuedEvents": 1}))
    _check_full_queue(function, tmp_path)


def test_full_queue_is_503_at_once_after_a_burst_of_fast_requests(run_function: RunFunction, tmp_path: Path) -> None:
    function = run_function(BEHAVIOURS, *one_worker(attributes={"maxQueuedEvents": 1}))
    warm_up(function)
    _check_full_queue(function, tmp_path)


# -- workerAvailabilityTimeoutMilliseconds -------------------------------------------------------------


def _check_availability_timeout(function: RunningFunction, tmp_path: Path, low: float, high: float) -> None:
    with ThreadPoolExecutor(2) as pool:
        slow = start_slow(pool, function, tmp_path / "started", 1.5)
        refused = timed_get(function.url, "/str")
        assert refused.status == 503
        assert low <= refused.elapsed < high, f"503 after {refused.elapsed:.2f} s"
        assert slow.result(30).status == 200
    assert timed_get(function.url, "/str").status == 200


def test_no_worker_free_within_the_availability_timeout_is_503(run_function: RunFunction, tmp_path: Path) -> None:
    function = run_function(BEHAVIOURS, *one_worker(workerAvailabilityTimeoutMilliseconds=300))
    _check_availability_timeout(function, tmp_path, 0.25, 1.2)


def test_availability_timeout_zero_fails_at_once(run_function: RunFunction, tmp_path: Path) -> None:
    function = run_function(BEHAVIOURS, *one_worker(workerAvailabilityTimeoutMilliseconds=0))
    _check_availability_timeout(function, tmp_path, 0.0, 0.5)


def test_availability_timeout_holds_after_a_burst_of_fast_requests(run_function: RunFunction, tmp_path: Path) -> None:
    function = run_function(BEHAVIOURS, *one_worker(workerAvailabilityTimeoutMilliseconds=300))
    warm_up(function)
    _check_availability_timeout(function, tmp_path, 0.25, 1.2)


def test_queued_event_is_served_when_the_worker_frees_up(run_function: RunFunction, tmp_path: Path) -> None:
    function = run_function(BEHAVIOURS, *one_worker(workerAvailabilityTimeoutMilliseconds=5000))
    with ThreadPoolExecutor(2) as pool:
        slow = start_slow(pool, function, tmp_path / "started", 1.0)
        waited = timed_get(function.url, "/str")
        assert slow.result(30).status == 200
    assert waited.status == 200
    assert waited.text == "hello"


# -- numWorkers ----------------------------------------------------------------------------------------


def test_two_workers_serve_two_slow_requests_concurrently(run_function: RunFunction) -> None:
    function = run_function(BEHAVIOURS, "--workers", "2")
    start = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(timed_get, function.url, "/sleep", {"seconds": "1.5"}) for _ in range(2)]
        results = [future.result(30) for future in futures]
    total = time.monotonic() - start
    assert [r.status for r in results] == [200, 200]
    assert results[0].json()["pid"] != results[1].json()["pid"]
    assert total < 2.7, f"two 1.5 s requests on two workers took {total:.2f} s"


def test_fast_requests_do_not_wait_behind_a_slow_one_while_a_worker_is_free(
    run_function: RunFunction, tmp_path: Path
) -> None:
    function = run_function(BEHAVIOURS, "--workers", "2")
    warm_up(function)
    with ThreadPoolExecutor(1) as pool:
        slow = start_slow(pool, function, tmp_path / "started", 1.5)
        # A burst of fast events arriving together (pipelined on one connection, so they reach the
        # pool in one go) while one worker is busy and the other is free.
        burst = 10
        with raw_connect(function.port) as sock:
            start = time.monotonic()
            sock.sendall(b"".join(raw_request("GET", f"/fields?i={i}") for i in range(burst)))
            reader = RawReader(sock)
            responses = [reader.read_response() for _ in range(burst)]
            elapsed = time.monotonic() - start
        assert slow.result(30).status == 200
    assert [r.status for r in responses] == [200] * burst
    assert [json.loads(r.body) for r in responses] == [{"i": str(i)} for i in range(burst)]
    assert elapsed < 1.0, f"{burst} fast events took {elapsed:.2f} s while one worker was free"


def test_pipelined_responses_stay_in_order_with_two_workers(run_function: RunFunction) -> None:
    function = run_function(BEHAVIOURS, "--workers", "2")
    with raw_connect(function.port) as sock:
        sock.sendall(raw_request("GET", "/sleep?seconds=0.5") + raw_request("GET", "/fields?second=yes"))
        reader = RawReader(sock)
        first, second = reader.read_response(), reader.read_response()
    assert first.status == second.status == 200
    assert json.loads(first.body)["slept"] == 0.5
    assert json.loads(second.body) == {"second": "yes"}


def test_event_arriving_with_a_slow_one_is_503_on_time_and_the_slow_one_completes(
    run_function: RunFunction,
) -> None:
    # Warmed up, the pool pipelines: an event arriving a moment after a slow one may be queued on
    # the busy worker itself. Its availability deadline must still hold, whichever queue it is in.
    function = run_function(BEHAVIOURS, *one_worker(workerAvailabilityTimeoutMilliseconds=300))
    warm_up(function)
    with raw_connect(function.port) as slow_sock, raw_connect(function.port) as fast_sock:
        slow_sock.sendall(raw_request("GET", "/sleep?seconds=1.5"))
        start = time.monotonic()
        fast_sock.sendall(raw_request("GET", "/str"))
        refused = RawReader(fast_sock).read_response()
        elapsed = time.monotonic() - start
        slow = RawReader(slow_sock).read_response()
    assert refused.status == 503
    assert 0.25 <= elapsed < 1.2, f"503 after {elapsed:.2f} s"
    assert refused.headers.get("retry-after") == "1" or refused.headers.get("Retry-After") == "1"
    assert slow.status == 200
    assert timed_get(function.url, "/str").text == "hello"
