"""Vault role delegation: one JWT role and one policy per function, limited to its own paths.

The control plane configures OpenBao/Vault once (`configure_issuer`): the JWT auth method at
`auth/<mount>` (default `jwt-nubis`) trusts the platform's workload issuer, whose keys it fetches
from `<issuer>/.well-known/jwks.json`. At each deploy (`grant`) it writes, for the function:

* the policy `nubis_<tenant>_<project>_<function>`: `read` on
  `<kv>/data/nubis/<tenant>/<project>/<secret>` for exactly the secrets the spec references, and
  when the function asks for a database role, `read` on `<db>/creds/<role>` plus `update` on
  `sys/leases/revoke/<db>/creds/<role>/*` (so a stopping replica revokes its own credentials at
  once; renewals are in Vault's default policy);
* the role of the same name: tokens whose `aud` is the Vault audience and whose `tenant`,
  `project` and `function` claims are the function's (`bound_claims`), `sub` as the user, the
  policy above and nothing else, and a *periodic* Vault token (`token_period`): the replica renews
  it while it runs, and once it stops renewing (SIGKILL) the token and every lease it made expire
  within one period.

`revoke` deletes both when the function is deleted. The `_` separator cannot occur in tenant,
project or function names (DNS labels), so two functions never share a role; names are checked
against that rule before they go into a policy, so a crafted name cannot widen a path (`*`, `+`).
hvac is synchronous: callers run these methods in a thread (`asyncio.to_thread`). It is imported
only when a method runs, so a server without Vault never loads it (the policy text needs nothing).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nubis.errors import PermanentError, TemporaryError

if TYPE_CHECKING:
    import hvac

DEFAULT_AUTH_MOUNT = "jwt-nubis"
#: the path under the KV mount where a tenant's secrets live: nubis/<tenant>/<project>/<name>
KV_PREFIX = "nubis"
#: what may go into a policy path unquoted: a DNS-like name, no glob characters; tenant, project and
#: function names have no `_` (the role name's separator), secret and database role names may
_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
_SAFE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")
_SAFE_MOUNT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")


class DelegationError(PermanentError):
    """Vault refused the configuration (a policy, a role, the auth method): the message says which."""


class DelegationUnavailable(TemporaryError):
    """Vault did not answer; the deploy is retried."""


@dataclass(frozen=True)
class FunctionGrant:
    """What one function may read in Vault."""

    tenant: str
    project: str
    function: str
    #: names of the tenant/project secrets its spec references
    secrets: Sequence[str] = ()
    #: (mount, role) of the database credentials it asks for, if any
    database: tuple[str, str] | None = None

    @property
    def name(self) -> str:
        return role_name(self.tenant, self.project, self.function)


def role_name(tenant: str, project: str, function: str) -> str:
    """`nubis_<tenant>_<project>_<function>`: the role and the policy of one function."""
    for what, value in (("tenant", tenant), ("project", project), ("function", function)):
        _check(what, value, _NAME)
    return f"nubis_{tenant}_{project}_{function}"


def _check(what: str, value: str, pattern: re.Pattern[str] = _SAFE) -> str:
    if not pattern.match(value):
        raise DelegationError(
            f"vault delegation: the {what} name {value!r} cannot go into a Vault policy "
            "(expected letters, digits and '.', '-' inside; no '*', '+', '/' or spaces)"
        )
    return value


def function_policy(grant: FunctionGrant, kv_mount: str) -> str:
    """The HCL policy of one function: its own secrets' paths and database role, nothing else."""
    _check("KV mount", kv_mount, _SAFE_MOUNT)
    lines = [f"# nubis: function {grant.function} of project {grant.project}, tenant {grant.tenant}"]
    base = f"{kv_mount.strip('/')}/data/{KV_PREFIX}/{grant.tenant}/{grant.project}"
    for secret in sorted(set(grant.secrets)):
        lines.append(f'path "{base}/{_check("secret", secret)}" {{ capabilities = ["read"] }}')
    if grant.database is not None:
        mount, role = _check("database mount", grant.database[0], _SAFE_MOUNT).strip("/"), grant.database[1]
        _check("database role", role)
        lines.append(f'path "{mount}/creds/{role}" {{ capabilities = ["read"] }}')
        lines.append(f'path "sys/leases/revoke/{mount}/creds/{role}/*" {{ capabilities = ["update"] }}')
    if len(lines) == 1:
        lines.append("# (it references no secret: this policy allows nothing)")
    return "\n".join(lines) + "\n"


