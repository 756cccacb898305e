"""Issue 7 against real `nubis server` processes: no cross-site or DNS-rebinding deploys, in every
auth mode; bounded archive uploads; `spec.build.path` confined to allowed roots; proxied
invocations with one Date and one Server header."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from harness import REPO, nubis_executable
from server_harness import RunningServer, started_server, wait_state

HELLO = REPO / "examples" / "hello"
ALLOWED_NAME = "nubis-guard.test"
ARCHIVE_LIMIT = 1_000_000


def function_json(name: str, **build: object) -> dict[str, object]:
    return {
        "metadata": {"name": name},
        "spec": {
            "runtime": "python",
            "handler": "main:handler",
            "build": build or {"functionSourceCode": base64.b64encode((HELLO / "main.py").read_bytes()).decode()},
        },
    }


@pytest.fixture(scope="module")
def code_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `--build-path-root` holding a function directory and a link to /etc."""
    root = tmp_path_factory.mktemp("code-root")
    (root / "hello").mkdir()
    (root / "hello" / "main.py").write_bytes((HELLO / "main.py").read_bytes())
    (root / "etc-link").symlink_to("/etc")
    return root


@pytest.fixture(scope="module")
def local(
    tmp_path_factory: pytest.TempPathFactory, nubis_data_dir: Path, free_port: Callable[[], int], code_root: Path
) -> Iterator[RunningServer]:
    """`nubis server --insecure-local`, the mode `make run` uses, with the options under test."""
    running = RunningServer(
        tmp_path_factory.mktemp("guard-local"),
        free_port(),
        "--insecure-local",
        "--allowed-host",
        ALLOWED_NAME,
        "--archive-max-bytes",
        str(ARCHIVE_LIMIT),
        "--build-path-root",
        str(code_root),
        env_cache=nubis_data_dir / "envs",
    )
    try:
        yield running.wait_ready()
    finally:
        running.stop()


@pytest.fixture(scope="module")
def with_token(
    tmp_path_factory: pytest.TempPathFactory, nubis_data_dir: Path, free_port: Callable[[], int]
) -> Iterator[RunningServer]:
    yield from started_server(tmp_path_factory.mktemp("guard-token"), free_port(), env_cache=nubis_data_dir / "envs")


def cli(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NUBIS_URL=server.url, NUBIS_TOKEN=server.token or "", XDG_CONFIG_HOME=str(server.data_dir))
    return subprocess.run(
        [str(nubis_executable()), *args], capture_output=True, text=True, timeout=180, env=env, cwd=REPO
    )


def assert_not_stored(server: RunningServer, name: str) -> None:
    with server.client() as api:
        assert api.get(f"/api/functions/{name}").status_code == 404
        assert name not in api.get("/api/functions").json()


def test_the_cross_site_curl_reproduction_is_refused_and_nothing_is_stored(local: RunningServer) -> None:
    # curl -X POST .../api/functions -H 'Content-Type: text/plain' -H 'Origin: http://evil.example'
    #      -H 'Host: evil.example:PORT' -d '<a function JSON>'
    body = json.dumps(function_json("evil-fn")).encode()
    with httpx.Client(base_url=local.url, timeout=30) as browser:
        headers = {"Content-Type": "text/plain", "Origin": "http://evil.example", "Host": f"evil.example:{local.port}"}
        refused = browser.post("/api/functions", content=body, headers=headers)
        assert refused.status_code == 421, refused.text
        assert "evil.example" in refused.json()["error"] and "--allowed-host" in refused.json()["error"]
        # The same page through DNS rebinding but under the server's own name: the Origin gives it away.
        own_host = {"Content-Type": "text/plain", "Origin": "http://evil.example"}
        refused = browser.post("/api/functions", content=body, headers=own_host)
        assert refused.status_code == 403, refused.text
        assert "'http://evil.example'" in refused.json()["error"]
        # No browser context at all, but a type a page can send without a preflight.
        refused = browser.post("/api/functions", content=body, headers={"Content-Type": "text/plain"})
        assert refused.status_code == 415, refused.text
        assert "application/json" in refused.json()["error"] and "text/plain" in refused.json()["error"]
    assert_not_stored(local, "evil-fn")


def test_a_form_body_marked_cross_site_is_refused(local: RunningServer) -> None:
    with httpx.Client(base_url=local.url, timeout=30) as browser:
        refused = browser.post(
            "/api/functions",
            data={"metadata": "x"},  # application/x-www-form-urlencoded, as an HTML form sends
            headers={"Sec-Fetch-Site": "cross-site"},
        )
        assert refused.status_code == 403, refused.text
        assert "Sec-Fetch-Site" in refused.json()["error"]
        invoked = browser.post(
            "/api/function_invocations",
            content=b"run",
            headers={"Sec-Fetch-Site": "same-site", "X-Nuclio-Function-Name": "evil-fn", "Content-Type": "text/plain"},
        )
        assert invoked.status_code == 403, invoked.text
    assert_not_stored(local, "x")


def test_a_foreign_host_is_refused_on_reads_and_allowed_host_makes_a_name_work(local: RunningServer) -> None:
    with httpx.Client(base_url=local.url, timeout=30) as client:
        refused = client.get("/api/functions", headers={"Host": f"rebind.example:{local.port}"})
        assert refused.status_code == 421
        assert "--allowed-host rebind.example" in refused.json()["error"]
        assert client.get("/healthz", headers={"Host": "rebind.example"}).status_code == 200
        allowed = {"Host": f"{ALLOWED_NAME}:{local.port}"}
        assert client.get("/api/functions", headers=allowed).status_code == 200
        same_origin = dict(allowed, Origin=f"http://{ALLOWED_NAME}:{local.port}", **{"Sec-Fetch-Site": "same-origin"})
        created = client.post("/api/projects", json={"metadata": {"name": "via-allowed-name"}}, headers=same_origin)
        assert created.status_code == 201, created.text
        assert client.get("/api/functions", headers={"Host": f"localhost:{local.port}"}).status_code == 200


