"""The few Vault (OpenBao) calls a replica makes: JWT login, KV v2 reads, database
credentials, renewals and revocations.

Not hvac: a replica's start-up time is the function's cold start, and these are seven plain HTTP
calls on the event loop the processor already runs (hvac is synchronous and pulls `requests` in;
`http.py` says why not httpx either). The control plane, which configures Vault, uses hvac
(`nubis.secrets`).

Errors never carry a token, a lease id or a value: Vault's own error texts ("permission denied")
are kept, bounded, because they say what to fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from nubis.errors import PermanentError, TemporaryError
from nubis.processor.workload.http import Answer, HttpError, JsonClient

#: seconds one Vault call may take
TIMEOUT = 10.0
_MAX_DETAIL = 200


class VaultRefused(PermanentError):
    """Vault answered, and said no (403, 400): a role, policy or path must change."""


class VaultUnavailable(TemporaryError):
    """Vault did not answer, or failed (5xx): the same call may work later."""


@dataclass(frozen=True)
class Lease:
    """A Vault token or a dynamic secret's lease: seconds it lives from when it was read."""

    lease_id: str
    duration: float
    renewable: bool

    def __repr__(self) -> str:  # the lease id revokes the credentials: never shown
        return f"Lease(duration={self.duration:g}, renewable={self.renewable})"


@dataclass(frozen=True)
class DatabaseCredentials:
    username: str
    password: str
    lease: Lease

    def __repr__(self) -> str:
        return f"DatabaseCredentials(username={self.username!r}, {self.lease!r})"


class VaultClient:
    """One replica's Vault session: `login` first, then the reads; `close` at the end."""

    def __init__(self, address: str, *, ca_file: str | None = None, timeout: float = TIMEOUT) -> None:
        self.address = address.rstrip("/")
        self._http = JsonClient(self.address + "/v1", ca_file=ca_file, timeout=timeout)
        self._token: str | None = None
        #: the Vault token's lease (its accessor is not kept: the token is enough to renew itself)
        self.token_lease: Lease | None = None

    async def close(self) -> None:
        """Nothing to release (a connection per request); the token is forgotten."""
        self._token = None

    async def _call(
        self, method: str, path: str, what: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        headers = {"X-Vault-Token": self._token} if self._token else {}
        try:
            answer = await self._http.request(method, path, body=body, headers=headers)
        except HttpError as exc:
            raise VaultUnavailable(f"vault at {self.address}: {what}: {exc}") from None
        if answer.status == 404:
            return None
        if answer.status >= 400:
            detail = _errors(answer)
            error = VaultUnavailable if answer.status >= 500 or answer.status == 429 else VaultRefused
            raise error(f"vault at {self.address}: {what}: {answer.status} {detail}".rstrip())
        if answer.status == 204 or not answer.body:
            return {}
        try:
            data = answer.json()
        except ValueError:
            raise VaultUnavailable(f"vault at {self.address}: {what}: an answer that is not JSON") from None
        return data if isinstance(data, dict) else {}

    async def login(self, mount: str, role: str, jwt: str) -> Lease:
        """Log in to the JWT auth method at `mount` as `role` with the replica's identity token."""
        what = f"login at auth/{mount} as role {role}"
        data = await self._call("POST", f"auth/{quote(mount)}/login", what, {"role": role, "jwt": jwt})
        auth = (data or {}).get("auth") or {}
        token = auth.get("client_token")
        if not isinstance(token, str) or not token:
            raise VaultRefused(f"vault at {self.address}: {what}: no token in the answer")
        self._token = token
        self.token_lease = Lease("", float(auth.get("lease_duration") or 0), bool(auth.get("renewable")))
        return self.token_lease

    async def read_kv(self, mount: str, path: str) -> dict[str, str] | None:
        """The latest version of a KV v2 secret's data (None: there is no such secret)."""
        data = await self._call("GET", f"{quote(mount)}/data/{quote(path)}", f"read of {mount}/data/{path}")
        if data is None:
            return None
        values = (data.get("data") or {}).get("data")
        if not isinstance(values, dict):
            return None  # a deleted (soft) version answers data: null
        return {str(key): "" if value is None else str(value) for key, value in values.items()}

    async def database_credentials(self, mount: str, role: str) -> DatabaseCredentials:
        what = f"read of {mount}/creds/{role}"
        data = await self._call("GET", f"{quote(mount)}/creds/{quote(role)}", what)
        if data is None:
            raise VaultRefused(f"vault at {self.address}: {what}: no such database role")
        values = data.get("data") or {}
        username, password = values.get("username"), values.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            raise VaultRefused(f"vault at {self.address}: {what}: no username and password in the answer")
        lease = Lease(
            str(data.get("lease_id", "")), float(data.get("lease_duration") or 0), bool(data.get("renewable"))
        )
        return DatabaseCredentials(username, password, lease)

    async def renew_lease(self, lease: Lease, increment: float | None = None) -> Lease:
        body: dict[str, Any] = {"lease_id": lease.lease_id}
        if increment:
            body["increment"] = int(increment)
        data = await self._call("PUT", "sys/leases/renew", "renewal of the database credentials' lease", body) or {}
        return Lease(lease.lease_id, float(data.get("lease_duration") or 0), bool(data.get("renewable")))

    async def revoke_lease(self, lease: Lease) -> None:
        # the lease id in the path, so a policy can allow revoking one role's leases only
        await self._call("PUT", f"sys/leases/revoke/{lease.lease_id}", "revocation of the database credentials")

    async def renew_token(self) -> Lease:
        data = await self._call("POST", "auth/token/renew-self", "renewal of the replica's token") or {}
        auth = data.get("auth") or {}
        self.token_lease = Lease("", float(auth.get("lease_duration") or 0), bool(auth.get("renewable")))
        return self.token_lease

    async def revoke_token(self) -> None:
        """Revoke the replica's token, and with it every lease it created."""
        if self._token is not None:
            await self._call("POST", "auth/token/revoke-self", "revocation of the replica's token")
            self._token = None


def _errors(answer: Answer) -> str:
    try:
        errors = answer.json().get("errors")
    except (ValueError, AttributeError):
        errors = None
    text = "; ".join(str(item) for item in errors) if isinstance(errors, list) else ""
    return text[:_MAX_DETAIL]
