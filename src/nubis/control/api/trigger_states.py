"""`GET /api/functions/{name}/triggers` (a Nubis extension): each trigger's state as its replicas
last reported it (`nubis.trigger_reports`): connected or waiting for its broker, with counters
summed over the replicas (received, handled, failed, retried, dead-lettered...) and each replica's
own view. HTTP triggers report nothing here: their traffic is the gateway's metrics.

A trigger is `waiting` when any replica waits for its broker (the message says for what), so a
broker that one replica cannot reach is not hidden by the others.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from nubis.control.api.responses import json_response
from nubis.store.functions import function_not_found


async def function_triggers(request: Request) -> Response:
    control = request.app.state.control
    name = request.path_params["name"]
    if await control.store.get_function(name) is None:
        raise function_not_found(name)
    status = await control.platform.status(name)
    triggers: dict[str, dict[str, Any]] = {}
    for replica in status.replicas if status is not None else []:
        for report in replica.triggers:
            entry = triggers.setdefault(
                report.name,
                {"kind": report.kind, "state": report.state, "message": report.message, "counts": {}, "replicas": {}},
            )
            entry["replicas"][replica.name] = {
                "state": report.state,
                "message": report.message,
                "counts": report.counts,
            }
            for key, value in report.counts.items():
                entry["counts"][key] = entry["counts"].get(key, 0) + value
            if report.state == "waiting":
                entry["state"], entry["message"] = "waiting", report.message
    return json_response({"triggers": triggers})
