"""Client certificates of a real `nubis server`'s CA: `nubis certs` and `/api/certs`, and standard
TLS clients (curl, openssl s_client) with the issued files against the tunnel's server context."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from harness import REPO, nubis_executable, skip_or_fail
from server_harness import RunningServer

from nubis.auth.ca import CertificateAuthority
from nubis.auth.tls import ServerContexts


@pytest.fixture(scope="module")
def server(module_server: RunningServer) -> RunningServer:
    """Certificates are issued under unique names, and nothing else changes: one server for the module."""
    return module_server


def certs(server: RunningServer, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ, NUBIS_URL=server.url, NUBIS_TOKEN=token or server.token or "", XDG_CONFIG_HOME=str(server.data_dir)
    )
    return subprocess.run(
        [str(nubis_executable()), "certs", *args], capture_output=True, text=True, timeout=60, env=env, cwd=REPO
    )


def issued(server: RunningServer, name: str, out: Path, *args: str) -> str:
    """Issue through the CLI into `out`; the serial."""
    result = certs(server, "issue", "--name", name, "--out", str(out), *args)
    assert result.returncode == 0, result.stderr
    listed = json.loads(certs(server, "list", "-o", "json").stdout)
    (serial,) = [serial for serial, record in listed.items() if record["name"] == name]
    return serial


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_issue_list_and_revoke_through_the_cli(server: RunningServer, tmp_path: Path) -> None:
    out = tmp_path / "alice"
    result = certs(server, "issue", "--name", "cli-alice", "--days", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "issued cli-alice (serial " in result.stdout
    assert mode(out / "tls.key") == 0o600
    assert mode(out / "tls.crt") == mode(out / "ca.crt") == 0o644
    assert mode(server.data_dir / "ca" / "ca.key") == 0o600
    assert mode(server.data_dir / "ca") == 0o700
    assert (out / "ca.crt").read_text() == (server.data_dir / "ca" / "ca.crt").read_text()
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(out / "ca.crt"), "-purpose", "sslclient", str(out / "tls.crt")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    listed = certs(server, "list", "-o", "json")
    assert "PRIVATE KEY" not in listed.stdout
    (serial,) = [s for s, record in json.loads(listed.stdout).items() if record["name"] == "cli-alice"]
    table = certs(server, "list").stdout
    assert any(line.split() == ["cli-alice", serial, line.split()[2], "valid"] for line in table.splitlines())
    revoked = certs(server, "revoke", serial)
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked cli-alice (serial {serial})" in revoked.stdout
    assert json.loads(certs(server, "list", "-o", "json").stdout)[serial]["revoked"] is True
    crl = subprocess.run(
        ["openssl", "crl", "-in", str(server.data_dir / "ca" / "ca.crl"), "-noout", "-text"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert f"Serial Number: {serial}" in crl.stdout
    missing = certs(server, "revoke", "ABCDEF")
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: no certificate with serial ABCDEF") and "HTTP 404" in missing.stderr
    bad_days = certs(server, "issue", "--days", "400", "--out", str(tmp_path / "x"))
    assert bad_days.returncode == 2 and not (tmp_path / "x").exists()


def test_the_api_is_for_authenticated_callers_only(server: RunningServer, tmp_path: Path) -> None:
    for token in (None, "nubis_wrong"):
        with server.client(token=token) as client:
            for method, path in (("GET", "/api/certs"), ("POST", "/api/certs"), ("POST", "/api/certs/AB/revoke")):
                answer = client.request(method, path, json={"name": "x"} if method == "POST" else None)
                assert answer.status_code == 401, (method, path, answer.text)
                assert "WWW-Authenticate" in answer.headers
    refused = certs(server, "issue", "--name", "nobody", "--out", str(tmp_path / "n"), token="nubis_wrong")
    assert refused.returncode == 1 and "the API token is not valid" in refused.stderr
    assert not (tmp_path / "n").exists()
    with server.client() as client:
        answer = client.post("/api/certs", json={"days": 2})
        assert answer.status_code == 201, answer.text
        body = answer.json()
        assert set(body) >= {"certificate", "key", "ca", "serial", "notAfter"}
        assert body["serial"] in client.get("/api/certs").json()
        assert body["key"] not in (server.data_dir / "ca" / "issued.json").read_text()
        for bad in ({"days": 0}, {"days": "3"}, {"name": "a b"}, {"name": 5}):
            assert client.post("/api/certs", json=bad).status_code == 400, bad


class OneConnectionServer:
    """A TLS test server on 127.0.0.1 that serves one connection with the tunnel's server context:
    answers `hello <CN>` over HTTP/1.0 after the handshake, or keeps the handshake's error."""

    def __init__(self, contexts: ServerContexts) -> None:
        self._contexts = contexts
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.error: ssl.SSLError | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        connection, _ = self._listener.accept()
        connection.settimeout(20)
        try:
            with self._contexts.current().wrap_socket(connection, server_side=True) as tls:
                peer = tls.getpeercert() or {}
                name = dict(item[0] for item in peer["subject"])["commonName"]
                tls.recv(4096)
                tls.sendall(f"HTTP/1.0 200 OK\r\nContent-Length: {6 + len(name)}\r\n\r\nhello {name}".encode())
                with contextlib.suppress(OSError):
                    tls.unwrap()  # close_notify: openssl s_client takes a bare close for a truncation
        except ssl.SSLError as exc:
            self.error = exc
            connection.close()

    def join(self) -> None:
        self._thread.join(30)
        self._listener.close()


