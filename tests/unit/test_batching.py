"""Batch mode (processor/batching.py) over a real `WorkerPool` of real `nubis_worker` processes
(worker_pools.py): events gathered into one handler call, each answered by its own result, and
every way a batch can end fanned out to each of its events with its outcome."""

from __future__ import annotations

import asyncio
import gc
import json
import uuid
import weakref
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from worker_pools import Pools, Recorder, pools

from nubis.processor.batching import Batching
from nubis.processor.events import Response, Submission
from nubis.processor.frames import EVENT, KIND, EventFrame
from nubis.processor.outcomes import Outcome
from nubis.processor.pool import WorkerPool
from nubis.spec.batch import BatchConfig

BATCH_HANDLER = """
import os
import time

import nuclio_sdk


def handler(context, batch):
    if not isinstance(batch, list):
        return "not a batch: " + batch.path
    paths = [event.path for event in batch]
    if "/raise" in paths:
        raise ValueError("boom")
    if "/exit" in paths:
        os._exit(3)
    if "/sleep" in paths:
        time.sleep(5)
    for event in batch:
        if event.path == "/block":
            while not os.path.exists(event.body.decode()):
                time.sleep(0.002)
    if "/log" in paths:
        context.logger.info("from the batch")
    responses = [nuclio_sdk.Response(body="no event_id: dropped")]
    for event in batch:
        if event.path == "/drop":
            continue
        body = "%d %s %s" % (len(batch), event.path, event.body.decode())
        if event.path == "/stream":
            body = (part for part in (b"a", b"b"))
        responses.append(nuclio_sdk.Response(body=body, headers={"X-Id": event.id}, event_id=event.id))
    if "/ack" in paths:
        async def ack():
            await context.platform.explicit_ack(nuclio_sdk.QualifiedOffset("orders", 2, 41))
            return responses
        return ack()
    return responses
"""


def run(test: Callable[[Pools], Coroutine[Any, Any, None]], tmp_path: Path) -> None:
    async def scenario() -> None:
        async with pools(tmp_path) as harness:
            (harness.function_dir / "main.py").write_text(BATCH_HANDLER)
            await asyncio.wait_for(test(harness), 60)

    asyncio.run(scenario())


def event(path: str, body: bytes = b"", **fields: Any) -> tuple[Submission, Recorder]:
    frame: EventFrame = {KIND: EVENT, "id": str(uuid.uuid4()), "path": path, "body": body, **fields}  # type: ignore[typeddict-item]
    reply = Recorder()
    return Submission(frame, reply), reply


def submit_all(batching: Batching, *paths: str, reserved: bool = False) -> list[tuple[Submission, Recorder]]:
    events = [event(path, f"b{index}".encode()) for index, path in enumerate(paths)]
    for sub, _ in events:
        batching.submit(sub, reserved=reserved)
    return events


async def answers(events: list[tuple[Submission, Recorder]]) -> list[Response]:
    return [await reply.answer() for _, reply in events]


async def batching_on(harness: Pools, size: int = 4, timeout: float = 30.0, **settings: Any) -> Batching:
    workers = settings.pop("workers", 1)
    ordered = settings.pop("ordered", False)
    pool = await harness.start(workers, **settings)
    return Batching(pool, BatchConfig(size, timeout), ordered=ordered)


def test_a_full_batch_is_one_handler_call_and_each_event_gets_its_own_response(tmp_path: Path) -> None:
    async def test(harness: Pools) -> None:
        batching = await batching_on(harness, size=4)
        events = submit_all(batching, "/a", "/b", "/c", "/d")
        got = await answers(events)
        assert [r.body for r in got] == [b"4 /a b0", b"4 /b b1", b"4 /c b2", b"4 /d b3"]
        assert [r.headers["X-Id"] for r in got] == [sub.frame["id"] for sub, _ in events]
        assert {r.outcome for r in got} == {Outcome.HANDLED}
        assert batching.pool.submitted == 1  # one submission, one frame, one call
        assert batching.pool.outcomes == {"handled": 4}  # but every event counted

    run(test, tmp_path)


def test_a_batch_that_does_not_fill_goes_at_its_timeout(tmp_path: Path) -> None:
    async def test(harness: Pools) -> None:
        batching = await batching_on(harness, size=10, timeout=0.05)
        got = await answers(submit_all(batching, "/a", "/b"))
        assert [r.body for r in got] == [b"2 /a b0", b"2 /b b1"]

    run(test, tmp_path)


def test_an_event_left_without_a_response_gets_no_result_at_its_timeout(tmp_path: Path) -> None:
    async def test(harness: Pools) -> None:
        batching = await batching_on(harness, size=3, event_timeout=0.5)
        (_, a), (drop_sub, dropped), (_, c) = submit_all(batching, "/a", "/drop", "/c")
        assert (await a.answer()).body == b"3 /a b0" and (await c.answer()).body == b"3 /c b2"
        missing = await dropped.answer()
        assert (missing.status, missing.outcome) == (500, Outcome.HANDLER_ERROR)
        error = json.loads(missing.body)["error"]
        assert error.startswith(f"the batch handler returned no response for event {drop_sub.frame['id']}")
        assert batching.pool.outcomes == {"handled": 2, "handler error": 1}

    run(test, tmp_path)


