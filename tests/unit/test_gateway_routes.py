"""The gateway's routing table: function paths, the prefix stripped, the query kept."""

from __future__ import annotations

from nubis.gateway.replicas import Upstream
from nubis.gateway.routes import RoutingTable


def test_function_paths_reach_the_function_with_the_prefix_stripped() -> None:
    table = RoutingTable.of_functions([("hello", 31000), ("other", 31001)])
    cases = {
        b"/hello": b"/",
        b"/hello/": b"/",
        b"/hello/x": b"/x",
        b"/hello/x/y?a=1&b=2": b"/x/y?a=1&b=2",
        b"/hello?a=1": b"/?a=1",
    }
    for target, upstream_target in cases.items():
        match = table.match(target)
        assert match is not None and match.target == upstream_target, target
        assert match.route.function == "hello" and match.route.upstream == Upstream("127.0.0.1", 31000)
        assert match.route.name == "/hello"


def test_unknown_names_prefixes_and_functions_without_a_port_have_no_route() -> None:
    table = RoutingTable.of_functions([("hello", 31000), ("noport", None)])
    assert len(table) == 1
    for target in (b"/", b"/hell", b"/hellox", b"/noport/x", b"*", b"http://hello/x", b""):
        assert table.match(target) is None, target


def test_a_replicas_own_paths_are_not_routed() -> None:
    table = RoutingTable.of_functions([("hello", 31000)])
    for target in (b"/hello/__internal", b"/hello/__internal/health", b"/hello/__internal/metrics?x=1"):
        assert table.match(target) is None, target
    assert table.match(b"/hello/__internals") is not None  # only the reserved segment
