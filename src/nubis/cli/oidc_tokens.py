"""The CLI's saved OIDC login: its tokens in the config file (0600), refreshed when they expire.

`nubis login --oidc` saves the ID token as the API token (the API takes it as a bearer JWT, as
kubectl's OIDC login does), beside what refreshing needs: the issuer's token endpoint, the public
client id and the refresh token. Any command that finds the saved token expired (or within
REFRESH_MARGIN seconds of it) trades the refresh token for new tokens first and saves them; the
provider may rotate the refresh token, so the new one replaces the old.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nubis.auth.oidc_flow import LoginFailed, TokenSet, token_set, unverified_claims
from nubis.auth.tokens import write_secret_file
from nubis.cli.client import ClientError, config_path

#: seconds before its exp at which a saved token is refreshed
REFRESH_MARGIN = 30.0
HTTP_TIMEOUT = 30.0


@dataclass(frozen=True)
class SavedOidc:
    issuer: str
    client_id: str
    token_endpoint: str
    refresh_token: str | None = field(default=None, repr=False)


def save_oidc_login(url: str, tokens: TokenSet, saved: SavedOidc) -> Path:
    """The server URL, the ID token as API token, and what refreshing needs, in the config (0600)."""
    path = config_path()
    oidc = {"issuer": saved.issuer, "client_id": saved.client_id, "token_endpoint": saved.token_endpoint}
    if saved.refresh_token:
        oidc["refresh_token"] = saved.refresh_token
    data: dict[str, Any] = {"url": url, "token": tokens.id_token, "oidc": oidc}
    write_secret_file(path, json.dumps(data, indent=2))
    return path


def _load() -> tuple[dict[str, Any], SavedOidc | None]:
    try:
        data = json.loads(config_path().read_text())
    except (OSError, ValueError):
        return {}, None
    oidc = data.get("oidc") if isinstance(data, dict) else None
    if not isinstance(oidc, dict):
        return data if isinstance(data, dict) else {}, None
    try:
        saved = SavedOidc(
            str(oidc["issuer"]), str(oidc["client_id"]), str(oidc["token_endpoint"]), oidc.get("refresh_token")
        )
    except KeyError:
        return data, None
    return data, saved


def expired(token: str, now: float | None = None) -> bool:
    exp = unverified_claims(token).get("exp")
    return isinstance(exp, int | float) and exp - REFRESH_MARGIN <= (now or time.time())


def fresh_token(token: str) -> str:
    """`token`, or the refreshed one when it is the saved OIDC login's and has expired."""
    data, saved = _load()
    if saved is None or data.get("token") != token or not expired(token):
        return token
    if not saved.refresh_token:
        raise ClientError(f"the OIDC login at {saved.issuer} has expired: log in again with `nubis login --oidc`")
    import httpx

    form = {"grant_type": "refresh_token", "refresh_token": saved.refresh_token, "client_id": saved.client_id}
    try:
        answer = httpx.post(saved.token_endpoint, data=form, timeout=HTTP_TIMEOUT)
        tokens = token_set(answer.status_code, answer.content, "the refresh of your login")
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot refresh the OIDC login at {saved.token_endpoint}: {exc}") from None
    except LoginFailed as exc:
        raise ClientError(f"{exc.message}: log in again with `nubis login --oidc`") from None
    if tokens.id_token is None:
        raise ClientError("the provider's refresh gave no ID token: log in again with `nubis login --oidc`")
    renewed = SavedOidc(
        saved.issuer, saved.client_id, saved.token_endpoint, tokens.refresh_token or saved.refresh_token
    )
    save_oidc_login(str(data.get("url") or ""), tokens, renewed)
    return tokens.id_token
