"""A PostgreSQL of a test's own whose TCP logins need a password (scram-sha-256), for the tests of
Vault's dynamic credentials: the machine's PostgreSQL trusts every local login, where "these
credentials no longer work" would prove nothing. The superuser `postgres`, which Vault's database
secrets engine manages roles as, stays trusted from 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
from postgres_node import PostgresNode

HBA = "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
#: Vault's creation and revocation statements: a login role valid until its lease ends, dropped at revocation
CREATION = ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"]
REVOCATION = ['DROP ROLE IF EXISTS "{{name}}";']


def password_postgres(directory: Path, port: int) -> Iterator[PostgresNode]:
    node = PostgresNode(directory / "pg", port)
    (node.data / "pg_hba.conf").write_text(HBA)
    node.start()
    try:
        yield node
    finally:
        node.stop()


def can_log_in(node: PostgresNode, user: str, password: str) -> bool:
    try:
        psycopg.connect(
            host="127.0.0.1", port=node.port, user=user, password=password, dbname="postgres", connect_timeout=5
        ).close()
    except psycopg.OperationalError:
        return False
    return True


def role_exists(node: PostgresNode, user: str) -> bool:
    return bool(node.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)))


def database_engine(vault: Any, node: PostgresNode, mount: str, roles: Mapping[str, tuple[str, str]]) -> None:
    """Vault's database secrets engine at `mount` over `node`, with `roles` (name -> (default_ttl,
    max_ttl)), each making a login role valid until its lease ends, dropped at revocation. `vault`
    is an OpenBaoNode."""
    client = vault.client()
    client.sys.enable_secrets_engine("database", path=mount)
    client.secrets.database.configure(
        "pg",
        "postgresql-database-plugin",
        allowed_roles=list(roles),
        connection_url=f"postgresql://{{{{username}}}}@127.0.0.1:{node.port}/postgres?sslmode=disable",
        username="postgres",
        password="unused-trusted",
        mount_point=mount,
    )
    for role, (ttl, max_ttl) in roles.items():
        client.secrets.database.create_role(
            role,
            "pg",
            creation_statements=CREATION,
            revocation_statements=REVOCATION,
            default_ttl=ttl,
            max_ttl=max_ttl,
            mount_point=mount,
        )
