"""The processor's end of one worker's socket: frames out, frames in, the worker's lifecycle.

The link parses what the worker sends and hands each event frame to the pool (dispatch.py), which
alone keeps the worker's in-flight events and checks that each frame belongs to the oldest of them.
Lifecycle frames (ready, fail, drained) settle the link's own futures. Nothing a worker sends makes
`data_received` raise: a corrupt or malformed frame, or one of an unknown kind, kills the worker
(the pool fails what it had and starts a replacement).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections import deque
from typing import TYPE_CHECKING, Any

from nubis.processor import frames
from nubis.processor.events import Submission
from nubis.processor.frames import (
    ACK,
    CHUNK,
    DRAINED,
    EXPIRED,
    FAIL,
    KIND,
    LOG,
    MESSAGE,
    READY,
    RESPONSE,
    RESPONSE_BATCH,
)

if TYPE_CHECKING:
    from nubis.processor.pool import WorkerPool
    from nubis.processor.starters import StartedWorker

log = logging.getLogger("nubis.processor")


class WorkerLink(asyncio.Protocol):
    """One live worker process as the pool sees it."""

    def __init__(self, pool: WorkerPool, wid: int, started: StartedWorker) -> None:
        self.pool = pool
        self.wid = wid
        self.pid = started.pid
        self.started = started
        #: this worker's events, oldest first: read and changed by the pool's dispatch only
        self.inflight: deque[Submission] = deque()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.drained: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.alive = True
        self.killed_reason: str | None = None
        self.first_response_at = 0.0
        #: when this worker last started or answered an event, as far as the processor knows
        self.progress_at = 0.0
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        try:
            messages = frames.unpack_frames(buffer)
        except ValueError as exc:
            self.kill(f"sent a corrupt frame ({exc})")
            return
        pool = self.pool
        for message in messages:
            if self.killed_reason is not None:
                return  # what a killed worker still said is not to be trusted
            try:
                kind = message[KIND]
                if kind == RESPONSE:
                    pool.on_response(self, message)
                elif kind == LOG:
                    pool.on_log(self, message)
                elif kind == CHUNK:
                    pool.on_chunk(self, message)
                elif kind == EXPIRED:
                    pool.on_expired(self, message)
                elif kind == READY:
                    if not self.ready.done():
                        self.ready.set_result(None)
                elif kind == FAIL:
                    pool.log_init_failure(self, message)
                    if not self.ready.done():
                        self.ready.set_exception(RuntimeError(message[MESSAGE]))
                elif kind == DRAINED:
                    if self.drained is not None and not self.drained.done():
                        self.drained.set_result(None)
                elif kind == ACK:
                    pool.on_ack(self, message)
                elif kind == RESPONSE_BATCH:
                    pool.on_batch_response(self, message)
                else:
                    pool.confused(self, f"sent a frame of unknown kind {kind!r}")
            except (KeyError, TypeError, AttributeError) as exc:
                log.exception("worker %d (pid %d) sent a malformed frame", self.wid, self.pid)
                pool.confused(self, f"sent a malformed frame ({type(exc).__name__}: {exc})")

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        if not self.ready.done():
            self.ready.set_exception(RuntimeError("the worker exited before it was ready"))
        if not self.closed.done():
            self.closed.set_result(None)
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.pool.on_worker_lost(self)

    # -- frames out --------------------------------------------------------------------------------
    def send(self, message: dict[str, Any] | frames.EventFrame) -> None:
        """Queue a frame; everything queued in one event-loop turn goes out in one write."""
        self._out.append(frames.pack(message))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(self._out))
        self._out.clear()

    # -- control -----------------------------------------------------------------------------------
    def pause_reading(self) -> bool:
        """Read nothing more from the worker (it blocks in its own send once its socket is full)."""
        if self._transport is None or self._transport.is_closing():
            return False
        self._transport.pause_reading()
        return True

    def resume_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def kill(self, reason: str) -> None:
        """SIGKILL the worker process (timeout, corrupt stream); the pool replaces it."""
        if self.killed_reason is None:
            self.killed_reason = reason
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, signal.SIGKILL)
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
