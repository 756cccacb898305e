"""The claim and key checks of the gateway's oauth2 mode (`auth/jwt_verifier.py`, `guards.py`), with keys
made here: every claim rule with its leeway, refused algs, key rotation and its rate limit, the
JWKS's cache lifetime, a provider out of reach.

The provider is an in-process `httpx.MockTransport` serving a discovery document and a JWKS, so a
test controls time, answers and counts exactly; what it cannot prove (a real provider's documents
and tokens, a real restart with a new key) `tests/integration/test_gateway_oauth2.py` shows against
npm's oidc-provider. One test here asks a real closed port.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, Key, OctKey, RSAKey
from test_api_gateway_validation import body

from nubis.auth.issuers import issuer_problem, oidc_settings_problem
from nubis.auth.jwt_verifier import KEYS_TTL, OidcVerifier, ProviderUnavailable, TokenRefused
from nubis.control.gateway_rules import checked_gateway
from nubis.errors import BadRequest
from nubis.gateway.guards import Authenticator, Check, Guard, Refusal, bearer_challenge

ISSUER = "https://id.example.com/realms/nubis"
AUDIENCE = "https://api.nubis.test"
NOW = 1_800_000_000.0
T = TypeVar("T")


class Provider:
    """A discovery document and a JWKS, counted; `keys` and `down` change what it serves."""

    def __init__(self, *keys: Key, issuer: str = ISSUER, cache_control: str = "") -> None:
        self.keys = list(keys)
        self.issuer = issuer
        self.cache_control = cache_control
        self.down = False
        self.fetches = 0
        self.discoveries = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path.endswith("/.well-known/openid-configuration"):
            self.discoveries += 1
            return httpx.Response(200, json={"issuer": self.issuer, "jwks_uri": "https://id.example.com/certs"})
        self.fetches += 1
        jwks = {"keys": [key.as_dict(private=False) for key in self.keys]}
        return httpx.Response(200, json=jwks, headers={"Cache-Control": self.cache_control})


class Clocks:
    def __init__(self) -> None:
        self.wall = NOW
        self.mono = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


@dataclass
class Setup:
    """A verifier to make, in the test's event loop, over `provider`."""

    provider: Provider
    clocks: Clocks
    options: dict[str, Any]


def verifier(provider: Provider, clocks: Clocks, **options: Any) -> Setup:
    return Setup(provider, clocks, options)


def run(scenario: Callable[[OidcVerifier], Coroutine[Any, Any, T]], setup: Setup) -> T:
    async def main() -> T:
        async with httpx.AsyncClient(transport=httpx.MockTransport(setup.provider)) as client:
            clocks = setup.clocks
            check = OidcVerifier(
                ISSUER,
                AUDIENCE,
                client=client,
                clock=lambda: clocks.wall,
                monotonic=lambda: clocks.mono,
                **setup.options,
            )
            try:
                return await scenario(check)
            finally:
                await check.close()

    return asyncio.run(main())


def rsa(kid: str = "k1") -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "alg": "RS256", "use": "sig"})


def claims(**changes: Any) -> dict[str, Any]:
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "svc-1", "iat": int(NOW), "exp": int(NOW) + 300}
    return {k: v for k, v in (base | changes).items() if v is not None}


def token(key: Key, alg: str = "RS256", kid: str | None = "k1", **changes: Any) -> str:
    header = {"alg": alg, "typ": "at+jwt"} | ({"kid": kid} if kid is not None else {})
    return jwt.encode(header, claims(**changes), key, algorithms=[alg])


