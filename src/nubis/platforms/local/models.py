"""The JSON the agent API speaks: the desired deployment of a function and its observed state."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

import msgspec

from nubis.auth.workload_spec import WorkloadSpec
from nubis.errors import PermanentError, SpecError
from nubis.platforms.base import DEFAULT_TENANT
from nubis.platforms.status import FunctionStatus
from nubis.runtimes.base import Artifact
from nubis.runtimes.python.runtime import python_artifact
from nubis.runtimes.registry import get_default_registry
from nubis.spec import parse_config, validate_function_name

#: seconds a new generation may take to become ready when the deployment does not say
DEFAULT_READINESS_TIMEOUT = 60.0
#: The version of the agent's HTTP bodies; `/healthz` says it. A server that finds an agent of
#: another version running (left by the previous release) replaces it (agent_process.py). 2: the
#: deployment carries a runtime `artifact` instead of a `python` path. 3: it carries its `tenant`,
#: whose user or sandbox the agent runs it in (isolation.py); an agent of 2 would ignore it.
AGENT_PROTOCOL = 3
#: the most replicas one function may ask the local agent for
MAX_REPLICAS = 64


class BadDeployment(PermanentError, ValueError):
    """A PUT body the agent cannot run; the message names the field (still a `ValueError`, as
    validation errors of plain data are)."""


class PortConflict(BadDeployment):
    """Another function of the agent has the port."""


class Deployment(msgspec.Struct, frozen=True, kw_only=True):
    """One desired deployment of a function: the body of `PUT /v1/functions/{name}` and each
    `desired`/`active` record of desired.json, validated by msgspec (`from_json`).

    `artifact` is the runtime's, opaque here: the replica hands it to the runtime to start workers.
    """

    generation: Annotated[int, msgspec.Meta(ge=0)]
    config: dict[str, Any]
    function_dir: Annotated[str, msgspec.Meta(min_length=1)]
    artifact: Artifact
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)]
    replicas: Annotated[int, msgspec.Meta(ge=0, le=MAX_REPLICAS)]
    env: dict[str, str] = {}
    resources: dict[str, Any] = {}
    readiness_timeout: Annotated[float, msgspec.Meta(gt=0)] = DEFAULT_READINESS_TIMEOUT
    host: Annotated[str, msgspec.Meta(min_length=1)] = "127.0.0.1"
    #: the function's tenant (Nuclio namespace): with `users` isolation its replicas run as that
    #: tenant's Unix user (tenant_users.py)
    tenant: Annotated[str, msgspec.Meta(min_length=1, max_length=253)] = DEFAULT_TENANT
    #: the function's workload identity and secret sources (platforms/local/identity.py); None:
    #: its replicas get no identity token (an agent driven without a control plane)
    workload: WorkloadSpec | None = None
    #: the function's name: the path of the PUT, not part of its body
    name: str = ""

    def __post_init__(self) -> None:
        if not math.isfinite(self.readiness_timeout):
            raise ValueError("expected a finite number of seconds - at `$.readiness_timeout`")

    @classmethod
    def from_json(cls, name: str, data: Any, *, check_paths: bool = True) -> Deployment:
        """Validate a PUT body (or a desired.json record); raises `BadDeployment` naming the field.

        A record of a release before runtimes were pluggable (`python: PATH` instead of an
        artifact) is read as the Python runtime's artifact, so an upgraded agent adopts it.
        """
        try:
            validate_function_name(name, field="name")
        except SpecError as exc:
            raise BadDeployment(exc.message) from exc
        if not isinstance(data, dict):
            raise BadDeployment("the body must be a JSON object")
        data = dict(data, name=name)
        if "python" in data and "artifact" not in data:
            data["artifact"] = msgspec.to_builtins(python_artifact(data.pop("python")))
        try:
            deployment = msgspec.convert(data, cls)
        except msgspec.ValidationError as exc:
            raise _bad(exc) from exc
        try:
            parse_config(deployment.config)
        except SpecError as exc:
            raise BadDeployment(f"config: {exc.message}") from exc
        try:
            get_default_registry().for_artifact(deployment.artifact)
        except SpecError as exc:
            raise BadDeployment(exc.message) from exc
        if check_paths and not Path(deployment.function_dir).is_dir():
            raise BadDeployment(f"function_dir: {deployment.function_dir} is not a directory")
        return deployment

    def to_json(self) -> dict[str, Any]:
        """The record as desired.json keeps it (the name is its key there)."""
        data: dict[str, Any] = msgspec.to_builtins(self)
        data.pop("name", None)
        return data

    def same_except_replicas(self, other: Deployment) -> bool:
        return msgspec.structs.replace(other, replicas=self.replicas) == self

    @property
    def processes(self) -> int:
        """Replica processes to run: `replicas`, and one at zero: asleep, it keeps the triggers
        listening and wakes the function itself (`nubis.processor.scaling`)."""
        return max(self.replicas, 1)

    @property
    def asleep(self) -> bool:
        """Scaled to zero: the replica's workers and zygote stop (SIGUSR1)."""
        return self.replicas == 0


_AT = re.compile(r"^(?P<what>.*) - at `\$\.?(?P<path>[^`]*)`$", re.DOTALL)


_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]*)`$")


def _bad(exc: msgspec.ValidationError) -> BadDeployment:
    """msgspec's "Expected `int` >= 1, got 0 - at `$.port`" as "port: expected `int` >= 1, got 0"."""
    text = str(exc)
    match = _AT.match(text)
    what, path = (match["what"], match["path"]) if match is not None else (text, "")
    missing = _MISSING.match(what)
    if missing is not None:
        return BadDeployment(f"{path + '.' if path else ''}{missing['field']}: a required field is missing")
    return BadDeployment(f"{path or 'body'}: {what[:1].lower()}{what[1:]}")


LimitsMechanism = Literal["cgroup", "rlimit", "none"]


class LimitsDict(TypedDict):
    """`FunctionState.limits` as the agent fills it (see `limits.LimitsPlan.report`)."""

    mechanism: LimitsMechanism
    memory: int | None
    cpu: float | None
    memory_enforced: bool
    cpu_enforced: bool
    message: str


class Draining(msgspec.Struct, frozen=True, kw_only=True):
    """A replica of an older generation that finishes its in-flight events before it stops."""

    name: str
    pid: int | None
    generation: int


class FunctionState(FunctionStatus, frozen=True, kw_only=True):
    """What `GET /v1/functions/{name}` answers: the platform's `FunctionStatus` of the function,
    plus what only the agent knows (the desired deployment, the replicas that drain)."""

    replicas_ready: int
    draining: list[Draining]
    deployment: Deployment