def test_the_handler_raising_answers_every_event_of_the_batch_with_the_500(tmp_path: Path) -> None:
    async def test(harness: Pools) -> None:
        batching = await batching_on(harness, size=3)
        got = await answers(submit_all(batching, "/a", "/raise", "/c"))
        assert {(r.status, r.outcome) for r in got} == {(500, Outcome.HANDLER_ERROR)}
        assert all(r.body.startswith(b'Exception caught in handler - "boom"') for r in got)
        assert len({id(r) for r in got}) == 3  # each event its own Response object

    run(test, tmp_path)


def test_a_streamed_body_is_refused_for_its_event_alone(tmp_path: Path) -> None:
    async def test(harness: Pools) -> None:
        batching = await batching_on(harness, size=2)
        plain, streamed = await answers(submit_all(batching, "/a", "/stream"))
        assert (plain.body, plain.outcome) == (b"2 /a b0", Outcome.HANDLED)
        assert (streamed.status, streamed.outcome, streamed.stream) == (500, Outcome.HANDLER_ERROR, False)
        assert b"streamed response body" in streamed.body

    run(test, tmp_path)


def test_a_lost_worker_and_an_event_timeout_reach_every_event(tmp_path: Path) -> None:
    async def test(harness: Pools) -> None:
        batching = await batching_on(harness, size=2, event_timeout=1.0)
        lost = await answers(submit_all(batching, "/a", "/exit"))
        assert {(r.status, r.outcome) for r in lost} == {(500, Outcome.WORKER_LOST)}
        await wait_for_workers(batching.pool, 1)
        timed_out = await answers(submit_all(batching, "/sleep", "/b"))
        assert {(r.status, r.outcome) for r in timed_out} == {(408, Outcome.TIMEOUT)}

    run(test, tmp_path)


async def wait_for_workers(pool: WorkerPool, count: int) -> None:
    while len(pool.workers) < count:
        await asyncio.sleep(0.01)


def test_logs_of_a_batch_go_to_each_event_that_asked_and_acks_to_the_event_they_name(tmp_path: Path) -> None:
    async def test(harness: Pools) -> None:
        batching = await batching_on(harness, size=3)
        asking, asked = event("/log")
        asking.capture = []  # X-Nuclio-Log-Level on this event only
        quiet_sub, quiet = event("/b")
        acked_sub, acked = event("/ack", topic="orders", shard_id=2, offset=41)
        for sub in (asking, quiet_sub, acked_sub):
            batching.submit(sub)
        got = await answers([(asking, asked), (quiet_sub, quiet), (acked_sub, acked)])
        assert got[1].logs is None
        # the handler's record, then the worker's warning about the response without an event_id
        told, warned = [record["msg"] for record in asking.capture]
        assert told == "from the batch" and warned.startswith("The batch handler's answer leaves events without")
        assert acked.acks == [
            {"kind": "streamMessageAck", "attributes": {"topic": "orders", "partition": 2, "offset": 41}}
        ]
        assert asked.acks == quiet.acks == []

    run(test, tmp_path)


def test_the_same_event_twice_goes_in_two_batches(tmp_path: Path) -> None:
    async def test(harness: Pools) -> None:
        batching = await batching_on(harness, size=3, timeout=0.05)
        first, again = event("/a"), event("/a")
        again[0].frame["id"] = first[0].frame["id"]
        for sub, _ in (first, again):
            batching.submit(sub)
        got = await answers([first, again])
        assert [r.body for r in got] == [b"1 /a ", b"1 /a "]

    run(test, tmp_path)


def test_pull_triggers_get_a_place_at_once_and_a_worker_when_the_batch_goes(tmp_path: Path) -> None:
    async def test(harness: Pools) -> None:
        batching = await batching_on(harness, size=3, workers=2)
        flag = harness.flag()
        blocked = [event("/block", flag)]
        for _ in range(2):
            assert await batching.acquire()
            blocked.append(event("/b"))
        for sub, _ in blocked:
            batching.submit(sub, reserved=True)
        others = []
        for _ in range(3):
            assert await batching.acquire()
            others.append(event("/c"))
            batching.submit(others[-1][0], reserved=True)
        # unordered: the second batch runs on the other worker while the first is held
        assert [r.body[:1] for r in await answers(others)] == [b"3"] * 3
        assert all(reply.response is None for _, reply in blocked)
        harness.release(flag)
        assert len(await answers(blocked)) == 3

    run(test, tmp_path)


def test_an_ordered_trigger_sends_a_batch_once_the_one_before_it_is_answered(tmp_path: Path) -> None:
    async def test(harness: Pools) -> None:
        batching = await batching_on(harness, size=2, workers=2, ordered=True)
        flag = harness.flag()
        first = [event("/block", flag), event("/b")]
        second = [event("/c"), event("/d")]
        for sub, _ in first + second:
            assert await batching.acquire()
            batching.submit(sub, reserved=True)
        for _ in range(20):
            await asyncio.sleep(0)
        assert batching.pool.submitted == 1  # the second batch waits, though a worker is free
        harness.release(flag)
        await answers(first)
        assert [r.body for r in await answers(second)] == [b"2 /c ", b"2 /d "]
        assert batching.pool.submitted == 2

    run(test, tmp_path)


