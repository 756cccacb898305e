"""The OpenAPI document at `/api/openapi.json`, built from the route table so it never drifts.

Paths, methods and path parameters come from the Starlette routes; headers, query parameters,
bodies and answers from `operations.OPERATIONS`; every schema from the pydantic models (the
function configuration of `nubis.spec`, the API's own bodies in `schemas.py`), by reference under
`components/schemas`. `tests/integration/test_openapi_conformance.py` fuzzes a real server with
this document, so a route that answers anything it does not declare fails there.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from pydantic.json_schema import models_json_schema
from starlette.routing import Route

from nubis import __version__
from nubis.control.api import operations
from nubis.control.api.operations import Answer, Body, Operation, Param
from nubis.control.api.operations_access import ACCESS_OPERATIONS
from nubis.control.api.operations_secrets import SECRET_OPERATIONS
from nubis.control.api.responses import API_ERROR_HEADER
from nubis.control.api.schemas import COMPONENT_MODELS

#: every operation of the API: the Nuclio-shaped ones, the access ones and the secrets ones
OPERATIONS: dict[tuple[str, str], Operation] = {**operations.OPERATIONS, **ACCESS_OPERATIONS, **SECRET_OPERATIONS}

_REF = "#/components/schemas/{model}"
_PATH_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")

#: Answers any operation may give, besides its own (`operations.py`), under `components/responses`.
COMMON_ANSWERS: dict[int, tuple[str, Answer]] = {
    401: (
        "Unauthenticated",
        Answer("no credentials, or ones the server does not know", "ErrorBody", headers=("WWW-Authenticate",)),
    ),
    403: (
        "Forbidden",
        Answer("the token may not do this here, or a browser sent it for another web site", "ErrorBody"),
    ),
    408: ("HeadTimeout", Answer("the request head did not arrive in time", "ErrorBody")),
    414: ("UrlTooLong", Answer("the request URL is longer than the server reads", "ErrorBody")),
    421: ("MisdirectedRequest", Answer("the Host is not a name of this server (see --allowed-host)", "ErrorBody")),
    431: ("HeadTooLarge", Answer("the request head is larger than the server reads", "ErrorBody")),
    500: ("ServerError", Answer("the server failed; its log has the details", "ErrorBody")),
    503: (
        "Unavailable",
        Answer("a temporary failure, or too many connections; retry later", "ErrorBody", headers=("Retry-After",)),
    ),
}
#: Response headers the answers name, under `components/headers`: (description, always sent).
RESPONSE_HEADERS: dict[str, tuple[str, bool]] = {
    API_ERROR_HEADER: ("`true`: the API answered this error itself (not a function, through invocations)", False),
    "WWW-Authenticate": ("how to authenticate: a bearer token (or basic auth with the token as password)", True),
    "Deprecation": ("`true`: use PUT /api/projects/{name} instead", True),
    "Retry-After": ("seconds to wait before retrying, when the server knows", False),
    "Location": ("where the async invocation's state and result are read: /api/invocations/{id}", True),
}
_PATH_PARAM_TEXT = {
    "name": "the {kind}'s name",
    "project": "the project's name (in the request's tenant)",
    "replica": "one of the names GET /api/functions/{name}/replicas answers",
    "path": "the path to invoke the function at (X-Nuclio-Path wins when both are given)",
    "id": "an async invocation's id, as its 202 answered it",
    "event": "an event's id (its X-Nubis-Trace-Id, or a hop's event_id), `/` escaped or not",
}


def openapi_document(routes: list[Route]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        path = _PATH_PARAM.sub(r"{\1}", route.path)
        methods = route.methods or set()
        for method in sorted(methods):
            if method == "HEAD":
                continue  # HEAD is GET without the body
            operation = OPERATIONS[(method, path)]
            paths.setdefault(path, {})[method.lower()] = _operation(
                method, path, list(route.param_convertors), operation
            )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Nubis API (Nuclio dashboard API compatible)",
            "version": __version__,
            "description": "Nuclio's dashboard REST API (paths, X-Nuclio-* headers, JSON shapes) and Nubis extensions",
        },
        "paths": paths,
        "components": {
            "schemas": component_schemas(),
            "responses": {name: _answer(answer) for name, answer in COMMON_ANSWERS.values()},
            "headers": {
                name: {"description": text, "required": required, "schema": {"type": "string"}}
                for name, (text, required) in RESPONSE_HEADERS.items()
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic", "description": "any user name, the token as password"},
            },
        },
        "security": [{"bearer": []}, {"basic": []}],
    }


@functools.cache
def component_schemas() -> dict[str, Any]:
    """JSON Schema of every model the document names, each nested model under its own name."""
    _, top = models_json_schema([(model, "validation") for model in COMPONENT_MODELS], ref_template=_REF)
    return dict(sorted(top.get("$defs", {}).items()))


def _operation(method: str, path: str, path_params: list[str], operation: Operation) -> dict[str, Any]:
    kind = "project" if path.startswith("/api/projects") else "function"
    kind = "API gateway" if path.startswith("/api/api_gateways") else kind
    kind = "secret" if "/secrets" in path else kind
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "description": _PATH_PARAM_TEXT.get(name, name).format(kind=kind, name="{name}"),
            "schema": {"type": "string", "minLength": 1},
        }
        for name in path_params
    ]
    parameters += [_parameter(param) for param in operation.params]
    result: dict[str, Any] = {
        "operationId": re.sub(r"[^a-z0-9]+", "_", f"{method} {path}".lower()).strip("_"),
        "summary": operation.summary,
        "tags": [path.split("/")[2]],
        "parameters": parameters,
        "responses": _responses(operation.answers),
    }
    if operation.body is not None:
        result["requestBody"] = _body(operation.body)
    return result


def _parameter(param: Param) -> dict[str, Any]:
    return {
        "name": param.name,
        "in": param.where,
        "required": param.required,
        "description": param.description,
        "schema": param.schema,
    }


def _schema(model: str | None, schema: dict[str, Any] | None) -> dict[str, Any] | None:
    if model is not None:
        return {"$ref": _REF.format(model=model)}
    return schema


def _answer(answer: Answer) -> dict[str, Any]:
    result: dict[str, Any] = {"description": answer.description}
    schema = _schema(answer.model, answer.schema)
    if schema is not None:
        result["content"] = {answer.media: {"schema": schema}}
    names = (*answer.headers, API_ERROR_HEADER) if answer.model == "ErrorBody" else answer.headers
    if names:
        result["headers"] = {name: {"$ref": f"#/components/headers/{name}"} for name in names}
    return result


def _responses(answers: dict[int | str, Answer]) -> dict[str, Any]:
    """The operation's own answers, then the common ones by reference, in status order."""
    own = {str(status): _answer(answer) for status, answer in answers.items()}
    common = {str(status): {"$ref": f"#/components/responses/{name}"} for status, (name, _) in COMMON_ANSWERS.items()}
    merged = {**common, **own}
    return dict(sorted(merged.items(), key=lambda item: (not item[0].isdigit(), item[0])))


def _body(body: Body) -> dict[str, Any]:
    schema = _schema(body.model, body.schema)
    return {"required": body.required, "content": {media: {"schema": schema} for media in body.media}}
