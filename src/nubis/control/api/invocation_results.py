"""`/api/invocations` (a Nubis extension): the async invocations of functions (`X-Nubis-Async:
true`), their state and result, read from the platform's invocation store (`nubis.invocations`).

`GET /api/invocations/{id}` answers one: `state` (pending, running, succeeded, failed), attempts,
timings (epoch ms) and the last attempt's `result` (status, headers, body base64, error); never the
request itself, which holds the caller's headers. An id names no function, so the stores of every
function are looked in (a file lookup each), those of the `X-Nuclio-Project-Name` project only when
the header is sent; `?function=NAME` looks in that one only. An id that is not a UUID is a 404 that
says what an id looks like.
`GET /api/invocations?function=NAME` lists a function's, newest first.

Reading a result is the `invoke` action, not `read`: a result is a function's answer, for whoever
may invoke it, as `/api/function_invocations` answers it.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from nubis.control.api.bodies import project_header
from nubis.control.api.responses import json_response
from nubis.control.api.trigger_metrics import visible_functions
from nubis.errors import BadRequest, NotFound
from nubis.invocations import Invocation, valid_id
from nubis.platforms.base import Platform
from nubis.store.functions import function_not_found

#: the most records a list answers (the newest)
LIST_LIMIT = 1000


async def get_invocation(request: Request) -> Response:
    control = request.app.state.control
    invocation_id = request.path_params["id"]
    function = request.query_params.get("function")
    if not valid_id(invocation_id):
        raise NotFound(
            f"{invocation_id[:100]!r} is not an async invocation id: it is the UUID the 202 answered "
            "(its `id`, and the end of its `Location`), such as 0b6a4a6e-6f1e-4c55-9a4e-0f5d8b1f2a9c"
        )
    visible = await visible_functions(request, "invoke")
    if function:
        if function not in visible:
            raise function_not_found(function)
        names = [function]
    else:
        # the search covers the functions the caller names a project for, as a function list does
        names = [name for name, _ in await control.store.function_versions(project_header(request)) if name in visible]
    found = await asyncio.to_thread(_find, control.platform, names, invocation_id)
    if found is None:
        raise NotFound(
            f"no async invocation {invocation_id!r}"
            + (f" of function {function!r}" if function else "")
            + ": the id is wrong, or its result expired (kept for the HTTP trigger's asyncRetention, 24h by default)"
        )
    return json_response(found.view())


async def list_invocations(request: Request) -> Response:
    control = request.app.state.control
    function = request.query_params.get("function")
    if not function:
        raise BadRequest("say whose async invocations to list: ?function=NAME")
    limit_text = request.query_params.get("limit") or str(LIST_LIMIT)
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= LIST_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {LIST_LIMIT}, found {limit_text!r}")
    if function not in await visible_functions(request, "invoke"):
        raise function_not_found(function)
    records = await asyncio.to_thread(control.platform.invocations(function).records, int(limit_text))
    return json_response({"invocations": [record.view() for record in records]})


def _find(platform: Platform, names: list[str], invocation_id: str) -> Invocation | None:
    for name in names:
        found = platform.invocations(name).get(invocation_id)
        if found is not None:
            return found
    return None
