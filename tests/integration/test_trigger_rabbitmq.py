"""The `rabbit-mq` trigger against real RabbitMQ (the machine's on 127.0.0.1:5672; a node of the
test's own where the broker is down at start and then restarted): Nuclio's event shape, manual
acknowledgement only after the handler finished, retries then a dead letter published with
publisher confirms (or the platform's failed-event store), and nothing lost when a worker, then the
replica are SIGKILLed and the broker restarts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from harness import Launcher, RunningFunction, wait_until
from rabbitmq_node import Names, RabbitNode, run

from leaks import alive
from nubis.failed_events import FailedEventStore
from nubis.processor.triggers.rabbitmq import RabbitBroker
from nubis.processor.triggers.rabbitmq_config import parse
from nubis.spec.trigger import Trigger

SHARED_URL = "amqp://guest:guest@127.0.0.1:5672/"

HANDLER = """
import json, os, time

def handler(context, event):
    body = event.body if isinstance(event.body, bytes) else str(event.body).encode()
    gate = os.environ.get("GATE")
    if gate:
        with open(gate + ".started", "ab") as started:
            started.write(body + b"\\n")
        while not os.path.exists(gate):  # held until the test opens the gate
            time.sleep(0.01)
    if os.environ.get("PAUSE"):
        time.sleep(float(os.environ["PAUSE"]))  # the handler's work
    record = {
        "body": body.decode(), "pid": os.getpid(), "kind": event.trigger.kind, "trigger": event.trigger.name,
        "path": event.path, "topic": event.topic, "id": event.id, "method": event.method,
        "content_type": event.content_type, "url": event.url, "headers": dict(event.headers),
        "timestamp": event.timestamp.isoformat(), "failed": body.startswith(b"fail"),
    }
    # one write with O_APPEND: lines of several workers never interleave
    fd = os.open(os.environ["OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, json.dumps(record).encode() + b"\\n")
    os.close(fd)
    if record["failed"]:
        raise RuntimeError("told to fail")
    return "ok"
"""


@pytest.fixture
def function_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "fn"
    directory.mkdir()
    (directory / "handler.py").write_text(HANDLER)
    name = f"rmq-{uuid.uuid4().hex[:8]}"
    (directory / "function.yaml").write_text(
        f"metadata:\n  name: {name}\nspec:\n  runtime: python\n  handler: handler:handler\n"
    )
    return directory


@pytest.fixture
def names() -> Iterator[Names]:
    tag = uuid.uuid4().hex[:8]
    found = Names(f"nubis-test-x-{tag}", f"nubis-test-q-{tag}", f"nubis-test-dl-{tag}")
    yield found
    found.delete(SHARED_URL)


def triggers(names: Names, url: str = SHARED_URL, kind: str = "rabbit-mq", **attributes: Any) -> str:
    spec = {
        "kind": kind,
        "url": url,
        "numWorkers": 2,
        "attributes": {"exchangeName": names.exchange, "queueName": names.queue, "prefetchCount": 4, **attributes},
    }
    return json.dumps({"events": spec})


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_messages_reach_the_handler_as_nuclio_events_acked_after_it(
    run_function: Callable[..., RunningFunction], function_dir: Path, names: Names, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    stamp = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    names.publish(
        SHARED_URL,
        [f"m{index}".encode() for index in range(5)],
        headers={"k": "v", "n": 7},
        message_id="same-id",
        content_type="text/plain",
        type="order.created",
        reply_to="replies",
        timestamp=stamp,
    )
    run_function(function_dir, "--triggers", triggers(names), env={"OUT": str(out)})
    wait_until(lambda: len(records(out)) == 5, 30, "five messages handled")
    # in queue order: by default the trigger handles a queue one message at a time, as Nuclio does
    assert [record["body"] for record in records(out)] == [f"m{index}" for index in range(5)]
    first = records(out)[0]
    assert (first["kind"], first["trigger"]) == ("rabbit-mq", "events")
    assert first["path"] == f"{names.exchange}/{names.queue}"  # Nuclio's <exchange>/<routing key>
    assert first["topic"] == names.queue
    assert (first["id"], first["method"], first["content_type"]) == ("same-id", "order.created", "text/plain")
    assert first["url"] == "replies" and first["headers"] == {"k": "v", "n": "7"}
    assert first["timestamp"] == "2024-01-02T03:04:05"
    wait_until(lambda: names.ready(SHARED_URL) == 0, 10, "an empty queue")


def test_a_message_being_handled_stays_the_brokers_until_the_handler_finished(
    nubis: Launcher, function_dir: Path, names: Names, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    names.publish(SHARED_URL, [b"held"])
    with nubis.start(
        function_dir, "--triggers", triggers(names), env={"OUT": str(tmp_path / "out"), "GATE": str(gate)}
    ) as function:
        wait_until(lambda: Path(f"{gate}.started").exists(), 30, "the handler to start")
        assert names.ready(SHARED_URL) == 0  # delivered, unacknowledged
        os.killpg(function.pid, signal.SIGKILL)
        wait_until(lambda: not alive(function.pid), 10, "the replica gone")
    # the replica died while the handler ran: the message was never acknowledged, the broker has it again
    wait_until(lambda: names.ready(SHARED_URL) == 1, 10, "the message back in the queue")


def test_a_drained_replica_acks_what_it_handled_and_gives_back_the_rest(
    nubis: Launcher, function_dir: Path, names: Names, tmp_path: Path
) -> None:
    out, total = tmp_path / "out.jsonl", 30
    names.publish(SHARED_URL, [f"d{index}".encode() for index in range(total)])
    env = {"OUT": str(out), "PAUSE": "0.05"}
    with nubis.start(function_dir, "--triggers", triggers(names, ordered=False), env=env) as function:
        wait_until(lambda: len(records(out)) >= 5, 30, "five messages handled")
        assert function.stop() == 0  # SIGTERM: a drain
    handled = [record["body"] for record in records(out)]
    assert len(handled) < total, "drained after everything was handled: nothing to give back"
    # none lost, and none both handled and back in the queue (each handled one was acknowledged)
    assert len(set(handled)) == len(handled)
    assert names.ready(SHARED_URL) == total - len(handled)


def test_a_failing_message_is_retried_then_dead_lettered_with_confirms(
    run_function: Callable[..., RunningFunction], function_dir: Path, names: Names, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    names.publish(SHARED_URL, [b"fail-1", b"after"], headers={"k": "kept"}, message_id="m-1")
    spec = triggers(names, deadLetter=names.dead_letter, maxAttempts=3, retryBackoff=0.05)
    function = run_function(function_dir, "--triggers", spec, env={"OUT": str(out)})
    [dead] = names.take(SHARED_URL, names.dead_letter, 1)
    assert dead.body == b"fail-1" and dead.delivery_mode == 2 and dead.message_id == "m-1"
    headers = dead.headers or {}
    assert headers["k"] == "kept" and headers["x-nubis-attempts"] == 3 and headers["x-nubis-source"] == names.queue
    assert "told to fail" in str(headers["x-nubis-error"])
    # in order (the default): the next message of the queue ran only once the failing one was settled
    wait_until(lambda: [r["body"] for r in records(out)] == ["fail-1"] * 3 + ["after"], 10, "three tries, then 'after'")
    wait_until(lambda: names.ready(SHARED_URL) == 0, 10, "an empty queue")
    assert function.stderr_text().count("retrying in") == 2


def test_without_a_dead_letter_the_platform_store_keeps_the_failed_message(
    run_function: Callable[..., RunningFunction], nubis: Launcher, function_dir: Path, names: Names, tmp_path: Path
) -> None:
    names.publish(SHARED_URL, [b"fail-alone"], headers={"k": "kept"})
    spec = triggers(names, maxAttempts=2, retryBackoff=0.05)
    function = run_function(function_dir, "--triggers", spec, env={"OUT": str(tmp_path / "out.jsonl")})
    # nubis run keeps failed events under its data dir: <NUBIS_DATA_DIR>/failed/<function>
    store = FailedEventStore(nubis.data_dir / "failed" / function.name)
    [record] = wait_until(store.records, 30, "the failed message in the platform store")
    assert record.body() == b"fail-alone" and record.attempts == 2 and record.source == names.queue
    assert record.trigger_kind == "rabbit-mq" and record.event["headers"] == {"k": "kept"}
    assert "told to fail" in record.error
    wait_until(lambda: names.ready(SHARED_URL) == 0, 10, "the original acknowledged")
    store.remove(record.id)


def test_topics_bind_a_durable_queue_of_the_triggers_own(
    run_function: Callable[..., RunningFunction], function_dir: Path, names: Names, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    spec = json.dumps(
        {
            "orders": {
                "kind": "rabbitMq",  # Nuclio's alias
                "url": SHARED_URL,
                "attributes": {"exchangeName": names.exchange, "topics": ["orders.*"]},
            }
        }
    )
    function = run_function(function_dir, "--triggers", spec, env={"OUT": str(out)})
    own = Names(names.exchange, f"nubis.{function.name}.orders", names.dead_letter)
    try:
        wait_until(lambda: _declared(own), 30, "the trigger's queue declared and bound")
        for key, body in (("orders.new", b"wanted"), ("refunds.new", b"not bound")):
            _publish_to(names.exchange, key, body)
        wait_until(lambda: [r["body"] for r in records(out)] == ["wanted"], 30, "the bound message only")
        assert records(out)[0]["path"] == f"{names.exchange}/orders.new" and records(out)[0]["kind"] == "rabbitMq"
        function.stop()
        assert own.ready(SHARED_URL) == 0  # durable: still there after the function stopped
    finally:
        own.delete(SHARED_URL)


def _declared(names: Names) -> bool:
    try:
        names.ready(SHARED_URL)
    except aio_pika.exceptions.ChannelNotFoundEntity:  # passively declared before the trigger declared it
        return False
    return True


def _publish_to(exchange: str, routing_key: str, body: bytes) -> None:
    async def work(connection: aio_pika.abc.AbstractConnection) -> None:
        channel = await connection.channel(publisher_confirms=True)
        target = await channel.get_exchange(exchange)
        await target.publish(aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key)

    run(work, SHARED_URL)


def test_the_session_tells_its_backlog_and_what_was_delivered_before(names: Names) -> None:
    names.publish(SHARED_URL, [b"a", b"b", b"c"])
    spec = Trigger.model_validate({"kind": "rabbit-mq", "url": SHARED_URL, "attributes": {"queueName": names.queue}})
    broker = RabbitBroker(parse(spec, "spec.triggers.t", "fn"), "nubis-test")

    async def scenario() -> tuple[dict[str, int], list[tuple[bytes, bool]]]:
        session = await broker.connect(prefetch=1)
        try:
            deliveries = session.deliveries().__aiter__()
            first = await deliveries.__anext__()
            lag = await session.backlog()  # prefetch 1: the other two wait in the queue
            await first.give_back()
            again = await deliveries.__anext__()
            await again.ack()
            seen = [(first.event()["body"], first.redelivered), (again.event()["body"], again.redelivered)]
            return lag, seen
        finally:
            await session.close()

    lag, seen = asyncio.run(scenario())
    assert lag == {"lag": 2}
    assert seen == [(b"a", False), (b"a", True)]  # given back, delivered again first, marked so


@pytest.fixture
def own_rabbit(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[RabbitNode]:
    node = RabbitNode(tmp_path / "rabbit", free_port)
    yield node
    node.stop()


def test_nothing_is_lost_when_a_worker_the_replica_and_the_broker_go_down(
    run_function: Callable[..., RunningFunction], function_dir: Path, own_rabbit: RabbitNode, tmp_path: Path
) -> None:
    total, prefetch = 1000, 4
    out = tmp_path / "out.jsonl"
    names = Names("orders-x", "orders", "orders-dl")
    env = {"OUT": str(out), "PAUSE": "0.003"}
    # not ordered: both workers take messages, so `prefetch` of them can be in flight at a fault
    spec = triggers(names, own_rabbit.url, reconnectInterval="1s", ordered=False)
    # the broker is not up yet: the replica starts anyway and waits for it, saying so once
    first = run_function(function_dir, "--triggers", spec, env=env)
    wait_until(lambda: "cannot reach" in first.stderr_text(), 10, "the trigger to say it waits for the broker")
    own_rabbit.start()
    names.publish(own_rabbit.url, [f"e{index}".encode() for index in range(total)])
    wait_until(lambda: len(records(out)) >= 150, 60, "150 messages handled")
    os.kill(records(out)[-1]["pid"], signal.SIGKILL)
    wait_until(lambda: len(records(out)) >= 350, 60, "350 messages handled after a worker's SIGKILL")
    os.killpg(first.pid, signal.SIGKILL)
    wait_until(lambda: not alive(first.pid), 10, "the replica gone")
    second = run_function(function_dir, "--triggers", spec, env=env)
    wait_until(lambda: len(records(out)) >= 600, 60, "600 messages handled by the second replica")
    own_rabbit.restart()

    def all_seen() -> bool:
        return len({record["body"] for record in records(out)}) == total

    wait_until(all_seen, 60, "every message handled after the restarts")
    wait_until(lambda: own_rabbit.messages(names.queue) == (0, 0), 30, "every message acknowledged", interval=0.5)
    logs = first.stderr_text() + second.stderr_text()
    # one line while the broker was down at start, not one per attempt, and no client library noise
    assert first.stderr_text().count("cannot reach") == 1
    assert "error when creating transport" not in logs and "Traceback" not in logs
    assert RabbitNode.PASSWORD not in logs + first.stdout_text() + second.stdout_text()
    counts = Counter(record["body"] for record in records(out))
    duplicates = sum(count - 1 for count in counts.values())
    # what a fault can repeat is what was handled and not yet acknowledged: the killed worker's one
    # message, then at most `prefetch` unacknowledged messages each for the replica kill and the restart
    assert duplicates <= 1 + 2 * prefetch, counts.most_common(10)
    print(f"{total} messages, {duplicates} handled twice after a worker kill, a replica kill and a broker restart")
