"""`/api/tokens`, `/api/audit` and `/api/tenants` (Nubis extensions): who may call the API.

Tokens: a tenant-admin makes and revokes the tokens of its tenant; nobody makes a token with more
than they hold (a role above their own, another tenant, the platform `admin` role unless they are
the admin), so a token never widens its maker's reach. The secret is answered once, by the create;
only its sha256 is kept. The audit log is read by tenant-admins for their tenant and by the admin
for all. Tenants are the admin's.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from starlette.requests import Request
from starlette.responses import Response

from nubis.auth.gate import AuthorizationError
from nubis.auth.principals import ANY_TENANT, RANK, ROLES, Principal
from nubis.auth.tokens import hash_token, new_token
from nubis.control.api.bodies import json_body, text
from nubis.control.api.responses import empty, json_response
from nubis.control.api.scopes import Target, default_tenant, named_tenant
from nubis.errors import BadRequest, NotFound
from nubis.spec import parse_duration, validate_project_name
from nubis.store.records import TenantRecord, TokenRecord, utc_now

#: a token lives at most this long (a year); `expiresIn` defaults to 90 days
MAX_TOKEN_LIFETIME = timedelta(days=366)
DEFAULT_TOKEN_LIFETIME = timedelta(days=90)


def token_view(record: TokenRecord) -> dict[str, object]:
    """A token's record as the API shows it: never its hash."""
    return {
        "id": record.id,
        "name": record.name,
        "owner": record.principal,
        "tenant": record.tenant,
        "project": record.project,
        "role": record.role,
        "createdAt": record.created_at.isoformat(),
        "lastUsedAt": record.last_used_at.isoformat() if record.last_used_at else None,
        "expiresAt": record.expires_at.isoformat() if record.expires_at else None,
        "revokedAt": record.revoked_at.isoformat() if record.revoked_at else None,
        "state": "revoked" if record.revoked_at else ("expired" if record.refusal() else "active"),
    }


async def token_scope(request: Request, principal: Principal) -> Target:
    """`POST /api/tokens` acts where the new token will: its body's tenant and project."""
    body = await json_body(request, required=False) if request.method == "POST" else {}
    tenant = body.get("tenant") if isinstance(body.get("tenant"), str) else None
    project = body.get("project") if isinstance(body.get("project"), str) else None
    return Target(tenant or await default_tenant(request, principal), project or None)


async def token_by_path(request: Request, principal: Principal) -> Target:
    """`DELETE /api/tokens/{id}`: where the token acts (a token of a hidden tenant is missing)."""
    token_id = request.path_params.get("id", "")
    record = await request.app.state.control.store.get_token(int(token_id)) if token_id.isdigit() else None
    if record is None:
        return Target(await default_tenant(request, principal), None)
    # a platform admin's token (tenant "*") is the admin's alone: nobody else's grant covers "*"
    return Target(record.tenant, record.project, NotFound(f"no API token {token_id}"))


def duration_seconds(value: str, field: str) -> float:
    """Days (`30d`) or a Go duration (`12h`, `90m`) in seconds; a 400 naming `field` otherwise."""
    days = value.strip()
    if days.endswith("d") and days[:-1].isdigit():
        return int(days[:-1]) * 86400.0
    seconds = parse_duration(value, field=field)
    if seconds is None:
        raise BadRequest(f"{field} must be a duration such as 30d, 12h or 90m, found {value!r}")
    return seconds


def _lifetime(body: dict[str, object]) -> datetime:
    raw = body.get("expiresIn")
    if raw is None:
        lifetime = DEFAULT_TOKEN_LIFETIME
    elif isinstance(raw, int) and not isinstance(raw, bool):
        lifetime = timedelta(seconds=raw)
    elif isinstance(raw, str):
        lifetime = timedelta(seconds=duration_seconds(raw, "expiresIn"))
    else:
        raise BadRequest(f"expiresIn must be seconds or a duration such as 30d or 12h, found {type(raw).__name__}")
    if not timedelta(seconds=60) <= lifetime <= MAX_TOKEN_LIFETIME:
        raise BadRequest(f"expiresIn must be from 60s to {MAX_TOKEN_LIFETIME.days}d, found {raw!r}")
    return utc_now() + lifetime


