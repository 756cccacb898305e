"""The control plane's state: projects, functions, deploy logs, API tokens and API gateways (docs/control-plane.md).

`await Store.open(url)` applies the shipped Alembic migrations and returns the async repository;
`upgrade(url)` applies them alone (what `nubis db upgrade` runs). URLs: `sqlite+aiosqlite:///PATH`
(the default, `default_state_url(data_dir)`) or `postgresql+psycopg://USER@HOST/DB`.
"""

from __future__ import annotations

from nubis.store.api_gateways import ApiGatewayRecord, GatewayRoute, Upstream, hash_password, verify_password
from nubis.store.engine import default_state_url, display_url, parse_url
from nubis.store.errors import StoreError
from nubis.store.migrate import head_revision, upgrade
from nubis.store.records import AuditRecord, FunctionRecord, LogRecord, ProjectRecord, TenantRecord, TokenRecord
from nubis.store.store import (
    DEFAULT_NAMESPACE,
    DEFAULT_PROJECT,
    LOG_CAP_PER_FUNCTION,
    RECONCILE_STATES,
    Store,
)

__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_PROJECT",
    "LOG_CAP_PER_FUNCTION",
    "RECONCILE_STATES",
    "ApiGatewayRecord",
    "AuditRecord",
    "FunctionRecord",
    "GatewayRoute",
    "LogRecord",
    "ProjectRecord",
    "Store",
    "StoreError",
    "TenantRecord",
    "TokenRecord",
    "Upstream",
    "default_state_url",
    "display_url",
    "hash_password",
    "head_revision",
    "parse_url",
    "upgrade",
    "verify_password",
]
