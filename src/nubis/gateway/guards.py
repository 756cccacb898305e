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
- `oauth2`: 501 "oauth2 is not supported yet" (the OIDC check is a later step of issue 9).

Only credentials that passed are cached; a wrong one is checked every time (in the worker thread
for a password). `decide` answers without awaiting whenever it can (no credentials, a cache hit);
only a `Check` needs `verify`.
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

    @property
    def consumed_headers(self) -> frozenset[bytes]:
        """The credential headers this guard checks, dropped before the request goes upstream."""
        if self.mode == BASIC_AUTH:
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
    """Credentials the cache could not vouch for: a PBKDF2 run or a token lookup decides."""

    guard: Guard
    #: the password (basicAuth) or the token (accessKey)
    secret: str
    #: the cache entry a pass creates
    key: str


class Authenticator:
    """The credential checks of one gateway process and their cache."""

    def __init__(
        self, store: TokenFinder, ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.clock = clock
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
            return self._cached(Check(guard, token, "token:" + hash_token(token)))
        if guard.mode == OAUTH2:
            return Refusal(501, f"API gateway {guard.realm}: authenticationMode oauth2 is not supported yet")
        return Refusal(500, f"API gateway {guard.realm} has an unknown authenticationMode {guard.mode!r}")

    async def verify(self, check: Check) -> Refusal | None:
        """Run the costly check; a pass is remembered for `ttl` seconds."""
        guard = check.guard
        if guard.mode == BASIC_AUTH:
            stored = guard.password_hash or ""
            passed = await asyncio.to_thread(verify_password, stored, check.secret)
            if not passed:
                return basic_refusal(guard)
        else:
            try:
                found = await self.store.find_token(check.key.removeprefix("token:"))
            except (NubisError, OSError) as exc:
                return Refusal(503, f"API gateway {guard.realm}: cannot check the access key now: {exc}")
            if found is None:
                return Refusal(401, f"API gateway {guard.realm}: the access key is not a valid API token")
        if len(self._passed) >= MAX_CACHED:
            self._passed.clear()
        self._passed[check.key] = self.clock() + self.ttl
        return None

    def _basic(self, guard: Guard, headers: list[tuple[bytes, bytes]]) -> Refusal | Check | None:
        pair = basic_credentials(headers)
        if pair is None or pair[0] != guard.username or not guard.password_hash:
            return basic_refusal(guard)
        digest = hashlib.sha256(f"{pair[0]}\0{pair[1]}\0{guard.password_hash}".encode()).hexdigest()
        return self._cached(Check(guard, pair[1], "basic:" + digest))

    def _cached(self, check: Check) -> Check | None:
        expires = self._passed.get(check.key)
        if expires is not None and self.clock() < expires:
            return None
        return check


def basic_refusal(guard: Guard) -> Refusal:
    realm = guard.realm.replace("\\", "\\\\").replace('"', '\\"')
    return Refusal(401, f"API gateway {guard.realm} needs a username and password", f'Basic realm="{realm}"')


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
    scheme, _, value = _header(headers, b"authorization").partition(b" ")
    token = value.strip() if scheme.lower() == b"bearer" else _header(headers, b"x-v3io-session-key")
    return token.decode("latin-1")
