"""A typed async client of the agent API (HTTP over the agent's Unix socket)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import httpx
import msgspec

from nubis.errors import TemporaryError
from nubis.platforms.base import DeployFailed, DeployTimeout, PlatformError
from nubis.platforms.local.agent_token import TokenAuth
from nubis.platforms.local.models import Deployment, FunctionState

#: seconds a DELETE may take: replicas drain in-flight events first
DELETE_TIMEOUT = 60.0
#: seconds a PUT may take: the agent validates and answers before any replica starts
APPLY_TIMEOUT = 10.0


class AgentUnavailable(PlatformError, TemporaryError):
    """Nothing answers on the agent's socket (or not in time): temporary, since the server's
    supervisor restarts a dead agent and a hung one may answer again."""


class AgentRequestError(PlatformError):
    """The agent refused a request; `status_code` is its HTTP status (permanent: it answered)."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class AgentClient:
    """`async with AgentClient(sock) as agent: await agent.apply(name, deployment)`."""

    def __init__(self, socket_path: Path | str, *, timeout: float = 30.0) -> None:
        self.socket_path = Path(socket_path)
        self._client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(self.socket_path)),
            base_url="http://nubis-agent",
            auth=TokenAuth(self.socket_path.parent),
            timeout=httpx.Timeout(timeout),
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- transport ----------------------------------------------------------------------------------
    def _unavailable(self, exc: Exception) -> AgentUnavailable:
        return AgentUnavailable(
            f"the local agent does not answer on {self.socket_path} ({exc or type(exc).__name__}); "
            "is `nubis agent` (or `nubis server`) running with this data dir?"
        )

    def _check_socket(self) -> None:
        if not self.socket_path.exists():
            raise AgentUnavailable(
                f"the local agent is not running: no socket at {self.socket_path}; "
                "start `nubis agent` (or `nubis server`) with this data dir"
            )

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        self._check_socket()
        try:
            return await self._client.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise self._unavailable(exc) from exc
        except httpx.TimeoutException as exc:
            raise AgentUnavailable(
                f"the local agent at {self.socket_path} did not answer {method} {path} in time ({exc})"
            ) from exc

    @staticmethod
    def _error(response: httpx.Response) -> AgentRequestError:
        try:
            message = str(response.json().get("error", response.text))
        except ValueError:
            message = response.text
        return AgentRequestError(
            f"agent: {response.request.method} {response.request.url.path}: {message}", response.status_code
        )

    async def _json(self, method: str, path: str, *, allow_404: bool = False, **kwargs: Any) -> Any:
        response = await self._request(method, path, **kwargs)
        if allow_404 and response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise self._error(response)
        return response.json()

    async def _state(self, method: str, path: str, kind: Any, **kwargs: Any) -> Any:
        """The agent's answer decoded as `kind` (None on 404), validated by msgspec."""
        response = await self._request(method, path, **kwargs)
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise self._error(response)
        try:
            return msgspec.json.decode(response.content, type=kind)
        except msgspec.ValidationError as exc:
            raise PlatformError(f"agent: {method} {path}: an answer this server cannot read ({exc})") from exc

    # -- API ----------------------------------------------------------------------------------------
    async def health(self) -> dict[str, Any]:
        return cast(dict[str, Any], await self._json("GET", "/healthz"))

    async def apply(self, name: str, deployment: Deployment | Mapping[str, Any]) -> FunctionState:
        """PUT the desired deployment; returns the observed state right after (usually `deploying`).
        The agent answers at once (the rollout runs in the background), so a hung one is given up on
        after `APPLY_TIMEOUT` s and the deploy retried."""
        body = deployment.to_json() if isinstance(deployment, Deployment) else dict(deployment)
        timeout = httpx.Timeout(APPLY_TIMEOUT)
        state = await self._state("PUT", f"/v1/functions/{name}", FunctionState, json=body, timeout=timeout)
        if state is None:
            raise AgentRequestError(f"agent: PUT /v1/functions/{name}: not found", 404)
        return cast(FunctionState, state)

    async def get(self, name: str) -> FunctionState | None:
        return cast(FunctionState | None, await self._state("GET", f"/v1/functions/{name}", FunctionState))

    async def list(self, timeout: float | None = None) -> dict[str, FunctionState]:
        extra: dict[str, Any] = {"timeout": httpx.Timeout(timeout)} if timeout is not None else {}
        listed = await self._state("GET", "/v1/functions", dict[str, FunctionState], **extra)
        return cast(dict[str, FunctionState], listed or {})

    async def delete(self, name: str) -> bool:
        """Drain and stop the function's replicas; False when the agent did not know it."""
        result = await self._json(
            "DELETE", f"/v1/functions/{name}", allow_404=True, timeout=httpx.Timeout(DELETE_TIMEOUT)
        )
        return result is not None

    async def logs(self, name: str, follow: bool = False, since: float | None = None) -> AsyncIterator[str]:
        """The function's captured output, line by line (with `follow`, until the caller stops)."""
        params: dict[str, str] = {}
        if follow:
            params["follow"] = "1"
        if since is not None:
            params["since"] = f"{since:g}"
        timeout = httpx.Timeout(30.0, read=None) if follow else None
        self._check_socket()
        try:
            async with self._client.stream(
                "GET",
                f"/v1/functions/{name}/logs",
                params=params,
                timeout=timeout or httpx.USE_CLIENT_DEFAULT,
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise self._error(response)
                async for line in response.aiter_lines():
                    yield line
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise self._unavailable(exc) from exc

    async def wait_ready(self, name: str, generation: int, timeout: float) -> FunctionState:
        """Wait for the agent's verdict on `generation`: its observed state once it serves.

        Raises `DeployFailed` when the generation failed (the previous one keeps serving) or was
        replaced by another PUT, `DeployTimeout` after `timeout` s.
        """
        deadline = time.monotonic() + timeout
        interval = 0.05
        while True:
            state = await self.get(name)
            if state is None:
                raise DeployFailed(f"function {name!r} is no longer deployed on the agent")
            if state.generation != generation:
                raise DeployFailed(f"generation {generation} of {name!r} was replaced by generation {state.generation}")
            if state.state != "deploying":
                if state.active_generation == generation and state.state != "failed":
                    return state
                if state.state == "failed":
                    raise DeployFailed(state.message)
            if time.monotonic() >= deadline:
                raise DeployTimeout(
                    f"generation {generation} of {name!r} was not ready within {timeout:g} s "
                    f"(agent says: {state.state}: {state.message})"
                )
            await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(interval * 1.5, 0.1)  # a local socket round trip is cheap; answer fast
