"""The gateway of a real `nubis server` against hostile input, over raw sockets: request smuggling,
path tricks that would pass an API gateway's authentication by another path, Host tricks, header
injection through the echoed request id, and clients that misbehave mid-request. Each attack must
get one clear 4xx (or a closed connection) and leave the gateway serving the next request."""

from __future__ import annotations

import base64
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from head_limits import wait_closed
from server_harness import RunningServer, gateway_port, inline_function, started_server, wait_state

SOURCE = b"""
import json

def handler(context, event):
    body = event.body if isinstance(event.body, bytes) else str(event.body).encode()
    seen = {name: event.headers.get(name) for name in ("X-Request-Id", "Host", "Expect", "Injected")}
    return context.Response(body=json.dumps({"path": event.path, "headers": seen, "body": body.decode("latin-1")}),
                            content_type="application/json", status_code=200)
"""
HOST = b"attack.example.com"
RIGHT = b"Basic " + base64.b64encode(b"ann:s3cret")
ASK = 30.0


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, nubis_data_dir: Path, free_port: Callable[[], int]
) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("gateway-attacks")
    yield from started_server(
        data_dir, free_port(), "--gateway-port", str(free_port()), env_cache=nubis_data_dir / "envs"
    )


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + ASK
    while not condition():
        assert time.monotonic() < deadline, "the gateway did not pick up the change"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def port(server: RunningServer) -> int:
    """The gateway's port, once it routes `/echo`, an open API gateway at `/` of HOST and one with
    basicAuth at `/guarded` of the same host, both to `echo`."""
    upstreams = [{"kind": "nucliofunction", "nucliofunction": {"name": "echo"}}]
    credentials = {"authentication": {"basicAuth": {"username": "ann", "password": "s3cret"}}}
    with server.client() as api:
        assert api.post("/api/functions", json=inline_function("echo", SOURCE)).status_code in (200, 201, 202)
        assert wait_state(api, "echo", {"ready", "error"})["status"]["state"] == "ready"
        for name, path, auth in (("agw-open", "/", {}), ("agw-guarded", "/guarded", credentials)):
            mode = "basicAuth" if auth else "none"
            spec = {"host": HOST.decode(), "path": path, "authenticationMode": mode, "upstreams": upstreams}
            answer = api.post("/api/api_gateways", json={"metadata": {"name": name}, "spec": spec | auth})
            assert answer.status_code == 201, answer.text
    port = gateway_port(server)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=ASK) as client:
        _until(lambda: client.get("/echo").status_code == 200)
        _until(lambda: client.get("/guarded", headers={"Host": HOST.decode()}).status_code == 401)
        _until(lambda: client.get("/open", headers={"Host": HOST.decode()}).status_code == 200)
    return port


