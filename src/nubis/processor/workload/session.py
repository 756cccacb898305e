"""A replica's workload session: its secrets resolved before any worker exists, released at stop.

`start` runs before the processor builds its zygote (whose environment the workers inherit):

1. the function's secret references come from its own configuration (`spec/secret_refs.py`);
2. their values come from the control plane (`GET /api/workload/secrets` with the replica's
   identity token; the control plane answers from the function's *stored* spec, whatever the
   replica asks) or from Vault (a JWT login as the function's role, then one KV read per secret:
   the role's policy allows exactly those paths);
3. dynamic database credentials, when the function asks for a role, from Vault, kept renewed;
4. env values and volume files are placed (`materialize.py`); the extra environment goes to the
   workers only (the processor's `secret_env`), never to the replica's own environment.

Without a database lease the Vault token is revoked as soon as the reads are done: the replica
holds no live Vault credential while it serves. `stop` (after the workers are gone) revokes the
database credentials and the token, and removes the volume files. `timings` has the start-up
figures (milliseconds) the replica logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from nubis.auth.workload_spec import CONTROL_AUDIENCE, WorkloadSpec
from nubis.errors import PermanentError, TemporaryError
from nubis.processor.workload import materialize
from nubis.processor.workload.database import DatabaseLease
from nubis.processor.workload.http import HttpError
from nubis.processor.workload.tokens import IdentityError, TokenKeeper
from nubis.processor.workload.vault import VaultClient
from nubis.spec import FunctionConfig
from nubis.spec.secret_refs import SecretRef

log = logging.getLogger("nubis.processor")

SECRETS_PATH = "api/workload/secrets"


class ControlPlaneUnavailable(TemporaryError):
    """The control plane did not answer the replica's request for its secrets."""


