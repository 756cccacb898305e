"""Nuclio's `nuclio.io/kafka-*` function annotations: each fills a `kafka-cluster` trigger attribute
the trigger does not set itself (Nuclio reads the annotations first, then decodes the attributes
over them, so an attribute wins), e.g.

```yaml
metadata:
  annotations:
    nuclio.io/kafka-session-timeout: 20s
    nuclio.io/kafka-max-wait-handler-during-rebalance: 30s
    nuclio.io/kafka-worker-allocation-mode: static
    nuclio.io/kafka-sasl-password: ...        # fills attributes.sasl.password
```

The names and value types are Nuclio's (`pkg/processor/trigger/kafka/types.go`); a value that does
not parse is refused at `metadata.annotations.<key>`, and an attribute filled from an annotation
names that annotation in its errors (`Sourced.field`). One exception to "attributes win" is
Nuclio's too: `nuclio.io/kafka-explicit-ack-mode` wins over the trigger's `explicitAckMode`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from nubis.errors import SpecError

PREFIX = "nuclio.io/kafka-"
EXPLICIT_ACK_ANNOTATION = "nuclio.io/kafka-explicit-ack-mode"

#: annotation -> (attribute path, value type: str, int, bool or list)
ANNOTATIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "nuclio.io/kafka-session-timeout": (("sessionTimeout",), "str"),
    "nuclio.io/kafka-heartbeat-interval": (("heartbeatInterval",), "str"),
    "nuclio.io/kafka-max-processing-time": (("maxProcessingTime",), "str"),
    "nuclio.io/kafka-rebalance-timeout": (("rebalanceTimeout",), "str"),
    "nuclio.io/kafka-rebalance-retry-backoff": (("rebalanceRetryBackoff",), "str"),
    "nuclio.io/kafka-rebalance-retry-max": (("rebalanceRetryMax",), "int"),
    "nuclio.io/kafka-balance-strategy": (("balanceStrategy",), "str"),
    "nuclio.io/kafka-max-wait-time": (("maxWaitTime",), "str"),
    "nuclio.io/kafka-max-wait-handler-during-rebalance": (("maxWaitHandlerDuringRebalance",), "str"),
    "nuclio.io/kafka-worker-allocation-mode": (("workerAllocationMode",), "str"),
    "nuclio.io/kafka-fetch-min": (("fetchMin",), "int"),
    "nuclio.io/kafka-fetch-default": (("fetchDefault",), "int"),
    "nuclio.io/kafka-fetch-max": (("fetchMax",), "int"),
    "nuclio.io/kafka-channel-buffer-size": (("channelBufferSize",), "int"),
    "nuclio.io/kafka-access-key": (("accessKey",), "str"),
    "nuclio.io/kafka-access-cert": (("accessCertificate",), "str"),
    "nuclio.io/kafka-ca-cert": (("caCert",), "str"),
    "nuclio.io/kafka-version": (("version",), "str"),
    "nuclio.io/kafka-secret-path": (("secretPath",), "str"),
    "nuclio.io/kafka-log-level": (("logLevel",), "int"),
    "nuclio.io/kafka-tls-enabled": (("tls", "enable"), "bool"),
    "nuclio.io/kafka-tls-insecure-skip-verify": (("tls", "insecureSkipVerify"), "bool"),
    "nuclio.io/kafka-tls-minimum-version": (("tls", "minimumVersion"), "str"),
    "nuclio.io/kafka-sasl-enabled": (("sasl", "enable"), "bool"),
    "nuclio.io/kafka-sasl-user": (("sasl", "user"), "str"),
    "nuclio.io/kafka-sasl-password": (("sasl", "password"), "str"),
    "nuclio.io/kafka-sasl-mechanism": (("sasl", "mechanism"), "str"),
    "nuclio.io/kafka-sasl-handshake": (("sasl", "handshake"), "bool"),
    "nuclio.io/kafka-sasl-oauth-client-id": (("sasl", "oauth", "clientID"), "str"),
    "nuclio.io/kafka-sasl-oauth-client-secret": (("sasl", "oauth", "clientSecret"), "str"),
    "nuclio.io/kafka-sasl-oauth-token-url": (("sasl", "oauth", "tokenURL"), "str"),
    "nuclio.io/kafka-sasl-oauth-scopes": (("sasl", "oauth", "scopes"), "list"),
    "nuclio.io/kafka-window-size": (("ackWindowSize",), "int"),
    "custom.nuclio.io/kafka-window-size": (("ackWindowSize",), "int"),
    "nuclio.io/wait-explicit-ack-during-rebalance-timeout": (("waitExplicitAckDuringRebalanceTimeout",), "str"),
}
#: Go's strconv.ParseBool
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


class Sourced:
    """A trigger's attributes with the function's annotations filled in, remembering which value
    came from which annotation, so an error names the place the user wrote it."""

    def __init__(self, attributes: Mapping[str, Any], field: str, annotations: Mapping[str, str] | None) -> None:
        self.values: dict[str, Any] = copy.deepcopy(dict(attributes))
        self._field = field
        self._origin: dict[tuple[str, ...], str] = {}
        for key, text in (annotations or {}).items():
            if key in ANNOTATIONS:
                path, kind = ANNOTATIONS[key]
                self._fill(path, _typed(key, text, kind), key)

    def get(self, *path: str) -> Any:
        value: Any = self.values
        for name in path:
            if not isinstance(value, dict):
                return None
            value = value.get(name)
        return value

    def field(self, *path: str) -> str:
        """Where the value at `path` was written: an annotation, or the trigger's attributes."""
        origin = self._origin.get(path)
        return f"metadata.annotations.{origin}" if origin else f"{self._field}.attributes.{'.'.join(path)}"

    def _fill(self, path: tuple[str, ...], value: Any, key: str) -> None:
        parent = self.values
        for name in path[:-1]:
            child = parent.get(name)
            if child is None:
                child = parent[name] = {}
            if not isinstance(child, dict):
                return  # the attribute is there, and not a mapping: its own parse says so
            parent = child
        if parent.get(path[-1]) in (None, ""):
            parent[path[-1]] = value
            self._origin[path] = key


def _typed(key: str, text: str, kind: str) -> Any:
    field = f"metadata.annotations.{key}"
    text = str(text).strip()
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise SpecError(
                f"annotation {key} must be numeric", field=field, expected="a whole number", found=text
            ) from None
    if kind == "bool":
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise SpecError(f"annotation {key} must represent boolean", field=field, expected="true or false", found=text)
    if kind == "list":
        return [item.strip() for item in text.split(",") if item.strip()]
    return text
