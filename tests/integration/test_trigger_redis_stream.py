"""The `redis-stream` trigger against real Redis: the event shape, acknowledgement only after
handling, retries then the dead letter (a stream, or the platform's failed-event store), and
nothing lost when a worker and then the replica are SIGKILLed and Redis itself restarts (its own
instance, AOF with fsync on every write)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from handler_output import function_with, lines
from harness import RunningFunction, wait_until

from leaks import alive
from nubis.failed_events import FailedEventStore

HANDLER = """
import os, time

def handler(context, event):
    body = event.body if isinstance(event.body, bytes) else str(event.body).encode()
    if body.startswith(b"fail"):
        raise RuntimeError("told to fail")
    if os.environ.get("PAUSE"):
        time.sleep(float(os.environ["PAUSE"]))
    line = b"%s %d %s %s %s\\n" % (body, os.getpid(), event.trigger.kind.encode(), str(event.path).encode(),
                                   event.headers.get("k", "-").encode())
    with open(os.environ["OUT"], "ab") as out:
        out.write(line)
    return "ok"
"""

SHARED_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def function_dir(tmp_path: Path) -> Path:
    return function_with(tmp_path, HANDLER)


@pytest.fixture
def stream() -> Iterator[str]:
    key = f"nubis-test-{uuid.uuid4().hex[:8]}"
    yield key
    client = redis.Redis.from_url(SHARED_URL)
    client.delete(key, f"{key}-dead")
    client.close()


def triggers(stream: str, url: str = SHARED_URL, **attributes: object) -> str:
    spec = {"kind": "redis-stream", "url": url, "numWorkers": 2, "attributes": {"stream": stream, **attributes}}
    return json.dumps({"events": spec})


def test_entries_reach_the_handler_and_are_acked_after_it(
    run_function: Callable[..., RunningFunction], function_dir: Path, stream: str, tmp_path: Path
) -> None:
    out = tmp_path / "out.txt"
    client = redis.Redis.from_url(SHARED_URL)
    try:
        for index in range(5):
            client.xadd(stream, {"body": f"m{index}", "k": "v"})
        run_function(
            function_dir / "handler.py",
            "--handler",
            "handler:handler",
            "--triggers",
            triggers(stream),
            env={"OUT": str(out)},
        )
        wait_until(lambda: len(lines(out)) == 5, 30, "five events handled")
        assert [line[0] for line in lines(out)] == [f"m{i}" for i in range(5)]  # in stream order
        assert {(line[2], line[3], line[4]) for line in lines(out)} == {("redis-stream", stream, "v")}
        group = "nubis-handler"
        wait_until(lambda: client.xpending(stream, group)["pending"] == 0, 10, "every entry acked")
    finally:
        client.close()


def test_a_failing_event_is_retried_then_dead_lettered_to_a_stream(
    run_function: Callable[..., RunningFunction], function_dir: Path, stream: str, tmp_path: Path
) -> None:
    out = tmp_path / "out.txt"
    client = redis.Redis.from_url(SHARED_URL)
    try:
        client.xadd(stream, {"body": "fail-1"})
        client.xadd(stream, {"body": "after"})
        spec = triggers(stream, deadLetter=f"{stream}-dead", maxAttempts=3, retryBackoff=0.05)
        function = run_function(
            function_dir / "handler.py", "--handler", "handler:handler", "--triggers", spec, env={"OUT": str(out)}
        )
        dead = wait_until(lambda: client.xrange(f"{stream}-dead"), 30, "the dead letter")
        fields = dead[0][1]
        assert fields[b"body"] == b"fail-1" and fields[b"nubis-attempts"] == b"3"
        assert b"told to fail" in fields[b"nubis-error"] and fields[b"nubis-source"] == stream.encode()
        wait_until(lambda: [line[0] for line in lines(out)] == ["after"], 10, "the next entry, after it")
        wait_until(lambda: client.xpending(stream, "nubis-handler")["pending"] == 0, 10, "both acked")
        assert function.stderr_text().count("retrying in") == 2
    finally:
        client.close()


def test_without_a_dead_letter_the_platform_store_keeps_the_failed_event(
    run_function: Callable[..., RunningFunction], function_dir: Path, stream: str, tmp_path: Path
) -> None:

    client = redis.Redis.from_url(SHARED_URL)
    try:
        client.xadd(stream, {"body": "fail-alone", "k": "kept"})
        spec = triggers(stream, maxAttempts=2, retryBackoff=0.05)
        # nubis run keeps failed events under its data dir: <NUBIS_DATA_DIR>/failed/<function>
        function = run_function(
            function_dir / "handler.py",
            "--handler",
            "handler:handler",
            "--triggers",
            spec,
            env={"OUT": str(tmp_path / "out.txt"), "NUBIS_DATA_DIR": str(tmp_path / "data")},
        )
        store = FailedEventStore(tmp_path / "data" / "failed" / function.name)
        records = wait_until(store.records, 30, "the failed event in the platform store")
        assert records[0].body() == b"fail-alone" and records[0].attempts == 2
        assert records[0].source == stream and records[0].event["headers"] == {"k": "kept"}
        assert records[0].trigger_kind == "redis-stream" and "told to fail" in records[0].error
    finally:
        client.close()


class OwnRedis:
    """A redis-server of this test's own on a free port, AOF fsynced on every write."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory, self.port = directory, port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        try:
            wait_until(lambda: _pings(client), 20, "redis-server to answer")
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


@pytest.fixture
def own_redis(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path / "redis", free_port())
    server.directory.mkdir()
    server.start()
    yield server
    server.stop()


def test_nothing_is_lost_when_a_worker_the_replica_and_redis_are_killed(
    run_function: Callable[..., RunningFunction], function_dir: Path, own_redis: OwnRedis, tmp_path: Path
) -> None:
    total = 1000
    out = tmp_path / "out.txt"
    client = redis.Redis(port=own_redis.port)
    stream = "orders"
    try:
        pipe = client.pipeline()
        for index in range(total):
            pipe.xadd(stream, {"body": f"e{index}"})
        pipe.execute()
        env = {"OUT": str(out), "PAUSE": "0.002"}
        spec = triggers(stream, own_redis.url, claimIdleSeconds=1)
        args = ("--handler", "handler:handler", "--triggers", spec)
        first = run_function(function_dir / "handler.py", *args, env=env)
        wait_until(lambda: len(lines(out)) >= 150, 60, "150 events handled")
        worker = int(lines(out)[-1][1])
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: len(lines(out)) >= 350, 60, "350 events handled after the worker's SIGKILL")
        os.killpg(first.pid, signal.SIGKILL)
        wait_until(lambda: not alive(first.pid), 10, "the replica gone")
        run_function(function_dir / "handler.py", *args, env=env)
        wait_until(lambda: len(lines(out)) >= 600, 60, "600 events handled by the second replica")
        own_redis.stop()
        own_redis.start()

        def all_seen() -> bool:
            return len({line[0] for line in lines(out)}) == total

        wait_until(all_seen, 120, "every event handled after the restarts")
        wait_until(lambda: client.xpending(stream, "nubis-handler")["pending"] == 0, 60, "every entry acked")
    finally:
        client.close()
    counts = Counter(line[0] for line in lines(out))
    duplicates = sum(count - 1 for count in counts.values())
    # each fault may repeat what was handled but not yet acked: one event in flight (the stream is
    # ordered) plus the entries read ahead (prefetch 2), for three faults
    assert duplicates <= 3 * (1 + 2), counts.most_common(5)
    print(f"{total} events, {duplicates} handled twice after a worker kill, a replica kill and a Redis restart")
