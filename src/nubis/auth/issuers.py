"""What an OIDC issuer URL given to Nubis must look like (`--oidc-issuer`, server and gateway alike).

The issuer's discovery document names the keys that sign the tokens the gateway lets through, so
they must come over TLS: plain http is accepted only for a provider on this machine (loopback), as
in development and tests. OpenID Connect Discovery 1.0 §2 and §4.3: the issuer is an https URL with
no query or fragment, compared character for character with the `issuer` of the document and the
`iss` of each token.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def issuer_problem(issuer: str) -> str | None:
    """Why `issuer` cannot be an OIDC issuer for Nubis (expected and found), None when it can."""
    if _host(issuer) is None:
        return f"expected the provider's issuer URL, https://HOST[/PATH], found {issuer!r}"
    if "?" in issuer or "#" in issuer:
        return f"an issuer URL has no query or fragment, found {issuer!r}"
    if not tls_or_loopback(issuer):
        return f"expected https (the keys that sign tokens must come over TLS; http only on loopback), found {issuer!r}"
    return None


def tls_or_loopback(url: str) -> bool:
    """An https URL, or an http one to this machine."""
    host = _host(url)
    return host is not None and (url.startswith("https://") or (url.startswith("http://") and _loopback(host)))


def _host(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        return parts.hostname if parts.scheme in ("https", "http") else None
    except ValueError:
        return None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def oidc_settings_problem(issuer: str | None, audience: str | None) -> str | None:
    """What is wrong with `--oidc-issuer`/`--oidc-audience` as given together (None: nothing)."""
    if issuer is None:
        return "--oidc-audience is the audience of --oidc-issuer's tokens: give the issuer too" if audience else None
    problem = issuer_problem(issuer)
    if problem is not None:
        return f"--oidc-issuer: {problem}"
    if not audience:
        return "--oidc-issuer needs --oidc-audience: the audience (aud) the issuer's tokens must name for this platform"
    return None
