"""The JetStream mode of the `nats` trigger: a durable pull consumer, explicit acks after handling.

- **The consumer** (`durable`) is created when missing, with explicit acks, `filter_subject` =
  the trigger's subject and AckWait = `ackWaitSeconds` (default: the function's event timeout
  plus 5 s, else 30 s); an existing one gets the AckWait, filter and `maxAckPending` the spec
  asks for. A **stream** is never created unless `createStream` asks: without `stream`, the one
  capturing the subject is looked up; none is a broker that cannot serve yet (state "waiting").
- **Pulls** ask for as many messages as this session holds fewer than the trigger's prefetch, so
  one replica never holds more than its window unacknowledged; and only once it holds half its
  window or less, so a busy replica pulls batches, not one message per round trip to the server
  (that halved the trigger's rate: benchmarks/triggers.py).
- **Held messages are kept alive**: one held longer than AckWait/2 (waiting for a worker, for a
  retry, or a long handler) is reported in progress (+WPI) to JetStream, which then does not
  redeliver it elsewhere meanwhile. A replica that dies stops doing so, and its messages come
  back after AckWait.
- **Settling**: `ack` after the handler (or the dead letter), `nak` to give it back at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from nubis.processor.frames import EventFrame
from nubis.processor.triggers.brokers import BrokerUnavailable, Delivery
from nubis.processor.triggers.nats_config import NatsConfig
from nubis.processor.triggers.nats_session import LOST, Describe, NatsDelivery, NatsSession, message_frame

#: seconds one pull request waits for messages before the loop looks at the connection again
FETCH_SECONDS = 1.0
#: seconds between two looks for messages while the function is at zero (`wait_for_work`)
WORK_POLL_SECONDS = 0.02
#: seconds a JetStream API request (stream and consumer look-ups) may take
API_TIMEOUT = 5.0


class JetStreamDelivery(NatsDelivery):
    def __init__(self, session: PullSession, msg: Msg) -> None:
        super().__init__(msg)
        self.session = session
        self.metadata = msg.metadata
        #: JetStream delivered it before (to a replica that died, or it was given back)
        self.redelivered = self.metadata.num_delivered is not None and self.metadata.num_delivered > 1
        #: monotonic time of its delivery or last in-progress report
        self.since = time.monotonic()

    def event(self) -> EventFrame:
        sequence = self.metadata.sequence.stream
        return message_frame(
            self.msg,
            event_id=f"{self.metadata.stream}:{sequence}",
            timestamp=int(self.metadata.timestamp.timestamp()),
            offset=sequence,
        )

    async def ack(self) -> None:
        self.session.release(self)
        await self.session.call(self.msg.ack())

    async def give_back(self) -> None:
        self.session.release(self)
        await self.session.call(self.msg.nak())


class PullSession(NatsSession):
    def __init__(
        self,
        client: Client,
        config: NatsConfig,
        describe: Describe,
        subscription: JetStreamContext.PullSubscription,
        prefetch: int,
    ) -> None:
        super().__init__(client, config, describe)
        self.subscription = subscription
        self.prefetch = prefetch
        # weak: a delivery the loop dropped unsettled (its settling failed) is no longer kept
        # alive, so JetStream redelivers it after AckWait instead of it being held here for ever
        self.held: weakref.WeakSet[JetStreamDelivery] = weakref.WeakSet()
        #: fetched, not yet taken by the loop
        self._fetched: collections.deque[Msg] = collections.deque()
        #: set when a held message is settled: the window may have room for a batch again
        self._room = asyncio.Event()
        self._keeper = asyncio.create_task(self._keep_alive(), name=f"nats in-progress {config.durable}")
        #: awaited before each fetch (the consumer loop's gate, for scale to zero)
        self.gate: Callable[[], Awaitable[None]] | None = None

    async def backlog(self) -> dict[str, int]:
        """`lag`: messages of the stream the durable has not delivered yet; `pending`: delivered, not acked."""
        info = await self.call(self.subscription.consumer_info())
        return {"lag": int(info.num_pending or 0), "pending": int(info.num_ack_pending or 0)}

    async def wait_for_work(self) -> None:
        """Return once the durable has messages to deliver (new, or due again), taking none: its
        consumer info asked every WORK_POLL_SECONDS (JetStream tells a pull consumer nothing)."""
        while True:
            info = await self.call(self.subscription.consumer_info())
            if int(info.num_pending or 0) or int(info.num_ack_pending or 0):
                return
            await asyncio.sleep(WORK_POLL_SECONDS)

    def release(self, delivery: JetStreamDelivery) -> None:
        self.held.discard(delivery)
        self._room.set()

    async def deliveries(self) -> AsyncIterator[Delivery]:
        while True:
            if not self._fetched:
                if len(self.held) > self.prefetch // 2:
                    self._room.clear()
                    await self._room.wait()
                    continue
                if self.gate is not None:
                    await self.gate()
                batch = max(1, self.prefetch - len(self.held))
                self._fetched.extend(await self.receive(self.subscription.fetch(batch, timeout=FETCH_SECONDS)) or [])
                continue
            delivery = JetStreamDelivery(self, self._fetched.popleft())
            self.held.add(delivery)
            yield delivery

    async def _keep_alive(self) -> None:
        """Report held messages in progress (+WPI) before their AckWait runs out."""
        half = self.config.ack_wait / 2
        while True:
            await asyncio.sleep(half / 2)
            now = time.monotonic()
            for delivery in list(self.held):
                if now - delivery.since >= half:
                    delivery.since = now
                    with contextlib.suppress(*LOST):
                        await delivery.msg.in_progress()

    async def close(self) -> None:
        """Give back (nak) what is still here, so a draining replica's messages go to the others
        at once rather than after AckWait (a lost connection cannot: AckWait brings them back)."""
        self._keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._keeper
        left = [*self._fetched, *(delivery.msg for delivery in self.held)]
        self._fetched.clear()
        for msg in left:
            with contextlib.suppress(*LOST):
                await msg.nak()
        await super().close()


async def open_pull_session(client: Client, config: NatsConfig, describe: Describe, prefetch: int) -> PullSession:
    """The stream (looked up, or created when `createStream` asks), the durable consumer (created
    or brought to the spec's settings), and a pull subscription bound to it."""
    js = client.jetstream(timeout=API_TIMEOUT)
    try:
        stream = await _stream(js, config)
        await _consumer(js, stream, config)
        subscription = await js.pull_subscribe_bind(durable=config.durable, stream=stream)
    except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
        raise BrokerUnavailable("JetStream is not enabled on this server (nats-server -js)") from None
    except LOST as exc:
        raise BrokerUnavailable(describe(exc)) from None
    return PullSession(client, config, describe, subscription, prefetch)


async def _stream(js: JetStreamContext, config: NatsConfig) -> str:
    if config.stream is None:
        try:
            return str(await js.find_stream_name_by_subject(config.subject))
        except nats.js.errors.NotFoundError:
            raise BrokerUnavailable(
                f"no JetStream stream captures subject {config.subject}: create one, or name it in "
                "attributes.stream with attributes.createStream: true"
            ) from None
    try:
        await js.stream_info(config.stream)
    except nats.js.errors.NotFoundError:
        if not config.create_stream:
            raise BrokerUnavailable(
                f"JetStream stream {config.stream} does not exist: create it, or set attributes.createStream: true"
            ) from None
        stream = api.StreamConfig(name=config.stream, subjects=[config.subject], storage=api.StorageType.FILE)
        await js.add_stream(stream)
    return config.stream


async def _consumer(js: JetStreamContext, stream: str, config: NatsConfig) -> None:
    try:
        info = await js.consumer_info(stream, config.durable)
    except nats.js.errors.NotFoundError:
        deliver = api.DeliverPolicy.NEW if config.deliver_new else api.DeliverPolicy.ALL
        wanted = api.ConsumerConfig(
            durable_name=config.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=deliver,
            ack_wait=config.ack_wait,
            filter_subject=config.subject,
            max_ack_pending=config.max_ack_pending,
        )
        await js.add_consumer(stream, wanted)
        return
    existing = info.config
    if existing.deliver_subject:
        raise BrokerUnavailable(
            f"durable {config.durable} of stream {stream} is a push consumer: name another one in attributes.durable"
        )
    pending = config.max_ack_pending or existing.max_ack_pending
    if (
        abs((existing.ack_wait or 0) - config.ack_wait) > 0.001
        or existing.filter_subject != config.subject
        or existing.max_ack_pending != pending
    ):
        existing.ack_wait, existing.filter_subject, existing.max_ack_pending = config.ack_wait, config.subject, pending
        try:
            await js.add_consumer(stream, existing)  # an update of the same durable
        except nats.js.errors.BadRequestError as exc:
            raise BrokerUnavailable(
                f"cannot change durable {config.durable} of stream {stream} to the spec's settings "
                f"({exc.description}): delete it, or name another one in attributes.durable"
            ) from None
