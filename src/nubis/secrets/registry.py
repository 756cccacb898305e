"""The secret backend `nubis server --secrets-backend` names, built from the server's settings.

The Vault backend is imported only when chosen: hvac and requests stay out of a local server.
"""

from __future__ import annotations

from pathlib import Path

from nubis.secrets.base import BACKEND_KINDS, SecretBackend, SecretStoreError
from nubis.secrets.local import LocalSecretStore


async def open_backend(
    kind: str,
    *,
    data_dir: Path,
    secret_key: str | None = None,
    vault_addr: str | None = None,
    vault_token: str | None = None,
    vault_token_file: Path | None = None,
    vault_mount: str = "secret",
) -> SecretBackend:
    """The backend of `kind`, checked ready to serve: the local store's key loaded (or made), or
    Vault's token and mount checked. Raises SecretStoreError (or SecretStoreUnavailable) saying which
    option to change; neither the key nor the token appears in it."""
    if kind == "local":
        return LocalSecretStore.open(data_dir, secret_key)
    if kind == "vault":
        from nubis.secrets.vault import VaultOptions, VaultSecretStore

        store = VaultSecretStore(VaultOptions.from_settings(vault_addr, vault_token, vault_token_file, vault_mount))
        await store.start()
        return store
    raise SecretStoreError(f"--secrets-backend: expected one of {', '.join(BACKEND_KINDS)}, found {kind!r}")
