"""Batch mode on a message trigger (redis-stream, real Redis on 127.0.0.1:6379) through a real
`nubis run`: entries reach the handler in batches in stream order, each is acknowledged by its own
result, and the one that fails is retried and dead-lettered alone while the rest of its batch is
acked once (docs/batching.md)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import redis
from harness import RunningFunction, wait_until

URL = "redis://127.0.0.1:6379/0"

HANDLER = """
import os

import nuclio_sdk


def handler(context, batch):
    bodies = [event.body.decode() for event in batch]
    with open(os.environ["OUT"], "a") as out:
        out.write(" ".join(bodies) + "\\n")  # one line per call: its batch
    return [
        nuclio_sdk.Response(body=body, status_code=500 if body.startswith("fail") else 200, event_id=event.id)
        for event, body in zip(batch, bodies)
    ]
"""

FUNCTION_YAML = """
metadata:
  name: batched-stream
  annotations:
    nubis.io/fail-on-status: "5xx"
spec:
  handler: main:handler
  runtime: python
  triggers:
    entries:
      kind: redis-stream
      url: {url}
      numWorkers: 1
      batch:
        mode: enable
        batchSize: 4
        timeout: 50ms
      attributes:
        stream: {stream}
        consumerGroup: batched
        deadLetter: {stream}-dead
        maxAttempts: 2
        retryBackoff: 0.05
"""


def test_each_entry_of_a_batch_is_settled_by_its_own_result(
    run_function: Callable[..., RunningFunction], tmp_path: Path
) -> None:
    stream = f"nubis-batch-{uuid.uuid4().hex[:8]}"
    directory = tmp_path / "fn"
    directory.mkdir()
    (directory / "main.py").write_text(HANDLER)
    (directory / "function.yaml").write_text(FUNCTION_YAML.format(url=URL, stream=stream))
    out = tmp_path / "out.txt"
    entries = [f"m{index}" for index in range(5)] + ["fail-1"] + [f"m{index}" for index in range(5, 12)]
    client = redis.Redis.from_url(URL)
    try:
        for body in entries:
            client.xadd(stream, {"body": body})
        run_function(directory, env={"OUT": str(out)})
        dead = wait_until(lambda: client.xrange(f"{stream}-dead"), 30, "the failed entry in the dead letter")
        assert dead[0][1][b"body"] == b"fail-1" and dead[0][1][b"nubis-attempts"] == b"2"
        wait_until(lambda: client.xpending(stream, "batched")["pending"] == 0, 10, "every entry acked")

        batches = [line.split() for line in out.read_text().splitlines()]
        assert all(1 <= len(batch) <= 4 for batch in batches)
        assert max(len(batch) for batch in batches) > 1  # the entries were waiting: batches fill
        handled = [body for batch in batches for body in batch]
        # the failing entry alone was tried again; every other entry was handled once, in order
        assert handled.count("fail-1") == 2
        assert [body for body in handled if body != "fail-1"] == [body for body in entries if body != "fail-1"]
    finally:
        client.delete(stream, f"{stream}-dead")
        client.close()
