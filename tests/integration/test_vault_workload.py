"""Vault role delegation and dynamic database credentials against a real OpenBao and PostgreSQL.

OpenBao trusts the workload issuer through its JWKS, served here by a small HTTP server over the
issuer file's real document (the control plane's own route is tested in
test_workload_identity_server.py). The replica's side is the replica's own code (VaultClient,
DatabaseLease); the control plane's is VaultDelegation. PostgreSQL is a server of the test's own
whose host connections need a password (password_postgres.py).
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from harness import wait_until
from openbao_node import OpenBaoNode
from password_postgres import can_log_in, database_engine, password_postgres, role_exists
from postgres_node import PostgresNode

from nubis.auth.workload_identity import VAULT_AUDIENCE, WorkloadIdentity, mint
from nubis.auth.workload_keys import IssuerKeys
from nubis.processor.workload.database import DatabaseLease
from nubis.processor.workload.vault import VaultClient, VaultRefused
from nubis.secrets.vault_delegation import DelegationError, FunctionGrant, VaultDelegation

TENANT, PROJECT = "acme", "shop"
DB_ROLE = "app"
#: mounts of this module's own in the session's OpenBao
JWT_MOUNT, DB_MOUNT = "jwt-direct", "database-direct"


class JwksServer:
    """`GET /.well-known/jwks.json` answering the issuer file's JWKS (what the control plane serves)."""

    def __init__(self, keys: IssuerKeys, port: int) -> None:
        self.keys = keys

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(keys.jwks()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def vault(openbao: OpenBaoNode) -> OpenBaoNode:
    """The session's OpenBao; this module's mounts are its own (MOUNTS)."""
    return openbao


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory, free_port: Callable[[], int]) -> Iterator[JwksServer]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    keys = IssuerKeys(tmp_path_factory.mktemp("issuer") / "issuer.json")
    keys.ensure(url, url)
    server = JwksServer(keys, port)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def delegation(vault: OpenBaoNode, issuer: JwksServer) -> VaultDelegation:
    delegated = VaultDelegation(vault.client, kv_mount="secret", auth_mount=JWT_MOUNT, token_period=60)
    delegated.configure_issuer(issuer.url, issuer.url + "/.well-known/jwks.json")
    return delegated


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory, free_port: Callable[[], int]) -> Iterator[PostgresNode]:
    yield from password_postgres(tmp_path_factory.mktemp("pg"), free_port())


@pytest.fixture(scope="module")
def engine(vault: OpenBaoNode, postgres: PostgresNode) -> str:
    """Vault's database secrets engine over `postgres`: `app` leases live 6 s (renewable), `short` 3 s."""
    database_engine(vault, postgres, DB_MOUNT, {DB_ROLE: ("6s", "1h"), "short": ("3s", "3s")})
    return DB_MOUNT


def put_secret(vault: OpenBaoNode, name: str, values: dict[str, str]) -> None:
    vault.client().secrets.kv.v2.create_or_update_secret(
        f"nubis/{TENANT}/{PROJECT}/{name}", values, mount_point="secret"
    )


async def logged_in(
    vault: OpenBaoNode, issuer: JwksServer, function: str, role: str, replica: str = "g1-r0"
) -> VaultClient:
    client = VaultClient(vault.addr)
    token = mint(issuer.keys, WorkloadIdentity(TENANT, PROJECT, function, replica), audience=VAULT_AUDIENCE)
    try:
        await client.login(JWT_MOUNT, role, token)
    except BaseException:
        await client.close()
        raise
    return client


def test_a_function_reads_its_own_secrets_and_nothing_else(
    vault: OpenBaoNode, issuer: JwksServer, delegation: VaultDelegation
) -> None:
    put_secret(vault, "orders-db", {"password": "orders-only-value"})
    put_secret(vault, "payroll-db", {"password": "payroll-only-value"})
    orders = delegation.grant(FunctionGrant(TENANT, PROJECT, "orders", ["orders-db"]))
    payroll = delegation.grant(FunctionGrant(TENANT, PROJECT, "payroll", ["payroll-db"]))

    async def scenario() -> dict[str, float]:
        began = time.perf_counter()
        client = await logged_in(vault, issuer, "orders", orders)
        login = time.perf_counter() - began
        try:
            began = time.perf_counter()
            assert await client.read_kv("secret", f"nubis/{TENANT}/{PROJECT}/orders-db") == {
                "password": "orders-only-value"
            }
            read = time.perf_counter() - began
            with pytest.raises(VaultRefused, match="permission denied") as denied:
                await client.read_kv("secret", f"nubis/{TENANT}/{PROJECT}/payroll-db")
            assert "payroll-only-value" not in denied.value.message
        finally:
            await client.close()
        # orders' identity cannot log in as payroll's role (bound claims), nor with a control-plane token
        with pytest.raises(VaultRefused, match="bound claim"):
            await logged_in(vault, issuer, "orders", payroll)
        stray = VaultClient(vault.addr)
        try:
            control_token = mint(issuer.keys, WorkloadIdentity(TENANT, PROJECT, "orders", "g1-r0"))
            with pytest.raises(VaultRefused, match="audience"):
                await stray.login(JWT_MOUNT, orders, control_token)
        finally:
            await stray.close()
        return {"login": login, "read": read}

    figures = asyncio.run(scenario())
    print(f"\nvault: JWT login {figures['login'] * 1000:.1f} ms, one KV read {figures['read'] * 1000:.1f} ms")


