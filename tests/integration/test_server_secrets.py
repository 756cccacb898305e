"""The secrets API and `nubis secrets` against a real `nubis server`, on each backend: the local
encrypted store and Vault (a real OpenBao). Values go in and never come back out: not in an answer,
an error, the audit log, nor the server's log."""

from __future__ import annotations

import json
import os
import secrets as random
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import REPO, nubis_executable
from openbao_node import OpenBaoNode
from server_harness import RunningServer

import secret_scan

#: values registered with the suite's scan of everything written to disk
VALUES = [secret_scan.register(f"val-{random.token_hex(12)}") for _ in range(6)]
#: least privilege for the control plane: its own prefix of the KV engine, nothing else
CONTROL_POLICY = """
path "secret/data/nubis/*" { capabilities = ["create", "read", "update", "delete", "list"] }
path "secret/metadata/nubis/*" { capabilities = ["create", "read", "update", "delete", "list"] }
"""


class Backend:
    def __init__(self, kind: str, server: RunningServer, project: str, vault: OpenBaoNode | None) -> None:
        self.kind, self.server, self.project, self.vault = kind, server, project, vault

    def api(self) -> httpx.Client:
        return self.server.client()

    def path(self, name: str | None = None) -> str:
        base = f"/api/projects/{self.project}/secrets"
        return base if name is None else f"{base}/{name}"


def start_server(directory: Path, port: int, *args: str, extra_env: dict[str, str] | None = None) -> RunningServer:
    return RunningServer(directory, port, *args, extra_env=extra_env).wait_ready()


@pytest.fixture(scope="module", params=["local", "vault"])
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, free_port: Callable[[], int]
) -> Iterator[Backend]:
    directory = tmp_path_factory.mktemp(f"secrets-{request.param}")
    args: list[str] = []
    vault: OpenBaoNode | None = None
    if request.param == "vault":
        vault = request.getfixturevalue("openbao")
        token = vault.token_with_policy("nubis-control-plane", CONTROL_POLICY)
        token_file = directory / "vault-token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        secret_scan.register(token, home=("vault-token",))
        args = ["--secrets-backend", "vault", "--vault-addr", vault.addr, "--vault-token-file", str(token_file)]
    server = start_server(directory / "server", free_port(), *args)
    project = f"sec-{random.token_hex(4)}"
    try:
        with server.client() as api:
            created = api.post("/api/projects", json={"metadata": {"name": project}, "spec": {}})
            assert created.status_code == 201, created.text
        yield Backend(request.param, server, project, vault)
    finally:
        server.stop()
        log = server.stderr_path.read_text(errors="replace")
        assert not [value for value in VALUES if value in log], "a secret value in the server's log"


def no_value_in(*texts: str) -> None:
    for text in texts:
        assert not [value for value in VALUES if value in text], text


def test_put_get_list_patch_delete_answer_keys_only(backend: Backend) -> None:
    with backend.api() as api:
        put = api.put(backend.path("db"), json={"data": {"password": VALUES[0], "user": "app"}})
        assert put.status_code == 200, put.text
        assert put.json() == {"name": "db", "project": backend.project, "keys": ["password", "user"]}
        got = api.get(backend.path("db"))
        assert got.status_code == 200 and got.json()["keys"] == ["password", "user"]
        api.put(backend.path("tls.certs"), json={"stringData": {"tls.crt": VALUES[1]}})
        listed = api.get(backend.path())
        assert listed.json() == {
            "secrets": [
                {"name": "db", "project": backend.project, "keys": ["password", "user"]},
                {"name": "tls.certs", "project": backend.project, "keys": ["tls.crt"]},
            ]
        }
        patched = api.patch(backend.path("db"), json={"data": {"user": None, "host": "db.local"}})
        assert patched.status_code == 200 and patched.json()["keys"] == ["host", "password"]
        replaced = api.put(backend.path("db"), json={"data": {"a": "1"}, "stringData": {"a": VALUES[2], "b": "2"}})
        assert replaced.json()["keys"] == ["a", "b"]
        no_value_in(put.text, got.text, listed.text, patched.text, replaced.text)
        assert api.delete(backend.path("db")).status_code == 204
        assert api.delete(backend.path("db")).status_code == 404
        assert api.get(backend.path("db")).status_code == 404
        assert api.patch(backend.path("db"), json={"data": {"k": "v"}}).status_code == 404
        assert api.delete(backend.path("tls.certs")).status_code == 204
        assert api.get(backend.path()).json() == {"secrets": []}


def test_the_values_are_where_the_backend_keeps_them(backend: Backend) -> None:
    with backend.api() as api:
        assert api.put(backend.path("stored"), json={"data": {"k": VALUES[3]}}).status_code == 200
    if backend.vault is not None:
        read = backend.vault.client().secrets.kv.v2.read_secret_version(
            f"nubis/nuclio/{backend.project}/stored", mount_point="secret", raise_on_deleted_version=True
        )
        assert read["data"]["data"] == {"k": VALUES[3]}
    else:
        stored = backend.server.data_dir / "secrets" / "nuclio" / backend.project / "stored.json"
        assert stored.is_file() and VALUES[3].encode() not in stored.read_bytes()
        assert (stored.stat().st_mode & 0o777) == 0o600


