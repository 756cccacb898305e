"""Pydantic models of what the API reads and answers, beside the function configuration's own.

They exist for the OpenAPI document (`openapi.py` turns them into JSON Schema): a client
generator, a fuzzer and the dashboard read the shapes from here. The routes themselves build plain
dicts (the shapes are Nuclio's, NUCLIO.md §4.3); `tests/integration/test_openapi_conformance.py`
checks every answer against these schemas, so a route that drifts from them fails there.

Objects the server may grow keep `extra="allow"` (Nuclio adds fields between versions, and clients
must ignore what they do not know); request bodies are as lenient as the routes that read them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from nubis.auth.cert_rules import DEFAULT_DAYS, MAX_DAYS
from nubis.control.api.function_objects import PROVISIONING_STATES, TERMINAL_STATES
from nubis.spec import FunctionConfig, Meta, Spec

#: Every state of `status.state`: a deploy is under way in the provisioning ones.
_STATES: list[JsonValue] = [*sorted(PROVISIONING_STATES | TERMINAL_STATES)]


class Open(BaseModel):
    """An answer object that may carry more keys than these in a later version."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ErrorBody(Open):
    """Nuclio's error answer; `errorStackTrace` is kept for clients that read it, never holds secrets."""

    error: str
    error_stack_trace: str = Field(default="", alias="errorStackTrace")


class LogRecord(Open):
    """One line of a deploy log: `time` in epoch milliseconds, as Nuclio's dashboard shows it."""

    time: float
    level: str
    message: str
    name: str = ""


class FunctionStatus(Open):
    state: str = Field(
        description="NUCLIO.md §1.8; while a deploy is under way, updates and deletes answer 412",
        json_schema_extra={"enum": _STATES},
    )
    message: str = ""
    logs: list[LogRecord] = Field(default_factory=list, description="the current generation's deploy log")
    http_port: int = Field(default=0, alias="httpPort")
    internal_invocation_urls: list[str] = Field(default_factory=list, alias="internalInvocationUrls")
    external_invocation_urls: list[str] = Field(default_factory=list, alias="externalInvocationUrls")
    replicas: int = 0
    observed_generation: int = Field(
        alias="observedGeneration", description="the generation the status describes (the last deploy that ended)"
    )


class FunctionMetadata(Meta):
    """`metadata` of a function as the API answers it: what the server sets is always there."""

    name: str
    namespace: str
    resource_version: str = Field(alias="resourceVersion")
    generation: int = Field(description="the spec's generation; a new one on every change of spec")


class FunctionObject(Open):
    metadata: FunctionMetadata
    spec: Spec
    status: FunctionStatus


class ExportedMetadata(Meta):
    name: str


class ExportedFunction(Open):
    """`?export=true`: no status, no namespace, trigger secrets blanked, and the `skip-build` /
    `skip-deploy` annotations, so that creating it again imports it without building."""

    metadata: ExportedMetadata
    spec: Spec


class NameAndVersion(Open):
    name: str = ""
    namespace: str = ""
    resource_version: str = Field(default="", alias="resourceVersion")


class DeleteBody(Open):
    """`DELETE /api/functions` and `/api/projects`: the name in `metadata` (Nuclio's shape)."""

    metadata: NameAndVersion = Field(default_factory=NameAndVersion)


class PatchBody(Open):
    desired_state: Literal["ready", "scaledToZero"] | None = Field(default=None, alias="desiredState")


class Replicas(Open):
    names: list[str]


class ArchiveUploaded(Open):
    path: str = Field(description="put this in spec.build.path of the function's create or update")
    sha256: str
    size: int


class ProjectMetadata(Open):
    name: str
    namespace: str
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class ProjectSpec(Open):
    description: str = ""
    owner: str = ""


class ProjectObject(Open):
    metadata: ProjectMetadata
    spec: ProjectSpec
    status: dict[str, Any]


class ProjectMetadataInput(Open):
    name: str = ""
    namespace: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class ProjectBody(Open):
    """Create/update body; the name may come from the path or `X-Nuclio-Project-Name` instead."""

    metadata: ProjectMetadataInput = Field(default_factory=ProjectMetadataInput)
    spec: ProjectSpec = Field(default_factory=ProjectSpec)


class ProjectImport(Open):
    """`POST /api/projects?import=true`: a project export; each function is stored as `imported`."""

    project: ProjectBody = Field(default_factory=ProjectBody)
    functions: dict[str, ExportedFunction] = Field(default_factory=dict)
    function_events: dict[str, Any] = Field(default_factory=dict, alias="functionEvents")
    api_gateways: dict[str, Any] = Field(default_factory=dict, alias="apiGateways")


class ProjectExport(Open):
    project: ProjectObject
    functions: dict[str, ExportedFunction]
    function_events: dict[str, Any] = Field(alias="functionEvents")
    api_gateways: dict[str, Any] = Field(alias="apiGateways")


class FailedImport(Open):
    function: str
    error: str


class ImportCount(Open):
    created_amount: int = Field(alias="createdAmount")
    failed_amount: int = Field(alias="failedAmount")


