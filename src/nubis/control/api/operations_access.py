"""The OpenAPI operations of `/api/tokens`, `/api/audit` and `/api/tenants` (access.py), kept
beside `operations.py`'s table and merged with it by `openapi.py`."""

from __future__ import annotations

from typing import Any

from nubis.auth.principals import ROLES
from nubis.control.api.operations import JSON, Answer, Body, Operation, Param, _error

_TOKEN: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "name": {"type": "string"},
        "owner": {"type": "string", "description": "who made it"},
        "tenant": {"type": "string", "description": "`*`: every tenant (the platform admin's)"},
        "project": {"type": ["string", "null"], "description": "null: the whole tenant"},
        "role": {"type": "string", "enum": list(ROLES)},
        "createdAt": {"type": "string"},
        "lastUsedAt": {"type": ["string", "null"]},
        "expiresAt": {"type": ["string", "null"]},
        "revokedAt": {"type": ["string", "null"]},
        "state": {"type": "string", "enum": ["active", "expired", "revoked"]},
    },
    "required": ["id", "name", "tenant", "role", "state"],
}
_NEW_TOKEN: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
        "tenant": {"type": "string", "description": "default: the request's tenant"},
        "project": {"type": "string", "description": "default: the whole tenant"},
        "role": {"type": "string", "enum": list(ROLES), "default": "developer"},
        "expiresIn": {
            "oneOf": [{"type": "integer", "minimum": 60}, {"type": "string"}],
            "description": "seconds, or a duration such as 30d or 12h (default 90d, at most 366d)",
        },
    },
    "required": ["name"],
}
_AUDIT: dict[str, Any] = {
    "type": "object",
    "properties": {
        name: {"type": kind}
        for name, kind in (
            ("id", "integer"),
            ("time", "string"),
            ("principal", "string"),
            ("tenant", "string"),
            ("action", "string"),
            ("method", "string"),
            ("path", "string"),
            ("status", "integer"),
            ("outcome", "string"),
            ("remote", "string"),
            ("detail", "string"),
        )
    }
    | {"project": {"type": ["string", "null"]}},
}
_TENANT: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "labels": {"type": "object"}, "createdAt": {"type": "string"}},
}


def _list_of(key: str, item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {key: {"type": "array", "items": item}}}


_BAD = _error("the body or a parameter is not valid (the message says which)")
_NO_TOKEN = _error("no such token (or one the caller may not manage)")

ACCESS_OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/api/tokens"): Operation(
        "Nubis extension: the API tokens the caller manages (never a secret nor its hash)",
        {
            200: Answer(
                "tokens", schema={"type": "object", "properties": {"tokens": {"type": "array", "items": _TOKEN}}}
            )
        },
    ),
    ("POST", "/api/tokens"): Operation(
        "Nubis extension: make an API token scoped to a tenant (or one project) and a role no higher than "
        "the caller's; its secret is answered once",
        {201: Answer("the token, with `token` (the secret)", schema=_TOKEN), 400: _BAD},
        body=Body(schema=_NEW_TOKEN, media=(JSON,)),
    ),
    ("DELETE", "/api/tokens/{id}"): Operation(
        "Nubis extension: revoke a token (refused from the next call on); again: no change",
        {200: Answer("the revoked token", schema=_TOKEN), 404: _NO_TOKEN},
    ),
    ("GET", "/api/audit"): Operation(
        "Nubis extension: the audit log, newest first: every mutating and every refused call",
        {
            200: Answer("records", schema=_list_of("records", _AUDIT)),
            400: _BAD,
        },
        params=(
            Param("since", "query", "ISO 8601 with a zone, or a duration back from now (1h, 7d)"),
            Param("tenant", "query", "that tenant's (a tenant-admin: its own; the admin: all by default)"),
            Param("limit", "query", "at most this many (1 to 10000, default 1000)"),
        ),
    ),
    ("GET", "/api/tenants"): Operation(
        "Nubis extension: the tenants the caller has grants in (the admin: all)",
        {200: Answer("tenants by name", schema={"type": "object", "additionalProperties": _TENANT})},
    ),
    ("POST", "/api/tenants"): Operation(
        "Nubis extension: make a tenant (the platform admin only)",
        {201: Answer("the tenant", schema=_TENANT), 400: _BAD, 409: _error("the tenant exists")},
        body=Body(schema={"type": "object", "properties": {"name": {"type": "string"}, "labels": {"type": "object"}}}),
    ),
    ("DELETE", "/api/tenants/{name}"): Operation(
        "Nubis extension: delete an empty tenant (the platform admin only)",
        {
            204: Answer("deleted"),
            400: _error("the server's default namespace"),
            404: _error("no such tenant"),
            412: _error("the tenant still has projects"),
        },
    ),
}
