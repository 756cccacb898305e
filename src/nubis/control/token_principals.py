"""API tokens as principals: the gate's authenticator for `nubis_…` bearer tokens.

A token's scope becomes the principal's one grant; a revoked or expired token is refused at once
(the lookup reads the row on every call, so revocation needs no cache to expire). The principal's
name is the token's id and name (`ci@token-7`), never the token.
"""

from __future__ import annotations

from nubis.auth.gate import AuthenticationError
from nubis.auth.principals import ROLES, Grant, Principal, Role
from nubis.auth.tokens import TOKEN_PREFIX, hash_token
from nubis.store import Store, TokenRecord


class TokenAuthenticator:
    """`nubis.auth.gate.Authenticator` for API tokens kept (hashed) in the store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def principal(self, credential: str) -> Principal | None:
        if not credential.startswith(TOKEN_PREFIX) and credential.count(".") == 2:
            return None  # a JWT: the OIDC authenticator's
        record = await self.store.find_token(hash_token(credential))
        if record is None:
            raise AuthenticationError("the API token is not valid")
        refusal = record.refusal()
        if refusal is not None:
            raise AuthenticationError(refusal)
        return token_principal(record)


def token_principal(record: TokenRecord) -> Principal:
    role: Role = "viewer"
    for known in ROLES:
        if record.role == known:
            role = known
    # who acts is the token (its maker is in `nubis tokens list`): the id tells same-named ones apart
    name = f"{record.name}@token-{record.id}" if record.name else f"token-{record.id}"
    return Principal(name, "token", (Grant(role, record.tenant, record.project),))
