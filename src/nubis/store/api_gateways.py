"""`ApiGatewaysMixin`: the API gateway methods of `Store` (NUCLIO.md §9), and the routing data
the gateway process polls.

A gateway's `config` is its `{metadata, spec}` as the API accepted it, less the basic-auth
password: only a salted PBKDF2 hash of that is kept (`hash_password` / `verify_password`), so
nothing read back from the database or the API holds it. Every write bumps `generation` and
`updated_at`; status writes are compare-and-set on the generation (a provisioning verdict on an
old spec never lands on a newer one). `routing_marker()` changes with every write and delete, so
the gateway process can poll it cheaply and re-read `routing_table()` only when it moved.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nubis.errors import Conflict, NotFound, PreconditionFailed
from nubis.store.base import StoreBase, rowcount
from nubis.store.models import ApiGatewayRow, ProjectRow
from nubis.store.projects import project_does_not_exist
from nubis.store.records import utc_now

#: PBKDF2-SHA256 rounds of a stored basic-auth password (checked once per credential by a caching gateway).
PASSWORD_ROUNDS = 120_000
_SCHEME = "pbkdf2_sha256"


def hash_password(password: str) -> str:
    """`pbkdf2_sha256$rounds$salt$hash` (base64): what the store keeps instead of the password."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, PASSWORD_ROUNDS)
    return f"{_SCHEME}${PASSWORD_ROUNDS}${_b64(salt)}${_b64(digest)}"


def verify_password(encoded: str, candidate: str) -> bool:
    """Whether `candidate` is the password `encoded` (from `hash_password`) was made from."""
    try:
        scheme, rounds, salt, digest = encoded.split("$")
        if scheme != _SCHEME:
            return False
        actual = hashlib.pbkdf2_hmac("sha256", candidate.encode(), base64.b64decode(salt), int(rounds))
    except ValueError:
        return False
    return hmac.compare_digest(actual, base64.b64decode(digest))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def api_gateway_not_found(name: str) -> NotFound:
    return NotFound(f"Api-Gateway not found: API gateway {name!r} does not exist")


@dataclass
class ApiGatewayRecord:
    """One stored gateway; `config` is `{metadata, spec}` without the password."""

    name: str
    project: str
    namespace: str
    host: str
    path: str
    config: dict[str, Any]
    status: dict[str, Any]
    password_hash: str | None
    generation: int
    created_at: datetime
    updated_at: datetime

    @property
    def spec(self) -> dict[str, Any]:
        spec = self.config.get("spec")
        return spec if isinstance(spec, dict) else {}

    @property
    def functions(self) -> list[str]:
        """The upstream functions' names, in the order the spec gives them."""
        names = []
        for upstream in self.spec.get("upstreams") or []:
            target = upstream.get("nucliofunction") if isinstance(upstream, dict) else None
            if isinstance(target, dict) and isinstance(target.get("name"), str):
                names.append(target["name"])
        return names


@dataclass(frozen=True)
class Upstream:
    """Where a share of a gateway's requests go: `percentage` of them, the two shares summing to 100."""

    function: str
    percentage: int
    port: int = 0
    rewrite_target: str = ""


@dataclass(frozen=True)
class GatewayRoute:
    """What the gateway process needs to route one API gateway (only `ready` ones are routed)."""

    name: str
    project: str
    host: str
    path: str
    state: str
    authentication_mode: str
    upstreams: tuple[Upstream, ...]
    username: str = ""
    password_hash: str | None = None
    #: the gateway's tenant: an access key must be allowed to invoke in it (and in `project`)
    namespace: str = ""


