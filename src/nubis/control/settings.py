"""Settings of `nubis server`, resolved once from the command line and `NUBIS_*` variables."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path

from nubis.settings import default_data_dir

#: Ports handed to functions (one per function, stable across restarts).
DEFAULT_FUNCTION_PORTS = (31000, 31999)


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
