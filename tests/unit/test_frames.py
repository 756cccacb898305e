"""The processor side (`nubis.processor.frames`) and the worker side (`nubis_worker.framing`) of the
processor <-> worker wire format agree: what one packs, the other unpacks, however it is split."""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

import nubis.runtimes.python
from nubis.processor import frames as processor_frames

# The worker package runs in the function's interpreter and is not installed: import it the way
# the platform does, from the directory it puts on the worker's PYTHONPATH.
sys.path.insert(0, str(nubis.runtimes.python.WORKER_PATH))
from nubis_worker import framing as worker_framing

Pack = Callable[[dict[str, Any]], bytes]
Unpack = Callable[[bytearray], list[dict[str, Any]]]

DIRECTIONS = [
    pytest.param(processor_frames.pack, worker_framing.unpack_frames, id="processor-to-worker"),
    pytest.param(worker_framing.pack, processor_frames.unpack_frames, id="worker-to-processor"),
    pytest.param(processor_frames.pack, processor_frames.unpack_frames, id="processor-to-processor"),
    pytest.param(worker_framing.pack, worker_framing.unpack_frames, id="worker-to-worker"),
]
UNPACKERS = [
    pytest.param(processor_frames.unpack_frames, id="processor"),
    pytest.param(worker_framing.unpack_frames, id="worker"),
]

EVENT = {
    "t": "e",
    "n": 7,
    "id": "4f1c2a9e-8f6b-4a53-9d0e-2b7c1f7e9a10",
    "method": "POST",
    "path": "/things",
    "headers": {"Content-Type": "application/json", "X-My-Header": "ü"},
    "fields": {"a": "1", "empty": ""},
    "body": b'\x00\xff{"k": 1}',
    "size": 11,
    "timestamp": 1_700_000_000,
    "dl": 12345.678,
}
RESPONSE = {"t": "r", "n": 7, "s": 201, "c": "text/plain", "h": {"X-A": "1", "X-N": 5}, "b": b"", "d": 0.25}
LOG = {"t": "l", "n": None, "lvl": "info", "msg": "héllo", "with": {"nested": [1, 2.5, True, None]}}
BATCH = {"t": "eb", "n": 8, "lvl": 10, "ev": [{"t": "e", "id": "a", "body": b"\x00"}, {"t": "e", "id": "b"}]}
BATCH_RESPONSE = {"t": "rb", "n": 8, "d": 0.5, "res": [{"s": 200, "c": "", "h": {}, "b": b"\xff"}, None]}


def test_the_wire_constants_agree() -> None:
    assert processor_frames.HEADER_SIZE == worker_framing.HEADER_SIZE == 4
    assert processor_frames.MAX_FRAME == worker_framing.MAX_FRAME


def test_both_sides_encode_identically() -> None:
    for message in (EVENT, RESPONSE, LOG, BATCH, BATCH_RESPONSE):
        assert processor_frames.pack(message) == worker_framing.pack(message)


def test_frame_is_a_big_endian_length_then_msgpack() -> None:
    data = processor_frames.pack(RESPONSE)
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    assert msgpack.unpackb(data[4:], raw=False) == RESPONSE


@pytest.mark.parametrize(("pack", "unpack"), DIRECTIONS)
def test_round_trip_keeps_bytes_and_str_apart(pack: Pack, unpack: Unpack) -> None:
    buffer = bytearray(pack(EVENT))
    [message] = unpack(buffer)
    assert message == EVENT
    assert isinstance(message["body"], bytes)
    assert isinstance(message["path"], str)
    assert buffer == bytearray()


@pytest.mark.parametrize(("pack", "unpack"), DIRECTIONS)
def test_a_batch_and_its_results_keep_their_nested_bytes_and_nils(pack: Pack, unpack: Unpack) -> None:
    buffer = bytearray(pack(BATCH) + pack(BATCH_RESPONSE))
    batch, results = unpack(buffer)
    assert (batch, results) == (BATCH, BATCH_RESPONSE)
    assert isinstance(batch["ev"][0]["body"], bytes) and isinstance(batch["ev"][1]["id"], str)
    assert isinstance(results["res"][0]["b"], bytes) and results["res"][1] is None


@pytest.mark.parametrize(("pack", "unpack"), DIRECTIONS)
def test_several_frames_in_one_buffer(pack: Pack, unpack: Unpack) -> None:
    buffer = bytearray(pack(EVENT) + pack(RESPONSE) + pack(LOG))
    assert unpack(buffer) == [EVENT, RESPONSE, LOG]
    assert buffer == bytearray()


