"""A real `nubis gateway` holding requests for a function none of whose replicas takes connections
(`nubis.gateway.hold`): answered once a replica appears (a `nubis run` publishing its socket, or a
server on the shared port), in arrival order, bodies included; 503 with Retry-After past
--wake-timeout while other routes are served; a client that goes away leaves the queue.

The gateway reads function records written to its store, as in test_gateway_metrics.py. Where the
order in which requests reach the function is checked, the function is a one-thread HTTP server of
the test's on the function's port: it takes connections one at a time, in the order the gateway
opened them, and records what each asked (a replica's own workers would answer in their order).
Every held request is seen held in the gateway's metrics before the test goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import HTTPServer, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from harness import Launcher, RunningFunction, wait_until
from test_gateway_metrics import Recorder, _labels, _record, _samples, _start_gateway, _stop

from nubis.sockets import replica_sockets_dir
from nubis.store import default_state_url

SOURCE = """
def handler(context, event):
    return "served " + event.path
"""
#: the short gateway's --wake-timeout
SHORT = 1.0
#: a request's read timeout: above the long gateway's default wake timeout (30 s), so a hold that
#: never ends fails on the gateway's 503, not here
CLIENT_TIMEOUT = 40.0


class Upstream:
    """A one-thread (or threading) HTTP server on `port`, stopped on exit: test_gateway_metrics'
    Recorder (200 with the path; (path, body size) of each request in `seen`), over HTTP/1.0 so
    that each connection carries one request (the one-thread server takes connections in the
    order the gateway opened them)."""

    def __init__(self, port: int, threads: bool = False) -> None:
        self.seen: list[tuple[str, int]] = []
        handler = type("Handler", (Recorder,), {"received": self.seen, "protocol_version": "HTTP/1.0"})
        if threads:
            self.server: HTTPServer = ThreadingHTTPServer(("127.0.0.1", port), handler)
            self.server.daemon_threads = True
        else:
            self.server = HTTPServer(("127.0.0.1", port), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def __enter__(self) -> Upstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def _reserved(port: int) -> socket.socket:
    """`port` bound and not listening: connections to it are refused, and no other process (a
    test run beside this one) can start listening on it meanwhile."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    return sock


class Gateways:
    """Two gateways over one store: `long` with the default wake timeout, `short` with SHORT."""

    def __init__(self, long: str, short: str, data_dir: Path, reserved: dict[str, socket.socket]) -> None:
        self.long, self.short, self.data_dir, self.reserved = long, short, data_dir, reserved

    def upstream(self, function: str) -> Upstream:
        """A server on `function`'s port from now on."""
        sock = self.reserved.pop(function)
        port = sock.getsockname()[1]
        sock.close()
        return Upstream(port)


#: functions whose ports nothing listens on (until a test starts a server there)
CLOSED = ("late", "order", "gone", "never")


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory, free_port: Callable[[], int]) -> Iterator[Gateways]:
    """The functions of CLOSED, and `echo`: a server of the test's, always up."""
    data_dir = tmp_path_factory.mktemp("gateway-hold")
    with contextlib.ExitStack() as stack:
        reserved = {name: stack.enter_context(_reserved(free_port())) for name in CLOSED}
        echo = stack.enter_context(Upstream(free_port(), threads=True))
        ports = {name: sock.getsockname()[1] for name, sock in reserved.items()}
        asyncio.run(_record(data_dir, ports | {"echo": echo.server.server_address[1]}))
        long_port, short_port = free_port(), free_port()
        stack.callback(_stop, _start_gateway(data_dir, long_port))
        state = ("--state-url", default_state_url(data_dir))
        short_dir = tmp_path_factory.mktemp("gateway-hold-2")
        stack.callback(_stop, _start_gateway(short_dir, short_port, *state, "--wake-timeout", str(SHORT)))
        urls = (f"http://127.0.0.1:{long_port}", f"http://127.0.0.1:{short_port}")
        for url in urls:  # the routes appear once the gateway read the store
            wait_until(lambda u=url: _get(f"{u}/echo").status_code == 200, 30, f"no route at {url}")  # type: ignore[misc]
        yield Gateways(*urls, data_dir, reserved)


def _get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=CLIENT_TIMEOUT)


def _metric(url: str, name: str, function: str) -> float:
    return _samples(url, "/__internal/metrics").get((name, _labels(function=function, route=f"/{function}")), 0.0)


def _held(url: str, function: str) -> float:
    return _metric(url, "nubis_gateway_requests_held", function)


def _wait_held(url: str, function: str, count: int, answers: Sequence[Future[httpx.Response]] = ()) -> None:
    """Until `count` requests for `function` are held; `answers`: those that must not be answered yet."""

    def held() -> bool:
        for answer in answers:
            if answer.done():
                result = answer.result()
                pytest.fail(f"answered while it should be held: {result.status_code} {result.text}")
        return _held(url, function) == count

    wait_until(held, 10, f"{count} request(s) for {function} held")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, nubis: Launcher) -> Path:
    """The function `nubis run` serves, its environment built once beforehand (a held request
    then waits for a replica's start, not for a build)."""
    path = tmp_path_factory.mktemp("held-source") / "held.py"
    path.write_text(SOURCE)
    nubis.start(path).stop()
    return path


