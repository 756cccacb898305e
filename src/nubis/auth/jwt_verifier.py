"""Bearer JWTs checked against the platform's OIDC issuer: one verifier for the gateway's `oauth2`
API gateways and for the control plane's OIDC login (`oidc_login.py`), so both refuse the same tokens.

Keys: the discovery document `<issuer>/.well-known/openid-configuration` (its `issuer` must equal
the configured one character for character, OpenID Connect Discovery §4.3) names `jwks_uri`; the
JWKS is believed for its `Cache-Control: max-age` (KEYS_TTL without one, kept between
REFETCH_INTERVAL and a day). Rotation: a token whose `kid` the cached set lacks makes the keys be
fetched again, at most once per REFETCH_INTERVAL, so a flood of made-up kids costs the provider one
request every 10 s; a key the provider dropped stops verifying once the set is fetched again. A
failed refresh keeps the last keys serving (retried after REFETCH_INTERVAL); with no key for the
token the check is `ProviderUnavailable` (503), never a refusal of a token that may be good.

A token passes when its `alg` is an asymmetric one (RS*, PS*, ES*, EdDSA; never `none` nor HS*,
whatever the JWKS says) that its key allows (the key's own `alg`, else its type and curve), its
signature verifies (joserfc), `iss` is the issuer, `aud` is or contains the audience, `exp` is
present and not past, and `nbf`/`iat` are not in the future, each with `leeway` seconds of skew.

Checking is synchronous and short (an RSA-2048 verify takes ~50 µs), so it runs on the event loop;
only fetches await (httpx), one at a time: checks that need keys meanwhile wait for that fetch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from joserfc import jwk, jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
    SecurityWarning,
)

from nubis.auth.issuers import tls_or_loopback
from nubis.errors import PermanentError, TemporaryError

log = logging.getLogger("nubis.auth")

#: seconds between two fetches of the keys that an unknown `kid` may cause
REFETCH_INTERVAL = 10.0
#: seconds a JWKS is believed when its answer has no max-age, and the most it is believed
KEYS_TTL = 300.0
MAX_KEYS_TTL = 86_400.0
#: seconds of clock skew allowed on `exp`, `nbf` and `iat`
DEFAULT_LEEWAY = 30
#: seconds a fetch of the discovery document or the JWKS may take, and the most bytes either may have
FETCH_TIMEOUT = 5.0
MAX_DOCUMENT_BYTES = 1 << 20

_RSA_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_CURVE_ALGS = {
    "P-256": ("ES256",),
    "P-384": ("ES384",),
    "P-521": ("ES512",),
    "secp256k1": ("ES256K",),
    "Ed25519": ("Ed25519", "EdDSA"),
    "Ed448": ("Ed448", "EdDSA"),
}
ASYMMETRIC_ALGS = frozenset(_RSA_ALGS).union(*_CURVE_ALGS.values())
#: the algs a refusal names as the token gave them (any other value is not echoed)
_NAMED_ALGS = ASYMMETRIC_ALGS | {"none", "HS256", "HS384", "HS512"}
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)", re.IGNORECASE)


class TokenRefused(PermanentError):
    """The token fails a check (401 `invalid_token`); the message says which, never the token."""


class ProviderUnavailable(TemporaryError):
    """The issuer's keys cannot be had now (503): the token is neither accepted nor refused."""


@dataclass(frozen=True, slots=True)
class Verified:
    """What a token that passed says."""

    subject: str
    #: its `exp`, seconds since the epoch
    expires: float
    #: every claim of the token (the login maps `groups`, `email` and the like to a principal)
    claims: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str | None
    key: jwk.Key
    algs: frozenset[str]


