"""The Vault (or OpenBao) backend: each secret one KV version 2 entry at `<mount>/nubis/<tenant>/<project>/<name>`.

The layout puts a tenant's, a project's and a function's secrets under path prefixes a Vault policy
can grant alone (the role delegation of `vault_delegation.py` gives each function read on exactly
its own entries). The control plane authenticates with its own token, which needs, on
`<mount>/data/nubis/*` and `<mount>/metadata/nubis/*`: create, read, update, delete, list.

hvac is synchronous (requests underneath): every call runs in a thread (`asyncio.to_thread`), each
thread with its own client (a requests session is not meant to be shared between threads), and with
a timeout on every request. Vault's errors become ours (`SecretStoreUnavailable` when Vault is down
or overloaded, `SecretStoreError` when it refuses), and their messages name the operation and the
secret, never a value nor the token.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import hvac
import requests
from hvac import exceptions as hvac_errors

from nubis.errors import NubisError
from nubis.secrets.base import (
    BackendKind,
    SecretStoreError,
    SecretStoreUnavailable,
    check_name,
    check_values,
)

DEFAULT_MOUNT = "secret"
#: the folder under the mount that holds every tenant's secrets (vault_delegation.KV_PREFIX)
PREFIX = "nubis"
#: seconds one HTTP request to Vault may take (connect and read)
REQUEST_TIMEOUT = 10.0
#: check-and-set retries of a patch racing another process writing the same secret
PATCH_ATTEMPTS = 5
#: secrets read at once when listing a project
LIST_CONCURRENCY = 8
_T = TypeVar("_T")


@dataclass(frozen=True)
class VaultOptions:
    """Where Vault is and how the control plane logs in (`repr` never shows the token)."""

    addr: str
    token: str = field(repr=False)
    mount: str = DEFAULT_MOUNT
    #: a CA bundle to verify Vault's TLS certificate with (None: the system's)
    ca_file: Path | None = None
    timeout: float = REQUEST_TIMEOUT

    @classmethod
    def from_settings(
        cls, addr: str | None, token: str | None, token_file: Path | None, mount: str = DEFAULT_MOUNT
    ) -> VaultOptions:
        """Options from the server's settings; SecretStoreError names the option that is missing or wrong."""
        if not addr:
            raise SecretStoreError("--secrets-backend vault needs --vault-addr (or NUBIS_VAULT_ADDR)")
        if not addr.startswith(("http://", "https://")):
            raise SecretStoreError(f"--vault-addr: expected an http:// or https:// URL, found {addr!r}")
        if token is None and token_file is not None:
            try:
                token = token_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not text"
                raise SecretStoreError(f"--vault-token-file {token_file}: cannot read it: {reason}") from None
        if not token:
            raise SecretStoreError(
                "--secrets-backend vault needs the control plane's Vault token: --vault-token-file FILE "
                "or NUBIS_VAULT_TOKEN"
            )
        if not mount.strip("/") or any(c in mount for c in "*+ \t\n"):
            raise SecretStoreError(f"--vault-mount: expected a Vault mount path such as 'secret', found {mount!r}")
        return cls(addr=addr.rstrip("/"), token=token, mount=mount.strip("/"))


