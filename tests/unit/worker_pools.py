"""A real `WorkerPool` of real `nubis_worker` processes for unit tests, without any server.

Workers are started by the production `SpawnStarter` (the `nubis_worker.spawn` entry point, this
interpreter, which has nuclio-sdk and msgpack), not in a thread: the pool kills a worker by its pid
(eventTimeout, a confused stream), which a thread cannot stand for. The handler below does what the
event's path asks, so each test picks its behaviour per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from nubis.processor.events import Response, Submission
from nubis.processor.frames import EVENT, KIND, EventFrame
from nubis.processor.outcomes import Outcome
from nubis.processor.pool import WorkerPool
from nubis.processor.starters import SpawnStarter
from nubis.runtimes.base import WorkerRequest
from nubis.runtimes.python.runtime import RUNTIME, python_artifact

HANDLER = '''
import os
import socket
import sys
import time

import nuclio_sdk
from nubis_worker import framing


def _raw_frame(message):
    """Write a frame of our own on the event socket, as a confused worker would."""
    fd = int(sys.argv[sys.argv.index("--event-fd") + 1])
    sock = socket.socket(fileno=os.dup(fd))
    sock.sendall(framing.pack(message))
    sock.close()


def handler(context, event):
    path, body = event.path, event.body
    if path == "/echo":
        return body
    if path == "/pid":
        return str(os.getpid())
    if path == "/raise":
        raise ValueError("boom")
    if path == "/status500":
        return 500, "chose 500"
    if path == "/exit":
        os._exit(3)
    if path == "/block":
        # wait until the test creates the flag file named by the body
        while not os.path.exists(body.decode()):
            time.sleep(0.002)
        return "released"
    if path == "/log":
        context.logger.info("from the handler")
        return "logged"
    if path == "/ack":
        async def ack():
            await context.platform.explicit_ack(nuclio_sdk.QualifiedOffset("orders", 2, 41))
            return "acked"
        return ack()
    if path == "/stream":
        return (part for part in (b"a", b"b", b"c"))
    if path == "/stream-raise":
        def parts():
            yield b"a"
            raise RuntimeError("mid-stream")
        return parts()
    if path == "/stream-exit":
        def parts():
            yield b"a"
            os._exit(4)
        return parts()
    if path == "/stray":
        _raw_frame({"t": "r", "n": 10 ** 6, "s": 200, "c": "", "h": {}, "b": b""})
        return "after the stray frame"
    if path == "/unknown-kind":
        _raw_frame({"t": "zzz", "n": 1})
        return "after the unknown frame"
    if path == "/malformed":
        _raw_frame({"t": "r"})
        return "after the malformed frame"
    return "unknown path " + path
'''


class Recorder:
    """A trigger's side of one event: what the pool answered, streamed and acknowledged."""

    def __init__(self) -> None:
        self.response: Response | None = None
        self.chunks: list[bytes] = []
        self.ended: tuple[str | None, Outcome] | None = None
        self.acks: list[Any] = []
        self.done: asyncio.Future[Response] = asyncio.get_running_loop().create_future()

    def respond(self, response: Response) -> None:
        assert self.response is None, "answered twice"
        self.response = response
        if not response.stream:
            self.done.set_result(response)

    def chunk(self, data: bytes) -> None:
        self.chunks.append(data)

    def end(self, error: str | None, outcome: Outcome) -> None:
        assert self.response is not None and self.response.stream
        self.ended = (error, outcome)
        self.done.set_result(self.response)

    def ack(self, message: Any) -> None:
        self.acks.append(message)

    async def answer(self, timeout: float = 20.0) -> Response:
        return await asyncio.wait_for(asyncio.shield(self.done), timeout)


def event(path: str, body: bytes = b"") -> tuple[Submission, Recorder]:
    frame: EventFrame = {
        KIND: EVENT,
        "id": f"test-{path}",
        "method": "POST",
        "path": path,
        "headers": {},
        "body": body,
        "timestamp": int(time.time()),
    }
    reply = Recorder()
    return Submission(frame, reply), reply


class Pools:
    """Starts pools for one test in `root`; `release(name)` lets `/block` handlers waiting on it go."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.function_dir = root / "function"
        self.function_dir.mkdir(exist_ok=True)
        (self.function_dir / "main.py").write_text(HANDLER)
        self.starters: list[SpawnStarter] = []
        self.pools: list[WorkerPool] = []
        self._flags = 0

    def flag(self) -> bytes:
        """A new flag file name for a `/block` event (the body), not yet created."""
        self._flags += 1
        return str(self.root / f"flag-{self._flags}").encode()

    def release(self, flag: bytes) -> None:
        Path(flag.decode()).touch()

    async def start(self, size: int = 1, **settings: Any) -> WorkerPool:
        # the Python runtime's own worker command, with this interpreter as the "built environment"
        request = WorkerRequest(
            handler="main:handler", function_dir=self.function_dir, function_name="pooltest", env=dict(os.environ)
        )
        starter = SpawnStarter(RUNTIME.worker(python_artifact(sys.executable), request))
        self.starters.append(starter)
        pool = WorkerPool(
            function_name="pooltest", trigger_kind="test", trigger_name="t", size=size, starter=starter, **settings
        )
        self.pools.append(pool)
        await pool.start()
        return pool

    async def close(self) -> None:
        for index in range(1, self._flags + 1):
            self.release(str(self.root / f"flag-{index}").encode())
        for pool in self.pools:
            await pool.stop(0)
        for starter in self.starters:
            starter.stop()


@contextlib.asynccontextmanager
async def pools(root: Path) -> AsyncIterator[Pools]:
    """Pools for one test; every worker is stopped on the way out, whatever the test did.

    The loop's exception handler fails the test for anything raised in a callback (a frame handler
    of the link raising inside `data_received` would land there).
    """
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    harness = Pools(root)
    try:
        yield harness
    finally:
        await harness.close()
    assert errors == [], errors
