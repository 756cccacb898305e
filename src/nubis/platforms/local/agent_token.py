"""The agent socket's credential: a random token in `<data>/agent/agent.token` (mode 0600).

The socket itself is 0600 in a 0700 directory, but that stops only other users: any process of
the same user could deploy or delete functions through it, and functions run as that user. The
token is what the API server (and tests, and `nubis agent` clients) present; a function gets no
path to it in its environment and the tenancy issue will take the data dir out of its reach.
Every request needs it, `/healthz` included (it reveals the agent's pid).
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from collections.abc import Generator
from pathlib import Path

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN_FILE = "agent.token"


def token_path(agent_dir: Path) -> Path:
    return agent_dir / TOKEN_FILE


def ensure_token(agent_dir: Path) -> str:
    """The agent's token, created (0600, written once) when there is none yet."""
    path = token_path(agent_dir)
    existing = read_token(agent_dir)
    if existing:
        return existing
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    tmp.replace(path)
    return token


def read_token(agent_dir: Path) -> str | None:
    try:
        return token_path(agent_dir).read_text().strip() or None
    except OSError:
        return None


class TokenAuth(httpx.Auth):
    """Client side: `Authorization: Bearer <token>` read from the agent's dir (again after a 401:
    a new agent on a fresh data dir makes a new token)."""

    def __init__(self, agent_dir: Path) -> None:
        self.agent_dir = agent_dir
        self._token: str | None = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._token is None:
            self._token = read_token(self.agent_dir)
        if self._token:
            request.headers["Authorization"] = f"Bearer {self._token}"
        response = yield request
        if response.status_code == 401:
            fresh = read_token(self.agent_dir)
            if fresh and fresh != self._token:
                self._token = fresh
                request.headers["Authorization"] = f"Bearer {fresh}"
                yield request


class RequireToken:
    """Server side: answer 401 to any request without the agent's token."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        if hmac.compare_digest(given, self._expected):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": f"the agent's token is required (see {TOKEN_FILE} in the agent's directory)"})
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})
