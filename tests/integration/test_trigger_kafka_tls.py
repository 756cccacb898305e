"""The `kafka-cluster` trigger over TLS with a client certificate, for real: Tansu behind a
TLS-terminating proxy that requires a client certificate of the test's CA (tls_proxy.py: the
broker advertises the proxy's address, so every connection, the trigger's included, goes
through it). Certificates come from Nubis's own CA code. The CA reaches the trigger as Nuclio's
flattened `nuclio.io/kafka-ca-cert` annotation, the client certificate as attributes."""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError
from handler_output import function_with, lines
from harness import RunningFunction, wait_until
from kafka_node import KafkaNode
from tls_proxy import TlsProxy

from nubis.auth.ca import CertificateAuthority

HANDLER = """
import os

def handler(context, event):
    with open(os.environ["OUT"], "a") as out:
        out.write("%s %s %s\\n" % (event.body.decode(), event.shard_id, event.offset))
    return "ok"
"""


@dataclass
class Secured:
    kafka: KafkaNode
    proxy: TlsProxy
    ca_pem: str
    client_cert: str
    client_key: str


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, free_port: Callable[[], int]) -> Iterator[Secured]:
    directory = tmp_path_factory.mktemp("kafka-tls")
    authority = CertificateAuthority.open(directory / "ca")
    cert, key = authority.server_certificate(["127.0.0.1"])
    issued = authority.issue("kafka-client")
    (directory / "client.crt").write_text(issued.certificate)
    (directory / "client.key").write_text(issued.key)
    client_context = ssl.create_default_context(cafile=str(authority.cert_path))
    client_context.load_cert_chain(directory / "client.crt", directory / "client.key")
    broker_port, proxy_port = free_port(), free_port()
    proxy = TlsProxy(proxy_port, broker_port, cert, key, client_ca=authority.cert_path)
    try:
        kafka = KafkaNode(
            broker_port, advertised=proxy_port, client={"security_protocol": "SSL", "ssl_context": client_context}
        )
        try:
            yield Secured(kafka, proxy, authority.certificate_pem, issued.certificate, issued.key)
        finally:
            kafka.stop()
    finally:
        proxy.stop()


def test_messages_arrive_over_tls_with_a_client_certificate(
    run_function: Callable[..., RunningFunction], secured: Secured, tmp_path: Path
) -> None:
    kafka = secured.kafka
    topic = f"t-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(topic, 2)
    kafka.produce(topic, [(i % 2, f"m{i}".encode()) for i in range(10)])
    directory = function_with(tmp_path, HANDLER)
    attributes = kafka.attributes(
        topic,
        tls={"enable": True, "minimumVersion": "1.2"},
        accessCertificate=secured.client_cert,
        accessKey=secured.client_key,
    )
    config = {
        "metadata": {
            "name": f"tls-{topic}",
            "annotations": {"nuclio.io/kafka-ca-cert": secured.ca_pem.replace("\n", "@")},
        },
        "spec": {"handler": "handler:handler", "triggers": {"events": {"kind": "kafka", "attributes": attributes}}},
    }
    (directory / "function.yaml").write_text(json.dumps(config))
    before = secured.proxy.handshakes
    out = tmp_path / "out.txt"
    run_function(directory, env={"OUT": str(out)})
    wait_until(lambda: sorted(line[0] for line in lines(out)) == sorted(f"m{i}" for i in range(10)), 60, "all ten")
    wait_until(lambda: kafka.committed(f"g-{topic}", topic, 2) == [5, 5], 30, "both partitions committed")
    assert secured.proxy.handshakes > before, "the trigger reached the broker through the TLS proxy"


def test_without_the_client_certificate_the_proxy_refuses(secured: Secured) -> None:
    """The check above is real: the proxy lets no connection through without a client certificate."""
    anonymous = ssl.create_default_context(cadata=secured.ca_pem)

    async def bootstrap() -> None:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=secured.kafka.address, security_protocol="SSL", ssl_context=anonymous
        )
        try:
            await admin.start()
        finally:
            await admin.close()

    with pytest.raises(KafkaConnectionError):
        asyncio.run(bootstrap())
