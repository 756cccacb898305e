"""The processor side of the processor <-> worker wire format (DESIGN.md, "Processor ⇄ worker frames").

Each frame is a 4-byte big-endian length followed by one msgpack map. The schema (every kind, every
key, who sends it, what it means) is written once, in docs/processor-frames.md; the names below are
the only spelling of its keys in the processor. The worker side implements the same format and
mirrors these names in `nubis.runtimes.python.nubis_worker.framing` (standard library + msgpack
only, because it runs in the function's interpreter); tests/unit/test_frames.py keeps the two in
agreement.

Frames stay plain dicts at run time: a TypedDict costs nothing per event, while building and
reading objects would cost on the hot path what the keys save on the wire.
"""

from __future__ import annotations

import struct
from typing import Any, Final, Required, TypedDict

import msgpack

_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size
#: Larger frames mean a corrupt stream, not a big body (bodies are capped far below this).
MAX_FRAME = 1 << 30

# -- frame kinds (the value of KIND) -----------------------------------------------------------------
#: processor -> worker: one event to handle
EVENT: Final = "e"
#: processor -> worker: a batch of events for one handler call (a trigger in batch mode)
EVENT_BATCH: Final = "eb"
#: processor -> worker: run the drain callback, answer DRAINED
DRAIN: Final = "drain"
#: processor -> worker: run the termination callback and exit
TERMINATE: Final = "term"
#: worker -> processor: init_context done, events may come
READY: Final = "ready"
#: worker -> processor: the handler could not be loaded or init_context raised; the worker exits
FAIL: Final = "fail"
#: worker -> processor: an event's response, or the head of a streamed one
RESPONSE: Final = "r"
#: worker -> processor: a batch's per-event results
RESPONSE_BATCH: Final = "rb"
#: worker -> processor: a piece of a streamed body, or its end
CHUNK: Final = "k"
#: worker -> processor: an event not started, its availability deadline had passed
EXPIRED: Final = "x"
#: worker -> processor: one log record
LOG: Final = "l"
#: worker -> processor: `context.platform.explicit_ack(...)` for a stream trigger
ACK: Final = "ack"
#: worker -> processor: the drain callback has run
DRAINED: Final = "drained"

# -- keys --------------------------------------------------------------------------------------------
#: every frame: its kind
KIND: Final = "t"
#: the event a frame is about: the pool's sequence number, increasing per pool
SEQ: Final = "n"
#: event: monotonic time after which the worker must not start it (pipelined events only)
DEADLINE: Final = "dl"
#: event: the lowest log level to send back (numeric; absent = info); log: the record's level name
LEVEL: Final = "lvl"
#: response: status code, content type, headers, body
STATUS: Final = "s"
CONTENT_TYPE: Final = "c"
HEADERS: Final = "h"
BODY: Final = "b"
#: response / last chunk: seconds the handler ran
DURATION: Final = "d"
#: response: True when this is the head of a streamed body (CHUNK frames follow)
STREAM: Final = "stream"
#: chunk: True on the last one
END: Final = "end"
#: response / last chunk: the handler raised; the exception's text
ERROR: Final = "err"
#: fail / log / ack: the message
MESSAGE: Final = "msg"
#: fail: the user's traceback
TRACEBACK: Final = "tb"
#: log: the record's bound variables
LOG_VARS: Final = "with"
#: event batch: the batch's event maps, in order
EVENTS: Final = "ev"
#: batch response: one result per event of the batch, in the batch's order (nil: none returned)
RESULTS: Final = "res"

# -- the zygote's control channel (processor/zygote.py <-> nubis_worker/zygote.py) ---------------------
# One msgpack map per datagram, keyed by KIND; FAIL, TERMINATE and MESSAGE/TRACEBACK as above.
#: processor -> zygote: fork a worker for the socket passed along (SCM_RIGHTS)
FORK: Final = "fork"
#: zygote -> processor: the handler is imported, workers may be forked
LOADED: Final = "loaded"
#: zygote -> processor (started with --defer-load): the runtime is imported, no user code yet
BLANK: Final = "blank"
#: processor -> blank zygote: import the handler now (a wake from zero); LOADED or FAIL follows
LOAD: Final = "load"
#: zygote -> processor: a worker was forked (WORKER_ID, PID)
FORKED: Final = "forked"
#: zygote -> processor: a worker ended (PID, EXIT_STATUS)
EXITED: Final = "exited"
WORKER_ID: Final = "wid"
PID: Final = "pid"
THREADS: Final = "threads"
EXIT_STATUS: Final = "status"
TRIGGER_KIND: Final = "trigger_kind"
TRIGGER_NAME: Final = "trigger_name"


class EventFrame(TypedDict, total=False):
    """processor -> worker `e`: one event. Fields at their default are left out (the worker fills
    them in: see nubis_worker/events.py), so a plain HTTP request's frame stays small."""

    t: Required[str]
    n: int
    dl: float
    lvl: int
    id: Required[str]
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    timestamp: int
    fields: dict[str, str]
    content_type: str
    size: int
    url: str
    shard_id: int
    num_shards: int
    type: str
    type_version: str
    version: str
    offset: int
    topic: str


class BatchFrame(TypedDict, total=False):
    """processor -> worker `eb`: the events of one batch (each an `EventFrame`), handled by one call."""

    t: Required[str]
    n: int
    dl: float
    lvl: int
    ev: Required[list[EventFrame]]


_packer = msgpack.Packer(use_bin_type=True, default=repr)


def pack(message: dict[str, Any] | EventFrame | BatchFrame) -> bytes:
    """Encode one message as a length-prefixed frame."""
    payload: bytes = _packer.pack(message)
    return _HEADER.pack(len(payload)) + payload


def unpack_frames(buffer: bytearray) -> list[dict[str, Any]]:
    """Split every complete frame off the front of `buffer`, which is consumed in place.

    Raises:
        ValueError: a length prefix is zero or absurdly large (the stream is corrupt).
    """
    messages: list[dict[str, Any]] = []
    offset = 0
    size = len(buffer)
    unpackb = msgpack.unpackb
    while size - offset >= HEADER_SIZE:
        (length,) = _HEADER.unpack_from(buffer, offset)
        if length <= 0 or length > MAX_FRAME:
            raise ValueError(f"invalid frame length {length}")
        end = offset + HEADER_SIZE + length
        if end > size:
            break
        messages.append(unpackb(buffer[offset + HEADER_SIZE : end], raw=False))
        offset = end
    if offset:
        del buffer[:offset]
    return messages
