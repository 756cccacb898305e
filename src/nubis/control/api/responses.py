"""JSON responses shaped like Nuclio's: a trailing newline, and errors as `{error, errorStackTrace}`."""

from __future__ import annotations

import math
from typing import Any

import msgspec
from starlette.responses import Response

from nubis.errors import ApiError, NubisError, SpecError, TemporaryError


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = msgspec.json.encode(data, enc_hook=str) + b"\n"
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def cached_json(body: bytes) -> Response:
    """An already-encoded JSON answer (see the functions list cache)."""
    return Response(body, status_code=200, media_type="application/json")


def empty(status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(b"", status_code=status, headers=headers)


#: Marks an error the API itself answered, so a client can tell it from a function's own answer
#: relayed by `/api/function_invocations`.
API_ERROR_HEADER = "X-Nubis-Api-Error"


def error_response(status: int, message: str, stack: str = "") -> Response:
    """Nuclio's error body. The stack trace field is kept (clients read it) but never holds secrets."""
    return json_response({"error": message, "errorStackTrace": stack}, status, {API_ERROR_HEADER: "true"})


def from_exception(exc: Exception) -> Response:
    """Map our error hierarchy onto status codes in one place.

    An `ApiError` answers its `status_code`, a `SpecError` 400, a `TemporaryError` 503 (with
    Retry-After when it knows the delay), any other `NubisError` 500, each with its message. An
    exception outside the hierarchy is a bug: 500 naming only its type, since its text or traceback
    may hold secrets (the caller logs it with the traceback).
    """
    if isinstance(exc, ApiError):
        return error_response(exc.status_code, exc.message)
    if isinstance(exc, SpecError):
        return error_response(400, exc.message)
    if isinstance(exc, TemporaryError):
        response = error_response(503, exc.message)
        if exc.delay is not None:
            response.headers["Retry-After"] = str(max(1, math.ceil(exc.delay)))
        return response
    if isinstance(exc, NubisError):
        return error_response(500, exc.message)
    return error_response(500, f"internal error: {type(exc).__name__}; the server's log has the details")
