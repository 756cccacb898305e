"""TLS contexts for the mTLS tunnel: the listener's (client certificates of the platform CA only,
revoked serials refused) and a workstation's.

Revocation is checked by OpenSSL itself against the CA's CRL (`VERIFY_CRL_CHECK_LEAF`), not by a
check of the serial after the handshake: Python's `ssl` has no per-certificate verify callback,
so a check after `getpeercert()` would let a revoked client complete the handshake and then be cut
off, where the CRL refuses it inside the handshake with the standard `certificate revoked` alert
that curl, openssl and stunnel report. The same `ca.crl` serves any other TLS terminator.

A loaded context keeps the CRL it was built with (OpenSSL caches it in the context's store), so
`ServerContexts` builds a new one whenever `ca.crl` is replaced: a listener asks it for the current
context for each connection it accepts (`loop.start_tls(..., server_side=True)`), and a revocation
takes effect on the next handshake without a restart.
"""

from __future__ import annotations

import os
import ssl
import threading
from pathlib import Path


def server_context(ca_cert: Path, ca_crl: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """A server context that requires a client certificate signed by the CA in `ca_cert` and not
    revoked by `ca_crl` (a missing CRL refuses every client: OpenSSL cannot check it)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=ca_cert)
    context.load_verify_locations(cafile=ca_crl)  # a PEM CRL loads as a "CA file" entry
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF | ssl.VERIFY_X509_STRICT
    return context


def client_context(ca_cert: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """A workstation's context: trusts only the platform CA, presents the issued certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=ca_cert)
    context.load_cert_chain(cert, key)
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


class ServerContexts:
    """The current `server_context` for the files in the CA directory, rebuilt when the CRL changes.

    The CRL is replaced by a rename (`ca.write_file`), so its inode changes on every revocation even
    within one tick of the clock; one `stat` a connection is all a check costs.
    """

    def __init__(self, ca_dir: Path, cert: Path, key: Path) -> None:
        self._files = (ca_dir / "ca.crt", ca_dir / "ca.crl", cert, key)
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._context: ssl.SSLContext | None = None

    def current(self) -> ssl.SSLContext:
        stat = os.stat(self._files[1])
        seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if self._context is None or seen != self._seen:
                self._context = server_context(*self._files)
                self._seen = seen
            return self._context
