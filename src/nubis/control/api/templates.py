"""`/api/function_templates`: real, deployable starting points (rendered Nuclio configurations)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from nubis.control.api.bodies import json_body
from nubis.control.api.responses import json_response
from nubis.control.templates import TEMPLATES, list_templates, render
from nubis.errors import NotFound


async def list_function_templates(request: Request) -> Response:
    return json_response(list_templates(request.headers.get("x-nuclio-filter-contains")))


async def render_template(request: Request) -> Response:
    body = await json_body(request)
    name = str(body.get("name") or body.get("template") or "")
    if name not in TEMPLATES:
        raise NotFound(f"no template named {name!r}; known: {', '.join(TEMPLATES)}")
    return json_response({"functionConfig": render(name)})
