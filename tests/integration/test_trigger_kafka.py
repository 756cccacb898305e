"""The `kafka-cluster` trigger against a real Kafka-protocol broker (Tansu, started by the test):
Nuclio's attributes, the event shape, order per partition, offsets committed only after the
handler (a replica SIGKILLed mid-handler gets the message again; a restarted one resumes after
the last handled message, skipping none), and rebalances that drain: a replica added and removed
mid-stream repeats nothing and commits nothing unhandled, a handler outlasting
`maxWaitHandlerDuringRebalance` is never committed by its replica. Explicit acknowledgement,
TLS and the broker-restart test have files of their own (test_trigger_kafka_*.py)."""

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

HANDLER = """
import os, time

def init_context(context):
    def drained():  # Nuclio's drain callback: a rebalance is taking this replica's partitions
        with open(os.environ["OUT"] + ".drains", "a") as out:
            out.write("%s %s\\n" % (os.environ.get("TAG", "-"), os.getpid()))
    context.platform.set_drain_callback(drained)

def handler(context, event):
    body = event.body if isinstance(event.body, bytes) else str(event.body).encode()
    if body.startswith(b"slow") and os.environ.get("PAUSE"):
        time.sleep(float(os.environ["PAUSE"]))
    time.sleep(float(os.environ.get("EACH", "0")))
    line = "%s %s %s %s %s %s %s %s\\n" % (body.decode(), event.trigger.kind, event.path, event.shard_id, event.offset,
                                        event.headers.get("k", "-"), os.environ.get("TAG", "-"), os.getpid())
    with open(os.environ["OUT"], "a") as out:
        out.write(line)
    return "ok"
"""


@pytest.fixture(scope="module")
def kafka(free_port: Callable[[], int]) -> Iterator[KafkaNode]:
    yield from running(free_port())


@pytest.fixture
def function_dir(tmp_path: Path) -> Path:
    return function_with(tmp_path, HANDLER)


def triggers(kafka: KafkaNode, topic: str, kind: str = "kafka-cluster", **attributes: object) -> str:
    return json.dumps({"events": {"kind": kind, "numWorkers": 3, "attributes": kafka.attributes(topic, **attributes)}})


def test_messages_reach_the_handler_in_order_per_partition(
    run_function: Callable[..., RunningFunction], function_dir: Path, kafka: KafkaNode, tmp_path: Path
) -> None:
    topic = f"t-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic, 3)
    kafka.produce(topic, [(i % 3, f"m{i}".encode()) for i in range(30)], headers=[("k", b"v")])
    out = tmp_path / "out.txt"
    run_function(
        function_dir / "handler.py",
        "--handler",
        "handler:handler",
        "--triggers",
        triggers(kafka, topic, kind="kafka"),
        env={"OUT": str(out)},
    )
    wait_until(lambda: len(lines(out)) == 30, 60, "thirty events handled")
    seen = lines(out)
    assert {line[1] for line in seen} == {"kafka"} and {line[2] for line in seen} == {topic}
    assert {line[5] for line in seen} == {"v"}
    for partition in range(3):
        mine = [line for line in seen if line[3] == str(partition)]
        assert [line[0] for line in mine] == [f"m{i}" for i in range(partition, 30, 3)], f"partition {partition}"
        assert [int(line[4]) for line in mine] == list(range(10))


def test_a_replica_killed_mid_handler_gets_the_message_again_and_a_restart_skips_nothing(
    run_function: Callable[..., RunningFunction], function_dir: Path, kafka: KafkaNode, tmp_path: Path
) -> None:
    topic = f"t-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic, 1)
    kafka.produce(topic, [(0, b"a0"), (0, b"a1"), (0, b"slow"), (0, b"a3")])
    out = tmp_path / "out.txt"
    first = run_function(
        function_dir / "handler.py",
        "--handler",
        "handler:handler",
        "--triggers",
        triggers(kafka, topic),
        env={"OUT": str(out), "PAUSE": "30"},
    )
    wait_until(lambda: [line[0] for line in lines(out)] == ["a0", "a1"], 60, "the first two handled")
    os.killpg(first.process.pid, signal.SIGKILL)  # while "slow" is in its handler, uncommitted
    first.process.wait(10)
    run_function(
        function_dir / "handler.py",
        "--handler",
        "handler:handler",
        "--triggers",
        triggers(kafka, topic),
        env={"OUT": str(out), "PAUSE": "0"},
    )
    wait_until(lambda: [line[0] for line in lines(out)][-2:] == ["slow", "a3"], 60, "slow delivered again, then a3")
    handled = [line[0] for line in lines(out)]
    assert handled.count("slow") == 1 and handled.count("a3") == 1
    assert handled.count("a0") <= 2 and handled.count("a1") <= 2  # at most the in-flight window again


SLOW_HANDLER = """
import os, time

def handler(context, event):
    body = event.body.decode()
    if body == "slow" and not os.path.exists(os.environ["OUT"] + ".once"):  # the first time only
        open(os.environ["OUT"] + ".once", "w").close()
        while not os.path.exists(os.environ["GO"]):
            time.sleep(0.02)
    with open(os.environ["OUT"], "a") as out:
        out.write("%s %s %s %s\\n" % (body, event.shard_id, event.offset, os.environ["TAG"]))
    return "ok"
"""


