"""What the `mqtt` trigger's integration tests share: a mosquitto of a test's own (persistence on,
on a free port, stopped by pid), a RabbitMQ node of its own with the MQTT plugin (a broker without
MQTT 5), a publisher and a subscriber on the real broker (paho's blocking client), the test
function and its output."""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from harness import wait_until
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from rabbitmq_node import RabbitNode

SHARED_PORT = 1883

HANDLER = """
import os, time

def handler(context, event):
    body = event.body if isinstance(event.body, bytes) else str(event.body).encode()
    if body.startswith(b"fail"):
        raise RuntimeError("told to fail")
    if body.startswith(b"slow") and os.environ.get("SLOW"):
        with open(os.environ["OUT"] + ".started", "ab") as started:
            started.write(body + b"\\n")
        time.sleep(60)
    if os.environ.get("PAUSE"):
        time.sleep(float(os.environ["PAUSE"]))
    line = b"%s %d %s %s %s %s %s %s\\n" % (
        body, os.getpid(), event.trigger.kind.encode(), event.trigger.name.encode(), str(event.path).encode(),
        str(event.url).encode(), event.headers.get("k", "-").encode(), (event.content_type or "-").encode(),
    )
    with open(os.environ["OUT"], "ab") as out:
        out.write(line)
    return "ok"
"""


def write_function(directory: Path) -> Path:
    """The test function's source file in `directory` (made)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "handler.py").write_text(HANDLER)
    return directory / "handler.py"


def publish(port: int, topic: str, *bodies: str, ca: Path | None = None) -> None:
    """Publish `bodies` at QoS 1, in order, each acknowledged by the broker, on one connection."""
    with Client(port, ca=ca) as client:
        for body in bodies:
            client.publish(topic, body)


def triggers(port: int, topic: str, client_id: str, workers: int = 2, **attributes: Any) -> str:
    subscriptions = attributes.pop("subscriptions", [{"topic": topic, "qos": 1}])
    spec = {
        "kind": "mqtt",
        "url": attributes.pop("url", f"tcp://127.0.0.1:{port}"),
        "numWorkers": workers,
        "attributes": {"subscriptions": subscriptions, "clientID": client_id, "retryBackoff": 0.05, **attributes},
    }
    return json.dumps({"sensors": spec})


class Mosquitto:
    """A mosquitto of the test's own on a free port, persisting its sessions to `directory`
    (written when it stops, and every second)."""

    #: QoS 1 messages mosquitto sends an MQTT 3.1.1 client before it waits for PUBACKs (its own
    #: default is 20; an MQTT 5 client says how many itself: Receive Maximum)
    INFLIGHT = 10

    def __init__(self, directory: Path, port: int, tls: tuple[Path, Path] | None = None) -> None:
        self.directory, self.port = directory, port
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        certificate = f"certfile {tls[0]}\nkeyfile {tls[1]}\n" if tls else ""
        (directory / "mosquitto.conf").write_text(
            f"listener {port} 127.0.0.1\n"
            f"{certificate}"
            # run as root, mosquitto would become user mosquitto, who cannot write the test's directory
            "user root\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {directory}/\n"
            "autosave_interval 1\n"
            # mosquitto's default (1000) drops what an offline session would queue beyond it
            "max_queued_messages 0\n"
            f"max_inflight_messages {self.INFLIGHT}\n"
            f"log_dest file {directory}/mosquitto.log\n"
        )

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(self.directory / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, 20, f"mosquitto on port {self.port} to answer")

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"mosquitto exited with {self.process.returncode}: {self.log()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its sessions as it exits) and wait for it by pid."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def crash(self) -> None:
        """SIGKILL: no Will is published, and what changed since the last autosave is lost."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text()[-3000:] if path.exists() else ""


class RabbitMqtt(RabbitNode):
    """A RabbitMQ node of the test's own with its MQTT plugin on `mqtt_port`: RabbitMQ 3.10 speaks
    MQTT 3.1 and 3.1.1 only (MQTT 5 came with 3.13), and closes the connection on an MQTT 5 CONNECT
    without answering it. Anonymous MQTT clients act as the node's user."""

    def __init__(self, directory: Path, free_port: Callable[[], int]) -> None:
        super().__init__(directory, free_port)
        self.mqtt_port = free_port()
        (directory / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        with open(directory / "rabbitmq.conf", "a") as config:
            config.write(
                f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_port}\n"
                "mqtt.allow_anonymous = true\n"
                f"mqtt.default_user = {self.USER}\nmqtt.default_pass = {self.PASSWORD}\n"
            )

    def start(self) -> None:
        super().start()
        wait_until(self._mqtt_answers, 30, f"RabbitMQ's MQTT listener on port {self.mqtt_port}")

    def _mqtt_answers(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.mqtt_port), timeout=1).close()
        except OSError:
            return False
        return True


class Client:
    """paho's blocking client: publishes (each one waits for its PUBACK) and collects what the
    topics it subscribed to receive."""

    def __init__(self, port: int, version: int = 4, ca: Path | None = None) -> None:
        protocol = paho.MQTTv5 if version == 5 else paho.MQTTv311
        self.version = version
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
        self.received: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.client.on_message = lambda client, userdata, message: self.received.put(message)
        self.client.connect("localhost" if ca else "127.0.0.1", port)
        self.client.loop_start()
        wait_until(self.client.is_connected, 10, f"a client connected to port {port}")

    def publish(self, topic: str, body: bytes | str, headers: dict[str, str] | None = None, **extra: str) -> None:
        properties = None
        if self.version == 5 and (headers or extra):
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if headers:
                properties.UserProperty = list(headers.items())
            if "content_type" in extra:
                properties.ContentType = extra["content_type"]
        self.client.publish(topic, body, qos=1, properties=properties).wait_for_publish(10)

    def subscribe(self, topic: str) -> None:
        done: queue.Queue[bool] = queue.Queue()
        self.client.on_subscribe = lambda *args: done.put(True)
        self.client.subscribe(topic, qos=1)
        done.get(timeout=10)

    def next_message(self, timeout: float = 30.0) -> paho.MQTTMessage:
        return self.received.get(timeout=timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
