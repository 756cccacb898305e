"""How soon a worker forked from a warm zygote answers its first event (fork -> response)."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from typing import Any

import uvloop

from nubis.processor import frames
from nubis.processor.events import Response, Submission
from nubis.processor.outcomes import Outcome
from nubis.processor.pool import WorkerPool
from nubis.processor.processor import Processor
from nubis.processor.zygote import ZygoteStarter
from nubis.runtimes.base import BuildRequest
from nubis.runtimes.registry import DEFAULT_RUNTIME, parse
from nubis.settings import default_data_dir, environments_dir
from nubis.spec import load_function

from _harness import ROOT


class _FutureReply:
    def __init__(self) -> None:
        self.future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()

    def respond(self, response: Response) -> None:
        self.future.set_result(response)

    def chunk(self, data: bytes) -> None:
        pass

    def end(self, error: str | None, outcome: Outcome) -> None:
        pass

    def ack(self, message: Any) -> None:
        pass


async def _measure(count: int) -> list[float]:
    loaded = load_function(ROOT / "examples" / "hello")
    runtime, version = parse(loaded.config.spec.runtime or DEFAULT_RUNTIME)
    built = runtime.build(
        BuildRequest(
            function_dir=loaded.directory,
            version=version,
            commands=[],
            cache_root=environments_dir(default_data_dir()),
        )
    )
    processor = Processor(loaded.config, loaded.directory, built.artifact)
    starter = processor._make_starter()
    assert isinstance(starter, ZygoteStarter)
    await starter.start()
    latencies = []
    try:
        for _ in range(count):
            pool = WorkerPool(function_name="hello", trigger_kind="http", trigger_name="http", size=1, starter=starter)
            reply = _FutureReply()
            start_task = asyncio.ensure_future(pool.start())
            await asyncio.sleep(0)
            frame: frames.EventFrame = {
                "t": frames.EVENT,
                "id": "cold",
                "method": "GET",
                "path": "/",
                "headers": {},
                "body": b"",
                "timestamp": int(time.time()),
            }
            await start_task
            pool.submit(Submission(frame, reply))
            await reply.future
            latencies.append(pool.first_event_latencies[0])
            await pool.stop(0)
    finally:
        starter.stop()
    return latencies


def measure_cold_starts(count: int) -> list[float]:
    return uvloop.run(_measure(count))


if __name__ == "__main__":
    values = measure_cold_starts(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
    print(f"fork -> first event: median {statistics.median(values) * 1000:.2f} ms, max {max(values) * 1000:.2f} ms")
