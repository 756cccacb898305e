"""`kafka-cluster` SASL and TLS settings, mapped onto aiokafka's keyword arguments, with the secrets
kept out of reprs, descriptions and errors.

SASL is checked here against the client, not end to end: the Tansu build the tests use offers
SCRAM only with `--authentication`, where no user can be created (`tansu user create` itself is
refused, and its storage keeps no credentials across a restart). TLS is tested end to end in
tests/integration/test_trigger_kafka_tls.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from aiokafka import AIOKafkaConsumer

from nubis.auth.ca import CertificateAuthority
from nubis.errors import SpecError
from nubis.processor.triggers.kafka import KafkaBroker, KafkaTrigger
from nubis.processor.triggers.kafka_config import parse
from nubis.processor.triggers.kafka_oauth import ClientCredentials
from nubis.processor.triggers.kafka_security import OAuth, unflatten
from nubis.processor.triggers.kafka_session import client_kwargs
from nubis.spec import Trigger

BASE = {"brokers": ["k:1"], "topics": ["a"], "consumerGroup": "g"}
PASSWORD = "correct horse battery staple"


def config(annotations: dict[str, str] | None = None, **attributes: Any) -> Any:
    spec = Trigger.model_validate({"kind": "kafka-cluster", "attributes": {**BASE, **attributes}})
    return parse(spec, "t", "f", annotations or {})


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.open(tmp_path_factory.mktemp("ca"))


@pytest.mark.parametrize(
    ("mechanism", "expected"),
    [(None, "PLAIN"), ("plain", "PLAIN"), ("SCRAM-SHA-256", "SCRAM-SHA-256"), ("scram-sha-512", "SCRAM-SHA-512")],
)
def test_sasl_maps_onto_aiokafka(mechanism: str | None, expected: str) -> None:
    sasl = {"enable": True, "user": "billing", "password": PASSWORD, **({"mechanism": mechanism} if mechanism else {})}
    kwargs = client_kwargs(config(sasl=sasl))
    assert kwargs == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": expected,
        "sasl_plain_username": "billing",
        "sasl_plain_password": PASSWORD,
    }


def test_sasl_disabled_or_absent_is_plaintext() -> None:
    assert config(sasl={"enable": False, "user": "u"}).security.protocol == "PLAINTEXT"
    assert config().security.sasl is None


def test_the_password_stays_out_of_reprs_descriptions_and_errors() -> None:
    parsed = config(sasl={"enable": True, "user": "billing", "password": PASSWORD, "mechanism": "SCRAM-SHA-512"})
    assert PASSWORD not in repr(parsed) and PASSWORD not in parsed.where
    trigger = KafkaTrigger(
        kind="kafka-cluster", name="t", function="f", broker=KafkaBroker(parsed), policy=None, failed_store=None
    )  # type: ignore[arg-type]
    assert trigger.describe().endswith("over SASL_PLAINTEXT SCRAM-SHA-512") and PASSWORD not in trigger.describe()
    with pytest.raises(SpecError) as caught:
        config(sasl={"enable": True, "user": "billing", "password": 12345678})
    assert caught.value.field == "t.attributes.sasl.password" and "12345678" not in str(caught.value)
    with pytest.raises(SpecError) as caught:
        config(sasl={"enable": True, "mechanism": "OAUTHBEARER", "oauth": {"clientID": "c", "clientSecret": 9}})
    assert "9" not in str(caught.value).replace("sasl.oauth", "")


def test_sasl_from_annotations() -> None:
    annotations = {
        "nuclio.io/kafka-sasl-enabled": "true",
        "nuclio.io/kafka-sasl-user": "billing",
        "nuclio.io/kafka-sasl-password": PASSWORD,
        "nuclio.io/kafka-sasl-mechanism": "SCRAM-SHA-256",
    }
    sasl = config(annotations).security.sasl
    assert sasl is not None and (sasl.mechanism, sasl.user, sasl.password) == ("SCRAM-SHA-256", "billing", PASSWORD)
    with pytest.raises(SpecError) as caught:
        config({"nuclio.io/kafka-sasl-enabled": "true", "nuclio.io/kafka-sasl-user": "billing"})
    assert caught.value.field == "t.attributes.sasl.password"
    with pytest.raises(SpecError) as caught:
        config({"nuclio.io/kafka-sasl-enabled": "true", "nuclio.io/kafka-sasl-mechanism": "GSSAPI"})
    assert caught.value.field == "metadata.annotations.nuclio.io/kafka-sasl-mechanism" and "Kerberos" in str(
        caught.value
    )


def test_the_sasl_handshake_cannot_be_skipped() -> None:
    with pytest.raises(SpecError) as caught:
        config(sasl={"enable": True, "user": "u", "password": "p", "handshake": False})
    assert caught.value.field == "t.attributes.sasl.handshake"
    assert config(sasl={"enable": True, "user": "u", "password": "p", "handshake": True}).security.sasl is not None


def test_oauthbearer_gets_a_token_provider() -> None:
    oauth = {"clientID": "nubis", "clientSecret": PASSWORD, "tokenURL": "https://idp.example/token", "scopes": ["k"]}
    parsed = config(sasl={"enable": True, "mechanism": "OAUTHBEARER", "oauth": oauth})
    kwargs = client_kwargs(parsed)
    assert kwargs["sasl_mechanism"] == "OAUTHBEARER"
    assert isinstance(kwargs["sasl_oauth_token_provider"], ClientCredentials)
    assert "sasl_plain_password" not in kwargs and PASSWORD not in repr(parsed)
    with pytest.raises(SpecError) as caught:
        config(sasl={"enable": True, "mechanism": "OAUTHBEARER", "oauth": {**oauth, "tokenURL": ""}})
    assert caught.value.field == "t.attributes.sasl.oauth.tokenURL"


def test_tls_with_a_ca_client_certificate_and_minimum_version(authority: CertificateAuthority) -> None:
    issued = authority.issue("kafka-client")
    parsed = config(
        tls={"enable": True, "minimumVersion": "1.3"},
        caCert=authority.certificate_pem,
        accessCertificate=issued.certificate,
        accessKey=issued.key,
        sasl={"enable": True, "user": "u", "password": "p"},
    )
    kwargs = client_kwargs(parsed)
    context = kwargs["ssl_context"]
    assert kwargs["security_protocol"] == "SASL_SSL" and isinstance(context, ssl.SSLContext)
    assert context.minimum_version is ssl.TLSVersion.TLSv1_3 and context.verify_mode is ssl.CERT_REQUIRED
    assert issued.key not in repr(parsed)
    # caCert alone turns TLS on (Nuclio's rule); insecureSkipVerify stops the checks
    assert config(caCert=authority.certificate_pem).security.protocol == "SSL"
    insecure = client_kwargs(config(tls={"enable": True, "insecureSkipVerify": True}))["ssl_context"]
    assert insecure.verify_mode is ssl.CERT_NONE and not insecure.check_hostname


def test_flattened_pems_as_nuclio_accepts_them(authority: CertificateAuthority) -> None:
    pem = authority.certificate_pem
    assert unflatten(pem.replace("\n", "@")) == pem
    assert unflatten(pem.strip().replace("\n", " ")) == pem.strip()
    annotated = config({"nuclio.io/kafka-ca-cert": pem.replace("\n", "@")})
    assert annotated.security.tls is not None and annotated.security.tls.ca_cert == pem


@pytest.mark.parametrize(
    ("attributes", "field"),
    [
        ({"caCert": "not a certificate"}, "t.attributes.caCert"),
        ({"caCert": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}, "t.attributes.caCert"),
        ({"tls": {"enable": True, "minimumVersion": "1.1"}}, "t.attributes.tls.minimumVersion"),
        ({"tls": {"enable": "yes"}}, "t.attributes.tls.enable"),
        ({"tls": "on"}, "t.attributes.tls"),
        ({"accessKey": "-----BEGIN PRIVATE KEY-----\nAA\n-----END PRIVATE KEY-----\n"}, "t.attributes.accessKey"),
        ({"sasl": {"enable": True, "mechanism": "KERBEROS"}}, "t.attributes.sasl.mechanism"),
    ],
)
def test_bad_security_attributes_name_their_field(attributes: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        config(**attributes)
    assert caught.value.field == field


def test_a_client_certificate_needs_its_key(authority: CertificateAuthority) -> None:
    issued = authority.issue("half")
    with pytest.raises(SpecError) as caught:
        config(caCert=authority.certificate_pem, accessCertificate=issued.certificate)
    assert caught.value.field == "t.attributes.accessKey" and issued.key not in str(caught.value)


def test_aiokafka_accepts_every_setting(authority: CertificateAuthority) -> None:
    parsed = config(
        caCert=authority.certificate_pem,
        sasl={"enable": True, "user": "u", "password": "p", "mechanism": "SCRAM-SHA-512"},
        balanceStrategy="roundrobin",
        fetchMax=1 << 20,
    )

    async def construct() -> None:
        consumer = AIOKafkaConsumer(**KafkaBroker(parsed).consumer_kwargs(4))
        await consumer.stop()

    asyncio.run(construct())


class _TokenEndpoint(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        form = parse_qs(self.rfile.read(length).decode())
        self.requests.append({"form": form, "authorization": self.headers.get("Authorization")})
        body = json.dumps({"access_token": f"token-{len(self.requests)}", "expires_in": 3600}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def token_endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TokenEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/token"
    finally:
        server.shutdown()
        server.server_close()


def test_the_oauth_provider_asks_once_with_basic_auth_and_scopes(token_endpoint: str, tmp_path: Path) -> None:
    _TokenEndpoint.requests.clear()
    provider = ClientCredentials(OAuth("nubis", PASSWORD, token_endpoint, ("kafka", "read")))

    async def twice() -> list[str]:
        return [await provider.token(), await provider.token()]

    assert asyncio.run(twice()) == ["token-1", "token-1"], "the token is reused until it nearly expires"
    (request,) = _TokenEndpoint.requests
    assert request["form"] == {"grant_type": ["client_credentials"], "scope": ["kafka read"]}
    assert request["authorization"] == "Basic " + base64.b64encode(f"nubis:{PASSWORD}".encode()).decode()
