"""The `kafka` output (alias `kafka-cluster`): each response a record produced with `acks=all`,
confirmed once every in-sync replica has it. The producer is not idempotent (the Kafka-protocol
broker the tests run, Tansu with in-memory storage, refuses InitProducerId): a retried send may
store a record twice, which an at-least-once chain allows anyway.

Headers travel as record headers (`content-type`, `nubis-trace-id`, `nubis-parent-id`, the
handler's), which the `kafka-cluster` trigger gives its events. The hop records
`<topic>/<partition>/<offset>`, the id that trigger gives the event. Records have no key, so the
producer spreads them over the topic's partitions; order holds within a partition only.

```yaml
outputs:
  - kind: kafka
    brokers: [127.0.0.1:9092]    # or "host:port,host:port", or the url field
    topic: orders-priced
```

Shorthand: `kafka://host:port[,host:port]/<topic>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult

from nubis.errors import SpecError
from nubis.processor.outputs.base import (
    Message,
    Parsed,
    Target,
    at,
    attributes,
    only_fields,
    required,
    url_path,
    url_query,
)
from nubis.processor.outputs.connected import PUBLISH_TIMEOUT, ConnectedPublisher
from nubis.processor.triggers.kafka_config import BROKER_ADDRESS, TOPIC_NAME
from nubis.spec.outputs import ANNOTATION_FIELD, Output

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

KIND = "kafka"
_SHORTHAND = "kafka://host:port[,host:port]/<topic>"


@dataclass(frozen=True)
class KafkaSettings:
    brokers: tuple[str, ...]
    topic: str


class KafkaKind:
    kind = KIND

    def parse(self, output: Output, field: str) -> Parsed:
        only_fields(output, field, KIND, ("url", "brokers", "topic"))
        given = output.brokers if output.brokers not in (None, "", []) else output.url
        key = "brokers" if output.brokers not in (None, "", []) else "url"
        items = given.split(",") if isinstance(given, str) and given else given
        if not isinstance(items, list) or not items:
            raise SpecError(
                "the output names no broker",
                field=at(field, "brokers"),
                expected="a list of host:port (or a url host:port,host:port)",
                found=given or None,
            )
        brokers = tuple(str(item).strip() for item in items)
        for broker in brokers:
            if not BROKER_ADDRESS.match(broker):
                raise SpecError("not a broker address", field=at(field, key), expected="host:port", found=broker)
        topic = required(output.topic, field, "topic", "a topic name")
        if not TOPIC_NAME.match(topic):
            raise SpecError(
                "not a Kafka topic name",
                field=at(field, "topic"),
                expected="1-249 letters, digits, '.', '_' or '-'",
                found=topic,
            )
        attributes(output, field, {})
        return Parsed(f"kafka {','.join(brokers)} topic {topic}", topic, KafkaSettings(brokers, topic))

    def from_url(self, url: SplitResult, variant: str) -> dict[str, Any]:
        if variant or "@" in url.netloc:
            raise SpecError("not a kafka output URL", field=ANNOTATION_FIELD, expected=_SHORTHAND, found=url.geturl())
        query = url_query(url, (), _SHORTHAND)
        return {"brokers": url.netloc, "topic": url_path(url, _SHORTHAND), **query}

    def publisher(self, target: Target, client_name: str) -> KafkaPublisher:
        return KafkaPublisher(target, client_name)


class KafkaPublisher(ConnectedPublisher["AIOKafkaProducer"]):
    async def connect(self) -> AIOKafkaProducer:
        from aiokafka import AIOKafkaProducer

        settings: KafkaSettings = self.target.settings
        producer = AIOKafkaProducer(
            bootstrap_servers=list(settings.brokers),
            client_id=self.client_name,
            acks="all",
            request_timeout_ms=int(PUBLISH_TIMEOUT * 1000),
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    async def send(self, connection: AIOKafkaProducer, message: Message) -> str | None:
        settings: KafkaSettings = self.target.settings
        headers = [(name, value.encode()) for name, value in message.headers.items()]
        if message.content_type:
            headers.append(("content-type", message.content_type.encode()))
        record = await connection.send_and_wait(settings.topic, message.body, headers=headers)
        return f"{record.topic}/{record.partition}/{record.offset}"

    async def disconnect(self, connection: AIOKafkaProducer) -> None:
        await connection.stop()


#: what BUILTIN_OUTPUTS names for kinds `kafka` and `kafka-cluster`
create = KafkaKind()
