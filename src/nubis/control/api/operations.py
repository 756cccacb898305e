"""What each API operation reads and answers, for the OpenAPI document (`openapi.py`).

The route table (`app.py`) says which paths and methods exist and their path parameters; this table
adds what the route table cannot know: the `X-Nuclio-*` headers and query parameters each handler
reads, its body, and the status codes it answers with their bodies (NUCLIO.md §4.2, §4.3). A unit
test checks the two tables name the same operations, so neither can gain one the other lacks.

Answers every operation can give (401, 403, 421, the head limits, 500, 503) are added by
`openapi.py`; an operation here lists only its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from nubis.control.api.site_guard import ARCHIVE_TYPES

JSON = "application/json"
TEXT = "text/plain"
#: Schema of a yes/no header or query parameter: the server takes `true` (any case) as yes.
TRUE_FALSE: dict[str, Any] = {"type": "string", "enum": ["true", "false"]}
#: Schema of a body that is anything at all (the function's own answer, relayed).
ANY_BYTES: dict[str, Any] = {"type": "string", "format": "binary"}


@dataclass(frozen=True)
class Param:
    """A header or query parameter; `schema` is its JSON Schema (a string unless said)."""

    name: str
    where: Literal["header", "query"]
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True)
class Answer:
    """One status code's answer: `model` names a component schema, else `schema` is inline;
    neither means an empty body."""

    description: str
    model: str | None = None
    schema: dict[str, Any] | None = None
    media: str = JSON
    headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Body:
    """The request body: a component `model`, or an inline `schema`, under each of `media`."""

    model: str | None = None
    schema: dict[str, Any] | None = None
    media: tuple[str, ...] = (JSON,)
    required: bool = True


@dataclass(frozen=True)
class Operation:
    summary: str
    answers: dict[int | str, Answer]
    params: tuple[Param, ...] = ()
    body: Body | None = None


def _flag(name: str, description: str) -> Param:
    return Param(name, "header", description + " (`true` to ask)", TRUE_FALSE)


def _error(description: str) -> Answer:
    return Answer(description, "ErrorBody")


def _ref(model: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model}"}


def _map_of(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": schema}


def _either(*models: str) -> dict[str, Any]:
    return {"anyOf": [_ref(m) for m in models]}


PROJECT = Param("X-Nuclio-Project-Name", "header", "the project: a filter on lists, the function's project on writes")
FUNCTION_FILTER = Param("X-Nuclio-Function-Name", "header", "list only this function")
NAMESPACE = Param("X-Nuclio-Function-Namespace", "header", "namespace of a new function (default: the server's)")
WAIT = _flag("X-Nuclio-Wait-Function-Action", "answer only once the deploy ended")
WAIT_TIMEOUT = Param(
    "X-Nuclio-Creation-State-Updated-Timeout", "header", "how long a waiting create/update waits, a Go duration"
)
EXPORT = Param(
    "export",
    "query",
    "`true`: the export form, to be created again elsewhere",
    TRUE_FALSE,
)
FUNCTION_BODY = Body("FunctionConfig")
BAD_REQUEST = _error("the request is malformed or the configuration invalid; the message names the field")
NOT_FOUND = _error("no such function or project")
CONFLICT = _error("the name exists, or resourceVersion does not match")
PRECONDITION = _error(
    "a deploy is under way, an API gateway routes to the function, or the project is missing, not empty, "
    "or the default one"
)
TOO_LARGE = _error("the body is larger than the server reads")
UNSUPPORTED = _error("the body's Content-Type is not what the operation reads")
ACCEPTED = Answer("accepted; the deploy runs in the background (poll the function for its state)")
NO_CONTENT = Answer("done")
LOG_QUERY = (
    Param("follow", "query", "keep the stream open for new lines", TRUE_FALSE),
    Param("since", "query", "only lines newer than this, a Go duration such as `5m`"),
    Param("tailLines", "query", "only the last N lines", {"type": "string", "pattern": "^[0-9]+$"}),
)
WRITE_ERRORS: dict[int | str, Answer] = {400: BAD_REQUEST, 413: TOO_LARGE, 415: UNSUPPORTED}
DEPLOY_ANSWERS: dict[int | str, Answer] = {202: ACCEPTED, 409: CONFLICT, 412: PRECONDITION, **WRITE_ERRORS}
DEPLOY_PARAMS = (PROJECT, NAMESPACE, WAIT, WAIT_TIMEOUT)
DELETE_ANSWERS: dict[int | str, Answer] = {204: NO_CONTENT, 409: CONFLICT, 412: PRECONDITION, **WRITE_ERRORS}
IGNORE_STATE = _flag("X-Nuclio-Delete-Function-Ignore-State-Validation", "delete even while a deploy is under way")
WITH_GATEWAYS = _flag(
    "X-Nuclio-Delete-Function-With-API-Gateways", "delete the API gateways routing to it too (else 412 while any does)"
)
ENRICH = _flag("X-Nuclio-Function-Enrich-Apigateways", "fill status.apiGateways with the API gateways routing to it")
LOGS = Operation(
    "The function's replica logs as text (?follow=true, ?since=, ?tailLines=)",
    {200: Answer("the log lines", schema={"type": "string"}, media=TEXT), 400: BAD_REQUEST, 404: NOT_FOUND},
    LOG_QUERY,
)
INVOKE_PARAMS = (
    Param("X-Nuclio-Function-Name", "header", "the function to invoke", required=True),
    Param("X-Nuclio-Path", "header", "the path to invoke at (else the path after /api/function_invocations)"),
    Param("X-Nuclio-Invoke-Url", "header", "one of the function's invocation URLs (default: the first)"),
    Param("X-Nuclio-Invoke-Timeout", "header", "how long to wait for the function's answer, a Go duration"),
    Param("X-Nuclio-Log-Level", "header", "ask for the function's logs of this event in X-Nuclio-Logs"),
    _flag("X-Nubis-Async", "run it later: answered 202 with its id, the result at /api/invocations/{id}"),
    Param("X-Nubis-Callback-Url", "header", "with X-Nubis-Async: an http(s) URL the result is POSTed to"),
)
INVOKE_ANSWERS: dict[int | str, Answer] = {
    202: Answer("X-Nubis-Async: stored, to be run", "InvocationAccepted", headers=("Location",)),
    400: _error("no function name, no invocation URL yet, an URL not the function's, or a bad timeout"),
    404: NOT_FOUND,
    502: _error("the function could not be reached"),
    504: _error("the function did not answer in time"),
    "default": Answer("the function's own answer, relayed (status, headers and body)", schema=ANY_BYTES, media="*/*"),
}


def _invoke(method: str) -> Operation:
    body = Body(schema=ANY_BYTES, media=("application/octet-stream",), required=False)
    return Operation(
        f"Invoke a function with {method}: the request goes to the function as sent, less credentials",
        INVOKE_ANSWERS,
        INVOKE_PARAMS,
        None if method in ("GET", "OPTIONS") else body,
    )


def _deploy(summary: str) -> Operation:
    """Create or update: the function's configuration in, 202 out (or wait for the deploy)."""
    return Operation(summary, DEPLOY_ANSWERS, DEPLOY_PARAMS, FUNCTION_BODY)


