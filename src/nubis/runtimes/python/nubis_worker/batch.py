"""A batch of events in one handler call (NUCLIO.md §2.7, docs/batching.md).

The handler gets a list of `nuclio_sdk.Event`s and returns a list of `nuclio_sdk.Response`s, each
naming its event by `event_id`. The worker answers the whole batch with one `rb` frame whose
results follow the batch's order, so the processor routes them without looking at ids: a result
the handler did not give (no `event_id`, or one that names no event of the batch) is nil there,
and its caller gets the processor's "no result" error at its timeout, where Nuclio leaves the
caller without an answer. The handler raising answers every event of the batch with the one 500
(an ordinary `r` frame, as for a single event). A streamed body cannot be part of a batch: that
event alone gets a 500 saying so.
"""

from __future__ import annotations

import inspect
import logging
import time
import types

import nuclio_sdk
from nubis_worker import outputs
from nubis_worker.events import build_event
from nubis_worker.framing import (
    BODY,
    CONTENT_TYPE,
    DURATION,
    ERROR,
    EVENTS,
    HEADERS,
    KIND,
    LEVEL,
    RESPONSE_BATCH,
    RESULTS,
    SEQ,
    STATUS,
)

_Response = nuclio_sdk.Response
_GENERATORS = (types.GeneratorType, types.AsyncGeneratorType)
#: the error of an event whose response in a batch has a streamed body
STREAM_IN_BATCH = "a streamed response body (a generator) cannot answer an event of a batch; return its whole body"


def handle_batch(worker, frame):  # type: ignore[no-untyped-def]
    """Call the handler once with the batch's events; emit its per-event results (or its error)."""
    if worker.refused_late(frame):
        return
    seq = frame[SEQ]
    worker.set_level(frame.get(LEVEL, logging.INFO))
    worker.state.current = seq
    started = time.perf_counter()
    try:
        events = [build_event(event, worker.trigger) for event in frame[EVENTS]]
        output = worker.handler(worker.context, events)
        if inspect.isawaitable(output):
            output = worker.run_coroutine(output)
        results = results_of(output, events, worker.logger)
    except BaseException as exc:
        worker._emit_handler_error(seq, exc, started)
        return
    finally:
        worker.state.current = None
    worker.emit({KIND: RESPONSE_BATCH, SEQ: seq, DURATION: time.perf_counter() - started, RESULTS: results})


def results_of(output, events, logger):  # type: ignore[no-untyped-def]
    """One result map (or None where the handler gave none) per event, in the order of `events`.

    As Nuclio's wrapper does, a list is taken item by item and anything else as a single item; only
    a `Response` carries an `event_id`, and the first response for an event wins.
    """
    slots = {event.id: index for index, event in enumerate(events)}
    results = [None] * len(events)
    if isinstance(output, _GENERATORS):
        return [_error(STREAM_IN_BATCH) for _ in events]
    items = output if isinstance(output, list) else [output]
    strays = 0
    for item in items:
        index = slots.get(item.event_id) if isinstance(item, _Response) else None
        if index is None or results[index] is not None:
            strays += 1
            continue
        results[index] = _result(item)
    missing = results.count(None)
    if missing or strays:
        logger.warn_with(
            "The batch handler's answer leaves events without a response: each needs a "
            "nuclio_sdk.Response with event_id=<event.id>",
            events=len(events),
            without_response=missing,
            responses_dropped=strays,
        )
    return results


def _result(response):  # type: ignore[no-untyped-def]
    if isinstance(response.body, _GENERATORS):
        return _error(STREAM_IN_BATCH)
    try:
        status, content_type, headers, body = outputs.from_response_object(response)
    except Exception as exc:
        return _error("the response for this event cannot be sent: %s" % exc)
    return {STATUS: status, CONTENT_TYPE: content_type, HEADERS: headers, BODY: body}


def _error(message):  # type: ignore[no-untyped-def]
    return {STATUS: 500, CONTENT_TYPE: "text/plain", HEADERS: {}, BODY: message.encode("utf-8"), ERROR: message}