class VaultSecretStore:
    """Secrets in Vault's KV version 2 engine (see the module docstring)."""

    kind: BackendKind = "vault"

    def __init__(self, options: VaultOptions) -> None:
        self.options = options
        self.mount = options.mount
        self._local = threading.local()
        self._clients: list[hvac.Client] = []
        self._clients_lock = threading.Lock()
        # patches of this process one at a time; check-and-set guards against other writers
        self._patching = asyncio.Lock()

    def __repr__(self) -> str:
        return f"VaultSecretStore({self.options.addr!r}, mount={self.mount!r})"

    def client(self) -> hvac.Client:
        """This thread's client, logged in with the control plane's token (for `vault_delegation` too)."""
        client: hvac.Client | None = getattr(self._local, "client", None)
        if client is None:
            verify: bool | str = str(self.options.ca_file) if self.options.ca_file else True
            client = hvac.Client(
                url=self.options.addr, token=self.options.token, timeout=self.options.timeout, verify=verify
            )
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def path(self, tenant: str, project: str, name: str | None = None) -> str:
        """The KV path (under the mount) of a secret, or of the project's folder when `name` is None."""
        folder = f"{PREFIX}/{check_name(tenant, field='tenant')}/{check_name(project, field='project')}"
        return folder if name is None else f"{folder}/{check_name(name)}"

    async def start(self) -> None:
        """Check the token and the mount now, so that a wrong one stops the server with one clear line."""
        await self._call("checking the control plane's token", lambda c: c.auth.token.lookup_self())
        try:
            await self._call(
                f"reading the KV engine's configuration at {self.mount!r}",
                lambda c: c.secrets.kv.v2.read_configuration(mount_point=self.mount),
            )
        except SecretStoreError as exc:
            if isinstance(exc.__cause__, hvac_errors.InvalidPath):
                raise SecretStoreError(
                    f"vault at {self.options.addr}: no KV version 2 secrets engine is mounted at {self.mount!r} "
                    "(--vault-mount)"
                ) from None
            if not isinstance(exc.__cause__, hvac_errors.Forbidden):
                raise
            # A token allowed the secrets but not the engine's configuration: nothing more to check.

    async def put(self, tenant: str, project: str, name: str, values: Mapping[str, str]) -> None:
        path, checked = self.path(tenant, project, name), check_values(name, values)
        await self._call(
            f"writing secret {name!r}",
            lambda c: c.secrets.kv.v2.create_or_update_secret(path, secret=checked, mount_point=self.mount),
        )

    async def patch(
        self, tenant: str, project: str, name: str, values: Mapping[str, str], remove: Collection[str] = ()
    ) -> list[str] | None:
        path = self.path(tenant, project, name)
        async with self._patching:
            return await self._patch(path, name, values, remove)

    async def _patch(
        self, path: str, name: str, values: Mapping[str, str], remove: Collection[str]
    ) -> list[str] | None:
        for _ in range(PATCH_ATTEMPTS):
            current = await self._call(f"reading secret {name!r}", lambda c: self._read(c, path))
            if current is None:
                return None
            data, version = current
            merged = {k: v for k, v in data.items() if k not in remove}
            merged.update(values)
            checked = check_values(name, merged)
            try:
                await self._call(f"writing secret {name!r}", functools.partial(self._write, path, checked, version))
            except SecretStoreError as exc:
                if isinstance(exc.__cause__, hvac_errors.InvalidRequest) and "check-and-set" in str(exc.__cause__):
                    continue  # another writer came in between: merge into its version
                raise
            return sorted(checked)
        raise SecretStoreUnavailable(f"secret {name!r} kept changing while being patched; try again")

    async def keys(self, tenant: str, project: str, name: str) -> list[str] | None:
        values = await self.read(tenant, project, name)
        return None if values is None else sorted(values)

    async def names(self, tenant: str, project: str) -> dict[str, list[str]]:
        folder = self.path(tenant, project)
        listed = await self._call("listing secrets", lambda c: self._list(c, folder))
        limit = asyncio.Semaphore(LIST_CONCURRENCY)

        async def keys_of(name: str) -> list[str] | None:
            async with limit:
                return await self.keys(tenant, project, name)

        found = await asyncio.gather(*(keys_of(name) for name in listed))
        return {name: keys for name, keys in zip(listed, found, strict=True) if keys is not None}

    async def read(self, tenant: str, project: str, name: str) -> dict[str, str] | None:
        path = self.path(tenant, project, name)
        current = await self._call(f"reading secret {name!r}", lambda c: self._read(c, path))
        return None if current is None else current[0]

    async def delete(self, tenant: str, project: str, name: str) -> bool:
        path = self.path(tenant, project, name)

        def delete(client: hvac.Client) -> bool:
            if self._read(client, path) is None:
                return False
            client.secrets.kv.v2.delete_metadata_and_all_versions(path, mount_point=self.mount)
            return True

        return await self._call(f"deleting secret {name!r}", delete)

    async def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.adapter.close()
        self._local = threading.local()

    def _write(self, path: str, values: Mapping[str, str], cas: int, client: hvac.Client) -> None:
        """Write `values` only if the latest version is still `cas` (Vault's check-and-set)."""
        client.secrets.kv.v2.create_or_update_secret(path, secret=dict(values), cas=cas, mount_point=self.mount)

    def _read(self, client: hvac.Client, path: str) -> tuple[dict[str, str], int] | None:
        """The latest version's values and number, None when absent (or its latest version deleted)."""
        try:
            answer = client.secrets.kv.v2.read_secret_version(
                path, mount_point=self.mount, raise_on_deleted_version=False
            )
        except hvac_errors.InvalidPath:
            return None
        body = answer.get("data") or {}
        data, metadata = body.get("data"), body.get("metadata") or {}
        if data is None or metadata.get("deletion_time") or metadata.get("destroyed"):
            return None
        return {str(k): str(v) for k, v in data.items()}, int(metadata.get("version") or 0)

    def _list(self, client: hvac.Client, folder: str) -> list[str]:
        try:
            answer = client.secrets.kv.v2.list_secrets(folder, mount_point=self.mount)
        except hvac_errors.InvalidPath:  # Vault answers 404 for an empty folder
            return []
        listed = (answer.get("data") or {}).get("keys") or []
        return sorted(str(k) for k in listed if not str(k).endswith("/"))

    async def _call(self, doing: str, call: Callable[[hvac.Client], _T]) -> _T:
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(lambda: call(self.client())), timeout=self.options.timeout * 2 + 1
            )
        except NubisError:
            raise
        except Exception as exc:
            raise vault_failure(exc, doing, self.options.addr) from exc


def vault_failure(exc: BaseException, doing: str, addr: str) -> NubisError:
    """One of our errors for a Vault or transport exception: what was being done, never a value or token.

    Vault's own error text is left out: it may quote a request's input.
    """
    where = f"vault at {addr}: {doing}"
    unavailable = (
        hvac_errors.VaultDown,
        hvac_errors.InternalServerError,
        hvac_errors.BadGateway,
        hvac_errors.RateLimitExceeded,
        hvac_errors.VaultNotInitialized,
        requests.exceptions.RequestException,
        TimeoutError,
        OSError,
    )
    if isinstance(exc, unavailable):
        return SecretStoreUnavailable(f"{where}: {_unavailable_reason(exc)}; try again")
    if isinstance(exc, hvac_errors.Forbidden | hvac_errors.Unauthorized):
        return SecretStoreError(
            f"{where}: permission denied; the control plane's token (--vault-token-file) needs create, read, "
            f"update, delete and list on <mount>/data/{PREFIX}/* and <mount>/metadata/{PREFIX}/*, and must not "
            "have expired"
        )
    if isinstance(exc, hvac_errors.InvalidPath):
        return SecretStoreError(f"{where}: no such path (is a KV version 2 engine mounted at --vault-mount?)")
    return SecretStoreError(f"{where}: Vault answered {type(exc).__name__}")


def _unavailable_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | requests.exceptions.Timeout):
        return "no answer in time"
    if isinstance(exc, requests.exceptions.ConnectionError | ConnectionError):
        return "cannot connect"
    if isinstance(exc, hvac_errors.VaultDown):
        return "Vault is sealed or down"
    return f"Vault answered {type(exc).__name__}"
