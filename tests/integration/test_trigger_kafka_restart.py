"""The `kafka-cluster` trigger through a worker SIGKILL, a replica SIGKILL and a broker restart,
on a broker with durable storage: Tansu's `s3://` engine on a SeaweedFS of the test's own
(s3_node.py), so the topic and the group's committed offsets outlive the broker's SIGKILL.

1,000 events over 3 partitions and 2 replicas; what must hold: none lost, each partition's
first sightings in order, no commit of a message its handler had not finished (watched while it
runs), and duplicates within the in-flight windows of the faults."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from handler_output import function_with, lines
from harness import RunningFunction, wait_until
from kafka_checks import CommitWatcher, first_sightings_in_order
from kafka_node import KafkaNode, running
from s3_node import S3Node

HANDLER = """
import os, time

def handler(context, event):
    time.sleep(float(os.environ.get("EACH", "0")))
    with open(os.environ["OUT"], "a") as out:
        out.write("%s %s %s %s %s\\n" % (event.body.decode(), event.shard_id, event.offset, os.environ["TAG"],
                                         os.getpid()))
    return "ok"
"""
PARTITIONS, PREFETCH = 3, 4


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory, free_port: Callable[[], int]) -> Iterator[S3Node]:
    node = S3Node(tmp_path_factory.mktemp("s3"), free_port)
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def kafka(s3: S3Node, free_port: Callable[[], int]) -> Iterator[KafkaNode]:
    yield from running(free_port(), storage=f"s3://{s3.bucket}/", env=s3.environment())


def test_a_thousand_events_survive_a_worker_and_a_replica_sigkill_and_a_broker_restart(
    run_function: Callable[..., RunningFunction], kafka: KafkaNode, tmp_path: Path
) -> None:
    topic = f"t-{uuid.uuid4().hex[:8]}"
    group = f"g-{topic}"
    kafka.create_topic(topic, PARTITIONS)
    total = 1000
    kafka.produce(topic, [(i % PARTITIONS, f"e{i}".encode()) for i in range(total)])
    out = tmp_path / "out.txt"
    directory = function_with(tmp_path, HANDLER)
    attributes = kafka.attributes(topic, heartbeatInterval="1s", prefetchCount=PREFETCH)
    spec = json.dumps({"events": {"kind": "kafka-cluster", "numWorkers": PARTITIONS, "attributes": attributes}})
    args = ("--handler", "handler:handler", "--triggers", spec)
    env = {"OUT": str(out), "EACH": "0.01"}

    def handled() -> set[tuple[int, int]]:
        return {(int(line[1]), int(line[2])) for line in lines(out)}

    watcher = CommitWatcher(kafka.address, group, topic, PARTITIONS, handled)
    watcher.start()
    try:
        first = run_function(directory / "handler.py", *args, env={**env, "TAG": "a"})
        run_function(directory / "handler.py", *args, env={**env, "TAG": "b"})
        wait_until(lambda: {line[3] for line in lines(out)} == {"a", "b"}, 60, "both replicas handling")
        worker = int(next(line for line in reversed(lines(out)) if line[3] == "a")[4])
        os.kill(worker, signal.SIGKILL)
        seen = len(lines(out))
        wait_until(lambda: len(lines(out)) >= seen + 100, 60, "100 more handled after the worker's SIGKILL")
        os.killpg(first.process.pid, signal.SIGKILL)  # its partitions go to b after the session timeout
        first.process.wait(10)
        run_function(directory / "handler.py", *args, env={**env, "TAG": "c"})
        seen = len(lines(out))
        wait_until(lambda: len(lines(out)) >= seen + 100, 60, "100 more handled after the replica's SIGKILL")
        kafka.kill()
        kafka.start()
        seen = len(lines(out))
        wait_until(lambda: len(lines(out)) >= seen + 50, 60, "handling again after the broker's restart")
        wait_until(lambda: len(handled()) == total, 120, "every event handled")
        expected = [len(range(p, total, PARTITIONS)) for p in range(PARTITIONS)]
        wait_until(lambda: kafka.committed(group, topic, PARTITIONS) == expected, 60, "everything committed")
    finally:
        watcher.stop()
    assert not watcher.violations, watcher.violations[:5]
    rows = [(int(line[1]), int(line[2])) for line in lines(out)]
    assert not first_sightings_in_order(rows), "a partition's messages were first handled out of order"
    duplicates = len(rows) - total
    # the worker's SIGKILL repeats at most its event; the replica's SIGKILL what it handled but had not
    # committed (its window); the broker's restart what was handled while commits could not be made
    # (each replica's window)
    assert duplicates <= 1 + PREFETCH + 2 * PREFETCH, f"{duplicates} handled twice"
    print(f"{total} events, 3 partitions, 2 replicas, 3 faults: {duplicates} handled twice, {watcher.reads} reads")
