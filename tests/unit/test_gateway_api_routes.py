"""API gateway routes in the gateway's table (host + longest path prefix, precedence over function
paths, rewriteTarget, the canary split) and the authentication decisions of `guards`."""

from __future__ import annotations

import asyncio
import base64
import random
from pathlib import Path

from nubis.auth.tokens import hash_token, new_token
from nubis.gateway.guarded import refusal_answer
from nubis.gateway.guards import Authenticator, Check, Guard, Refusal
from nubis.gateway.replicas import Upstream as Address
from nubis.gateway.routes import Match, RoutingTable
from nubis.store import GatewayRoute, Store, Upstream, default_state_url, hash_password

FUNCTIONS = [("alpha", 31001), ("beta", 31002), ("gamma", 31003)]


def gateway(name: str, host: str, path: str, *upstreams: Upstream, state: str = "ready") -> GatewayRoute:
    return GatewayRoute(name, "default", host, path, state, "none", upstreams)


def one(function: str, rewrite: str = "") -> Upstream:
    return Upstream(function, 100, rewrite_target=rewrite)


def matched(table: RoutingTable, target: bytes, host: bytes) -> Match:
    match = table.match(target, host)
    assert match is not None, (target, host)
    return match


def test_host_and_longest_path_prefix_pick_the_gateway() -> None:
    table = RoutingTable.build(
        FUNCTIONS,
        [
            gateway("root", "api.example.com", "/", one("alpha")),
            gateway("v1", "api.example.com", "/v1", one("beta")),
            gateway("deep", "api.example.com", "v1/deep/", one("gamma")),
            gateway("waiting", "wait.example.com", "/", one("alpha"), state="waitingForProvisioning"),
        ],
    )
    cases = {
        (b"/x", b"api.example.com"): ("alpha", "root"),
        (b"/v1", b"API.Example.COM:8080"): ("beta", "v1"),
        (b"/v1/x?q=1", b"api.example.com"): ("beta", "v1"),
        (b"/v1x", b"api.example.com"): ("alpha", "root"),  # prefixes match whole path elements
        (b"/v1/deep/more", b"api.example.com"): ("gamma", "deep"),
    }
    for (target, host), (function, name) in cases.items():
        match = matched(table, target, host)
        assert (match.route.function, match.route.name) == (function, name), target
        assert match.target == target and match.route.upstream == Address("127.0.0.1", dict(FUNCTIONS)[function])
        assert match.guard is not None and match.guard.mode == "none" and match.refusal is None
    assert table.counts() == (3, 3)


def test_a_gateway_wins_over_a_function_path_only_for_its_host_and_paths() -> None:
    table = RoutingTable.build(FUNCTIONS, [gateway("gw", "gw.example.com", "/beta", one("gamma"))])
    assert matched(table, b"/beta/x", b"gw.example.com").route.function == "gamma"
    # the gateway's host, a path no gateway has: the function paths still answer
    other = matched(table, b"/alpha/x", b"gw.example.com")
    assert (other.route.name, other.target, other.guard) == ("/alpha", b"/x", None)
    # another host: function paths only
    assert matched(table, b"/beta/x", b"127.0.0.1:8080").route.function == "beta"
    assert table.match(b"/nosuch", b"gw.example.com") is None
    assert RoutingTable.build(FUNCTIONS, [gateway("gw", "gw.example.com", "/", one("gamma"))]).match(b"*") is None


def test_rewrite_target_replaces_the_matched_prefix_and_keeps_the_query() -> None:
    table = RoutingTable.build(
        FUNCTIONS,
        [
            gateway("a", "h", "/api", one("alpha", "/v2")),
            gateway("b", "h", "/strip", one("alpha", "/")),
            gateway("c", "r", "/", one("alpha", "base/")),
        ],
    )
    cases = {
        (b"/api", b"h"): b"/v2",
        (b"/api/x/y?z=1", b"h"): b"/v2/x/y?z=1",
        (b"/strip", b"h"): b"/",
        (b"/strip/x?q", b"h"): b"/x?q",
        (b"/x", b"r"): b"/base/x",
        (b"/", b"r"): b"/base/",
    }
    for (target, host), upstream_target in cases.items():
        assert matched(table, target, host).target == upstream_target, target


def test_two_upstreams_split_by_the_canary_percentage() -> None:
    halves = [Upstream("alpha", 50), Upstream("beta", 50)]
    table = RoutingTable.build(FUNCTIONS, [gateway("gw", "h", "/", *halves)], draw=random.Random(7).random)
    picks = [matched(table, b"/", b"h").route.function for _ in range(400)]
    assert 120 <= picks.count("alpha") <= 280 and picks.count("alpha") + picks.count("beta") == 400
    # the draw decides against the first upstream's share: below 80 of 100 is the primary
    draws = iter([0.0, 0.79, 0.8, 0.99])
    skewed = [Upstream("alpha", 80), Upstream("beta", 20, rewrite_target="/canary")]
    table = RoutingTable.build(FUNCTIONS, [gateway("gw", "h", "/", *skewed)], draw=lambda: next(draws))
    seen = [(m.route.function, m.target) for m in (matched(table, b"/p", b"h") for _ in range(4))]
    assert seen == [("alpha", b"/p"), ("alpha", b"/p"), ("beta", b"/canary/p"), ("beta", b"/canary/p")]


