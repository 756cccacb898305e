"""What a gateway process is configured with (`nubis gateway`, or `nubis server` for its gateway)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nubis.processor.triggers.http_limits import DEFAULT_MAX_BODY_BYTES, HttpLimits
from nubis.settings import user_data_dir

DEFAULT_GATEWAY_PORT = 8080
#: seconds an upstream has to begin its answer once it has the whole request (504 after that)
DEFAULT_UPSTREAM_TIMEOUT = 60.0
#: seconds a request waits for a replica of a function none of whose replicas takes connections
DEFAULT_WAKE_TIMEOUT = 30.0


@dataclass(frozen=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_GATEWAY_PORT
    data_dir: Path = field(default_factory=user_data_dir)
    #: the state database (default: SQLite nubis.db in the data dir, as the server's)
    state_url: str | None = None
    upstream_timeout: float = DEFAULT_UPSTREAM_TIMEOUT
    #: seconds a request is held while no replica of its function takes connections (`hold.py`;
    #: 503 + Retry-After after that); 0: not held, 502 at once
    wake_timeout: float = DEFAULT_WAKE_TIMEOUT
    #: seconds between two looks at the store for route changes
    refresh_interval: float = 0.5
    limits: HttpLimits = field(default_factory=HttpLimits)
    #: requests a second per route and client address (token bucket, `gateway.limits`); None: no limit
    rate_limit: float | None = None
    #: the bucket's size: requests a client may make at once (None: one second's worth of rate_limit)
    rate_burst: int | None = None
    #: a request body over this is answered 413 and not forwarded further
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: an already-listening socket inherited from `nubis server` (which binds the port), else None
    listen_fd: int | None = None
    #: certificate and key files (PEM) that make the gateway's port HTTPS
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: the mTLS tunnel's port (client certificates of the platform CA only), None for no tunnel
    tunnel_port: int | None = None
    #: the tunnel's listening socket when `nubis server` bound it, as `listen_fd`
    tunnel_fd: int | None = None
    #: more names the tunnel's server certificate names (the server's advertised address)
    tunnel_hosts: tuple[str, ...] = ()
    #: the platform's OIDC issuer and the audience its tokens must name (`oauth2` API gateways);
    #: None: such gateways answer 503
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    #: seconds of clock skew allowed on a token's exp, nbf and iat
    oidc_leeway: int = 30

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert is not None else "http"

    @property
    def ca_dir(self) -> Path:
        """The platform CA's directory (`nubis.auth.ca`), shared with the server."""
        return self.data_dir / "ca"

    @property
    def state_file(self) -> Path:
        """Where the running gateway says its pid and port (the server adopts it from there)."""
        return gateway_state_file(self.data_dir)


def gateway_state_file(data_dir: Path) -> Path:
    return data_dir / "gateway" / "gateway.json"
