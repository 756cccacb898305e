"""Refuse requests that another web site can make a browser send to the API (issue 7).

A page open in the user's browser can POST to `http://127.0.0.1:8070` without a CORS preflight
when the request is "simple" (a text/plain or form body, no custom headers), and a DNS-rebinding
page reaches the server under its own name, as if same-origin. Under `--insecure-local` nothing
else stands in the way (and a browser resends cached basic-auth credentials), so this filter sits
in front of the authorisation gate, in every authentication mode:

- the `Host` must be one of the server's own names: a rebinding page always sends its own name;
- a state-changing method, and every call of `/api/function_invocations` (it runs code), must
  carry no browser context (no `Origin`; `Sec-Fetch-Site` absent, `none` or `same-origin`) or come
  from the server's own origin, so curl, httpx, the CLI, nuclio-jupyter and MLRun work as before
  and the dashboard works from its own origin;
- a body sent to a JSON route must be `application/json` (or `+json`), and the archive route takes
  archive types only: text/plain and the form types are exactly what a page may send unasked.

`/healthz` and `/readyz` are exempt from the Host check: process supervisors and load balancers
probe them under whatever address they use, and they reveal nothing but "up" and "ready".

The decision (`decide`) is a pure function of a few header values, read in one pass over the ASGI
headers, so `GET /api/functions` pays a loop and a set lookup.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from starlette.types import ASGIApp, Receive, Scope, Send

from nubis.control.api.responses import error_response
from nubis.control.settings import ServerSettings

log = logging.getLogger("nubis.api")

#: Methods that change nothing; every other method is treated as state-changing.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: `Sec-Fetch-Site` values of a request the user made themselves or the server's own page made.
TRUSTED_FETCH_SITES = frozenset({"same-origin", "none"})
#: What the archive route (`POST /api/function_archives`) accepts as its body's type.
ARCHIVE_TYPES = frozenset(
    {
        "application/gzip",
        "application/x-gzip",
        "application/x-tar",
        "application/x-gtar",
        "application/x-compressed-tar",
        "application/x-bzip2",
        "application/x-xz",
        "application/zip",
        "application/x-zip-compressed",
        "application/octet-stream",
    }
)
PROBES = frozenset({"/healthz", "/readyz", "/healthz/", "/readyz/"})
INVOCATIONS = "/api/function_invocations"
ARCHIVES = "/api/function_archives"
_WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
_DEFAULT_PORTS = {"http": "80", "https": "443"}
#: Longest header value quoted back in an error message.
_QUOTE_LIMIT = 100


class Refusal(NamedTuple):
    status: int
    message: str


@dataclass(frozen=True)
class SitePolicy:
    """Which `Host` values name this server. Entries are lower-case, IPv6 addresses bracketed."""

    #: exact `Host` values: each own name alone and with the server's port
    hosts: frozenset[str]
    #: names from `--allowed-host NAME` without a port: any port
    any_port_hosts: frozenset[str] = frozenset()
    #: `--allowed-host '*'`: the Host check is off
    any_host: bool = False

    @classmethod
    def for_server(cls, settings: ServerSettings) -> SitePolicy:
        """The server's own names (loopback, `--host`, hostname, FQDN, and on a wildcard bind the
        machine's addresses and the reported external address) plus `--allowed-host` entries."""
        names = {"localhost", "127.0.0.1", "[::1]"}
        if settings.host not in _WILDCARD_BINDS:
            names.add(settings.host)
        names.update(_machine_names())
        if settings.host in _WILDCARD_BINDS:
            names.update(_machine_addresses())
            names.add(settings.external_address)
        if settings.advertised_address:
            names.add(settings.advertised_address)
        own = {bracketed(name) for name in names if name}
        hosts = own | {f"{name}:{settings.port}" for name in own}
        any_port: set[str] = set()
        any_host = False
        for entry in settings.allowed_hosts:
            entry = entry.strip().lower()
            if entry == "*":
                any_host = True
            elif entry:
                name, port = split_port(bracketed(entry))
                if port:
                    hosts.add(f"{name}:{port}")
                else:
                    any_port.add(name)
        if any_host:
            log.warning(
                "--allowed-host '*': the API accepts any Host header, so a web page can reach it by "
                "DNS rebinding; name the hosts instead where you can"
            )
        return cls(frozenset(hosts), frozenset(any_port), any_host)

    def allows_host(self, host: str) -> bool:
        if self.any_host or host in self.hosts:
            return True
        return bool(self.any_port_hosts) and split_port(host)[0] in self.any_port_hosts


def bracketed(name: str) -> str:
    """`::1` → `[::1]` (as it appears in a Host header); other names lower-cased as they are."""
    name = name.strip().lower()
    if name.count(":") > 1 and not name.startswith("["):
        return f"[{name}]"
    return name


