"""Typed configuration of the HTTP trigger, decoded from Nuclio's free-form `attributes`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from nubis.errors import SpecError
from nubis.processor.triggers.failures import Policy, policy_of
from nubis.processor.triggers.http_limits import (
    DEFAULT_HEADER_READ_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADER_COUNT,
    DEFAULT_MAX_URL_BYTES,
    HttpLimits,
)
from nubis.spec.durations import parse_duration

DEFAULT_PORT = 8080
DEFAULT_MAX_REQUEST_BODY_SIZE = 4 * 1024 * 1024
DEFAULT_MAX_QUEUED_EVENTS = 1024
#: seconds a final async invocation's record is kept (attributes.asyncRetention)
DEFAULT_ASYNC_RETENTION = 24 * 3600.0
_DEFAULT_CORS_METHODS = ["HEAD", "GET", "POST", "PUT", "DELETE", "OPTIONS"]
_DEFAULT_CORS_HEADERS = ["Accept", "Content-Length", "Content-Type", "X-nuclio-log-level"]


def _lower_keys(mapping: Any, where: str) -> dict[str, Any]:
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise SpecError("must be a mapping", field=where, expected="a mapping", found=mapping)
    return {str(k).lower(): v for k, v in mapping.items()}


def _int(attrs: dict[str, Any], key: str, default: int, where: str) -> int:
    value = attrs.get(key.lower(), default)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise SpecError("must be an integer", field=f"{where}.{key}", expected="an integer", found=value)
    try:
        return int(value)
    except ValueError:
        raise SpecError("must be an integer", field=f"{where}.{key}", expected="an integer", found=value) from None


def parse_port(raw: Any, where: str) -> int:
    """`attributes.port`, the one parser of it (the processor binds it, the control plane publishes it).

    As in Nuclio, whose attributes are decoded by mapstructure into an `int`, the port must be a
    JSON/YAML integer: a string such as "8080" is refused rather than converted. 0 means "any".
    """
    attrs = _lower_keys(raw, where)
    value = attrs.get("port", DEFAULT_PORT)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(
            'must be an integer TCP port (Nuclio decodes it as an int; write 8080, not "8080")',
            field=f"{where}.port",
            expected="an integer in 0..65535",
            found=value,
        )
    if not 0 <= value <= 65535:
        raise SpecError("is not a TCP port", field=f"{where}.port", expected="0..65535", found=value)
    return value


def _positive(attrs: dict[str, Any], key: str, default: int, where: str, unit: str) -> int:
    value = _int(attrs, key, default, where)
    if value <= 0:
        raise SpecError(
            "must be positive", field=f"{where}.{key}", expected=f"a positive number of {unit}", found=value
        )
    return value


def _timeout(attrs: dict[str, Any], key: str, default: float, where: str) -> float | None:
    """A Go duration in seconds; "0" turns the timeout off (None), as a zero timeout does in Go."""
    raw = attrs.get(key.lower())
    seconds = parse_duration(raw, field=f"{where}.{key}") if raw is not None else None
    if seconds is None:
        return default
    if seconds < 0:
        raise SpecError(
            "must not be negative",
            field=f"{where}.{key}",
            expected="a duration such as '10s', or '0' for none",
            found=raw,
        )
    return seconds or None


def _limits(attrs: dict[str, Any], where: str) -> HttpLimits:
    # Nuclio bounds a request head by the trigger's read buffer: `readBufferSize` means the same
    # here unless `maxHeaderBytes` is given.
    head_key = "readBufferSize" if "readbuffersize" in attrs and "maxheaderbytes" not in attrs else "maxHeaderBytes"
    return HttpLimits(
        max_header_count=_positive(attrs, "maxHeaderCount", DEFAULT_MAX_HEADER_COUNT, where, "headers"),
        max_header_bytes=_positive(attrs, head_key, DEFAULT_MAX_HEADER_BYTES, where, "bytes"),
        max_url_bytes=_positive(attrs, "maxUrlBytes", DEFAULT_MAX_URL_BYTES, where, "bytes"),
        header_read_timeout=_timeout(attrs, "headerReadTimeout", DEFAULT_HEADER_READ_TIMEOUT, where),
        idle_timeout=_timeout(attrs, "idleTimeout", DEFAULT_IDLE_TIMEOUT, where),
        max_connections=_positive(attrs, "maxConnections", DEFAULT_MAX_CONNECTIONS, where, "connections"),
    )


@dataclass
class CorsConfig:
    enabled: bool = False
    allow_origins: list[str] = field(default_factory=lambda: ["*"])
    allow_methods: list[str] = field(default_factory=lambda: list(_DEFAULT_CORS_METHODS))
    allow_headers: list[str] = field(default_factory=lambda: list(_DEFAULT_CORS_HEADERS))
    allow_credentials: bool = False
    expose_headers: list[str] = field(default_factory=list)
    preflight_max_age_seconds: int = -1

    @classmethod
    def from_attributes(cls, raw: Any, where: str) -> CorsConfig:
        attrs = _lower_keys(raw, where)
        config = cls(enabled=bool(attrs.get("enabled", False)))
        for spelling, name in (
            ("allowOrigins", "allow_origins"),
            ("allowMethods", "allow_methods"),
            ("allowHeaders", "allow_headers"),
            ("exposeHeaders", "expose_headers"),
        ):
            value = attrs.get(spelling.lower())
            if value is not None:
                if not isinstance(value, list):
                    raise SpecError(
                        "must be a list of strings",
                        field=f"{where}.{spelling}",
                        expected="a list",
                        found=value,
                    )
                setattr(config, name, [str(v) for v in value])
        config.allow_credentials = bool(attrs.get("allowcredentials", False))
        config.preflight_max_age_seconds = _int(attrs, "preflightMaxAgeSeconds", -1, where)
        return config

    def origin_allowed(self, origin: str) -> bool:
        return "*" in self.allow_origins or origin in self.allow_origins


@dataclass(frozen=True)
class AsyncSettings:
    """Async invocations (`X-Nubis-Async: true`, http_async.py): retried by the failure policy of
    message triggers (`maxAttempts`, `retryBackoff`, `retryBackoffMax`), where an answer of
    500-599 is a failure too (no caller waits to see it), and kept `asyncRetention` once final."""

    policy: Policy = field(default_factory=lambda: Policy(fail_on_5xx=True))
    #: seconds
    retention: float = DEFAULT_ASYNC_RETENTION


def async_settings(attributes: dict[str, Any], field: str) -> AsyncSettings:
    """SpecError at `<field>.attributes.<name>` for a bad value."""
    policy = replace(policy_of(attributes, None, field), fail_on_5xx=True)
    where = f"{field}.attributes.asyncRetention"
    raw = attributes.get("asyncRetention")
    retention = parse_duration(raw, field=where) if raw is not None else None
    if retention is not None and retention <= 0:
        raise SpecError("must be positive", field=where, expected="a duration such as '24h' or '30m'", found=raw)
    return AsyncSettings(policy, DEFAULT_ASYNC_RETENTION if retention is None else retention)


@dataclass
class HttpTriggerConfig:
    """What the HTTP trigger reads from `spec.triggers.<name>.attributes`."""

    port: int = DEFAULT_PORT
    host: str = "127.0.0.1"
    max_request_body_size: int = DEFAULT_MAX_REQUEST_BODY_SIZE
    max_queued_events: int = DEFAULT_MAX_QUEUED_EVENTS
    cors: CorsConfig = field(default_factory=CorsConfig)
    limits: HttpLimits = field(default_factory=HttpLimits)
    invocations: AsyncSettings = field(default_factory=AsyncSettings)

    @classmethod
    def from_attributes(cls, raw: Any, where: str) -> HttpTriggerConfig:
        attrs = _lower_keys(raw, where)
        mode = str(attrs.get("mode") or "sync").lower()
        if mode != "sync":
            raise SpecError(
                "async mode is not supported by Nubis yet; each worker runs one event at a time. "
                "Raise numWorkers for more concurrency, or remove the attribute",
                field=f"{where}.mode",
                expected="sync",
                found=attrs.get("mode"),
            )
        config = cls(
            port=parse_port(attrs, where),
            max_request_body_size=_int(attrs, "maxRequestBodySize", DEFAULT_MAX_REQUEST_BODY_SIZE, where),
            max_queued_events=_int(attrs, "maxQueuedEvents", DEFAULT_MAX_QUEUED_EVENTS, where),
            cors=CorsConfig.from_attributes(attrs.get("cors"), f"{where}.cors"),
            limits=_limits(attrs, where),
        )
        if config.max_request_body_size <= 0:
            raise SpecError(
                "must be positive",
                field=f"{where}.maxRequestBodySize",
                expected="a positive number of bytes",
                found=config.max_request_body_size,
            )
        if config.max_queued_events < 0:
            raise SpecError(
                "must not be negative",
                field=f"{where}.maxQueuedEvents",
                expected="0 or more",
                found=config.max_queued_events,
            )
        return config


def trigger_config(trigger: Any, field: str) -> HttpTriggerConfig:
    """The config of a spec `Trigger` of kind http at `field` (`spec.triggers.<name>`): its
    attributes, plus the trigger-level `mode` when the attributes do not set one."""
    attrs = dict(trigger.attributes or {})
    if trigger.mode and "mode" not in {str(k).lower() for k in attrs}:
        attrs["mode"] = trigger.mode
    config = HttpTriggerConfig.from_attributes(attrs, f"{field}.attributes")
    config.invocations = async_settings(dict(trigger.attributes or {}), field)
    return config


def validate(trigger: Any, field: str) -> None:
    """The trigger registry's validator for kind http: parse everything a replica would, start nothing."""
    trigger_config(trigger, field)
