"""The platform CA: its files, issued certificates, and the tunnel's TLS contexts in real handshakes."""

from __future__ import annotations

import datetime
import json
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nubis.auth.ca import CertificateAuthority, Issued
from nubis.auth.cert_rules import DEFAULT_DAYS, MAX_DAYS
from nubis.auth.tls import ServerContexts, client_context, server_context
from nubis.errors import BadRequest, NotFound

HOSTS = ["127.0.0.1", "localhost"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def saved(issued: Issued, ca: CertificateAuthority, directory: Path) -> tuple[Path, Path, Path]:
    """The files `nubis certs issue` writes, for a client context."""
    directory.mkdir(exist_ok=True)
    cert, key, ca_file = directory / "tls.crt", directory / "tls.key", directory / "ca.crt"
    cert.write_text(issued.certificate)
    key.write_text(issued.key)
    ca_file.write_text(ca.certificate_pem)
    return ca_file, cert, key


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, host: str = "localhost") -> str:
    """A full TLS handshake between the two contexts through memory buffers; returns the client
    certificate's CN as the server saw it. Raises the server's `ssl.SSLError` when it refuses."""
    server_in, server_out, client_in, client_out = (ssl.MemoryBIO() for _ in range(4))
    server_side = server.wrap_bio(server_in, server_out, server_side=True)
    client_side = client.wrap_bio(client_in, client_out, server_hostname=host)
    done = {"server": False, "client": False}
    for _ in range(10):
        for name, side in (("client", client_side), ("server", server_side)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            server_in.write(client_out.read())
            client_in.write(server_out.read())
        if all(done.values()):
            peer = server_side.getpeercert()
            assert peer is not None
            return dict(item[0] for item in peer["subject"])["commonName"]
    raise AssertionError("the handshake did not finish")


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.open(tmp_path / "data" / "ca")


@pytest.fixture
def contexts(ca: CertificateAuthority) -> ServerContexts:
    cert, key = ca.server_certificate(HOSTS)
    return ServerContexts(ca.directory, cert, key)


def test_the_ca_is_made_once_with_private_modes_and_never_overwritten(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    first = CertificateAuthority.open(directory)
    assert mode(directory) == 0o700
    assert mode(directory / "ca.key") == 0o600
    assert mode(directory / "ca.crt") == 0o644
    assert (directory / "ca.crl").exists()
    key, cert = (directory / "ca.key").read_bytes(), (directory / "ca.crt").read_bytes()
    again = CertificateAuthority.open(directory)
    assert again.certificate == first.certificate
    assert ((directory / "ca.key").read_bytes(), (directory / "ca.crt").read_bytes()) == (key, cert)
    basic = first.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca


def test_a_key_left_without_its_certificate_gets_one_for_that_key(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    key = CertificateAuthority.open(directory).certificate.public_key()
    (directory / "ca.crt").unlink()
    assert CertificateAuthority.open(directory).certificate.public_key() == key


def test_an_issued_certificate_chains_to_the_ca_and_is_recorded_without_its_key(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    issued = ca.issue("alice", days=7)
    certificate = x509.load_pem_x509_certificate(issued.certificate.encode())
    certificate.verify_directly_issued_by(ca.certificate)
    key = serialization.load_pem_private_key(issued.key.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert certificate.public_key() == key.public_key()
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    lifetime = certificate.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=6, hours=23) < lifetime <= datetime.timedelta(days=7)
    assert int(issued.record.serial, 16) == certificate.serial_number
    assert len(issued.record.serial) % 2 == 0 and issued.record.serial == issued.record.serial.upper()
    second = ca.issue("alice").record
    assert second.serial != issued.record.serial
    records = CertificateAuthority.open(ca.directory).records()
    assert records == [issued.record, second]
    assert mode(ca.directory / "issued.json") == 0o600
    assert issued.key.split("\n")[1] not in (ca.directory / "issued.json").read_text()


def test_the_default_lifetime_and_the_bounds_of_days_and_names(ca: CertificateAuthority) -> None:
    issued = ca.issue("bob")
    not_after = datetime.datetime.fromisoformat(issued.record.notAfter)
    assert (not_after - datetime.datetime.now(datetime.UTC)).days == DEFAULT_DAYS - 1
    ca.issue("bob", days=MAX_DAYS)
    for days in (0, -1, MAX_DAYS + 1, True, "3", 1.5):
        with pytest.raises(BadRequest, match="days must be"):
            ca.issue("bob", days=days)  # type: ignore[arg-type]
    for name in ("", "-x", "a b", "x" * 65, "é", "a\n"):
        with pytest.raises(BadRequest, match="certificate name"):
            ca.issue(name)


def test_the_server_context_accepts_the_cas_clients_only(
    ca: CertificateAuthority, contexts: ServerContexts, tmp_path: Path
) -> None:
    mine = client_context(*saved(ca.issue("alice"), ca, tmp_path / "mine"))
    assert handshake(contexts.current(), mine) == "alice"
    assert handshake(contexts.current(), mine, host="127.0.0.1") == "alice"
    other_ca = CertificateAuthority.open(tmp_path / "other")
    stranger = saved(other_ca.issue("mallory"), other_ca, tmp_path / "stranger")
    # the stranger trusts our CA for the server, but presents the other CA's certificate
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer certificate"):
        handshake(contexts.current(), client_context(ca.cert_path, *stranger[1:]))
    no_certificate = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    no_certificate.load_verify_locations(cafile=ca.cert_path)
    with pytest.raises(ssl.SSLError, match="PEER_DID_NOT_RETURN_A_CERTIFICATE"):
        handshake(contexts.current(), no_certificate)


def test_a_revoked_certificate_is_refused_on_the_next_handshake(
    ca: CertificateAuthority, contexts: ServerContexts, tmp_path: Path
) -> None:
    alice = client_context(*saved(ca.issue("alice"), ca, tmp_path / "alice"))
    bob = ca.issue("bob")
    bob_context = client_context(*saved(bob, ca, tmp_path / "bob"))
    before = contexts.current()
    assert handshake(before, bob_context) == "bob"
    revoked = ca.revoke(bob.record.serial.lower())
    assert revoked.revoked and revoked.revokedAt
    assert ca.revoke(bob.record.serial) == revoked  # again: the same record, the same CRL
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.is_signature_valid(ca.certificate.public_key())
    assert crl.get_revoked_certificate_by_serial_number(int(bob.record.serial, 16)) is not None
    assert contexts.current() is not before
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate revoked"):
        handshake(contexts.current(), bob_context)
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate revoked"):
        handshake(server_context(ca.cert_path, ca.crl_path, *ca.server_certificate(HOSTS)), bob_context)
    assert handshake(contexts.current(), alice) == "alice"
    assert contexts.current() is contexts.current()  # no change to the CRL, no new context
    assert {r.serial: r.revoked for r in ca.records()} == {r.serial: r.name == "bob" for r in ca.records()}


def test_revoking_an_unknown_or_malformed_serial_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(NotFound, match="no certificate with serial 0ABC "):
        ca.revoke("abc")
    with pytest.raises(BadRequest, match="hexadecimal"):
        ca.revoke("not-hex")
    with pytest.raises(BadRequest, match="positive"):
        ca.revoke("0")


def test_expired_and_server_certificates_are_refused_as_clients(
    ca: CertificateAuthority, contexts: ServerContexts, tmp_path: Path
) -> None:
    expired = ca.issue("late", days=1)
    key = serialization.load_pem_private_key(expired.key.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
    old = ca._sign(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "late")]),
        key.public_key(),
        past,
        past + datetime.timedelta(days=1),
        ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    late = Issued(expired.record, old.public_bytes(serialization.Encoding.PEM).decode(), expired.key)
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate has expired"):
        handshake(contexts.current(), client_context(*saved(late, ca, tmp_path / "late")))
    cert, key_path = ca.server_certificate(HOSTS)
    with pytest.raises(ssl.SSLCertVerificationError, match="unsuitable certificate purpose"):
        handshake(contexts.current(), client_context(ca.cert_path, cert, key_path))


def test_the_server_certificate_is_kept_until_its_hosts_change(ca: CertificateAuthority) -> None:
    cert, key = ca.server_certificate(HOSTS)
    assert mode(key) == 0o600
    first = cert.read_bytes()
    assert ca.server_certificate(list(reversed(HOSTS)))[0].read_bytes() == first
    assert ca.server_certificate([*HOSTS, "tunnel.example"])[0].read_bytes() != first
    names = x509.load_pem_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert names.value.get_values_for_type(x509.DNSName) == ["localhost", "tunnel.example"]


def test_records_of_long_expired_certificates_are_forgotten_and_leave_the_crl(ca: CertificateAuthority) -> None:
    old = ca.issue("old-one", 1)
    revoked = ca.issue("old-revoked", 1)
    ca.revoke(revoked.record.serial)
    fresh = ca.issue("fresh", 1)
    # as if they had expired two months ago: rewrite their notAfter in the record
    path = ca.directory / "issued.json"
    long_ago = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=60)).isoformat()
    data = json.loads(path.read_text())
    for item in data["certificates"]:
        if item["serial"] in (old.record.serial, revoked.record.serial):
            item["notAfter"] = long_ago
    path.write_text(json.dumps(data))
    ca.issue("next", 1)
    assert {record.name for record in ca.records()} == {"fresh", "next"}
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(revoked.record.serial, 16)) is None
    assert fresh.record in ca.records()
