"""The `rabbit-mq` trigger (Nuclio kinds `rabbit-mq` and `rabbitMq`): a `Broker` on aio-pika for
the one consumer loop (consumer.py), which acknowledges a message only after its handler finished.

Per connection: one channel consumes the queue with manual acknowledgement and `basic.qos`
prefetch = the trigger's window, so the broker never has more unacknowledged messages out to this
replica than the loop will hold. A second channel, opened when first needed, publishes dead
letters with publisher confirms (`mandatory`, persistent), so a failed message is acknowledged only
once the broker has taken its copy; it also asks for the queue's backlog (`lag`). A lost
connection closes the consuming channel: what was received but not handed to the loop is dropped
here (the broker still owns it and delivers it again), and the loop reconnects. aio-pika's own
reconnecting ("robust") connection is not used: reconnecting is the loop's job, the same for
every kind, and said in the trigger's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

from nubis.failed_events import FailedEvent
from nubis.processor.frames import EVENT, EventFrame
from nubis.processor.triggers.brokers import BrokerUnavailable, Delivery
from nubis.processor.triggers.consumer import ConsumerTrigger
from nubis.processor.triggers.message_options import ConsumerSettings, MessageOptions, MessageTriggerFactory
from nubis.processor.triggers.rabbitmq_config import RabbitConfig, parse
from nubis.spec import Trigger as TriggerSpec

#: seconds to open a connection (TCP, AMQP handshake) before the broker counts as unreachable
CONNECT_TIMEOUT = 10.0
#: seconds the broker has to confirm a dead-letter copy
PUBLISH_TIMEOUT = 10.0
#: seconds between two looks at the loop's gate while no message comes (scale to zero)
GATE_RECHECK_SECONDS = 1.0
#: seconds between two looks at the queue's ready count while the function is at zero
WORK_POLL_SECONDS = 0.02
#: what a lost connection or channel raises in aio-pika / aiormq (ChannelInvalidStateError is a RuntimeError)
_LOST = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, ConnectionError, TimeoutError)


class _SaidByTheLoop(logging.Filter):
    """aiormq logs each failed connection attempt as an error and a lost connection with a
    traceback; the consumer loop says both once, in one line (its "waiting" state), so those
    records are dropped here."""

    REPEATED = ("error when creating transport", "Unexpected connection close", "Cancelling cause reader")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.REPEATED)


logging.getLogger("aiormq.connection").addFilter(_SaidByTheLoop())


def _why(exc: BaseException) -> str:
    """An AMQP error as one line (aio-pika masks passwords in the URLs it names)."""
    text = str(exc) or type(exc).__name__
    if "Connection.OpenOk" in text:  # aiormq keeps only the text of the broker's refusal
        text = "the broker refused the URL's virtual host (is there one of that name, may this user use it?)"
    if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
        text += " (the broker has it with other settings: match durableExchange/durableQueue/exchangeType to it)"
    return text


def _header(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


class RabbitDelivery:
    """One message of the queue, settled on the channel it came on."""

    __slots__ = ("message", "ordering_key", "redelivered", "source")

    def __init__(self, message: AbstractIncomingMessage, queue: str) -> None:
        self.message = message
        self.source = queue
        #: a queue is FIFO: with `ordered`, its messages run one after the other
        self.ordering_key: str | None = queue
        #: the broker delivered it before (to a consumer that died, or that gave it back)
        self.redelivered = bool(message.redelivered)

    def event(self) -> EventFrame:
        message = self.message
        frame: EventFrame = {
            "t": EVENT,
            "id": message.message_id or "",
            "body": message.body,
            "headers": {str(name): _header(value) for name, value in (message.headers or {}).items()},
            # Nuclio's rabbit-mq event: path <exchange>/<routing key>, id the message id, method its type
            "path": f"{message.exchange or ''}/{message.routing_key or ''}",
            "topic": self.source,
            "timestamp": _seconds(message.timestamp),
        }
        if message.content_type:
            frame["content_type"] = message.content_type
        if message.type:
            frame["method"] = message.type
        if message.reply_to:
            frame["url"] = message.reply_to
        return frame

    async def ack(self) -> None:
        try:
            await self.message.ack()
        except _LOST as exc:
            raise BrokerUnavailable(f"cannot acknowledge: {_why(exc)}") from None

    async def give_back(self) -> None:
        try:
            await self.message.nack(requeue=True)
        except _LOST as exc:
            # the channel is gone, and with it the message's hold: the broker delivers it again anyway
            raise BrokerUnavailable(f"cannot give a message back: {_why(exc)}") from None


def _seconds(stamp: datetime | None) -> int:
    if stamp is None:
        return int(time.time())
    return int((stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp())


class _Lost:
    def __init__(self, reason: str) -> None:
        self.reason = reason


class RabbitSession:
    """One connection: a consuming channel feeding `deliveries`, a confirming one for dead letters."""

    def __init__(self, config: RabbitConfig, connection: AbstractConnection, channel: AbstractChannel) -> None:
        self.config = config
        self.connection = connection
        self.channel = channel
        self._inbox: asyncio.Queue[AbstractIncomingMessage | _Lost] = asyncio.Queue()
        #: a channel with publisher confirms for dead letters and backlog questions (a refusal there,
        #: e.g. a queue gone, closes it, not the consuming channel)
        self._side: AbstractChannel | None = None
        self._dead_letter_declared = False
        channel.close_callbacks.add(self._channel_closed)
        #: awaited before waiting for the next message (the consumer loop's gate, scale to zero)
        self.gate: Callable[[], Awaitable[None]] | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None

    async def consume(self, queue: AbstractQueue) -> None:
        self._queue = queue
        self._consumer_tag = await queue.consume(self._arrived, no_ack=False)

    async def _next_when_idle(self) -> AbstractIncomingMessage | _Lost:
        """Caught up: wait for the next message, looking at the loop's gate every
        GATE_RECHECK_SECONDS (a function gone to zero meanwhile stops consuming, `wait_for_work`)."""
        while True:
            if self.gate is not None:
                await self.gate()
                if self._consumer_tag is None and self._queue is not None:
                    try:
                        self._consumer_tag = await self._queue.consume(self._arrived, no_ack=False)
                    except _LOST as exc:
                        raise BrokerUnavailable(_why(exc)) from None
            getter = asyncio.ensure_future(self._inbox.get())
            await asyncio.wait({getter}, timeout=GATE_RECHECK_SECONDS if self.gate is not None else None)
            if not getter.done():
                getter.cancel()
                await asyncio.wait({getter})
            if not getter.cancelled():
                return getter.result()

    async def wait_for_work(self) -> None:
        """At zero: stop the broker pushing messages here (cancel the consumer), then look at the
        queue's ready count every WORK_POLL_SECONDS until it holds one, taking none; `__anext__`
        consumes again once the loop has woken the workers."""
        try:
            if self._consumer_tag is not None and self._queue is not None:
                tag, self._consumer_tag = self._consumer_tag, None
                await self._queue.cancel(tag)
            while self._inbox.empty():
                side = await self._side_channel()
                queue = await side.declare_queue(self.config.queue, passive=True)
                if queue.declaration_result.message_count:
                    return
                await asyncio.sleep(WORK_POLL_SECONDS)
        except _LOST as exc:
            raise BrokerUnavailable(_why(exc)) from None

    async def _arrived(self, message: AbstractIncomingMessage) -> None:
        self._inbox.put_nowait(message)

    def _channel_closed(self, _sender: object, exc: BaseException | None = None) -> None:
        # messages not yet handed out would be settled on a dead channel: drop them, the broker keeps them
        while not self._inbox.empty():
            self._inbox.get_nowait()
        self._inbox.put_nowait(_Lost(_why(exc) if exc else "the channel was closed"))

    def deliveries(self) -> RabbitSession:
        return self

    def __aiter__(self) -> RabbitSession:
        return self

    async def __anext__(self) -> Delivery:
        item = self._inbox.get_nowait() if not self._inbox.empty() else await self._next_when_idle()
        if isinstance(item, _Lost):
            self._inbox.put_nowait(item)
            raise BrokerUnavailable(item.reason)
        return RabbitDelivery(item, self.config.queue)

    async def dead_letter(self, delivery: Delivery, failed: FailedEvent) -> None:
        assert isinstance(delivery, RabbitDelivery) and self.config.dead_letter is not None
        original = delivery.message
        headers: dict[str, Any] = dict(original.headers or {})
        headers.update(
            {
                "x-nubis-error": failed.error[:4000],
                "x-nubis-attempts": failed.attempts,
                "x-nubis-source": failed.source,
                "x-nubis-function": failed.function,
                "x-nubis-trigger": failed.trigger_name,
                "x-nubis-event-id": failed.id,
            }
        )
        copy = aio_pika.Message(
            original.body,
            headers=headers,
            content_type=original.content_type,
            content_encoding=original.content_encoding,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            priority=original.priority,
            correlation_id=original.correlation_id,
            reply_to=original.reply_to,
            message_id=original.message_id or failed.id,
            timestamp=original.timestamp,
            type=original.type,
            app_id=original.app_id,
        )
        try:
            publisher = await self._dead_letter_channel()
            await publisher.default_exchange.publish(
                copy, routing_key=self.config.dead_letter, mandatory=True, timeout=PUBLISH_TIMEOUT
            )
        except (*_LOST, aio_pika.exceptions.DeliveryError) as exc:
            # not in the dead letter: the original goes back to the queue (its attempts start again)
            with contextlib.suppress(BrokerUnavailable):
                await delivery.give_back()
            raise BrokerUnavailable(f"dead letter {self.config.dead_letter} not confirmed: {_why(exc)}") from None

    async def _dead_letter_channel(self) -> AbstractChannel:
        side = await self._side_channel()
        if not self._dead_letter_declared:
            await side.declare_queue(self.config.dead_letter, durable=True)
            self._dead_letter_declared = True
        return side

    async def _side_channel(self) -> AbstractChannel:
        if self._side is None or self._side.is_closed:
            try:
                self._side = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
            except RuntimeError as exc:  # aio-pika's "Connection was not opened": the connection is gone
                raise BrokerUnavailable(_why(exc)) from None
            self._dead_letter_declared = False
        return self._side

    async def backlog(self) -> dict[str, int]:
        """`lag`: messages ready in the queue, not yet delivered to any consumer."""
        try:
            side = await self._side_channel()
            queue = await side.declare_queue(self.config.queue, passive=True)
        except _LOST as exc:
            raise BrokerUnavailable(_why(exc)) from None
        return {"lag": int(queue.declaration_result.message_count or 0)}

    async def close(self) -> None:
        # unacknowledged messages go back to the queue when the connection closes
        with contextlib.suppress(*_LOST, RuntimeError):
            await self.connection.close()


class RabbitBroker:
    """How to reach the queue (`Broker` of consumer.py)."""

    def __init__(self, config: RabbitConfig, connection_name: str) -> None:
        self.config = config
        self.where = config.where
        self.dead_letter = config.dead_letter
        self.connection_name = connection_name

    async def connect(self, prefetch: int) -> RabbitSession:
        config = self.config
        try:
            connection = await aio_pika.connect(
                config.url, timeout=CONNECT_TIMEOUT, client_properties={"connection_name": self.connection_name}
            )
        except (*_LOST, OSError) as exc:
            raise BrokerUnavailable(_why(exc)) from None
        try:
            channel = await connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=prefetch)
            queue = await channel.declare_queue(config.queue, durable=config.durable_queue)
            if config.exchange:
                exchange = await channel.declare_exchange(
                    config.exchange, config.exchange_type, durable=config.durable_exchange
                )
                for routing_key in config.bindings:
                    await queue.bind(exchange, routing_key)
            session = RabbitSession(config, connection, channel)
            await session.consume(queue)
        except BaseException as exc:
            # refused by the broker, lost, or cancelled by a drain: the half-made session goes
            with contextlib.suppress(*_LOST, RuntimeError):
                await connection.close()
            if isinstance(exc, (*_LOST, OSError)):
                raise BrokerUnavailable(_why(exc)) from None
            raise
        return session


class RabbitTriggerFactory(MessageTriggerFactory):
    """The registry's factory for kinds `rabbit-mq` and `rabbitMq`."""

    def consumer(
        self, name: str, trigger: TriggerSpec, field: str, options: MessageOptions, settings: ConsumerSettings
    ) -> ConsumerTrigger:
        config = parse(trigger, field, options.function)
        return ConsumerTrigger(
            kind=trigger.kind,
            name=name,
            broker=RabbitBroker(config, f"nubis-{options.function}-{name}"),
            ordered=config.ordered,
            reconnect_max=config.reconnect_interval,
            **settings.as_kwargs(),
        )


#: what BUILTIN_TRIGGERS names for kinds `rabbit-mq` and `rabbitMq`
create = RabbitTriggerFactory()
