"""Secrets resolved into a replica at its start, through a real `nubis server`, from each backend:
the local store (the replica asks the control plane with its identity token) and OpenBao (the
replica logs in with its identity token as its function's role and reads its paths).

The function reads `spec.env[].valueFrom.secretKeyRef` from its environment and a secret volume's
file from `NUBIS_SECRET_VOLUME_CREDS`; another function's secret stays out of its reach on both
paths; a missing secret fails the start naming the field, never a value.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openbao_node import OpenBaoNode
from server_harness import RunningServer, inline_function, replica_pid, wait_state

from nubis.auth.workload_identity import VAULT_AUDIENCE, WorkloadIdentity, mint
from nubis.auth.workload_keys import IssuerKeys, issuer_path

READER = b"""
import json
import os
import stat


def handler(context, event):
    directory = os.environ.get("NUBIS_SECRET_VOLUME_CREDS", "")
    path = os.path.join(directory, "password")
    with open(path) as handle:
        password = handle.read()
    return json.dumps({
        "api_key": os.environ.get("API_KEY"),
        "optional": os.environ.get("OPTIONAL_VAR"),
        "directory": directory,
        "password": password,
        "mode": stat.S_IMODE(os.stat(path).st_mode),
    })
"""
TENANT, PROJECT = "nuclio", "default"
API_KEY = "wi-api-key-value-4711"
PASSWORD = "wi-volume-password-0815"
OTHER = "wi-other-function-only-value"
#: the JWT auth mount of this module's own in the session's OpenBao
JWT_MOUNT = "jwt-secrets"


def reader_spec(api_secret: str = "wi-api") -> dict[str, Any]:
    return {
        "env": [
            {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": api_secret, "key": "key"}}},
            {"name": "OPTIONAL_VAR", "valueFrom": {"secretKeyRef": {"name": "wi-nope", "key": "k", "optional": True}}},
        ],
        "volumes": [
            {
                "volume": {"name": "creds", "secret": {"secretName": "wi-db-creds"}},
                "volumeMount": {"name": "creds", "mountPath": "/etc/creds"},
            }
        ],
    }


@dataclass
class Served:
    server: RunningServer
    backend: str


@pytest.fixture(scope="module", params=["local", "vault"])
def served(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    nubis_data_dir: Path,
    free_port: Callable[[], int],
) -> Iterator[Served]:
    """A server of each secrets backend, holding the three secrets of the tests."""
    directory = tmp_path_factory.mktemp(f"secrets-{request.param}")
    args: list[str] = []
    if request.param == "vault":
        vault: OpenBaoNode = request.getfixturevalue("openbao")
        token_file = directory / "vault-token"
        token_file.write_text(vault.root_token)
        token_file.chmod(0o600)
        args = ["--secrets-backend", "vault", "--vault-addr", vault.addr, "--vault-token-file", str(token_file)]
        args += ["--vault-jwt-mount", JWT_MOUNT]
    server = RunningServer(directory / "data", free_port(), *args, env_cache=nubis_data_dir / "envs")
    try:
        server.wait_ready()
        with server.client() as api:
            for name, key, value in (
                ("wi-api", "key", API_KEY),
                ("wi-db-creds", "password", PASSWORD),
                ("wi-other", "key", OTHER),
            ):
                answer = api.put(f"/api/projects/{PROJECT}/secrets/{name}", json={"data": {key: value}})
                assert answer.status_code in (200, 201, 204), answer.text
        yield Served(server, request.param)
    finally:
        server.stop()


def deploy(server: RunningServer, name: str, **spec: Any) -> dict[str, Any]:
    with server.client() as api:
        answer = api.post("/api/functions", json=inline_function(name, READER, **spec))
        assert answer.status_code in (201, 202), answer.text
        return wait_state(api, name, {"ready", "error"}, timeout=180)


def replica_of(server: RunningServer, name: str) -> str:
    with server.client() as api:
        names = api.get(f"/api/functions/{name}/replicas").json()["names"]
    assert names, f"{name} has no replica"
    return str(names[0])


def test_a_function_gets_its_secrets_at_start(served: Served) -> None:
    server, backend = served.server, served.backend
    name = f"wi-reader-{backend}"
    status = deploy(server, name, **reader_spec())
    assert status["status"]["state"] == "ready", status["status"]
    with server.client() as api:
        answer = api.post("/api/function_invocations", headers={"x-nuclio-function-name": name})
        assert answer.status_code == 200, answer.text
        seen = json.loads(answer.text)
        logs = api.get(f"/api/functions/{name}/logs").text
    assert seen["api_key"] == API_KEY
    assert seen["password"] == PASSWORD
    assert seen["optional"] is None, "an optional reference to a missing secret is left unset"
    assert seen["mode"] == 0o600
    directory = Path(seen["directory"])
    assert directory.name == "creds" and directory.parent.name == replica_of(server, name)
    pattern = rf"workload: 3 secret\(s\) from {backend}: 2 variable\(s\), 1 file\(s\) in ([\d.]+) ms \(([\d.]+) ms"
    match = re.search(pattern, logs)
    assert match, logs[-2000:]
    print(f"\nsecret resolution at replica start ({backend}): {match[1]} ms, {match[2]} ms of it requests")
    for secret in (API_KEY, PASSWORD):
        assert secret not in logs, "a secret value in the function's logs"
        assert secret not in server.stderr_text(), "a secret value in the server's log"
    with server.client() as api:
        assert api.delete(f"/api/functions/{name}").status_code in (200, 202, 204)
    deadline = time.monotonic() + 30
    while directory.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not directory.exists(), "the secret volume's files outlived the replica"


def test_a_secret_deleted_after_the_deploy_fails_the_next_start_naming_it(served: Served) -> None:
    """The deploy checks the references exist (the secrets API's rule); a replica started later,
    after the secret went, fails its start with the field and the name, never a value."""
    server = served.server
    name = f"wi-missing-{served.backend}"
    with server.client() as api:
        assert (
            api.put(f"/api/projects/{PROJECT}/secrets/wi-fleeting", json={"data": {"key": API_KEY}}).status_code < 300
        )
        assert deploy(server, name, **reader_spec(api_secret="wi-fleeting"))["status"]["state"] == "ready"
        assert api.delete(f"/api/projects/{PROJECT}/secrets/wi-fleeting").status_code == 204
        pid = replica_pid(server, name)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        logs = ""
        while time.monotonic() < deadline:
            logs = api.get(f"/api/functions/{name}/logs").text
            if "wi-fleeting" in logs and "does not exist" in logs:
                break
            time.sleep(0.2)
        api.delete(f"/api/functions/{name}")
    assert "spec.env[0].valueFrom.secretKeyRef: secret 'wi-fleeting' does not exist" in logs, logs[-2000:]
    assert API_KEY not in logs and PASSWORD not in logs


def test_a_function_cannot_get_another_functions_secret(served: Served, request: pytest.FixtureRequest) -> None:
    server, backend = served.server, served.backend
    mine, theirs = f"wi-mine-{backend}", f"wi-theirs-{backend}"
    assert deploy(server, mine, **reader_spec())["status"]["state"] == "ready"
    other_spec = {"env": [{"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "wi-other", "key": "key"}}}]}
    assert deploy(server, theirs, **other_spec)["status"]["state"] in ("ready", "error")
    keys = IssuerKeys(issuer_path(server.data_dir))
    identity = WorkloadIdentity(TENANT, PROJECT, mine, replica_of(server, mine))
    # the control plane answers the stored spec's references, whatever the replica asks for
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {mint(keys, identity)}"}) as client:
        answer = client.get("/api/workload/secrets", params={"name": "wi-other"})
        assert answer.status_code == 200, answer.text
        assert answer.headers["cache-control"] == "no-store"
        assert set(answer.json()["secrets"]) == {"wi-api", "wi-db-creds"}
        assert answer.json()["missing"] == ["wi-nope"]
        assert OTHER not in answer.text
    if backend == "vault":
        vault: OpenBaoNode = request.getfixturevalue("openbao")
        role = f"nubis_{TENANT}_{PROJECT}_{mine}"
        login = httpx.post(
            f"{vault.addr}/v1/auth/{JWT_MOUNT}/login",
            json={"role": role, "jwt": mint(keys, identity, audience=VAULT_AUDIENCE)},
        )
        assert login.status_code == 200, login.text
        token = login.json()["auth"]["client_token"]
        headers = {"X-Vault-Token": token}
        own = httpx.get(f"{vault.addr}/v1/secret/data/nubis/{TENANT}/{PROJECT}/wi-api", headers=headers)
        assert own.status_code == 200 and own.json()["data"]["data"] == {"key": API_KEY}
        other = httpx.get(f"{vault.addr}/v1/secret/data/nubis/{TENANT}/{PROJECT}/wi-other", headers=headers)
        assert other.status_code == 403 and OTHER not in other.text
        listing = httpx.request("LIST", f"{vault.addr}/v1/secret/metadata/nubis/{TENANT}/{PROJECT}", headers=headers)
        assert listing.status_code == 403
        # its identity cannot log in as the other function's role
        theirs_login = httpx.post(
            f"{vault.addr}/v1/auth/{JWT_MOUNT}/login",
            json={"role": f"nubis_{TENANT}_{PROJECT}_{theirs}", "jwt": mint(keys, identity, audience=VAULT_AUDIENCE)},
        )
        assert theirs_login.status_code in (400, 403) and OTHER not in theirs_login.text
        httpx.post(f"{vault.addr}/v1/auth/token/revoke-self", headers=headers)
    with server.client() as api:
        api.delete(f"/api/functions/{mine}")
        api.delete(f"/api/functions/{theirs}")
    if backend == "vault":
        policies = request.getfixturevalue("openbao").client().sys.list_policies()["data"]["policies"]
        assert f"nubis_{TENANT}_{PROJECT}_{mine}" not in policies, "the role and policy go with the function"
