"""`/api/functions/{name}/failed_events` (a Nubis extension): the events a function's message
triggers gave up on, kept by the platform when the trigger names no dead letter of its own
broker (`nubis.failed_events`), and their replay.

`GET` lists them, oldest failure first, each with its error, attempt count, source and the event
itself (body base64-encoded). `POST .../replay` with `{"ids": [...]}` or `{"all": true}` hands
them back: a replica running the trigger that failed them takes them within about a second and
runs them through the same retries; one that fails again is listed again. Events in a broker's own
dead letter (`deadLetter`) stay there: that queue, stream or subject is the user's to replay.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict

from starlette.requests import Request
from starlette.responses import Response

from nubis.control.api.bodies import json_body
from nubis.control.api.responses import json_response
from nubis.errors import BadRequest
from nubis.failed_events import FailedEventStore
from nubis.store.functions import function_not_found


async def _store(request: Request) -> FailedEventStore:
    control = request.app.state.control
    name = request.path_params["name"]
    if await control.store.get_function(name) is None:
        raise function_not_found(name)
    store: FailedEventStore = control.platform.failed_events(name)
    return store


async def list_failed_events(request: Request) -> Response:
    store = await _store(request)
    records = await asyncio.to_thread(store.records)
    return json_response({"failedEvents": [asdict(record) for record in records]})


async def replay_failed_events(request: Request) -> Response:
    body = await json_body(request)
    ids = body.get("ids")
    everything = body.get("all") is True
    if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids)):
        raise BadRequest("ids must be a list of event ids (as GET .../failed_events lists them)")
    if not everything and not ids:
        raise BadRequest('say which events to replay: {"ids": ["..."]} or {"all": true}')
    store = await _store(request)
    replayed, missing = await asyncio.to_thread(store.replay, None if everything else ids)
    return json_response({"replayed": replayed, "missing": missing}, 202)
