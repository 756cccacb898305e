"""The JSON the agent API speaks: the desired deployment of a function and its observed state."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

from nubis.errors import PermanentError, SpecError
from nubis.spec import parse_config, validate_function_name

ReplicaStateName = Literal["starting", "ready", "failed", "exited"]
FunctionStateName = Literal["deploying", "ready", "failed", "unhealthy"]
LimitsMechanism = Literal["cgroup", "rlimit", "none"]

#: seconds a new generation may take to become ready when the deployment does not say
DEFAULT_READINESS_TIMEOUT = 60.0
#: the most replicas one function may ask the local agent for
MAX_REPLICAS = 64


class DeploymentDict(TypedDict):
    """Body of `PUT /v1/functions/{name}`."""

    generation: int
    config: dict[str, Any]
    function_dir: str
    python: str
    port: int
    replicas: int
    env: NotRequired[dict[str, str]]
    resources: NotRequired[dict[str, Any]]
    readiness_timeout: NotRequired[float]
    host: NotRequired[str]


class EventDict(TypedDict):
    time: int
    level: str
    message: str


class ExitDict(TypedDict):
    time: int
    code: int | None
    reason: str


class ReplicaDict(TypedDict):
    name: str
    pid: int | None
    generation: int
    state: ReplicaStateName
    restarts: int
    last_exit: ExitDict | None


class DrainingDict(TypedDict):
    name: str
    pid: int | None
    generation: int


class LimitsDict(TypedDict):
    mechanism: LimitsMechanism
    memory: int | None
    cpu: float | None
    memory_enforced: bool
    cpu_enforced: bool
    message: str


class FunctionStateDict(TypedDict):
    """What `GET /v1/functions/{name}` answers."""

    name: str
    state: FunctionStateName
    message: str
    generation: int
    active_generation: int | None
    port: int
    replicas_desired: int
    replicas_ready: int
    replicas: list[ReplicaDict]
    draining: list[DrainingDict]
    limits: LimitsDict
    events: list[EventDict]
    deployment: DeploymentDict


class BadDeployment(PermanentError, ValueError):
    """A PUT body the agent cannot run; the message names the field (still a `ValueError`, as
    validation errors of plain data are)."""


class PortConflict(BadDeployment):
    """Another function of the agent has the port."""


@dataclass(frozen=True)
class Deployment:
    """One desired deployment of a function, validated."""

    name: str
    generation: int
    config: dict[str, Any]
    function_dir: str
    python: str
    port: int
    replicas: int
    env: dict[str, str] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    readiness_timeout: float = DEFAULT_READINESS_TIMEOUT
    host: str = "127.0.0.1"

    @classmethod
    def from_json(cls, name: str, data: Any, *, check_paths: bool = True) -> Deployment:
        """Validate a PUT body; raises `BadDeployment` naming the wrong field."""
        try:
            validate_function_name(name, field="name")
        except SpecError as exc:
            raise BadDeployment(exc.message) from exc
        if not isinstance(data, dict):
            raise BadDeployment("the body must be a JSON object")
        generation = _int(data, "generation", minimum=0)
        port = _int(data, "port", minimum=1, maximum=65535)
        replicas = _int(data, "replicas", minimum=0, maximum=MAX_REPLICAS)
        config = data.get("config")
        if not isinstance(config, dict):
            raise BadDeployment("config: expected the function configuration {metadata, spec}")
        try:
            parse_config(config)
        except SpecError as exc:
            raise BadDeployment(f"config: {exc.message}") from exc
        function_dir = _str(data, "function_dir")
        python = _str(data, "python")
        if check_paths:
            if not Path(function_dir).is_dir():
                raise BadDeployment(f"function_dir: {function_dir} is not a directory")
            if not Path(python).exists():
                raise BadDeployment(f"python: {python} does not exist")
        env = data.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise BadDeployment("env: expected an object of string values")
        resources = data.get("resources") or {}
        if not isinstance(resources, dict):
            raise BadDeployment("resources: expected an object such as {limits: {memory, cpu}}")
        timeout = data.get("readiness_timeout", DEFAULT_READINESS_TIMEOUT)
        if timeout is None:
            timeout = DEFAULT_READINESS_TIMEOUT
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise BadDeployment(f"readiness_timeout: expected a positive number of seconds, found {timeout!r}")
        if not math.isfinite(timeout):
            raise BadDeployment("readiness_timeout: expected a finite number of seconds")
        host = data.get("host", "127.0.0.1")
        if not isinstance(host, str) or not host:
            raise BadDeployment("host: expected an address such as 127.0.0.1")
        return cls(
            name=name,
            generation=generation,
            config=config,
            function_dir=function_dir,
            python=python,
            port=port,
            replicas=replicas,
            env=dict(env),
            resources=dict(resources),
            readiness_timeout=float(timeout),
            host=host,
        )

    def to_json(self) -> DeploymentDict:
        return {
            "generation": self.generation,
            "config": self.config,
            "function_dir": self.function_dir,
            "python": self.python,
            "port": self.port,
            "replicas": self.replicas,
            "env": dict(self.env),
            "resources": dict(self.resources),
            "readiness_timeout": self.readiness_timeout,
            "host": self.host,
        }

    def same_except_replicas(self, other: Deployment) -> bool:
        mine = dict(self.to_json())
        theirs = dict(other.to_json())
        mine.pop("replicas")
        theirs.pop("replicas")
        return mine == theirs


def _int(data: dict[str, Any], key: str, *, minimum: int, maximum: int | None = None) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadDeployment(f"{key}: expected an integer, found {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise BadDeployment(f"{key}: expected {bounds}, found {value}")
    return value


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise BadDeployment(f"{key}: expected a path, found {value!r}")
    return value
