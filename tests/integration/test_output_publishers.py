"""Each output kind's publisher against its real broker (the machine's Redis, NATS with JetStream,
RabbitMQ and Mosquitto; a Tansu node of the module's own for Kafka): the message arrives with its
body, content type and trace headers, the id the publisher reports is the one the matching trigger
gives the event, and what the broker refuses or cannot take is a `PublishFailed`, after which the
publisher reconnects by itself."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import aiomqtt
import nats
import pytest
import redis
from aiokafka import AIOKafkaConsumer
from kafka_node import KafkaNode, running
from test_trigger_redis_stream import OwnRedis

from nubis.processor.outputs.base import Message, Publisher, PublishFailed, Target
from nubis.processor.outputs.registry import BUILTIN_OUTPUTS, OutputRegistry
from nubis.spec import parse_config

HEADERS = {"nubis-trace-id": "trace-1", "nubis-parent-id": "event-1", "x-own": "kept"}
MESSAGE = Message(b'{"total": 3}', "application/json", HEADERS, "event-1")


def publisher(output: dict[str, Any]) -> tuple[Target, Publisher]:
    registry = OutputRegistry(BUILTIN_OUTPUTS)
    config = parse_config({"metadata": {"name": "fn"}, "spec": {"outputs": [output]}}).config
    (target,) = registry.targets(config)
    return target, registry.kind(target.kind, field=target.field).publisher(target, "nubis-test")


@pytest.fixture(scope="module")
def kafka(free_port: Callable[[], int]) -> Iterator[KafkaNode]:
    yield from running(free_port())


def test_redis_stream_entries_are_what_the_trigger_reads_and_an_outage_is_a_failure_then_a_reconnect(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    own = OwnRedis(tmp_path / "redis", free_port())
    own.directory.mkdir()
    own.start()
    stream = f"out-{uuid.uuid4().hex[:8]}"
    client = redis.Redis(port=own.port)
    _, out = publisher({"kind": "redis-stream", "url": own.url, "stream": stream, "attributes": {"maxLen": 1000}})

    async def scenario() -> None:
        first = await out.publish(MESSAGE)
        ((entry_id, fields),) = client.xrange(stream)
        assert first.id == f"{stream}:{entry_id.decode()}" and first.destination == stream
        assert fields == {
            b"body": b'{"total": 3}',
            b"content-type": b"application/json",
            b"nubis-trace-id": b"trace-1",
            b"nubis-parent-id": b"event-1",
            b"x-own": b"kept",
        }
        own.stop()
        with pytest.raises(PublishFailed) as info:
            await out.publish(MESSAGE)
        assert f"output redis-stream-0 (redis://127.0.0.1:{own.port}/0 stream {stream})" in str(info.value)
        with pytest.raises(PublishFailed, match="cannot connect"):
            await out.publish(MESSAGE)
        own.start()
        await out.publish(MESSAGE)  # a new connection, by itself
        await out.close()

    try:
        asyncio.run(scenario())
        assert client.xlen(stream) == 2  # the AOF kept the first; the failed ones were never stored
    finally:
        client.close()
        own.stop()


def test_nats_core_and_jetstream_with_deduplicated_retries() -> None:
    subject = f"nubis.out.{uuid.uuid4().hex[:8]}"
    stream = f"OUT_{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        client = await nats.connect("nats://127.0.0.1:4222")
        js = client.jetstream()
        try:
            subscription = await client.subscribe(f"{subject}.core")
            _, core = publisher({"kind": "nats", "subject": f"{subject}.core"})
            assert (await core.publish(MESSAGE)).id is None
            received = await subscription.next_msg(timeout=5)
            assert received.data == MESSAGE.body and received.headers is not None
            assert (
                received.headers["nubis-trace-id"] == "trace-1"
                and received.headers["Content-Type"] == "application/json"
            )
            await js.add_stream(name=stream, subjects=[f"{subject}.js"])
            _, durable = publisher({"kind": "nats", "subject": f"{subject}.js", "stream": stream})
            first = await durable.publish(MESSAGE)
            again = await durable.publish(MESSAGE)  # the same event tried again: stored once
            assert first.id == f"{stream}:1" and again.id == f"{stream}:1"
            assert (await js.stream_info(stream)).state.messages == 1
            _, wrong = publisher({"kind": "nats", "subject": f"{subject}.js", "stream": "NOSUCH"})
            with pytest.raises(PublishFailed):
                await wrong.publish(MESSAGE)
            for out in (core, durable, wrong):
                await out.close()
        finally:
            await js.delete_stream(stream)
            await client.close()

    asyncio.run(scenario())


def test_kafka_records_carry_the_headers_and_the_trigger_s_id(kafka: KafkaNode) -> None:
    topic = f"out-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic, 1)

    async def scenario() -> None:
        _, out = publisher({"kind": "kafka", "brokers": [kafka.address], "topic": topic})
        published = await out.publish(MESSAGE)
        assert published.id == f"{topic}/0/0"
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka.address, auto_offset_reset="earliest")
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), 30)
        finally:
            await consumer.stop()
        assert record.value == MESSAGE.body
        assert dict(record.headers) == {
            "nubis-trace-id": b"trace-1",
            "nubis-parent-id": b"event-1",
            "x-own": b"kept",
            "content-type": b"application/json",
        }
        await out.close()
        _, nowhere = publisher({"kind": "kafka", "brokers": ["127.0.0.1:1"], "topic": topic})
        with pytest.raises(PublishFailed, match="cannot connect"):
            await nowhere.publish(MESSAGE)
        await nowhere.close()

    asyncio.run(scenario())


def test_rabbitmq_confirms_and_refuses_what_no_queue_takes() -> None:
    queue_name = f"nubis-out-{uuid.uuid4().hex[:8]}"
    url = "amqp://guest:guest@127.0.0.1:5672/"

    async def scenario() -> None:
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue(queue_name, auto_delete=True)
            _, out = publisher({"kind": "rabbit-mq", "url": url, "routingKey": queue_name})
            published = await out.publish(MESSAGE)
            message = await queue.get(timeout=5)
            assert message.body == MESSAGE.body and message.content_type == "application/json"
            assert message.message_id == published.id and message.headers["nubis-trace-id"] == "trace-1"
            assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            await message.ack()
            _, unroutable = publisher({"kind": "rabbit-mq", "url": url, "routingKey": f"{queue_name}-nobody"})
            with pytest.raises(PublishFailed):
                await unroutable.publish(MESSAGE)
            _, no_exchange = publisher(
                {"kind": "rabbit-mq", "url": url, "exchange": f"{queue_name}-none", "routingKey": "x"}
            )
            with pytest.raises(PublishFailed, match="cannot connect"):
                await no_exchange.publish(MESSAGE)
            await out.publish(MESSAGE)  # still confirmed after the other outputs' failures
            assert (await queue.get(timeout=5)).body == MESSAGE.body
            for each in (out, unroutable, no_exchange):
                await each.close()
        finally:
            await connection.close()

    asyncio.run(scenario())


def test_mqtt_5_user_properties_carry_the_headers() -> None:
    topic = f"nubis/out/{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        async with aiomqtt.Client("127.0.0.1", 1883, protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.subscribe(topic, qos=1)
            _, out = publisher({"kind": "mqtt", "url": "tcp://127.0.0.1:1883", "topic": topic})
            assert (await out.publish(MESSAGE)).id is None
            message = await asyncio.wait_for(anext(client.messages), 10)
            assert message.payload == MESSAGE.body and message.qos == 1
            assert message.properties is not None
            assert dict(message.properties.UserProperty) == HEADERS
            assert message.properties.ContentType == "application/json"
            await out.close()
            _, v311 = publisher(
                {"kind": "mqtt", "url": "127.0.0.1:1883", "topic": topic, "attributes": {"protocolVersion": 4}}
            )
            await v311.publish(MESSAGE)  # MQTT 3.1.1 has no headers: the body alone
            bare = await asyncio.wait_for(anext(client.messages), 10)
            assert bare.payload == MESSAGE.body
            await v311.close()

    asyncio.run(scenario())
