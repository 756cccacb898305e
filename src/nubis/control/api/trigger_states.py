"""`GET /api/functions/{name}/triggers` (a Nubis extension): each trigger's state as its replicas
last reported it (`nubis.trigger_reports`): connected or waiting for its broker, with counters
summed over the replicas (received, handled, failed, retried, dead-lettered...) and each replica's
own view. HTTP triggers report nothing here: their traffic is the gateway's metrics.

A trigger is `waiting` when any replica waits for its broker (the message says for what), so a
broker that one replica cannot reach is not hidden by the others.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from nubis.control.api.responses import json_response
from nubis.platforms.status import trigger_summary
from nubis.store.functions import function_not_found


async def function_triggers(request: Request) -> Response:
    control = request.app.state.control
    name = request.path_params["name"]
    if await control.store.get_function(name) is None:
        raise function_not_found(name)
    status = await control.platform.status(name)
    return json_response({"triggers": trigger_summary(status) if status is not None else {}})