def test_a_key_rotation_is_followed_by_vault(
    vault: OpenBaoNode, issuer: JwksServer, delegation: VaultDelegation
) -> None:
    role = delegation.grant(FunctionGrant(TENANT, PROJECT, "rotated", []))
    issuer.keys.rotate()

    async def scenario() -> None:
        client = await logged_in(vault, issuer, "rotated", role, replica="g2-r0")
        await client.close()

    asyncio.run(scenario())


def test_a_deleted_functions_role_is_gone(vault: OpenBaoNode, issuer: JwksServer, delegation: VaultDelegation) -> None:
    role = delegation.grant(FunctionGrant(TENANT, PROJECT, "gone", ["orders-db"]))
    delegation.revoke(TENANT, PROJECT, "gone")
    assert role not in vault.client().sys.list_policies()["data"]["policies"]
    delegation.revoke(TENANT, PROJECT, "gone")  # twice is fine

    async def scenario() -> None:
        with pytest.raises(VaultRefused, match="role"):
            await logged_in(vault, issuer, "gone", role)

    asyncio.run(scenario())
    with pytest.raises(DelegationError, match="cannot go into a Vault policy"):
        delegation.grant(FunctionGrant(TENANT, PROJECT, "bad", ["*"]))


def test_database_credentials_are_renewed_then_revoked_at_stop(
    vault: OpenBaoNode, issuer: JwksServer, delegation: VaultDelegation, postgres: PostgresNode, engine: str
) -> None:
    role = delegation.grant(FunctionGrant(TENANT, PROJECT, "reporting", [], (engine, DB_ROLE)))
    lost: list[str] = []

    async def scenario() -> tuple[str, str, float]:
        client = await logged_in(vault, issuer, "reporting", role)
        began = time.perf_counter()
        credentials = await client.database_credentials(engine, DB_ROLE)
        issued = time.perf_counter() - began
        lease = DatabaseLease(client, credentials, lost.append)
        lease.start()
        try:
            assert can_log_in(postgres, credentials.username, credentials.password)
            assert not can_log_in(postgres, credentials.username, "wrong-password"), "the server must check passwords"
            # the 6 s lease is renewed at 4 s: past its first end, the credentials still work
            deadline = time.monotonic() + 30
            while lease.renewals < 2 and not lost and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert not lost
            assert lease.renewals >= 2, "the lease and the token were not renewed"
            assert can_log_in(postgres, credentials.username, credentials.password)
            assert not lost
        finally:
            await lease.stop()
            await client.revoke_token()
            await client.close()
        return credentials.username, credentials.password, issued

    username, password, issued = asyncio.run(scenario())
    print(f"\nvault: database credentials issued in {issued * 1000:.1f} ms")
    assert not can_log_in(postgres, username, password), "revoked credentials must not log in"
    assert not role_exists(postgres, username)


def test_credentials_nobody_renews_expire_by_their_ttl(
    vault: OpenBaoNode, issuer: JwksServer, delegation: VaultDelegation, postgres: PostgresNode, engine: str
) -> None:
    """What a SIGKILLed replica leaves: a lease nobody renews or revokes."""
    role = delegation.grant(FunctionGrant(TENANT, PROJECT, "killed", [], (engine, "short")))

    async def scenario() -> tuple[str, str]:
        client = await logged_in(vault, issuer, "killed", role)
        try:
            credentials = await client.database_credentials(engine, "short")
        finally:
            await client.close()  # no renewal, no revocation: as if the replica were killed
        return credentials.username, credentials.password

    username, password = asyncio.run(scenario())
    assert can_log_in(postgres, username, password)
    wait_until(lambda: not can_log_in(postgres, username, password), 30, "the unrenewed credentials still work")
