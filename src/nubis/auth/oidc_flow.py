"""The relying party's side of OpenID Connect, without I/O: what the server's browser login and
`nubis login --oidc` both build and read (the server awaits httpx, the CLI does not).

- PKCE (RFC 7636): S256 only; the verifier is 64 random URL-safe characters.
- The provider's endpoints come from its discovery document, whose `issuer` must equal the
  configured one exactly (Discovery §4.3) and whose endpoints must be https (http on loopback).
- A token answer (RFC 6749 §5.1) becomes a `TokenSet`, whose repr shows no token; an error answer
  (§5.2) a `LoginFailed` with the provider's `error` and description, never a token or secret.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from nubis.auth.issuers import tls_or_loopback
from nubis.errors import PermanentError, TemporaryError

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_SCOPES = "openid email profile"


class LoginFailed(PermanentError):
    """The provider refused the login (or answered nonsense); the message says what it said."""


class ProviderUnreachable(TemporaryError):
    """The provider's discovery document or endpoint cannot be had now."""


def random_token(size: int = 32) -> str:
    """`size` random bytes, URL-safe text: states, nonces, session ids, CSRF tokens."""
    return secrets.token_urlsafe(size)


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, code_challenge) for `code_challenge_method=S256`."""
    verifier = secrets.token_urlsafe(48)
    return verifier, s256(verifier)


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class ProviderEndpoints:
    """What a login needs from the provider's discovery document."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    userinfo_endpoint: str | None = None
    end_session_endpoint: str | None = None
    device_authorization_endpoint: str | None = None
    #: RFC 9207: the provider adds `iss` to its authorization answers (checked when present anyway)
    sends_iss: bool = False

    @classmethod
    def from_discovery(cls, document: Mapping[str, Any], issuer: str, url: str) -> ProviderEndpoints:
        """Raises `ProviderUnreachable` when the document is not the issuer's or lacks an endpoint."""
        if document.get("issuer") != issuer:
            raise ProviderUnreachable(
                f"the discovery document {url} names the issuer {document.get('issuer')!r}, expected {issuer!r} exactly"
            )
        found = {name: _endpoint(document, name, url) for name in _ENDPOINTS}
        for required in ("authorization_endpoint", "token_endpoint"):
            if found[required] is None:
                raise ProviderUnreachable(f"the discovery document {url} has no https {required}")
        methods = document.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise ProviderUnreachable(f"the provider {issuer} does not support PKCE with S256 (found {methods!r})")
        return cls(
            issuer=issuer,
            authorization_endpoint=str(found["authorization_endpoint"]),
            token_endpoint=str(found["token_endpoint"]),
            userinfo_endpoint=found["userinfo_endpoint"],
            end_session_endpoint=found["end_session_endpoint"],
            device_authorization_endpoint=found["device_authorization_endpoint"],
            sends_iss=document.get("authorization_response_iss_parameter_supported") is True,
        )


_ENDPOINTS = (
    "authorization_endpoint",
    "token_endpoint",
    "userinfo_endpoint",
    "end_session_endpoint",
    "device_authorization_endpoint",
)


def _endpoint(document: Mapping[str, Any], name: str, url: str) -> str | None:
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not tls_or_loopback(value):
        raise ProviderUnreachable(f"the discovery document {url} names {name} {value!r}: expected an https URL")
    return value


def basic_auth(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: id and secret form-urlencoded, then HTTP basic auth."""
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def authorization_url(
    endpoints: ProviderEndpoints,
    *,
    client_id: str,
    redirect_uri: str,
    scope: str,
    state: str,
    nonce: str,
    challenge: str,
    extra: Mapping[str, str] | None = None,
) -> str:
    """The authorization request (code flow, PKCE S256) to send the browser to."""
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "nonce": nonce,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **(extra or {}),
    }
    separator = "&" if "?" in endpoints.authorization_endpoint else "?"
    return endpoints.authorization_endpoint + separator + urlencode(query)


@dataclass(frozen=True)
class TokenSet:
    """A token answer. The tokens are credentials: the repr names only which are present."""

    id_token: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    #: seconds since the epoch at which the access token expires (None: not said)
    expires_at: float | None = None

    def __repr__(self) -> str:
        present = [name for name in ("id_token", "access_token", "refresh_token") if getattr(self, name)]
        return f"TokenSet({', '.join(present) or 'empty'}, expires_at={self.expires_at})"


def token_set(status: int, body: bytes, what: str, now: float | None = None) -> TokenSet:
    """The provider's answer to a token request; `LoginFailed` for an error answer."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise LoginFailed(f"the provider answered {what} with HTTP {status} and no JSON object")
    if status != 200 or "error" in answer:
        raise LoginFailed(f"the provider refused {what}: {provider_error(answer, status)}")
    expires_in = answer.get("expires_in")
    expires_at = (now or time.time()) + float(expires_in) if isinstance(expires_in, int | float) else None

    def text(name: str) -> str | None:
        value = answer.get(name)
        return value if isinstance(value, str) and value else None

    return TokenSet(text("id_token"), text("access_token"), text("refresh_token"), expires_at)


def provider_error(answer: Mapping[str, Any], status: int | None = None) -> str:
    """`error: description` of an OAuth error answer (RFC 6749 §4.1.2.1, §5.2), quoted safely."""
    error = str(answer.get("error") or f"HTTP {status}")[:100]
    description = answer.get("error_description")
    return f"{error}: {str(description)[:300]}" if description else error


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, *not* verified: only to read where it comes from or when it expires
    (which issuer's verifier to ask, whether the CLI should refresh it). {} when it is no JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}
