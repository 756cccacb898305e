"""How soon a worker forked from a warm zygote answers its first event (fork -> response)."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

import uvloop

from nubis.build import build_environment, find_python
from nubis.processor.events import Response, Submission
from nubis.processor.pool import WorkerPool
from nubis.processor.processor import Processor
from nubis.processor.zygote import ZygoteStarter
from nubis.settings import Settings
from nubis.spec import load_function, parse_runtime

from _harness import ROOT


class _FutureReply:
    def __init__(self) -> None:
        self.future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()

    def respond(self, response: Response) -> None:
        self.future.set_result(response)

    def chunk(self, data: bytes) -> None:
        pass

    def end(self, error: str | None) -> None:
        pass


async def _measure(count: int) -> list[float]:
    loaded = load_function(ROOT / "examples" / "hello")
    _, version = parse_runtime(loaded.config.spec.runtime)
    env = build_environment(
        loaded.directory,
        python=find_python(version),
        build_commands=[],
        cache_root=Settings().environments_dir,
    )
    processor = Processor(loaded.config, loaded.directory, env.python)
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
            frame = {
                "t": "e",
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
