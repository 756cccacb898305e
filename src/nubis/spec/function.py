"""Typed models of Nuclio's function configuration (`function.yaml` / NuclioFunction).

Only fields Nubis acts on are typed; every other key is kept verbatim so that a configuration
round-trips through Nubis unchanged. Attribute names are snake_case, YAML/JSON keys are Nuclio's
camelCase aliases; dump with `export_config()` to get Nuclio's shape back.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from nubis.spec.base import NuclioModel
from nubis.spec.durations import parse_duration
from nubis.spec.outputs import Output
from nubis.spec.trigger import Trigger, enrich_triggers


class Meta(NuclioModel):
    """`metadata`. The name is validated by the loader (`validate_function_name`), not here, so a
    configuration can be parsed before a default name is derived for it."""

    name: str = ""
    namespace: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    resource_version: str = Field(default="", alias="resourceVersion")


class EnvVar(NuclioModel):
    """A Kubernetes EnvVar: a literal `value` or a `valueFrom` reference (secret, configMap, field)."""

    name: str
    value: str | None = None
    value_from: dict[str, Any] | None = Field(default=None, alias="valueFrom")

    @field_validator("value", mode="before")
    @classmethod
    def _numbers_as_text(cls, value: Any) -> Any:
        # `value: 8080` in YAML is an int; an environment only holds text. Booleans are not
        # converted: YAML reads `yes`/`on` as true too, so quoting is the only unambiguous fix.
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        return value


class Build(NuclioModel):
    """`spec.build`: where the code comes from and how its image/environment is built."""

    KNOWN_EXTRA = frozenset(
        {
            "tempDir",
            "baseImageRegistry",
            "noBaseImagesPull",
            "noCleanup",
            "scriptPaths",
            "addedPaths",
            "onbuildImage",
            "offline",
            "args",
            "flags",
            "builderServiceAccount",
        }
    )

    path: str = ""
    function_source_code: str = Field(default="", alias="functionSourceCode")
    function_config_path: str = Field(default="", alias="functionConfigPath")
    commands: list[str] = Field(default_factory=list)
    base_image: str = Field(default="", alias="baseImage")
    image: str = ""
    registry: str = ""
    no_cache: bool = Field(default=False, alias="noCache")
    build_timeout_seconds: int | None = Field(default=None, alias="buildTimeoutSeconds")
    code_entry_type: str = Field(default="", alias="codeEntryType")
    code_entry_attributes: dict[str, Any] = Field(default_factory=dict, alias="codeEntryAttributes")
    mode: str = ""
    timestamp: int | None = None
    runtime_attributes: dict[str, Any] = Field(default_factory=dict, alias="runtimeAttributes")
    directives: dict[str, Any] = Field(default_factory=dict)
    dependencies: list[str] = Field(default_factory=list)


class Spec(NuclioModel):
    """`spec`. Kubernetes/Docker scheduling keys are recognised (see KNOWN_EXTRA) and passed through."""

    KNOWN_EXTRA = frozenset(
        {
            "publish",
            "imageHash",
            "runRegistry",
            "imagePullSecrets",
            "imagePullPolicy",
            "autoScaleMetrics",
            "customScalingMetricSpecs",
            "dataBindings",
            "dealerURI",
            "waitReadinessTimeoutBeforeFailure",
            "serviceType",
            "serviceAccount",
            "affinity",
            "nodeSelector",
            "nodeName",
            "tolerations",
            "priorityClassName",
            "preemptionPolicy",
            "preemptionMode",
            "deploymentStrategy",
            "hostIPC",
            "sidecars",
            "initContainers",
            "devices",
            "disableSensitiveFieldsMasking",
        }
    )

    description: str = ""
    disable: bool = False
    handler: str = ""
    runtime: str = ""
    env: list[EnvVar] = Field(default_factory=list)
    env_from: list[dict[str, Any]] = Field(default_factory=list, alias="envFrom")
    resources: dict[str, Any] = Field(default_factory=dict)
    image: str = ""
    replicas: int | None = None
    min_replicas: int | None = Field(default=None, alias="minReplicas")
    max_replicas: int | None = Field(default=None, alias="maxReplicas")
    target_cpu: int | None = Field(default=None, alias="targetCPU")
    triggers: dict[str, Trigger] = Field(default_factory=dict)
    volumes: list[dict[str, Any]] = Field(default_factory=list)
    version: int | None = None
    alias: str = ""
    build: Build = Field(default_factory=lambda: Build())
    runtime_attributes: dict[str, Any] = Field(default_factory=dict, alias="runtimeAttributes")
    platform: dict[str, Any] = Field(default_factory=dict)
    readiness_timeout_seconds: int | None = Field(default=None, alias="readinessTimeoutSeconds")
    disable_default_http_trigger: bool | None = Field(default=None, alias="disableDefaultHTTPTrigger")
    #: Go duration; "" means no timeout
    event_timeout: str = Field(default="", alias="eventTimeout")
    security_context: dict[str, Any] | None = Field(default=None, alias="securityContext")
    scale_to_zero: dict[str, Any] | None = Field(default=None, alias="scaleToZero")
    logger_sinks: list[dict[str, Any]] | None = Field(default=None, alias="loggerSinks")
    #: Nubis extension: where responses are published (`nubis.spec.outputs`, docs/outputs.md)
    outputs: list[Output] = Field(default_factory=list)

    def event_timeout_seconds(self) -> float | None:
        """The per-event timeout in seconds, None when unset. Raises `SpecError` if not a Go duration."""
        return parse_duration(self.event_timeout, field="spec.eventTimeout")

    def env_dict(self) -> dict[str, str]:
        """Literal environment variables by name (entries using `valueFrom` are left out)."""
        return {var.name: var.value for var in self.env if var.value is not None}


class FunctionConfig(NuclioModel):
    """A whole function configuration. `apiVersion` and `kind` are ignored (any value) but kept."""

    api_version: Any = Field(default=None, alias="apiVersion")
    kind: Any = None
    metadata: Meta = Field(default_factory=lambda: Meta())
    spec: Spec = Field(default_factory=lambda: Spec())
    status: dict[str, Any] | None = None

    def effective_triggers(self, *, platform_disables_default_http: bool = False) -> dict[str, Trigger]:
        """The triggers a processor runs: named after their keys, `numWorkers` ≥ 1, plus Nuclio's
        `default-http` trigger when there is no HTTP trigger and `disableDefaultHTTPTrigger` is not
        true (unset falls back to `platform_disables_default_http`). Raises `SpecError`."""
        disabled = self.spec.disable_default_http_trigger
        if disabled is None:
            disabled = platform_disables_default_http
        return enrich_triggers(self.spec.triggers, add_default_http=not disabled)