def test_an_upstream_function_that_is_not_deployed_is_a_503() -> None:
    table = RoutingTable.build([("alpha", 31001), ("idle", None)], [gateway("gw", "h", "/", one("idle"))])
    refusal = matched(table, b"/", b"h").refusal
    assert refusal is not None and refusal.status == 503 and "idle" in refusal.message


def basic(username: str, password: str) -> list[tuple[bytes, bytes]]:
    return [(b"Authorization", b"Basic " + base64.b64encode(f"{username}:{password}".encode()))]


def test_basic_auth_challenges_checks_once_and_caches_what_passed() -> None:
    now = [0.0]
    auth = Authenticator(store=None, ttl=10.0, clock=lambda: now[0])  # basic auth reads no tokens
    guard = Guard("basicAuth", 'my "gw"', "user", hash_password("secret"))
    for headers in ([], basic("other", "secret"), [(b"Authorization", b"Basic !!notbase64")], [(b"X", b"y")]):
        refusal = auth.decide(guard, headers)
        assert isinstance(refusal, Refusal) and refusal.status == 401, headers
        assert refusal.challenge == 'Basic realm="my \\"gw\\""'
    wrong = auth.decide(guard, basic("user", "nope"))
    assert isinstance(wrong, Check)
    assert asyncio.run(auth.verify(wrong)) == refusal
    assert isinstance(auth.decide(guard, basic("user", "nope")), Check)  # a failure is not remembered
    right = auth.decide(guard, basic("user", "secret"))
    assert isinstance(right, Check) and asyncio.run(auth.verify(right)) is None
    assert auth.decide(guard, basic("user", "secret")) is None  # no PBKDF2 run while cached
    changed = Guard("basicAuth", guard.realm, "user", hash_password("secret"))
    assert isinstance(auth.decide(changed, basic("user", "secret")), Check)  # a new hash: checked again
    now[0] = 10.5
    assert isinstance(auth.decide(guard, basic("user", "secret")), Check)  # expired
    answer = refusal_answer(refusal, b"rid", True)
    assert answer.startswith(b"HTTP/1.1 401 ") and b'\r\nWWW-Authenticate: Basic realm="my \\"gw\\""\r\n' in answer


def test_access_keys_are_api_tokens(tmp_path: Path) -> None:
    async def main() -> None:
        store = await Store.open(default_state_url(tmp_path))
        try:
            token = new_token()
            await store.add_token("admin", hash_token(token))
            auth = Authenticator(store)
            guard = Guard("accessKey", "gw")
            missing = auth.decide(guard, [(b"Authorization", b"Basic eDp5")])
            assert isinstance(missing, Refusal) and missing.status == 401 and not missing.challenge
            forged = auth.decide(guard, [(b"Authorization", b"Bearer nubis_forged")])
            assert isinstance(forged, Check)
            refused = await auth.verify(forged)
            assert refused is not None and refused.status == 401
            bearer = [(b"authorization", f"bearer {token}".encode())]
            check = auth.decide(guard, bearer)
            assert isinstance(check, Check) and await auth.verify(check) is None
            assert auth.decide(guard, bearer) is None  # cached: no store read
            # Iguazio's header carries the same token: the same cache entry
            assert auth.decide(guard, [(b"X-V3io-Session-Key", token.encode())]) is None
            assert isinstance(Authenticator(store).decide(guard, [(b"X-V3io-Session-Key", token.encode())]), Check)
        finally:
            await store.close()

    asyncio.run(main())


def test_none_passes_and_oauth2_without_an_issuer_is_503() -> None:
    auth = Authenticator(store=None)
    assert auth.decide(None, []) is None and auth.decide(Guard("none", "gw"), []) is None
    refusal = auth.decide(Guard("oauth2", "gw"), [(b"Authorization", b"Bearer x")])
    assert isinstance(refusal, Refusal) and refusal.status == 503 and "--oidc-issuer" in refusal.message


def test_no_api_gateway_path_reaches_a_replicas_own_paths() -> None:
    table = RoutingTable.build(
        FUNCTIONS,
        [gateway("whole", "w", "/", one("alpha")), gateway("into", "i", "/probe", one("alpha", "/__internal"))],
    )
    for target, host in ((b"/__internal/health", b"w"), (b"/probe/health", b"i"), (b"/probe", b"i")):
        refusal = matched(table, target, host).refusal
        assert refusal is not None and refusal.status == 404, target
    assert matched(table, b"/__internals", b"w").refusal is None
