"""What a gateway process is configured with (`nubis gateway`, or `nubis server` for its gateway)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nubis.processor.triggers.http_limits import HttpLimits
from nubis.settings import user_data_dir

DEFAULT_GATEWAY_PORT = 8080
#: seconds an upstream has to begin its answer once it has the whole request (504 after that)
DEFAULT_UPSTREAM_TIMEOUT = 60.0


@dataclass(frozen=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_GATEWAY_PORT
    data_dir: Path = field(default_factory=user_data_dir)
    #: the state database (default: SQLite nubis.db in the data dir, as the server's)
    state_url: str | None = None
    upstream_timeout: float = DEFAULT_UPSTREAM_TIMEOUT
    #: seconds between two looks at the store for route changes
    refresh_interval: float = 0.5
    limits: HttpLimits = field(default_factory=HttpLimits)
    #: an already-listening socket inherited from `nubis server` (which binds the port), else None
    listen_fd: int | None = None

    @property
    def state_file(self) -> Path:
        """Where the running gateway says its pid and port (the server adopts it from there)."""
        return gateway_state_file(self.data_dir)


def gateway_state_file(data_dir: Path) -> Path:
    return data_dir / "gateway" / "gateway.json"
