"""The `rabbit-mq` output (alias `rabbitMq`): each response a persistent message published to an
exchange with a routing key, on a channel in publisher-confirm mode, `mandatory`: the event is
answered once the broker confirmed the message, and a message no queue would take comes back as
a failure instead of vanishing.

The exchange must exist (the trigger that consumes it declares it; the default exchange `""`
always exists, routing by queue name). Headers travel in the AMQP headers table, the content type
as the message's property; the message id (a fresh id per message) is the id the `rabbit-mq`
trigger gives the event, and what the hop records.

```yaml
outputs:
  - kind: rabbit-mq
    url: amqp://guest:guest@127.0.0.1:5672/    # the vhost is the path, as for the trigger
    exchange: shop                             # default "": the default exchange
    routingKey: orders.priced                  # on the default exchange: the queue's name
    attributes:
      mandatory: true                          # false: an unroutable message is dropped silently
```

Shorthand: `rabbit-mq://user:pass@host:port/<exchange>/<routing key>[?vhost=NAME]`, the
exchange empty for the default one (`rabbit-mq://host:5672//orders`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, quote

from nubis.errors import SpecError
from nubis.processor.ids import new_event_id
from nubis.processor.outputs.base import (
    Message,
    Parsed,
    Target,
    at,
    attributes,
    broker_url,
    flag,
    only_fields,
    url_query,
)
from nubis.processor.outputs.connected import CONNECT_TIMEOUT, PUBLISH_TIMEOUT, ConnectedPublisher
from nubis.redact import masked_url
from nubis.spec.outputs import ANNOTATION_FIELD, Output

if TYPE_CHECKING:
    from aio_pika.abc import AbstractConnection, AbstractExchange

KIND = "rabbit-mq"
#: AMQP 0-9-1 short strings: exchange names, routing keys
_MAX_NAME = 255
_SHORTHAND = "rabbit-mq://user:pass@host:port/<exchange>/<routing key>[?vhost=NAME]"


@dataclass(frozen=True)
class RabbitSettings:
    url: str
    exchange: str
    routing_key: str
    mandatory: bool


class RabbitKind:
    kind = KIND

    def parse(self, output: Output, field: str) -> Parsed:
        only_fields(output, field, KIND, ("url", "exchange", "routing_key"))
        url = output.url
        expected = "amqp://user:password@host:5672[/vhost] (or amqps://)"
        broker_url(url, field, what="AMQP", schemes=("amqp", "amqps"), expected=expected)
        for key, value in (("exchange", output.exchange), ("routingKey", output.routing_key)):
            if len(value.encode()) > _MAX_NAME:
                raise SpecError(
                    f"{key} is too long", field=at(field, key), expected=f"at most {_MAX_NAME} bytes", found=value
                )
        if not output.exchange and not output.routing_key:
            raise SpecError(
                "routingKey is missing",
                field=at(field, "routingKey"),
                expected="the queue's name (the default exchange routes by it), or an exchange",
            )
        settings = attributes(output, field, {"mandatory": True})
        mandatory = flag(settings, "mandatory", field)
        shown = f"exchange {output.exchange!r}" if output.exchange else "the default exchange"
        destination = f"{output.exchange}/{output.routing_key}"
        where = f"{masked_url(url)} {shown} routing key {output.routing_key!r}"
        return Parsed(where, destination, RabbitSettings(url, output.exchange, output.routing_key, mandatory))

    def from_url(self, url: SplitResult, variant: str) -> dict[str, Any]:
        path = url.path[1:] if url.path.startswith("/") else url.path
        exchange, slash, routing_key = path.partition("/")
        if variant or not slash:
            raise SpecError(
                "not a rabbit-mq output URL",
                field=ANNOTATION_FIELD,
                expected=_SHORTHAND,
                found=masked_url(url.geturl()),
            )
        query = url_query(url, ("vhost", "mandatory"), _SHORTHAND)
        vhost = query.pop("vhost", "")
        fields: dict[str, Any] = {
            "url": f"amqp://{url.netloc}/{quote(vhost, safe='')}",
            "exchange": exchange,
            "routingKey": routing_key,
        }
        if "mandatory" in query:
            fields["attributes"] = {"mandatory": query.pop("mandatory")}
        return {**fields, **query}

    def publisher(self, target: Target, client_name: str) -> RabbitPublisher:
        return RabbitPublisher(target, client_name)


@dataclass
class _Channel:
    connection: AbstractConnection
    exchange: AbstractExchange


class RabbitPublisher(ConnectedPublisher[_Channel]):
    async def connect(self) -> _Channel:
        import aio_pika

        settings: RabbitSettings = self.target.settings
        connection = await aio_pika.connect(
            settings.url, timeout=CONNECT_TIMEOUT, client_properties={"connection_name": self.client_name}
        )
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            if settings.exchange:
                exchange = await channel.get_exchange(settings.exchange, ensure=True)
            else:
                exchange = channel.default_exchange
        except BaseException:
            await connection.close()
            raise
        return _Channel(connection, exchange)

    async def send(self, connection: _Channel, message: Message) -> str | None:
        import aio_pika

        settings: RabbitSettings = self.target.settings
        message_id = new_event_id()
        amqp = aio_pika.Message(
            message.body,
            headers=dict(message.headers),
            content_type=message.content_type or None,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
        )
        await connection.exchange.publish(
            amqp, routing_key=settings.routing_key, mandatory=settings.mandatory, timeout=PUBLISH_TIMEOUT
        )
        return message_id

    async def disconnect(self, connection: _Channel) -> None:
        await connection.connection.close()


#: what BUILTIN_OUTPUTS names for kinds `rabbit-mq` and `rabbitMq`
create = RabbitKind()