async def create_token(request: Request) -> Response:
    body = await json_body(request)
    principal: Principal = request.state.principal
    tenant: str = request.state.tenant
    project: str | None = request.state.project
    name = text(body, "name", field="name")
    if not name:
        raise BadRequest('a token needs a name, so that `nubis tokens list` can tell them apart: {"name": "ci"}')
    if len(name) > 100:
        raise BadRequest(f"name must be at most 100 characters, found {len(name)}")
    role = text(body, "role", field="role") or "developer"
    if role not in ROLES:
        raise BadRequest(f"role must be one of {', '.join(ROLES)}, found {role!r}")
    if project is not None:
        validate_project_name(project, field="project")
    if role == "admin":
        if not principal.is_admin:
            raise AuthorizationError(f"{principal.name} may not make a token of the platform admin role")
        tenant, project = ANY_TENANT, None
    else:
        own = principal.role_in(tenant, project)
        if own is None or RANK[own] < RANK[role]:
            raise AuthorizationError(
                f"{principal.name} may not make a {role} token in tenant {tenant}: "
                f"its own role there is {own or 'none'}"
            )
        await request.app.state.control.store.ensure_tenant(tenant)
    secret = new_token()
    record = await request.app.state.control.store.add_token(
        principal.name,
        hash_token(secret),
        name=name,
        tenant=tenant,
        project=project,
        role=role,
        expires_at=_lifetime(body),
    )
    return json_response({**token_view(record), "token": secret}, 201)


async def list_tokens(request: Request) -> Response:
    principal: Principal = request.state.principal
    store = request.app.state.control.store
    if principal.is_admin and named_tenant(request) is None:
        records = await store.list_tokens()
    else:
        records = [
            r for r in await store.list_tokens(request.state.tenant) if principal.may("manage", r.tenant, r.project)
        ]
    return json_response({"tokens": [token_view(r) for r in records]})


async def revoke_token(request: Request) -> Response:
    token_id = request.path_params["id"]
    record = await request.app.state.control.store.revoke_token(int(token_id)) if token_id.isdigit() else None
    if record is None:
        raise NotFound(f"no API token {token_id}")
    return json_response(token_view(record))


async def audit_log(request: Request) -> Response:
    """`?since=` (ISO 8601, or a duration back from now: `1h`), `?tenant=` (admin: all by default),
    `?limit=` (1000)."""
    principal: Principal = request.state.principal
    since_text = request.query_params.get("since")
    since = _since(since_text) if since_text else None
    limit_text = request.query_params.get("limit") or "1000"
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 10_000:
        raise BadRequest(f"limit must be a whole number from 1 to 10000, found {limit_text!r}")
    wanted = request.query_params.get("tenant") or named_tenant(request)
    # the gate checked `manage` in request.state.tenant; only the admin reads every tenant's at once
    tenant = None if principal.is_admin and not wanted else request.state.tenant
    records = await request.app.state.control.store.list_audit(since=since, tenant=tenant, limit=int(limit_text))
    return json_response({"records": [r.to_dict() for r in records]})


def _since(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return utc_now() - timedelta(seconds=duration_seconds(value, "since"))
    if parsed.tzinfo is None:
        raise BadRequest(f"since must name its time zone (add Z for UTC), found {value!r}")
    return parsed


async def audit_scope(request: Request, principal: Principal) -> Target:
    """`/api/audit?tenant=T` acts in T."""
    tenant = request.query_params.get("tenant")
    return Target(tenant or await default_tenant(request, principal), None)


async def list_tenants(request: Request) -> Response:
    principal: Principal = request.state.principal
    records = await request.app.state.control.store.list_tenants()
    visible = principal.tenants()
    return json_response({r.name: tenant_view(r) for r in records if visible is None or r.name in visible})


def tenant_view(record: TenantRecord) -> dict[str, object]:
    return {"name": record.name, "labels": record.labels, "createdAt": record.created_at.isoformat()}


async def create_tenant(request: Request) -> Response:
    body = await json_body(request)
    name = text(body, "name", field="name")
    if not name:
        raise BadRequest('a tenant needs a name: {"name": "team-a"}')
    validate_project_name(name, field="name")  # the same DNS-label rule as a Kubernetes namespace
    labels = body.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise BadRequest("labels must be a map of strings")
    record = await request.app.state.control.store.create_tenant(name, labels)
    return json_response(
        {"name": record.name, "labels": record.labels, "createdAt": record.created_at.isoformat()}, 201
    )


async def delete_tenant(request: Request) -> Response:
    name = request.path_params["name"]
    if name == request.app.state.control.settings.namespace:
        raise BadRequest(f"the server's default namespace {name!r} cannot be deleted")
    if not await request.app.state.control.store.delete_tenant(name):
        raise NotFound(f"no tenant {name!r}")
    return empty(204)
