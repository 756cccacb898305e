"""WorkerPool and WorkerLink with real nubis_worker processes (worker_pools.py): what a trigger gets
back for each thing that can happen to an event, with its outcome."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from worker_pools import Pools, event, pools

from nubis.processor import dispatch
from nubis.processor.events import REFUSED_HEADER
from nubis.processor.outcomes import REFUSALS, Outcome, Refusal
from nubis.processor.pool import WorkerPool


def run(test: Callable[[Pools], Coroutine[Any, Any, None]], tmp_path: Path) -> None:
    async def scenario() -> None:
        async with pools(tmp_path) as harness:
            await asyncio.wait_for(test(harness), 60)

    asyncio.run(scenario())


def error_text(body: bytes) -> str:
    text: str = json.loads(body)["error"]
    return text


async def warm_up(pool: WorkerPool) -> None:
    """Enough fast events that the pool starts pipelining (mean handler time well under 1 ms, even
    if the first events of a fresh worker were slow: the mean decays by 0.9 per event)."""
    for _ in range(40):
        sub, reply = event("/echo", b"x")
        pool.submit(sub)
        await reply.answer()


def test_handled_and_handler_error_are_told_apart(tmp_path: Path) -> None:
    async def test(harness: Pools) -> None:
        pool = await harness.start()
        results = []
        for path in ("/echo", "/status500", "/raise"):
            sub, reply = event(path, b"hi")
            pool.submit(sub)
            results.append(await reply.answer())
        echo, chose_500, raised = results
        assert (echo.status, echo.body, echo.outcome) == (200, b"hi", Outcome.HANDLED)
        assert (chose_500.status, chose_500.outcome) == (500, Outcome.HANDLED)
        assert raised.status == 500
        assert raised.outcome is Outcome.HANDLER_ERROR
        assert raised.body.startswith(b'Exception caught in handler - "boom"')

    run(test, tmp_path)


def test_logs_acks_and_streams_reach_the_trigger(tmp_path: Path) -> None:
    async def test(harness: Pools) -> None:
        pool = await harness.start()
        ack_sub, ack_reply = event("/ack")
        pool.submit(ack_sub)
        assert (await ack_reply.answer()).body == b"acked"
        assert ack_reply.acks == [
            {"kind": "streamMessageAck", "attributes": {"topic": "orders", "partition": 2, "offset": 41}}
        ]

        log_sub, log_reply = event("/log")
        log_sub.capture = []  # X-Nuclio-Log-Level: the caller gets the event's records
        pool.submit(log_sub)
        assert (await log_reply.answer()).body == b"logged"
        assert [record["msg"] for record in log_sub.capture] == ["from the handler"]

        stream_sub, stream_reply = event("/stream")
        pool.submit(stream_sub)
        head = await stream_reply.answer()
        assert head.stream and head.body == b"a"
        assert stream_reply.chunks == [b"b", b"c"]
        assert stream_reply.ended == (None, Outcome.HANDLED)

        broken_sub, broken_reply = event("/stream-raise")
        pool.submit(broken_sub)
        await broken_reply.answer()
        assert broken_reply.ended == ("mid-stream", Outcome.HANDLER_ERROR)

    run(test, tmp_path)


def test_no_free_worker_is_refused_at_once_without_an_availability_timeout(tmp_path: Path) -> None:
    async def test(harness: Pools) -> None:
        pool = await harness.start(availability_timeout=0)
        flag = harness.flag()
        blocked, blocked_reply = event("/block", flag)
        pool.submit(blocked)
        refused, refused_reply = event("/echo")
        pool.submit(refused)
        response = await refused_reply.answer()
        assert (response.status, response.outcome) == (503, Outcome.BUSY)
        assert error_text(response.body) == REFUSALS[Refusal.NO_WORKER].message == "no worker available"
        assert response.headers == {"Retry-After": "1", REFUSED_HEADER: "busy"}
        harness.release(flag)
        assert (await blocked_reply.answer()).body == b"released"

    run(test, tmp_path)


def test_a_full_queue_refuses_and_a_waiting_event_times_out(tmp_path: Path) -> None:
    async def test(harness: Pools) -> None:
        pool = await harness.start(availability_timeout=0.2, max_queued=1)
        flag = harness.flag()
        blocked, blocked_reply = event("/block", flag)
        pool.submit(blocked)
        waiting, waiting_reply = event("/echo")
        pool.submit(waiting)
        overflow, overflow_reply = event("/echo")
        pool.submit(overflow)
        assert overflow_reply.done.done(), "a full queue answers at once"
        full = await overflow_reply.answer()
        assert (full.status, full.outcome) == (503, Outcome.BUSY)
        assert error_text(full.body) == "too many events waiting for a worker"
        late = await waiting_reply.answer()
        assert (late.status, late.outcome) == (503, Outcome.BUSY)
        assert error_text(late.body) == "no worker became available in time"
        assert not blocked_reply.done.done()
        harness.release(flag)
        assert (await blocked_reply.answer()).body == b"released"

    run(test, tmp_path)


def test_event_timeout_answers_408_and_replaces_the_worker(tmp_path: Path) -> None:
    async def test(harness: Pools) -> None:
        pool = await harness.start(event_timeout=0.3)
        first_pid = pool.workers[0].pid
        sub, reply = event("/block", harness.flag())  # never released
        pool.submit(sub)
        response = await reply.answer()
        assert (response.status, response.outcome) == (408, Outcome.TIMEOUT)
        assert error_text(response.body) == "handler timed out"
        # queued until the replacement is ready, then served by it
        after, after_reply = event("/pid")
        pool.submit(after)
        assert int((await after_reply.answer()).body) != first_pid

    run(test, tmp_path)


def test_worker_lost_mid_event_fails_it_and_requeues_what_never_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # any worker that answered lately counts as making progress: the burst is pipelined whatever the load
    monkeypatch.setattr(dispatch, "PIPELINE_MIN_WINDOW", 60.0)

    async def test(harness: Pools) -> None:
        pool = await harness.start()
        await warm_up(pool)
        dying_pid = pool.workers[0].pid
        doomed, doomed_reply = event("/exit")
        pool.submit(doomed)
        queued = [event("/pid") for _ in range(3)]
        for sub, _ in queued:
            pool.submit(sub)
        assert len(pool.workers[0].inflight) == 4, "the burst is queued on the busy worker"
        lost = await doomed_reply.answer()
        assert (lost.status, lost.outcome) == (500, Outcome.WORKER_LOST)
        assert error_text(lost.body).startswith("the worker process exited")
        assert error_text(lost.body).endswith("while handling the event")
        for _, reply in queued:
            response = await reply.answer()
            assert response.outcome is Outcome.HANDLED
            assert int(response.body) != dying_pid

    run(test, tmp_path)


def test_worker_lost_mid_stream_cuts_the_stream(tmp_path: Path) -> None:
    async def test(harness: Pools) -> None:
        pool = await harness.start()
        sub, reply = event("/stream-exit")
        pool.submit(sub)
        head = await reply.answer()
        assert head.stream
        assert reply.ended is not None
        error, outcome = reply.ended
        assert outcome is Outcome.WORKER_LOST
        assert error is not None and error.startswith("worker process exited")

    run(test, tmp_path)


def test_prefetched_events_past_their_deadline_are_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "PIPELINE_MIN_WINDOW", 60.0)

    async def test(harness: Pools) -> None:
        pool = await harness.start(availability_timeout=0.2)
        await warm_up(pool)
        flag = harness.flag()
        slow, slow_reply = event("/block", flag)
        pool.submit(slow)
        behind = [event("/echo") for _ in range(2)]
        for sub, _ in behind:
            pool.submit(sub)
        assert all(sub.prefetched for sub, _ in behind)
        for _, reply in behind:
            response = await reply.answer()
            assert (response.status, response.outcome) == (503, Outcome.BUSY)
            assert error_text(response.body) == "no worker became available in time"
        assert not slow_reply.done.done(), "swept while the event ahead of them still runs"
        harness.release(flag)
        assert (await slow_reply.answer()).body == b"released"
        # the worker refused the expired ones itself (x frames): it is free again, and nothing is left
        after, after_reply = event("/echo", b"next")
        pool.submit(after)
        assert (await after_reply.answer()).body == b"next"
        assert not pool.workers[0].inflight
        assert pool._prefetched == 0

    run(test, tmp_path)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/stray", "sent a response frame for event 1000000 out of sequence"),
        ("/unknown-kind", "sent a frame of unknown kind 'zzz'"),
        ("/malformed", "sent a malformed frame (KeyError"),
    ],
)
def test_a_confused_worker_is_replaced_and_its_events_fail_as_worker_lost(
    tmp_path: Path, path: str, reason: str
) -> None:
    async def test(harness: Pools) -> None:
        pool = await harness.start()
        confused_pid = pool.workers[0].pid
        sub, reply = event(path)
        pool.submit(sub)
        response = await reply.answer()
        assert (response.status, response.outcome) == (500, Outcome.WORKER_LOST)
        assert reason in error_text(response.body)
        after, after_reply = event("/pid")
        pool.submit(after)
        assert int((await after_reply.answer()).body) != confused_pid

    run(test, tmp_path)


def test_acquire_holds_a_free_worker_and_waits_for_the_next(tmp_path: Path) -> None:
    async def test(harness: Pools) -> None:
        pool = await harness.start()
        assert await pool.acquire()
        second = asyncio.ensure_future(pool.acquire())
        # a push event does not take the worker held for the pull trigger: it waits its turn
        pushed, pushed_reply = event("/echo", b"pushed")
        pool.submit(pushed)
        flag = harness.flag()
        pulled, pulled_reply = event("/block", flag)
        pool.submit(pulled, reserved=True)
        assert pool.workers[0].inflight[0] is pulled
        order: list[str] = []
        second.add_done_callback(lambda _: order.append("acquired"))
        pushed_reply.done.add_done_callback(lambda _: order.append("pushed answered"))
        harness.release(flag)
        assert (await pulled_reply.answer()).body == b"released"
        assert await second
        assert order == ["pushed answered", "acquired"]
        pool.release()
        # cancelling a wait loses no capacity: the next caller still gets the free worker
        assert await pool.acquire()
        cancelled = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0)  # one turn: the task now waits for capacity
        cancelled.cancel()
        pool.release()
        assert await pool.acquire()
        waiting = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0)  # one turn: the task now waits for capacity
        await pool.stop(0)
        assert await waiting is False, "a pool shutting down gives no more capacity"

    run(test, tmp_path)


def test_acquire_pipelines_a_batch_onto_a_busy_worker_for_fast_handlers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatch, "PIPELINE_MIN_WINDOW", 60.0)

    async def test(harness: Pools) -> None:
        pool = await harness.start()
        await warm_up(pool)
        flag = harness.flag()
        assert await pool.acquire()
        blocked, blocked_reply = event("/block", flag)
        pool.submit(blocked, reserved=True)
        # the one worker is busy: a pull trigger may still have PIPELINE_ACQUIRE events queued on it
        behind = []
        for index in range(dispatch.PIPELINE_ACQUIRE):
            assert await asyncio.wait_for(pool.acquire(), 1), f"no room for pipelined event {index}"
            sub, reply = event("/echo", str(index).encode())
            pool.submit(sub, reserved=True)
            behind.append((sub, reply))
        assert all(sub.prefetched for sub, _ in behind)
        more = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.05)
        assert not more.done(), "acquire promised more than PIPELINE_ACQUIRE beyond the running event"
        harness.release(flag)
        assert (await blocked_reply.answer()).body == b"released"
        assert [(await reply.answer()).body for _, reply in behind] == [
            str(i).encode() for i in range(dispatch.PIPELINE_ACQUIRE)
        ]
        assert await asyncio.wait_for(more, 5)
        pool.release()

    run(test, tmp_path)
