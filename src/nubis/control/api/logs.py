"""`GET /api/functions/{name}/logs[/{replica}]`: the replicas' captured output, as a text stream."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from nubis.errors import BadRequest, NotFound
from nubis.spec import parse_duration


async def function_logs(request: Request) -> Response:
    control = request.app.state.control
    name = request.path_params["name"]
    if await control.store.get_function(name) is None:
        raise NotFound("Function not found")
    follow = request.query_params.get("follow", "false").lower() in ("true", "1", "yes")
    since_text = request.query_params.get("since")
    since = parse_duration(since_text, field="since") if since_text else None
    tail = request.query_params.get("tailLines")
    if tail is not None and not tail.isdigit():
        raise BadRequest(f"tailLines must be a whole number, found {tail!r}")
    stream = control.function_logs(
        name,
        replica=request.path_params.get("replica"),
        follow=follow,
        since=since,
        tail=int(tail) if tail else None,
    )
    return StreamingResponse(stream, media_type="text/plain; charset=utf-8")
