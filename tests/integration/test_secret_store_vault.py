"""The Vault backend against a real OpenBao: its layout, patches racing each other, and what it says
when Vault refuses, is missing a mount, or is down (never a value nor the token)."""

from __future__ import annotations

import asyncio
import secrets as random
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import REPO, nubis_executable
from hvac import exceptions as hvac_errors
from openbao_node import OpenBaoNode

import secret_scan
from nubis.secrets.base import SecretStoreError, SecretStoreUnavailable
from nubis.secrets.local import LocalSecretStore
from nubis.secrets.vault import VaultOptions, VaultSecretStore

VALUE = secret_scan.register(f"vault-{random.token_hex(12)}")


def store(node: OpenBaoNode, token: str | None = None, mount: str = "secret") -> VaultSecretStore:
    return VaultSecretStore(VaultOptions(addr=node.addr, token=token or node.root_token, mount=mount, timeout=3))


def tenant() -> str:
    return f"t-{random.token_hex(4)}"


def test_round_trip_and_layout(openbao: OpenBaoNode) -> None:
    vault, where = store(openbao), tenant()

    async def scenario() -> None:
        await vault.start()
        await vault.put(where, "web", "db", {"password": VALUE, "user": "app"})
        assert await vault.read(where, "web", "db") == {"password": VALUE, "user": "app"}
        assert await vault.keys(where, "web", "db") == ["password", "user"]
        assert await vault.names(where, "web") == {"db": ["password", "user"]}
        assert await vault.names(where, "empty") == {}
        assert await vault.patch(where, "web", "db", {"host": "h"}, remove=["user"]) == ["host", "password"]
        assert await vault.patch(where, "web", "missing", {"k": "v"}) is None
        assert await vault.delete(where, "web", "db") is True
        assert await vault.delete(where, "web", "db") is False
        assert await vault.read(where, "web", "db") is None
        await vault.close()

    asyncio.run(scenario())
    # every version is gone (delete removes the metadata too)
    with pytest.raises(hvac_errors.InvalidPath):  # Vault's answer for an empty folder: 404
        openbao.client().secrets.kv.v2.list_secrets(f"nubis/{where}", mount_point="secret")


@pytest.mark.parametrize("kind", ["vault", "local"])
def test_concurrent_patches_all_land(openbao: OpenBaoNode, tmp_path: Path, kind: str) -> None:
    backend = store(openbao) if kind == "vault" else LocalSecretStore.open(tmp_path)
    where = tenant()

    async def scenario() -> None:
        await backend.put(where, "web", "raced", {"base": "0"})
        await asyncio.gather(*(backend.patch(where, "web", "raced", {f"k{i}": str(i)}) for i in range(12)))
        keys = await backend.keys(where, "web", "raced")
        assert keys == sorted(["base", *(f"k{i}" for i in range(12))])
        await backend.close()

    asyncio.run(scenario())


def test_a_token_without_the_policy_is_permission_denied_without_the_token(openbao: OpenBaoNode) -> None:
    weak = openbao.token_with_policy("nubis-nothing", 'path "sys/nothing" { capabilities = ["read"] }')
    secret_scan.register(weak)
    vault = store(openbao, weak)

    async def scenario() -> None:
        await vault.start()  # it may look itself up, and not read the engine's configuration: fine
        with pytest.raises(SecretStoreError, match="permission denied") as caught:
            await vault.put(tenant(), "web", "db", {"k": VALUE})
        assert not isinstance(caught.value, SecretStoreUnavailable)
        assert weak not in str(caught.value) and VALUE not in str(caught.value)
        await vault.close()

    asyncio.run(scenario())


def test_a_bad_token_and_a_missing_mount_stop_the_start(openbao: OpenBaoNode) -> None:
    async def scenario() -> None:
        with pytest.raises(SecretStoreError, match="permission denied") as caught:
            await store(openbao, "not-a-token-0123456789").start()
        assert "not-a-token" not in str(caught.value)
        with pytest.raises(SecretStoreError, match="no KV version 2 secrets engine is mounted at 'nowhere'"):
            await store(openbao, mount="nowhere").start()

    asyncio.run(scenario())


def test_vault_down_is_a_temporary_error(free_port: Callable[[], int]) -> None:
    port = free_port()
    with socket.socket() as probe:  # nothing listens there
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    vault = VaultSecretStore(VaultOptions(addr=f"http://127.0.0.1:{port}", token="t0ken-never-shown", timeout=2))

    async def scenario() -> None:
        with pytest.raises(SecretStoreUnavailable, match="cannot connect") as caught:
            await vault.read("acme", "web", "db")
        assert "t0ken-never-shown" not in str(caught.value)

    asyncio.run(scenario())


def test_the_server_refuses_to_start_with_a_bad_vault_token(
    openbao: OpenBaoNode, tmp_path: Path, free_port: Callable[[], int]
) -> None:
    token_file = tmp_path / "vault-token"
    token_file.write_text("bogus-token-4f2a9c1d")
    started = subprocess.run(
        [
            str(nubis_executable()),
            "server",
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path / "data"),
            "--secrets-backend",
            "vault",
            "--vault-addr",
            openbao.addr,
            "--vault-token-file",
            str(token_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert started.returncode != 0
    assert "permission denied" in started.stderr and "bogus-token" not in started.stderr + started.stdout
