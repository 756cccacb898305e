"""Worker allocation limits against real `nubis run` processes: eventTimeout (408),
workerAvailabilityTimeoutMilliseconds (503), maxQueuedEvents (503 + Retry-After), numWorkers.

No bound here depends on how busy the machine is: a slow request holds its worker until the test
releases it (a file the handler waits for), so "answered at once, not when the worker frees up"
is checked as "answered while the worker is still held"; a deadline is checked as never early.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
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


#: The longest a held handler waits for its release (a test that fails to release it ends then).
HOLD_SECONDS = 30.0


def hold(started: Path, release: Path) -> dict[str, str]:
    """Query fields of a `/sleep` that runs until `release` exists (`started` once it runs)."""
    return {"seconds": str(HOLD_SECONDS), "started": str(started), "release": str(release)}


def start_slow(pool: ThreadPoolExecutor, function: RunningFunction, tmp_path: Path) -> tuple[Future[Timed], Path]:
    """A request that holds the function's only worker until the returned file is created."""
    started, release = tmp_path / "started", tmp_path / "release"
    slow = pool.submit(timed_get, function.url, "/sleep", hold(started, release), HOLD_SECONDS + 10)
    wait_until(started.exists, 10, "the slow request to reach the handler")
    return slow, release


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
    # eventTimeout is 1 s (function.yaml): never earlier, and long before the 60 s handler would end
    timed_out = timed_get(function.url, "/", {"seconds": "60"}, timeout=30)
    assert timed_out.status == 408
    assert timed_out.headers["content-type"] == "application/json"
    assert timed_out.json() == {"error": "handler timed out"}
    assert timed_out.elapsed >= 0.9
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
        slow, release = start_slow(pool, function, tmp_path)
        # The worker is held: one of these waits in the queue (maxQueuedEvents: 1), the other finds
        # the queue full and is refused at once. Which one is which depends on arrival order.
        others = [pool.submit(timed_get, function.url, "/str") for _ in range(2)]
        done, _ = wait(others, timeout=20, return_when=FIRST_COMPLETED)
        # answered while the worker is still held: at once, not when it frees up
        assert [future.result().status for future in done] == [503]
        assert not slow.done()
        release.touch()
        results = sorted((future.result(30) for future in others), key=lambda r: r.status)
        assert slow.result(30).status == 200
    accepted, refused = results
    assert (accepted.status, refused.status) == (200, 503)
    assert accepted.text == "hello"
    assert "retry-after" in refused.headers


def test_full_queue_is_503_with_retry_after_at_once(run_function: RunFunction, tmp_path: Path) -> None:
    function = run_function(BEHAVIOURS, *one_worker(attributes={"maxQueuedEvents": 1}))
    _check_full_queue(function, tmp_path)


def test_full_queue_is_503_at_once_after_a_burst_of_fast_requests(run_function: RunFunction, tmp_path: Path) -> None:
    function = run_function(BEHAVIOURS, *one_worker(attributes={"maxQueuedEvents": 1}))
    warm_up(function)
    _check_full_queue(function, tmp_path)


# -- workerAvailabilityTimeoutMilliseconds -------------------------------------------------------------


def _check_availability_timeout(function: RunningFunction, tmp_path: Path, low: float) -> None:
    """The 503 comes no earlier than `low` s, and while the worker is still held (not when it frees up)."""
    with ThreadPoolExecutor(2) as pool:
        slow, release = start_slow(pool, function, tmp_path)
        refused = timed_get(function.url, "/str")
        assert refused.status == 503
        assert refused.elapsed >= low, f"503 after {refused.elapsed:.2f} s"
        assert not slow.done()
        release.touch()
        assert slow.result(30).status == 200
    assert timed_get(function.url, "/str").status == 200


def test_no_worker_free_within_the_availability_timeout_is_503(run_function: RunFunction, tmp_path: Path) -> None:
    function = run_function(BEHAVIOURS, *one_worker(workerAvailabilityTimeoutMilliseconds=300))
    _check_availability_timeout(function, tmp_path, 0.25)


def test_availability_timeout_zero_fails_at_once(run_function: RunFunction, tmp_path: Path) -> None:
    function = run_function(BEHAVIOURS, *one_worker(workerAvailabilityTimeoutMilliseconds=0))
    _check_availability_timeout(function, tmp_path, 0.0)


