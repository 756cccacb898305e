"""The settings of `nubis server`: one model, read from the command line and `NUBIS_*` variables.

Each field is one setting, and its default, help and check are written here only. The CLI builds
its options from these fields (`nubis.cli.options.setting`), and `load_settings` resolves them with
pydantic-settings: a command-line value over the `NUBIS_<FIELD>` variable over the default. The
environment is read there and nowhere else, so a `ServerSettings(...)` built in code or a test is
exactly what it is given. pydantic-settings is imported only by `load_settings`: `nubis --help`
builds the options from this model without it.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_core import ErrorDetails

from nubis.auth.issuers import issuer_problem
from nubis.errors import PermanentError
from nubis.processor.triggers.http_limits import (
    DEFAULT_HEADER_READ_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    HttpLimits,
)
from nubis.settings import ENV_PREFIX, environments_dir, user_data_dir

#: Ports handed to functions (one per function, stable across restarts).
DEFAULT_FUNCTION_PORTS = (31000, 31999)
#: An uploaded archive may expand to at most this many bytes and entries (a gzip bomb is refused).
DEFAULT_ARCHIVE_MAX_BYTES = 1024**3
DEFAULT_ARCHIVE_MAX_MEMBERS = 100_000
#: command-line flags that are not `--` and the field's name (a repeatable option is singular)
OPTION_NAMES = {
    "advertised_address": "--advertise",
    "allowed_hosts": "--allowed-host",
    "build_path_roots": "--build-path-root",
    "vault_database_roles": "--vault-database-role",
}


def option_name(field: str) -> str:
    return OPTION_NAMES.get(field, "--" + field.replace("_", "-"))


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


class ServerSettings(BaseModel):
    """Everything `nubis server` is configured with; derived facts are properties."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    platform: str = Field(
        default="local",
        min_length=1,
        description="Where functions run: local (processes on this machine), or memory (nothing runs: deployments "
        "are only recorded, for trying the API and for tests).",
    )
    isolation: Literal["auto", "users", "landlock", "none"] = Field(
        default="auto",
        description="How the local platform keeps functions from the data dir and from each other: users "
        "(each tenant's replicas as its own Unix user, in a mount namespace; needs root), landlock (a Landlock "
        "sandbox), none, or auto (users as root, else landlock where the kernel has it, else none; "
        "docs/isolation.md).",
    )
    host: str = Field(default="127.0.0.1", description="Address of the API.")
    port: int = Field(default=8070, ge=1, le=65535, description="Port of the API.")
    data_dir: Path = Field(
        default_factory=user_data_dir,
        description="Data directory (default: $XDG_DATA_HOME/nubis, else ~/.local/share/nubis).",
    )
    state_url: str | None = Field(
        default=None,
        description="State database: postgresql+psycopg://USER@HOST/DB or sqlite+aiosqlite:///PATH "
        "(default: SQLite nubis.db in the data dir).",
    )
    insecure_local: bool = Field(default=False, description="Allow anonymous API access (loopback addresses only).")
    namespace: str = Field(default="nuclio", min_length=1, description="The namespace the API reports and stores.")
    function_ports: tuple[int, int] = Field(
        default=DEFAULT_FUNCTION_PORTS,
        description="Range of ports handed to functions, LOW-HIGH (one per function, kept across restarts).",
    )
    tls_cert: Path | None = Field(default=None, description="TLS certificate (PEM) for HTTPS.")
    tls_key: Path | None = Field(default=None, description="TLS private key (PEM) for HTTPS.")
    advertised_address: str | None = Field(
        default=None, description="Address clients reach functions at (default: the API's host)."
    )
    allowed_hosts: tuple[str, ...] = Field(
        default=(),
        description="Another Host name the API answers to, e.g. behind a proxy (repeatable; the variable takes "
        "names separated by commas or spaces; '*' turns the DNS-rebinding check off). Loopback names, --host "
        "and this machine's names are always allowed.",
    )
    build_path_roots: tuple[Path, ...] = Field(
        default=(),
        description="A directory spec.build.path may point into (repeatable; the variable takes directories "
        "separated by spaces; default: only uploaded archives).",
    )
    archive_max_bytes: int = Field(
        default=DEFAULT_ARCHIVE_MAX_BYTES, ge=1, description="Most bytes an uploaded archive may expand to."
    )
    archive_max_files: int = Field(
        default=DEFAULT_ARCHIVE_MAX_MEMBERS, ge=1, description="Most entries an uploaded archive may hold."
    )
    max_connections: int = Field(
        default=DEFAULT_MAX_CONNECTIONS, ge=1, description="Most open API connections; more are refused with 503."
    )
    header_read_timeout: float = Field(
        default=DEFAULT_HEADER_READ_TIMEOUT,
        ge=0.001,
        description="Seconds a client has to send a request head (408 after that).",
    )
    gateway_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port of the gateway, where every function answers at /<function> (default: 8080, or a free "
        "port when 8080 is taken; a port given and taken is an error).",
    )
    gateway_tls_cert: Path | None = Field(
        default=None, description="TLS certificate (PEM) for the gateway: functions answer over HTTPS."
    )
    gateway_tls_key: Path | None = Field(default=None, description="TLS private key (PEM) of --gateway-tls-cert.")
    tunnel_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port of the gateway's mTLS tunnel: the same routes, for clients with a certificate of the "
        "platform CA (`nubis certs issue`, `nubis tunnel`); none by default.",
    )
    # The gateway's limits: defaults as `nubis gateway`'s (the same constants), passed to the gateway it starts.
    gateway_rate_limit: float | None = Field(
        default=None,
        ge=0.001,
        description="Requests a second per route and client address through the gateway; more are answered 429 "
        "with Retry-After (default: no limit).",
    )
    gateway_rate_burst: int | None = Field(
        default=None,
        ge=1,
        description="Requests a client may make at once under --gateway-rate-limit (default: one second's worth).",
    )
    gateway_max_body_bytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES,
        ge=1,
        description="Largest request body the gateway forwards; a larger one is answered 413.",
    )
    gateway_max_connections: int = Field(
        default=DEFAULT_MAX_CONNECTIONS, ge=1, description="Most open gateway connections; more are answered 503."
    )
    gateway_wake_timeout: float = Field(
        default=30.0,
        ge=0,
        description="Seconds the gateway holds a request for a function none of whose replicas takes connections "
        "(being started or restarted); 503 with Retry-After after that; 0: not held, 502 at once.",
    )
    oidc_issuer: str | None = Field(
        default=None,
        description="The OIDC issuer users log in with (with --oidc-client-id) and whose bearer JWTs the API and "
        "API gateways with authenticationMode oauth2 accept, as the provider writes it (https; http only on "
        "loopback). Needs --oidc-client-id or --oidc-audience.",
    )
    oidc_audience: str | None = Field(
        default=None, min_length=1, description="The audience (aud) the issuer's tokens must name for this platform."
    )
    oidc_leeway: int = Field(
        default=30, ge=0, le=300, description="Seconds of clock skew allowed on a token's exp, nbf and iat."
    )
    # OIDC login (auth/oidc_login.py, docs/oidc-login.md)
    oidc_client_id: str | None = Field(
        default=None,
        min_length=1,
        description="The server's client at --oidc-issuer: users log in to the API and dashboard with it, and the "
        "API accepts the issuer's bearer JWTs whose aud names it (or --oidc-audience, or --oidc-cli-client-id).",
    )
    oidc_client_secret: SecretStr | None = Field(
        default=None,
        description="The secret of --oidc-client-id (none: a public client, PKCE only). Prefer the variable: a "
        "command-line value shows in ps.",
    )
    oidc_cli_client_id: str | None = Field(
        default=None,
        min_length=1,
        description="The public client (no secret) `nubis login --oidc` uses: device flow or loopback redirect with "
        "PKCE (default: --oidc-client-id, which must then allow public use).",
    )
    oidc_roles_claim: str = Field(
        default="groups",
        min_length=1,
        description="The claim holding a user's groups or roles (a dotted path is looked into nested claims).",
    )
    oidc_role_map: Path | None = Field(
        default=None,
        description="YAML or JSON file mapping claim values to tenant and project roles, and naming the platform "
        "admins (docs/oidc-login.md); without one OIDC users hold no role.",
    )
    oidc_scopes: str = Field(
        default="openid email profile",
        min_length=1,
        description="The scopes a login asks for (space-separated; add the one that makes the provider send the "
        "roles claim, e.g. groups).",
    )
    oidc_redirect_url: str | None = Field(
        default=None,
        description="The browser login's callback as the provider knows it (default: <--external-url, else the "
        "API's URL>/auth/callback).",
    )
    oidc_session_ttl: int = Field(
        default=8 * 3600, ge=60, le=30 * 86_400, description="Seconds a browser login's session lasts."
    )
    idle_timeout: int = Field(
        default=int(DEFAULT_IDLE_TIMEOUT), ge=1, description="Seconds an idle keep-alive API connection stays open."
    )
    scale_to_zero_after: float = Field(
        default=300.0,
        ge=0,
        description="Seconds without an event after which a function with minReplicas: 0 scales to zero, unless "
        "its spec.scaleToZero or the annotation nubis.io/scale-to-zero-after says otherwise; 0 disables "
        "scale to zero.",
    )
    # Workload identity (auth/workload_identity.py, docs/workload-identity.md)
    external_url: str | None = Field(
        default=None,
        description="The URL replicas and Vault reach this API at: the issuer (iss) of the replicas' identity "
        "tokens, whose JWKS is <URL>/.well-known/jwks.json (default: http(s)://HOST:PORT, with this machine's "
        "address for a wildcard --host).",
    )
    workload_token_ttl: int = Field(
        default=600, ge=60, le=86_400, description="Seconds a replica's identity token lives (renewed before)."
    )
    vault_jwt_mount: str = Field(
        default="jwt-nubis",
        min_length=1,
        description="Where in Vault the JWT auth method that trusts the replicas' identity tokens is mounted.",
    )
    vault_jwt_audience: str = Field(
        default="vault", min_length=1, description="The audience (aud) of the identity tokens replicas send to Vault."
    )
    vault_database_roles: tuple[str, ...] = Field(
        default=(),
        description="A Vault database role a tenant's (or one project's) functions may ask for with the annotation "
        "nubis.io/vault-database-role, as TENANT=ROLE or TENANT/PROJECT=ROLE (repeatable; the variable takes entries "
        "separated by commas or spaces).",
    )
    vault_database_mount: str = Field(
        default="database", min_length=1, description="Where in Vault the database secrets engine is mounted."
    )
    # Secrets (nubis.secrets, docs/secrets.md)
    secrets_backend: Literal["local", "vault"] = Field(
        default="local",
        description="Where secrets live: local (AES-256-GCM encrypted files in the data dir) or vault (Vault's or "
        "OpenBao's KV version 2 engine, at --vault-addr).",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="The local secret store's key, 32 bytes in base64 (default: the 0600 file secret-store.key in "
        "the data dir, made at first start). Prefer the variable: a command-line value shows in ps.",
    )
    vault_addr: str | None = Field(default=None, description="Vault's (or OpenBao's) URL, e.g. https://vault:8200.")
    vault_token: SecretStr | None = Field(
        default=None,
        description="The control plane's Vault token. Prefer --vault-token-file or the variable: a command-line "
        "value shows in ps.",
    )
    vault_token_file: Path | None = Field(default=None, description="A file holding the control plane's Vault token.")
    vault_mount: str = Field(
        default="secret", min_length=1, description="Where in Vault the KV version 2 engine holding secrets is mounted."
    )

    @field_validator("function_ports", mode="before")
    @classmethod
    def _port_range(cls, value: object) -> object:
        return parse_port_range(value) if isinstance(value, str) else value

    @field_validator("function_ports")
    @classmethod
    def _port_bounds(cls, value: tuple[int, int]) -> tuple[int, int]:
        return check_port_range(*value)

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _host_names(cls, value: object) -> object:
        """Names separated by commas or spaces, in one value or in each repeated one."""
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            return value
        return tuple(name for item in items for name in str(item).replace(",", " ").split())

    @field_validator("vault_database_roles", mode="before")
    @classmethod
    def _role_entries(cls, value: object) -> object:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            return value
        return tuple(entry for item in items for entry in str(item).replace(",", " ").split())

    @field_validator("vault_database_roles")
    @classmethod
    def _role_grants(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            where, sep, role = entry.partition("=")
            tenant, _, project = where.partition("/")
            if not sep or not tenant or not role or "/" in project or (where.endswith("/") and not project):
                raise ValueError(f"expected TENANT[/PROJECT]=ROLE, found {entry!r}")
        return value

    @field_validator("external_url")
    @classmethod
    def _external_url(cls, value: str | None) -> str | None:
        problem = issuer_problem(value) if value is not None else None
        if problem is not None:
            raise ValueError(problem)
        return value.rstrip("/") if value is not None else None

    @field_validator("build_path_roots", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> object:
        return tuple(value.split()) if isinstance(value, str) else value

    @field_validator("build_path_roots")
    @classmethod
    def _existing_directories(cls, value: tuple[Path, ...]) -> tuple[Path, ...]:
        roots = tuple(path.expanduser().resolve() for path in value)
        for given, root in zip(value, roots, strict=True):
            if not root.is_dir():
                raise ValueError(f"expected an existing directory, found {str(given)!r}")
        return roots

    @field_validator("data_dir")
    @classmethod
    def _expand_user(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("oidc_issuer")
    @classmethod
    def _issuer_url(cls, value: str | None) -> str | None:
        problem = issuer_problem(value) if value is not None else None
        if problem is not None:
            raise ValueError(problem)
        return value

    @property
    def function_port_range(self) -> tuple[int, int]:
        return self.function_ports

    @property
    def archive_max_members(self) -> int:
        return self.archive_max_files

    @property
    def http_limits(self) -> HttpLimits:
        """Bounds on what one API client may hold (the other limits keep their defaults)."""
        return HttpLimits(
            max_connections=self.max_connections,
            header_read_timeout=self.header_read_timeout,
            idle_timeout=self.idle_timeout,
        )

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
        return environments_dir(self.data_dir)

    @property
    def agent_dir(self) -> Path:
        return self.data_dir / "agent"

    @property
    def tunnel_address(self) -> str | None:
        """Where workstations reach the tunnel (`nubis tunnel` reads it from `/api/frontend_spec`)."""
        return f"{self.external_address}:{self.tunnel_port}" if self.tunnel_port else None

    @property
    def workload_issuer(self) -> str:
        """The issuer (iss) of workload identity tokens: --external-url, else this API's own URL."""
        if self.external_url:
            return self.external_url
        scheme = "https" if self.tls_cert else "http"
        host = self.external_address if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.port}"

    @property
    def external_address(self) -> str:
        """Where clients reach functions: never empty (clients take `[0]`)."""
        if self.advertised_address:
            return self.advertised_address
        if self.host in ("0.0.0.0", "::", ""):
            return _primary_address()
        return self.host


class SettingsError(PermanentError):
    """Settings with values they cannot take: `problems` pairs the option or variable each value
    came from (`--port`, `NUBIS_PORT`) with what was expected and what was found."""

    exit_code = 2

    def __init__(self, problems: tuple[tuple[str, str], ...]) -> None:
        super().__init__("; ".join(f"{source}: {detail}" for source, detail in problems))
        self.problems = problems


def load_settings(given: Mapping[str, Any]) -> ServerSettings:
    """`given` (command-line values by field name) over `NUBIS_*` variables over the defaults."""
    try:
        loaded = _from_environment()(**given)
    except ValidationError as exc:
        raise SettingsError(tuple(_describe(error, given) for error in exc.errors())) from exc
    # Already checked: the plain model, so that it compares equal to one built in code.
    return ServerSettings.model_construct(**dict(loaded))


@functools.cache
def _from_environment() -> type[ServerSettings]:
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class FromEnvironment(BaseSettings, ServerSettings):
        # enable_decoding=False: list-like variables are split by the validators above, not read as JSON
        model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, enable_decoding=False)

    return FromEnvironment


def _describe(error: ErrorDetails, given: Mapping[str, Any]) -> tuple[str, str]:
    field = str(error["loc"][0]) if error["loc"] else ""
    source = option_name(field) if field in given else env_name(field)
    if error["type"] == "value_error":  # the validators above say expected and found themselves
        return source, error["msg"].removeprefix("Value error, ")
    expected = error["msg"].partition(",")[0].removeprefix("Input should be ")
    return source, f"expected {expected}, found {error['input']!r}"


def parse_port_range(text: str) -> tuple[int, int]:
    """`LOW-HIGH` (inclusive, 1024-65535, LOW <= HIGH) as a tuple; ValueError says what is wrong."""
    low, sep, high = text.strip().partition("-")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise ValueError(f"expected LOW-HIGH, e.g. 31000-31999, found {text!r}")
    return check_port_range(int(low), int(high), text)


def check_port_range(first: int, last: int, text: str | None = None) -> tuple[int, int]:
    if not 1024 <= first <= last <= 65535:
        raise ValueError(f"expected 1024 <= LOW <= HIGH <= 65535, found {text or f'{first}-{last}'!r}")
    return first, last


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _primary_address() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"
