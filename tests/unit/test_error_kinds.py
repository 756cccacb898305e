"""The error hierarchy split by what happens next (retry or not), and its one mapping onto API
answers: by status, 503 for a temporary error, and no exception text or traceback for a bug."""

from __future__ import annotations

import asyncio
import json
import logging
from types import SimpleNamespace

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from nubis.auth.gate import AuthenticationError, AuthorizationError, Gate
from nubis.control.api.gatekeeping import route
from nubis.control.api.responses import from_exception
from nubis.control.reconciler import RETRY_MAX_SECONDS, retry_delay
from nubis.errors import (
    ApiError,
    BuildError,
    NotFound,
    NubisError,
    PermanentError,
    SpecError,
    TemporaryError,
)
from nubis.platforms.base import DeployFailed, DeployTimeout, PlatformError
from nubis.platforms.local import AgentRequestError, AgentUnavailable
from nubis.platforms.local.models import BadDeployment, PortConflict


def test_an_unavailable_agent_is_a_temporary_platform_error() -> None:
    exc = AgentUnavailable("the local agent does not answer")
    assert isinstance(exc, PlatformError) and isinstance(exc, TemporaryError)
    assert exc.delay is None and exc.message == "the local agent does not answer"


@pytest.mark.parametrize(
    "exc",
    [
        DeployFailed("replica exited"),
        DeployTimeout("not ready within 90 s"),
        AgentRequestError("agent: PUT: port taken", 409),
        SpecError("bad", field="spec.handler"),
        BuildError("pip failed"),
        BadDeployment("port: expected an integer"),
        PortConflict("port: 8080 is the port of function 'a'"),
    ],
)
def test_everything_else_is_permanent(exc: NubisError) -> None:
    assert not isinstance(exc, TemporaryError)


def test_the_agents_validation_errors_joined_the_hierarchy_and_stay_value_errors() -> None:
    for exc in (BadDeployment("x"), PortConflict("y")):
        assert isinstance(exc, PermanentError) and isinstance(exc, NubisError) and isinstance(exc, ValueError)
    with pytest.raises(BadDeployment):
        raise PortConflict("port: 8080 is the port of function 'a'")


def test_the_auth_errors_carry_their_status() -> None:
    assert isinstance(AuthenticationError("no token"), ApiError)
    assert (AuthenticationError.status_code, AuthorizationError.status_code) == (401, 403)


def test_a_temporary_error_may_say_how_long_to_wait() -> None:
    assert TemporaryError("busy", delay=2.5).delay == 2.5


def test_retry_delays_double_up_to_the_cap_unless_the_error_knows_its_delay() -> None:
    exc = AgentUnavailable("gone")
    delays = [retry_delay(exc, attempt) for attempt in range(1, 9)]
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert delays == sorted(delays) and delays[-1] == RETRY_MAX_SECONDS
    assert retry_delay(TemporaryError("busy", delay=7), 5) == 7


def answer(exc: Exception) -> tuple[int, dict[str, str], dict[str, str]]:
    response = from_exception(exc)
    return response.status_code, json.loads(bytes(response.body)), dict(response.headers)


def test_errors_map_by_their_kind_and_status() -> None:
    expected = {"error": "Function f not found", "errorStackTrace": ""}
    assert answer(NotFound("Function f not found"))[:2] == (404, expected)
    assert answer(AuthorizationError("nope"))[0] == 403
    assert answer(SpecError("bad", field="spec.handler"))[0] == 400
    assert answer(DeployFailed("crashed"))[0] == 500
    status, body, headers = answer(AgentUnavailable("the local agent does not answer"))
    assert (status, body["error"]) == (503, "the local agent does not answer") and "retry-after" not in headers
    assert answer(TemporaryError("busy", delay=1.2))[2]["retry-after"] == "2"


def test_a_bug_answers_its_type_only() -> None:
    status, body, _ = answer(ValueError("password=hunter2"))
    assert status == 500 and "hunter2" not in json.dumps(body)
    assert body["error"].startswith("internal error: ValueError") and body["errorStackTrace"] == ""


def api_with(endpoint_error: Exception) -> Starlette:
    """A one-route app built through the real gate (anonymous allowed), whose route raises."""

    async def failing(_: Request) -> Response:
        raise endpoint_error

    app = Starlette(routes=[route("/boom", failing, ["GET"], "read")])
    app.state.control = control_with(Gate([], allow_anonymous=True))
    return app


class AuditTrail:
    """What the gate writes to the store's audit log, kept in a list."""

    def __init__(self) -> None:
        self.records: list[object] = []

    async def add_audit(self, record: object) -> None:
        self.records.append(record)


def control_with(gate: Gate) -> SimpleNamespace:
    return SimpleNamespace(gate=gate, settings=SimpleNamespace(namespace="nuclio"), store=AuditTrail())


def get(app: Starlette, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async def ask() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return await client.get(path, headers=headers)

    return asyncio.run(ask())


def test_an_unexpected_exception_in_a_route_is_logged_once_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="nubis.api"):
        response = get(api_with(KeyError("secret")), "/boom")
    assert response.status_code == 500 and "secret" not in response.text, response.text
    records = [r for r in caplog.records if r.name == "nubis.api"]
    assert len(records) == 1 and records[0].exc_info is not None, records
    assert "GET /boom" in records[0].getMessage()


def test_a_client_error_is_not_logged_and_a_server_side_one_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="nubis.api"):
        assert get(api_with(NotFound("Function f not found")), "/boom").status_code == 404
        assert not [r for r in caplog.records if r.name == "nubis.api"]
        assert get(api_with(AgentUnavailable("the agent is gone")), "/boom").status_code == 503
    records = [r for r in caplog.records if r.name == "nubis.api"]
    assert len(records) == 1 and records[0].exc_info is None and "the agent is gone" in records[0].getMessage()


def test_bad_credentials_answer_401_with_a_challenge() -> None:
    async def ok(_: Request) -> Response:
        return Response("ok")

    app = Starlette(routes=[route("/x", ok, ["GET"], "read")])
    app.state.control = control_with(Gate([]))
    response = get(app, "/x", {"Authorization": "Bearer wrong"})
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"] == "the API token is not valid"
    # a refused call is audited, without the credential
    (record,) = app.state.control.store.records
    assert record.outcome == "denied" and record.status == 401 and "wrong" not in repr(record)
