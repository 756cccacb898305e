"""A reply for the triggers that wait for a whole answer (message triggers, cron) instead of
streaming it to a client: it resolves a future with the response, a streamed body joined."""

from __future__ import annotations

import asyncio
from typing import Any

from nubis.processor.events import Response
from nubis.processor.outcomes import Outcome


class WholeAnswer:
    """A Reply that resolves a future with the whole response (streamed bodies are joined)."""

    def __init__(self) -> None:
        self.future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._head: Response | None = None
        self._chunks: list[bytes] = []

    def respond(self, response: Response) -> None:
        if response.stream:
            self._head = response
        elif not self.future.done():
            self.future.set_result(response)

    def chunk(self, data: bytes) -> None:
        self._chunks.append(data)

    def end(self, error: str | None, outcome: Outcome) -> None:
        head = self._head or Response(200, "", {}, b"")
        body = b"".join(self._chunks)
        if error is not None:
            head = Response(500, "text/plain", {}, error.encode(), outcome=outcome)
        elif not self.future.done():
            head = Response(head.status, head.content_type, head.headers, body, outcome=head.outcome)
        if not self.future.done():
            self.future.set_result(head)

    def ack(self, message: Any) -> None:
        return None  # explicit acknowledgement is not offered by message triggers (yet)
