"""What a replica needs to know to prove who it is and fetch its own secrets: `WorkloadSpec`.

The control plane makes one per deployed generation (`nubis.control.workload`), the local agent
keeps it in the deployment it runs (desired.json) and hands it to each replica on its command line
(`--workload JSON`), with the control plane's current URL filled in. It holds addresses, names and
mounts only: never a token, a key or a secret value, so it may be logged, stored and shown.
"""

from __future__ import annotations

import re
import time
from typing import Literal

import msgspec

SecretSource = Literal["local", "vault"]

#: the audience of tokens the control plane accepts, and of those OpenBao's JWT auth accepts
CONTROL_AUDIENCE = "nubis"
VAULT_AUDIENCE = "vault"
#: seconds a token lives unless told otherwise; a replica renews it at RENEW_AT of its life
DEFAULT_TTL = 600
RENEW_AT = 0.8

#: Annotation: the Vault database role whose dynamic credentials the function's workers get
DATABASE_ROLE_ANNOTATION = "nubis.io/vault-database-role"
#: Annotations: the environment variables the workers find them in (defaults below)
DATABASE_USERNAME_ENV_ANNOTATION = "nubis.io/vault-database-username-env"
DATABASE_PASSWORD_ENV_ANNOTATION = "nubis.io/vault-database-password-env"
DEFAULT_USERNAME_ENV = "NUBIS_DB_USERNAME"
DEFAULT_PASSWORD_ENV = "NUBIS_DB_PASSWORD"
#: the prefix of the variable naming a secret volume's directory: NUBIS_SECRET_VOLUME_<NAME>
SECRET_VOLUME_ENV_PREFIX = "NUBIS_SECRET_VOLUME_"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class VaultAccess(msgspec.Struct, frozen=True, kw_only=True):
    """Where the replica logs in to Vault with its identity token, and where its secrets are."""

    address: str
    #: the JWT auth method's mount and the function's role there (`secrets/vault_delegation.py`)
    auth_mount: str
    role: str
    #: the KV v2 mount holding `nubis/<tenant>/<project>/<secret>`
    kv_mount: str
    audience: str = VAULT_AUDIENCE
    #: a CA bundle (PEM) to verify Vault's certificate with (None: the system's)
    ca_file: str | None = None


class DatabaseAccess(msgspec.Struct, frozen=True, kw_only=True):
    """Dynamic database credentials: `<mount>/creds/<role>`, into two environment variables."""

    role: str
    mount: str = "database"
    username_env: str = DEFAULT_USERNAME_ENV
    password_env: str = DEFAULT_PASSWORD_ENV


class WorkloadSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One function's workload identity and secret sources (no credential in it)."""

    tenant: str
    project: str
    #: where the values of `spec.env[].valueFrom.secretKeyRef` and secret volumes come from; None:
    #: the function references no secret
    secrets: SecretSource | None = None
    vault: VaultAccess | None = None
    database: DatabaseAccess | None = None
    #: seconds each identity token lives (the replica renews it before)
    token_ttl: int = DEFAULT_TTL
    #: where the replica reaches the control plane (renewal, local secrets); set by the agent from
    #: the issuer file when it starts the replica, so a control plane on a new port is found
    control_url: str = ""
    #: a CA bundle (PEM) to verify the control plane's certificate with (None: the system's)
    control_ca_file: str | None = None

    @property
    def needs_vault_token(self) -> bool:
        return self.vault is not None and (self.secrets == "vault" or self.database is not None)


def encode(spec: WorkloadSpec) -> str:
    return msgspec.json.encode(spec).decode()


def decode(text: str) -> WorkloadSpec:
    """The `--workload` argument; `ValueError` naming what is wrong."""
    try:
        return msgspec.json.decode(text, type=WorkloadSpec)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValueError(f"not a workload spec: {exc}") from None


def secret_volume_env(volume: str) -> str:
    """`NUBIS_SECRET_VOLUME_<NAME>`: the volume name upper-cased, anything but letters and digits as `_`."""
    return SECRET_VOLUME_ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", volume.upper())


def renew_in(expires: float, issued: float, now: float | None = None) -> float:
    """Seconds from `now` until a token living from `issued` to `expires` should be renewed."""
    moment = time.time() if now is None else now
    return max(0.0, issued + (expires - issued) * RENEW_AT - moment)
