"""Batches of an ordered trigger (processor/batching.py) over a real `WorkerPool` of real worker
processes: a batch waits only for the batches before it that hold one of its ordering keys (a
partition, a stream), so batches of different partitions run side by side on different workers
while each partition's run one after the other."""

from __future__ import annotations

import asyncio
from pathlib import Path

from test_batching import answers, batching_on, event, run
from worker_pools import Pools, Recorder

from nubis.processor.batching import Batching
from nubis.processor.events import Submission


def keyed(batching: Batching, key: str | None, *paths: str | bytes) -> list[tuple[Submission, Recorder]]:
    """Submit one event per path (`(path, body)` for a blocked one) with ordering key `key`, as the
    consumer does for an ordered trigger."""
    events = []
    for path in paths:
        sub, reply = event("/block", path) if isinstance(path, bytes) else event(path)
        sub.key = key
        batching.submit(sub, reserved=True)
        events.append((sub, reply))
    return events


async def turns(count: int = 50) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def test_batches_of_different_keys_run_side_by_side_and_of_one_key_in_turn(tmp_path: Path) -> None:
    async def test(harness: Pools) -> None:
        batching = await batching_on(harness, size=2, workers=2, ordered=True)
        pool, flag = batching.pool, harness.flag()
        first_a = keyed(batching, "t/0", flag, "/a1")
        first_b = keyed(batching, "t/1", "/b1", "/b2")
        # partition 1 does not wait for partition 0's blocked batch
        assert [r.body for r in await answers(first_b)] == [b"2 /b1 ", b"2 /b2 "]
        second_a = keyed(batching, "t/0", "/a2", "/a3")
        await turns()
        assert pool.submitted == 2, "partition 0's next batch waits for its first, though a worker is free"
        harness.release(flag)
        await answers(first_a)
        assert [r.body for r in await answers(second_a)] == [b"2 /a2 ", b"2 /a3 "]
        assert pool.submitted == 3

    run(test, tmp_path)


def test_a_batch_holding_several_keys_waits_for_the_last_batch_of_each(tmp_path: Path) -> None:
    async def test(harness: Pools) -> None:
        batching = await batching_on(harness, size=2, workers=3, ordered=True)
        pool, flag_a, flag_b = batching.pool, harness.flag(), harness.flag()
        first_a = keyed(batching, "t/0", flag_a, "/a1")
        first_b = keyed(batching, "t/1", flag_b, "/b1")
        mixed = keyed(batching, "t/0", "/a2") + keyed(batching, "t/1", "/b2")
        await turns()
        assert pool.submitted == 2
        harness.release(flag_b)
        await answers(first_b)
        await turns()
        assert pool.submitted == 2, "still behind partition 0's batch"
        harness.release(flag_a)
        await answers(first_a)
        assert [r.body for r in await answers(mixed)] == [b"2 /a2 ", b"2 /b2 "]

    run(test, tmp_path)


def test_events_without_a_key_keep_the_trigger_wide_order(tmp_path: Path) -> None:
    """Replays (no ordering key) of an ordered trigger run one batch after the other."""

    async def test(harness: Pools) -> None:
        batching = await batching_on(harness, size=2, workers=2, ordered=True)
        pool, flag = batching.pool, harness.flag()
        first = keyed(batching, None, flag, "/a")
        second = keyed(batching, None, "/b", "/c")
        await turns()
        assert pool.submitted == 1
        harness.release(flag)
        await answers(first)
        await answers(second)

    run(test, tmp_path)
