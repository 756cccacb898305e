"""What became of an event, and the processor's own answers when no handler's answer can be given.

Every result a pool gives a trigger carries an `Outcome`, so a trigger decides by it and never by
the text of an error: HTTP maps it to a status code, a stream trigger to ack / retry / dead-letter
(a crash is worth a retry; a handler that raised will raise again). When the processor answers
itself, the status and message come from `REFUSALS`, one row per reason, which docs/outcomes.md
lists for users (`events.refusal_response` builds the answer).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.Enum):
    """What happened to one event."""

    #: the handler ran and answered (whatever status it chose)
    HANDLED = "handled"
    #: the handler raised: the same event would most likely fail again
    HANDLER_ERROR = "handler error"
    #: the handler ran past eventTimeout; its worker was killed
    TIMEOUT = "timeout"
    #: the worker process died (or garbled its stream) while it had the event
    WORKER_LOST = "worker lost"
    #: no worker could take the event (none free in time, or the queue is full): try later
    BUSY = "busy"
    #: the function is stopping and takes no new event
    SHUTTING_DOWN = "shutting down"
    #: the handler answered, but an output of the function did not confirm the answer's message
    #: (`nubis.processor.outputs`): HTTP answers 500, a stream trigger tries the event again
    OUTPUT_FAILED = "output failed"


class Refusal(enum.Enum):
    """Why the processor answered an event itself; each has one row in `REFUSALS`."""

    NO_WORKER = "no worker"
    QUEUE_FULL = "queue full"
    NOT_IN_TIME = "not in time"
    TOO_MANY_CONNECTIONS = "too many connections"
    SHUTTING_DOWN = "shutting down"
    TIMED_OUT = "timed out"
    WORKER_LOST = "worker lost"
    CANNOT_START = "cannot start"
    NO_RESULT = "no result"


@dataclass(frozen=True)
class RefusalRow:
    outcome: Outcome
    status: int
    #: the error text; `{name}` fields are filled from `refusal_response`'s keywords
    message: str
    #: answer `Retry-After: 1`: the caller may simply try again
    retry: bool


#: The processor's own answers. Status codes and texts follow Nuclio's where Nuclio has one
#: (503 without a free worker, 408 past eventTimeout); users and tests rely on them: do not reword.
REFUSALS: dict[Refusal, RefusalRow] = {
    # workerAvailabilityTimeoutMilliseconds is 0: an event that finds no free worker is refused at once
    Refusal.NO_WORKER: RefusalRow(Outcome.BUSY, 503, "no worker available", True),
    # maxQueuedEvents events already wait for a worker
    Refusal.QUEUE_FULL: RefusalRow(Outcome.BUSY, 503, "too many events waiting for a worker", True),
    # the event waited workerAvailabilityTimeoutMilliseconds and no worker started it
    Refusal.NOT_IN_TIME: RefusalRow(Outcome.BUSY, 503, "no worker became available in time", True),
    # the HTTP trigger has maxConnections connections open
    Refusal.TOO_MANY_CONNECTIONS: RefusalRow(
        Outcome.BUSY,
        503,
        "the function already has {max_connections} open connections, its HTTP trigger's maxConnections; retry later",
        True,
    ),
    Refusal.SHUTTING_DOWN: RefusalRow(Outcome.SHUTTING_DOWN, 503, "the function is shutting down", True),
    Refusal.TIMED_OUT: RefusalRow(Outcome.TIMEOUT, 408, "handler timed out", False),
    # a function at zero replicas could not start its workers (`reason`: init_context failed...);
    # the next wake is tried after a backoff
    Refusal.CANNOT_START: RefusalRow(Outcome.BUSY, 503, "the function cannot start: {reason}", True),
    # batch mode: the handler's list of responses has none with this event's event_id; answered at
    # the event's timeout, where Nuclio leaves the caller without an answer (docs/batching.md)
    Refusal.NO_RESULT: RefusalRow(
        Outcome.HANDLER_ERROR,
        500,
        "the batch handler returned no response for event {event_id} (a nuclio_sdk.Response with event_id=event.id)",
        False,
    ),
    # `reason`: "exited with code 1", "sent a corrupt frame (...)", ...
    Refusal.WORKER_LOST: RefusalRow(
        Outcome.WORKER_LOST, 500, "the worker process {reason} while handling the event", False
    ),
}
