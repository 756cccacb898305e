"""How a `kafka-cluster` trigger authenticates and encrypts: Nuclio's `sasl`, `tls`, `caCert`,
`accessKey` and `accessCertificate` attributes (and their `nuclio.io/kafka-*` annotations), parsed
without the Kafka client and mapped onto aiokafka's `security_protocol`, `sasl_*` and
`ssl_context`:

```yaml
attributes:
  sasl:
    enable: true
    mechanism: SCRAM-SHA-512        # PLAIN (default), SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER
    user: billing
    password: ...                   # never logged, never in an error or the function's status
    oauth: {clientID: ..., clientSecret: ..., tokenURL: https://idp/token, scopes: [kafka]}
  tls:
    enable: true                    # also on whenever caCert is set (Nuclio's rule)
    insecureSkipVerify: false
    minimumVersion: "1.2"           # or "1.3"
  caCert: |                         # PEM; Nuclio's flattened forms ("@" or spaces for newlines) too
    -----BEGIN CERTIFICATE-----
  accessCertificate: ...            # client certificate (PEM), with accessKey (its private key)
```

The certificates are loaded here, at deploy, so a broken PEM is refused with the attribute named.
Secrets are dataclass fields with `repr=False` and never part of an error's `found`.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from dataclasses import dataclass, field
from typing import Any

from nubis.errors import SpecError
from nubis.processor.triggers.kafka_annotations import Sourced

#: Nuclio's names (sarama's SASLMechanism, case as users write it) -> aiokafka's
MECHANISMS = {
    "plain": "PLAIN",
    "scram-sha-256": "SCRAM-SHA-256",
    "scram-sha-512": "SCRAM-SHA-512",
    "oauthbearer": "OAUTHBEARER",
}
TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
#: what a flattened PEM's spaces must not split (Nuclio's unflattenCertificate)
_PEM_LABELS = tuple(
    f"{edge} {kind}"
    for kind in ("CERTIFICATE", "PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY")
    for edge in ("BEGIN", "END")
)
_HIDDEN = "(hidden)"


@dataclass(frozen=True)
class OAuth:
    client_id: str
    client_secret: str = field(repr=False)
    token_url: str
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class Sasl:
    mechanism: str
    user: str = ""
    password: str = field(default="", repr=False)
    oauth: OAuth | None = None


@dataclass(frozen=True)
class Tls:
    insecure_skip_verify: bool = False
    minimum_version: str = "1.2"
    ca_cert: str | None = None
    access_certificate: str | None = None
    access_key: str | None = field(default=None, repr=False)

    def context(self) -> ssl.SSLContext:
        """The client's SSLContext (certificates checked against `ca_cert`, else the system's)."""
        context = ssl.create_default_context(cadata=self.ca_cert) if self.ca_cert else ssl.create_default_context()
        context.minimum_version = TLS_VERSIONS[self.minimum_version]
        if self.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.access_certificate and self.access_key:
            _load_client_certificate(context, self.access_certificate, self.access_key)
        return context


@dataclass(frozen=True)
class Security:
    sasl: Sasl | None = None
    tls: Tls | None = None

    @property
    def protocol(self) -> str:
        """aiokafka's security_protocol."""
        if self.sasl is not None:
            return "SASL_SSL" if self.tls is not None else "SASL_PLAINTEXT"
        return "SSL" if self.tls is not None else "PLAINTEXT"

    def client_kwargs(self) -> dict[str, Any]:
        """aiokafka keyword arguments (an OAUTHBEARER token provider is the caller's to add)."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls is not None:
            kwargs["ssl_context"] = self.tls.context()
        if self.sasl is not None:
            kwargs["sasl_mechanism"] = self.sasl.mechanism
            if self.sasl.mechanism != "OAUTHBEARER":
                kwargs["sasl_plain_username"] = self.sasl.user
                kwargs["sasl_plain_password"] = self.sasl.password
        return kwargs

    def describe(self) -> str:
        """For logs and the trigger's description: the protocol and mechanism, no credential."""
        return self.protocol + (f" {self.sasl.mechanism}" if self.sasl is not None else "")


def parse_security(sourced: Sourced) -> Security:
    """`sasl`, `tls`, `caCert`, `accessKey`, `accessCertificate`; SpecError naming the field."""
    return Security(sasl=_sasl(sourced), tls=_tls(sourced))


def _sasl(sourced: Sourced) -> Sasl | None:
    sasl = sourced.get("sasl")
    if sasl in (None, {}):
        return None
    if not isinstance(sasl, dict):
        raise SpecError("sasl must be a mapping", field=sourced.field("sasl"), expected="{enable, user, password, ...}")
    if not _flag(sourced, "sasl", "enable"):
        return None
    if sasl.get("handshake") is not None and not _flag(sourced, "sasl", "handshake"):
        raise SpecError(
            "the SASL handshake cannot be turned off: aiokafka always sends it (Kafka 0.10 and later)",
            field=sourced.field("sasl", "handshake"),
            expected="true (or no handshake attribute)",
            found=sasl.get("handshake"),
        )
    named = str(sasl.get("mechanism") or "PLAIN")
    mechanism = MECHANISMS.get(named.strip().lower())
    if mechanism is None:
        raise SpecError(
            "unknown SASL mechanism" + (" (Kerberos is not supported)" if named.upper() == "GSSAPI" else ""),
            field=sourced.field("sasl", "mechanism"),
            expected="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER",
            found=named,
        )
    if mechanism == "OAUTHBEARER":
        return Sasl(mechanism, oauth=_oauth(sourced))
    user = _text(sourced, "sasl", "user")
    password = _text(sourced, "sasl", "password", secret=True)
    for name, value in (("user", user), ("password", password)):
        if not value:
            raise SpecError(
                f"SASL {mechanism} needs a {name}", field=sourced.field("sasl", name), expected=f"the {name}"
            )
    return Sasl(mechanism, user, password)