@pytest.mark.parametrize(("pack", "unpack"), DIRECTIONS)
def test_partial_buffers_byte_by_byte(pack: Pack, unpack: Unpack) -> None:
    data = pack(EVENT) + pack(RESPONSE)
    buffer = bytearray()
    received: list[dict[str, Any]] = []
    first_end = len(pack(EVENT))
    for index in range(len(data)):
        buffer += data[index : index + 1]
        received += unpack(buffer)
        if index + 1 < first_end:
            assert received == []
            assert len(buffer) == index + 1, "an incomplete frame must stay in the buffer"
        elif index + 1 < len(data):
            assert received == [EVENT]
    assert received == [EVENT, RESPONSE]
    assert buffer == bytearray()


@pytest.mark.parametrize(("pack", "unpack"), DIRECTIONS)
def test_complete_frames_are_taken_and_the_incomplete_tail_kept(pack: Pack, unpack: Unpack) -> None:
    second = pack(RESPONSE)
    buffer = bytearray(pack(EVENT) + second[:6])
    assert unpack(buffer) == [EVENT]
    assert bytes(buffer) == second[:6]
    buffer += second[6:]
    assert unpack(buffer) == [RESPONSE]
    assert buffer == bytearray()


@pytest.mark.parametrize("unpack", UNPACKERS)
def test_a_lone_length_prefix_waits_for_its_payload(unpack: Unpack) -> None:
    buffer = bytearray(struct.pack(">I", 10))
    assert unpack(buffer) == []
    assert len(buffer) == 4


@pytest.mark.parametrize(("pack", "unpack"), DIRECTIONS)
def test_large_body(pack: Pack, unpack: Unpack) -> None:
    message = {"t": "e", "n": 1, "body": bytes(range(256)) * 16384}
    buffer = bytearray(pack(message))
    assert unpack(buffer) == [message]


@pytest.mark.parametrize("pack", [processor_frames.pack, worker_framing.pack], ids=["processor", "worker"])
def test_values_msgpack_cannot_encode_travel_as_their_repr(pack: Pack) -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    [message] = processor_frames.unpack_frames(bytearray(pack({"t": "l", "with": {"obj": Opaque()}})))
    assert message == {"t": "l", "with": {"obj": "<opaque>"}}


@pytest.mark.parametrize("unpack", UNPACKERS)
@pytest.mark.parametrize("length", [0, (1 << 30) + 1, 0xFFFFFFFF])
def test_bad_length_is_a_value_error(unpack: Unpack, length: int) -> None:
    with pytest.raises(ValueError, match="invalid frame length"):
        unpack(bytearray(struct.pack(">I", length) + b"\x80"))


@pytest.mark.parametrize("unpack", UNPACKERS)
def test_bad_length_after_a_good_frame_is_still_an_error(unpack: Unpack) -> None:
    with pytest.raises(ValueError):
        unpack(bytearray(processor_frames.pack(RESPONSE) + struct.pack(">I", 0)))


#: Every frame kind and key the processor names: the worker must spell each one alike.
FRAME_NAMES = [
    *("EVENT", "DRAIN", "TERMINATE", "READY", "FAIL", "RESPONSE", "CHUNK", "EXPIRED", "LOG", "ACK", "DRAINED"),
    *("KIND", "SEQ", "DEADLINE", "LEVEL", "STATUS", "CONTENT_TYPE", "HEADERS", "BODY", "DURATION", "STREAM"),
    *("END", "ERROR", "MESSAGE", "TRACEBACK", "LOG_VARS"),
    # batches (docs/batching.md)
    *("EVENT_BATCH", "RESPONSE_BATCH", "EVENTS", "RESULTS"),
    # the zygote's control channel
    *("FORK", "LOADED", "BLANK", "LOAD", "FORKED", "EXITED", "WORKER_ID", "PID", "THREADS", "EXIT_STATUS"),
    *("TRIGGER_KIND", "TRIGGER_NAME"),
]


@pytest.mark.parametrize("name", FRAME_NAMES)
def test_both_sides_name_frame_kinds_and_keys_alike(name: str) -> None:
    assert getattr(worker_framing, name) == getattr(processor_frames, name)


def test_every_upper_case_string_constant_is_a_frame_name_listed_above() -> None:
    for module in (processor_frames, worker_framing):
        names = {n for n, v in vars(module).items() if n.isupper() and isinstance(v, str)}
        assert names == set(FRAME_NAMES), module.__name__
