"""The platform's own small certificate authority, for the gateway's mTLS tunnel.

Everything lives in one directory of the data dir (`<data>/ca/`, 0700):

- `ca.key` (0600) and `ca.crt`: an EC P-256 key and a self-signed CA certificate, made once at
  first use and never overwritten (a key without its certificate, left by a crash, gets one again);
- `ca.crl`: the revocation list the tunnel listener loads, signed again on every revocation and
  written from the start, because OpenSSL's CRL check refuses every peer when no CRL is loaded;
- `issued.json`: the record of issued certificates (name, serial, validity, revoked), a file
  rather than a store table so that it needs no migration; written atomically (a temporary file
  renamed over it), every read-modify-write under an flock of `lock`; records of certificates
  expired over FORGET_AFTER_DAYS ago are dropped as new ones are issued;
- `server.crt`/`server.key` (0600): the tunnel listener's own certificate (`server_certificate`).

P-256 is what curl, openssl, stunnel, ghostunnel and every TLS library accept. The client's
private key is made here and handed back once: only its certificate's record is kept.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nubis.auth.cert_rules import DEFAULT_DAYS, MAX_DAYS, NAME_PATTERN, write_file
from nubis.errors import BadRequest, NotFound, PermanentError

CA_DAYS = 3650
#: Accepted before the moment of issue: a workstation's clock a little behind the server's.
CLOCK_SKEW = datetime.timedelta(minutes=5)
SERVER_NAME = "nubis tunnel"
#: days after its expiry a certificate's record is forgotten (`_prune`, on the next issue)
FORGET_AFTER_DAYS = 30


class CertificateAuthorityError(PermanentError):
    """The CA's files cannot be read or written; the message names the file."""


@dataclass(frozen=True)
class CertRecord:
    """What is kept about an issued certificate (never its key). Times are ISO 8601, UTC."""

    name: str
    serial: str
    notBefore: str  # the API's JSON keys, as written
    notAfter: str
    revoked: bool = False
    revokedAt: str | None = None


@dataclass(frozen=True)
class Issued:
    """A new certificate with its private key: the key exists only here and in the answer."""

    record: CertRecord
    certificate: str
    key: str


def format_serial(serial: int) -> str:
    """Upper-case hex of whole bytes, as `openssl x509 -serial` and `openssl crl -text` print it."""
    digits = f"{serial:X}"
    return digits.zfill(len(digits) + len(digits) % 2)


def parse_serial(text: str) -> int:
    cleaned = text.strip().replace(":", "")
    try:
        value = int(cleaned, 16)
    except ValueError:
        raise BadRequest(f"a serial number is hexadecimal (as `nubis certs list` shows it), found {text!r}") from None
    if value <= 0:
        raise BadRequest(f"a serial number is positive, found {text!r}")
    return value


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


