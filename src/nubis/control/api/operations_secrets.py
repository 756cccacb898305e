"""The OpenAPI operations of `/api/projects/{project}/secrets` (secrets.py), merged by `openapi.py`.

No schema here has a place for a value in an answer: the answers are names and keys only.
"""

from __future__ import annotations

from typing import Any

from nubis.control.api.operations import NO_CONTENT, WRITE_ERRORS, Answer, Body, Operation, _error
from nubis.secrets.base import MAX_SECRET_BYTES
from nubis.spec.secret_refs import KEY_MAX, NAME_MAX, SECRET_KEY

_KEYS: dict[str, Any] = {"type": "array", "items": {"type": "string"}, "description": "sorted; never a value"}
_SECRET: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "project": {"type": "string"}, "keys": _KEYS},
    "required": ["name", "project", "keys"],
}
_KEY_NAMES: dict[str, Any] = {"pattern": SECRET_KEY.pattern, "maxLength": KEY_MAX}


def _values(nullable: bool) -> dict[str, Any]:
    value: dict[str, Any] = {"type": ["string", "null"] if nullable else "string"}
    return {"type": "object", "propertyNames": _KEY_NAMES, "additionalProperties": value}


def _body(nullable: bool) -> Body:
    text = "null removes the key" if nullable else "plain text, not base64"
    return Body(
        schema={
            "type": "object",
            "description": f"KEY: value ({text}); stringData's keys win over data's; at most "
            f"{MAX_SECRET_BYTES} bytes of keys and values",
            "properties": {"data": _values(nullable), "stringData": _values(nullable)},
            "additionalProperties": False,
        }
    )


_NOT_FOUND = _error("no such project in the tenant, or no such secret")
_PROJECT_NOT_FOUND = _error("no such project in the tenant")
#: the secret's name (`name` path parameter) follows Kubernetes: a DNS-1123 subdomain
NAME_RULE = f"a DNS-1123 subdomain, at most {NAME_MAX} characters"

SECRET_OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/api/projects/{project}/secrets"): Operation(
        "Nubis extension: the project's secrets, names and keys only (never a value)",
        {
            200: Answer(
                "secrets", schema={"type": "object", "properties": {"secrets": {"type": "array", "items": _SECRET}}}
            ),
            404: _PROJECT_NOT_FOUND,
        },
    ),
    ("GET", "/api/projects/{project}/secrets/{name}"): Operation(
        "Nubis extension: one secret's keys (never a value)",
        {200: Answer("the secret", schema=_SECRET), 400: _error(f"the name is not {NAME_RULE}"), 404: _NOT_FOUND},
    ),
    ("PUT", "/api/projects/{project}/secrets/{name}"): Operation(
        "Nubis extension: create or replace a secret whole (keys not in the body are removed)",
        {200: Answer("the secret's keys", schema=_SECRET), 404: _PROJECT_NOT_FOUND, **WRITE_ERRORS},
        body=_body(nullable=False),
    ),
    ("PATCH", "/api/projects/{project}/secrets/{name}"): Operation(
        "Nubis extension: set keys of a secret and remove its null ones; the other keys stay",
        {200: Answer("the secret's keys", schema=_SECRET), 404: _NOT_FOUND, **WRITE_ERRORS},
        body=_body(nullable=True),
    ),
    ("DELETE", "/api/projects/{project}/secrets/{name}"): Operation(
        "Nubis extension: delete a secret; 204",
        {204: NO_CONTENT, 400: _error(f"the name is not {NAME_RULE}"), 404: _NOT_FOUND},
    ),
}
