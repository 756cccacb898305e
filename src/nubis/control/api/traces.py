"""`GET /api/events/{event}/trace` (a Nubis extension): every hop of the trace that holds event
`event` (an event's id, or a trace id), across all functions, in causal order: the path of one
event through a chain of functions joined by outputs (docs/outputs.md).

Each hop is one event handled by one function (`nubis.traces.Hop`), with its `depth` in the tree
(0: where the trace began). Event ids may hold `/` (a Kafka record's is `topic/partition/offset`):
the route takes them whole, escaped or not. At most `MAX_TRACE_HOPS` hops are answered
(`truncated`: there were more). A hop's `error` is shown with the credentials of any URL in it
masked: it is a client library's text, which may quote a broker's URL.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict

from starlette.requests import Request
from starlette.responses import Response

from nubis.control.api.responses import json_response
from nubis.control.api.trigger_metrics import visible_functions
from nubis.errors import NotFound
from nubis.redact import redacted
from nubis.traces import MAX_TRACE_HOPS, RETENTION_SECONDS, TraceStore, depths


async def event_trace(request: Request) -> Response:
    event_id = request.path_params["event"]
    store: TraceStore = request.app.state.control.platform.traces()
    hops = await asyncio.to_thread(store.trace, event_id, MAX_TRACE_HOPS + 1)
    # a trace may cross tenants (an output to a shared broker): show only the caller's functions'
    # hops (the admin sees every hop, those of functions deleted since too)
    if not request.state.principal.is_admin:
        visible = await visible_functions(request, "read")
        hops = [hop for hop in hops if hop.function in visible]
    truncated = len(hops) > MAX_TRACE_HOPS
    hops = hops[:MAX_TRACE_HOPS]
    if not hops:
        days = RETENTION_SECONDS / 86400
        raise NotFound(
            f"no trace holds event {event_id!r}: hops are recorded for functions with outputs and for events that "
            f"came with a nubis-trace-id header, and kept {days:g} days"
        )
    first = next((hop for hop in hops if event_id in (hop.event_id, hop.trace_id)), hops[0])
    records = [
        {**asdict(hop), "error": redacted(hop.error) if hop.error else hop.error, "depth": depth}
        for hop, depth in zip(hops, depths(hops), strict=True)
    ]
    return json_response({"traceId": first.trace_id, "hops": records, "truncated": truncated})
