"""The gateway of a real `nubis server`: functions at their paths, streaming, forwarding headers,
bad input, and the gateway as a process of its own (it outlives the API; the server restarts it)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from server_harness import RunningServer, gateway_port, inline_function, started_server, wait_state

SOURCE = b"""
import json, os, time

def handler(context, event):
    if event.path.startswith("/stream"):
        flag = event.headers.get("X-Flag")
        def chunks():
            yield "first\\n"
            deadline = time.monotonic() + 60
            while not os.path.exists(flag) and time.monotonic() < deadline:
                time.sleep(0.01)
            yield "second\\n"
        return chunks()
    seen = {name: event.headers.get(name) for name in (
        "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Request-Id")}
    body = event.body if isinstance(event.body, bytes) else str(event.body).encode()
    return context.Response(
        body=json.dumps({"path": event.path, "fields": dict(event.fields or {}), "headers": seen,
                         "body_size": len(body)}),
        content_type="application/json", status_code=200)
"""


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, nubis_data_dir: Path, free_port: Callable[[], int]
) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("gateway")
    yield from started_server(
        data_dir, free_port(), "--gateway-port", str(free_port()), env_cache=nubis_data_dir / "envs"
    )


@pytest.fixture(scope="module")
def gateway(server: RunningServer) -> str:
    with server.client() as api:
        assert api.post("/api/functions", json=inline_function("echo", SOURCE)).status_code in (200, 201, 202)
        status = wait_state(api, "echo", {"ready", "error"})["status"]
        assert status["state"] == "ready", status
    url = f"http://127.0.0.1:{gateway_port(server)}"
    # the route appears once the gateway read the store (it looks every 0.5 s)
    with httpx.Client(base_url=url, timeout=30) as client:
        deadline = time.monotonic() + 30
        while client.get("/echo").status_code == 404 and time.monotonic() < deadline:
            time.sleep(0.05)
    return url


def test_the_gateway_url_is_advertised_after_the_direct_port(server: RunningServer, gateway: str) -> None:
    with server.client() as api:
        status = api.get("/api/functions/echo").json()["status"]
    port = gateway.rsplit(":", 1)[1]
    assert status["externalInvocationUrls"] == [f"127.0.0.1:{status['httpPort']}", f"127.0.0.1:{port}/echo"]
    # what nuclio-jupyter does with a URL: http:// + it, a path after it
    answer = httpx.get(f"http://{status['externalInvocationUrls'][1]}/deep?x=1", timeout=30).json()
    assert answer["path"] == "/deep" and answer["fields"] == {"x": "1"}


def test_paths_reach_the_function_with_the_prefix_stripped(gateway: str) -> None:
    with httpx.Client(base_url=gateway, timeout=30) as client:
        assert client.get("/echo").json()["path"] == "/"
        assert client.get("/echo/").json()["path"] == "/"
        answer = client.get("/echo/x/y", params={"a": "1", "b": "two"}).json()
        assert answer["path"] == "/x/y" and answer["fields"] == {"a": "1", "b": "two"}
        # bodies both ways, with a length and chunked
        assert client.post("/echo/up", content=b"z" * 300_000).json()["body_size"] == 300_000
        chunked = client.post("/echo/up", content=iter([b"a" * 1000, b"b" * 2000])).json()
        assert chunked["body_size"] == 3000


def test_an_unknown_function_is_a_json_404(gateway: str) -> None:
    answer = httpx.get(f"{gateway}/nosuch/x", timeout=30)
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/json"
    assert "nosuch" in answer.json()["error"]


def test_forwarding_headers_and_request_id_reach_the_function(gateway: str) -> None:
    answer = httpx.get(f"{gateway}/echo", headers={"X-Request-Id": "abc-123"}, timeout=30)
    seen = answer.json()["headers"]
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "http"
    assert seen["X-Forwarded-Host"] == gateway.removeprefix("http://")
    assert seen["X-Request-Id"] == "abc-123" and answer.headers["x-request-id"] == "abc-123"
    made = httpx.get(f"{gateway}/echo", headers={"X-Forwarded-For": "10.0.0.1"}, timeout=30)
    assert made.json()["headers"]["X-Forwarded-For"] == "10.0.0.1, 127.0.0.1"
    assert made.json()["headers"]["X-Request-Id"] == made.headers["x-request-id"] != ""


def test_a_generator_s_chunks_reach_the_client_as_they_are_produced(gateway: str, tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    with (
        httpx.Client(timeout=30) as client,
        client.stream("GET", f"{gateway}/echo/stream", headers={"X-Flag": str(flag)}) as answer,
    ):
        assert answer.headers["transfer-encoding"] == "chunked"
        lines = answer.iter_lines()
        # "second" is produced only after the test saw "first": a buffering gateway never shows it
        assert next(lines) == "first"
        flag.touch()
        assert next(lines) == "second"


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_content_length_with_transfer_encoding_is_refused(gateway: str) -> None:
    port = int(gateway.rsplit(":", 1)[1])
    answer = _raw(
        port,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /echo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"smuggled" not in answer and answer.count(b"HTTP/1.1") == 1


def test_the_gateway_keeps_serving_when_the_api_is_killed_and_is_adopted(
    tmp_path: Path, nubis_data_dir: Path, free_port: Callable[[], int]
) -> None:
    port = free_port()
    first = RunningServer(
        tmp_path / "data", free_port(), "--gateway-port", str(port), env_cache=nubis_data_dir / "envs"
    ).wait_ready()
    second: RunningServer | None = None
    try:
        pid = first.gateway_pid()
        first.kill()
        assert httpx.get(f"http://127.0.0.1:{port}/nosuch", timeout=10).status_code == 404
        second = RunningServer(tmp_path / "data", free_port(), env_cache=nubis_data_dir / "envs").wait_ready()
        assert second.gateway_pid() == pid and gateway_port(second) == port
    finally:
        if second is not None:
            second.stop()
        first.stop()


def test_a_killed_gateway_is_started_again(server: RunningServer, gateway: str) -> None:
    old = server.gateway_pid()
    assert old is not None
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()
    deadline = killed + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{gateway}/echo/back", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.01)
    else:
        raise AssertionError(f"the gateway did not come back:\n{server.stderr_text()}")
    print(f"gateway serving again {time.monotonic() - killed:.3f} s after SIGKILL")
    assert server.gateway_pid() not in (None, old)


def test_a_taken_explicit_gateway_port_is_an_error(tmp_path: Path, free_port: Callable[[], int]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = RunningServer(tmp_path / "data", free_port(), "--gateway-port", str(port))
        try:
            assert server.process.wait(60) != 0
            assert f"gateway port {port} on 127.0.0.1 is already in use" in server.stderr_text()
        finally:
            server.stop()


def test_a_taken_default_gateway_port_gives_way_to_a_free_one(tmp_path: Path, free_port: Callable[[], int]) -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Other tests' servers start gateways on 8080 too, briefly: hold it ourselves once it is free,
        # so it cannot be freed under this test. A holder that keeps it is the same case.
        deadline = time.monotonic() + 30
        while True:
            try:
                taken.bind(("127.0.0.1", 8080))
            except OSError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
            else:
                taken.listen()
            break
        server = RunningServer(tmp_path / "data", free_port())
        try:
            server.wait_ready()
            assert any("gateway port 8080 is taken; the gateway listens on" in line for line in server._lines)
            port = gateway_port(server)
            assert port != 8080
            answer = httpx.get(f"http://127.0.0.1:{port}/nosuch", timeout=10)
            assert answer.status_code == 404 and json.loads(answer.text)["error"]
        finally:
            server.stop()
