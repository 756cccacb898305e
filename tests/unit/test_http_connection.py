"""HttpConnection fed bytes directly: a transport object that records what the connection does with
it stands in for the socket; requests that reach a pool reach a real one (worker_pools.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httptools
from worker_pools import Pools, pools

from nubis.processor.triggers.http import HttpTrigger
from nubis.processor.triggers.http_config import HttpTriggerConfig
from nubis.processor.triggers.http_protocol import HttpConnection


class RecordingTransport:
    """The transport methods HttpConnection and its lingering close use, recorded."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.reading = True
        self.eof_written = False
        self.protocol: asyncio.BaseProtocol | None = None
        self.wrote = asyncio.Event()

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.written += data
        self.wrote.set()

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol


class Answer:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""


def answers(data: bytes) -> list[Answer]:
    """Every complete HTTP response in `data`, in order."""
    found: list[Answer] = []

    class Callbacks:
        def on_message_begin(self) -> None:
            found.append(Answer())

        def on_header(self, name: bytes, value: bytes) -> None:
            found[-1].headers[name.decode()] = value.decode()

        def on_body(self, body: bytes) -> None:
            found[-1].body += body

        def on_headers_complete(self) -> None:
            found[-1].status = parser.get_status_code()

    parser = httptools.HttpResponseParser(Callbacks())
    parser.feed_data(bytes(data))
    return found


def trigger(**attributes: Any) -> HttpTrigger:
    return HttpTrigger("web", HttpTriggerConfig.from_attributes(attributes, "spec.triggers.web.attributes"))


def connect(web: HttpTrigger) -> tuple[HttpConnection, RecordingTransport]:
    conn = HttpConnection(web)
    transport = RecordingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


async def until_answers(transport: RecordingTransport, count: int) -> list[Answer]:
    while len(found := answers(transport.written)) < count:
        transport.wrote.clear()
        await asyncio.wait_for(transport.wrote.wait(), 20)
    return found


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


def run_with_pool(test: Callable[[HttpTrigger], Coroutine[Any, Any, None]], tmp_path: Path, **attributes: Any) -> None:
    async def scenario() -> None:
        async with pools(tmp_path) as harness:
            await asyncio.wait_for(served(harness), 60)

    async def served(harness: Pools) -> None:
        web = trigger(**attributes)
        web.pool = await harness.start()
        try:
            await test(web)
        finally:
            await web.close()

    asyncio.run(scenario())


def error_of(answer: Answer) -> str:
    text: str = json.loads(answer.body)["error"]
    return text


def test_pipelined_requests_are_answered_in_order_on_one_keep_alive_connection(tmp_path: Path) -> None:
    async def test(web: HttpTrigger) -> None:
        conn, transport = connect(web)
        conn.data_received(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nfirst"
            b"GET /__internal/health HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nthird"
        )
        # the health check is answered here at once, but goes out only after the first answer
        assert transport.written == b""
        first, health, third = await until_answers(transport, 3)
        assert (first.status, first.body) == (200, b"first")
        assert (health.status, health.body) == (200, b'{"status": "ok"}')
        assert (third.status, third.body) == (200, b"third")
        assert not transport.closed, "HTTP/1.1 keeps the connection open"
        conn.data_received(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nnext")
        assert (await until_answers(transport, 4))[3].body == b"next"
        conn.connection_lost(None)

    run_with_pool(test, tmp_path)


def test_a_handler_error_is_nuclios_500_and_connection_close_is_honoured_after_it(tmp_path: Path) -> None:
    async def test(web: HttpTrigger) -> None:
        conn, transport = connect(web)
        conn.data_received(b"GET /raise HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        [answer] = await until_answers(transport, 1)
        assert answer.status == 500
        assert answer.body.startswith(b'Exception caught in handler - "boom"')
        assert answer.headers["Connection"] == "close"
        assert transport.closed and not transport.aborted
        conn.connection_lost(None)

    run_with_pool(test, tmp_path)


def test_a_body_over_max_request_body_size_is_413_and_closes() -> None:
    async def test() -> None:
        web = trigger(maxRequestBodySize=8)
        conn, transport = connect(web)
        conn.data_received(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n123456789")
        [answer] = answers(transport.written)
        assert answer.status == 413
        assert error_of(answer) == "request body larger than maxRequestBodySize (8 bytes)"
        assert answer.headers["Connection"] == "close"
        assert transport.closed
        conn.connection_lost(None)
        await web.close()

    run(test)


def test_head_limits_answer_431_and_414_even_for_a_head_that_arrives_byte_by_byte() -> None:
    async def test() -> None:
        web = trigger(maxHeaderBytes=200, maxHeaderCount=3, maxUrlBytes=50)
        cases = [
            (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 300 + b"\r\n\r\n", 431, "request head larger than 200 bytes"),
            (b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", 431, "more than 3 request headers"),
            (b"GET /" + b"u" * 60 + b" HTTP/1.1\r\n\r\n", 414, "request URL longer than 50 bytes"),
        ]
        for request, status, message in cases:
            for pieces in ([request], [request[i : i + 1] for i in range(len(request))]):
                conn, transport = connect(web)
                for piece in pieces:
                    if transport.written:
                        break  # answered: the connection reads no more
                    conn.data_received(piece)
                [answer] = answers(transport.written)
                assert answer.status == status, request
                assert error_of(answer).startswith(message)
                assert answer.headers["Connection"] == "close"
                # lingering close: our side is shut, what the client still sends is read and dropped
                assert transport.eof_written and transport.protocol is not None
                conn.connection_lost(None)
        await web.close()

    run(test)


def test_refusals_while_draining_and_over_max_connections_use_the_outcome_table() -> None:
    async def test() -> None:
        web = trigger(maxConnections=1)
        first, first_transport = connect(web)
        refused, refused_transport = connect(web)
        [answer] = answers(refused_transport.written)
        assert answer.status == 503
        assert answer.headers["Retry-After"] == "1"
        assert error_of(answer) == (
            "the function already has 1 open connections, its HTTP trigger's maxConnections; retry later"
        )
        assert refused_transport.closed
        web.draining = True
        first.data_received(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        [draining] = answers(first_transport.written)
        assert (draining.status, error_of(draining)) == (503, "the function is shutting down")
        assert draining.headers["Connection"] == "close"
        first.connection_lost(None)
        refused.connection_lost(None)
        await web.close()

    run(test)
