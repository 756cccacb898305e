"""`TokensMixin`: the API token methods of `Store` (add, find, list, revoke, delete).

Only sha256 digests of tokens are stored (nubis.auth.tokens hashes them); `find_token` is on
every authenticated request's path, so it writes `last_used_at` at most once a minute. A token
carries its scope (a role on a tenant, or on one project of it) and may expire; revoking keeps the
row (so `nubis tokens list` and the audit log still name it) and the token stops working at once.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from nubis.errors import Conflict
from nubis.store.base import StoreBase, rowcount
from nubis.store.models import ApiTokenRow
from nubis.store.records import TokenRecord, utc_now

#: `find_token` writes `last_used_at` at most this often per token (a read stays a read).
TOKEN_TOUCH_INTERVAL = timedelta(seconds=60)


class TokensMixin(StoreBase):
    async def add_token(
        self,
        principal: str,
        token_hash: str,
        *,
        name: str = "",
        tenant: str = "*",
        project: str | None = None,
        role: str = "admin",
        expires_at: datetime | None = None,
    ) -> TokenRecord:
        """Store a token's sha256 hex digest for `principal`; `Conflict` if that hash exists."""
        async with self._session(f"add a token for {principal}", write=True) as session:
            if await session.scalar(select(ApiTokenRow.id).where(ApiTokenRow.token_hash == token_hash)):
                raise Conflict("Token already exists")
            row = ApiTokenRow(
                principal=principal,
                token_hash=token_hash,
                created_at=utc_now(),
                name=name,
                tenant=tenant,
                project=project,
                role=role,
                expires_at=expires_at,
            )
            try:
                async with session.begin_nested():
                    session.add(row)
            except IntegrityError:
                raise Conflict("Token already exists") from None
            return _token(row)

    async def find_token(self, token_hash: str) -> TokenRecord | None:
        """The token with this hash, its `last_used_at` set to now (written at most once a minute)."""
        async with self._session("look up a token") as session:
            row = await session.scalar(select(ApiTokenRow).where(ApiTokenRow.token_hash == token_hash))
        if row is None:
            return None
        now = utc_now()
        if row.last_used_at is None or now - row.last_used_at >= TOKEN_TOUCH_INTERVAL:
            async with self._session("record a token's use", write=True) as session:
                await session.execute(update(ApiTokenRow).where(ApiTokenRow.id == row.id).values(last_used_at=now))
            row.last_used_at = now
        return _token(row)

    async def has_tokens(self) -> bool:
        async with self._session("count tokens") as session:
            return await session.scalar(select(ApiTokenRow.id).limit(1)) is not None

    async def list_tokens(self, tenant: str | None = None) -> list[TokenRecord]:
        """Every token, or those scoped to `tenant`."""
        query = select(ApiTokenRow).order_by(ApiTokenRow.id)
        if tenant is not None:
            query = query.where(ApiTokenRow.tenant == tenant)
        async with self._session("list tokens") as session:
            return [_token(row) for row in await session.scalars(query)]

    async def get_token(self, token_id: int) -> TokenRecord | None:
        async with self._session(f"read token {token_id}") as session:
            row = await session.get(ApiTokenRow, token_id)
            return _token(row) if row else None

    async def revoke_token(self, token_id: int) -> TokenRecord | None:
        """Mark the token revoked (it stops working at once); None if there is no such token."""
        async with self._session(f"revoke token {token_id}", write=True) as session:
            row = await session.get(ApiTokenRow, token_id, with_for_update=True)
            if row is None:
                return None
            if row.revoked_at is None:
                row.revoked_at = utc_now()
            return _token(row)

    async def delete_token(self, token_id: int) -> bool:
        async with self._session(f"delete token {token_id}", write=True) as session:
            result = await session.execute(delete(ApiTokenRow).where(ApiTokenRow.id == token_id))
            return rowcount(result) > 0


def _token(row: ApiTokenRow) -> TokenRecord:
    return TokenRecord(
        id=row.id,
        principal=row.principal,
        token_hash=row.token_hash,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        name=row.name,
        tenant=row.tenant,
        project=row.project,
        role=row.role,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )
