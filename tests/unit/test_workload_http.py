"""The replica's small JSON client (processor/workload/http.py) against in-process asyncio servers:
bodies by length, chunked, or ended by the connection; refusals, timeouts, truncated answers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest

from nubis.processor.workload.http import HttpError, JsonClient

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serving(handler: Handler, scenario: Callable[[str], Awaitable[None]]) -> None:
    """Run `scenario` against a server answering with `handler`; every connection ends with it."""
    handled: list[asyncio.Task[None]] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handled.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await scenario(f"http://127.0.0.1:{port}/base")
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.gather(*handled, return_exceptions=True)


def answering(*chunks: bytes, seen: list[bytes] | None = None) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0
        )
        body = await reader.readexactly(length) if length else b""
        if seen is not None:
            seen.append(head + body)
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        writer.close()

    return handler


def test_a_json_request_and_its_answer() -> None:
    seen: list[bytes] = []
    answer_body = json.dumps({"token": "t"}).encode()
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(answer_body) + answer_body

    async def scenario(url: str) -> None:
        answer = await JsonClient(url).request("POST", "api/x", body={"a": 1}, headers={"Authorization": "Bearer b"})
        assert (answer.status, answer.json()) == (200, {"token": "t"})

    asyncio.run(serving(answering(reply, seen=seen), scenario))
    request = seen[0]
    assert request.startswith(b"POST /base/api/x HTTP/1.1\r\n")
    assert b"Authorization: Bearer b\r\n" in request and b"Connection: close\r\n" in request
    assert request.endswith(b'{"a": 1}')


def test_chunked_and_connection_delimited_bodies() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\r\n[1, 2\r\n", b"4\r\n, 3]\r\n0\r\n\r\n"
    until_close = (b"HTTP/1.1 403 Forbidden\r\n\r\n", b'{"errors": ["permission denied"]}')

    async def scenario_chunked(url: str) -> None:
        assert (await JsonClient(url).request("GET", "x")).json() == [1, 2, 3]

    async def scenario_close(url: str) -> None:
        answer = await JsonClient(url).request("GET", "x")
        assert answer.status == 403 and answer.json() == {"errors": ["permission denied"]}

    asyncio.run(serving(answering(*chunked), scenario_chunked))
    asyncio.run(serving(answering(*until_close), scenario_close))


def test_failures_are_http_errors_that_name_no_header() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and closes

    async def slow(url: str) -> None:
        with pytest.raises(HttpError, match=r"did not answer within 0\.2 s"):
            await JsonClient(url, timeout=0.2).request("GET", "x", headers={"Authorization": "Bearer secret-token"})

    async def hung_up(url: str) -> None:
        with pytest.raises(HttpError, match="closed the connection before answering"):
            await JsonClient(url).request("GET", "x")

    asyncio.run(serving(silent, slow))
    asyncio.run(serving(answering(), hung_up))

    async def refused() -> None:
        with pytest.raises(HttpError) as error:
            await JsonClient("http://127.0.0.1:9").request("GET", "x", headers={"Authorization": "Bearer secret-token"})
        assert "secret-token" not in str(error.value)

    asyncio.run(refused())
    with pytest.raises(ValueError, match="line break"):
        asyncio.run(JsonClient("http://127.0.0.1:9").request("GET", "x", headers={"X": "a\r\nInjected: 1"}))
