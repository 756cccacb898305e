"""SASL OAUTHBEARER for `kafka-cluster` (`sasl.mechanism: OAUTHBEARER` with `sasl.oauth`): the
OAuth 2 client-credentials grant Nuclio uses (golang.org/x/oauth2/clientcredentials), as the
token provider aiokafka asks at each connection.

A token is reused until a minute before it expires (`expires_in`; an hour when the answer has
none), so reconnects do not each ask the identity provider. The client secret travels as HTTP
basic authentication (RFC 6749 §2.3.1, what the Go library tries first); errors name the token
URL and the status, never the secret.
"""

from __future__ import annotations

import asyncio
import time

import httpx
from aiokafka.abc import AbstractTokenProvider  # type: ignore[import-untyped]

from nubis.processor.triggers.brokers import BrokerUnavailable
from nubis.processor.triggers.kafka_security import OAuth
from nubis.redact import redacted

#: seconds before its expiry a token is replaced
EARLY = 60.0
#: seconds a token lives when the provider does not say
DEFAULT_LIFETIME = 3600.0
TIMEOUT = 10.0


class ClientCredentials(AbstractTokenProvider):  # type: ignore[misc]
    def __init__(self, oauth: OAuth) -> None:
        self.oauth = oauth
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        async with self._lock:
            if self._token is None or time.monotonic() >= self._expires:
                self._token, lifetime = await self._fetch()
                self._expires = time.monotonic() + max(0.0, lifetime - EARLY)
            return self._token

    async def _fetch(self) -> tuple[str, float]:
        form = {"grant_type": "client_credentials"}
        if self.oauth.scopes:
            form["scope"] = " ".join(self.oauth.scopes)
        url = self.oauth.token_url
        try:
            async with httpx.AsyncClient(timeout=TIMEOUT, trust_env=False) as client:
                answer = await client.post(url, data=form, auth=(self.oauth.client_id, self.oauth.client_secret))
        except httpx.HTTPError as exc:
            raise BrokerUnavailable(f"OAuth token endpoint {redacted(url)}: {type(exc).__name__}") from None
        if answer.status_code != 200:
            raise BrokerUnavailable(f"OAuth token endpoint {redacted(url)} answered {answer.status_code}")
        try:
            body = answer.json()
            token = body["access_token"]
            lifetime = float(body.get("expires_in") or DEFAULT_LIFETIME)
        except (ValueError, KeyError, TypeError):
            raise BrokerUnavailable(f"OAuth token endpoint {redacted(url)} sent no access_token") from None
        if not isinstance(token, str) or not token:
            raise BrokerUnavailable(f"OAuth token endpoint {redacted(url)} sent no access_token")
        return token, lifetime
