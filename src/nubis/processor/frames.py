"""The processor side of the processor <-> worker wire format (DESIGN.md, "Processor ⇄ worker frames").

Each frame is a 4-byte big-endian length followed by one msgpack map. The worker side implements
the same format in `nubis.runtimes.python.nubis_worker.framing` (standard library + msgpack only,
because it runs in the function's interpreter); a unit test keeps the two in agreement.

Frame kinds (`t`): processor -> worker `e` (event), `drain`, `term`; worker -> processor `ready`,
`fail`, `r` (response or the head of a streamed one), `k` (stream chunk / end), `x` (event not
started: its availability deadline passed), `l` (log), `ack` (explicit stream acknowledgement),
`drained`.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size
#: Larger frames mean a corrupt stream, not a big body (bodies are capped far below this).
MAX_FRAME = 1 << 30

_packer = msgpack.Packer(use_bin_type=True, default=repr)


def pack(message: dict[str, Any]) -> bytes:
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
