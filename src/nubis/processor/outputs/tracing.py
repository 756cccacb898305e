"""The trace headers: how an event's trace id travels from one function to the next.

An event's trace id is the `nubis-trace-id` header it came with, else its own event id (it starts
a trace). What a function publishes carries `nubis-trace-id` and `nubis-parent-id` (the producing
event's id), so the next function's hop names its parent. Header names are matched without regard
to case: the HTTP trigger canonicalises them (`Nubis-Trace-Id`), brokers keep what was sent.
"""

from __future__ import annotations

from collections.abc import Mapping

from nubis.processor.frames import EventFrame

TRACE_HEADER = "nubis-trace-id"
PARENT_HEADER = "nubis-parent-id"
#: on the HTTP answer of a function with outputs: the id `nubis events trace` takes
RESPONSE_TRACE_HEADER = "X-Nubis-Trace-Id"
#: longer ids, or ones with spaces or control characters, are not taken from a header
MAX_ID = 200
_SPELLINGS = {
    TRACE_HEADER: (TRACE_HEADER, "Nubis-Trace-Id"),
    PARENT_HEADER: (PARENT_HEADER, "Nubis-Parent-Id"),
}


def header(headers: Mapping[str, object] | None, name: str) -> str | None:
    """The value of header `name` (lowercase) in `headers`, matched without regard to case, if
    it is a usable id."""
    if not headers:
        return None
    value = None
    for spelling in _SPELLINGS.get(name, (name,)):
        value = headers.get(spelling)
        if value is not None:
            break
    else:
        value = next((v for k, v in headers.items() if isinstance(k, str) and k.lower() == name), None)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID or not value.isprintable() or " " in value:
        return None
    return value


def trace_of(frame: EventFrame) -> tuple[str, str | None] | None:
    """(trace id, parent id) of an event that came with a trace header, else None."""
    headers = frame.get("headers")
    trace = header(headers, TRACE_HEADER)
    if trace is None:
        return None
    return trace, header(headers, PARENT_HEADER)


def outgoing(trace_id: str, event_id: str) -> dict[str, str]:
    """The trace headers of what event `event_id` of trace `trace_id` publishes."""
    return {TRACE_HEADER: trace_id, PARENT_HEADER: event_id}