def _exchange(port: int, data: bytes) -> bytes:
    """Send `data` on a new connection and read until the gateway closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=ASK) as sock:
        sock.sendall(data)
        return wait_closed(sock, ASK)


def _statuses(received: bytes) -> list[int]:
    """The status of each answer (a body echoed by the function has its CR LF escaped: no false line)."""
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n", received)]


def _bodies(received: bytes) -> list[dict[str, object]]:
    return [json.loads(body) for body in re.findall(rb"\r\n\r\n(\{.*?\})(?=HTTP/1\.1 |$)", received, re.DOTALL)]


def _get(port: int, target: bytes, *headers: bytes, host: bytes = b"x") -> bytes:
    lines = b"".join(header + b"\r\n" for header in headers)
    return _exchange(port, b"GET %s HTTP/1.1\r\nHost: %s\r\n%sConnection: close\r\n\r\n" % (target, host, lines))


def _still_serving(port: int) -> None:
    """A normal request after an attack is answered as usual."""
    received = _get(port, b"/echo/after")
    assert _statuses(received) == [200] and _bodies(received)[0]["path"] == "/after"


def _refused(port: int, request: bytes, status: int = 400) -> bytes:
    received = _exchange(port, request)
    assert _statuses(received) == [status], received
    _still_serving(port)
    return received


def _post(encoding: bytes, body: bytes = b"3\r\nabc\r\n0\r\n\r\n") -> bytes:
    return b"POST /echo HTTP/1.1\r\nHost: x\r\n" + encoding + b"\r\nConnection: close\r\n\r\n" + body


@pytest.mark.parametrize(
    "request_",
    [
        _post(b"Transfer-Encoding: gzip, chunked"),
        _post(b"Transfer-Encoding: identity", b"abc"),
        _post(b"Transfer-Encoding: chunked, identity"),
        _post(b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked"),
        _post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"),
        _post(b"Transfer-Encoding: xchunked"),
        _post(b"Content-Length: +3", b"abc"),
        _post(b"Content-Length: 3, 3", b"abc"),
        _post(b"Content-Length: 3\r\nContent-Length: 3", b"abc"),
        _post(b"X-A: a\r\n b\r\nContent-Length: 3", b"abc"),  # obs-fold
        _post(b"Transfer-Encoding: gzip\r\n ,chunked"),
        b"GET /echo HTTP/1.1\nHost: x\nConnection: close\n\n",  # bare LF
    ],
    ids=lambda request: request.split(b"Host: x", 1)[1][:40].decode().strip(),
)
def test_ambiguous_framing_is_one_400(port: int, request_: bytes) -> None:
    _refused(port, request_)


@pytest.mark.parametrize(
    "encoding", [b"Transfer-Encoding: ChUnKeD", b"Transfer-Encoding:\t chunked ", b"Content-Length: 3 "]
)
def test_framing_with_odd_case_or_whitespace_is_read_as_the_function_reads_it(port: int, encoding: bytes) -> None:
    body = b"abc" if encoding.startswith(b"Content") else b"3\r\nabc\r\n0\r\n\r\n"
    received = _exchange(port, _post(encoding, body))
    assert _statuses(received) == [200] and _bodies(received)[0]["body"] == "abc"


def test_a_request_inside_a_get_s_body_is_body_not_a_request(port: int) -> None:
    inner = b"GET /echo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    received = _exchange(
        port,
        b"GET /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(inner), inner)
        + b"GET /echo/next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    first, second = _bodies(received)
    assert _statuses(received) == [200, 200]
    assert first["path"] == "/" and first["body"] == inner.decode() and second["path"] == "/next"


@pytest.mark.parametrize(
    "target",
    [b"/echo/../other", b"/echo/%2e%2E/x", b"/%2e%2e/", b"/echo%2Fx", b"/echo/a%5Cb", b"/echo/a\\b", b"/echo/./x"],
)
def test_paths_that_mean_another_path_are_refused(port: int, target: bytes) -> None:
    _refused(port, b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target)


@pytest.mark.parametrize(
    ("target", "arrives"), [(b"//echo//x", "/x"), (b"/%65cho/%7Ey", "/~y"), (b"/echo?q=/../", "/")]
)
def test_equivalent_paths_reach_the_function_normalised(port: int, target: bytes, arrives: str) -> None:
    received = _get(port, target)
    assert _statuses(received) == [200] and _bodies(received)[0]["path"] == arrives


@pytest.mark.parametrize(
    "request_",
    [
        b"GET /" + b"a" * 7000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET http://evil/echo/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ],
    ids=["long-name", "absolute-form", "options-star"],
)
def test_targets_no_route_has_are_a_404(port: int, request_: bytes) -> None:
    _refused(port, request_, 404)


@pytest.mark.parametrize(
    "request_",
    [
        b"CONNECT echo:80 HTTP/1.1\r\nHost: echo:80\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ],
    ids=["connect", "upgrade"],
)
def test_connect_and_upgrades_get_one_400_and_nothing_reaches_the_function(port: int, request_: bytes) -> None:
    received = _refused(port, request_)
    assert b"upgrades are not supported" in received and b'"path"' not in received


@pytest.mark.parametrize(
    "target", [b"/guarded", b"/guarded/x", b"//guarded", b"/%67uarded", b"/./guarded", b"/x/../guarded", b"/guarded%2F"]
)
def test_no_spelling_of_a_guarded_path_passes_without_the_password(port: int, target: bytes) -> None:
    received = _get(port, target, host=HOST)
    assert _statuses(received)[0] in (400, 401) and b'"path"' not in received, received
    _still_serving(port)


@pytest.mark.parametrize(
    "host", [HOST, HOST.upper() + b":80", HOST + b".", b" " + HOST + b" "], ids=["plain", "upper", "dot", "spaces"]
)
def test_every_spelling_of_the_host_is_guarded(port: int, host: bytes) -> None:
    assert _statuses(_get(port, b"/guarded", host=host)) == [401]
    answer = _get(port, b"/guarded/in", b"Authorization: " + RIGHT, host=host)
    assert _statuses(answer) == [200] and _bodies(answer)[0]["path"] == "/guarded/in"


@pytest.mark.parametrize("hosts", [(HOST, b"x"), (b"x", HOST)], ids=["guarded-first", "guarded-last"])
def test_two_host_headers_are_refused(port: int, hosts: tuple[bytes, bytes]) -> None:
    request = b"GET /echo/guarded HTTP/1.1\r\nHost: %s\r\nHost: %s\r\nConnection: close\r\n\r\n" % hosts
    _refused(port, request)


def test_an_ipv6_host_is_routed_by_function_path(port: int) -> None:
    assert _statuses(_get(port, b"/echo", host=b"[::1]:80")) == [200]


def test_http_1_1_without_host_is_refused_and_http_1_0_without_it_is_served(port: int) -> None:
    _refused(port, b"GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n")
    received = _exchange(port, b"GET /echo/old HTTP/1.0\r\n\r\n")
    assert _statuses(received) == [200] and _bodies(received)[0]["path"] == "/old"


@pytest.mark.parametrize(
    "request_id",
    [b"a\rInjected: 1", b"a\nInjected: 1", b"\x01z", b"\x7fz"],
    ids=["cr", "lf", "control", "del"],
)
def test_a_request_id_with_control_characters_is_refused(port: int, request_id: bytes) -> None:
    received = _refused(
        port, b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Request-Id: %s\r\nConnection: close\r\n\r\n" % request_id
    )
    assert b"Injected" not in received


@pytest.mark.parametrize("request_id", [b"\xc3\xa9t\xe9", b"z" * 129, b"a b"], ids=["non-ascii", "long", "space"])
def test_a_request_id_unsafe_to_echo_is_replaced(port: int, request_id: bytes) -> None:
    received = _get(port, b"/echo", b"X-Request-Id: " + request_id)
    made = re.search(rb"\r\nX-Request-Id: ([^\r]*)\r\n", received)
    assert made is not None and request_id not in received
    assert _bodies(received)[0]["headers"] == {
        "X-Request-Id": made[1].decode(),
        "Host": "x",
        "Expect": None,
        "Injected": None,
    }


def test_two_request_ids_reach_the_function_as_one(port: int) -> None:
    received = _get(port, b"/echo", b"X-Request-Id: first", b"X-Request-Id: second")
    assert received.count(b"X-Request-Id: ") == 1 and _bodies(received)[0]["headers"]["X-Request-Id"] == "second"


def test_expect_100_continue_is_answered_by_the_gateway_before_the_body(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=ASK) as sock:
        head = (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(head)
        assert sock.recv(1000) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"abc")
        received = wait_closed(sock, ASK)
    assert _statuses(received) == [200]
    assert _bodies(received)[0]["body"] == "abc" and _bodies(received)[0]["headers"]["Expect"] is None


def test_no_100_continue_for_a_request_that_is_refused(port: int) -> None:
    request = b"POST /guarded HTTP/1.1\r\nHost: %s\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n" % HOST
    with socket.create_connection(("127.0.0.1", port), timeout=ASK) as sock:
        sock.sendall(request)
        assert sock.recv(1000).startswith(b"HTTP/1.1 401 ")


def _client_gone_count(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/__internal/metrics", timeout=ASK).text
    found = re.search(r'nubis_gateway_requests_total\{function="echo",route="/echo",status="499"\} (\S+)', text)
    return float(found[1]) if found else 0.0


def test_a_client_gone_mid_body_does_not_leave_half_a_request_on_a_reused_upstream(port: int) -> None:
    for _ in range(3):
        _still_serving(port)  # an idle upstream connection in the pool, for the half request to take
        gone = _client_gone_count(port)
        with socket.create_connection(("127.0.0.1", port), timeout=ASK) as sock:
            sock.sendall(b"POST /echo/half HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"h" * 50)
        _until(lambda gone=gone: _client_gone_count(port) > gone)  # type: ignore[misc]
        received = _exchange(
            port, b"POST /echo/next HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nnxt"
        )
        assert _statuses(received) == [200] and _bodies(received)[0] == _bodies(received)[0] | {
            "path": "/next",
            "body": "nxt",
        }


def test_a_hundred_pipelined_requests_in_one_write_are_answered_in_order(port: int) -> None:
    requests = b"".join(b"GET /echo/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(99))
    received = _exchange(port, requests + b"GET /echo/99 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert _statuses(received) == [200] * 100
    assert [body["path"] for body in _bodies(received)] == [f"/{i}" for i in range(100)]
