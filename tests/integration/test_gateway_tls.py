"""TLS on a real `nubis server`'s gateway: HTTPS from certificate files, the mTLS tunnel (client
certificates of the platform CA only, revocation without a restart) reached with curl and openssl
s_client, and `nubis tunnel` exposing a function on a local plain-HTTP port."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from harness import REPO, nubis_executable, skip_or_fail
from server_harness import RunningServer, inline_function, wait_state
from test_server_certs import certs, issued

from nubis.auth.ca import CertificateAuthority

SOURCE = b"""
import json

def handler(context, event):
    body = event.body if isinstance(event.body, bytes) else str(event.body or "").encode()
    return context.Response(
        body=json.dumps({"path": event.path, "proto": event.headers.get("X-Forwarded-Proto"),
                         "body_size": len(body)}),
        content_type="application/json", status_code=200)
"""


class Gateway:
    def __init__(self, server: RunningServer, port: int, tunnel_port: int, cert: Path) -> None:
        self.server = server
        self.port = port
        self.tunnel_port = tunnel_port
        self.cert = cert


def self_signed(directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "gateway.crt", directory / "gateway.key"
    made = subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if made.returncode != 0:
        skip_or_fail(f"openssl could not make a test certificate: {made.stderr}")
    return cert, key


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, nubis_data_dir: Path, free_port: Callable[[], int]
) -> Iterator[Gateway]:
    if shutil.which("openssl") is None:
        skip_or_fail("openssl is not installed")
    data_dir = tmp_path_factory.mktemp("gateway-tls")
    cert, key = self_signed(data_dir / "files")
    port, tunnel_port = free_port(), free_port()
    args = ["--gateway-port", str(port), "--gateway-tls-cert", str(cert), "--gateway-tls-key", str(key)]
    args += ["--tunnel-port", str(tunnel_port)]
    server = RunningServer(data_dir, free_port(), *args, env_cache=nubis_data_dir / "envs")
    try:
        server.wait_ready()
        assert f"gateway at https://127.0.0.1:{port} (functions at /<name>)" in server._lines
        with server.client() as api:
            assert api.post("/api/functions", json=inline_function("hello", SOURCE)).status_code in (200, 201, 202)
            status = wait_state(api, "hello", {"ready", "error"})["status"]
            assert status["state"] == "ready", status
            assert api.get("/api/frontend_spec").json()["tunnelAddress"] == f"127.0.0.1:{tunnel_port}"
        context = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=f"https://localhost:{port}", verify=context, timeout=30) as https:
            deadline = time.monotonic() + 30  # the route appears once the gateway read the store
            while https.get("/hello").status_code == 404 and time.monotonic() < deadline:
                time.sleep(0.05)
        yield Gateway(server, port, tunnel_port, cert)
    finally:
        server.stop()


def test_the_gateway_speaks_https_with_the_given_certificate(gateway: Gateway) -> None:
    context = ssl.create_default_context(cafile=str(gateway.cert))
    answer = httpx.post(f"https://localhost:{gateway.port}/hello/x?a=1", content=b"12345", verify=context, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"path": "/x", "proto": "https", "body_size": 5}
    with pytest.raises(httpx.HTTPError):  # plain HTTP gets no answer from an HTTPS port
        httpx.get(f"http://127.0.0.1:{gateway.port}/hello", timeout=10)


def client(tool: str, port: int, files: Path | None, ca: Path) -> subprocess.CompletedProcess[str]:
    """`GET /hello/tool` with curl or openssl s_client to the tunnel, with the files in `files` (None: no
    client certificate at all)."""
    if shutil.which(tool) is None:
        skip_or_fail(f"{tool} is not installed")
    mine = [] if files is None else [str(files / "tls.crt"), str(files / "tls.key")]
    if tool == "curl":
        argv = ["curl", "-sS", "--max-time", "20", "--cacert", str(ca), f"https://localhost:{port}/hello/{tool}"]
        if mine:
            argv += ["--cert", mine[0], "--key", mine[1]]
        stdin = ""
    else:
        argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost", "-CAfile", str(ca)]
        argv += ["-verify_return_error", "-verify_hostname", "localhost", "-quiet", "-ign_eof"]
        if mine:
            argv += ["-cert", mine[0], "-key", mine[1]]
        stdin = f"GET /hello/{tool} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)


class Refusals:
    """The tunnel's refusals in the gateway's log (a line is written just after the client's alert)."""

    def __init__(self, log_file: Path) -> None:
        self.log_file = log_file
        self.seen: dict[str, int] = {}

    def count(self, reason: str) -> int:
        text = self.log_file.read_text(errors="replace")
        return sum(1 for line in text.splitlines() if "tunnel: refused" in line and line.endswith(reason))

    def mark(self, reason: str) -> None:
        self.seen[reason] = self.count(reason)

    def logged(self, reason: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.count(reason) == self.seen[reason] and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.count(reason) > self.seen[reason]


NO_CERTIFICATE = "PEER_DID_NOT_RETURN_A_CERTIFICATE"
OTHER_CA = "unable to get local issuer certificate"
REVOKED = "certificate revoked"


@pytest.mark.parametrize("tool", ["curl", "openssl"])
def test_the_tunnel_takes_certificates_of_the_platform_ca_only(gateway: Gateway, tmp_path: Path, tool: str) -> None:
    server, port = gateway.server, gateway.tunnel_port
    ca = server.data_dir / "ca" / "ca.crt"
    refusals = Refusals(server.data_dir / "gateway" / "gateway.log")
    for reason in (NO_CERTIFICATE, OTHER_CA, REVOKED):
        refusals.mark(reason)
    answer = f'{{"path": "/{tool}", "proto": "https", "body_size": 0}}'

    refused = client(tool, port, None, ca)
    assert answer not in refused.stdout and refused.returncode != 0
    assert refusals.logged(NO_CERTIFICATE)
    stranger = CertificateAuthority.open(tmp_path / "other-ca").issue(f"{tool}-mallory")
    (tmp_path / "mallory").mkdir()
    (tmp_path / "mallory" / "tls.crt").write_text(stranger.certificate)
    (tmp_path / "mallory" / "tls.key").write_text(stranger.key)
    refused = client(tool, port, tmp_path / "mallory", ca)
    assert answer not in refused.stdout and refused.returncode != 0
    assert refusals.logged(OTHER_CA)

    serial = issued(server, f"tunnel-{tool}-bob", tmp_path / "bob")
    accepted = client(tool, port, tmp_path / "bob", tmp_path / "bob" / "ca.crt")
    assert accepted.returncode == 0, accepted.stderr
    assert answer in accepted.stdout

    assert certs(server, "revoke", serial).returncode == 0  # no restart: the next handshake is refused
    refused = client(tool, port, tmp_path / "bob", ca)
    assert answer not in refused.stdout and refused.returncode != 0
    assert refusals.logged(REVOKED)


def login_env(server: RunningServer) -> dict[str, str]:
    return dict(os.environ, NUBIS_URL=server.url, NUBIS_TOKEN=server.token or "", XDG_CONFIG_HOME=str(server.data_dir))


def tunnel_refused(server: RunningServer, function: str) -> str:
    """`nubis tunnel` that is expected to fail at once: its error line."""
    argv = [str(nubis_executable()), "tunnel", function, "--port", "0"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=login_env(server), cwd=REPO)
    assert result.returncode == 1, result.stdout + result.stderr
    return result.stderr


def test_nubis_tunnel_exposes_a_function_on_a_local_port(gateway: Gateway, free_port: Callable[[], int]) -> None:
    server, local = gateway.server, free_port()
    assert tunnel_refused(server, "nosuch").startswith(f"error: there is no function nosuch at {server.url}")
    env = login_env(server)
    tunnel = subprocess.Popen(
        [str(nubis_executable()), "tunnel", "hello", "--port", str(local)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=REPO,
        text=True,
    )
    try:
        assert tunnel.stdout is not None
        line = tunnel.stdout.readline()
        assert line.startswith(f"nubis tunnel ready at http://127.0.0.1:{local} -> hello through 127.0.0.1:"), line
        with httpx.Client(base_url=f"http://127.0.0.1:{local}", timeout=30) as local_client:
            answer = local_client.get("/")
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"path": "/", "proto": "https", "body_size": 0}
            # the same keep-alive connection: each request is aimed at the function, a chunked body too
            streamed = local_client.post("/deeper/path?q=1", content=iter([b"abc", b"defg"]))
            assert streamed.json() == {"path": "/deeper/path", "proto": "https", "body_size": 7}
        names = [record["name"] for record in json.loads(certs(server, "list", "-o", "json").stdout).values()]
        assert any("@" in name for name in names), names  # the tunnel's own certificate, user@host
    finally:
        tunnel.send_signal(signal.SIGTERM)
        try:
            _, errors = tunnel.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            tunnel.kill()
            _, errors = tunnel.communicate()
    assert tunnel.returncode == 0, errors


def test_an_https_gateway_is_adopted_with_the_same_options_and_replaced_with_others(
    tmp_path: Path, nubis_data_dir: Path, free_port: Callable[[], int]
) -> None:
    cert, key = self_signed(tmp_path / "files")
    port, tunnel_port = free_port(), free_port()
    https = ["--gateway-port", str(port), "--gateway-tls-cert", str(cert), "--gateway-tls-key", str(key)]
    servers: list[RunningServer] = []

    def start(*args: str) -> RunningServer:
        servers.append(RunningServer(tmp_path / "data", free_port(), *args, env_cache=nubis_data_dir / "envs"))
        return servers[-1].wait_ready()

    context = ssl.create_default_context(cafile=str(cert))
    try:
        first = start(*https)
        pid = first.gateway_pid()
        assert "runs no tunnel: start it with --tunnel-port" in tunnel_refused(first, "any")
        first.kill()
        assert httpx.get(f"https://localhost:{port}/nosuch", verify=context, timeout=10).status_code == 404
        second = start(*https)  # its health check speaks TLS to the running gateway
        assert second.gateway_pid() == pid
        second.kill()
        third = start(*https, "--tunnel-port", str(tunnel_port))
        assert third.gateway_pid() != pid
        state = json.loads((tmp_path / "data" / "gateway" / "gateway.json").read_text())
        assert (state["scheme"], state["port"], state["tunnel_port"]) == ("https", port, tunnel_port)
        assert httpx.get(f"https://localhost:{port}/nosuch", verify=context, timeout=10).status_code == 404
    finally:
        for server in reversed(servers):
            server.stop()


def test_gateway_certificate_files_that_do_not_load_are_refused_before_anything_starts(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    cert, _ = self_signed(tmp_path / "files")
    argv = [str(nubis_executable()), "server", "--data-dir", str(tmp_path / "data"), "--port", str(free_port())]
    argv += ["--gateway-tls-cert", str(cert), "--gateway-tls-key", str(cert)]  # a certificate is no key
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 1
    assert f"--gateway-tls-cert {cert} with --gateway-tls-key {cert}: cannot load them" in result.stderr
    assert not (tmp_path / "data" / "gateway").exists()
