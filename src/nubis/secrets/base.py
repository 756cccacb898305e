"""The one interface every secret store implements, and the naming rules they share.

A secret is a named map of keys to string values inside one (tenant, project), as a Kubernetes
Secret is inside a namespace: `spec.env[].valueFrom.secretKeyRef {name, key}` picks one key,
a secret volume writes every key (or the listed `items`) as a file. Names follow Kubernetes
(a DNS-1123 subdomain for the secret, `[-._a-zA-Z0-9]+` for a key) so a spec that works on
Nuclio's Kubernetes platform works here unchanged.

The values leave a backend only through `read`, which the control plane calls on the server side
(resolution at replica start); the API answers with keys only. Every error a backend raises is a
`nubis.errors` error whose message names the secret and the key, never a value or a credential.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Literal, Protocol

from nubis.errors import BadRequest, PermanentError, TemporaryError
from nubis.spec.secret_refs import KEY_MAX, NAME_MAX, SECRET_KEY, SECRET_NAME

BackendKind = Literal["local", "vault"]
BACKEND_KINDS: tuple[BackendKind, ...] = ("local", "vault")

#: the most bytes (UTF-8, keys and values together) one secret may hold; Kubernetes allows 1 MiB
MAX_SECRET_BYTES = 1024 * 1024


class SecretError(BadRequest):
    """A secret name, key or size breaks the rules; the message names which and why (never a value)."""


class SecretStoreError(PermanentError):
    """The store refused or cannot serve the operation as configured (key file, permissions, tampering).

    The API answers 500 with the message; the message never holds a value or a credential.
    """


class SecretStoreUnavailable(TemporaryError):
    """The store did not answer (Vault down, a timeout); the same call may succeed later (the API answers 503)."""


class SecretBackend(Protocol):
    """Where secrets live; every method is scoped to one (tenant, project)."""

    kind: BackendKind

    async def put(self, tenant: str, project: str, name: str, values: Mapping[str, str]) -> None:
        """Store `values` as the whole secret `name`, replacing any previous keys."""
        ...

    async def patch(
        self, tenant: str, project: str, name: str, values: Mapping[str, str], remove: Collection[str] = ()
    ) -> list[str] | None:
        """Set `values` and drop the keys in `remove` of an existing secret, atomically; its keys after,
        sorted, or None when there is no such secret (nothing is created)."""
        ...

    async def keys(self, tenant: str, project: str, name: str) -> list[str] | None:
        """The secret's keys, sorted; None when there is no such secret."""
        ...

    async def names(self, tenant: str, project: str) -> dict[str, list[str]]:
        """Every secret of the project: name -> sorted keys."""
        ...

    async def read(self, tenant: str, project: str, name: str) -> dict[str, str] | None:
        """The secret's values (server side only, never in an API answer); None when absent."""
        ...

    async def delete(self, tenant: str, project: str, name: str) -> bool:
        """Remove the secret; False when there was none."""
        ...

    async def close(self) -> None:
        """Release what the backend holds (threads, connections); idempotent."""
        ...


def check_name(name: object, *, field: str = "name") -> str:
    """`name` if it is a valid secret name (a DNS-1123 subdomain), else a SecretError saying why."""
    if not isinstance(name, str) or not name:
        raise SecretError(f"secret {field}: expected a non-empty string, found {_kind(name)}")
    if len(name) > NAME_MAX:
        raise SecretError(f"secret {field} {name[:40]!r}...: at most {NAME_MAX} characters, found {len(name)}")
    if not SECRET_NAME.fullmatch(name):
        raise SecretError(
            f"secret {field} {name!r}: expected a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit)"
        )
    return name


def check_key(name: str, key: object) -> str:
    """`key` if it is a valid key of secret `name` (`[-._a-zA-Z0-9]+`, not '.' or '..'), else a SecretError."""
    if not isinstance(key, str) or not key:
        raise SecretError(f"secret {name!r}: a key must be a non-empty string, found {_kind(key)}")
    if len(key) > KEY_MAX:
        raise SecretError(f"secret {name!r}: key {key[:40]!r}...: at most {KEY_MAX} characters, found {len(key)}")
    if not SECRET_KEY.fullmatch(key) or key in (".", ".."):
        raise SecretError(
            f"secret {name!r}: key {key!r}: expected letters, digits, '-', '_' and '.' only "
            "(a file name, not '.' or '..')"
        )
    return key


def check_values(name: str, values: Mapping[str, object]) -> dict[str, str]:
    """The secret's keys and values checked (names, string values, total size); the values are never quoted."""
    if not isinstance(values, Mapping):
        raise SecretError(f"secret {name!r}: expected a map of keys to string values, found {_kind(values)}")
    checked: dict[str, str] = {}
    size = 0
    for key, value in values.items():
        check_key(name, key)
        if not isinstance(value, str):
            raise SecretError(f"secret {name!r}: key {key!r}: expected a string value, found {_kind(value)}")
        checked[key] = value
        size += len(key.encode()) + len(value.encode())
    if size > MAX_SECRET_BYTES:
        raise SecretError(
            f"secret {name!r}: {size} bytes of keys and values, at most {MAX_SECRET_BYTES} (1 MiB) per secret",
            status_code=413,
        )
    return checked


def _kind(value: object) -> str:
    """A value's type for an error message: never the value itself, which may be a secret."""
    return "nothing" if value is None or value == "" else type(value).__name__
