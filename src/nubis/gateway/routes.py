"""The routing table: which upstream a request path reaches, and the path it arrives at.

A table is immutable and replaced whole when the store changes (`watch.py`), so a request reads
one consistent table without locks. Today the only routes are function paths: `/<function>` and
`/<function>/...` reach the function with the prefix stripped. API gateways (host + path rules,
canary splits) will be further route kinds looked up here before the function paths.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where a function's replicas listen. They share one port (SO_REUSEPORT), so the kernel, not
    the gateway, spreads connections over them; least-in-flight balancing needs an address per
    replica (issue 9, item 2)."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Route:
    """A function path route: the function's name (the access log's `function`) and its upstream."""

    function: str
    upstream: Upstream

    @property
    def name(self) -> str:
        """The route as the access log names it."""
        return "/" + self.function


@dataclass(frozen=True, slots=True)
class Match:
    route: Route
    #: the path (with its query) the upstream receives
    target: bytes


@dataclass(frozen=True)
class RoutingTable:
    """Function name -> route."""

    functions: dict[str, Route] = field(default_factory=dict)

    @classmethod
    def of_functions(cls, functions: Iterable[tuple[str, int | None]], host: str = "127.0.0.1") -> RoutingTable:
        """A table from (name, httpPort) pairs; a function without a port has no route."""
        return cls({name: Route(name, Upstream(host, port)) for name, port in functions if port})

    def match(self, target: bytes) -> Match | None:
        """The route of a request target (`/hello/x?y=1`) and what the upstream receives (`/x?y=1`)."""
        if not target.startswith(b"/"):
            return None
        path, mark, query = target.partition(b"?")
        name, slash, rest = path[1:].partition(b"/")
        route = self.functions.get(name.decode("latin-1"))
        if route is None:
            return None
        upstream_path = slash + rest if slash else b"/"
        return Match(route, upstream_path + mark + query)

    def __len__(self) -> int:
        return len(self.functions)