class CertificateAuthority:
    """The CA in `directory`; `open` creates it there the first time."""

    def __init__(self, directory: Path, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate) -> None:
        self.directory = directory
        self._key = key
        self.certificate = certificate

    @property
    def cert_path(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def crl_path(self) -> Path:
        return self.directory / "ca.crl"

    @property
    def certificate_pem(self) -> str:
        return _pem(self.certificate)

    @classmethod
    def open(cls, directory: Path) -> CertificateAuthority:
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            with _locked(directory):
                return cls._load_or_create(directory)
        except OSError as exc:
            raise CertificateAuthorityError(f"cannot open the CA in {directory}: {exc.strerror or exc}") from None

    @classmethod
    def _load_or_create(cls, directory: Path) -> CertificateAuthority:
        key_path, cert_path = directory / "ca.key", directory / "ca.crt"
        if key_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise CertificateAuthorityError(f"{key_path} is not an EC private key")
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            write_file(key_path, _key_pem(key), 0o600)
        if cert_path.exists():
            certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if certificate.public_key() != key.public_key():
                raise CertificateAuthorityError(f"{cert_path} does not belong to {key_path}")
        else:
            certificate = _ca_certificate(key)
            write_file(cert_path, _pem(certificate), 0o644)
        authority = cls(directory, key, certificate)
        if not authority.crl_path.exists():
            authority._write_crl(authority._read_records())
        return authority

    def issue(self, name: str, days: int = DEFAULT_DAYS) -> Issued:
        """A client certificate for `name` (its CN), valid `days` days (1 to MAX_DAYS)."""
        if not NAME_PATTERN.fullmatch(name):
            raise BadRequest(
                f"a certificate name is 1-64 letters, digits or . _ @ - (starting with a letter or digit), "
                f"found {name!r}"
            )
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
            raise BadRequest(f"days must be a whole number from 1 to {MAX_DAYS}, found {days!r}")
        key, certificate = self._new_leaf(name, days, ExtendedKeyUsageOID.CLIENT_AUTH)
        record = CertRecord(
            name=name,
            serial=format_serial(certificate.serial_number),
            notBefore=_iso(certificate.not_valid_before_utc),
            notAfter=_iso(certificate.not_valid_after_utc),
        )
        with self._records() as records:
            pruned = _prune(records)
            records.append(record)
            if pruned:
                self._write_crl(records)
        return Issued(record, _pem(certificate), _key_pem(key))

    def records(self) -> list[CertRecord]:
        with _locked(self.directory):
            return self._read_records()

    def revoke(self, serial: str) -> CertRecord:
        """Mark the certificate revoked and sign a new CRL; revoking it again changes nothing."""
        wanted = format_serial(parse_serial(serial))
        with self._records() as records:
            for index, record in enumerate(records):
                if record.serial == wanted:
                    if not record.revoked:
                        record = CertRecord(**{**asdict(record), "revoked": True, "revokedAt": _now_iso()})
                        records[index] = record
                        self._write_crl(records)
                    return record
        raise NotFound(f"no certificate with serial {wanted} was issued here (see `nubis certs list`)")

    def server_certificate(self, hosts: list[str], days: int = MAX_DAYS) -> tuple[Path, Path]:
        """`server.crt`/`server.key` for the tunnel listener, naming `hosts` (names or addresses);
        made again when missing, naming other hosts, or within a tenth of its life of expiring."""
        cert_path, key_path = self.directory / "server.crt", self.directory / "server.key"
        wanted = sorted(set(hosts))
        with _locked(self.directory):
            if cert_path.exists() and key_path.exists():
                current = x509.load_pem_x509_certificate(cert_path.read_bytes())
                named = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                names = sorted({str(n.value) for n in named})
                left = current.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
                if names == wanted and left > datetime.timedelta(days=days) / 10 and self._signed_this(current):
                    return cert_path, key_path
            names_extension = x509.SubjectAlternativeName([_general_name(host) for host in wanted])
            key, certificate = self._new_leaf(SERVER_NAME, days, ExtendedKeyUsageOID.SERVER_AUTH, names_extension)
            write_file(key_path, _key_pem(key), 0o600)
            write_file(cert_path, _pem(certificate), 0o644)
        return cert_path, key_path

    def _signed_this(self, certificate: x509.Certificate) -> bool:
        try:
            certificate.verify_directly_issued_by(self.certificate)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def _new_leaf(
        self, common_name: str, days: int, usage: x509.ObjectIdentifier, *extra: x509.ExtensionType
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A new P-256 key and its certificate, valid from a little before now for `days` days."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        not_after = now + datetime.timedelta(days=days)
        return key, self._sign(name, key.public_key(), now - CLOCK_SKEW, not_after, usage, *extra)

    def _sign(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        not_before: datetime.datetime,
        not_after: datetime.datetime,
        usage: x509.ObjectIdentifier,
        *extra: x509.ExtensionType,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(min(not_after, self.certificate.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        for extension in extra:
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(self._key, hashes.SHA256())

    def _write_crl(self, records: list[CertRecord]) -> None:
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now)
            .next_update(self.certificate.not_valid_after_utc)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
        )
        for record in records:
            if record.revoked:
                revoked_at = datetime.datetime.fromisoformat(record.revokedAt or _now_iso())
                entry = x509.RevokedCertificateBuilder().serial_number(int(record.serial, 16))
                builder = builder.add_revoked_certificate(entry.revocation_date(revoked_at).build())
        crl = builder.sign(self._key, hashes.SHA256())
        write_file(self.crl_path, crl.public_bytes(serialization.Encoding.PEM).decode(), 0o644)

    @contextlib.contextmanager
    def _records(self) -> Iterator[list[CertRecord]]:
        """The records, for changing under the lock; written back when the block ends without error."""
        with _locked(self.directory):
            records = self._read_records()
            yield records
            content = json.dumps({"certificates": [asdict(r) for r in records]}, indent=2) + "\n"
            write_file(self.directory / "issued.json", content, 0o600)

    def _read_records(self) -> list[CertRecord]:
        path = self.directory / "issued.json"
        try:
            data = json.loads(path.read_text())
            return [CertRecord(**item) for item in data["certificates"]]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CertificateAuthorityError(f"cannot read the issued certificates' record {path}: {exc}") from None


def _prune(records: list[CertRecord]) -> bool:
    """Forget certificates that expired over FORGET_AFTER_DAYS ago (every `nubis tunnel` issues a
    short-lived one, so the record would only grow): no TLS client can use them any more, and an
    expired certificate may leave the CRL (RFC 5280 §3.3). True when a revoked one went, so the
    CRL is signed again."""
    horizon = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=FORGET_AFTER_DAYS)
    kept = [r for r in records if datetime.datetime.fromisoformat(r.notAfter) >= horizon]
    revoked_gone = any(r.revoked for r in records if r not in kept)
    records[:] = kept
    return revoked_gone


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialises the CA's read-modify-writes between threads and processes (an flock, released on exit)."""
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _now_iso() -> str:
    return _iso(datetime.datetime.now(datetime.UTC))


def _key_usage(*, digital_signature: bool = False, signing: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signing,
        crl_sign=signing,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Nubis platform CA")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(digital_signature=True, signing=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
