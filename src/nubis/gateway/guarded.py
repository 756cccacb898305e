"""An exchange whose credentials need a costly check (a PBKDF2 run, a token lookup) before its
request may go to the upstream.

The check runs as a task; meanwhile the request's body is held as while an upstream connection
is being made (`Exchange.pending`). A pass starts the exchange as usual; a refusal is the
gateway's own answer (`refusal_answer`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from nubis.gateway import metrics
from nubis.gateway.exchange import Exchange
from nubis.gateway.guards import Authenticator, Check, Refusal
from nubis.gateway.heads import error_answer
from nubis.gateway.routes import Route

if TYPE_CHECKING:
    from nubis.gateway.proxy import ClientConnection


def refusal_answer(refusal: Refusal, request_id: bytes, keep_alive: bool, route: Route | None = None) -> bytes:
    """The whole answer of a refusal, with its `WWW-Authenticate` challenge when it has one; a
    401/403 counts as unauthorised in the route's metrics."""
    if route is not None and refusal.status in (401, 403):
        metrics.unauthorised(route)
    challenge = b"WWW-Authenticate: " + refusal.challenge.encode("latin-1") + b"\r\n" if refusal.challenge else b""
    return error_answer(refusal.status, refusal.message, request_id, keep_alive, headers=challenge)


class GuardedExchange(Exchange):
    __slots__ = ("authenticator", "check")

    def __init__(self, conn: ClientConnection, *args: Any, check: Check, authenticator: Authenticator, **kwargs: Any):
        super().__init__(conn, *args, **kwargs)
        self.check = check
        self.authenticator = authenticator

    def start(self) -> None:
        task = asyncio.ensure_future(self._verify())
        self.conn.tasks.add(task)
        task.add_done_callback(self.conn.tasks.discard)

    async def _verify(self) -> None:
        refusal = await self.authenticator.verify(self.check)
        if self.response_done or self.conn.closed:
            return
        if refusal is None:
            super().start()
        else:
            answer = refusal_answer(refusal, self.request_id, self.keep_alive, self.route)
            self._answer_locally(refusal.status, answer)
