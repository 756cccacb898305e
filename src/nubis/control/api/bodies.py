"""Reading request bodies and Nuclio's request headers, with 400s that say what to change."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from nubis.errors import BadRequest

#: Largest JSON body the API reads (bytes); function source travels inline, so allow some room.
MAX_JSON_BODY = 32 * 1024 * 1024
PROJECT_LABEL = "nuclio.io/project-name"


async def json_body(request: Request, *, required: bool = True) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_JSON_BODY:
        raise BadRequest(f"request body larger than {MAX_JSON_BODY} bytes", status_code=413)
    if not raw.strip():
        if required:
            raise BadRequest("request body is empty: expected a JSON object")
        return {}
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"request body must be a JSON object, found {type(data).__name__}")
    return data


def section(data: dict[str, Any], key: str) -> dict[str, Any]:
    """A sub-object matched case-insensitively, as Go's decoder does (`Metadata`, `metadata`)."""
    for name, value in data.items():
        if name.lower() == key.lower():
            if value is None:
                return {}
            if not isinstance(value, dict):
                raise BadRequest(f"'{key}' must be a JSON object, found {type(value).__name__}")
            return value
    return {}


def text(data: dict[str, Any], key: str, *, field: str) -> str | None:
    """A string value of `data` (None when absent, null or empty); any other type is a 400."""
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest(f"'{field}' must be a string, found {type(value).__name__}")
    return value


def text_map(data: dict[str, Any], key: str, *, field: str) -> dict[str, str]:
    """A map of strings (labels, annotations), as Go decodes `map[string]string`: else a 400."""
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
        raise BadRequest(f"'{field}' must be a JSON object of strings, found {json.dumps(value)[:100]}")
    return dict(value)


def header_flag(request: Request, name: str) -> bool:
    return request.headers.get(name, "").strip().lower() == "true"


def project_header(request: Request) -> str | None:
    value = request.headers.get("x-nuclio-project-name")
    return value.strip() if value and value.strip() else None