def _oauth(sourced: Sourced) -> OAuth:
    if not isinstance(sourced.get("sasl", "oauth"), dict):
        raise SpecError(
            "SASL OAUTHBEARER needs an oauth mapping",
            field=sourced.field("sasl", "oauth"),
            expected="{clientID, clientSecret, tokenURL, scopes}",
        )
    values = {
        name: _text(sourced, "sasl", "oauth", name, secret=name == "clientSecret")
        for name in ("clientID", "clientSecret", "tokenURL")
    }
    for name, value in values.items():
        if not value:
            raise SpecError(f"SASL OAUTHBEARER needs {name}", field=sourced.field("sasl", "oauth", name))
    if not values["tokenURL"].startswith(("http://", "https://")):
        raise SpecError(
            "tokenURL must be an http(s) URL",
            field=sourced.field("sasl", "oauth", "tokenURL"),
            expected="https://…/token",
            found=values["tokenURL"],
        )
    scopes = sourced.get("sasl", "oauth", "scopes") or []
    if isinstance(scopes, str):
        scopes = [scopes]
    if not isinstance(scopes, list) or not all(isinstance(scope, str) for scope in scopes):
        raise SpecError(
            "scopes must be a list of strings", field=sourced.field("sasl", "oauth", "scopes"), found=repr(scopes)
        )
    return OAuth(values["clientID"], values["clientSecret"], values["tokenURL"], tuple(scopes))


def _tls(sourced: Sourced) -> Tls | None:
    tls = sourced.get("tls")
    if tls is not None and not isinstance(tls, dict):
        raise SpecError("tls must be a mapping", field=sourced.field("tls"), expected="{enable, insecureSkipVerify}")
    ca_cert = _pem(sourced, "caCert")
    key, certificate = _pem(sourced, "accessKey"), _pem(sourced, "accessCertificate")
    if not ca_cert and not (tls and _flag(sourced, "tls", "enable")):
        if key or certificate:
            raise SpecError(
                "a client certificate needs TLS",
                field=sourced.field("accessCertificate" if certificate else "accessKey"),
                expected="tls.enable: true or a caCert",
            )
        return None
    if bool(key) != bool(certificate):
        missing = "accessKey" if certificate else "accessCertificate"
        raise SpecError(
            "a client certificate needs both accessCertificate and accessKey",
            field=sourced.field(missing),
            expected="the PEM " + ("private key" if missing == "accessKey" else "certificate"),
        )
    version = str(sourced.get("tls", "minimumVersion") or "1.2")
    if version not in TLS_VERSIONS:
        raise SpecError(
            "unknown TLS version",
            field=sourced.field("tls", "minimumVersion"),
            expected='"1.2" or "1.3"',
            found=version,
        )
    settings = Tls(_flag(sourced, "tls", "insecureSkipVerify"), version, ca_cert, certificate, key)
    try:
        settings.context()
    except (ssl.SSLError, ValueError) as exc:
        name = "caCert" if ca_cert and _bad_ca(ca_cert) else "accessCertificate"
        raise SpecError(
            "the certificate does not load", field=sourced.field(name), expected="PEM", found=type(exc).__name__
        ) from None
    return settings


def _bad_ca(pem: str) -> bool:
    try:
        ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError):
        return True
    return False


def _load_client_certificate(context: ssl.SSLContext, certificate: str, key: str) -> None:
    """`load_cert_chain` reads files only: the PEMs go to a private directory for the moment it takes."""
    with tempfile.TemporaryDirectory(prefix="nubis-kafka-") as directory:
        cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        for path, text in ((cert_path, certificate), (key_path, key)):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(text)
        context.load_cert_chain(cert_path, key_path)


def _pem(sourced: Sourced, name: str) -> str | None:
    value = sourced.get(name)
    if value in (None, ""):
        return None
    if not isinstance(value, str) or "-----BEGIN" not in value:
        raise SpecError(
            f"{name} must be a PEM text",
            field=sourced.field(name),
            expected="-----BEGIN …----- (newlines, or Nuclio's '@' or spaces in their place)",
            found=_HIDDEN if name == "accessKey" else type(value).__name__,
        )
    return unflatten(value)


def unflatten(pem: str) -> str:
    """A PEM given on one line (an annotation): Nuclio's forms, "@" or spaces for the newlines."""
    if "\n" in pem:
        return pem
    if "@" in pem:
        return pem.replace("@", "\n")
    for label in _PEM_LABELS:
        pem = pem.replace(label, label.replace(" ", "-"))
    pem = pem.replace(" ", "\n")
    for label in _PEM_LABELS:
        pem = pem.replace(label.replace(" ", "-"), label)
    return pem


def _flag(sourced: Sourced, *path: str) -> bool:
    value = sourced.get(*path)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise SpecError("must be true or false", field=sourced.field(*path), expected="true or false", found=value)
    return value


def _text(sourced: Sourced, *path: str, secret: bool = False) -> str:
    value = sourced.get(*path)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SpecError(
            "must be a string",
            field=sourced.field(*path),
            expected="a string",
            found=_HIDDEN if secret else repr(value),
        )
    return value
