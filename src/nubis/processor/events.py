"""What travels between a trigger and a worker pool: submissions in, responses (with outcomes) out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from nubis.processor.outcomes import REFUSALS, Outcome, Refusal

if TYPE_CHECKING:
    from nubis.processor.frames import EventFrame


class Response:
    """A handler's answer as the worker reported it (or the processor's own answer), with its outcome."""

    __slots__ = ("body", "content_type", "duration", "headers", "logs", "outcome", "status", "stream")

    def __init__(
        self,
        status: int,
        content_type: str,
        headers: dict[str, Any],
        body: bytes,
        *,
        stream: bool = False,
        duration: float = 0.0,
        outcome: Outcome = Outcome.HANDLED,
    ) -> None:
        self.status = status
        self.content_type = content_type
        self.headers = headers
        self.body = body
        self.stream = stream
        self.duration = duration
        self.outcome = outcome
        self.logs: list[dict[str, Any]] | None = None


class BatchResponse(Response):
    """A batch's answer (batching.py): `results` holds one result map per event of the batch, in
    the batch's order (frames.STATUS, CONTENT_TYPE, HEADERS, BODY, and ERROR where it failed), or
    None for an event the handler gave no response."""

    __slots__ = ("results",)

    def __init__(self, results: list[dict[str, Any] | None], duration: float) -> None:
        super().__init__(200, "", {}, b"", duration=duration)
        self.results = results

    @classmethod
    def of(cls, message: dict[str, Any], frame: Any) -> BatchResponse | None:
        """The answer a worker's batch response `message` gives the batch `frame`, or None when
        its results do not match the batch's events (one per event, in order)."""
        from nubis.processor.frames import DURATION, EVENTS, RESULTS

        results, events = message[RESULTS], frame.get(EVENTS)
        if not isinstance(results, list) or events is None or len(results) != len(events):
            return None
        return cls(results, message.get(DURATION, 0.0))


class Reply(Protocol):
    """Where a submission's answer goes. `chunk`/`end` follow `respond` only for streamed bodies."""

    def respond(self, response: Response) -> None: ...

    def chunk(self, data: bytes) -> None: ...

    def end(self, error: str | None, outcome: Outcome) -> None:
        """The streamed body is complete (`error` None) or cut short: by the handler raising
        (HANDLER_ERROR) or by its worker dying (WORKER_LOST)."""
        ...

    def ack(self, message: Any) -> None:
        """The handler called `context.platform.explicit_ack(...)` (stream triggers commit here;
        triggers without explicit acknowledgement ignore it)."""
        ...


class Submission:
    """One event on its way through a pool: the event frame plus where its answer goes.

    Only the pool changes a submission once it is submitted (see pool.py / dispatch.py).
    """

    __slots__ = (
        "answered",
        "capture",
        "deadline",
        "frame",
        "key",
        "prefetched",
        "reply",
        "seq",
        "streaming",
        "timer",
    )

    #: the delivery's ordering key (a partition, a stream), set only by an ordered message trigger in
    #: batch mode and read with `getattr(sub, "key", None)` (batching.py); left unset otherwise, so
    #: the single event's path pays nothing for it
    key: str | None

    def __init__(self, frame: EventFrame, reply: Reply, capture: bool = False) -> None:
        self.frame = frame
        self.reply = reply
        self.seq = 0
        #: monotonic time after which the event may no longer start (workerAvailabilityTimeout)
        self.deadline = 0.0
        #: log records captured for the caller (X-Nuclio-Log-Level), or None when not asked
        self.capture: list[dict[str, Any]] | None = [] if capture else None
        self.timer: Any = None
        self.streaming = False
        #: the caller has its answer; anything the worker still says about this event is dropped
        self.answered = False
        #: queued on a busy worker behind its running event (pipelining), not yet started
        self.prefetched = False


def error_response(status: int, message: str, headers: dict[str, Any] | None = None) -> Response:
    """A processor-side failure in Nuclio's JSON error shape."""
    body = ('{"error": "' + message.replace("\\", "\\\\").replace('"', '\\"') + '"}').encode()
    return Response(status, "application/json", headers or {}, body)


#: on a refusal whose event never reached the handler (busy, shutting down): whoever sent it may
#: send it elsewhere whatever its method (the gateway does, to another replica)
REFUSED_HEADER = "X-Nubis-Refused"


def refusal_response(refusal: Refusal, **fields: Any) -> Response:
    """The processor's own answer for `refusal` (outcomes.REFUSALS), with its outcome."""
    row = REFUSALS[refusal]
    message = row.message.format(**fields) if fields else row.message
    headers = {"Retry-After": "1", REFUSED_HEADER: row.outcome.value} if row.retry else None
    response = error_response(row.status, message, headers)
    response.outcome = row.outcome
    return response


def qualified_offset(message: Any) -> tuple[str, int, int] | None:
    """(topic, partition, offset) that an explicit acknowledgement names (nuclio-sdk's
    QualifiedOffset: `{kind, attributes: {topic, partition, offset}}`; keys in any case), or None
    when it names none."""
    if not isinstance(message, dict):
        return None
    attributes = next((value for key, value in message.items() if str(key).lower() == "attributes"), message)
    if not isinstance(attributes, dict):
        return None
    fields = {str(key).lower(): value for key, value in attributes.items()}
    topic, partition, offset = fields.get("topic"), fields.get("partition"), fields.get("offset")
    if not isinstance(topic, str) or isinstance(partition, bool) or isinstance(offset, bool):
        return None
    if not isinstance(partition, int) or not isinstance(offset, int):
        return None
    return topic, partition, offset