def refused(check: Setup, value: str) -> str:
    async def attempt(v: OidcVerifier) -> str:
        with pytest.raises(TokenRefused) as caught:
            await v.verify(value)
        return caught.value.message

    return run(attempt, check)


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_a_token_of_the_issuer_passes_with_its_subject_and_expiry() -> None:
    key, clocks = rsa(), Clocks()
    verified = run(lambda v: v.verify(token(key)), verifier(Provider(key), clocks))
    assert (verified.subject, verified.expires) == ("svc-1", NOW + 300)
    # an audience list that contains ours, and an EC key without kid or alg (its curve says ES256)
    ec = ECKey.generate_key("P-256")
    listed = token(ec, "ES256", kid=None, aud=["https://other", AUDIENCE])
    assert run(lambda v: v.verify(listed), verifier(Provider(ec), clocks)).subject == "svc-1"


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"iss": "https://id.example.com/realms/nubis/"}, f"issuer (iss) is not {ISSUER}"),
        ({"iss": None}, "no iss claim"),
        ({"aud": "https://other.nubis.test"}, f"not meant for audience {AUDIENCE}"),
        ({"aud": ["a", "b"]}, "not meant for audience"),
        ({"aud": None}, "no aud claim"),
        ({"exp": None}, "no exp claim"),
        ({"exp": int(NOW) - 31}, "has expired (exp)"),
        ({"exp": "tomorrow"}, "exp claim is invalid"),
        ({"nbf": int(NOW) + 31}, "not valid yet (nbf)"),
        ({"iat": int(NOW) + 31}, "issued in the future (iat)"),
    ],
)
def test_each_claim_rule_refuses_with_what_failed(changes: dict[str, Any], problem: str) -> None:
    key = rsa()
    message = refused(verifier(Provider(key), Clocks()), token(key, **changes))
    assert problem in message, message


def test_the_leeway_forgives_30_seconds_of_clock_skew() -> None:
    key, clocks = rsa(), Clocks()
    skewed = token(key, exp=int(NOW) - 29, nbf=int(NOW) + 29, iat=int(NOW) + 29)
    assert run(lambda v: v.verify(skewed), verifier(Provider(key), clocks)).subject == "svc-1"
    strict = verifier(Provider(key), clocks, leeway=0)
    assert "has expired" in refused(strict, token(key, exp=int(NOW)))


def test_none_hs256_unfitting_algs_and_bad_signatures_are_refused() -> None:
    key = rsa()
    provider = Provider(key)
    real = token(key)
    header, payload, _ = real.split(".")
    unsigned = b64({"alg": "none", "kid": "k1"}) + "." + payload + "."
    assert "alg none is refused" in refused(verifier(provider, Clocks()), unsigned)
    # HS256 keyed with the public key's bytes (the algorithm-confusion attack)
    signing_input = b64({"alg": "HS256", "kid": "k1"}) + "." + payload
    mac = hmac.new(key.as_pem(private=False), signing_input.encode(), hashlib.sha256).digest()
    hs = signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    assert "alg HS256 is refused" in refused(verifier(provider, Clocks()), hs)
    odd = b64({"alg": "X\r\nSet-Cookie: a", "kid": "k1"}) + "." + payload + "." + real.split(".")[2]
    message = refused(verifier(provider, Clocks()), odd)
    assert "its alg is refused" in message and "\r" not in message  # never echoed
    # the key says RS256: a PS256 signature by the same key does not fit it
    unbound = RSAKey.import_key({name: v for name, v in key.as_dict(private=True).items() if name != "alg"})
    ps = token(unbound, "PS256")
    assert "alg PS256 does not fit its key" in refused(verifier(provider, Clocks()), ps)
    # the same kid, another key: the signature does not verify
    assert "signature does not verify" in refused(verifier(provider, Clocks()), token(rsa()))
    tampered = header + "." + b64(claims(sub="admin")) + "." + real.split(".")[2]
    assert "signature does not verify" in refused(verifier(provider, Clocks()), tampered)
    for garbage in ("", "abc", "a.b.c", "é.x.y"):
        assert "not a signed JWT" in refused(verifier(provider, Clocks()), garbage)


