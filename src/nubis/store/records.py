"""What the store returns: plain dataclasses, detached from the database.

JSON-shaped fields (`labels`, `spec`, `config`, `status`, ...) are the dicts as stored; unknown keys
round-trip. Timestamps are timezone-aware UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class ProjectRecord:
    """A Nuclio project: `metadata.{name, namespace, labels, annotations}` and `spec`."""

    name: str
    namespace: str = "nuclio"
    labels: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=utc_now)


@dataclass
class FunctionRecord:
    """A function's desired state (`config`: `{metadata, spec}` as given) and observed `status`.

    `generation` is bumped by every config change; `deployed_generation` is the generation the
    reconciler last finished deploying (0: never). `resource_version` changes with every config
    change (not with status writes) and is what Nuclio clients send back as
    `metadata.resourceVersion`.
    """

    name: str
    project: str
    namespace: str
    config: dict[str, Any]
    status: dict[str, Any]
    generation: int
    deployed_generation: int
    resource_version: str
    http_port: int | None
    created_at: datetime
    updated_at: datetime

    @property
    def state(self) -> str | None:
        """`status.state` (a Nuclio function state such as `building`, `ready`, `error`)."""
        state = self.status.get("state")
        return state if isinstance(state, str) else None


@dataclass
class LogRecord:
    """One stored deploy log record of a function (`as_dict()` gives the Nuclio/zap shape)."""

    function: str
    time: float
    level: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {**self.extra, "time": self.time, "level": self.level, "message": self.message}


@dataclass
class TokenRecord:
    """An API token: only the sha256 of the secret is stored."""

    id: int
    principal: str
    token_hash: str
    created_at: datetime
    last_used_at: datetime | None
    name: str = ""
    #: the scope: `role` on `tenant` ("*": every tenant), or on `project` of it
    tenant: str = "*"
    project: str | None = None
    role: str = "admin"
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def refusal(self, now: datetime | None = None) -> str | None:
        """Why this token no longer works (revoked, expired), or None while it does."""
        now = now or utc_now()
        if self.revoked_at is not None:
            return f"the API token {self.name or self.id} was revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return f"the API token {self.name or self.id} has expired"
        return None


@dataclass
class TenantRecord:
    """A tenant (a Nuclio namespace)."""

    name: str
    labels: dict[str, str]
    created_at: datetime


@dataclass
class AuditRecord:
    """One mutating or denied API call (see store/audit.py)."""

    time: datetime
    principal: str
    tenant: str
    project: str | None
    action: str
    method: str
    path: str
    status: int
    outcome: str
    remote: str
    detail: str = ""
    id: int = 0

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "time": self.time.isoformat(),
            "principal": self.principal,
            "tenant": self.tenant,
            "project": self.project,
            "action": self.action,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "outcome": self.outcome,
            "remote": self.remote,
            "detail": self.detail,
        }
