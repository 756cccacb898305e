"""The gateway's side of its `oauth2` mode: the verifier `--oidc-issuer`/`--oidc-audience` make.

The checks themselves (keys, rotation, claims) are `nubis.auth.jwt_verifier`'s, shared with the
control plane's OIDC login, so a token the API refuses is refused by the gateway too.
"""

from __future__ import annotations

from nubis.auth.jwt_verifier import DEFAULT_LEEWAY, OidcVerifier


def oidc_verifier(issuer: str | None, audience: str | None, leeway: int = DEFAULT_LEEWAY) -> OidcVerifier | None:
    """The gateway's verifier, None without an issuer (`oidc_settings_problem` checked the pair)."""
    return OidcVerifier(issuer, audience or "", leeway=leeway) if issuer else None
