"""The routing table: which upstream a request reaches, and the path it arrives at.

A table is immutable and replaced whole when the store changes (`watch.py`), so a request reads
one consistent table without locks. Two kinds of route:

- Function paths: `/<function>` and `/<function>/...` reach the function with the prefix stripped,
  whatever the `Host`.
- API gateways (NUCLIO.md §9), only those in state `ready`: the `Host` header (port dropped, case
  ignored) equals the gateway's `spec.host` and the path starts with its `spec.path` (default `/`)
  element-wise (`/api` matches `/api` and `/api/x`, not `/apix`: Gateway API's `PathPrefix`); the
  longest such prefix of that host wins.

Precedence: an API gateway that matches wins over a function path, as Nuclio's host-based ingress
sends a request for a gateway's host and path there whatever its path looks like; a request for a
gateway's host that no gateway path matches still reaches a function path. The path is passed on
as it came (Nuclio's ingress keeps it) unless the upstream has a `rewriteTarget`, which replaces
the matched prefix (Gateway API's `ReplacePrefixMatch`, the mapping NUCLIO.md §9 gives; the query
is kept). Two upstreams split requests by a draw per request (`draw`, injectable for tests)
against the primary's share.

A path is matched as the function will read it (`normal_target`): percent-encoded unreserved
characters decoded and runs of slashes merged (RFC 3986 §6.2.2, nginx's `merge_slashes`), and a
path that could mean another one further on is refused: a dot segment (`/open/../guarded`), an
encoded slash or backslash (`/open%2F..`), a raw backslash or a fragment. Otherwise a request that
matched an API gateway without authentication could reach a path of the same function that one with
authentication guards, once the function or its framework normalises it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from nubis.gateway.guards import Guard, Refusal
from nubis.gateway.replicas import Replicas, Upstream
from nubis.store import GatewayRoute

#: a function's replica set, given its name and shared port
ReplicasOf = Callable[[str, Upstream], Replicas]


@dataclass(frozen=True, slots=True)
class Route:
    """A route to one function: its name (the access log's `function`), its shared port, the API
    gateway it belongs to ("" for a function path) and its replicas (`replicas.py`; None: only the
    shared port is known)."""

    function: str
    upstream: Upstream
    gateway: str = ""
    replicas: Replicas | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        """The route as the access log names it: `/<function>`, or the API gateway's name."""
        return self.gateway or "/" + self.function


@dataclass(frozen=True, slots=True)
class Match:
    route: Route
    #: the path (with its query) the upstream receives
    target: bytes
    #: who may pass (API gateways), None: everyone
    guard: Guard | None = None
    #: the gateway's own answer instead (an upstream function that cannot be reached)
    refusal: Refusal | None = None


@dataclass(frozen=True, slots=True)
class Share:
    """One upstream of an API gateway: `percentage` of its requests go to `route`."""

    route: Route
    percentage: int
    #: what replaces the matched prefix, None: the path is kept
    rewrite_target: bytes | None
    #: the function has no address (not deployed): its share is answered 503
    reachable: bool


@dataclass(frozen=True, slots=True)
class GatewayRule:
    name: str
    #: the path prefix without a trailing slash ("" for `/`)
    prefix: bytes
    shares: tuple[Share, ...]
    guard: Guard


@dataclass(frozen=True)
class RoutingTable:
    """Function name -> route, and host -> its API gateways (longest prefix first)."""

    functions: dict[str, Route] = field(default_factory=dict)
    hosts: dict[bytes, tuple[GatewayRule, ...]] = field(default_factory=dict)
    #: a number in [0, 1) per request to an API gateway with two upstreams
    draw: Callable[[], float] = random.random

    @classmethod
    def of_functions(
        cls,
        functions: Iterable[tuple[str, int | None]],
        host: str = "127.0.0.1",
        replicas: ReplicasOf | None = None,
    ) -> RoutingTable:
        """A table from (name, httpPort) pairs; a function without a port has no route. `replicas`
        gives each function's replica set (kept by the watch across tables)."""
        routes = {}
        for name, port in functions:
            if port:
                upstream = Upstream(host, port)
                routes[name] = Route(name, upstream, replicas=replicas(name, upstream) if replicas else None)
        return cls(routes)

    @classmethod
    def build(
        cls,
        functions: Iterable[tuple[str, int | None]],
        gateways: Iterable[GatewayRoute],
        host: str = "127.0.0.1",
        draw: Callable[[], float] = random.random,
        replicas: ReplicasOf | None = None,
    ) -> RoutingTable:
        """Function routes and the `ready` API gateways over them."""
        routes = cls.of_functions(functions, host, replicas).functions
        hosts: dict[bytes, list[GatewayRule]] = {}
        for gateway in gateways:
            if gateway.state == "ready" and gateway.upstreams:
                hosts.setdefault(host_key(gateway.host.encode("latin-1")), []).append(_rule(gateway, routes, host))
        ordered = {key: tuple(sorted(rules, key=lambda r: -len(r.prefix))) for key, rules in hosts.items()}
        return cls(routes, ordered, draw)

    def match(self, target: bytes, host: bytes = b"") -> Match | None:
        """The route of a request target (`/hello/x?y=1`) with `Host: host`, and what the upstream
        receives (`/x?y=1` for a function path)."""
        if not target.startswith(b"/"):
            return None
        path, mark, query = target.partition(b"?")
        rules = self.hosts.get(host_key(host)) if self.hosts and host else None
        if rules:
            for rule in rules:
                if path == rule.prefix or path.startswith(rule.prefix + b"/"):
                    return self._gateway_match(rule, path, mark + query)
        name, slash, rest = path[1:].partition(b"/")
        route = self.functions.get(name.decode("latin-1"))
        if route is None:
            return None
        upstream_path = slash + rest if slash else b"/"
        if _internal(upstream_path):
            return None
        return Match(route, upstream_path + mark + query)

    def _gateway_match(self, rule: GatewayRule, path: bytes, query: bytes) -> Match:
        share = rule.shares[0]
        if len(rule.shares) == 2 and self.draw() * 100 >= share.percentage:
            share = rule.shares[1]
        if share.rewrite_target is not None:
            rest = path[len(rule.prefix) :]
            base = share.rewrite_target
            path = (base.rstrip(b"/") + rest if rest else base) or b"/"
        if _internal(path):
            return Match(share.route, path + query, rule.guard, Refusal(404, "no such path"))
        refusal = None
        if not share.reachable:
            message = f"function {share.route.function} of API gateway {rule.name} is not deployed"
            refusal = Refusal(503, message)
        return Match(share.route, path + query, rule.guard, refusal)

    def counts(self) -> tuple[int, int]:
        """(function routes, API gateway routes)."""
        return len(self.functions), sum(len(rules) for rules in self.hosts.values())

    def __len__(self) -> int:
        return sum(self.counts())


def _internal(path: bytes) -> bool:
    """A replica's own endpoints (`/__internal/...`: its health) are the platform's, not the
    world's: no route reaches them."""
    return path == INTERNAL_PREFIX or path.startswith(INTERNAL_PREFIX + b"/")


def host_key(host: bytes) -> bytes:
    """A `Host` value as routes compare it: lower case, without its port (`[::1]:80` -> `[::1]`)
    or the trailing dot of a fully qualified name (`a.example.com.` is `a.example.com`)."""
    host = host.strip().lower()
    if host.startswith(b"["):
        return host.partition(b"]")[0] + b"]"
    return host.partition(b":")[0].removesuffix(b".")


#: the replicas' own paths (the processor's `/__internal/health`)
INTERNAL_PREFIX = b"/__internal"
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_SLASHES = re.compile(rb"//+")


def _decode_unreserved(escape: re.Match[bytes]) -> bytes:
    code = int(escape[1], 16)
    if code in _UNRESERVED:
        return bytes((code,))
    if code in (0x2F, 0x5C):
        raise ValueError("an encoded slash or backslash in a path is refused")
    return escape[0].upper()


def normal_target(target: bytes) -> bytes:
    """`target` (origin-form, `/path?query`) with its path normalised as routes match it;
    ValueError for a path that is refused (see the module's docstring). Other forms (`*`, an
    absolute URL) are returned as they are: no route matches them."""
    if not target.startswith(b"/"):
        return target
    path, mark, query = target.partition(b"?")
    if b"%" not in path and b"//" not in path and b"." not in path and b"\\" not in path and b"#" not in path:
        return target  # nothing to decode, merge or refuse: most paths
    if b"\\" in path or b"#" in path:
        raise ValueError("a backslash or fragment in a path is refused")
    path = _SLASHES.sub(b"/", _ESCAPE.sub(_decode_unreserved, path))
    if any(segment in (b".", b"..") for segment in path.split(b"/")):
        raise ValueError("a path with . or .. segments is refused")
    return path + mark + query


def path_prefix(path: str) -> bytes:
    """`spec.path` as a prefix: a leading slash, no trailing one (`/` and "" give "")."""
    return ("/" + path.strip("/")).rstrip("/").encode("latin-1")


def _rule(gateway: GatewayRoute, routes: dict[str, Route], host: str) -> GatewayRule:
    shares = []
    for upstream in gateway.upstreams:
        known = routes.get(upstream.function)
        address = known.upstream if known is not None else Upstream(host, 0)
        rewrite = ("/" + upstream.rewrite_target.lstrip("/")).encode("latin-1") if upstream.rewrite_target else None
        route = Route(upstream.function, address, gateway.name, known.replicas if known is not None else None)
        shares.append(Share(route, upstream.percentage, rewrite, known is not None))
    guard = Guard(
        gateway.authentication_mode,
        gateway.name,
        gateway.username,
        gateway.password_hash,
        gateway.namespace,
        gateway.project,
    )
    return GatewayRule(gateway.name, path_prefix(gateway.path), tuple(shares), guard)