class ApiGatewaysMixin(StoreBase):
    async def list_api_gateways(self, project: str | None = None) -> list[ApiGatewayRecord]:
        statement = select(ApiGatewayRow).order_by(ApiGatewayRow.name)
        if project is not None:
            statement = statement.where(ApiGatewayRow.project == project)
        async with self._session("list API gateways") as session:
            return [_record(row) for row in await session.scalars(statement)]

    async def get_api_gateway(self, name: str) -> ApiGatewayRecord | None:
        async with self._session(f"read API gateway {name}") as session:
            row = await session.get(ApiGatewayRow, name)
            return _record(row) if row else None

    async def create_api_gateway(
        self, name: str, project: str, namespace: str, config: dict[str, Any], password_hash: str | None
    ) -> ApiGatewayRecord:
        """Store a new gateway in state `waitingForProvisioning`; `Conflict` if the name exists,
        `PreconditionFailed` if the project is missing or another gateway has its host + path."""
        host, path = _host_path(config)
        async with self._session(f"create API gateway {name}", write=True) as session:
            if await session.get(ApiGatewayRow, name) is not None:
                raise Conflict(f"Api-Gateway already exists: API gateway {name!r} exists; update it with PUT")
            if await session.get(ProjectRow, project) is None:
                raise project_does_not_exist(project)
            await _refuse_taken_route(session, name, host, path)
            now = utc_now()
            row = ApiGatewayRow(
                name=name,
                project=project,
                namespace=namespace,
                host=host,
                path=path,
                config=dict(config),
                status={"name": name, "state": "waitingForProvisioning"},
                password_hash=password_hash,
                generation=1,
                created_at=now,
                updated_at=now,
            )
            try:
                async with session.begin_nested():
                    session.add(row)
            except IntegrityError:
                raise PreconditionFailed(
                    f"API gateway {name!r} lost a race for its name or host {host}{path}"
                ) from None
            return _record(row)

    async def update_api_gateway(
        self, name: str, config: dict[str, Any], password_hash: str | None
    ) -> ApiGatewayRecord:
        """Replace the gateway's config (generation + 1, state `waitingForProvisioning` again)."""
        host, path = _host_path(config)
        async with self._session(f"update API gateway {name}", write=True) as session:
            row = await session.get(ApiGatewayRow, name, with_for_update=True, populate_existing=True)
            if row is None:
                raise api_gateway_not_found(name)
            await _refuse_taken_route(session, name, host, path)
            row.host, row.path = host, path
            row.config = dict(config)
            row.password_hash = password_hash
            row.status = {"name": name, "state": "waitingForProvisioning"}
            row.generation += 1
            row.updated_at = utc_now()
            try:
                await session.flush()
            except IntegrityError:
                raise PreconditionFailed(f"API gateway {name!r} lost a race for host {host}{path}") from None
            return _record(row)

    async def set_api_gateway_status(self, name: str, status: dict[str, Any], *, only_if_generation: int) -> bool:
        """Replace `status` while the gateway's generation is still `only_if_generation`."""
        statement = (
            update(ApiGatewayRow)
            .where(ApiGatewayRow.name == name, ApiGatewayRow.generation == only_if_generation)
            .values(status=dict(status), updated_at=utc_now())
        )
        async with self._session(f"set the status of API gateway {name}", write=True) as session:
            result = await session.execute(statement.execution_options(synchronize_session=False))
            return rowcount(result) > 0

    async def delete_api_gateway(self, name: str) -> bool:
        """Delete the gateway; False if it did not exist."""
        async with self._session(f"delete API gateway {name}", write=True) as session:
            result = await session.execute(delete(ApiGatewayRow).where(ApiGatewayRow.name == name))
            return rowcount(result) > 0

    async def api_gateways_using(self, function: str) -> list[ApiGatewayRecord]:
        """Gateways with `function` among their upstreams (a JSON field: read all, filter here;
        a platform has few gateways)."""
        return [record for record in await self.list_api_gateways() if function in record.functions]

    async def api_gateways_to_provision(self) -> list[ApiGatewayRecord]:
        state = ApiGatewayRow.status["state"].as_string()
        statement = select(ApiGatewayRow).where(state == "waitingForProvisioning").order_by(ApiGatewayRow.name)
        async with self._session("list API gateways to provision") as session:
            return [_record(row) for row in await session.scalars(statement)]

    async def routing_marker(self) -> tuple[int, datetime | None]:
        """(count, newest updated_at) of the gateways: it changes with every create, update, status
        write and delete, so a poller re-reads `routing_table()` only when it moved."""
        statement = select(func.count(), func.max(ApiGatewayRow.updated_at))
        async with self._session("read the API gateways' change marker") as session:
            count, newest = (await session.execute(statement)).one()
            return int(count), newest

    async def routing_table(self) -> tuple[tuple[int, datetime | None], list[GatewayRoute]]:
        """The change marker and every gateway's routing data, read in one transaction."""
        marker = await self.routing_marker()
        return marker, [gateway_route(record) for record in await self.list_api_gateways()]


def gateway_route(record: ApiGatewayRecord) -> GatewayRoute:
    """The routing data of one gateway: the canary is the upstream carrying a percentage (the
    second when both do), the primary gets the rest."""
    spec = record.spec
    raw = [u for u in spec.get("upstreams") or [] if isinstance(u, dict)]
    shares = [_percentage(u) for u in raw]
    if len(raw) == 2:
        canary = 1 if shares[1] else 0
        shares[canary] = max(0, min(100, shares[canary]))
        shares[1 - canary] = 100 - shares[canary]
    else:
        shares = [100] * len(raw)
    upstreams = tuple(
        Upstream(
            function=str((u.get("nucliofunction") or {}).get("name", "")),
            percentage=share,
            port=int(u.get("port") or 0),
            rewrite_target=str(u.get("rewriteTarget") or ""),
        )
        for u, share in zip(raw, shares, strict=True)
    )
    basic = (spec.get("authentication") or {}).get("basicAuth") or {}
    return GatewayRoute(
        name=record.name,
        project=record.project,
        host=record.host,
        path=record.path,
        state=str(record.status.get("state", "")),
        authentication_mode=str(spec.get("authenticationMode") or "none"),
        upstreams=upstreams,
        username=str(basic.get("username") or ""),
        password_hash=record.password_hash,
        namespace=record.namespace,
    )


def _percentage(upstream: dict[str, Any]) -> int:
    value = upstream.get("percentage")
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _host_path(config: dict[str, Any]) -> tuple[str, str]:
    spec = config.get("spec") or {}
    return str(spec.get("host") or ""), str(spec.get("path") or "")


async def _refuse_taken_route(session: AsyncSession, name: str, host: str, path: str) -> None:
    owner = await session.scalar(
        select(ApiGatewayRow.name).where(
            ApiGatewayRow.host == host, ApiGatewayRow.path == path, ApiGatewayRow.name != name
        )
    )
    if owner is not None:
        raise PreconditionFailed(f"host {host} and path {path!r} are already used by API gateway {owner!r}")


def _record(row: ApiGatewayRow) -> ApiGatewayRecord:
    return ApiGatewayRecord(
        name=row.name,
        project=row.project,
        namespace=row.namespace,
        host=row.host,
        path=row.path,
        config=dict(row.config or {}),
        status=dict(row.status or {}),
        password_hash=row.password_hash,
        generation=row.generation,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