def test_closing_sends_the_batch_being_filled_and_a_stopped_pool_refuses_pulled_batches(tmp_path: Path) -> None:
    async def test(harness: Pools) -> None:
        batching = await batching_on(harness, size=10)
        waiting = submit_all(batching, "/a", "/b")
        batching.close()
        assert [r.body for r in await answers(waiting)] == [b"2 /a b0", b"2 /b b1"]
        await batching.pool.stop(0)
        assert not await batching.acquire()
        refused = submit_all(batching, "/c", reserved=True)
        batching.close()
        [answer] = await answers(refused)
        assert (answer.status, answer.outcome) == (503, Outcome.SHUTTING_DOWN)

    run(test, tmp_path)


def test_a_place_asked_for_at_zero_waits_for_the_wake_it_asks_for(tmp_path: Path) -> None:
    async def test(harness: Pools) -> None:
        batching = await batching_on(harness, size=2, timeout=0.05)
        pool = batching.pool
        await pool.suspend()
        wakes: list[asyncio.Task[None]] = []

        def wake() -> None:
            if not wakes:
                wakes.append(asyncio.ensure_future(pool.resume()))

        pool.on_demand = wake  # what the processor's scaling does
        assert batching.asleep
        assert await batching.acquire()
        assert len(pool.workers) == 1 and len(wakes) == 1  # woken: its workers are up
        [got] = await answers(submit_all(batching, "/a", reserved=True))
        await wakes[0]
        assert got.body == b"1 /a b0"

    run(test, tmp_path)


def test_closing_answers_at_once_the_events_left_without_a_result(tmp_path: Path) -> None:
    """The NO_RESULT of an event the handler gave no response waits for its timeout; a stopping
    replica does not wait for it: no result is coming, and its caller would outlive the server."""

    async def test(harness: Pools) -> None:
        batching = await batching_on(harness, size=3, event_timeout=120)
        (_, a), (_, dropped), (_, c) = submit_all(batching, "/a", "/drop", "/c")
        await a.answer()
        await c.answer()
        assert dropped.response is None  # waits for its timeout, two minutes away
        batching.close()
        assert dropped.response is not None, "answered when the replica stops, not at its timeout"
        assert (dropped.response.status, dropped.response.outcome) == (500, Outcome.HANDLER_ERROR)

    run(test, tmp_path)


def test_a_batch_answered_while_the_pool_drains_answers_its_missing_results_at_once(tmp_path: Path) -> None:
    async def test(harness: Pools) -> None:
        batching = await batching_on(harness, size=2, event_timeout=120)
        flag = harness.flag()
        events = [event("/block", flag), event("/drop")]
        for sub, _ in events:
            batching.submit(sub)
        (_, held), (_, dropped) = events
        batching.close()  # what the processor does before it drains the pool
        stopping = asyncio.ensure_future(batching.pool.stop(120))
        harness.release(flag)
        assert (await held.answer()).status == 200
        missing = await dropped.answer(timeout=30)  # not at its timeout, two minutes away
        assert missing.outcome is Outcome.HANDLER_ERROR
        await stopping

    run(test, tmp_path)


def test_an_event_that_comes_after_close_goes_at_once(tmp_path: Path) -> None:
    async def test(harness: Pools) -> None:
        batching = await batching_on(harness, size=10, timeout=120)
        batching.close()
        [(_, reply)] = submit_all(batching, "/a")
        assert batching.pool.submitted == 1, "sent now, not at the batch's timeout"
        assert (await reply.answer()).body == b"1 /a b0"

    run(test, tmp_path)


def test_an_explicit_ack_naming_no_event_of_the_batch_is_not_dropped(tmp_path: Path) -> None:
    """Kafka's acknowledgement is cumulative and may name an earlier message's offset: the trigger
    reads the offset from the message itself, so it goes to the batch's first event."""

    async def test(harness: Pools) -> None:
        batching = await batching_on(harness, size=2)
        first, acking = (
            event("/b", topic="orders", shard_id=2, offset=50),
            event("/ack", topic="orders", shard_id=2, offset=51),
        )
        for sub, _ in (first, acking):
            batching.submit(sub)
        await answers([first, acking])
        assert first[1].acks == [
            {"kind": "streamMessageAck", "attributes": {"topic": "orders", "partition": 2, "offset": 41}}
        ]
        assert acking[1].acks == []

    run(test, tmp_path)


def test_an_answered_batch_is_not_kept(tmp_path: Path) -> None:
    """Its events (bodies included) are freed once answered: nothing keeps the last batch."""

    async def test(harness: Pools) -> None:
        batching = await batching_on(harness, size=2)
        events = submit_all(batching, "/a", "/b")
        await answers(events)
        watched = weakref.ref(events[0][1])
        del events
        gc.collect()
        assert watched() is None

    run(test, tmp_path)
