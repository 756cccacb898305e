"""The `nats` trigger (Nuclio kind `nats`): a `Broker` on nats-py for the one consumer loop
(consumer.py), in one of two modes that nats_config.py picks from the spec.

- **Core NATS**: a subscription to the subject in a queue group, so the replicas share the
  messages. Core NATS has no acknowledgement: a message is gone from the server once it was sent
  to this replica, so `ack` and `give_back` do nothing, and a message that was in this replica's
  buffer or being handled when the replica died, drained or lost its connection is lost
  (at-most-once; docs/triggers/nats.md). Failures still go through the policy (retries here,
  then the dead letter).
- **JetStream**: a durable pull consumer acknowledged after handling (nats_jetstream.py).

nats-py's own reconnecting is off: reconnecting is the loop's job, the same for every kind, and
said in the trigger's state; a lost connection ends the session and the loop opens another.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from nubis.processor.frames import EventFrame
from nubis.processor.triggers.brokers import BrokerUnavailable, Delivery
from nubis.processor.triggers.consumer import ConsumerTrigger
from nubis.processor.triggers.message_options import ConsumerSettings, MessageOptions, MessageTriggerFactory
from nubis.processor.triggers.nats_config import NatsConfig, parse
from nubis.processor.triggers.nats_jetstream import open_pull_session
from nubis.processor.triggers.nats_session import LOST, NatsDelivery, NatsSession, message_frame
from nubis.spec import Trigger as TriggerSpec

log = logging.getLogger("nubis.processor")

KIND = "nats"
#: seconds one connection attempt (TCP, TLS, CONNECT/PONG) may take
CONNECT_TIMEOUT = 5
#: seconds one wait for a message lasts before the loop looks at the connection again
RECEIVE_SECONDS = 1.0


class CoreMessage(NatsDelivery):
    """A core NATS message: nothing to settle with the server (at-most-once)."""

    def __init__(self, msg: Msg) -> None:
        super().__init__(msg)
        self.received = int(time.time())

    def event(self) -> EventFrame:
        return message_frame(self.msg, event_id="", timestamp=self.received)  # the loop gives it an id

    async def ack(self) -> None:
        return None  # core NATS has no acknowledgement

    async def give_back(self) -> None:
        return None  # nor redelivery: a message given back here is lost (docs/triggers/nats.md)


class CoreSession(NatsSession):
    def __init__(self, client: Client, config: NatsConfig, broker: NatsBroker, subscription: Subscription) -> None:
        super().__init__(client, config, broker.describe)
        self.subscription = subscription

    async def deliveries(self) -> AsyncIterator[Delivery]:
        while True:
            msg = await self.receive(self.subscription.next_msg(timeout=RECEIVE_SECONDS))
            if msg is not None:
                yield CoreMessage(msg)


class NatsBroker:
    def __init__(self, config: NatsConfig, label: str) -> None:
        self.config = config
        self.where = config.where
        self.dead_letter = config.dead_letter
        #: the connection's name on the server (its monitoring shows it)
        self.label = label
        self._secrets = [s for s in (config.password, *map(_url_secret, config.servers)) if s]
        self._last_error: BaseException | None = None
        #: messages the client dropped for want of room (core NATS only), since the trigger started
        self.dropped = 0

    def describe(self, exc: BaseException | None) -> str:
        """What went wrong, without a credential: nats-py's error, else the connection's last one."""
        if exc is None or isinstance(exc, nats.errors.NoServersError | nats.errors.ConnectionClosedError):
            exc = self._last_error or exc
        text = "the connection was closed" if exc is None else f"{type(exc).__name__}: {exc}".rstrip(": ")
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text.splitlines()[0][:300]

    async def _remember(self, exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError):
            # core NATS: the client's buffer is full and drops messages (JetStream pulls never overfill it)
            self.dropped += 1
            if self.dropped == 1:
                log.warning("%s: messages dropped, this replica cannot keep up (core NATS keeps nothing)", self.where)
            return
        self._last_error = exc  # not logged here: the loop says once that the broker is out of reach

    async def connect(self, prefetch: int) -> NatsSession:
        config = self.config
        credentials = {"user": config.user, "password": config.password} if config.user else {}
        self._last_error = None
        try:
            client = await nats.connect(
                servers=list(config.servers),
                name=self.label,
                allow_reconnect=False,
                # each server tried twice, at once, then NoServersError: the loop waits and retries
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                connect_timeout=CONNECT_TIMEOUT,
                error_cb=self._remember,
                **credentials,
            )
        except LOST as exc:
            raise BrokerUnavailable(self.describe(exc)) from None
        try:
            if config.jetstream:
                return await open_pull_session(client, config, self.describe, prefetch)
            subscription = await client.subscribe(config.subject, queue=config.queue_group)
            return CoreSession(client, config, self, subscription)
        except BaseException:
            with contextlib.suppress(*LOST):
                await client.close()
            raise


def _url_secret(url: str) -> str:
    parts = urlsplit(url)
    return parts.password or parts.username or ""


class NatsFactory(MessageTriggerFactory):
    """The registry's factory for kind `nats`."""

    def consumer(
        self, name: str, trigger: TriggerSpec, field: str, options: MessageOptions, settings: ConsumerSettings
    ) -> ConsumerTrigger:
        config = parse(
            trigger,
            field,
            function=options.function,
            name=name,
            annotations=options.annotations,
            event_timeout=options.event_timeout,
        )
        broker = NatsBroker(config, f"nubis {options.function or 'function'}/{name}")
        # not ordered: JetStream redelivers out of order once more than one message is unacked;
        # `maxAckPending: 1` keeps a stream's order across every replica (docs/triggers/nats.md)
        return ConsumerTrigger(kind=KIND, name=name, broker=broker, ordered=False, **settings.as_kwargs())


#: what BUILTIN_TRIGGERS names for kind `nats`
create = NatsFactory()
