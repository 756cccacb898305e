"""Workload identity on a real `nubis server`: the issuer's public documents, the replica's tokens
(on a pipe, not in its argv or environment), and the control plane's workload routes refusing
every token that is not a live replica's own (another issuer, expired, another audience, a stopped
replica, an API token)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from harness import REPO
from server_harness import RunningServer, inline_function, started_server, wait_state

from nubis.auth.workload_identity import VAULT_AUDIENCE, WorkloadIdentity, WorkloadVerifier, mint
from nubis.auth.workload_keys import IssuerKeys, issuer_path

HELLO = (REPO / "examples" / "hello" / "main.py").read_bytes()
FUNCTION = "wi-hello"
TENANT, PROJECT = "nuclio", "default"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, nubis_data_dir: Path, free_port: Callable[[], int]
) -> Iterator[RunningServer]:
    yield from started_server(tmp_path_factory.mktemp("wi-server"), free_port(), env_cache=nubis_data_dir / "envs")


@pytest.fixture(scope="module")
def replica(server: RunningServer) -> str:
    """The name of the one replica of a deployed function."""
    with server.client() as api:
        assert api.post("/api/functions", json=inline_function(FUNCTION, HELLO)).status_code in (201, 202)
        wait_state(api, FUNCTION, {"ready"})
        names = api.get(f"/api/functions/{FUNCTION}/replicas").json()["names"]
    assert len(names) == 1
    return str(names[0])


def keys_of(server: RunningServer) -> IssuerKeys:
    return IssuerKeys(issuer_path(server.data_dir))


def workload_client(server: RunningServer, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_the_issuer_documents_are_public(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        discovery = anonymous.get("/.well-known/openid-configuration")
        assert discovery.status_code == 200, discovery.text
        document = discovery.json()
        assert document["issuer"] == server.url
        assert document["jwks_uri"] == f"{server.url}/.well-known/jwks.json"
        assert document["id_token_signing_alg_values_supported"] == ["ES256"]
        jwks = anonymous.get("/.well-known/jwks.json")
        assert jwks.status_code == 200 and "max-age" in jwks.headers["cache-control"]
        keys = jwks.json()["keys"]
        assert keys and all(key["kty"] == "EC" and "d" not in key for key in keys)
        assert anonymous.get("/openid/v1/jwks").json() == jwks.json()


def test_the_replica_got_its_token_on_a_pipe_only(server: RunningServer, replica: str) -> None:
    """Neither the replica's command line nor its environment (nor its workers') holds a JWT."""
    found = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if str(server.data_dir).encode() not in cmdline + environ:
            continue
        assert b"eyJ" not in cmdline, f"a JWT in the command line of pid {proc.name}"
        assert b"eyJ" not in environ, f"a JWT in the environment of pid {proc.name}"
        if b"nubis.processor.replica" in cmdline:
            found += 1
            assert b"--identity-fd" in cmdline and b"--workload" in cmdline
    assert found >= 1, "the replica process was not found"
    desired = (server.data_dir / "agent" / "desired.json").read_text()
    assert "eyJ" not in desired and '"workload"' in desired


def test_a_live_replica_renews_its_token(server: RunningServer, replica: str) -> None:
    keys = keys_of(server)
    identity = WorkloadIdentity(TENANT, PROJECT, FUNCTION, replica)
    with workload_client(server, mint(keys, identity)) as client:
        began = time.perf_counter()
        answer = client.post("/api/workload/token", json={})
        elapsed = time.perf_counter() - began
        assert answer.status_code == 200, answer.text
        assert answer.headers["cache-control"] == "no-store"
        renewed = WorkloadVerifier(keys).verify(answer.json()["token"])
        assert renewed.identity == identity and renewed.expires > time.time() + 500
        print(f"\nworkload token renewal round trip: {elapsed * 1000:.1f} ms")
        # a token for Vault is issued only when the server has a Vault
        assert client.post("/api/workload/token", json={"audience": VAULT_AUDIENCE}).status_code == 401


def _forged_issuer(tmp_path: Path, issuer: str) -> IssuerKeys:
    other = IssuerKeys(tmp_path / "other" / "issuer.json")
    other.ensure(issuer, issuer)
    return other


def test_tokens_that_are_not_a_live_replicas_own_are_refused(
    server: RunningServer, replica: str, tmp_path: Path
) -> None:
    keys = keys_of(server)
    own = WorkloadIdentity(TENANT, PROJECT, FUNCTION, replica)
    copied = (server.data_dir / "identity" / "issuer.json").read_text().replace(server.url, "http://127.0.0.1:1")
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "issuer.json").write_text(copied)
    refused = {
        "another issuer's key": mint(_forged_issuer(tmp_path, server.url), own),
        "the same key, another issuer": mint(IssuerKeys(tmp_path / "copy" / "issuer.json"), own),
        "expired": mint(keys, own, ttl=60, now=time.time() - 200),
        "for vault": mint(keys, own, audience=VAULT_AUDIENCE),
        "a stopped replica": mint(keys, WorkloadIdentity(TENANT, PROJECT, FUNCTION, "g999-r0")),
        "another tenant": mint(keys, WorkloadIdentity("other", PROJECT, FUNCTION, replica)),
        "a function that does not exist": mint(keys, WorkloadIdentity(TENANT, PROJECT, "nope", "g1-r0")),
        "an API token": server.token or "",
        "garbage": "eyJhbGciOiJub25lIn0.e30.",
    }
    for what, token in refused.items():
        with workload_client(server, token) as client:
            for method, path in (("POST", "/api/workload/token"), ("GET", "/api/workload/secrets")):
                answer = client.request(method, path)
                assert answer.status_code == 401, f"{what}: {method} {path} answered {answer.status_code}"
                assert "WWW-Authenticate" in answer.headers
                assert token[:20] not in answer.text or not token, f"{what}: the answer echoes the token"
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        assert anonymous.get("/api/workload/secrets").status_code == 401
    # refusals are audited, with no token in the record
    with server.client() as api:
        audit = api.get("/api/audit", params={"since": "1h"})
    if audit.status_code == 200:
        text = json.dumps(audit.json())
        assert "/api/workload/" in text
        assert all(token[:40] not in text for token in refused.values() if len(token) > 40)


def test_the_token_claims_name_the_replica(server: RunningServer, replica: str) -> None:
    token = mint(keys_of(server), WorkloadIdentity(TENANT, PROJECT, FUNCTION, replica))
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["sub"] == f"system:nubis:{TENANT}:{PROJECT}:{FUNCTION}:{replica}"
    assert claims["iss"] == server.url
