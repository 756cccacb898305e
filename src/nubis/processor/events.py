"""What travels between a trigger and a worker pool: submissions in, responses out."""

from __future__ import annotations

from typing import Any, Protocol


class Response:
    """A handler's answer as the worker reported it (or the processor's own error answer)."""

    __slots__ = ("body", "content_type", "duration", "headers", "logs", "status", "stream")

    def __init__(
        self,
        status: int,
        content_type: str,
        headers: dict[str, Any],
        body: bytes,
        *,
        stream: bool = False,
        duration: float = 0.0,
    ) -> None:
        self.status = status
        self.content_type = content_type
        self.headers = headers
        self.body = body
        self.stream = stream
        self.duration = duration
        self.logs: list[dict[str, Any]] | None = None


class Reply(Protocol):
    """Where a submission's answer goes. `chunk`/`end` follow `respond` only for streamed bodies."""

    def respond(self, response: Response) -> None: ...

    def chunk(self, data: bytes) -> None: ...

    def end(self, error: str | None) -> None: ...


class Submission:
    """One event on its way through a pool: the event frame plus where its answer goes."""

    __slots__ = (
        "answered",
        "capture",
        "deadline",
        "frame",
        "prefetched",
        "reply",
        "seq",
        "streaming",
        "timer",
    )

    def __init__(self, frame: dict[str, Any], reply: Reply, capture: bool = False) -> None:
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