def test_a_handler_outlasting_the_rebalance_wait_is_never_committed_by_its_replica(
    run_function: Callable[..., RunningFunction], kafka: KafkaNode, tmp_path: Path
) -> None:
    """maxWaitHandlerDuringRebalance bounds the drain: the replica lets the partition go with the
    handler still running, commits only what was finished before it, and the message is handled
    again by the partition's next owner (one duplicate, the one that outlasted the wait)."""
    topic = f"t-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic, 1)
    bodies = ["a0", "a1", "slow", "a3", "a4"]
    kafka.produce(topic, [(0, body.encode()) for body in bodies])
    directory = function_with(tmp_path, SLOW_HANDLER)
    out, go = tmp_path / "out.txt", tmp_path / "go"
    spec = triggers(kafka, topic, maxWaitHandlerDuringRebalance="1s", heartbeatInterval="1s")
    args = ("--handler", "handler:handler", "--triggers", spec)
    env = {"OUT": str(out), "GO": str(go)}
    watcher = CommitWatcher(kafka.address, f"g-{topic}", topic, 1, lambda: {(0, int(x[2])) for x in lines(out)})
    watcher.start()
    try:
        first = run_function(directory / "handler.py", *args, env={**env, "TAG": "first"})
        wait_until(lambda: Path(f"{out}.once").exists(), 60, "the slow message in the first replica's handler")
        run_function(directory / "handler.py", *args, env={**env, "TAG": "second"})  # joins: a rebalance
        wait_until(lambda: "still running after" in first.stderr_text(), 60, "the first replica letting go")
        go.touch()  # the first handler of "slow" ends now, after its partition moved
        wait_until(lambda: [x[0] for x in lines(out)].count("slow") == 2, 60, "slow handled again")
        wait_until(lambda: {x[0] for x in lines(out)} == set(bodies), 60, "every message handled")
        wait_until(lambda: kafka.committed(f"g-{topic}", topic, 1) == [5], 30, "everything committed")
    finally:
        watcher.stop()
    assert not watcher.violations, watcher.violations[:5]
    handled = [x[0] for x in lines(out)]
    assert sorted(handled) == sorted([*bodies, "slow"]), "only the message that outlasted the wait, twice"


def test_a_replica_added_and_removed_mid_stream_drains_loses_nothing_and_commits_only_what_was_handled(
    run_function: Callable[..., RunningFunction], function_dir: Path, kafka: KafkaNode, tmp_path: Path
) -> None:
    """Nuclio's users report double handling after rebalances and commits of unprocessed messages:
    here each rebalance drains the revoked partitions' handlers and commits before the group
    re-forms, and a watcher checks every committed offset against what the handlers finished."""
    topic = f"t-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic, 3)
    total, prefetch = 1000, 4
    kafka.produce(topic, [(i % 3, f"m{i}".encode()) for i in range(total)])
    out = tmp_path / "out.txt"
    spec = triggers(kafka, topic, prefetchCount=prefetch)
    args = ("--handler", "handler:handler", "--triggers", spec)
    env = {"OUT": str(out), "EACH": "0.01"}
    watcher = CommitWatcher(kafka.address, f"g-{topic}", topic, 3, lambda: {(int(x[3]), int(x[4])) for x in lines(out)})
    watcher.start()
    try:
        first = run_function(function_dir / "handler.py", *args, env={**env, "TAG": "first"})
        wait_until(lambda: len(lines(out)) >= 100, 60, "100 handled by the first replica")
        second = run_function(function_dir / "handler.py", *args, env={**env, "TAG": "second"})  # joins: a rebalance
        wait_until(lambda: any(line[6] == "second" for line in lines(out)), 60, "the second replica handling")
        drains = Path(f"{out}.drains")
        wait_until(lambda: {line[0] for line in lines(drains)} == {"first"}, 30, "the first replica's drain callbacks")
        wait_until(lambda: len(lines(out)) >= 500, 60, "500 handled")
        first.stop()  # leaves the group: a rebalance gives its partitions to the second
        wait_until(lambda: {line[0] for line in lines(out)} >= {f"m{i}" for i in range(total)}, 90, "every message")
        wait_until(lambda: kafka.committed(f"g-{topic}", topic, 3) == [334, 333, 333], 30, "everything committed")
    finally:
        watcher.stop()
    assert watcher.reads > 10 and not watcher.violations, watcher.violations[:5]
    assert second.process.poll() is None
    assert {line[6] for line in lines(out)[-20:]} == {"second"}, "the second replica finishes the stream"
    handled = [line[0] for line in lines(out)]
    duplicates = len(handled) - total
    # a drained rebalance repeats nothing; at most what is in flight in one replica's window
    assert duplicates <= prefetch, f"{duplicates} handled twice, more than an in-flight window"
    rows = [(int(line[3]), int(line[4])) for line in lines(out)]
    assert not first_sightings_in_order(rows), "a partition's messages were first handled out of order"
    print(f"{total} events, a replica added and removed: {duplicates} handled twice, {watcher.reads} commit reads")
