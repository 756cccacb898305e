"""Typed configuration of the HTTP trigger, decoded from Nuclio's free-form `attributes`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nubis.errors import SpecError

DEFAULT_PORT = 8080
DEFAULT_MAX_REQUEST_BODY_SIZE = 4 * 1024 * 1024
DEFAULT_MAX_QUEUED_EVENTS = 1024
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


@dataclass
class HttpTriggerConfig:
    """What the HTTP trigger reads from `spec.triggers.<name>.attributes`."""

    port: int = DEFAULT_PORT
    host: str = "127.0.0.1"
    max_request_body_size: int = DEFAULT_MAX_REQUEST_BODY_SIZE
    max_queued_events: int = DEFAULT_MAX_QUEUED_EVENTS
    cors: CorsConfig = field(default_factory=CorsConfig)

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
            port=_int(attrs, "port", DEFAULT_PORT, where),
            max_request_body_size=_int(attrs, "maxRequestBodySize", DEFAULT_MAX_REQUEST_BODY_SIZE, where),
            max_queued_events=_int(attrs, "maxQueuedEvents", DEFAULT_MAX_QUEUED_EVENTS, where),
            cors=CorsConfig.from_attributes(attrs.get("cors"), f"{where}.cors"),
        )
        if not 0 <= config.port <= 65535:
            raise SpecError("is not a TCP port", field=f"{where}.port", expected="0..65535", found=config.port)
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
