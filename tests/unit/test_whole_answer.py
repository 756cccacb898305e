"""WholeAnswer joins a streamed body for the triggers that need it whole (message triggers, cron):
the head's own part first, then every chunk."""

from __future__ import annotations

import asyncio

from nubis.processor.events import Response
from nubis.processor.outcomes import Outcome
from nubis.processor.triggers.answers import WholeAnswer


def test_a_streamed_body_is_joined_from_its_head_and_its_chunks() -> None:
    async def scenario() -> Response:
        answer = WholeAnswer()
        answer.respond(Response(201, "text/plain", {"X-A": "1"}, b"first,", stream=True))
        answer.chunk(b"second,")
        answer.chunk(b"third")
        answer.end(None, Outcome.HANDLED)
        return await answer.future

    response = asyncio.run(scenario())
    assert (response.status, response.body, response.headers) == (201, b"first,second,third", {"X-A": "1"})


def test_a_stream_cut_short_is_a_500_with_the_error() -> None:
    async def scenario() -> Response:
        answer = WholeAnswer()
        answer.respond(Response(200, "text/plain", {}, b"part", stream=True))
        answer.end("boom", Outcome.HANDLER_ERROR)
        return await answer.future

    response = asyncio.run(scenario())
    assert (response.status, response.body, response.outcome) == (500, b"boom", Outcome.HANDLER_ERROR)
