"""`/api/function_invocations`: invoke a function through the API (NUCLIO.md §4.3).

The caller's credentials are never forwarded: the function sees the request's own headers minus
`Authorization` and `Cookie`, plus `X-Nuclio-Target`. Per-request logs (`X-Nuclio-Logs`, asked for
with `X-Nuclio-Log-Level`) come back to the caller.
"""

from __future__ import annotations

import httpx
from starlette.requests import Request
from starlette.responses import Response

from nubis.control.api.responses import error_response
from nubis.errors import BadRequest
from nubis.spec import parse_duration
from nubis.store.functions import function_not_found

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "authorization",
        "cookie",
    }
)
#: Not copied from the function's answer: hop-by-hop headers, the encoding httpx already undid, and
#: Date/Server, which uvicorn writes on every response itself (relaying them sent each one twice).
_NOT_RELAYED = _HOP_BY_HOP | {"content-encoding", "date", "server"}
DEFAULT_INVOKE_TIMEOUT = 60.0


async def invoke(request: Request) -> Response:
    control = request.app.state.control
    name = request.headers.get("x-nuclio-function-name")
    if not name:
        raise BadRequest("Function name must be provided")
    record = await control.store.get_function(name)
    if record is None:
        raise function_not_found(name)
    status = record.status or {}
    urls = list(status.get("internalInvocationUrls") or []) + list(status.get("externalInvocationUrls") or [])
    if not urls:
        raise BadRequest(f"function {name} has no invocation URL yet (state {status.get('state', 'building')})")
    url = request.headers.get("x-nuclio-invoke-url") or urls[0]
    if url not in urls:
        raise BadRequest("Invalid function url")
    path = request.headers.get("x-nuclio-path") or request.path_params.get("path") or ""
    timeout = parse_duration(request.headers.get("x-nuclio-invoke-timeout") or "") or DEFAULT_INVOKE_TIMEOUT
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
    headers["X-Nuclio-Target"] = name
    base = url if "://" in url else f"http://{url}"
    target = base.rstrip("/") + "/" + path.lstrip("/")
    body = await request.body() if request.method not in ("GET", "HEAD") else None
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            if request.url.query:
                target += ("&" if "?" in target else "?") + request.url.query
            answer = await client.request(request.method, target, content=body, headers=headers)
    except httpx.TimeoutException:
        return error_response(504, f"Failed to invoke function: no answer within {timeout:g} s")
    except httpx.HTTPError as exc:
        return error_response(502, f"Failed to invoke function: {exc}")
    out_headers = {
        k: v
        for k, v in answer.headers.items()
        if k not in _NOT_RELAYED and (not k.startswith("x-nuclio-") or k == "x-nuclio-logs")
    }
    return Response(answer.content, status_code=answer.status_code, headers=out_headers)
