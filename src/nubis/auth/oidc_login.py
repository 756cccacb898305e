"""OIDC users as principals: the gate's authenticator for bearer JWTs from the configured issuer.

A credential is this authenticator's kind when it looks like a JWT (three dot-separated parts, not
an API token's `nubis_` prefix) and its unverified `iss` is the configured issuer; any other JWT
(a workload identity, another provider's) is left to the other authenticators, and one that none
takes is a 401. For its own kind the verifier (`jwt_verifier.py`, the gateway's too) checks the
signature against the issuer's JWKS (following rotation), `iss`, `aud` (the client ids of the
server's login and of `nubis login --oidc`, and `--oidc-audience`), `exp`, `nbf` and `iat`; a
failure is a 401 that says which check failed, a provider out of reach a 503.

The claims become a `Principal(kind="oidc")`: named by `email`, else `preferred_username`, else
`sub`; its groups are the values of the roles claim (`--oidc-roles-claim`, default `groups`); its
grants come from the role map (`role_map.py`). No mapped grant: authenticated, allowed nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nubis.auth.gate import AuthenticationError
from nubis.auth.jwt_verifier import OidcVerifier, ProviderUnavailable, TokenRefused
from nubis.auth.oidc_flow import unverified_claims
from nubis.auth.principals import Principal
from nubis.auth.role_map import DEFAULT_ROLES_CLAIM, RoleMap, claim_value
from nubis.auth.tokens import TOKEN_PREFIX
from nubis.errors import ApiError

log = logging.getLogger("nubis.auth")

#: the claims a principal is named by, first present wins
NAME_CLAIMS = ("email", "preferred_username", "sub")


class LoginUnavailable(ApiError):
    """The issuer's keys or endpoints cannot be had now (503): the credential is neither accepted
    nor refused, and the same request may succeed later."""

    status_code = 503


def looks_like_jwt(credential: str) -> bool:
    return not credential.startswith(TOKEN_PREFIX) and credential.count(".") == 2


@dataclass(frozen=True)
class ClaimsMapping:
    """From an issuer's claims to a principal: the role map and the claim holding groups."""

    role_map: RoleMap = field(default_factory=RoleMap)
    roles_claim: str = DEFAULT_ROLES_CLAIM

    def principal(self, claims: Mapping[str, Any]) -> Principal:
        name = next((str(claims[c]) for c in NAME_CLAIMS if isinstance(claims.get(c), str) and claims[c]), "")
        found = claim_value(claims, self.roles_claim)
        groups = (found,) if isinstance(found, str) else tuple(str(g) for g in found or () if isinstance(g, str))
        return Principal(name or "(no subject)", "oidc", self.role_map.grants(claims), groups)


def no_grant_note(principal: Principal, roles_claim: str) -> str:
    """What a user with no grant is told (`/auth/session`, the login's log line)."""
    held = ", ".join(principal.groups) if principal.groups else "none"
    return (
        f"{principal.name} is logged in but the server's role map (--oidc-role-map) grants no role for "
        f"the {roles_claim} claim's values ({held}): every API call is refused or empty until an admin maps one"
    )


class OidcAuthenticator:
    """`nubis.auth.gate.Authenticator` for bearer JWTs of `verifier.issuer`."""

    def __init__(self, verifier: OidcVerifier, mapping: ClaimsMapping) -> None:
        self.verifier = verifier
        self.mapping = mapping

    async def principal(self, credential: str) -> Principal | None:
        if not looks_like_jwt(credential) or unverified_claims(credential).get("iss") != self.verifier.issuer:
            return None
        claims = await verified_claims(self.verifier, credential)
        return self.mapping.principal(claims)


async def verified_claims(verifier: OidcVerifier, token: str) -> Mapping[str, Any]:
    """The claims of a token `verifier` accepts; `AuthenticationError` (401) or `LoginUnavailable` (503)."""
    try:
        verified = await verifier.verify(token)
    except TokenRefused as exc:
        raise AuthenticationError(f"the OIDC token is refused: {exc.message}") from None
    except ProviderUnavailable as exc:
        raise LoginUnavailable(f"cannot check the OIDC token now: {exc.message}") from None
    return verified.claims
