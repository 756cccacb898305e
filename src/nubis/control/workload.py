"""The control plane's side of workload identity: the issuer, each deploy's `WorkloadSpec`, and the
Vault delegation kept in step with the functions.

`WorkloadService.start` writes the issuer file (`nubis.auth.workload_keys`: the issuer URL, the
URL replicas reach this server at, the signing key, rotated when it is due) and, with Vault,
points Vault's JWT auth method at this issuer's JWKS. The reconciler then asks `prepare` before
each deploy: it checks the function's database role against what the operator allowed its tenant
and project, writes the function's Vault role and policy (exactly the secrets its spec references,
`nubis.secrets.vault_delegation`), and returns the spec the platform hands to the replicas.
`forget` removes the role and policy with the function. `renew` is the token renewal the replicas
ask for (`POST /api/workload/token`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from nubis.auth.workload_identity import (
    CONTROL_AUDIENCE,
    VerifiedToken,
    WorkloadIdentity,
    WorkloadTokenRefused,
    WorkloadVerifier,
    mint,
)
from nubis.auth.workload_keys import DEFAULT_GRACE, DEFAULT_ROTATE_AFTER, IssuerKeys, IssuerKeysError, issuer_path
from nubis.auth.workload_spec import (
    DATABASE_PASSWORD_ENV_ANNOTATION,
    DATABASE_ROLE_ANNOTATION,
    DATABASE_USERNAME_ENV_ANNOTATION,
    DEFAULT_PASSWORD_ENV,
    DEFAULT_USERNAME_ENV,
    ENV_NAME,
    DatabaseAccess,
    SecretSource,
    VaultAccess,
    WorkloadSpec,
)
from nubis.control.settings import ServerSettings
from nubis.errors import SpecError, TemporaryError
from nubis.secrets.base import SecretBackend
from nubis.secrets.vault_delegation import DelegationError, DelegationUnavailable, FunctionGrant, VaultDelegation
from nubis.spec import FunctionConfig, parse_config
from nubis.spec.secret_refs import secret_references
from nubis.store.records import FunctionRecord

log = logging.getLogger("nubis.server")

#: seconds between two checks whether the signing key is due for rotation
ROTATION_CHECK_INTERVAL = 3_600.0
#: seconds between tries to configure Vault's JWT auth method at start: doubling up to the max
VAULT_RETRY_FIRST, VAULT_RETRY_MAX = 1.0, 60.0


@dataclass(frozen=True)
class VaultTarget:
    """The Vault the replicas log in to (the control plane's own credential stays in `delegation`)."""

    address: str
    kv_mount: str
    auth_mount: str
    audience: str
    database_mount: str
    ca_file: str | None = None


def allowed_database_roles(entries: Sequence[str]) -> dict[tuple[str, str | None], set[str]]:
    """`TENANT[/PROJECT]=ROLE` entries (`--vault-database-role`) by (tenant, project or None)."""
    allowed: dict[tuple[str, str | None], set[str]] = {}
    for entry in entries:
        where, _, role = entry.partition("=")
        tenant, _, project = where.partition("/")
        allowed.setdefault((tenant, project or None), set()).add(role)
    return allowed


def database_access(
    config: FunctionConfig, tenant: str, project: str, allowed: dict[tuple[str, str | None], set[str]], mount: str
) -> DatabaseAccess | None:
    """The database credentials the function asks for (`nubis.io/vault-database-role`), if its
    tenant or project may have that role; `SpecError` naming the annotation otherwise."""
    annotations = config.metadata.annotations or {}
    role = annotations.get(DATABASE_ROLE_ANNOTATION)
    if role is None:
        return None
    field = f"metadata.annotations.{DATABASE_ROLE_ANNOTATION}"
    if role not in allowed.get((tenant, None), set()) | allowed.get((tenant, project), set()):
        raise SpecError(
            f"the database role {role!r} is not allowed in tenant {tenant}, project {project}",
            field=field,
            expected="a role the operator allowed with --vault-database-role TENANT[/PROJECT]=ROLE",
        )
    names = {}
    for key, default in (
        (DATABASE_USERNAME_ENV_ANNOTATION, DEFAULT_USERNAME_ENV),
        (DATABASE_PASSWORD_ENV_ANNOTATION, DEFAULT_PASSWORD_ENV),
    ):
        name = str(annotations.get(key, default))
        if not ENV_NAME.match(name):
            raise SpecError("not an environment variable name", field=f"metadata.annotations.{key}", found=name)
        names[key] = name
    return DatabaseAccess(
        role=str(role),
        mount=mount,
        username_env=names[DATABASE_USERNAME_ENV_ANNOTATION],
        password_env=names[DATABASE_PASSWORD_ENV_ANNOTATION],
    )


class WorkloadService:
    """The issuer of this control plane and what each deploy needs of it."""

    def __init__(
        self,
        settings: ServerSettings,
        *,
        secret_source: SecretSource = "local",
        vault: VaultTarget | None = None,
        delegation: VaultDelegation | None = None,
    ) -> None:
        self.settings = settings
        self.issuer = settings.workload_issuer
        self.control_url = settings.workload_issuer
        self.keys = IssuerKeys(issuer_path(settings.data_dir))
        self.verifier = WorkloadVerifier(self.keys)
        self.secret_source: SecretSource = secret_source
        self.vault = vault
        self.delegation = delegation
        self.token_ttl = settings.workload_token_ttl
        self.allowed_roles = allowed_database_roles(settings.vault_database_roles)
        self._vault_configured = False

    @property
    def jwks_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/jwks.json"

    @property
    def audiences(self) -> frozenset[str]:
        """The audiences a replica may ask a token for."""
        return frozenset({CONTROL_AUDIENCE, *((self.vault.audience,) if self.vault else ())})

    # -- the issuer ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Create the issuer file or bring it up to date (issuer URL, a key due for rotation)."""
        if self.keys.ensure(self.issuer, self.control_url, rotate_after=DEFAULT_ROTATE_AFTER, grace=DEFAULT_GRACE):
            log.info("workload identity issuer %s (key %s)", self.issuer, self.keys.signer()[0])

    async def run(self) -> None:
        """While the server runs: point Vault at this issuer (retried until Vault answers: it fetches
        the JWKS from this API, so only once the API serves), then check hourly whether the signing
        key is due for rotation. Until cancelled."""
        delay = VAULT_RETRY_FIRST
        while self.delegation is not None and not self._vault_configured:
            try:
                await self._configure_vault()
            except (DelegationError, DelegationUnavailable) as exc:
                log.warning(
                    "vault: cannot configure auth/%s (retrying in %g s): %s",
                    self.delegation.auth_mount,
                    delay,
                    exc.message,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, VAULT_RETRY_MAX)
        while True:
            await asyncio.sleep(ROTATION_CHECK_INTERVAL)
            try:
                await asyncio.to_thread(self.start)
            except (OSError, IssuerKeysError) as exc:
                log.warning("cannot rotate the workload signing key: %s", exc)

    async def _configure_vault(self) -> None:
        if self.delegation is not None and not self._vault_configured:
            await asyncio.to_thread(self.delegation.configure_issuer, self.issuer, self.jwks_url)
            self._vault_configured = True
            log.info("vault: auth/%s trusts the workload issuer %s", self.delegation.auth_mount, self.issuer)

    # -- deploys ------------------------------------------------------------------------------------
    async def prepare(self, record: FunctionRecord) -> WorkloadSpec:
        """The workload spec of this generation; writes its Vault role and policy first."""
        config = parse_config(record.config).config
        tenant, project = record.namespace, record.project
        names = sorted({ref.secret for ref in secret_references(config)})
        mount = self.vault.database_mount if self.vault else "database"
        database = database_access(config, tenant, project, self.allowed_roles, mount)
        if database is not None and (self.vault is None or self.delegation is None):
            raise SpecError(
                "dynamic database credentials come from Vault, and this server has none",
                field=f"metadata.annotations.{DATABASE_ROLE_ANNOTATION}",
                expected="a server started with a Vault (--vault-addr)",
            )
        source: SecretSource | None = self.secret_source if names else None
        access: VaultAccess | None = None
        if self.vault is not None and self.delegation is not None and (source == "vault" or database):
            await self._configure_vault()
            grant = FunctionGrant(
                tenant, project, record.name, names, (database.mount, database.role) if database else None
            )
            role = await asyncio.to_thread(self.delegation.grant, grant)
            access = VaultAccess(
                address=self.vault.address,
                auth_mount=self.vault.auth_mount,
                role=role,
                kv_mount=self.vault.kv_mount,
                audience=self.vault.audience,
                ca_file=self.vault.ca_file,
            )
        return WorkloadSpec(
            tenant=tenant,
            project=project,
            secrets=source,
            vault=access,
            database=database,
            token_ttl=self.token_ttl,
            control_url=self.control_url,
            control_ca_file=str(self.settings.tls_cert.resolve()) if self.settings.tls_cert else None,
        )

    async def forget(self, record: FunctionRecord) -> None:
        """Delete the function's Vault role and policy (it was deleted)."""
        if self.delegation is None:
            return
        try:
            await asyncio.to_thread(self.delegation.revoke, record.namespace, record.project, record.name)
        except TemporaryError as exc:
            log.warning("vault: the role of deleted function %s is left: %s", record.name, exc.message)

    # -- tokens -------------------------------------------------------------------------------------
    def verify(self, token: str) -> VerifiedToken:
        return self.verifier.verify(token)

    def renew(self, identity: WorkloadIdentity, audience: str) -> tuple[str, float]:
        """A fresh token of `audience` for a replica whose current token verified; (token, exp)."""
        if audience not in self.audiences:
            raise WorkloadTokenRefused(f"no workload token is issued for the audience {audience!r}")
        issued = time.time()
        return mint(self.keys, identity, audience=audience, ttl=self.token_ttl, now=issued), issued + self.token_ttl


def create_workload(settings: ServerSettings, secrets: SecretBackend | None = None) -> WorkloadService:
    """The server's workload issuer, with the Vault delegation when the server has a Vault
    (`--vault-addr`: the secrets' backend, or only the database credentials' source). Vault's
    client, with the control plane's own token, is the secret store's (`nubis.secrets.vault`)."""
    if not settings.vault_addr:
        return WorkloadService(settings, secret_source=settings.secrets_backend)
    from nubis.secrets.vault import VaultOptions, VaultSecretStore

    if isinstance(secrets, VaultSecretStore):
        store = secrets
    else:
        token = settings.vault_token.get_secret_value() if settings.vault_token else None
        options = VaultOptions.from_settings(
            settings.vault_addr, token, settings.vault_token_file, settings.vault_mount
        )
        store = VaultSecretStore(options)
    delegation = VaultDelegation(
        store.client,
        kv_mount=store.mount,
        auth_mount=settings.vault_jwt_mount,
        audience=settings.vault_jwt_audience,
        token_period=settings.workload_token_ttl,
    )
    target = VaultTarget(
        address=store.options.addr,
        kv_mount=store.mount,
        auth_mount=delegation.auth_mount,
        audience=settings.vault_jwt_audience,
        database_mount=settings.vault_database_mount,
        ca_file=str(store.options.ca_file) if store.options.ca_file else None,
    )
    return WorkloadService(settings, secret_source=settings.secrets_backend, vault=target, delegation=delegation)
