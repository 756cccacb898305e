"""The replica's identity tokens: received from the agent over a pipe, renewed at the control plane.

The agent writes `{"tokens": {"<audience>": "<jwt>", ...}}` on a pipe whose read end the replica
inherits (`--identity-fd N`) and closes the write end before the replica runs, so the replica reads
to EOF and closes it before any zygote or worker exists: the tokens are in no file, no argv, no
environment. From then on `TokenKeeper.keep_renewing` asks `POST <control>/api/workload/token`
for a fresh token of each audience once 80 % of the current one's life has passed (the control
plane checks the current one and that the replica still runs). A renewal that fails is retried
with backoff; a replica whose control plane is down longer than a token lives keeps serving, and
only a new Vault login would then fail.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time

from nubis.auth.workload_spec import CONTROL_AUDIENCE, renew_in
from nubis.errors import PermanentError
from nubis.processor.workload.http import HttpError, JsonClient

log = logging.getLogger("nubis.processor")

TOKEN_PATH = "api/workload/token"
#: seconds between failed renewals: doubling from RETRY_FIRST up to RETRY_MAX
RETRY_FIRST, RETRY_MAX = 1.0, 30.0
#: the most bytes the agent's hand-over may have
MAX_HANDOFF = 64 * 1024


class IdentityError(PermanentError):
    """The replica got no usable identity token (the agent's hand-over, the control plane's answer)."""


def read_handoff(fd: int) -> dict[str, str]:
    """The tokens the agent wrote on `fd` (read to EOF, then closed), by audience."""
    chunks: list[bytes] = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            if sum(map(len, chunks)) > MAX_HANDOFF:
                raise IdentityError("the agent's identity hand-over is too long")
    except OSError as exc:
        raise IdentityError(f"cannot read the identity hand-over (fd {fd}): {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    try:
        tokens = json.loads(b"".join(chunks))["tokens"]
    except (ValueError, KeyError, TypeError):
        raise IdentityError("the agent's identity hand-over is not the JSON it should be") from None
    if not isinstance(tokens, dict) or not all(isinstance(v, str) for v in tokens.values()):
        raise IdentityError("the agent's identity hand-over holds no tokens")
    return {str(audience): token for audience, token in tokens.items()}


def lifetime(token: str) -> tuple[float, float]:
    """(iat, exp) of a token, read without checking it: the replica only schedules its renewal."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["iat"]), float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        raise IdentityError("an identity token without iat and exp") from None


class TokenKeeper:
    """The current token of each audience, renewed in the background while the replica runs."""

    def __init__(self, tokens: dict[str, str], control_url: str, *, ca_file: str | None = None) -> None:
        if CONTROL_AUDIENCE not in tokens:
            raise IdentityError(f"the agent handed over no token for the control plane ({CONTROL_AUDIENCE})")
        self._tokens = dict(tokens)
        self.control_url = control_url.rstrip("/")
        self.ca_file = ca_file
        #: renewals that succeeded (tests and the replica's log)
        self.renewals = 0

    def __repr__(self) -> str:
        return f"TokenKeeper(audiences={sorted(self._tokens)}, control_url={self.control_url!r})"

    def token(self, audience: str = CONTROL_AUDIENCE) -> str:
        try:
            return self._tokens[audience]
        except KeyError:
            raise IdentityError(f"the replica holds no identity token for audience {audience!r}") from None

    def client(self) -> JsonClient:
        """A client of the control plane's workload routes."""
        return JsonClient(self.control_url, ca_file=self.ca_file)

    async def renew(self, http: JsonClient, audience: str) -> None:
        """Trade the current control-plane token for a fresh token of `audience`."""
        try:
            answer = await http.request(
                "POST",
                TOKEN_PATH,
                body={"audience": audience},
                headers={"Authorization": f"Bearer {self._tokens[CONTROL_AUDIENCE]}"},
            )
        except HttpError as exc:
            raise IdentityError(f"the control plane does not answer: {exc}") from None
        if answer.status != 200:
            raise IdentityError(f"the control plane refused to renew the identity token ({answer.status})")
        try:
            token = answer.json().get("token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str):
            raise IdentityError("the control plane answered no token")
        self._tokens[audience] = token
        self.renewals += 1

    async def keep_renewing(self) -> None:
        """Renew every audience's token before it expires, until cancelled."""
        http = self.client()
        retry = RETRY_FIRST
        while True:
            due = min(renew_in(exp, iat) for iat, exp in map(lifetime, self._tokens.values()))
            await asyncio.sleep(due)
            now = time.time()
            try:
                # the control-plane token last: the other renewals are authorised with it
                for audience in sorted(self._tokens, key=lambda a: a == CONTROL_AUDIENCE):
                    iat, exp = lifetime(self._tokens[audience])
                    if renew_in(exp, iat, now) <= 0:
                        await self.renew(http, audience)
                retry = RETRY_FIRST
            except IdentityError as exc:
                log.warning("identity token renewal failed (retrying in %g s): %s", retry, exc.message)
                await asyncio.sleep(retry)
                retry = min(retry * 2, RETRY_MAX)
