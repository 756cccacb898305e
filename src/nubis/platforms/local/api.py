"""The agent API (HTTP/1.1 on the agent's Unix socket, JSON bodies), as docs/control-plane.md pins it.

* `PUT /v1/functions/{name}`: desired deployment → 202 and the observed state (400 bad body,
  409 port of another function).
* `GET /v1/functions`: `{name: observed state}`; `GET /v1/functions/{name}`: one (404 unknown).
* `DELETE /v1/functions/{name}`: drains and stops every replica, removes its logs; answers when done.
* `GET /v1/functions/{name}/logs?follow=1&since=SECONDS`: captured output as text, lines of the
  last SECONDS seconds only when `since` is given; `follow` keeps streaming new lines.
* `GET /healthz`.

Every request carries the agent's token (`Authorization: Bearer …`, see `agent_token.py`): 401 without.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from nubis.platforms.local.agent_token import RequireToken
from nubis.platforms.local.models import AGENT_PROTOCOL, BadDeployment, PortConflict

if TYPE_CHECKING:
    from nubis.platforms.local.agent import Agent


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def encoded(body: Any, status: int = 200) -> Response:
    """A JSON response of msgspec Structs (the observed states of `models.py`)."""
    return Response(msgspec.json.encode(body), status_code=status, media_type="application/json")


def create_app(agent: Agent, token: str) -> Starlette:
    """The agent API; every request must carry `token` (see `agent_token.py`)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await agent.start()
        try:
            yield
        finally:
            await agent.stop()

    async def healthz(request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "pid": os.getpid(),
                "functions": len(agent.functions),
                "protocol": AGENT_PROTOCOL,
                "isolation": agent.isolation.report(None),
            }
        )

    async def list_functions(request: Request) -> Response:
        return encoded(agent.list())

    async def get_function(request: Request) -> Response:
        name = request.path_params["name"]
        state = agent.get(name)
        if state is None:
            return error(404, f"function {name!r} is not deployed here")
        return encoded(state)

    async def put_function(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            return error(400, f"the body is not JSON: {exc}")
        try:
            state = await agent.apply(name, body)
        except PortConflict as exc:
            return error(409, str(exc))
        except BadDeployment as exc:
            return error(400, str(exc))
        return encoded(state, status=202)

    async def delete_function(request: Request) -> Response:
        name = request.path_params["name"]
        if not await agent.delete(name):
            return error(404, f"function {name!r} is not deployed here")
        return JSONResponse({"name": name, "deleted": True})

    async def function_logs(request: Request) -> Response:
        name = request.path_params["name"]
        logs = agent.function_logs(name)
        if logs is None:
            return error(404, f"function {name!r} is not deployed here")
        follow = request.query_params.get("follow", "0").lower() in ("1", "true", "yes")
        since_text = request.query_params.get("since")
        cutoff: float | None = None
        if since_text not in (None, ""):
            try:
                since = float(since_text)
            except ValueError:
                since = -1.0
            if not since >= 0:
                return error(400, f"since: expected a number of seconds, found {since_text!r}")
            cutoff = time.time() - since
        if not follow:
            lines = await asyncio.to_thread(logs.read, cutoff)
            return PlainTextResponse("".join(lines))
        # subscribe and read in the same loop turn: no line is missed or sent twice
        queue = logs.follow()
        backlog = logs.read(cutoff)

        async def stream() -> AsyncIterator[str]:
            try:
                if backlog:
                    yield "".join(backlog)
                while True:
                    line = await queue.get()
                    if line is None:
                        return
                    lines = [line]
                    while not queue.empty():
                        more = queue.get_nowait()
                        if more is None:
                            yield "".join(lines)
                            return
                        lines.append(more)
                    yield "".join(lines)
            finally:
                logs.unfollow(queue)

        return StreamingResponse(stream(), media_type="text/plain; charset=utf-8")

    routes: list[Any] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/v1/functions", list_functions, methods=["GET"]),
        Route("/v1/functions/{name}", get_function, methods=["GET"]),
        Route("/v1/functions/{name}", put_function, methods=["PUT"]),
        Route("/v1/functions/{name}", delete_function, methods=["DELETE"]),
        Route("/v1/functions/{name}/logs", function_logs, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(RequireToken, token=token)
    return app
