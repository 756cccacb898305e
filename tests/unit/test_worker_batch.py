"""The worker's side of a batch (`nubis_worker.batch`): an `eb` frame becomes one handler call with a
list of `nuclio_sdk.Event`s, and its list of responses one `rb` frame whose results follow the
batch's order, matched by `event_id` (NUCLIO.md §2.7). A real `Worker` over a socket pair, its
frames read back with the processor's own unpacker."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import nuclio_sdk
import pytest

import nubis.runtimes.python
from nubis.processor import frames

sys.path.insert(0, str(nubis.runtimes.python.WORKER_PATH))
from nubis_worker.batch import STREAM_IN_BATCH, handle_batch
from nubis_worker.worker import Worker

Response = nuclio_sdk.Response


#: the processor's end of each worker's socket pair
PEERS: dict[int, socket.socket] = {}


@pytest.fixture
def make_worker() -> Iterator[Callable[[Callable[..., Any]], Worker]]:
    sockets: list[socket.socket] = []
    workers: list[Worker] = []

    def make(handler: Callable[..., Any]) -> Worker:
        ours, theirs = socket.socketpair()
        sockets.extend((ours, theirs))
        PEERS[ours.fileno()] = theirs
        worker = Worker(
            ours,
            handler,
            types.ModuleType("main"),
            worker_id=0,
            trigger_kind="http",
            trigger_name="t",
            function_name="f",
        )
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        if worker.loop is not None:  # made (and set as this thread's) for an async handler
            worker.loop.close()
            asyncio.set_event_loop(None)
    PEERS.clear()
    for sock in sockets:
        sock.close()


def batch_frame(*ids: str, **extra: Any) -> dict[str, Any]:
    events = [{"t": "e", "id": event_id, "path": f"/{event_id}", "body": event_id.encode()} for event_id in ids]
    return {"t": frames.EVENT_BATCH, "n": 9, "ev": events, **extra}


def sent(worker: Worker) -> list[dict[str, Any]]:
    """Every frame the worker queued (the processor's unpacker reads them)."""
    messages = frames.unpack_frames(bytearray(b"".join(worker.out)))
    worker.out.clear()
    return messages


def handle(worker: Worker, frame: dict[str, Any]) -> list[dict[str, Any]]:
    handle_batch(worker, frame)
    return sent(worker)


def results(messages: list[dict[str, Any]]) -> list[Any]:
    [answer] = [m for m in messages if m["t"] == frames.RESPONSE_BATCH]
    assert answer["n"] == 9 and answer["d"] > 0
    return list(answer["res"])


def test_the_handler_gets_the_events_and_results_follow_the_batch_order(make_worker: Callable[..., Worker]) -> None:
    seen: list[Any] = []

    def handler(context: Any, batch: list[Any]) -> list[Any]:
        seen.extend(batch)
        # answered out of order, with each output shape a Response may carry
        return [
            Response(body={"k": 1}, event_id="c"),
            Response(body="text", status_code=201, headers={"X-A": "1"}, event_id="a"),
            Response(body=b"\x00\xff", content_type="application/octet-stream", event_id="b"),
        ]

    got = results(handle(make_worker(handler), batch_frame("a", "b", "c")))
    assert [event.id for event in seen] == ["a", "b", "c"]
    assert all(isinstance(event, nuclio_sdk.Event) for event in seen)
    assert (seen[0].path, seen[0].body, seen[0].trigger.kind) == ("/a", b"a", "http")
    assert got == [
        {"s": 201, "c": "text/plain", "h": {"X-A": "1"}, "b": b"text"},
        {"s": 200, "c": "application/octet-stream", "h": {}, "b": b"\x00\xff"},
        {"s": 200, "c": "application/json", "h": {}, "b": b'{"k": 1}'},
    ]


def test_events_without_a_response_are_nil_and_strays_are_dropped_with_a_warning(
    make_worker: Callable[..., Worker],
) -> None:
    def handler(context: Any, batch: list[Any]) -> list[Any]:
        return [
            Response(body="first", event_id="a"),
            Response(body="second for a: the first wins", event_id="a"),
            Response(body="no event_id"),
            Response(body="names no event of the batch", event_id="zzz"),
            "not a Response",
        ]

    messages = handle(make_worker(handler), batch_frame("a", "b", "c"))
    assert results(messages) == [{"s": 200, "c": "text/plain", "h": {}, "b": b"first"}, None, None]
    [warning] = [m for m in messages if m["t"] == frames.LOG]
    assert warning["n"] == 9 and warning["lvl"] == "warn"
    assert warning["with"] == {"worker_id": "0", "events": 3, "without_response": 2, "responses_dropped": 4}


def test_a_single_response_counts_as_a_list_of_one(make_worker: Callable[..., Worker]) -> None:
    got = results(handle(make_worker(lambda context, batch: Response(body="one", event_id="b")), batch_frame("a", "b")))
    assert got == [None, {"s": 200, "c": "text/plain", "h": {}, "b": b"one"}]


def test_an_async_handler_is_awaited(make_worker: Callable[..., Worker]) -> None:
    async def handler(context: Any, batch: list[Any]) -> list[Any]:
        return [Response(body=event.id, event_id=event.id) for event in batch]

    assert [r["b"] for r in results(handle(make_worker(handler), batch_frame("a", "b")))] == [b"a", b"b"]


def test_streamed_bodies_are_refused_per_event(make_worker: Callable[..., Worker]) -> None:
    def handler(context: Any, batch: list[Any]) -> list[Any]:
        return [Response(body=iter_parts(), event_id="a"), Response(body="fine", event_id="b")]

    streamed, fine = results(handle(make_worker(handler), batch_frame("a", "b")))
    assert streamed == {"s": 500, "c": "text/plain", "h": {}, "b": STREAM_IN_BATCH.encode(), "err": STREAM_IN_BATCH}
    assert fine["b"] == b"fine"

    whole = results(handle(make_worker(lambda context, batch: iter_parts()), batch_frame("a", "b")))
    assert [r["err"] for r in whole] == [STREAM_IN_BATCH, STREAM_IN_BATCH]


def iter_parts() -> Iterator[bytes]:
    yield b"part"


def test_a_response_that_cannot_be_sent_fails_its_event_alone(make_worker: Callable[..., Worker]) -> None:
    def handler(context: Any, batch: list[Any]) -> list[Any]:
        return [Response(body="x", status_code="not a status", event_id="a"), Response(body="ok", event_id="b")]

    bad, good = results(handle(make_worker(handler), batch_frame("a", "b")))
    assert bad["s"] == 500 and "cannot be sent" in bad["err"]
    assert good["b"] == b"ok"


def test_the_handler_raising_is_one_error_response_for_the_batch(make_worker: Callable[..., Worker]) -> None:
    def handler(context: Any, batch: list[Any]) -> list[Any]:
        raise ValueError("boom")

    messages = handle(make_worker(handler), batch_frame("a", "b"))
    [answer] = [m for m in messages if m["t"] == frames.RESPONSE]
    assert (answer["n"], answer["s"], answer["err"]) == (9, 500, "boom")
    assert answer["b"].startswith(b'Exception caught in handler - "boom"')


def test_a_batch_past_its_deadline_is_not_started(make_worker: Callable[..., Worker]) -> None:
    calls: list[Any] = []
    messages = handle(
        make_worker(lambda context, batch: calls.append(batch)), batch_frame("a", dl=time.monotonic() - 1)
    )
    assert messages == [{"t": frames.EXPIRED, "n": 9}] and calls == []


def test_the_batch_log_level_applies_to_its_call(make_worker: Callable[..., Worker]) -> None:
    def handler(context: Any, batch: list[Any]) -> list[Any]:
        context.logger.debug("debug in the batch")
        return [Response(body="", event_id=event.id) for event in batch]

    worker = make_worker(handler)
    assert not [m for m in handle(worker, batch_frame("a")) if m["t"] == frames.LOG]
    logs = [m for m in handle(worker, batch_frame("a", lvl=10)) if m["t"] == frames.LOG]
    assert [(m["n"], m["msg"]) for m in logs] == [(9, "debug in the batch")]


def test_the_serve_loop_answers_a_batch_between_single_events(make_worker: Callable[..., Worker]) -> None:
    def handler(context: Any, event: Any) -> Any:
        if isinstance(event, list):
            return [Response(body="in a batch", event_id=e.id) for e in event]
        return "single"

    worker = make_worker(handler)
    processor_end = PEERS[worker.sock.fileno()]
    single = {"t": frames.EVENT, "n": 1, "id": "s"}
    for message in (single, {**batch_frame("a", "b"), "n": 2}, {**single, "n": 3}, {"t": frames.TERMINATE}):
        processor_end.sendall(frames.pack(message))
    assert worker.serve() == 0
    received = frames.unpack_frames(bytearray(_read_all(processor_end)))
    answers = [(m["t"], m["n"]) for m in received if m["t"] in (frames.RESPONSE, frames.RESPONSE_BATCH)]
    assert answers == [(frames.RESPONSE, 1), (frames.RESPONSE_BATCH, 2), (frames.RESPONSE, 3)]


def _read_all(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return b"".join(chunks)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
