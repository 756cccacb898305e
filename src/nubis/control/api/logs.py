"""`GET /api/functions/{name}/logs[/{replica}]`: the replicas' captured output, as a text stream.

Everything that can fail is checked before the answer starts: once a 200 and a chunked head are
out, an error can no longer be told as one (a client sees a connection cut mid-body). A function
with no replicas (its build failed, say) gets a 404 naming it and where its deploy log is.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from nubis.errors import BadRequest, NotFound, NubisError
from nubis.spec import parse_duration
from nubis.store.functions import function_not_found

log = logging.getLogger("nubis.api")


async def function_logs(request: Request) -> Response:
    control = request.app.state.control
    name = request.path_params["name"]
    record = await control.store.get_function(name)
    if record is None:
        raise function_not_found(name)
    follow = request.query_params.get("follow", "false").lower() in ("true", "1", "yes")
    since_text = request.query_params.get("since")
    since = parse_duration(since_text, field="since") if since_text else None
    tail = request.query_params.get("tailLines")
    if tail is not None and not tail.isdigit():
        raise BadRequest(f"tailLines must be a whole number, found {tail!r}")
    if await control.platform.status(name) is None:
        state = record.state or "building"
        reason = str(record.status.get("message") or "").split("\n", 1)[0]
        raise NotFound(
            f"function {name!r} has no replicas, so no replica logs: it is {state}"
            + (f" ({reason})" if reason else "")
            + f"; its deploy log is status.logs of GET /api/functions/{name}"
        )
    stream = control.function_logs(
        name,
        replica=request.path_params.get("replica"),
        follow=follow,
        since=since,
        tail=int(tail) if tail else None,
    )
    return StreamingResponse(_ended_cleanly(name, stream), media_type="text/plain; charset=utf-8")


async def _ended_cleanly(name: str, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A failure after the head went out ends the text with a line saying why, not a cut body."""
    try:
        async for chunk in stream:
            yield chunk
    except NubisError as exc:
        log.warning("log stream of function %s ended early: %s", name, exc.message)
        yield f"[nubis] the log stream ended early: {exc.message}\n".encode()
