"""Settings of `nubis server`, resolved once from the command line and `NUBIS_*` variables."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path

from nubis.processor.triggers.http_limits import HttpLimits
from nubis.settings import default_data_dir

#: Ports handed to functions (one per function, stable across restarts).
DEFAULT_FUNCTION_PORTS = (31000, 31999)
#: An uploaded archive may expand to at most this many bytes and entries (a gzip bomb is refused).
DEFAULT_ARCHIVE_MAX_BYTES = 1024**3
DEFAULT_ARCHIVE_MAX_MEMBERS = 100_000


def parse_port_range(text: str) -> tuple[int, int]:
    """`LOW-HIGH` (inclusive, 1024-65535, LOW <= HIGH) as a tuple; ValueError says what is wrong."""
    low, sep, high = text.strip().partition("-")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise ValueError(f"expected LOW-HIGH, e.g. 31000-31999, found {text!r}")
    first, last = int(low), int(high)
    if not 1024 <= first <= last <= 65535:
        raise ValueError(f"expected 1024 <= LOW <= HIGH <= 65535, found {text!r}")
    return first, last


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8070
    data_dir: Path = field(default_factory=default_data_dir)
    state_url: str | None = None
    insecure_local: bool = False
    namespace: str = "nuclio"
    function_port_range: tuple[int, int] = DEFAULT_FUNCTION_PORTS
    tls_cert: Path | None = None
    tls_key: Path | None = None
    advertised_address: str | None = None
    #: extra `Host` names the API answers to (`--allowed-host`; `*` turns the check off)
    allowed_hosts: tuple[str, ...] = ()
    #: directories `spec.build.path` may name besides the archive uploads (`--build-path-root`)
    build_path_roots: tuple[Path, ...] = ()
    #: most bytes an uploaded archive may expand to (`--archive-max-bytes`), and most entries
    archive_max_bytes: int = DEFAULT_ARCHIVE_MAX_BYTES
    archive_max_members: int = DEFAULT_ARCHIVE_MAX_MEMBERS
    #: bounds on what one API client may hold (`--max-connections`, `--header-read-timeout`, `--idle-timeout`)
    http_limits: HttpLimits = field(default_factory=HttpLimits)

    @property
    def sources_dir(self) -> Path:
        """Where uploaded archives are unpacked (always an allowed `spec.build.path` root)."""
        return self.data_dir / "sources"

    @property
    def code_roots(self) -> tuple[Path, ...]:
        """Every directory `spec.build.path` may point into."""
        return (self.sources_dir, *self.build_path_roots)

    @property
    def environments_dir(self) -> Path:
        return self.data_dir / "envs"

    @property
    def agent_dir(self) -> Path:
        return self.data_dir / "agent"

    @property
    def external_address(self) -> str:
        """Where clients reach functions: never empty (clients take `[0]`)."""
        if self.advertised_address:
            return self.advertised_address
        if self.host in ("0.0.0.0", "::", ""):
            return _primary_address()
        return self.host

    @staticmethod
    def port_is_free(port: int) -> bool:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True


def _primary_address() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"