def test_an_unknown_kid_refetches_at_most_once_per_interval_and_finds_a_rotated_key() -> None:
    old, new = rsa("k1"), rsa("k2")
    provider, clocks = Provider(old), Clocks()

    async def scenario(v: OidcVerifier) -> None:
        await v.verify(token(old))
        assert provider.fetches == 1 and provider.discoveries == 1
        provider.keys = [new]  # rotated at the provider
        with pytest.raises(TokenRefused, match="unknown kid"):
            await v.verify(token(new, kid="k2"))  # fetched 0 s ago: no refetch yet
        clocks.advance(5)
        for _ in range(50):  # a flood of made-up kids costs nothing
            with pytest.raises(TokenRefused, match="unknown kid"):
                await v.verify(token(new, kid="bogus"))
        assert provider.fetches == 1
        clocks.advance(5)
        assert (await v.verify(token(new, kid="k2"))).subject == "svc-1"
        assert provider.fetches == 2 and provider.discoveries == 1
        with pytest.raises(TokenRefused, match="unknown kid"):  # the dropped key no longer verifies
            await v.verify(token(old))
        assert provider.fetches == 2

    run(scenario, verifier(provider, clocks))


def test_the_keys_are_fetched_again_after_max_age_or_five_minutes() -> None:
    key = rsa()
    for cache_control, lifetime in (("public, max-age=60", 60.0), ("", KEYS_TTL), ("max-age=1", 10.0)):
        provider, clocks = Provider(key, cache_control=cache_control), Clocks()

        async def scenario(
            v: OidcVerifier, provider: Provider = provider, clocks: Clocks = clocks, lifetime: float = lifetime
        ) -> None:
            await v.verify(token(key))
            clocks.advance(lifetime - 0.5)
            await v.verify(token(key))
            assert provider.fetches == 1
            clocks.advance(1)
            await v.verify(token(key))
            assert provider.fetches == 2

        run(scenario, verifier(provider, clocks))


def test_concurrent_checks_share_one_fetch() -> None:
    key = rsa()
    provider = Provider(key)

    async def scenario(v: OidcVerifier) -> None:
        results = await asyncio.gather(*(v.verify(token(key)) for _ in range(20)))
        assert len(results) == 20 and provider.fetches == 1

    run(scenario, verifier(provider, Clocks()))


def test_a_provider_out_of_reach_is_unavailable_and_old_keys_keep_verifying() -> None:
    key, clocks = rsa(), Clocks()
    provider = Provider(key)
    provider.down = True

    async def scenario(v: OidcVerifier) -> None:
        with pytest.raises(ProviderUnavailable, match="cannot fetch the discovery document"):
            await v.verify(token(key))
        provider.down = False
        with pytest.raises(ProviderUnavailable):  # retried only after the refetch interval
            await v.verify(token(key))
        clocks.advance(10)
        await v.verify(token(key))
        provider.down = True
        clocks.advance(KEYS_TTL + 1)
        assert (await v.verify(token(key))).subject == "svc-1"  # stale keys, but keys
        # an unknown kid while the provider is down: unknown to us, not refused
        clocks.advance(10)
        with pytest.raises(ProviderUnavailable):
            await v.verify(token(rsa("k9"), kid="k9"))

    run(scenario, verifier(provider, clocks))


def test_a_provider_that_does_not_answer_in_time_is_unavailable() -> None:
    key = rsa()

    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200, json={})

    async def attempt() -> str:
        async with httpx.AsyncClient(transport=httpx.MockTransport(hang)) as client:
            check = OidcVerifier(ISSUER, AUDIENCE, client=client, fetch_timeout=0.2)
            with pytest.raises(ProviderUnavailable) as caught:
                await asyncio.wait_for(check.verify(token(key)), 5)
        return caught.value.message

    assert "did not answer within 0.2 s" in asyncio.run(attempt())


def test_a_real_closed_port_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    key = rsa()

    async def attempt() -> str:
        check = OidcVerifier(f"http://127.0.0.1:{port}", AUDIENCE)
        try:
            with pytest.raises(ProviderUnavailable) as caught:
                await check.verify(token(key))
        finally:
            await check.close()
        return caught.value.message

    assert f"127.0.0.1:{port}/.well-known/openid-configuration" in asyncio.run(attempt())