class FunctionImportCount(ImportCount):
    failed_functions: list[FailedImport] = Field(alias="failedFunctions")


class ImportResult(Open):
    function_import_result: FunctionImportCount = Field(alias="functionImportResult")
    function_event_import_result: ImportCount = Field(alias="functionEventImportResult")
    api_gateway_import_result: ImportCount = Field(alias="apiGatewayImportResult")


class DashboardVersion(Open):
    label: str = Field(description="the Nuclio dashboard version whose API is answered (MLRun semver-parses it)")
    git_commit: str = Field(alias="gitCommit")
    os: str
    arch: str


class Versions(Open):
    dashboard: DashboardVersion


class Addresses(Open):
    addresses: list[str] = Field(min_length=1)


class ExternalIPAddresses(Open):
    external_ip_addresses: Addresses = Field(alias="externalIPAddresses")


class NamespaceNames(Open):
    names: list[str]


class Namespaces(Open):
    namespaces: NamespaceNames


class FrontendSpec(Open):
    """What the dashboard UI reads at start-up (NUCLIO.md §4.3, Misc)."""

    external_ip_addresses: list[str] = Field(alias="externalIPAddresses")
    namespace: str
    platform_kind: str = Field(alias="platformKind")
    default_function_config: dict[str, Any] = Field(alias="defaultFunctionConfig")
    tunnel_address: str | None = Field(
        default=None,
        alias="tunnelAddress",
        description="Nubis: HOST:PORT of the gateway's mTLS tunnel (`nubis tunnel`), null when there is none",
    )


class RenderedTemplate(Open):
    rendered: dict[str, Any] = Field(description="a ready-to-deploy function configuration {metadata, spec}")


class RenderRequest(Open):
    name: str = ""
    template: str = Field(default="", description="another spelling of `name`")


class RenderAnswer(Open):
    function_config: dict[str, Any] = Field(alias="functionConfig")


class GatewayFunction(Open):
    name: str = Field(default="", description="the function requests are routed to")


class GatewayUpstream(Open):
    kind: str = Field(default="nucliofunction", json_schema_extra={"enum": ["nucliofunction"]})
    nucliofunction: GatewayFunction = Field(default_factory=GatewayFunction)
    percentage: float = Field(default=0, description="on the canary upstream: its share of requests, 1-100")
    port: int = 0
    rewrite_target: str = Field(default="", alias="rewriteTarget")


class GatewayBasicAuth(Open):
    username: str = ""
    password: str = Field(default="", description="write-only: answers show it masked")


class GatewayAuthentication(Open):
    basic_auth: GatewayBasicAuth | None = Field(default=None, alias="basicAuth")


class ApiGatewaySpec(Open):
    name: str = ""
    host: str = Field(default="", description="generated from the name and project when empty")
    path: str = ""
    description: str = ""
    authentication_mode: str = Field(
        default="", alias="authenticationMode", json_schema_extra={"examples": ["none", "basicAuth"]}
    )
    authentication: GatewayAuthentication = Field(default_factory=GatewayAuthentication)
    upstreams: list[GatewayUpstream] = Field(default_factory=list, description="1 or 2 (a primary and a canary)")


class ApiGatewayBody(Open):
    """Create/update body (NUCLIO.md §9): `metadata.name` and `spec.name` fill each other."""

    metadata: ProjectMetadataInput = Field(default_factory=ProjectMetadataInput)
    spec: ApiGatewaySpec = Field(default_factory=ApiGatewaySpec)


class ApiGatewayMetadata(ProjectMetadataInput):
    name: str
    creation_timestamp: str = Field(default="", alias="creationTimestamp")


class ApiGatewayStatus(Open):
    name: str = ""
    state: str = Field(json_schema_extra={"enum": ["", "waitingForProvisioning", "ready", "error"]})
    last_error: str = Field(default="", description="why the state is `error`")


class ApiGatewayObject(Open):
    """An API gateway; `?export=true` leaves out `status`, the namespace and the timestamp."""

    metadata: ApiGatewayMetadata
    spec: ApiGatewaySpec
    status: ApiGatewayStatus | None = None


class CertRequest(Open):
    """`POST /api/certs`: a client certificate of the platform CA for the mTLS tunnel."""

    name: str = Field(
        default="",
        description="the certificate's CN (default: the caller's name)",
        pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$",
    )
    days: int = Field(default=DEFAULT_DAYS, ge=1, le=MAX_DAYS, description="how long it is valid")


class CertRecord(Open):
    name: str
    serial: str = Field(description="upper-case hex, as `openssl x509 -serial` prints it")
    not_before: str = Field(alias="notBefore", description="ISO 8601, UTC")
    not_after: str = Field(alias="notAfter", description="ISO 8601, UTC")
    revoked: bool
    revoked_at: str | None = Field(alias="revokedAt")


class IssuedCert(CertRecord):
    """The new certificate with its private key, answered once: the server does not keep the key."""

    certificate: str = Field(description="PEM: the tunnel's tls.crt")
    key: str = Field(description="PEM: the tunnel's tls.key")
    ca: str = Field(description="PEM: the platform CA's certificate (ca.crt), to check the tunnel's server")


