"""A real `nubis gateway` process: its Prometheus metrics, rate limits (429 + Retry-After), the body
limit (413, the upstream never gets the body) and the connection cap (503).

The upstream is a small real HTTP server in the test that records every request it received whole,
behind function records written to the gateway's store, as `benchmarks/gateway.py` does: what
reaches the upstream is then known exactly, and no function environment has to be built.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from harness import REPO, nubis_executable, wait_until
from prometheus_client.parser import text_string_to_metric_families

from nubis.store import Store, default_state_url


class Recorder(BaseHTTPRequestHandler):
    """Answers 200 with the path; records (path, body size) of each request read whole."""

    protocol_version = "HTTP/1.1"
    received: list[tuple[str, int]] = []

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while size := int(self.rfile.readline().strip(), 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(parts)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:  # http.server's naming
        body = self._body()
        self.received.append((self.path, len(body)))
        answer = self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def upstreams() -> Iterator[list[ThreadingHTTPServer]]:
    """Two: a function's port is its own."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Recorder) for _ in range(2)]
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


async def _record(data_dir: Path, functions: dict[str, int]) -> None:
    store = await Store.open(default_state_url(data_dir))
    try:
        await store.ensure_default_project("nuclio")
        for name, port in functions.items():
            await store.create_function(name, "default", "nuclio", {"metadata": {"name": name}, "spec": {}})
            await store.set_http_port(name, port)
    finally:
        await store.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_gateway(data_dir: Path, port: int, *args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [str(nubis_executable()), "gateway", "--port", str(port), "--data-dir", str(data_dir), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
        start_new_session=True,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # the gateway prints its ready line once it listens
    assert line.startswith("nubis gateway ready at"), line
    return process


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)
    if process.stdout is not None:
        process.stdout.close()


@pytest.fixture(scope="module")
def gateways(
    tmp_path_factory: pytest.TempPathFactory, upstreams: list[ThreadingHTTPServer], free_port: Callable[[], int]
) -> Iterator[tuple[str, str]]:
    """(a bounded gateway: max body 1000 bytes and 4 connections; a rate-limited gateway)."""
    data_dir = tmp_path_factory.mktemp("gateway-limits")
    echo, metrics = (int(server.server_address[1]) for server in upstreams)
    asyncio.run(_record(data_dir, {"echo": echo, "metrics": metrics, "gone": _closed_port()}))
    bounded_port, limited_port = free_port(), free_port()
    other_dir = tmp_path_factory.mktemp("gateway-limits-2")  # its own gateway.json; the same store
    state = ("--state-url", default_state_url(data_dir))
    bounded = _start_gateway(
        data_dir, bounded_port, "--max-body-bytes", "1000", "--max-connections", "4", "--wake-timeout", "0"
    )
    try:
        limited = _start_gateway(other_dir, limited_port, *state, "--rate-limit", "0.01", "--rate-burst", "3")
    except BaseException:
        _stop(bounded)
        raise
    urls = (f"http://127.0.0.1:{bounded_port}", f"http://127.0.0.1:{limited_port}")
    for url in urls:  # the routes appear once the gateway read the store
        wait_until(lambda u=url: httpx.get(f"{u}/echo", timeout=10).status_code == 200, 30, f"no route at {url}")  # type: ignore[misc]
    yield urls
    _stop(limited)
    _stop(bounded)


def _samples(url: str, path: str = "/metrics") -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    answer = httpx.get(url + path, timeout=10)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def _labels(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def test_metrics_count_requests_by_function_route_and_status(gateways: tuple[str, str]) -> None:
    url = gateways[0]
    before = _samples(url, "/__internal/metrics")
    ok = _labels(function="echo", route="/echo", status="200")
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(5):
            assert client.get("/echo/x").status_code == 200
        assert client.get("/nosuch").status_code == 404
        assert client.get("/gone").status_code == 502
    after = _samples(url, "/__internal/metrics")
    assert after[("nubis_gateway_requests_total", ok)] - before.get(("nubis_gateway_requests_total", ok), 0) == 5
    assert after[("nubis_gateway_requests_total", _labels(function="-", route="-", status="404"))] >= 1
    assert after[("nubis_gateway_requests_total", _labels(function="gone", route="/gone", status="502"))] >= 1
    refused = _labels(function="gone", route="/gone", kind="refused")
    assert after[("nubis_gateway_upstream_errors_total", refused)] >= 1
    route = _labels(function="echo", route="/echo")
    assert after[("nubis_gateway_request_duration_seconds_count", route)] >= 5
    assert after[("nubis_gateway_requests_in_flight", route)] == 0
    # scrapes are not requests of a function: /metrics here is the function named metrics
    assert httpx.get(f"{url}/metrics", timeout=10).text == "/"
    unrouted_ok = ("nubis_gateway_requests_total", _labels(function="-", route="-", status="200"))
    assert unrouted_ok not in _samples(url, "/__internal/metrics")


def test_past_the_burst_a_client_is_answered_429_with_retry_after(gateways: tuple[str, str]) -> None:
    url = gateways[1]
    with httpx.Client(base_url=url, timeout=10) as client:
        statuses = [client.get("/echo/r").status_code for _ in range(4)]
        # the fixture's readiness probe took one token of the three
        assert statuses[:2] == [200, 200] and statuses[-1] == 429
        answer = client.get("/echo/r")
        assert answer.status_code == 429 and answer.headers["content-type"] == "application/json"
        assert 1 <= int(answer.headers["retry-after"]) <= 100  # 0.01 a second: a token in at most 100 s
        assert "retry in" in answer.json()["error"]
        assert client.get("/metrics/r").status_code == 200  # another route has a bucket of its own
    samples = _samples(url, "/__internal/metrics")
    assert samples[("nubis_gateway_rate_limited_total", _labels(route="/echo"))] >= 2
    assert samples[("nubis_gateway_requests_total", _labels(function="echo", route="/echo", status="429"))] >= 2


def test_an_oversized_body_is_413_and_never_reaches_the_upstream(gateways: tuple[str, str]) -> None:
    url = gateways[0]
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.post("/echo/small", content=b"s" * 1000).status_code == 200
        announced = client.post("/echo/announced", content=b"a" * 5000)
        assert announced.status_code == 413 and "1000 bytes" in announced.json()["error"]
        streamed = client.post("/echo/streamed", content=iter([b"b" * 600, b"c" * 600, b"d" * 600]))
        assert streamed.status_code == 413
        assert client.get("/echo/after").status_code == 200
    paths = [path for path, _ in Recorder.received]
    assert ("/small", 1000) in Recorder.received and "/after" in paths
    assert "/announced" not in paths and "/streamed" not in paths
    samples = _samples(url, "/__internal/metrics")
    assert samples[("nubis_gateway_requests_total", _labels(function="echo", route="/echo", status="413"))] >= 2


def test_past_max_connections_a_connection_is_answered_503(gateways: tuple[str, str]) -> None:
    url = gateways[0]
    port = int(url.rsplit(":", 1)[1])
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(4)]
    try:
        for sock in held:  # an answer on each: the gateway has taken all four
            sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            answer = b""
            while chunk := extra.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1\r\n" in answer
        assert b"--max-connections" in answer
    finally:
        for sock in held:
            sock.close()
    samples = _samples_when_free(url)
    assert samples[("nubis_gateway_refused_connections_total", frozenset())] >= 1


def _samples_when_free(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The metrics once the gateway noticed the held connections closed (its cap lets one in)."""
    return wait_until(lambda: _try_samples(url), 10, "the gateway kept refusing connections")  # type: ignore[no-any-return]


def _try_samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
    try:
        return _samples(url, "/__internal/metrics")
    except (httpx.TransportError, AssertionError):
        return None
