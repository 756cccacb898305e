"""The event loop of one worker process: read event frames, call the handler, write response frames.

The loop is a plain blocking socket loop, not asyncio: a worker runs one event at a time (Nuclio's
sync mode), and blocking `recv`/`sendall` cost the least per event. Responses produced while more
events are already buffered are written together, so a burst costs one syscall each way; a slow
handler never holds back an earlier response for longer than `FLUSH_AFTER_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import sys
import time
import traceback
import types

import nuclio_sdk
from nubis_worker import framing, outputs
from nubis_worker.batch import handle_batch
from nubis_worker.events import build_event
from nubis_worker.framing import (
    ACK,
    BODY,
    CHUNK,
    CONTENT_TYPE,
    DEADLINE,
    DRAIN,
    DRAINED,
    DURATION,
    END,
    ERROR,
    EVENT,
    EVENT_BATCH,
    EXPIRED,
    FAIL,
    HEADERS,
    KIND,
    LEVEL,
    MESSAGE,
    READY,
    RESPONSE,
    SEQ,
    STATUS,
    STREAM,
    TERMINATE,
    TRACEBACK,
)
from nubis_worker.logsink import make_logger
from nubis_worker.platform import NubisPlatform
from nubis_worker.tracebacks import user_traceback

#: A response waits in the outgoing buffer at most this long for the next one to share its write.
FLUSH_AFTER_SECONDS = 0.0005

_PLAIN_OUTPUTS = frozenset((str, bytes, dict, list, tuple, nuclio_sdk.Response))
_GENERATORS = frozenset((types.GeneratorType, types.AsyncGeneratorType))
_Response = nuclio_sdk.Response
_NO_HEADERS = {}  # type: ignore[var-annotated]


class _State:
    __slots__ = ("current",)

    def __init__(self):  # type: ignore[no-untyped-def]
        self.current = None


class Worker:
    """One worker: owns the socket to the processor and the user's context."""

    def __init__(
        self,
        sock,
        handler,
        module,
        *,
        worker_id,
        trigger_kind,
        trigger_name,
        function_name,
        namespace="nubis",
        platform_kind="local",
    ):  # type: ignore[no-untyped-def]
        self.sock = sock
        self.handler = handler
        self.module = module
        self.out = []
        self.state = _State()
        self.loop = None
        self.level = logging.INFO
        self.trigger = nuclio_sdk.TriggerInfo(trigger_kind, trigger_name)
        self.logger = make_logger("nubis.function." + function_name, self.emit, self.state)
        self.logger.bind(worker_id=str(worker_id))
        self.platform = NubisPlatform(platform_kind, namespace=namespace, on_control_callback=self._control)
        self.context = nuclio_sdk.Context(self.logger, self.platform, str(worker_id), self.trigger)
        self.handler_is_async = inspect.iscoroutinefunction(handler)

    # -- output -------------------------------------------------------------------------------
    def emit(self, message):  # type: ignore[no-untyped-def]
        self.out.append(framing.pack(message))

    def flush(self):  # type: ignore[no-untyped-def]
        if self.out:
            data = b"".join(self.out)
            self.out.clear()
            self.sock.sendall(data)

    async def _control(self, message):  # type: ignore[no-untyped-def]
        # `context.platform.explicit_ack(...)`: the stream trigger commits on this frame.
        self.emit({KIND: ACK, SEQ: self.state.current, MESSAGE: message})

    def run_coroutine(self, awaitable):  # type: ignore[no-untyped-def]
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
        return self.loop.run_until_complete(awaitable)

    # -- lifecycle ------------------------------------------------------------------------------
    def initialise(self):  # type: ignore[no-untyped-def]
        """Run the module's `init_context(context)` once; report failure and exit like Nuclio does."""
        init = getattr(self.module, "init_context", None)
        if init is not None:
            try:
                result = init(self.context)
                if inspect.isawaitable(result):
                    self.run_coroutine(result)
            except BaseException as exc:
                # The traceback travels once, in the fail frame (the processor reports it); the
                # user's frames only.
                self.logger.error_with("Exception raised while running init_context", exc=str(exc))
                tb = user_traceback(exc)
                self.emit({KIND: FAIL, MESSAGE: "Exception raised while running init_context: %s" % exc, TRACEBACK: tb})
                self.flush()
                return False
        self.emit({KIND: READY, "pid": os.getpid()})
        self.flush()
        return True

    def serve(self):  # type: ignore[no-untyped-def]
        """Handle frames until the processor says `term` or closes the socket."""
        buffer = bytearray()
        recv = self.sock.recv
        perf = time.perf_counter
        while True:
            try:
                data = recv(262144)
            except ConnectionResetError:
                return 0
            if not data:
                return 0
            buffer += data
            batch_start = perf()
            for frame in framing.unpack_frames(buffer):
                kind = frame[KIND]
                if kind == EVENT:
                    self.handle_event(frame)
                    if perf() - batch_start > FLUSH_AFTER_SECONDS:
                        self.flush()
                        batch_start = perf()
                elif kind == EVENT_BATCH:
                    # after EVENT: the single event's path pays nothing for batches
                    handle_batch(self, frame)
                    self.flush()
                    batch_start = perf()
                elif kind == DRAIN:
                    self._call_callback("drain")
                    self.emit({KIND: DRAINED})
                elif kind == TERMINATE:
                    self._call_callback("termination")
                    self.flush()
                    return 0
            self.flush()

    def _call_callback(self, kind):  # type: ignore[no-untyped-def]
        try:
            result = self.platform._on_signal(callback_type=kind)
            if inspect.isawaitable(result):
                self.run_coroutine(result)
        except BaseException as exc:
            self.logger.error_with(
                "Exception raised in %s callback" % kind, exc=str(exc), traceback=traceback.format_exc()
            )

    # -- events ---------------------------------------------------------------------------------
    # The two helpers below are what `handle_event` does inline (a call per event costs there).
    def refused_late(self, frame):  # type: ignore[no-untyped-def]
        """True, with the `x` frame sent, for a frame that came past its availability deadline."""
        deadline = frame.get(DEADLINE)
        if deadline and time.monotonic() > deadline:
            self.emit({KIND: EXPIRED, SEQ: frame[SEQ]})
            return True
        return False

    def set_level(self, level):  # type: ignore[no-untyped-def]
        """The lowest level of the log records sent back."""
        if level != self.level:
            self.level = level
            self.logger._logger.setLevel(level)

    def handle_event(self, frame):  # type: ignore[no-untyped-def]
        seq = frame[SEQ]
        deadline = frame.get(DEADLINE)
        if deadline and time.monotonic() > deadline:
            # Not started within workerAvailabilityTimeout: the processor answers 503.
            self.emit({KIND: EXPIRED, SEQ: seq})
            return
        level = frame.get(LEVEL, logging.INFO)
        if level != self.level:
            self.level = level
            self.logger._logger.setLevel(level)
        self.state.current = seq
        started = time.perf_counter()
        try:
            event = build_event(frame, self.trigger)
            output = self.handler(self.context, event)
            kind = output.__class__
            if kind is str:
                status, content_type, headers, body = 200, "text/plain", _NO_HEADERS, output.encode("utf-8")
            elif kind is _Response and output.body.__class__ not in _GENERATORS:
                status, content_type, headers, body = outputs.from_response_object(output)
            else:
                if kind not in _PLAIN_OUTPUTS and inspect.isawaitable(output):
                    output = self.run_coroutine(output)
                if outputs.is_stream(output):
                    self.stream(seq, output, started)
                    return
                status, content_type, headers, body = outputs.to_response(output)
        except BaseException as exc:
            self._emit_handler_error(seq, exc, started)
            return
        finally:
            self.state.current = None
        # Written out here rather than through a helper shared with _emit_handler_error: this is the
        # hot path, and a call per event costs more than the repeated keys.
        self.out.append(
            framing.pack(
                {
                    KIND: RESPONSE,
                    SEQ: seq,
                    STATUS: status,
                    CONTENT_TYPE: content_type,
                    HEADERS: headers,
                    BODY: body,
                    DURATION: time.perf_counter() - started,
                }
            )
        )

    def _emit_handler_error(self, seq, exc, started):  # type: ignore[no-untyped-def]
        """The handler raised (call it while handling `exc`): Nuclio's 500, with `err` so that the
        trigger's outcome is "handler error", not "handled"."""
        status, content_type, headers, body, tb = outputs.exception_response(exc)
        self.logger.error_with("Exception caught in handler", exc=str(exc), traceback=tb)
        self.emit(
            {
                KIND: RESPONSE,
                SEQ: seq,
                STATUS: status,
                CONTENT_TYPE: content_type,
                HEADERS: headers,
                BODY: body,
                DURATION: time.perf_counter() - started,
                ERROR: str(exc),
            }
        )

    def _items(self, body):  # type: ignore[no-untyped-def]
        if hasattr(body, "__anext__"):
            while True:
                try:
                    yield self.run_coroutine(body.__anext__())
                except StopAsyncIteration:
                    return
        else:
            yield from body

    def _emit_stream_head(self, seq, output, first_item):  # type: ignore[no-untyped-def]
        status, content_type, headers, first = outputs.first_of_stream(output, first_item)
        self.emit(
            {
                KIND: RESPONSE,
                SEQ: seq,
                STATUS: status,
                CONTENT_TYPE: content_type,
                HEADERS: headers,
                BODY: first,
                STREAM: True,
            }
        )

    def stream(self, seq, output, started):  # type: ignore[no-untyped-def]
        """Send a generator's items as they come: the first as the response head, the rest as chunks."""
        body = output.body if isinstance(output, nuclio_sdk.Response) else output
        sent_head = False
        self.state.current = seq
        try:
            for item in self._items(body):
                if not sent_head:
                    self._emit_stream_head(seq, output, item)
                    sent_head = True
                else:
                    self.emit({KIND: CHUNK, SEQ: seq, BODY: outputs.chunk_bytes(item)})
                self.flush()
            if not sent_head:
                self._emit_stream_head(seq, output, b"")
            self.emit({KIND: CHUNK, SEQ: seq, END: True, DURATION: time.perf_counter() - started})
        except BaseException as exc:
            if sent_head:
                tb = outputs.exception_response(exc)[4]
                self.logger.error_with("Exception caught in handler", exc=str(exc), traceback=tb)
                self.emit({KIND: CHUNK, SEQ: seq, END: True, ERROR: str(exc)})
            else:
                self._emit_handler_error(seq, exc, started)
        finally:
            self.state.current = None
        self.flush()


def set_parent_death_signal():  # type: ignore[no-untyped-def]
    """Die with the parent (Linux): a processor or zygote killed with SIGKILL leaves no orphans."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - best effort
        pass


def run_worker(fd, handler, module, **kwargs):  # type: ignore[no-untyped-def]
    """Entry point inside a fresh worker: returns the process exit code."""
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    worker = Worker(sock, handler, module, **kwargs)
    if not worker.initialise():
        return 1
    try:
        return worker.serve()
    finally:
        with contextlib.suppress(OSError):
            worker.flush()
