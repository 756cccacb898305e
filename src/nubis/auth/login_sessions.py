"""Browser sessions of the OIDC login: an opaque cookie, the session kept server-side, CSRF checks.

The cookie holds 32 random bytes and nothing else; the server keeps the session under the SHA-256
of that value, so whoever reads the session table (or a dump of it) cannot present a cookie. The
cookie is HttpOnly (no script reads it), SameSite=Lax (other sites' subrequests and form posts do
not carry it), Path=/, and Secure when the server is reached over TLS, where it is also named with
the `__Host-` prefix (browsers then refuse it from plain http or with a Domain).

A state-changing request (anything but GET, HEAD, OPTIONS) that the cookie authenticates must
carry the session's CSRF token in `X-CSRF-Token` (compared in constant time); else 403. The
dashboard reads the token from `GET /auth/session`; another site can neither read it (same-origin
policy) nor make a browser add the header to a cross-site request without a CORS preflight.

Where sessions live is `SessionStore`'s business; `MemorySessionStore` keeps them in this process
(bounded, each expiring): a restart of the server logs every browser out, and several servers do
not share them. A store in the state database fits the same interface.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from nubis.auth.gate import AuthorizationError
from nubis.auth.oidc_flow import random_token
from nubis.auth.principals import Principal

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "X-CSRF-Token"
COOKIE_NAME = "nubis_session"
SECURE_COOKIE_NAME = "__Host-nubis_session"
#: seconds a browser session lasts (the login's `--oidc-session-ttl` default)
DEFAULT_SESSION_TTL = 8 * 3600
#: most sessions a memory store holds; beyond, the one closest to its end is dropped
MAX_SESSIONS = 100_000


@dataclass(frozen=True)
class Session:
    """One logged-in browser. `csrf_token` and `id_token` are secrets: not in the repr."""

    principal: Principal
    #: seconds since the epoch
    expires: float
    csrf_token: str = field(repr=False)
    #: the ID token of the login, sent back to the provider as `id_token_hint` on logout
    id_token: str = field(default="", repr=False)


class SessionStore(Protocol):
    """Sessions by the SHA-256 (hex) of their cookie's value."""

    async def put(self, key: str, session: Session) -> None: ...

    async def get(self, key: str) -> Session | None: ...

    async def delete(self, key: str) -> Session | None: ...


class MemorySessionStore:
    """Sessions in this process's memory (see the module's docstring for what that means)."""

    def __init__(self, clock: Callable[[], float] = time.time, limit: int = MAX_SESSIONS) -> None:
        self.clock = clock
        self.limit = limit
        self._sessions: dict[str, Session] = {}

    async def put(self, key: str, session: Session) -> None:
        if len(self._sessions) >= self.limit:
            now = self.clock()
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
            if len(self._sessions) >= self.limit:
                del self._sessions[min(self._sessions, key=lambda k: self._sessions[k].expires)]
        self._sessions[key] = session

    async def get(self, key: str) -> Session | None:
        session = self._sessions.get(key)
        if session is not None and session.expires <= self.clock():
            del self._sessions[key]
            return None
        return session

    async def delete(self, key: str) -> Session | None:
        return self._sessions.pop(key, None)


def session_key(cookie: str) -> str:
    return hashlib.sha256(cookie.encode("utf-8", "surrogateescape")).hexdigest()


class CsrfRefused(AuthorizationError):
    """A state-changing request carried the session cookie without the session's CSRF token (403)."""


class CookieSessions:
    """`nubis.auth.gate.SessionAuthenticator`: opens, finds and ends sessions, and checks CSRF."""

    def __init__(
        self,
        store: SessionStore,
        *,
        secure: bool,
        ttl: float = DEFAULT_SESSION_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.secure = secure
        self.ttl = ttl
        self.clock = clock
        self.cookie_name = SECURE_COOKIE_NAME if secure else COOKIE_NAME

    async def open(self, principal: Principal, id_token: str = "") -> tuple[str, Session]:
        """A new session: the cookie's value (to set once) and the session."""
        cookie = random_token()
        session = Session(principal, self.clock() + self.ttl, random_token(), id_token)
        await self.store.put(session_key(cookie), session)
        return cookie, session

    async def find(self, cookie: str) -> Session | None:
        return await self.store.get(session_key(cookie))

    async def end(self, cookie: str) -> Session | None:
        return await self.store.delete(session_key(cookie))

    async def principal(self, cookie: str, method: str, headers: Mapping[str, str]) -> Principal | None:
        session = await self.find(cookie)
        if session is None:
            return None
        if method.upper() not in SAFE_METHODS:
            check_csrf(session, headers)
        return session.principal

    def cookie_attributes(self) -> dict[str, object]:
        """Starlette's `set_cookie` keywords for the session cookie."""
        return {"max_age": int(self.ttl), "path": "/", "secure": self.secure, "httponly": True, "samesite": "lax"}


def check_csrf(session: Session, headers: Mapping[str, str]) -> None:
    """Raise `CsrfRefused` unless `headers` carry the session's CSRF token."""
    given = headers.get(CSRF_HEADER) or headers.get(CSRF_HEADER.lower()) or ""
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), session.csrf_token.encode("ascii")):
        what = "a wrong" if given else "no"
        raise CsrfRefused(
            f"this request is authenticated by the session cookie and changes state, but carries {what} "
            f"{CSRF_HEADER} header: send the session's CSRF token (csrfToken of GET /auth/session) in it"
        )
