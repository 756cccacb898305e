"""Browser sessions and the pieces of the OIDC login that need no provider: CSRF, expiry, the
cookie's attributes, `next=` (no open redirect), which credentials are the OIDC authenticator's,
what the settings show, and what `oidc_login_problem` refuses."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nubis.auth.browser_login import safe_next
from nubis.auth.jwt_verifier import OidcVerifier
from nubis.auth.login_sessions import (
    COOKIE_NAME,
    SECURE_COOKIE_NAME,
    CookieSessions,
    CsrfRefused,
    MemorySessionStore,
    session_key,
)
from nubis.auth.oidc_flow import LoginFailed, TokenSet, pkce_pair, s256, token_set, unverified_claims
from nubis.auth.oidc_login import ClaimsMapping, OidcAuthenticator, looks_like_jwt
from nubis.auth.principals import Grant, Principal
from nubis.control.login import oidc_authenticators, oidc_login_problem
from nubis.control.settings import ServerSettings

ALICE = Principal("alice@a.test", "oidc", (Grant("developer", "tenant-a"),), ("team-a",))


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_needs_its_csrf_token_for_state_changing_methods() -> None:
    async def scenario() -> None:
        sessions = CookieSessions(MemorySessionStore(), secure=False)
        cookie, session = await sessions.open(ALICE, "id-token")
        assert await sessions.principal(cookie, "GET", {}) == ALICE
        assert await sessions.principal(cookie, "HEAD", {}) == ALICE
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            with pytest.raises(CsrfRefused, match="carries no X-CSRF-Token"):
                await sessions.principal(cookie, method, {})
            with pytest.raises(CsrfRefused, match="carries a wrong X-CSRF-Token"):
                await sessions.principal(cookie, method, {"x-csrf-token": session.csrf_token[:-1] + "x"})
            assert await sessions.principal(cookie, method, {"x-csrf-token": session.csrf_token}) == ALICE
        assert await sessions.principal("made-up", "GET", {}) is None
        await sessions.end(cookie)
        assert await sessions.principal(cookie, "GET", {}) is None

    asyncio.run(scenario())


def test_sessions_expire_are_kept_by_hash_and_bounded() -> None:
    async def scenario() -> None:
        clock = Clock()
        store = MemorySessionStore(clock, limit=3)
        sessions = CookieSessions(store, secure=True, ttl=60, clock=clock)
        cookie, session = await sessions.open(ALICE)
        assert session_key(cookie) in store._sessions and cookie not in store._sessions
        assert cookie not in repr(session) and session.csrf_token not in repr(session)
        clock.now += 59
        assert await sessions.find(cookie) is not None
        clock.now += 1
        assert await sessions.find(cookie) is None
        cookies = [(await sessions.open(ALICE))[0] for _ in range(4)]
        assert len(store._sessions) == 3 and await sessions.find(cookies[0]) is None
        assert await sessions.find(cookies[-1]) is not None

    asyncio.run(scenario())


def test_the_cookie_is_httponly_lax_and_secure_with_tls() -> None:
    plain = CookieSessions(MemorySessionStore(), secure=False, ttl=3600)
    tls = CookieSessions(MemorySessionStore(), secure=True)
    assert plain.cookie_name == COOKIE_NAME and tls.cookie_name == SECURE_COOKIE_NAME
    assert plain.cookie_attributes() == {
        "max_age": 3600,
        "path": "/",
        "secure": False,
        "httponly": True,
        "samesite": "lax",
    }
    assert tls.cookie_attributes()["secure"] is True


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("/projects?tenant=a#x", "/projects?tenant=a#x"),
        ("/", "/"),
        (None, "/"),
        ("", "/"),
        ("https://evil.example/", "/"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("\\\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("relative/path", "/"),
        ("/ok\r\nSet-Cookie: x=y", "/"),
        ("/\t/evil.example", "/"),
    ],
)
def test_next_is_a_path_of_this_server_only(given: str | None, kept: str) -> None:
    assert safe_next(given) == kept


def test_pkce_and_token_answers() -> None:
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128 and challenge == s256(verifier) and "=" not in challenge
    # RFC 7636 appendix B
    assert s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    tokens = token_set(200, b'{"id_token": "a.b.c", "refresh_token": "r-secret-1", "expires_in": 60}', "x", now=10)
    assert tokens == TokenSet("a.b.c", None, "r-secret-1", 70.0)
    assert "r-secret-1" not in repr(tokens) and "a.b.c" not in repr(tokens)
    with pytest.raises(LoginFailed, match="refused the exchange: invalid_grant: code used"):
        token_set(400, b'{"error": "invalid_grant", "error_description": "code used"}', "the exchange")
    with pytest.raises(LoginFailed, match="no JSON object"):
        token_set(502, b"<html>", "the exchange")
    assert unverified_claims("x.eyJpc3MiOiJodHRwczovL2EifQ.y") == {"iss": "https://a"}
    assert unverified_claims("nubis_abc") == {} and unverified_claims("a.!!.c") == {}


def test_the_authenticator_takes_only_jwts_of_its_issuer() -> None:
    async def scenario() -> None:
        verifier = OidcVerifier("https://id.example.com", ["nubis"])
        authenticator = OidcAuthenticator(verifier, ClaimsMapping())
        try:
            assert await authenticator.principal("nubis_abc.def.ghi") is None
            assert await authenticator.principal("opaque-token") is None
            foreign = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL290aGVyLmV4YW1wbGUifQ.sig"
            assert await authenticator.principal(foreign) is None  # another issuer's: the gate answers 401
        finally:
            await verifier.close()

    assert looks_like_jwt("a.b.c") and not looks_like_jwt("nubis_a.b.c") and not looks_like_jwt("a.b")
    asyncio.run(scenario())


def test_the_client_secret_never_shows_and_the_options_are_checked(tmp_path: Path) -> None:
    issuer = "https://id.example.com"
    settings = ServerSettings(oidc_issuer=issuer, oidc_client_id="nubis", oidc_client_secret="s3cret-value")
    assert "s3cret-value" not in repr(settings) and "s3cret-value" not in str(settings.model_dump())
    assert oidc_login_problem(settings) is None
    assert "give the issuer too" in str(oidc_login_problem(ServerSettings(oidc_client_id="nubis")))
    assert "needs --oidc-client-id" in str(oidc_login_problem(ServerSettings(oidc_issuer=issuer)))
    assert oidc_login_problem(ServerSettings(oidc_issuer=issuer, oidc_audience="api")) is None  # gateway only
    missing = ServerSettings(oidc_issuer=issuer, oidc_client_id="n", oidc_role_map=tmp_path / "none.yaml")
    assert "found no file" in str(oidc_login_problem(missing))
    bad = tmp_path / "roles.yaml"
    bad.write_text("mappings: [{value: a, tenant: t, role: boss}]")
    problem = oidc_login_problem(ServerSettings(oidc_issuer=issuer, oidc_client_id="n", oidc_role_map=bad))
    assert problem is not None and f"--oidc-role-map: {bad}: mappings[0].role" in problem and "'boss'" in problem
    wrong = ServerSettings(oidc_issuer=issuer, oidc_client_id="n", oidc_redirect_url="/auth/callback")
    assert "expected an absolute http(s) URL" in str(oidc_login_problem(wrong))


def test_without_a_login_there_is_only_the_config_route() -> None:
    authenticators, sessions, routes = oidc_authenticators(ServerSettings())
    assert authenticators == [] and sessions is None
    assert [getattr(route, "path", None) for route in routes] == ["/auth/config"]
    _, with_login, routes = oidc_authenticators(
        ServerSettings(oidc_issuer="https://id.example.com", oidc_client_id="n", tls_cert=Path("c"), tls_key=Path("k"))
    )
    assert with_login is not None and with_login.cookie_name == SECURE_COOKIE_NAME
    assert [getattr(route, "path", None) for route in routes] == [
        "/auth/config",
        "/auth/login",
        "/auth/callback",
        "/auth/logout",
        "/auth/session",
    ]