def test_the_discovery_issuer_must_be_ours_exactly_and_the_jwks_usable() -> None:
    key = rsa()
    other = Provider(key, issuer=ISSUER + "/")
    with pytest.raises(ProviderUnavailable, match="names the issuer"):
        run(lambda v: v.verify(token(key)), verifier(other, Clocks()))
    secret = OctKey.generate_key(256, parameters={"kid": "k1"})
    encryption = RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "enc"})
    with pytest.raises(ProviderUnavailable, match="no signature key"):
        run(lambda v: v.verify(token(key)), verifier(Provider(secret, encryption), Clocks()))


def test_oauth2_guard_challenges_refuses_and_caches_until_expiry() -> None:
    key = rsa()
    now = [0.0]
    guard = Guard("oauth2", 'my "gw"')
    assert guard.consumed_headers == frozenset({b"authorization"})

    async def scenario(check: OidcVerifier) -> None:
        auth = Authenticator(store=None, clock=lambda: now[0], oidc=check)
        missing = auth.decide(guard, [(b"X-V3io-Session-Key", b"x")])
        assert isinstance(missing, Refusal) and missing.status == 401
        assert missing.challenge == 'Bearer realm="my \\"gw\\""'
        bad = token(key, aud="https://other")
        pending = auth.decide(guard, [(b"Authorization", f"Bearer {bad}".encode())])
        assert isinstance(pending, Check)
        refusal = await auth.verify(pending)
        assert refusal is not None and refusal.status == 401 and bad not in refusal.message + refusal.challenge
        assert refusal.challenge.startswith('Bearer realm="my \\"gw\\"", error="invalid_token", error_description="')
        assert "audience" in refusal.challenge
        # a pass is believed for ttl (10 s), and never past exp: a token with 4 s left, for 4 s
        short = token(key, exp=int(NOW) + 4)
        headers = [(b"authorization", f"bearer {short}".encode())]
        first = auth.decide(guard, headers)
        assert isinstance(first, Check) and await auth.verify(first) is None
        now[0] = 3.9
        assert auth.decide(guard, headers) is None
        now[0] = 4.1
        assert isinstance(auth.decide(guard, headers), Check)
        # the provider's keys out of reach: 503, not 401
        provider.down = True
        async with httpx.AsyncClient(transport=httpx.MockTransport(provider)) as client:
            fresh = OidcVerifier(ISSUER, AUDIENCE, client=client, clock=lambda: clocks.wall)
            unreachable = await Authenticator(store=None, oidc=fresh).verify(first)
        assert unreachable is not None and unreachable.status == 503
        assert "cannot check the bearer token now" in unreachable.message

    provider, clocks = Provider(key), Clocks()
    run(scenario, verifier(provider, clocks))


def test_an_error_description_holds_no_quote_nor_control_character() -> None:
    challenge = bearer_challenge(Guard("oauth2", "gw"), 'the "token"\r\nX: y\\')
    assert challenge == 'Bearer realm="gw", error="invalid_token", error_description="the \'token\'\'\'X: y\'"'


@pytest.mark.parametrize(
    ("issuer", "audience", "problem"),
    [
        ("https://id.example.com", "a", None),
        ("http://127.0.0.1:9000/realm", "a", None),
        ("http://localhost:9000", "a", None),
        ("http://id.example.com", "a", "expected https"),
        ("id.example.com", "a", "expected the provider's issuer URL"),
        ("https://id.example.com?x=1", "a", "no query or fragment"),
        ("https://id.example.com", None, "needs --oidc-audience"),
        (None, "a", "give the issuer too"),
        (None, None, None),
    ],
)
def test_oidc_settings(issuer: str | None, audience: str | None, problem: str | None) -> None:
    found = oidc_settings_problem(issuer, audience)
    assert (found is None) if problem is None else (found is not None and problem in found), found
    if issuer is not None and problem is None:
        assert issuer_problem(issuer) is None


def test_an_oauth2_api_gateway_needs_the_servers_issuer() -> None:
    oauth2 = body(authenticationMode="oauth2")
    with pytest.raises(BadRequest, match="--oidc-issuer URL --oidc-audience A") as caught:
        checked_gateway(oauth2, path_name=None, project=None, current=None)
    assert caught.value.status_code == 400
    assert checked_gateway(oauth2, path_name=None, project=None, current=None, oidc_issuer=ISSUER).name == "gw"
