"""`GET /api/functions/{name}/replicas` (a Nubis extension): the function's replicas as the
platform sees them, each with what it last reported of its load and scale state (awake, asleep at
zero, waking, failed to wake; events running and waiting, CPU, cold starts and their durations),
and the desired count the autoscaler set. What `nubis get functions -o wide` summarises.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from nubis.control.api.responses import json_response
from nubis.store.functions import function_not_found


async def function_replicas(request: Request) -> Response:
    control = request.app.state.control
    name = request.path_params["name"]
    if await control.store.get_function(name) is None:
        raise function_not_found(name)
    status = await control.platform.status(name)
    replicas: list[dict[str, Any]] = []
    for replica in status.replicas if status is not None else []:
        replicas.append(
            {
                "name": replica.name,
                "state": replica.state,
                "generation": replica.generation,
                "restarts": replica.restarts,
                "load": msgspec.to_builtins(replica.load) if replica.load is not None else None,
            }
        )
    desired = status.replicas_desired if status is not None else 0
    names = [replica["name"] for replica in replicas]
    return json_response({"names": names, "desired": desired, "replicas": replicas})