def test_availability_timeout_holds_after_a_burst_of_fast_requests(run_function: RunFunction, tmp_path: Path) -> None:
    function = run_function(BEHAVIOURS, *one_worker(workerAvailabilityTimeoutMilliseconds=300))
    warm_up(function)
    _check_availability_timeout(function, tmp_path, 0.25)


def test_queued_event_is_served_when_the_worker_frees_up(run_function: RunFunction, tmp_path: Path) -> None:
    function = run_function(BEHAVIOURS, *one_worker(workerAvailabilityTimeoutMilliseconds=5000))
    with ThreadPoolExecutor(2) as pool:
        started = tmp_path / "started"
        slow = pool.submit(timed_get, function.url, "/sleep", {"seconds": "1.0", "started": str(started)})
        wait_until(started.exists, 10, "the slow request to reach the handler")
        # queued behind the 1 s handler; served once it ends, well within the 5 s availability timeout
        waited = timed_get(function.url, "/str")
        assert slow.result(30).status == 200
    assert waited.status == 200
    assert waited.text == "hello"


# -- numWorkers ----------------------------------------------------------------------------------------


def test_two_workers_serve_two_slow_requests_concurrently(run_function: RunFunction, tmp_path: Path) -> None:
    function = run_function(BEHAVIOURS, "--workers", "2")
    release = tmp_path / "release"
    started = [tmp_path / "first", tmp_path / "second"]
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(timed_get, function.url, "/sleep", hold(path, release), 40) for path in started]
        # both handlers run at once: neither is released before both have started
        wait_until(lambda: all(path.exists() for path in started), 20, "both slow requests to run at once")
        release.touch()
        results = [future.result(40) for future in futures]
    assert [r.status for r in results] == [200, 200]
    assert results[0].json()["pid"] != results[1].json()["pid"]


def test_fast_requests_do_not_wait_behind_a_slow_one_while_a_worker_is_free(
    run_function: RunFunction, tmp_path: Path
) -> None:
    function = run_function(BEHAVIOURS, "--workers", "2")
    warm_up(function)
    with ThreadPoolExecutor(1) as pool:
        slow, release = start_slow(pool, function, tmp_path)
        # A burst of fast events arriving together (pipelined on one connection, so they reach the
        # pool in one go) while one worker is held and the other is free: all are answered while
        # the slow one still holds its worker, so none waited behind it.
        burst = 10
        with raw_connect(function.port) as sock:
            sock.sendall(b"".join(raw_request("GET", f"/fields?i={i}") for i in range(burst)))
            reader = RawReader(sock)
            responses = [reader.read_response() for _ in range(burst)]
        assert not slow.done()
        release.touch()
        assert slow.result(30).status == 200
    assert [r.status for r in responses] == [200] * burst
    assert [json.loads(r.body) for r in responses] == [{"i": str(i)} for i in range(burst)]


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
    run_function: RunFunction, tmp_path: Path
) -> None:
    # Warmed up, the pool pipelines: an event arriving a moment after a slow one may be queued on
    # the busy worker itself. Its availability deadline must still hold, whichever queue it is in.
    function = run_function(BEHAVIOURS, *one_worker(workerAvailabilityTimeoutMilliseconds=300))
    warm_up(function)
    release = tmp_path / "release"
    with raw_connect(function.port) as slow_sock, raw_connect(function.port) as fast_sock:
        slow_sock.sendall(raw_request("GET", f"/sleep?seconds={HOLD_SECONDS}&release={release}"))
        start = time.monotonic()
        fast_sock.sendall(raw_request("GET", "/str"))
        refused = RawReader(fast_sock).read_response()
        elapsed = time.monotonic() - start
        release.touch()
        slow = RawReader(slow_sock).read_response()
    assert refused.status == 503
    # never early, and while the slow event still held the worker (it is held until released)
    assert 0.25 <= elapsed < HOLD_SECONDS, f"503 after {elapsed:.2f} s"
    assert refused.headers.get("retry-after") == "1" or refused.headers.get("Retry-After") == "1"
    assert slow.status == 200
    assert timed_get(function.url, "/str").text == "hello"
