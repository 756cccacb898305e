"""A reply for the triggers that wait for a whole answer (message triggers, cron) instead of
streaming it to a client: it resolves a future with the response, a streamed body joined."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from nubis.processor.events import Response
from nubis.processor.outcomes import Outcome


class WholeAnswer:
    """A Reply that resolves a future with the whole response (streamed bodies are joined)."""

    __slots__ = ("_chunks", "_head", "future", "on_ack")

    def __init__(self, on_ack: Callable[[Any], None] | None = None) -> None:
        #: where the handler's `context.platform.explicit_ack(...)` goes (None: ignored)
        self.on_ack = on_ack
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
        # the head carries the body's first part, the chunks the rest
        body = head.body + b"".join(self._chunks)
        if error is not None:
            head = Response(500, "text/plain", {}, error.encode(), outcome=outcome)
        elif not self.future.done():
            head = Response(head.status, head.content_type, head.headers, body, outcome=head.outcome)
        if not self.future.done():
            self.future.set_result(head)

    def ack(self, message: Any) -> None:
        if self.on_ack is not None:
            self.on_ack(message)
