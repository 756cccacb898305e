"""RabbitMQ for the `rabbit-mq` trigger's tests: a node of a test's own (to stop and restart), and a
small synchronous AMQP client (aio-pika under `asyncio.run`) for publishing and looking at queues.

`RabbitNode` runs `rabbitmq-server` as the machine has it, on free ports (AMQP, Erlang
distribution, and an epmd of its own, started here in the foreground so that its pid is known),
with its data in a temporary directory that outlives a restart: durable queues and persistent
messages come back. Its config sets a user whose password is not `guest`, so tests can look for it
in logs. `stop` ends the node's process group and the epmd, by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
from harness import skip_or_fail

T = TypeVar("T")

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
#: the node's first start creates its database: a few seconds on our machines
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def run(work: Callable[[aio_pika.abc.AbstractConnection], Coroutine[Any, Any, T]], url: str) -> T:
    """`work(connection)` on a fresh connection to `url`, closed after it."""

    async def main() -> T:
        connection = await aio_pika.connect(url, timeout=10)
        try:
            return await work(connection)
        finally:
            await connection.close()

    return asyncio.run(main())


@dataclass(frozen=True)
class Names:
    """A test's own exchange and queues, declared as the trigger declares them (durable, topic)."""

    exchange: str
    queue: str
    dead_letter: str

    def publish(self, url: str, bodies: list[bytes], **properties: Any) -> None:
        """Publish persistent messages through the exchange, routed by the queue's name, each
        confirmed by the broker (declaring exchange, queue and binding first: the trigger may not
        have yet, and an unroutable message would be dropped)."""

        async def work(connection: aio_pika.abc.AbstractConnection) -> None:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.declare_exchange(self.exchange, "topic", durable=True)
            queue = await channel.declare_queue(self.queue, durable=True)
            await queue.bind(exchange, self.queue)
            for start in range(0, len(bodies), 100):
                batch = bodies[start : start + 100]
                await asyncio.gather(
                    *(
                        exchange.publish(
                            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **properties),
                            routing_key=self.queue,
                        )
                        for body in batch
                    )
                )

        run(work, url)

    def ready(self, url: str, queue: str | None = None) -> int:
        """Messages ready in `queue` (default: the test's queue); unacknowledged ones do not count."""

        async def work(connection: aio_pika.abc.AbstractConnection) -> int:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue or self.queue, passive=True)
            return int(declared.declaration_result.message_count or 0)

        return run(work, url)

    def take(self, url: str, queue: str, count: int) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """Take (and acknowledge) `count` messages of `queue`, waiting up to 30 s for them."""

        async def work(connection: aio_pika.abc.AbstractConnection) -> list[aio_pika.abc.AbstractIncomingMessage]:
            channel = await connection.channel()
            source = await channel.declare_queue(queue, durable=True)
            taken: list[aio_pika.abc.AbstractIncomingMessage] = []
            deadline = time.monotonic() + 30
            while len(taken) < count and time.monotonic() < deadline:
                message = await source.get(fail=False, timeout=5)
                if message is None:
                    await asyncio.sleep(0.05)
                    continue
                await message.ack()
                taken.append(message)
            return taken

        return run(work, url)

    def delete(self, url: str) -> None:
        async def work(connection: aio_pika.abc.AbstractConnection) -> None:
            channel = await connection.channel()
            for queue in (self.queue, self.dead_letter):
                await channel.queue_delete(queue)
            await channel.exchange_delete(self.exchange)

        with contextlib.suppress(aio_pika.exceptions.AMQPError, ConnectionError):
            run(work, url)


class RabbitNode:
    """A rabbitmq-server of a test's own (see the module docstring)."""

    USER = "nubis"
    PASSWORD = "n0t-the-guest-pw"

    def __init__(self, directory: Path, free_port: Callable[[], int]) -> None:
        if not SERVER.exists() or shutil.which("epmd") is None:
            skip_or_fail(f"{SERVER} and epmd (Debian's rabbitmq-server) are needed for a RabbitMQ of the test's own")
        self.directory = directory
        self.port, self.dist_port, self.epmd_port = free_port(), free_port(), free_port()
        self.server: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "home").mkdir(exist_ok=True)
        (directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\n"
            f"default_user = {self.USER}\ndefault_pass = {self.PASSWORD}\n"
            "loopback_users = none\n"
        )
        (directory / "rabbitmq-env.conf").write_text("")
        (directory / "enabled_plugins").write_text("[].\n")

    @property
    def url(self) -> str:
        return f"amqp://{self.USER}:{self.PASSWORD}@127.0.0.1:{self.port}/"

    def _environment(self) -> dict[str, str]:
        d = self.directory
        return {
            **os.environ,
            "HOME": str(d / "home"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_NODENAME": f"nubis{self.port}@localhost",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_BASE": str(d),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_LOGS": str(d / "log" / "node.log"),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def start(self) -> None:
        env = self._environment()
        if self.epmd is None:
            self.epmd = subprocess.Popen(
                ["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        with open(self.directory / "server.out", "ab") as output:
            self.server = subprocess.Popen(
                [str(SERVER)],
                env=env,
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            if self.server.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"rabbitmq-server on port {self.port} did not start (distribution port {self.dist_port}, "
                    f"epmd {self.epmd_port}); see {self.directory}/server.out"
                )
            time.sleep(0.2)

    def _answers(self) -> bool:
        async def probe(connection: aio_pika.abc.AbstractConnection) -> bool:
            return True

        try:
            # a TCP connection first: aio-pika logs each refused attempt as an error
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return run(probe, self.url)
        except (aio_pika.exceptions.AMQPError, ConnectionError, OSError, TimeoutError):
            return False

    def stop_server(self) -> None:
        """Stop the node, keeping its data: SIGTERM to the start script, which stops the Erlang VM in
        RabbitMQ's orderly way and waits for it; whatever is left of its process group is killed."""
        if self.server is None:
            return
        self.server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.server.wait(STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.server.pid, signal.SIGKILL)
        self.server.wait(10)
        self.server = None

    def messages(self, queue: str) -> tuple[int, int]:
        """(ready, unacknowledged) messages of `queue`, as the node counts them (rabbitmqctl: AMQP
        itself tells only the ready ones)."""
        listed = subprocess.run(
            [
                str(SERVER.with_name("rabbitmqctl")),  # not /usr/sbin's, which runs as user rabbitmq with its cookie
                "-n",
                f"nubis{self.port}@localhost",
                "-q",
                "list_queues",
                "name",
                "messages_ready",
                "messages_unacknowledged",
            ],
            env=self._environment(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        for line in listed.stdout.splitlines():
            fields = line.split()
            if len(fields) == 3 and fields[0] == queue:
                return int(fields[1]), int(fields[2])
        raise AssertionError(f"queue {queue} not found on the node: {listed.stdout}{listed.stderr}")

    def restart(self) -> None:
        self.stop_server()
        self.start()

    def stop(self) -> None:
        self.stop_server()
        if self.epmd is not None:
            self.epmd.kill()
            self.epmd.wait(10)
            self.epmd = None