class OidcVerifier:
    """The issuer's keys, cached, and the checks of one token."""

    def __init__(
        self,
        issuer: str,
        audience: str | Sequence[str],
        *,
        leeway: int = DEFAULT_LEEWAY,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        refetch_interval: float = REFETCH_INTERVAL,
        fetch_timeout: float = FETCH_TIMEOUT,
    ) -> None:
        self.issuer = issuer
        #: the audiences a token may name (any one of them in its `aud`)
        self.audiences = (audience,) if isinstance(audience, str) else tuple(dict.fromkeys(audience))
        self.audience = self.audiences[0] if self.audiences else ""
        self.leeway = leeway
        self.clock = clock
        self.monotonic = monotonic
        self.refetch_interval = refetch_interval
        self.fetch_timeout = fetch_timeout
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(timeout=fetch_timeout, follow_redirects=False)
        self._claims = jwt.JWTClaimsRegistry(
            now=lambda: int(self.clock()),
            leeway=leeway,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "values": list(self.audiences)},
            exp={"essential": True},
        )
        self._jwks_uri: str | None = None
        self._keys: tuple[_Key, ...] = ()
        #: (monotonic) until when the keys are believed, and when the last fetch began
        self._fresh_until = float("-inf")
        self._attempted = float("-inf")
        #: why the last fetch failed; None once one succeeded
        self._failure: str | None = None
        self._lock = asyncio.Lock()

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"

    async def close(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def verify(self, token: str) -> Verified:
        """The token's subject and expiry; `TokenRefused` or `ProviderUnavailable` otherwise."""
        try:
            header = jws.extract_compact(token.encode("ascii")).headers()
        except (JoseError, ValueError, TypeError):
            raise TokenRefused("the token is not a signed JWT (three base64url parts, a JSON header)") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ASYMMETRIC_ALGS:
            named = f"alg {alg}" if alg in _NAMED_ALGS else "its alg"
            raise TokenRefused(f"the token's {named} is refused: expected an asymmetric signature (RS, PS, ES, EdDSA)")
        if kid is not None and not isinstance(kid, str):
            raise TokenRefused("the token's kid is not a string")
        key = await self._key(kid, alg)
        try:
            if alg == "EdDSA":  # joserfc warns that RFC 9864 deprecates the name; providers still use it
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", SecurityWarning)
                    claims = jwt.decode(token, key.key, algorithms=[alg]).claims
            else:
                claims = jwt.decode(token, key.key, algorithms=[alg]).claims
        except BadSignatureError:
            raise TokenRefused("the token's signature does not verify with the issuer's key") from None
        except JoseError as exc:
            raise TokenRefused(f"the token is not a valid signed JWT ({exc.error or 'malformed'})") from None
        self._check_claims(claims)
        subject = claims.get("sub")
        return Verified(subject if isinstance(subject, str) else "", float(claims["exp"]), claims)

    def _check_claims(self, claims: dict[str, Any]) -> None:
        try:
            self._claims.validate(claims)
        except ExpiredTokenError:
            raise TokenRefused("the token has expired (exp)") from None
        except MissingClaimError as exc:  # the names are the essential claims above
            raise TokenRefused(f"the token has no {exc.claim} claim") from None
        except InvalidClaimError as exc:
            problems = {
                "iss": f"the token's issuer (iss) is not {self.issuer}",
                "aud": f"the token is not meant for audience {' or '.join(self.audiences)} (aud)",
                "nbf": "the token is not valid yet (nbf)",
                "iat": "the token was issued in the future (iat)",
            }
            raise TokenRefused(problems.get(exc.claim, f"the token's {exc.claim} claim is invalid")) from None

    async def _key(self, kid: str | None, alg: str) -> _Key:
        """The key that signed the token, fetching the keys when they are stale or lack its kid."""
        await self._fetch_if(lambda: self.monotonic() >= self._fresh_until)
        found = self._find(kid, alg)
        if found is None and kid is not None:  # perhaps rotated: one fetch per REFETCH_INTERVAL
            await self._fetch_if(
                lambda: self._find(kid, alg) is None and self.monotonic() - self._attempted >= self.refetch_interval
            )
            found = self._find(kid, alg)
        if found is None:
            if self._failure is not None:
                raise ProviderUnavailable(f"the issuer's keys cannot be had now: {self._failure}")
            if kid is None:
                raise TokenRefused("the token names no kid and the issuer has no single key for its alg")
            raise TokenRefused("the token is signed by a key the issuer does not publish (unknown kid)")
        if alg not in found.algs:
            raise TokenRefused(
                f"the token's alg {alg} does not fit its key (the key allows {', '.join(sorted(found.algs))})"
            )
        return found

    def _find(self, kid: str | None, alg: str) -> _Key | None:
        if kid is None:
            fitting = [key for key in self._keys if alg in key.algs]
            return fitting[0] if len(fitting) == 1 else None
        named = [key for key in self._keys if key.kid == kid]
        return next((key for key in named if alg in key.algs), named[0] if named else None)

    async def _fetch_if(self, due: Callable[[], bool]) -> None:
        """Fetch the keys when `due()`, asked again once no other fetch runs (it may have done it)."""
        if not due():
            return
        async with self._lock:
            if due():
                await self._fetch()

    async def _fetch(self) -> None:
        self._attempted = self.monotonic()
        try:
            if self._jwks_uri is None:
                self._jwks_uri = await self._discover()
            document, max_age = await self._get(self._jwks_uri, "JWKS")
            keys = _signing_keys(document)
            if not keys:
                raise ProviderUnavailable(f"the JWKS at {self._jwks_uri} has no signature key Nubis can use")
        except ProviderUnavailable as exc:
            if self._failure != exc.message:
                kept = f"; the {len(self._keys)} key(s) fetched before still verify" if self._keys else ""
                log.warning("OIDC issuer %s: %s%s", self.issuer, exc.message, kept)
            self._failure = exc.message
            self._jwks_uri = None  # discovered again next time: the provider may have moved its keys
            self._fresh_until = self.monotonic() + self.refetch_interval
            return
        if self._failure is not None or {k.kid for k in keys} != {k.kid for k in self._keys}:
            log.info("OIDC issuer %s: %d signing key(s): %s", self.issuer, len(keys), ", ".join(_kids(keys)))
        self._keys, self._failure = keys, None
        lifetime = KEYS_TTL if max_age is None else min(float(max_age), MAX_KEYS_TTL)
        self._fresh_until = self.monotonic() + max(lifetime, self.refetch_interval)

    async def _discover(self) -> str:
        url = self.discovery_url
        document, _ = await self._get(url, "discovery document")
        if document.get("issuer") != self.issuer:
            raise ProviderUnavailable(
                f"the discovery document {url} names the issuer {document.get('issuer')!r}, expected "
                f"{self.issuer!r} exactly (--oidc-issuer must be the provider's issuer as it writes it)"
            )
        uri = document.get("jwks_uri")
        if not isinstance(uri, str) or not tls_or_loopback(uri):
            raise ProviderUnavailable(f"the discovery document {url} has no https jwks_uri, found {uri!r}")
        return uri

    async def _get(self, url: str, what: str) -> tuple[dict[str, Any], int | None]:
        """The JSON object at `url` and the answer's max-age."""
        body = bytearray()
        try:
            # httpx's timeout bounds each step; this bounds the whole answer (a provider that trickles)
            async with (
                asyncio.timeout(self.fetch_timeout),
                self._client.stream("GET", url, headers={"Accept": "application/json"}) as answer,
            ):
                if answer.status_code != 200:
                    raise ProviderUnavailable(f"the {what} {url} answered {answer.status_code}")
                async for chunk in answer.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise ProviderUnavailable(f"the {what} {url} is over {MAX_DOCUMENT_BYTES} bytes")
                cache_control = answer.headers.get("cache-control", "")
        except TimeoutError:
            raise ProviderUnavailable(f"the {what} {url} did not answer within {self.fetch_timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"cannot fetch the {what} {url}: {exc or type(exc).__name__}") from None
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise ProviderUnavailable(f"the {what} {url} is not a JSON object")
        age = _MAX_AGE.search(cache_control)
        return document, int(age[1]) if age else (0 if "no-store" in cache_control.lower() else None)


def _signing_keys(document: dict[str, Any]) -> tuple[_Key, ...]:
    """The JWKS's public signature keys of an asymmetric type: `use` other than sig, `oct` keys and
    keys that do not import are left out (a JWKS may hold encryption keys too)."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise ProviderUnavailable("the JWKS has no keys list")
    keys = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        ops = entry.get("key_ops")
        if isinstance(ops, list) and "verify" not in ops:
            continue
        algs = _algorithms(entry)
        if not algs:
            continue
        try:
            key = jwk.import_key(entry)
        except (JoseError, ValueError, TypeError) as exc:
            log.warning("JWKS key %r does not import, left out: %s", entry.get("kid"), exc)
            continue
        kid = entry.get("kid")
        keys.append(_Key(kid if isinstance(kid, str) else None, key, algs))
    return tuple(keys)


def _algorithms(entry: dict[str, Any]) -> frozenset[str]:
    """The algs a JWK may verify: its own `alg` when it names one, else those of its type and curve."""
    kty = entry.get("kty")
    fitting = _RSA_ALGS if kty == "RSA" else _CURVE_ALGS.get(str(entry.get("crv")), ()) if kty in ("EC", "OKP") else ()
    alg = entry.get("alg")
    return frozenset(name for name in fitting if alg is None or name == alg)


def _kids(keys: tuple[_Key, ...]) -> list[str]:
    return [key.kid or "(no kid)" for key in keys]
