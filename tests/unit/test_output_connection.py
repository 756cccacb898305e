"""The connection every output kind's publisher shares (`outputs.connected.ConnectedPublisher`),
with a stand-in client: messages waiting for a connection share one attempt at it (a broker that
is down costs each of them one wait, not one wait per message before it), connecting counts
toward the confirmation timeout, and a closed publisher neither waits for an attempt under way
nor opens a new connection. Each broker's own publisher runs in
tests/integration/test_output_publishers.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from nubis.processor.outputs import connected
from nubis.processor.outputs.base import Message, PublishFailed, Target
from nubis.processor.outputs.connected import ConnectedPublisher
from nubis.spec.outputs import status_ranges

MESSAGE = Message(b"body", "text/plain", {}, "event-1")


class Client:
    """A stand-in connection: records what it was sent."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.closed = False


class Stub(ConnectedPublisher[Client]):
    """Connects once `gate` is open: refused while `refuse` is set, else with a new `Client`."""

    def __init__(self) -> None:
        super().__init__(
            Target("test", "out", "spec.outputs[0]", status_ranges(None, "f"), "the test's broker", "dest", None),
            "client",
        )
        self.gate = asyncio.Event()
        self.gate.set()
        self.refuse = False
        self.attempts = 0
        self.clients: list[Client] = []

    async def connect(self) -> Client:
        self.attempts += 1
        await self.gate.wait()
        if self.refuse:
            raise ConnectionRefusedError("refused")
        self.clients.append(Client())
        return self.clients[-1]

    async def send(self, connection: Client, message: Message) -> str | None:
        connection.sent.append(message)
        return f"id-{len(connection.sent)}"

    async def disconnect(self, connection: Client) -> None:
        connection.closed = True


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


async def turns(count: int = 20) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def test_messages_waiting_for_a_connection_share_its_one_attempt() -> None:
    async def scenario() -> None:
        publisher = Stub()
        publisher.gate.clear()
        publisher.refuse = True
        waiting = [asyncio.ensure_future(publisher.publish(MESSAGE)) for _ in range(3)]
        await turns()
        publisher.gate.set()
        results = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(result, PublishFailed) and "cannot connect" in str(result) for result in results)
        assert publisher.attempts == 1, "one attempt for the three messages waiting for it"
        publisher.refuse = False
        assert (await publisher.publish(MESSAGE)).id == "id-1"  # the next message tries again
        assert publisher.attempts == 2
        assert (await publisher.publish(MESSAGE)).id == "id-2"  # on the same connection
        assert publisher.attempts == 2

    run(scenario)


def test_connecting_counts_toward_the_confirmation_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        monkeypatch.setattr(connected, "PUBLISH_TIMEOUT", 0.2)
        publisher = Stub()
        publisher.gate.clear()  # a broker that never answers the connect
        with pytest.raises(PublishFailed, match="cannot connect: timed out"):
            await asyncio.wait_for(publisher.publish(MESSAGE), 5)
        await publisher.close()

    run(scenario)


def test_close_does_not_wait_for_an_attempt_under_way_and_connects_nothing_after() -> None:
    async def scenario() -> None:
        publisher = Stub()
        publisher.gate.clear()
        publishing = asyncio.ensure_future(publisher.publish(MESSAGE))
        await turns()
        await asyncio.wait_for(publisher.close(), 5)
        with pytest.raises(PublishFailed, match="closed"):
            await publishing
        publisher.gate.set()
        with pytest.raises(PublishFailed, match="closed"):
            await publisher.publish(MESSAGE)
        assert publisher.clients == [], "no connection left open by a closed publisher"

    run(scenario)


def test_close_closes_the_connection() -> None:
    async def scenario() -> None:
        publisher = Stub()
        await publisher.publish(MESSAGE)
        await publisher.close()
        assert [client.closed for client in publisher.clients] == [True]

    run(scenario)