def test_held_requests_are_answered_once_a_replica_publishes_its_socket(
    gateways: Gateways, source: Path, nubis: Launcher, free_port: Callable[[], int]
) -> None:
    """The replica listens on a port of its own, not the function's: the gateway reaches it only
    through the socket it finds when it lists the directory again."""
    url = f"{gateways.long}/late"
    with ThreadPoolExecutor(3) as pool:
        answers: list[Future[httpx.Response]] = []
        for index in range(3):
            answers.append(pool.submit(_get, f"{url}/{index}"))
            _wait_held(gateways.long, "late", index + 1, answers)
        slot = replica_sockets_dir(gateways.data_dir, "late") / "0.sock"
        argv = nubis.argv(source, ["--replica-socket", str(slot)], free_port())
        with RunningFunction(argv, nubis.environment()) as replica:
            replica.wait_ready()
            ready = time.monotonic()
            results = [answer.result(CLIENT_TIMEOUT) for answer in answers]
            released = time.monotonic() - ready
    assert [(result.status_code, result.text) for result in results] == [(200, f"served /{i}") for i in range(3)]
    print(f"held requests answered {released * 1000:.1f} ms after the replica was ready")
    assert _held(gateways.long, "late") == 0
    assert _metric(gateways.long, "nubis_gateway_holds_total", "late") == 3
    assert _metric(gateways.long, "nubis_gateway_hold_timeouts_total", "late") == 0


def test_held_requests_reach_the_function_in_arrival_order_with_their_bodies(gateways: Gateways) -> None:
    """Five held requests, each after the one before is held, one of them with a 1 MiB body (more
    than the gateway keeps: the client is paused until the request is sent)."""
    url = f"{gateways.long}/order"
    with ThreadPoolExecutor(5) as pool:
        answers: list[Future[httpx.Response]] = []
        for index in range(5):
            body = b"b" * (1 << 20) if index == 2 else b"x" * index
            answers.append(pool.submit(httpx.post, f"{url}/{index}", content=body, timeout=CLIENT_TIMEOUT))
            _wait_held(gateways.long, "order", index + 1, answers)
        with gateways.upstream("order") as function:
            results = [answer.result(CLIENT_TIMEOUT) for answer in answers]
    assert [(result.status_code, result.text) for result in results] == [(200, f"/{i}") for i in range(5)]
    assert function.seen == [(f"/{i}", 1 << 20 if i == 2 else i) for i in range(5)]


def test_past_the_wake_timeout_a_held_request_is_503_and_other_routes_are_served(gateways: Gateways) -> None:
    with ThreadPoolExecutor(1) as pool:
        start = time.monotonic()
        held = pool.submit(_get, f"{gateways.short}/never/x")
        _wait_held(gateways.short, "never", 1, [held])
        # whether the held request was still held when each of these was answered
        still_held = []
        while not held.done() and time.monotonic() - start < SHORT * 0.8:
            assert _get(f"{gateways.short}/echo/meanwhile").status_code == 200
            still_held.append(not held.done())
        answer = held.result(CLIENT_TIMEOUT)
        waited = time.monotonic() - start
    assert still_held and still_held[0], still_held
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert answer.json()["error"] == f"never did not become available within {SHORT:g} s"
    assert SHORT * 0.9 <= waited < SHORT + 3, waited
    assert _held(gateways.short, "never") == 0
    assert _metric(gateways.short, "nubis_gateway_hold_timeouts_total", "never") >= 1
    statuses = ("nubis_gateway_requests_total", _labels(function="never", route="/never", status="503"))
    assert _samples(gateways.short, "/__internal/metrics")[statuses] >= 1


def test_a_held_client_that_goes_away_leaves_the_queue(gateways: Gateways) -> None:
    port = int(gateways.long.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /gone/x HTTP/1.1\r\nHost: x\r\n\r\n")
        _wait_held(gateways.long, "gone", 1)
    _wait_held(gateways.long, "gone", 0)  # at once, not at the wake timeout
    gone = ("nubis_gateway_requests_total", _labels(function="gone", route="/gone", status="499"))
    assert _samples(gateways.long, "/__internal/metrics")[gone] == 1
    assert _metric(gateways.long, "nubis_gateway_hold_timeouts_total", "gone") == 0
    # a request after it is held alone (nothing of the one gone is left), and answered
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(_get, f"{gateways.long}/gone/after")
        _wait_held(gateways.long, "gone", 1, [answer])
        with gateways.upstream("gone") as function:
            assert answer.result(CLIENT_TIMEOUT).status_code == 200
    assert function.seen == [("/after", 0)]