def through(tool: str, contexts: ServerContexts, files: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    """`tool` (curl or openssl) to a `OneConnectionServer` with the issued files in `files`; the
    client's result and the server's handshake error, if any."""
    if shutil.which(tool) is None:
        skip_or_fail(f"{tool} is not installed")
    tls_server = OneConnectionServer(contexts)
    cert, key, ca = (str(files / name) for name in ("tls.crt", "tls.key", "ca.crt"))
    if tool == "curl":
        argv = ["curl", "-sS", "--max-time", "20", "--cert", cert, "--key", key, "--cacert", ca]
        argv.append(f"https://localhost:{tls_server.port}/")
        stdin = ""
    else:
        argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{tls_server.port}", "-servername", "localhost"]
        argv += ["-cert", cert, "-key", key, "-CAfile", ca, "-verify_return_error", "-verify_hostname", "localhost"]
        argv += ["-quiet", "-ign_eof"]
        stdin = "GET / HTTP/1.0\r\n\r\n"
    try:
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    finally:
        tls_server.join()
    return result, str(tls_server.error or "")


@pytest.mark.parametrize("tool", ["curl", "openssl"])
def test_standard_tls_clients_complete_the_mtls_handshake_with_issued_files_only(
    server: RunningServer, tmp_path: Path, tool: str
) -> None:
    authority = CertificateAuthority.open(server.data_dir / "ca")
    contexts = ServerContexts(authority.directory, *authority.server_certificate(["127.0.0.1", "localhost"]))
    serial = issued(server, f"{tool}-bob", tmp_path / "bob")
    result, error = through(tool, contexts, tmp_path / "bob")
    assert result.returncode == 0, result.stderr + error
    assert result.stdout.endswith(f"hello {tool}-bob")

    stranger = CertificateAuthority.open(tmp_path / "other-ca").issue(f"{tool}-mallory")
    (tmp_path / "mallory").mkdir()
    shutil.copy(tmp_path / "bob" / "ca.crt", tmp_path / "mallory" / "ca.crt")
    (tmp_path / "mallory" / "tls.crt").write_text(stranger.certificate)
    (tmp_path / "mallory" / "tls.key").write_text(stranger.key)
    result, error = through(tool, contexts, tmp_path / "mallory")
    assert "hello" not in result.stdout
    assert "unable to get local issuer certificate" in error

    assert certs(server, "revoke", serial).returncode == 0
    result, error = through(tool, contexts, tmp_path / "bob")
    assert "hello" not in result.stdout
    assert "certificate revoked" in error


def test_an_issued_file_set_is_what_httpx_needs_too(server: RunningServer, tmp_path: Path) -> None:
    """A Python client (the future `nubis tunnel`) with `client_context` and the issued files."""
    from nubis.auth.tls import client_context

    authority = CertificateAuthority.open(server.data_dir / "ca")
    contexts = ServerContexts(authority.directory, *authority.server_certificate(["127.0.0.1", "localhost"]))
    issued(server, "python-carol", tmp_path / "carol")
    files = tmp_path / "carol"
    tls_server = OneConnectionServer(contexts)
    context = client_context(files / "ca.crt", files / "tls.crt", files / "tls.key")
    try:
        with httpx.Client(verify=context) as client:
            answer = client.get(f"https://127.0.0.1:{tls_server.port}/")
    finally:
        tls_server.join()
    assert answer.text == "hello python-carol"