class VaultDelegation:
    """Writes the JWT auth method's configuration, and each function's role and policy."""

    def __init__(
        self,
        client: Callable[[], hvac.Client],
        *,
        kv_mount: str,
        auth_mount: str = DEFAULT_AUTH_MOUNT,
        audience: str = "vault",
        token_period: int = 600,
    ) -> None:
        self._client = client
        self.kv_mount = kv_mount
        self.auth_mount = _check("auth mount", auth_mount, _SAFE_MOUNT).strip("/")
        self.audience = audience
        self.token_period = token_period

    def configure_issuer(self, issuer: str, jwks_url: str) -> None:
        """Enable the JWT auth method (once) and point it at the platform's issuer and JWKS."""
        with _calling(f"configuring auth/{self.auth_mount}"):
            client = self._client()
            mounts = client.sys.list_auth_methods()
            listed = mounts.get("data", mounts) if isinstance(mounts, dict) else {}
            if f"{self.auth_mount}/" not in listed:
                client.sys.enable_auth_method(
                    "jwt", path=self.auth_mount, description="nubis workload identity (replicas' tokens)"
                )
            client.auth.jwt.configure(
                jwks_url=jwks_url, bound_issuer=issuer, jwt_supported_algs=["ES256"], path=self.auth_mount
            )

    def grant(self, grant: FunctionGrant) -> str:
        """Write the function's policy and role (idempotent); returns the role's name."""
        name = grant.name
        with _calling(f"writing the policy and role {name}"):
            client = self._client()
            client.sys.create_or_update_policy(name, function_policy(grant, self.kv_mount), pretty_print=False)
            client.auth.jwt.create_role(
                name,
                user_claim="sub",
                allowed_redirect_uris=[],
                role_type="jwt",
                bound_audiences=[self.audience],
                bound_claims={"tenant": grant.tenant, "project": grant.project, "function": grant.function},
                bound_claims_type="string",
                claim_mappings={"tenant": "tenant", "project": "project", "function": "function", "replica": "replica"},
                token_policies=[name],
                token_period=self.token_period,
                token_type="service",
                path=self.auth_mount,
            )
        return name

    def revoke(self, tenant: str, project: str, function: str) -> None:
        """Delete the function's role and policy (a missing one is fine)."""
        name = role_name(tenant, project, function)
        with _calling(f"deleting the policy and role {name}"):
            client = self._client()
            from hvac.exceptions import InvalidPath

            with contextlib.suppress(InvalidPath):
                client.auth.jwt.delete_role(name, path=self.auth_mount)
            client.sys.delete_policy(name)


@contextlib.contextmanager
def _calling(what: str) -> Iterator[None]:
    """Vault's exceptions as ours, saying what was being done (never a token)."""
    import requests
    from hvac import exceptions as hvac_errors

    try:
        yield
    except (hvac_errors.VaultDown, hvac_errors.InternalServerError, hvac_errors.BadGateway) as exc:
        raise DelegationUnavailable(f"vault: {what}: {type(exc).__name__}") from None
    except hvac_errors.VaultError as exc:
        errors = "; ".join(map(str, exc.errors)) if isinstance(exc.errors, list) else str(exc)
        raise DelegationError(f"vault: {what}: {errors[:200]}") from None
    except (OSError, requests.RequestException) as exc:
        raise DelegationUnavailable(f"vault: {what}: {type(exc).__name__}") from None
