"""The processor <-> worker wire format: a 4-byte big-endian length, then one msgpack map.

Bodies travel as msgpack `bin`, never base64. Several frames written in one go are simply
concatenated, which is how the processor batches a whole event-loop turn into one write.

The names of frame kinds and keys mirror `nubis.processor.frames` (this package may import nothing
of nubis); tests/unit/test_frames.py checks that both spell them alike. docs/processor-frames.md
is the schema.
"""

from __future__ import annotations

import struct

import msgpack

_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size
MAX_FRAME = 1 << 30

# Frame kinds (the value of KIND).
EVENT = "e"
EVENT_BATCH = "eb"
DRAIN = "drain"
TERMINATE = "term"
READY = "ready"
FAIL = "fail"
RESPONSE = "r"
RESPONSE_BATCH = "rb"
CHUNK = "k"
EXPIRED = "x"
LOG = "l"
ACK = "ack"
DRAINED = "drained"

# Keys.
KIND = "t"
SEQ = "n"
DEADLINE = "dl"
LEVEL = "lvl"
STATUS = "s"
CONTENT_TYPE = "c"
HEADERS = "h"
BODY = "b"
DURATION = "d"
STREAM = "stream"
END = "end"
ERROR = "err"
MESSAGE = "msg"
TRACEBACK = "tb"
LOG_VARS = "with"
EVENTS = "ev"
RESULTS = "res"

# -- the zygote's control channel (processor/zygote.py <-> nubis_worker/zygote.py) ---------------------
# One msgpack map per datagram, keyed by KIND; FAIL, TERMINATE and MESSAGE/TRACEBACK as above.
#: processor -> zygote: fork a worker for the socket passed along (SCM_RIGHTS)
FORK = "fork"
#: zygote -> processor: the handler is imported, workers may be forked
LOADED = "loaded"
#: zygote -> processor (started with --defer-load): the runtime is imported, no user code yet
BLANK = "blank"
#: processor -> blank zygote: import the handler now (a wake from zero); LOADED or FAIL follows
LOAD = "load"
#: zygote -> processor: a worker was forked (WORKER_ID, PID)
FORKED = "forked"
#: zygote -> processor: a worker ended (PID, EXIT_STATUS)
EXITED = "exited"
WORKER_ID = "wid"
PID = "pid"
THREADS = "threads"
EXIT_STATUS = "status"
TRIGGER_KIND = "trigger_kind"
TRIGGER_NAME = "trigger_name"


def _fallback(value):  # type: ignore[no-untyped-def]
    # Log variables and headers may hold anything; never fail a frame because of one value.
    return repr(value)


_packer = msgpack.Packer(use_bin_type=True, default=_fallback)


def pack(message):  # type: ignore[no-untyped-def]
    """Encode one message (a dict) as a length-prefixed frame."""
    payload = _packer.pack(message)
    return _HEADER.pack(len(payload)) + payload


def unpack_frames(buffer):  # type: ignore[no-untyped-def]
    """Split complete frames off the front of `buffer` (a bytearray, consumed in place)."""
    messages = []
    offset = 0
    size = len(buffer)
    unpackb = msgpack.unpackb
    while size - offset >= HEADER_SIZE:
        (length,) = _HEADER.unpack_from(buffer, offset)
        if length <= 0 or length > MAX_FRAME:
            raise ValueError("invalid frame length %d" % length)
        end = offset + HEADER_SIZE + length
        if end > size:
            break
        messages.append(unpackb(memoryview(buffer)[offset + HEADER_SIZE : end], raw=False))
        offset = end
    if offset:
        del buffer[:offset]
    return messages
