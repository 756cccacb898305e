"""Who may use an API gateway's route: Nuclio's `authenticationMode` checked at the gateway.

- `none`: everyone.
- `basicAuth`: `Authorization: Basic` with the gateway's username and password; else 401 with
  `WWW-Authenticate: Basic realm="<gateway>"`. The store keeps only a PBKDF2 hash (about 0.1 s to
  check), so a check runs in a worker thread, never on the event loop, and a pair that passed is
  remembered for `ttl` seconds (keyed by a SHA-256 of the pair and the stored hash: a new password
  makes the old entry useless; the clear password is never kept).
- `accessKey`: a Nubis API token, as `Authorization: Bearer <token>` or Iguazio's
  `X-V3io-Session-Key: <token>` (what Nuclio's `accessKey` mode reads on Iguazio); checked against
  the store's token hashes, a token that passed remembered for `ttl` seconds, so a revoked token
  stops working within `ttl` seconds.
- `oauth2`: `Authorization: Bearer <JWT>` from the platform's OIDC issuer (`nubis server
  --oidc-issuer URL --oidc-audience A`), checked by `nubis.auth.jwt_verifier.OidcVerifier`: signature with the
  issuer's published keys, `iss`, `aud`, `exp`, `nbf`/`iat`. No token: 401 with
  `WWW-Authenticate: Bearer realm="<gateway>"`; a token that fails a check: 401 with
  `error="invalid_token"` and an `error_description` naming the check (RFC 6750 §3); the
  issuer's keys out of reach: 503; a gateway process without an issuer: 503 naming
  `--oidc-issuer`. A token that passed is remembered until its `exp`, at most `ttl` seconds.

Only credentials that passed are cached; a wrong one is checked every time (in the worker thread
for a password). `decide` answers without awaiting whenever it can (no credentials, a cache hit);
only a `Check` needs `verify`. The credential headers a mode reads are consumed: the upstream
never sees them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from nubis.auth.jwt_verifier import OidcVerifier, ProviderUnavailable, TokenRefused
from nubis.auth.principals import ROLES, Grant, Principal
from nubis.auth.tokens import hash_token
from nubis.errors import NubisError
from nubis.store import verify_password

#: seconds a credential that passed is believed without a new check
DEFAULT_TTL = 10.0
#: remembered credentials at most; past it the cache starts afresh (a flood of distinct valid
#: credentials costs a re-check, never unbounded memory)
MAX_CACHED = 10_000

NONE, BASIC_AUTH, ACCESS_KEY, OAUTH2 = "none", "basicAuth", "accessKey", "oauth2"
#: the request headers each mode reads its credentials from
_BASIC_HEADERS = frozenset((b"authorization",))
_ACCESS_KEY_HEADERS = frozenset((b"authorization", b"x-v3io-session-key"))


class TokenFinder(Protocol):
    """The part of `Store` an access-key check reads."""

    async def find_token(self, token_hash: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class Guard:
    """How one API gateway is protected (`mode` is its `authenticationMode`)."""

    mode: str
    #: the gateway's name: the basic-auth realm and the messages' subject
    realm: str
    username: str = ""
    password_hash: str | None = None
    #: where the gateway's functions are: an access key (an API token) must be allowed to invoke there
    tenant: str = ""
    project: str = ""

    @property
    def consumed_headers(self) -> frozenset[bytes]:
        """The credential headers this guard checks, dropped before the request goes upstream."""
        if self.mode in (BASIC_AUTH, OAUTH2):
            return _BASIC_HEADERS
        if self.mode == ACCESS_KEY:
            return _ACCESS_KEY_HEADERS
        return frozenset()


@dataclass(frozen=True, slots=True)
class Refusal:
    """The gateway's own answer instead of the upstream's."""

    status: int
    message: str
    #: the `WWW-Authenticate` value of a 401, "" for none
    challenge: str = ""


@dataclass(frozen=True, slots=True)
class Check:
    """Credentials the cache could not vouch for: a PBKDF2 run, a token lookup or a JWT check decides."""

    guard: Guard
    #: the password (basicAuth), the token (accessKey) or the JWT (oauth2)
    secret: str
    #: the cache entry a pass creates
    key: str


class Authenticator:
    """The credential checks of one gateway process and their cache."""

    def __init__(
        self,
        store: TokenFinder,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
        oidc: OidcVerifier | None = None,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.clock = clock
        #: the platform's OIDC issuer, None when the gateway has none (oauth2 gateways answer 503)
        self.oidc = oidc
        self._passed: dict[str, float] = {}

    def decide(self, guard: Guard | None, headers: list[tuple[bytes, bytes]]) -> Refusal | Check | None:
        """None: let it through; a `Refusal`: answer it; a `Check`: `verify` decides."""
        if guard is None or guard.mode == NONE:
            return None
        if guard.mode == BASIC_AUTH:
            return self._basic(guard, headers)
        if guard.mode == ACCESS_KEY:
            token = bearer_token(headers)
            if not token:
                return Refusal(401, f"API gateway {guard.realm} needs an access key: Authorization: Bearer <token>")
            # the gateway is part of the key: a token let through one gateway is checked again at another
            return self._cached(Check(guard, token, f"token:{hash_token(token)}@{guard.realm}"))
        if guard.mode == OAUTH2:
            return self._bearer_jwt(guard, headers)
        return Refusal(500, f"API gateway {guard.realm} has an unknown authenticationMode {guard.mode!r}")

    async def verify(self, check: Check) -> Refusal | None:
        """Run the costly check; a pass is remembered for `ttl` seconds (a JWT: at most until its `exp`)."""
        outcome = await self._check(check)
        if isinstance(outcome, Refusal):
            return outcome
        if len(self._passed) >= MAX_CACHED:
            self._passed.clear()
        self._passed[check.key] = self.clock() + outcome
        return None

    async def _check(self, check: Check) -> Refusal | float:
        """A refusal, or the seconds a pass may be believed."""
        guard = check.guard
        if guard.mode == BASIC_AUTH:
            stored = guard.password_hash or ""
            passed = await asyncio.to_thread(verify_password, stored, check.secret)
            return self.ttl if passed else basic_refusal(guard)
        if guard.mode == OAUTH2 and self.oidc is not None:
            try:
                verified = await self.oidc.verify(check.secret)
            except TokenRefused as exc:
                return Refusal(401, f"API gateway {guard.realm}: {exc.message}", bearer_challenge(guard, exc.message))
            except ProviderUnavailable as exc:
                return Refusal(503, f"API gateway {guard.realm}: cannot check the bearer token now: {exc.message}")
            return min(self.ttl, verified.expires - self.oidc.clock())
        try:
            found = await self.store.find_token(check.key.removeprefix("token:").partition("@")[0])
        except (NubisError, OSError) as exc:
            return Refusal(503, f"API gateway {guard.realm}: cannot check the access key now: {exc}")
        if found is None:
            return Refusal(401, f"API gateway {guard.realm}: the access key is not a valid API token")
        refusal = found.refusal() if hasattr(found, "refusal") else None
        if refusal:
            return Refusal(401, f"API gateway {guard.realm}: {refusal}")
        if guard.tenant and not may_invoke(found, guard.tenant, guard.project or None):
            return Refusal(
                403, f"API gateway {guard.realm}: the access key may not invoke functions of tenant {guard.tenant}"
            )
        return self.ttl

    def _basic(self, guard: Guard, headers: list[tuple[bytes, bytes]]) -> Refusal | Check | None:
        pair = basic_credentials(headers)
        if pair is None or pair[0] != guard.username or not guard.password_hash:
            return basic_refusal(guard)
        digest = hashlib.sha256(f"{pair[0]}\0{pair[1]}\0{guard.password_hash}".encode()).hexdigest()
        return self._cached(Check(guard, pair[1], "basic:" + digest))

    def _bearer_jwt(self, guard: Guard, headers: list[tuple[bytes, bytes]]) -> Refusal | Check | None:
        if self.oidc is None:
            return Refusal(
                503,
                f"API gateway {guard.realm} uses oauth2, but the platform has no OIDC issuer: start nubis server "
                "with --oidc-issuer URL --oidc-audience A",
            )
        token = authorization_bearer(headers)
        if not token:
            message = f"API gateway {guard.realm} needs a token of {self.oidc.issuer}: Authorization: Bearer <JWT>"
            return Refusal(401, message, bearer_challenge(guard))
        return self._cached(Check(guard, token, "jwt:" + hash_token(token)))

    def _cached(self, check: Check) -> Check | None:
        expires = self._passed.get(check.key)
        if expires is not None and self.clock() < expires:
            return None
        return check


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def basic_refusal(guard: Guard) -> Refusal:
    return Refusal(
        401, f"API gateway {guard.realm} needs a username and password", f'Basic realm="{_quoted(guard.realm)}"'
    )


def bearer_challenge(guard: Guard, problem: str | None = None) -> str:
    """RFC 6750 §3: the realm alone when no token came, `invalid_token` and what failed otherwise
    (an error_description holds printable ASCII but `"` and `\\`)."""
    challenge = f'Bearer realm="{_quoted(guard.realm)}"'
    if problem is None:
        return challenge
    description = "".join(c if " " <= c <= "~" and c not in '"\\' else "'" for c in problem)
    return challenge + f', error="invalid_token", error_description="{description}"'


def _header(headers: list[tuple[bytes, bytes]], wanted: bytes) -> bytes:
    for name, value in headers:
        if name.lower() == wanted:
            return value.strip()
    return b""


def basic_credentials(headers: list[tuple[bytes, bytes]]) -> tuple[str, str] | None:
    """(username, password) of an `Authorization: Basic` header, None when absent or malformed."""
    scheme, _, value = _header(headers, b"authorization").partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, colon, password = decoded.partition(":")
    return (username, password) if colon else None


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str:
    """The token of `Authorization: Bearer`, else of `X-V3io-Session-Key`; "" when neither."""
    return authorization_bearer(headers) or _header(headers, b"x-v3io-session-key").decode("latin-1")


def authorization_bearer(headers: list[tuple[bytes, bytes]]) -> str:
    """The token of `Authorization: Bearer`, "" when there is none."""
    scheme, _, value = _header(headers, b"authorization").partition(b" ")
    return value.strip().decode("latin-1") if scheme.lower() == b"bearer" else ""


def may_invoke(token: Any, tenant: str, project: str | None) -> bool:
    """Whether an API token's scope (a role on a tenant, or a project of it) allows invoking there."""
    role = getattr(token, "role", "")
    if role not in ROLES:
        return False
    grant = Grant(role, str(getattr(token, "tenant", "")), getattr(token, "project", None))
    return Principal("access key", "token", (grant,)).may("invoke", tenant, project)