def test_the_servers_own_origin_and_plain_clients_work(local: RunningServer) -> None:
    with httpx.Client(base_url=local.url, timeout=30) as client:
        page = {"Origin": local.url, "Sec-Fetch-Site": "same-origin"}
        created = client.post("/api/projects", json={"metadata": {"name": "from-dashboard"}}, headers=page)
        assert created.status_code == 201, created.text
        plain = client.post("/api/projects", json={"metadata": {"name": "from-httpx"}})
        assert plain.status_code == 201, plain.text
        assert client.request("DELETE", "/api/projects", json={"metadata": {"name": "from-httpx"}}).status_code == 204


@pytest.fixture(scope="module")
def hello(local: RunningServer) -> str:
    """examples/hello deployed with the CLI (archive upload as application/gzip, JSON create)."""
    deployed = cli(local, "deploy", str(HELLO), "--project-name", "guard")
    assert deployed.returncode == 0, deployed.stderr + local.stderr_text()
    return "hello"


def test_the_cli_deploys_and_invokes_through_the_guard(local: RunningServer, hello: str) -> None:
    invoked = cli(local, "invoke", hello, "--path", "/?name=guard")
    assert invoked.returncode == 0, invoked.stderr
    assert invoked.stdout == "Hello, guard! (from Nubis)\n"
    with httpx.Client(base_url=local.url, timeout=30) as client:
        cross = client.get("/api/function_invocations", headers={"X-Nuclio-Function-Name": hello, "Origin": "null"})
        assert cross.status_code == 403


def test_a_proxied_invocation_has_one_date_and_one_server_header(local: RunningServer, hello: str) -> None:
    with socket.create_connection(("127.0.0.1", local.port), timeout=30) as conn:
        conn.sendall(
            f"GET /api/function_invocations HTTP/1.1\r\nHost: 127.0.0.1:{local.port}\r\n"
            f"X-Nuclio-Function-Name: {hello}\r\nConnection: close\r\n\r\n".encode()
        )
        raw = b""
        while chunk := conn.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 200"), raw
    names = [line.split(":", 1)[0].strip().lower() for line in lines[1:]]
    assert names.count("date") == 1, lines
    assert names.count("server") == 1, lines
    assert b"Hello" in body


def test_the_guard_holds_with_a_token_too(with_token: RunningServer) -> None:
    body = function_json("evil-token-fn")
    with with_token.client() as api:
        cross = api.post("/api/functions", json=body, headers={"Origin": "http://evil.example"})
        assert cross.status_code == 403, cross.text
        rebound = api.get("/api/functions", headers={"Host": f"evil.example:{with_token.port}"})
        assert rebound.status_code == 421
        form = api.post("/api/functions", content=json.dumps(body), headers={"Content-Type": "text/plain"})
        assert form.status_code == 415
        assert api.post("/api/projects", json={"metadata": {"name": "token-plain"}}).status_code == 201
        assert api.get("/api/functions").status_code == 200
    with with_token.client(token=None) as anonymous:
        assert anonymous.get("/api/functions").status_code == 401
    assert_not_stored(with_token, "evil-token-fn")


def _zeros_tar_gz(size: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("fn/zeros.bin")
        info.size = size
        archive.addfile(info, io.BytesIO(bytes(size)))
    return buffer.getvalue()


def test_a_gzip_bomb_upload_is_refused_at_the_limit_and_leaves_nothing(local: RunningServer) -> None:
    bomb = _zeros_tar_gz(16 * ARCHIVE_LIMIT)
    assert len(bomb) < ARCHIVE_LIMIT // 20
    with local.client() as api:
        refused = api.post(
            "/api/function_archives",
            content=bomb,
            headers={"X-Nuclio-Function-Name": "bomb", "Content-Type": "application/gzip"},
        )
        assert refused.status_code == 413, refused.text
        message = refused.json()["error"]
        assert f"more than {ARCHIVE_LIMIT} bytes" in message and "--archive-max-bytes" in message
        as_text = api.post(
            "/api/function_archives",
            content=_zeros_tar_gz(10),
            headers={"X-Nuclio-Function-Name": "bomb", "Content-Type": "text/plain"},
        )
        assert as_text.status_code == 415
    leftovers = list((local.data_dir / "sources").rglob("*")) if (local.data_dir / "sources").exists() else []
    assert not [path for path in leftovers if "bomb" in path.parts], leftovers


def test_build_path_is_confined_to_the_allowed_roots(local: RunningServer, code_root: Path) -> None:
    with local.client() as api:
        for name, path in (("copy-etc", "/etc"), ("copy-etc-link", str(code_root / "etc-link"))):
            refused = api.post("/api/functions", json=function_json(name, path=path))
            assert refused.status_code == 400, refused.text
            message = refused.json()["error"]
            assert "spec.build.path" in message and "--build-path-root" in message and "/etc" in message
            assert api.get(f"/api/functions/{name}").status_code == 404, "nothing may be stored"
            assert not list((local.data_dir / "functions" / name).glob("g*/passwd"))
        allowed = function_json("from-root", path=str(code_root / "hello"))
        assert api.post("/api/functions", json=allowed).status_code == 202
        ready = wait_state(api, "from-root", {"ready", "error"})
        assert ready["status"]["state"] == "ready", ready["status"]
        assert api.request("DELETE", "/api/functions", json={"metadata": {"name": "from-root"}}).status_code == 204