GATEWAY_NOT_FOUND = _error("no such API gateway")
GATEWAY_PRECONDITION = _error(
    "a reserved name, a missing project, host and path taken by another API gateway, or (when validated) "
    "a missing upstream function"
)
GATEWAY_PARAMS = (
    Param("X-Nuclio-Project-Name", "header", "the API gateway's project (default: the label, else default)"),
    Param("X-Nuclio-Api-Gateway-Namespace", "header", "namespace of a new API gateway (default: the server's)"),
    _flag("X-Nuclio-Agw-Validate-Functions-Existence", "refuse (412) upstream functions that do not exist"),
)


def _gateway_update(summary: str) -> Operation:
    answers: dict[int | str, Answer] = {204: NO_CONTENT, 404: GATEWAY_NOT_FOUND, 412: GATEWAY_PRECONDITION}
    return Operation(summary, {**answers, **WRITE_ERRORS}, GATEWAY_PARAMS, Body("ApiGatewayBody"))


_INVOKE_METHODS = ("DELETE", "GET", "OPTIONS", "PATCH", "POST", "PUT")

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("GET", "/api/functions"): Operation(
        "List functions, keyed by name (?export=true for the export form)",
        {200: Answer("functions by name", schema=_map_of(_either("FunctionObject", "ExportedFunction")))},
        (PROJECT, FUNCTION_FILTER, EXPORT, ENRICH),
    ),
    ("POST", "/api/functions"): _deploy(
        "Create a function; 202 once it is stored (state building), deployed in the background"
    ),
    ("DELETE", "/api/functions"): Operation(
        "Delete the function named in the body; 204, also when there is none",
        DELETE_ANSWERS,
        (IGNORE_STATE, WITH_GATEWAYS),
        Body("DeleteBody"),
    ),
    ("GET", "/api/functions/{name}"): Operation(
        "Get a function {metadata, spec, status}; status.logs is the current generation's deploy log",
        {200: Answer("the function", schema=_either("FunctionObject", "ExportedFunction")), 404: NOT_FOUND},
        (EXPORT, ENRICH),
    ),
    ("PUT", "/api/functions/{name}"): _deploy(
        "Replace a function's configuration (creates it if missing); 202, redeployed in the background"
    ),
    ("PATCH", "/api/functions/{name}"): Operation(
        "Set desiredState: ready redeploys (202); no desiredState changes nothing (204)",
        {202: ACCEPTED, 204: NO_CONTENT, 404: NOT_FOUND, 412: PRECONDITION, **WRITE_ERRORS},
        body=Body("PatchBody", required=False),
    ),
    ("DELETE", "/api/functions/{name}"): Operation(
        "Delete a function; 204, also when there is none",
        DELETE_ANSWERS,
        (IGNORE_STATE, WITH_GATEWAYS),
        Body("DeleteBody", required=False),
    ),
    ("GET", "/api/functions/{name}/replicas"): Operation(
        "Names of the function's replicas",
        {200: Answer("replica names", "Replicas"), 404: NOT_FOUND},
    ),
    ("GET", "/api/functions/{name}/triggers"): Operation(
        "Nubis extension: each trigger's state and counters as the function's replicas last reported them",
        {200: Answer("trigger states by name", "TriggerStates"), 404: NOT_FOUND},
    ),
    ("GET", "/api/metrics"): Operation(
        "Nubis extension: the message and cron triggers' counters, backlog and state, in Prometheus' text format",
        {200: Answer("Prometheus exposition", schema={"type": "string"}, media=TEXT)},
    ),
    ("GET", "/api/functions/{name}/failed_events"): Operation(
        "Nubis extension: the events the function's message triggers gave up on (no deadLetter of their own)",
        {200: Answer("failed events, oldest first", "FailedEvents"), 404: NOT_FOUND},
    ),
    ("POST", "/api/functions/{name}/failed_events/replay"): Operation(
        "Nubis extension: hand failed events back to the function's replicas, which run them again",
        {
            202: Answer("what was handed back", "ReplayAnswer"),
            **WRITE_ERRORS,
            400: _error("neither ids nor all, or ids not a list of strings"),
            404: NOT_FOUND,
        },
        body=Body("ReplayRequest"),
    ),
    ("GET", "/api/events/{event}/trace"): Operation(
        "Nubis extension: every hop of the trace holding this event, across functions, in causal order",
        {200: Answer("the trace", "EventTrace"), 404: _error("no recorded trace holds this event")},
    ),
    ("GET", "/api/functions/{name}/logs"): LOGS,
    ("GET", "/api/functions/{name}/logs/{replica}"): LOGS,
    ("GET", "/api/functions/{name}/deploy_logs"): Operation(
        "Nubis extension: the function's deploy logs of every kept generation, keyed by generation "
        "(?generation=N for one); status.logs holds the current generation's only",
        {
            200: Answer(
                "deploy log lines by generation",
                schema=_map_of({"type": "array", "items": _ref("LogRecord")}),
            ),
            400: BAD_REQUEST,
            404: NOT_FOUND,
        },
        (Param("generation", "query", "only this generation", {"type": "string", "pattern": "^[0-9]+$"}),),
    ),
    ("POST", "/api/function_archives"): Operation(
        "Nubis extension: upload a function directory as a .tar(.gz|.bz2|.xz) or .zip archive; "
        "put the answer's `path` in spec.build.path",
        {201: Answer("the archive was unpacked", "ArchiveUploaded"), **WRITE_ERRORS},
        (Param("X-Nuclio-Function-Name", "header", "the function the archive belongs to", required=True),),
        Body(schema={"type": "string", "format": "binary"}, media=tuple(sorted(ARCHIVE_TYPES))),
    ),
    **{(m, "/api/function_invocations"): _invoke(m) for m in _INVOKE_METHODS},
    **{(m, "/api/function_invocations/{path}"): _invoke(m) for m in _INVOKE_METHODS},
    ("GET", "/api/invocations"): Operation(
        "Nubis extension: a function's async invocations (X-Nubis-Async), newest first",
        {
            200: Answer("the invocations", "InvocationList"),
            400: _error("no ?function=, or a bad limit"),
            404: NOT_FOUND,
        },
        (
            Param("function", "query", "the function", required=True),
            Param("limit", "query", "at most this many (1-1000)", {"type": "string", "pattern": "^[0-9]+$"}),
        ),
    ),
    ("GET", "/api/invocations/{id}"): Operation(
        "Nubis extension: an async invocation's state (pending, running, succeeded, failed) and result",
        {
            200: Answer("the invocation", "InvocationRecord"),
            404: _error("no such invocation (or its result expired), or no such function"),
        },
        (
            Param("function", "query", "the invocation's function (else every function is looked in)"),
            Param("X-Nuclio-Project-Name", "header", "without ?function=: look in this project's functions only"),
        ),
    ),
    ("GET", "/api/function_templates"): Operation(
        "Deployable function templates, keyed by name",
        {200: Answer("templates by name", schema=_map_of(_ref("RenderedTemplate")))},
        (Param("X-Nuclio-Filter-Contains", "header", "only templates whose name or description holds this"),),
    ),
    ("POST", "/api/function_templates/render"): Operation(
        "Render a template into a function configuration",
        {200: Answer("the configuration", "RenderAnswer"), 404: _error("no such template"), **WRITE_ERRORS},
        body=Body("RenderRequest"),
    ),
    ("GET", "/api/projects"): Operation(
        "List projects, keyed by name (?export=true: each with its functions)",
        {200: Answer("projects by name", schema=_map_of(_either("ProjectObject", "ProjectExport")))},
        (Param("X-Nuclio-Project-Name", "header", "list only this project"), EXPORT),
    ),
    ("POST", "/api/projects"): Operation(
        "Create a project; 201 with the project (?import=true: import a project export)",
        {
            201: Answer("the project, or the import's result", schema=_either("ProjectObject", "ImportResult")),
            409: CONFLICT,
            **WRITE_ERRORS,
        },
        (
            Param("X-Nuclio-Project-Name", "header", "the project's name when the body has none"),
            Param("import", "query", "`true`: the body is a project export", TRUE_FALSE),
        ),
        Body(schema=_either("ProjectBody", "ProjectImport")),
    ),
    ("PUT", "/api/projects"): Operation(
        "Create or update the project named in the body or header (deprecated form MLRun uses); 204",
        {204: Answer("done", headers=("Deprecation",)), **WRITE_ERRORS},
        (Param("X-Nuclio-Project-Name", "header", "the project's name when the body has none"),),
        Body("ProjectBody"),
    ),
    ("DELETE", "/api/projects"): Operation(
        "Delete the project named in the body or header; 204",
        {204: NO_CONTENT, 404: NOT_FOUND, 412: PRECONDITION, **WRITE_ERRORS},
        (
            Param("X-Nuclio-Project-Name", "header", "the project's name when the body has none"),
            Param(
                "X-Nuclio-Delete-Project-Strategy",
                "header",
                "restricted (default): refuse while it has functions; cascading: delete them too; check: only check",
                {"type": "string", "enum": ["restricted", "cascading", "check"]},
            ),
        ),
        Body("DeleteBody", required=False),
    ),
    ("GET", "/api/projects/{name}"): Operation(
        "Get a project", {200: Answer("the project", "ProjectObject"), 404: NOT_FOUND}
    ),
    ("PUT", "/api/projects/{name}"): Operation(
        "Create or update a project; 204", {204: NO_CONTENT, **WRITE_ERRORS}, body=Body("ProjectBody")
    ),
    ("GET", "/api/api_gateways"): Operation(
        "List API gateways, keyed by name ({} when none; ?export=true: metadata and spec only)",
        {200: Answer("API gateways by name", schema=_map_of(_ref("ApiGatewayObject")))},
        (
            Param("X-Nuclio-Project-Name", "header", "list only this project's API gateways"),
            Param("X-Nuclio-Function-Name", "header", "list only API gateways routing to this function"),
            EXPORT,
        ),
    ),
    ("POST", "/api/api_gateways"): Operation(
        "Create an API gateway; 201 with it (state waitingForProvisioning, then ready or error)",
        {201: Answer("the API gateway", "ApiGatewayObject"), 409: CONFLICT, 412: GATEWAY_PRECONDITION, **WRITE_ERRORS},
        GATEWAY_PARAMS,
        Body("ApiGatewayBody"),
    ),
    ("PUT", "/api/api_gateways"): _gateway_update("Replace the API gateway named in the body (the UI's form); 204"),
    ("DELETE", "/api/api_gateways"): Operation(
        "Delete the API gateway named in the body; 204",
        {204: NO_CONTENT, 404: GATEWAY_NOT_FOUND, **WRITE_ERRORS},
        body=Body("DeleteBody", required=False),
    ),
    ("GET", "/api/api_gateways/{name}"): Operation(
        "Get an API gateway (?export=true: metadata and spec only)",
        {200: Answer("the API gateway", "ApiGatewayObject"), 404: GATEWAY_NOT_FOUND},
        (EXPORT,),
    ),
    ("PUT", "/api/api_gateways/{name}"): _gateway_update(
        "Replace an API gateway's configuration; 204 (provisioned again in the background)"
    ),
    ("GET", "/api/versions"): Operation(
        "Versions; dashboard.label is the Nuclio API version answered", {200: Answer("versions", "Versions")}
    ),
    ("GET", "/api/external_ip_addresses"): Operation(
        "Addresses functions are reachable at (never empty)", {200: Answer("addresses", "ExternalIPAddresses")}
    ),
    ("GET", "/api/namespaces"): Operation("Namespaces", {200: Answer("namespaces", "Namespaces")}),
    ("GET", "/api/frontend_spec"): Operation(
        "What the dashboard UI reads at start-up", {200: Answer("the UI's settings", "FrontendSpec")}
    ),
    ("GET", "/api/certs"): Operation(
        "Nubis extension: the platform CA's issued client certificates, keyed by serial (never a key)",
        {200: Answer("certificates by serial", schema=_map_of(_ref("CertRecord")))},
    ),
    ("POST", "/api/certs"): Operation(
        "Nubis extension: issue a client certificate for the mTLS tunnel; its private key is answered once",
        {201: Answer("the certificate, its key and the CA's certificate", "IssuedCert"), **WRITE_ERRORS},
        body=Body("CertRequest", required=False),
    ),
    ("POST", "/api/certs/{serial}/revoke"): Operation(
        "Nubis extension: revoke a certificate (the tunnel refuses it from its next handshake); again: no change",
        {
            200: Answer("the revoked certificate's record", "CertRecord"),
            400: _error("the serial is not hexadecimal"),
            404: _error("no certificate of that serial was issued here"),
        },
    ),
    ("GET", "/api/openapi.json"): Operation(
        "This document", {200: Answer("the OpenAPI document", schema={"type": "object"})}
    ),
}
