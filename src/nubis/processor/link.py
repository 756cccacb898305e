"""The processor's end of one worker's socket: frames out, frames in, in-order bookkeeping.

A worker handles its events strictly in order, so the submission a response belongs to is always
the oldest outstanding one; `n` in each frame is checked against it to catch a confused stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from nubis.processor import frames
from nubis.processor.events import Response, Submission, error_response

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
        self.outstanding: deque[Submission] = deque()
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
        for message in messages:
            kind = message["t"]
            if kind == "r":
                self._on_response(message)
            elif kind == "l":
                self._on_log(message)
            elif kind == "k":
                self._on_chunk(message)
            elif kind == "x":
                sub = self.outstanding.popleft()
                response = error_response(503, "no worker became available in time", {"Retry-After": "1"})
                self.pool.finish(self, sub, response, 0.0)
            elif kind == "ready":
                if not self.ready.done():
                    self.ready.set_result(None)
            elif kind == "fail":
                self.pool.log_init_failure(self, message)
                if not self.ready.done():
                    self.ready.set_exception(RuntimeError(message["msg"]))
            elif kind == "drained":
                if self.drained is not None and not self.drained.done():
                    self.drained.set_result(None)
            elif kind == "ack":
                self.pool.on_ack(self, message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        if not self.ready.done():
            self.ready.set_exception(RuntimeError("the worker exited before it was ready"))
        if not self.closed.done():
            self.closed.set_result(None)
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.pool.on_worker_lost(self)

    # -- frames in ---------------------------------------------------------------------------------
    def _on_response(self, message: dict[str, Any]) -> None:
        sub = self.outstanding[0]
        response = Response(
            message["s"],
            message["c"],
            message["h"],
            message["b"],
            stream=message.get("stream", False),
            duration=message.get("d", 0.0),
        )
        if not self.first_response_at:
            self.first_response_at = time.monotonic()
            self.pool.first_event_latencies.append(self.first_response_at - self.started.fork_time)
        if response.stream:
            if self.pool.stream_started(self, sub):
                response.logs = sub.capture
                sub.reply.respond(response)
            return
        self.outstanding.popleft()
        self.pool.finish(self, sub, response, response.duration)

    def _on_chunk(self, message: dict[str, Any]) -> None:
        sub = self.outstanding[0]
        if message.get("end"):
            self.outstanding.popleft()
            if sub.streaming:
                sub.reply.end(message.get("err"))
            self.pool.finish(self, sub, None, message.get("d", 0.0))
        elif sub.streaming:
            sub.reply.chunk(message["b"])

    def _on_log(self, message: dict[str, Any]) -> None:
        seq = message.get("n")
        sub = None
        if seq is not None:
            for candidate in self.outstanding:
                if candidate.seq == seq:
                    sub = candidate
                    break
        if sub is not None and sub.capture is not None:
            sub.capture.append(message)
        self.pool.emit_log(self, sub, message)

    # -- frames out --------------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
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