class ReplicaTriggerState(Open):
    state: str = Field(description="consuming, waiting (for its broker), connecting, stopped; cron: scheduled")
    message: str = ""
    counts: dict[str, int] = Field(default_factory=dict)


class TriggerState(ReplicaTriggerState):
    """One trigger over the function's replicas: `waiting` when any replica waits, counts summed."""

    kind: str
    replicas: dict[str, ReplicaTriggerState] = Field(default_factory=dict, description="by replica name")


class TriggerStates(Open):
    triggers: dict[str, TriggerState] = Field(description="by trigger name; HTTP triggers report nothing")


class FailedEventRecord(Open):
    """An event a message trigger gave up on (`nubis.failed_events`)."""

    id: str
    function: str
    trigger_kind: str
    trigger_name: str
    source: str = Field(description="the queue, stream or subject it came from")
    error: str = Field(description="why its last attempt failed")
    attempts: int
    event: dict[str, Any] = Field(description="the event's fields; its body base64-encoded under `body`")
    failed_at: int = Field(description="epoch milliseconds of the last attempt")


class FailedEvents(Open):
    failed_events: list[FailedEventRecord] = Field(alias="failedEvents")


class ReplayRequest(Open):
    """Which failed events to hand back to the function's replicas."""

    ids: list[str] = Field(default_factory=list, description="event ids, as GET .../failed_events lists them")
    all: bool = Field(default=False, description="every failed event of the function")


class ReplayAnswer(Open):
    replayed: list[str] = Field(description="ids handed back: a replica takes each within about a second")
    missing: list[str] = Field(description="ids not found (already replayed, or never failed)")


class InvocationAccepted(Open):
    """The 202 of a request sent with `X-Nubis-Async: true` (its `Location` is /api/invocations/{id})."""

    id: str = Field(description="the invocation's id (a random UUID), also the event's id in the handler")


class InvocationResult(Open):
    """The last attempt's answer: the handler's, or the processor's own (a timeout, a lost worker)."""

    status: int
    content_type: str = ""
    headers: dict[str, Any] = Field(default_factory=dict)
    body: str = Field(default="", description="base64")
    error: str | None = Field(default=None, description="why the attempt failed; null when it did not")


class InvocationCallback(Open):
    """Where the result is POSTed once final (`X-Nubis-Callback-Url`), and how that went."""

    url: str = Field(description="scheme, host and path only (credentials and query hidden)")
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    status: int | None = None
    error: str | None = None


class InvocationRecord(Open):
    """An async invocation (`nubis.invocations`): its state, attempts, timings and result."""

    id: str
    function: str
    trigger: str
    state: Literal["pending", "running", "succeeded", "failed"]
    method: str
    path: str
    attempts: int
    max_attempts: int
    retention: float = Field(description="seconds the record is kept once final")
    accepted_at: int = Field(description="epoch milliseconds, as are the other times")
    started_at: int | None = None
    finished_at: int | None = None
    expires_at: int | None = None
    result: InvocationResult | None = None
    callback: InvocationCallback | None = None


class InvocationList(Open):
    invocations: list[InvocationRecord] = Field(description="newest accept first")


class TraceHop(Open):
    """One event handled by one function (`nubis.traces.Hop`), placed in its trace's tree."""

    trace_id: str
    event_id: str
    parent_id: str | None = Field(description="the event whose output this one is; null: where the trace began")
    function: str
    trigger_kind: str
    trigger_name: str
    source: str = Field(description="the topic, stream, queue or subject it came from; an HTTP path")
    outcome: str = Field(description="handled, handler error, timeout, worker lost, busy, shutting down, output failed")
    status: int
    started: int = Field(description="epoch milliseconds")
    duration_ms: float = Field(description="from the trigger's submission to its answer, publishing included")
    outputs: list[dict[str, Any]] = Field(description="what was published and confirmed: kind, name, destination, id")
    error: str | None = None
    depth: int = Field(description="0 where the trace began, one more per hop down the chain")


class EventTrace(Open):
    trace_id: str = Field(alias="traceId")
    hops: list[TraceHop] = Field(description="parents before children, siblings by start")
    truncated: bool = Field(False, description="true: the trace has more hops than the 10,000 answered")


#: Every model the document names in `components/schemas` (each one's JSON Schema `$defs` too).
COMPONENT_MODELS: tuple[type[BaseModel], ...] = (
    FunctionConfig,
    ErrorBody,
    FunctionObject,
    ExportedFunction,
    DeleteBody,
    PatchBody,
    Replicas,
    LogRecord,
    ArchiveUploaded,
    ProjectObject,
    ProjectBody,
    ProjectImport,
    ProjectExport,
    ImportResult,
    Versions,
    ExternalIPAddresses,
    Namespaces,
    FrontendSpec,
    RenderedTemplate,
    RenderRequest,
    RenderAnswer,
    ApiGatewayBody,
    ApiGatewayObject,
    CertRequest,
    CertRecord,
    IssuedCert,
    FailedEvents,
    TriggerStates,
    ReplayRequest,
    ReplayAnswer,
    EventTrace,
    InvocationAccepted,
    InvocationRecord,
    InvocationList,
)