class WorkloadSession:
    """One replica's identity, secrets and database lease (see the module docstring)."""

    def __init__(
        self, spec: WorkloadSpec, tokens: TokenKeeper, config: FunctionConfig, secrets_dir: Path | None
    ) -> None:
        self.spec = spec
        self.tokens = tokens
        self.config = config
        self.secrets_dir = secrets_dir
        #: called when the replica can no longer serve as it started (its database credentials end)
        self.on_fatal: Callable[[str], None] = lambda reason: log.error("%s", reason)
        self.timings: dict[str, float] = {}
        self._vault: VaultClient | None = None
        self._lease: DatabaseLease | None = None
        self._renewing: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"WorkloadSession(tenant={self.spec.tenant!r}, project={self.spec.project!r})"

    async def start(self) -> dict[str, str]:
        """Resolve everything; the workers' extra environment. Raises with a message naming the
        secret or the Vault path that failed (never a value)."""
        began = time.perf_counter()
        refs = materialize.references(self.config)
        env: dict[str, str] = {}
        try:
            if refs:
                values = await self._values(refs)
                resolved = materialize.materialize(refs, values, self.secrets_dir)
                env.update(resolved.env)
                self.timings[f"secrets_{self.spec.secrets}_ms"] = (time.perf_counter() - began) * 1000
                log.info(
                    "workload: %d secret(s) from %s: %d variable(s), %d file(s) in %.1f ms (%.1f ms of requests)",
                    len(materialize.wanted_names(refs)),
                    self.spec.secrets,
                    len(resolved.env),
                    resolved.files,
                    self.timings[f"secrets_{self.spec.secrets}_ms"],
                    self.timings.get("requests_ms", 0.0),
                )
            if self.spec.database is not None:
                env.update(await self._database())
            if self._vault is not None and self._lease is None:
                await self._vault.revoke_token()  # nothing more to read: hold no live Vault token
            if refs or self.spec.database is not None:
                # an identity that stays valid while the replica runs (a new Vault login, a new read)
                self._renewing = asyncio.create_task(self.tokens.keep_renewing(), name="identity token renewal")
        except BaseException:
            await self.stop()
            raise
        return env

    async def _values(self, refs: list[SecretRef]) -> dict[str, dict[str, str]]:
        if self.spec.secrets == "vault":
            vault = await self._login()
            assert self.spec.vault is not None
            base = f"nubis/{self.spec.tenant}/{self.spec.project}"
            names = materialize.wanted_names(refs)
            began = time.perf_counter()
            read = await asyncio.gather(*(vault.read_kv(self.spec.vault.kv_mount, f"{base}/{n}") for n in names))
            self._count_request(began)
            return {name: data for name, data in zip(names, read, strict=True) if data is not None}
        return await self._from_control_plane()

    async def _from_control_plane(self) -> dict[str, dict[str, str]]:
        http = self.tokens.client()
        began = time.perf_counter()
        try:
            answer = await http.request(
                "GET", SECRETS_PATH, headers={"Authorization": f"Bearer {self.tokens.token(CONTROL_AUDIENCE)}"}
            )
        except HttpError as exc:
            raise ControlPlaneUnavailable(f"the control plane does not answer: {exc}") from None
        self._count_request(began)
        if answer.status != 200:
            try:
                reason = str(answer.json().get("error", ""))[:200]
            except (ValueError, AttributeError):
                reason = ""
            error = ControlPlaneUnavailable if answer.status >= 500 else IdentityError
            raise error(f"the control plane refused the replica's secrets ({answer.status} {reason})".rstrip())
        try:
            secrets = answer.json()["secrets"]
            return {str(name): {str(k): str(v) for k, v in values.items()} for name, values in secrets.items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ControlPlaneUnavailable(
                "the control plane's answer with the replica's secrets is not readable"
            ) from None

    async def _login(self) -> VaultClient:
        if self._vault is None:
            vault = self.spec.vault
            if vault is None:
                raise IdentityError("the function's secrets are in Vault, but its workload spec names none")
            client = VaultClient(vault.address, ca_file=vault.ca_file)
            began = time.perf_counter()
            try:
                await client.login(vault.auth_mount, vault.role, self.tokens.token(vault.audience))
            except BaseException:
                await client.close()
                raise
            self._vault = client
            self.timings["vault_login_ms"] = self._count_request(began)
        return self._vault

    async def _database(self) -> dict[str, str]:
        database = self.spec.database
        assert database is not None
        vault = await self._login()
        began = time.perf_counter()
        credentials = await vault.database_credentials(database.mount, database.role)
        self.timings["database_ms"] = (time.perf_counter() - began) * 1000
        self._lease = DatabaseLease(vault, credentials, lambda reason: self.on_fatal(reason))
        self._lease.start()
        log.info(
            "workload: database credentials of role %s (user %s, lease %g s) in %.1f ms",
            database.role,
            credentials.username,
            credentials.lease.duration,
            self.timings["database_ms"],
        )
        return {database.username_env: credentials.username, database.password_env: credentials.password}

    def _count_request(self, began: float) -> float:
        """Milliseconds since `began`, added to the start's time spent waiting on requests."""
        elapsed = (time.perf_counter() - began) * 1000
        self.timings["requests_ms"] = self.timings.get("requests_ms", 0.0) + elapsed
        return elapsed

    async def stop(self) -> None:
        """Revoke what the replica holds and remove its volume files (idempotent)."""
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
            self._renewing = None
        if self._lease is not None:
            await self._lease.stop()
            self._lease = None
        if self._vault is not None:
            with contextlib.suppress(PermanentError, TemporaryError):  # it ends with its period anyway
                await self._vault.revoke_token()
            await self._vault.close()
            self._vault = None
        materialize.remove(self.secrets_dir)


def workload_session(
    spec: WorkloadSpec | None, tokens: dict[str, str] | None, config: FunctionConfig, secrets_dir: Path | None
) -> WorkloadSession | None:
    """The replica's session from its command line (`--workload`, `--identity-fd`, `--secrets-dir`)."""
    if spec is None:
        return None
    if tokens is None:
        raise IdentityError("--workload needs the identity hand-over (--identity-fd)")
    keeper = TokenKeeper(tokens, spec.control_url, ca_file=spec.control_ca_file)
    return WorkloadSession(spec, keeper, config, secrets_dir)
