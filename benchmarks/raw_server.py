"""The physical limit: a bare uvloop + httptools server answering every request with a fixed body.

Run by http_invoke.py as the same-run baseline; `python raw_server.py PORT`.
"""

from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: raw\r\nContent-Type: text/plain\r\nContent-Length: 26\r\n\r\n"
    b"Hello, world! (from Nubis)"
)


class RawProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        self.transport.write(RESPONSE)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(RawProtocol, "127.0.0.1", port, backlog=4096)
    print(f"raw ready at http://127.0.0.1:{port}/", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