@pytest.mark.parametrize(
    ("method", "name", "body", "status", "text"),
    [
        ("PUT", "Bad_Name", {"data": {"k": "v"}}, 400, "DNS-1123 subdomain"),
        ("GET", "a..b", None, 400, "DNS-1123 subdomain"),
        ("PUT", "ok", {"data": {"bad key": VALUES[4]}}, 400, "key 'bad key'"),
        ("PUT", "ok", {"data": {"k": 5}}, 400, "data.k: expected a string value, found a number"),
        ("PUT", "ok", {"data": {"k": None}}, 400, "data.k: expected a string value, found null"),
        ("PUT", "ok", {"values": {"k": VALUES[4]}}, 400, "unknown body key 'values'"),
        ("PUT", "ok", {}, 400, "expected {"),
        ("PUT", "ok", {"data": {"k": "x" * (1024 * 1024 + 1)}}, 413, "at most 1048576"),
        ("PUT", "ok", {"data": [VALUES[4]]}, 400, "data: expected a map"),
    ],
)
def test_refusals_name_what_is_wrong_and_never_a_value(
    backend: Backend, method: str, name: str, body: Any, status: int, text: str
) -> None:
    with backend.api() as api:
        answer = api.request(method, backend.path(name), json=body)
    assert answer.status_code == status, answer.text
    assert text in answer.json()["error"]
    no_value_in(answer.text)


def test_a_project_missing_from_the_tenant_is_404(backend: Backend) -> None:
    with backend.api() as api:
        missing = api.put("/api/projects/no-such-project/secrets/db", json={"data": {"k": VALUES[4]}})
        assert missing.status_code == 404 and "Project not found" in missing.json()["error"]
        assert api.get("/api/projects/no-such-project/secrets").status_code == 404
        # the project exists, but in another tenant than the request names
        assert api.post("/api/tenants", json={"name": "elsewhere"}).status_code in (201, 409)
        foreign = api.get(backend.path(), headers={"X-Nuclio-Project-Namespace": "elsewhere"})
        assert foreign.status_code == 404, foreign.text
        no_value_in(missing.text, foreign.text)


def test_the_audit_log_records_the_writes_without_values(backend: Backend) -> None:
    with backend.api() as api:
        api.put(backend.path("audited"), json={"data": {"k": VALUES[5]}})
        api.put(backend.path("audited"), json={"data": {"bad key": VALUES[5]}})
        records = api.get("/api/audit", params={"since": "1h"}).json()["records"]
    mine = [r for r in records if r["path"] == backend.path("audited")]
    assert {r["outcome"] for r in mine} >= {"allowed", "failed"}
    no_value_in(json.dumps(records))


def cli(server: RunningServer, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NUBIS_URL=server.url, NUBIS_TOKEN=server.token or "", XDG_CONFIG_HOME=str(server.data_dir))
    return subprocess.run(
        [str(nubis_executable()), *args], capture_output=True, text=True, timeout=60, env=env, cwd=REPO, input=stdin
    )


def test_the_cli_sets_lists_and_deletes_without_echoing_values(backend: Backend, tmp_path: Path) -> None:
    project = ["--project", backend.project]
    secret_scan.register(VALUES[1], home=("cert.pem",))  # where the test itself puts them
    secret_scan.register(VALUES[2], home=("app.env",))
    (tmp_path / "cert.pem").write_text(VALUES[1])
    (tmp_path / "app.env").write_text(f"# comment\n\nUSER=app\nPASSWORD={VALUES[2]}\n")
    set_ = ("secrets", "set", *project, "cli-db")
    runs = [
        cli(backend.server, *set_, f"TOKEN={VALUES[0]}", "--from-file", f"tls.pem={tmp_path / 'cert.pem'}"),
        cli(backend.server, *set_, "--from-env-file", str(tmp_path / "app.env"), "--merge"),
        cli(backend.server, *set_, "--from-file", "STDIN=-", "--merge", stdin=VALUES[3]),
    ]
    for done in runs:
        assert done.returncode == 0, done.stderr
    assert runs[-1].stdout.strip() == (
        f"secret cli-db set in project {backend.project}: keys PASSWORD, STDIN, TOKEN, USER, tls.pem"
    )
    keys = cli(backend.server, "secrets", "get-keys", *project, "cli-db")
    assert keys.stdout.split() == ["PASSWORD", "STDIN", "TOKEN", "USER", "tls.pem"]
    listed = cli(backend.server, "secrets", "list", *project, "-o", "json")
    all_keys = ["PASSWORD", "STDIN", "TOKEN", "USER", "tls.pem"]
    assert {"name": "cli-db", "project": backend.project, "keys": all_keys} in json.loads(listed.stdout)
    table = cli(backend.server, "secrets", "list", *project)
    rows = [row.split(maxsplit=1) for row in table.stdout.splitlines()]
    assert ["cli-db", ", ".join(all_keys)] in rows
    bad = cli(backend.server, "secrets", "set", *project, "cli-db", VALUES[4])
    assert bad.returncode == 2 and "argument 1 after the name: expected KEY=VALUE" in bad.stderr
    deleted = cli(backend.server, "secrets", "delete", *project, "cli-db")
    assert deleted.returncode == 0 and "deleted" in deleted.stdout
    gone = cli(backend.server, "secrets", "get-keys", *project, "cli-db")
    assert gone.returncode == 1 and "Secret not found" in gone.stderr
    no_value_in(*(r.stdout + r.stderr for r in (*runs, keys, listed, table, bad, deleted, gone)))