def split_port(host: str) -> tuple[str, str]:
    """`name:8070` → (`name`, `8070`); `[::1]:8070` → (`[::1]`, `8070`); no port → (host, "")."""
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1 :]
        return host[: end + 1], rest[1:] if rest.startswith(":") else ""
    name, _, port = host.partition(":")
    return name, port


def _machine_names() -> Iterable[str]:
    return [socket.gethostname(), socket.getfqdn()]  # getfqdn falls back to the name itself


def _machine_addresses() -> Iterable[str]:
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None)
    except OSError:
        return []
    return {str(info[4][0]) for info in infos}


def _quote(value: str) -> str:
    return repr(value if len(value) <= _QUOTE_LIMIT else value[:_QUOTE_LIMIT] + "…")


def _normal_origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    name, port = split_port(rest)
    return f"{scheme}://{name}:{port or _DEFAULT_PORTS.get(scheme, '')}"


def decide(
    policy: SitePolicy,
    *,
    method: str,
    path: str,
    scheme: str,
    host: str | None,
    origin: str | None,
    fetch_site: str | None,
    content_type: str | None,
    has_body: bool,
) -> Refusal | None:
    """None when the request may go on to the gate, else the answer to give instead.

    `host`, `origin` and `fetch_site` are lower-cased header values (None when absent).
    """
    if path in PROBES:
        return None
    if host is not None and not policy.allows_host(host):
        name = split_port(host)[0]
        return Refusal(
            421,
            f"request refused: Host {_quote(host)} is not a name of this server (localhost, 127.0.0.1, "
            "[::1], this machine's hostname and the --host address are). A web page can reach a local "
            "server under a name of its own (DNS rebinding), so other names are refused; if clients "
            f"reach this server as {_quote(name)}, start it with --allowed-host {name} "
            "(or NUBIS_ALLOWED_HOSTS)",
        )
    invocation = path.startswith(INVOCATIONS) and (len(path) == len(INVOCATIONS) or path[len(INVOCATIONS)] == "/")
    if method in SAFE_METHODS and not invocation:
        return None
    if fetch_site is not None and fetch_site not in TRUSTED_FETCH_SITES:
        return Refusal(
            403,
            f"request refused: Sec-Fetch-Site is {_quote(fetch_site)}, so the browser sent this "
            f"{method} {path} for another web site; the API takes state-changing requests only from "
            "its own origin or from clients outside a browser (curl, the nubis CLI, nuclio-jupyter)",
        )
    if origin is not None:
        own = f"{scheme}://{host}" if host is not None else None
        if own is None or (origin != own and _normal_origin(origin) != _normal_origin(own)):
            return Refusal(
                403,
                f"request refused: Origin {_quote(origin)} is not this server's own origin "
                f"({_quote(own or 'unknown: no Host header')}); the API never takes {method} {path} "
                "from another web site, since a page open in a browser could otherwise deploy and run "
                "code as you. Send it without an Origin header (as curl, the nubis CLI and "
                "nuclio-jupyter do) or from the server's own origin",
            )
    if not has_body or invocation or content_type is None:
        return None
    media = content_type.partition(";")[0].strip().lower()
    if path.startswith(ARCHIVES) and path.rstrip("/") == ARCHIVES:
        if media in ARCHIVE_TYPES:
            return None
        return Refusal(
            415,
            f"{method} {path} takes the archive's bytes: send Content-Type application/gzip, "
            f"application/zip or application/octet-stream (found {_quote(content_type)})",
        )
    if media == "application/json" or media.endswith("+json"):
        return None
    return Refusal(
        415,
        f"{method} {path} takes a JSON body: send Content-Type: application/json (found {_quote(content_type)})",
    )


class SiteGuard:
    """Pure ASGI middleware applying `decide` to every HTTP request before the routes see it."""

    def __init__(self, app: ASGIApp, policy: SitePolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = origin = fetch_site = content_type = None
        has_body = False
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1").lower()
            elif name == b"origin":
                origin = value.decode("latin-1").lower()
            elif name == b"sec-fetch-site":
                fetch_site = value.decode("latin-1").strip().lower()
            elif name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-length":
                has_body = has_body or value.strip() not in (b"0", b"")
            elif name == b"transfer-encoding":
                has_body = True
        refusal = decide(
            self.policy,
            method=scope["method"],
            path=scope["path"],
            scheme=scope.get("scheme", "http"),
            host=host,
            origin=origin,
            fetch_site=fetch_site,
            content_type=content_type,
            has_body=has_body,
        )
        if refusal is None:
            await self.app(scope, receive, send)
            return
        log.warning("%s %s refused: %s", scope["method"], scope["path"], refusal.message)
        await error_response(refusal.status, refusal.message)(scope, receive, send)
