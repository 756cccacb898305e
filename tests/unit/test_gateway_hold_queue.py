"""The gateway's hold (`nubis.gateway.hold`), in process: a real gateway (its routing table read from
a SQLite store, client connections on a real port) in front of a function port that refuses until
the test starts a server there. What a separate process hides is checked here: `on_hold` once a
burst (a plain callable, a coroutine, one that fails), the bound on held requests, holding off."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import uvloop

from nubis.gateway import hold
from nubis.gateway.proxy import ClientConnection
from nubis.gateway.server import Gateway
from nubis.gateway.settings import GatewaySettings
from nubis.gateway.watch import TableWatch
from nubis.store import Store, default_state_url

NAME = "sleeper"


@contextlib.asynccontextmanager
async def running_gateway(
    data_dir: Path, port: int, on_hold: hold.OnHold | None = None, wake_timeout: float = 10.0
) -> AsyncIterator[tuple[Gateway, int]]:
    """A gateway routing /sleeper to 127.0.0.1:`port`; (the gateway, its own port)."""
    store = await Store.open(default_state_url(data_dir))
    await store.ensure_default_project("nuclio")
    await store.create_function(NAME, "default", "nuclio", {"metadata": {"name": NAME}, "spec": {}})
    await store.set_http_port(NAME, port)
    watch = TableWatch(store)
    await watch.refresh()
    gateway = Gateway(GatewaySettings(data_dir=data_dir, wake_timeout=wake_timeout), watch, on_hold=on_hold)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ClientConnection(gateway), "127.0.0.1", 0)
    try:
        yield gateway, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        gateway.holds.close()
        for conn in list(gateway.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for task in list(gateway.tasks):
            task.cancel()
        await asyncio.gather(*gateway.tasks, return_exceptions=True)
        gateway.pool.close()
        await store.close()


async def request(port: int, path: str) -> tuple[int, bytes, bytes]:
    """(status, head, body) of one GET through the gateway."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def held(gateway: Gateway) -> int:
    queue = gateway.holds.queues.get(NAME)
    return len(queue.waiting) if queue is not None else 0


async def function_server(sock: socket.socket) -> asyncio.Server:
    """The function comes up on the reserved port: each request answered 200 with its path."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ", 2)[1]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(path), path))
        await writer.drain()
        writer.close()

    port = sock.getsockname()[1]
    sock.close()
    return await asyncio.start_server(answer, "127.0.0.1", port)


def reserved_port() -> socket.socket:
    """Bound and not listening: connections are refused, and the port stays this test's."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def test_on_hold_is_called_once_a_burst_and_every_held_request_is_answered(tmp_path: Path) -> None:
    calls: list[str] = []

    async def main() -> None:
        sock = reserved_port()
        async with running_gateway(tmp_path, sock.getsockname()[1], calls.append) as (gateway, port):
            burst = [asyncio.ensure_future(request(port, f"/{NAME}/{index}")) for index in range(3)]
            await until(lambda: held(gateway) == 3, "three held")
            assert calls == [NAME]
            server = await function_server(sock)
            try:
                answers = await asyncio.gather(*burst)
                assert [(status, body) for status, _, body in answers] == [(200, f"/{i}".encode()) for i in range(3)]
                assert not gateway.holds.queues
                # the function is up: no hold, no call
                assert (await request(port, f"/{NAME}/up"))[0] == 200
                assert calls == [NAME]
            finally:
                server.close()
                await server.wait_closed()
            # it went away again: the next request is another burst
            later = asyncio.ensure_future(request(port, f"/{NAME}/later"))
            await until(lambda: held(gateway) == 1, "one held again")
            assert calls == [NAME, NAME]
            later.cancel()

    uvloop.run(main())


def test_a_coroutine_on_hold_runs_and_a_failing_one_holds_nothing_up(tmp_path: Path) -> None:
    woken = asyncio.Event()

    async def wake(function: str) -> None:
        woken.set()
        raise RuntimeError("the agent is not there")

    async def main() -> None:
        sock = reserved_port()
        async with running_gateway(tmp_path, sock.getsockname()[1], wake, wake_timeout=0.3) as (_, port):
            status, head, body = await request(port, f"/{NAME}/x")
            assert woken.is_set()
            assert status == 503 and b"\r\nRetry-After: 1\r\n" in head
            assert b"did not become available within 0.3 s" in body
        sock.close()

    uvloop.run(main())


def test_past_max_held_a_request_is_503_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hold, "MAX_HELD", 2)

    async def main() -> None:
        sock = reserved_port()
        async with running_gateway(tmp_path, sock.getsockname()[1]) as (gateway, port):
            waiting = [asyncio.ensure_future(request(port, f"/{NAME}/{index}")) for index in range(2)]
            await until(lambda: held(gateway) == 2, "two held")
            status, head, body = await request(port, f"/{NAME}/third")
            assert status == 503 and b"\r\nRetry-After: 1\r\n" in head
            assert b"has 2 requests waiting for a replica already" in body
            server = await function_server(sock)
            try:
                assert [answer[0] for answer in await asyncio.gather(*waiting)] == [200, 200]
            finally:
                server.close()
                await server.wait_closed()

    uvloop.run(main())


def test_with_holding_off_a_refused_request_is_502_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        sock = reserved_port()
        async with running_gateway(tmp_path, sock.getsockname()[1], wake_timeout=0) as (gateway, port):
            status, _, body = await request(port, f"/{NAME}/x")
            assert status == 502 and b"cannot connect to sleeper" in body
            assert not gateway.holds.queues
        sock.close()

    uvloop.run(main())
