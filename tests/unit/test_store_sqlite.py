"""The store against real SQLite files.

`StoreBehaviours` holds the behaviour every backend must show; it is run here on SQLite and, by
tests/integration/test_store_postgres.py, on PostgreSQL. Each backend module provides a
`store_url` fixture giving an empty, reachable database.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from typer.testing import CliRunner

from nubis.auth.gate import AuthenticationError
from nubis.auth.tokens import hash_token
from nubis.cli.db import app as db_app
from nubis.control.token_principals import TokenAuthenticator
from nubis.errors import Conflict, NotFound, PreconditionFailed
from nubis.store import (
    FunctionRecord,
    ProjectRecord,
    Store,
    StoreError,
    default_state_url,
    head_revision,
    parse_url,
    upgrade,
)
from nubis.store.engine import create_migration_engine
from nubis.store.migrate import alembic_config
from nubis.store.models import Base
from nubis.store.records import AuditRecord, utc_now

T = TypeVar("T")

CONFIG: dict[str, Any] = {
    "metadata": {"name": "echo", "labels": {"nuclio.io/project-name": "default"}, "x-unknown": [1, 2]},
    "spec": {"handler": "main:handler", "runtime": "python:3.11", "someFutureField": {"a": None}},
}


@asynccontextmanager
async def opened(url: str, *, migrate: bool = True) -> AsyncIterator[Store]:
    store = await Store.open(url, migrate=migrate)
    try:
        yield store
    finally:
        await store.close()


def with_store(url: str, body: Callable[[Store], Awaitable[T]]) -> T:
    """Open the store at `url`, run `body(store)` to completion, close the store."""

    async def main() -> T:
        async with opened(url) as store:
            return await body(store)

    return asyncio.run(main())


async def new_function(store: Store, name: str = "echo", project: str = "default") -> FunctionRecord:
    await store.ensure_default_project()
    return await store.create_function(name, project, "nuclio", CONFIG)


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'state' / 'nubis.db'}"


class StoreBehaviours:
    """Backend-independent behaviour; subclasses get `store_url` from their module's fixture."""

    # -- migrations -----------------------------------------------------------------------------

    def test_upgrade_to_head_twice_is_a_no_op(self, store_url: str) -> None:
        assert upgrade(store_url) == head_revision()

        async def seed(store: Store) -> None:
            await store.ensure_default_project()

        with_store(store_url, seed)
        assert upgrade(store_url) == head_revision()

        async def check(store: Store) -> list[str]:
            return [p.name for p in await store.list_projects()]

        assert with_store(store_url, check) == ["default"]

    def test_models_match_the_migrations(self, store_url: str) -> None:
        upgrade(store_url)
        engine = create_migration_engine(parse_url(store_url))
        try:
            with engine.connect() as connection:
                context = MigrationContext.configure(connection, opts={"compare_type": False})
                assert compare_metadata(context, Base.metadata) == []
        finally:
            engine.dispose()

    def test_upgrading_gives_old_log_records_their_functions_generation(self, store_url: str) -> None:
        engine = create_migration_engine(parse_url(store_url))
        try:
            with engine.begin() as connection:
                # at 0001 (a shared PostgreSQL database may be at head already: step back)
                command.upgrade(alembic_config(connection), "0001")
                command.downgrade(alembic_config(connection), "0001")
                now = datetime.now(UTC)
                connection.execute(
                    text(
                        "INSERT INTO projects (name, namespace, labels, annotations, spec, created_at) "
                        "VALUES ('default', 'nuclio', CAST('{}' AS JSON), CAST('{}' AS JSON), CAST('{}' AS JSON), :now)"
                    ),
                    {"now": now},
                )
                connection.execute(
                    text(
                        "INSERT INTO functions (name, project, namespace, config, status, generation, "
                        "deployed_generation, resource_version, http_port, created_at, updated_at) VALUES "
                        "('old', 'default', 'nuclio', CAST('{}' AS JSON), CAST('{}' AS JSON), 3, 3, 'rv', NULL, "
                        ":now, :now)"
                    ),
                    {"now": now},
                )
                connection.execute(
                    text(
                        "INSERT INTO function_logs (function, time, level, message, extra) "
                        "VALUES ('old', 1.0, 'info', 'before the upgrade', CAST('{}' AS JSON))"
                    )
                )
        finally:
            engine.dispose()
        assert upgrade(store_url) == head_revision()

        async def logs(store: Store) -> list[dict[str, Any]]:
            return await store.get_logs("old")

        assert [r["message"] for r in with_store(store_url, logs)] == ["before the upgrade"]

    def test_open_without_migrate_on_a_migrated_database(self, store_url: str) -> None:
        upgrade(store_url)

        async def main() -> list[ProjectRecord]:
            async with opened(store_url, migrate=False) as store:
                return await store.list_projects()

        assert asyncio.run(main()) == []

    # -- projects -------------------------------------------------------------------------------

    def test_projects(self, store_url: str) -> None:
        async def body(store: Store) -> None:
            record = ProjectRecord(
                name="p1",
                namespace="ns",
                labels={"a": "b"},
                annotations={"c": "d"},
                spec={"description": "x"},
            )
            created = await store.create_project(record)
            assert created == record
            assert created.created_at.tzinfo is not None
            assert created.created_at.utcoffset() == UTC.utcoffset(None)
            with pytest.raises(Conflict, match="Project already exists") as raised:
                await store.create_project(ProjectRecord(name="p1"))
            assert raised.value.status_code == 409
            assert await store.get_project("p1") == record
            assert await store.get_project("nope") is None

            await store.upsert_project(ProjectRecord(name="p0", spec={"owner": "me"}))
            updated = await store.upsert_project(
                ProjectRecord(name="p1", namespace="ns2", spec={"description": "y", "unknown": {"k": 1}})
            )
            assert updated.namespace == "ns2"
            assert updated.spec == {"description": "y", "unknown": {"k": 1}}
            assert updated.labels == {}
            assert updated.created_at == record.created_at
            assert [p.name for p in await store.list_projects()] == ["p0", "p1"]

            await store.delete_project("p0")
            with pytest.raises(NotFound, match="Project not found") as missing:
                await store.delete_project("p0")
            assert missing.value.status_code == 404
            assert [p.name for p in await store.list_projects()] == ["p1"]

        with_store(store_url, body)

    def test_project_with_functions_cannot_be_deleted(self, store_url: str) -> None:
        async def body(store: Store) -> None:
            await store.create_project(ProjectRecord(name="p1"))
            await store.create_function("f1", "p1", "nuclio", CONFIG)
            with pytest.raises(PreconditionFailed, match="Project contains functions") as raised:
                await store.delete_project("p1")
            assert raised.value.status_code == 412
            assert await store.delete_function("f1")
            await store.delete_project("p1")
            assert await store.get_project("p1") is None

        with_store(store_url, body)

    def test_default_project_is_created_once(self, store_url: str) -> None:
        async def body(store: Store) -> None:
            first = await store.ensure_default_project()
            again = await store.ensure_default_project(namespace="other")
            assert first == again
            assert first.name == "default"
            assert [p.name for p in await store.list_projects()] == ["default"]

        with_store(store_url, body)

    def test_default_project_races_between_processes(self, store_url: str) -> None:
        upgrade(store_url)

        async def main() -> None:
            stores = [await Store.open(store_url, migrate=False) for _ in range(4)]
            try:
                results = await asyncio.gather(*(s.ensure_default_project() for s in stores for _ in range(3)))
                assert len({r.created_at for r in results}) == 1
                assert [p.name for p in await stores[0].list_projects()] == ["default"]
            finally:
                for store in stores:
                    await store.close()

        asyncio.run(main())

    # -- functions ------------------------------------------------------------------------------

    def test_create_function(self, store_url: str) -> None:
        async def body(store: Store) -> None:
            created = await new_function(store)
            assert created.status == {"state": "building"}
            assert created.state == "building"
            assert (created.generation, created.deployed_generation) == (1, 0)
            assert created.resource_version
            assert created.http_port is None
            assert created.created_at.tzinfo is not None
            assert await store.get_function("echo") == created
            assert (await store.get_function("echo")).config == CONFIG  # type: ignore[union-attr]
            assert await store.get_function("nope") is None

            await store.create_project(ProjectRecord(name="other"))
            with pytest.raises(Conflict, match="Function echo already exists in project default"):
                await store.create_function("echo", "other", "nuclio", {})
            with pytest.raises(PreconditionFailed, match="Project does not exist: project 'ghost' does not exist"):
                await store.create_function("f2", "ghost", "nuclio", {})
            await store.create_function("f3", "other", "ns2", {})
            assert [f.name for f in await store.list_functions()] == ["echo", "f3"]
            assert [f.name for f in await store.list_functions("other")] == ["f3"]
            assert [f.name for f in await store.list_functions(namespace="nuclio")] == ["echo"]
            assert await store.list_functions("ghost") == []

        with_store(store_url, body)

    def test_update_function_config(self, store_url: str) -> None:
        async def body(store: Store) -> None:
            created = await new_function(store)
            await store.set_function_status(
                "echo", {"state": "error", "message": "boom", "httpPort": 1}, deployed_generation=1
            )
            new_config = {"metadata": {"name": "echo"}, "spec": {"handler": "other:handler"}}
            with pytest.raises(Conflict, match="resourceVersion"):
                await store.update_function_config("echo", new_config, expected_resource_version="stale")
            unchanged = await store.get_function("echo")
            assert unchanged is not None
            assert (unchanged.config, unchanged.generation) == (CONFIG, 1)

            updated = await store.update_function_config(
                "echo", new_config, expected_resource_version=created.resource_version
            )
            assert updated.config == new_config
            assert (updated.generation, updated.deployed_generation) == (2, 1)
            assert updated.resource_version != created.resource_version
            assert updated.status == {"state": "building", "httpPort": 1}
            assert updated.updated_at >= created.updated_at
            assert await store.get_function("echo") == updated

            again = await store.update_function_config("echo", CONFIG)
            assert again.generation == 3
            with pytest.raises(NotFound, match="Function not found"):
                await store.update_function_config("nope", CONFIG)
            with pytest.raises(PreconditionFailed):
                await store.update_function_config("echo", CONFIG, project="ghost")
            await store.create_project(ProjectRecord(name="p2"))
            moved = await store.update_function_config("echo", CONFIG, project="p2", namespace="ns2")
            assert (moved.project, moved.namespace) == ("p2", "ns2")

        with_store(store_url, body)

    def test_status_compare_and_set_on_generation(self, store_url: str) -> None:
        async def body(store: Store) -> None:
            await new_function(store)
            await store.update_function_config("echo", CONFIG)  # generation 2
            # A deploy of generation 1 finishing late must not overwrite generation 2's status.
            stale = await store.set_function_status(
                "echo", {"state": "ready"}, deployed_generation=1, only_if_generation=1
            )
            assert stale is False
            current = await store.get_function("echo")
            assert current is not None
            assert (current.state, current.deployed_generation) == ("building", 0)

            applied = await store.set_function_status(
                "echo", {"state": "ready", "httpPort": 9000}, deployed_generation=2, only_if_generation=2
            )
            assert applied is True
            current = await store.get_function("echo")
            assert current is not None
            assert current.status == {"state": "ready", "httpPort": 9000}
            assert (current.generation, current.deployed_generation) == (2, 2)

            assert await store.set_function_status("echo", {"state": "unhealthy"}) is True
            current = await store.get_function("echo")
            assert current is not None
            assert (current.state, current.deployed_generation) == ("unhealthy", 2)
            assert await store.set_function_status("nope", {"state": "ready"}) is False

        with_store(store_url, body)

    def test_functions_needing_reconcile(self, store_url: str) -> None:
        async def body(store: Store) -> None:
            for name in ("a", "b", "c", "d", "e"):
                await new_function(store, name)
            # a: new (building, generation 1 vs deployed 0)
            await store.set_function_status("b", {"state": "ready"}, deployed_generation=1)
            await store.set_function_status("c", {"state": "error", "message": "x"}, deployed_generation=1)
            await store.set_function_status("d", {"state": "waitingForResourceConfiguration"}, deployed_generation=1)
            await store.set_function_status("e", {"state": "ready"}, deployed_generation=1)
            await store.update_function_config("e", CONFIG)
            await store.set_function_status("e", {"state": "ready"})  # generation 2, deployed 1
            assert [f.name for f in await store.functions_needing_reconcile()] == ["a", "d", "e"]

        with_store(store_url, body)

    def test_delete_function(self, store_url: str) -> None:
        async def body(store: Store) -> None:
            created = await new_function(store)
            await store.append_logs("echo", [{"time": 1.0, "level": "info", "message": "hello"}])
            with pytest.raises(Conflict):
                await store.delete_function("echo", expected_resource_version="stale")
            assert await store.delete_function("echo", expected_resource_version=created.resource_version)
            assert await store.get_function("echo") is None
            assert await store.delete_function("echo") is False
            assert await store.get_logs("echo") == []
            recreated = await new_function(store)
            assert recreated.generation == 1
            assert await store.get_logs("echo") == []

        with_store(store_url, body)

    def test_failed_write_leaves_nothing(self, store_url: str) -> None:
        async def body(store: Store) -> None:
            await store.ensure_default_project()
            with pytest.raises(StoreError, match="Could not create function bad"):
                await store.create_function("bad", "default", "nuclio", {"spec": {"x": object()}})
            assert await store.get_function("bad") is None
            await new_function(store)
            with pytest.raises(StoreError, match="Could not update function echo"):
                await store.update_function_config("echo", {"spec": {"x": object()}})
            current = await store.get_function("echo")
            assert current is not None
            assert (current.config, current.generation) == (CONFIG, 1)
            with pytest.raises(StoreError, match="Could not append logs of function echo"):
                await store.append_logs("echo", [{"message": "ok"}, {"message": "not JSON", "extra": object()}])
            assert await store.get_logs("echo") == []

        with_store(store_url, body)

    # -- HTTP ports -----------------------------------------------------------------------------

    def test_port_allocation_is_lowest_free_and_stable(self, store_url: str) -> None:
        async def body(store: Store) -> None:
            for name in ("a", "b", "c", "d"):
                await new_function(store, name)
            assert await store.allocate_http_port("a", 9000, 9009) == 9000
            assert await store.allocate_http_port("a", 9000, 9009) == 9000
            assert await store.allocate_http_port("a", 9500, 9509) == 9000  # kept, whatever the range
            await store.set_http_port("b", 9001)
            assert await store.allocate_http_port("c", 9000, 9009) == 9002
            assert await store.allocate_http_port("d", 9000, 9009, available=lambda p: p != 9003) == 9004
            fetched = await store.get_function("d")
            assert fetched is not None
            assert fetched.http_port == 9004

            with pytest.raises(Conflict, match="Port 9000 is already used by function a"):
                await store.set_http_port("b", 9000)
            await store.set_http_port("a", None)
            assert await store.allocate_http_port("b", 9000, 9009) == 9001
            await new_function(store, "e")
            assert await store.allocate_http_port("e", 9000, 9009) == 9000
            await new_function(store, "f")
            with pytest.raises(StoreError, match="every port in 9000-9002 is taken"):
                await store.allocate_http_port("f", 9000, 9002)
            with pytest.raises(NotFound):
                await store.allocate_http_port("ghost", 9000, 9009)
            with pytest.raises(NotFound):
                await store.set_http_port("ghost", 9000)
            with pytest.raises(ValueError):
                await store.allocate_http_port("f", 9010, 9000)

        with_store(store_url, body)

    def test_concurrent_port_allocations_never_collide(self, store_url: str) -> None:
        upgrade(store_url)

        async def main() -> None:
            stores = [await Store.open(store_url, migrate=False) for _ in range(4)]
            try:
                names = [f"fn{i}" for i in range(16)]
                for name in names:
                    await new_function(stores[0], name)
                ports = await asyncio.gather(
                    *(stores[i % 4].allocate_http_port(name, 7000, 7100) for i, name in enumerate(names))
                )
                assert sorted(ports) == list(range(7000, 7016))
                again = [await stores[1].allocate_http_port(name, 7000, 7100) for name in names]
                assert again == ports
            finally:
                for store in stores:
                    await store.close()

        asyncio.run(main())

    # -- logs -----------------------------------------------------------------------------------

    def test_logs(self, store_url: str) -> None:
        async def body(store: Store) -> None:
            await new_function(store)
            await store.append_logs(
                "echo",
                [
                    {"time": 2000.5, "level": "info", "message": "second", "name": "deployer", "k": [1]},
                    {"time": 1000.0, "level": "debug", "message": "first"},
                ],
            )
            await store.append_logs("echo", [{"message": "no time"}])
            logs = await store.get_logs("echo")
            assert logs[:2] == [
                {"time": 1000.0, "level": "debug", "message": "first"},
                {"time": 2000.5, "level": "info", "message": "second", "name": "deployer", "k": [1]},
            ]
            assert logs[2]["message"] == "no time"
            assert logs[2]["level"] == "info"
            assert logs[2]["time"] > 1.6e12
            assert await store.get_logs("echo", limit=1) == [logs[2]]
            await store.append_logs("echo", [])
            with pytest.raises(NotFound):
                await store.append_logs("ghost", [{"message": "x"}])
            assert await store.get_logs("ghost") == []
            await store.clear_logs("echo")
            assert await store.get_logs("echo") == []

        with_store(store_url, body)

    def test_logs_belong_to_the_generation_whose_deploy_wrote_them(self, store_url: str) -> None:
        async def body(store: Store) -> None:
            await new_function(store)
            await store.append_logs("echo", [{"time": 1.0, "message": "g1 failed"}])
            await store.update_function_config("echo", CONFIG)
            await store.append_logs("echo", [{"time": 3.0, "message": "g2 deploy"}], generation=2)
            await store.append_logs("echo", [{"time": 2.0, "message": "late g1 line"}], generation=1)
            # the current generation's deploy only: no older deploy's failure replayed
            assert [r["message"] for r in await store.get_logs("echo")] == ["g2 deploy"]
            assert [r["message"] for r in await store.get_logs("echo", generation=1)] == ["g1 failed", "late g1 line"]
            assert {g: [r["message"] for r in rs] for g, rs in (await store.deploy_logs("echo")).items()} == {
                1: ["g1 failed", "late g1 line"],
                2: ["g2 deploy"],
            }
            assert await store.deploy_logs("ghost") == {}
            with pytest.raises(NotFound, match="Function not found: function 'ghost' does not exist"):
                await store.append_logs("ghost", [{"message": "x"}], generation=1)

        with_store(store_url, body)

    def test_logs_are_capped_per_function(self, store_url: str) -> None:
        async def body(store: Store) -> None:
            await new_function(store, "a")
            await new_function(store, "b")
            await store.append_logs("b", [{"time": 1.0, "message": "b"}])
            await store.append_logs("a", [{"time": float(i), "message": str(i)} for i in range(1500)])
            await store.append_logs("a", [{"time": float(i), "message": str(i)} for i in range(1500, 2100)])
            logs = await store.get_logs("a", limit=5000)
            assert len(logs) == 2000
            assert [r["message"] for r in logs[:2]] == ["100", "101"]
            assert logs[-1]["message"] == "2099"
            assert len(await store.get_logs("b")) == 1

            store.log_cap = 3
            await store.append_logs("b", [{"time": float(t), "message": str(t)} for t in (5, 2, 9, 4)])
            assert [r["message"] for r in await store.get_logs("b")] == ["4", "5", "9"]

        with_store(store_url, body)

    # -- API tokens -----------------------------------------------------------------------------

    def test_tokens(self, store_url: str) -> None:
        async def body(store: Store) -> None:
            assert await store.has_tokens() is False
            added = await store.add_token("alice", "a" * 64)
            assert (added.principal, added.token_hash, added.last_used_at) == ("alice", "a" * 64, None)
            assert await store.has_tokens() is True
            with pytest.raises(Conflict):
                await store.add_token("bob", "a" * 64)
            before = datetime.now(UTC)
            found = await store.find_token("a" * 64)
            assert found is not None
            assert found.id == added.id
            assert found.last_used_at is not None
            assert found.last_used_at >= before
            assert [t.last_used_at for t in await store.list_tokens()] == [found.last_used_at]
            assert await store.find_token("b" * 64) is None
            other = await store.add_token("bob", "b" * 64)
            assert [t.principal for t in await store.list_tokens()] == ["alice", "bob"]
            assert await store.delete_token(other.id) is True
            assert await store.delete_token(other.id) is False
            assert await store.find_token("b" * 64) is None

        with_store(store_url, body)

    def test_scoped_tokens_expire_and_revoke_and_the_authenticator_refuses_them(self, store_url: str) -> None:
        async def body(store: Store) -> None:
            authenticator = TokenAuthenticator(store)
            live = await store.add_token(
                "alice",
                hash_token("nubis_live"),
                name="ci",
                tenant="team-a",
                project="p",
                role="developer",
                expires_at=utc_now() + timedelta(hours=1),
            )
            await store.add_token("alice", hash_token("nubis_old"), name="old", expires_at=utc_now())
            principal = await authenticator.principal("nubis_live")
            assert principal is not None and principal.name == f"ci@token-{live.id}"
            assert principal.may("write", "team-a", "p") and not principal.may("write", "team-a", "q")
            assert not principal.may("read", "team-b", "p") and not principal.may("manage", "team-a", "p")
            with pytest.raises(AuthenticationError, match="has expired"):
                await authenticator.principal("nubis_old")
            with pytest.raises(AuthenticationError, match="not valid"):
                await authenticator.principal("nubis_unknown")
            assert await authenticator.principal("a.b.c") is None  # a JWT: another authenticator's
            revoked = await store.revoke_token(live.id)
            assert revoked is not None and revoked.revoked_at is not None
            with pytest.raises(AuthenticationError, match="revoked"):
                await authenticator.principal("nubis_live")
            assert [t.name for t in await store.list_tokens("team-a")] == ["ci"]
            assert await store.revoke_token(9999) is None

        with_store(store_url, body)

    def test_tenants_and_the_audit_log(self, store_url: str) -> None:
        async def body(store: Store) -> None:
            await store.ensure_tenant("team-a")
            await store.ensure_tenant("team-a")
            with pytest.raises(Conflict):
                await store.create_tenant("team-a")
            await store.create_tenant("team-b", {"owner": "b"})
            assert [t.name for t in await store.list_tenants()] == ["team-a", "team-b"]
            await store.upsert_project(ProjectRecord(name="pa", namespace="team-a"))
            with pytest.raises(PreconditionFailed):
                await store.delete_tenant("team-a")
            assert await store.delete_tenant("team-b") is True
            assert await store.delete_tenant("team-b") is False
            start = utc_now()
            for i, tenant in enumerate(("team-a", "team-b", "team-a")):
                await store.add_audit(
                    AuditRecord(
                        time=start + timedelta(seconds=i),
                        principal="p",
                        tenant=tenant,
                        project=None,
                        action="write",
                        method="POST",
                        path=f"/api/x/{i}",
                        status=201,
                        outcome="allowed",
                        remote="::1",
                    )
                )
            newest_first = await store.list_audit(tenant="team-a")
            assert [r.path for r in newest_first] == ["/api/x/2", "/api/x/0"]
            assert [r.path for r in await store.list_audit(since=start + timedelta(seconds=1))] == [
                "/api/x/2",
                "/api/x/1",
            ]
            assert len(await store.list_audit(limit=1)) == 1

        with_store(store_url, body)


class TestSqliteStore(StoreBehaviours):
    pass


# -- SQLite only --------------------------------------------------------------------------------


def test_sqlite_connections_use_wal_foreign_keys_and_busy_timeout(store_url: str) -> None:
    async def body(store: Store) -> tuple[Any, ...]:
        async with store.engine.connect() as connection:
            values = []
            for pragma in ("journal_mode", "foreign_keys", "busy_timeout"):
                values.append((await connection.execute(text(f"PRAGMA {pragma}"))).scalar())
            return tuple(values)

    assert with_store(store_url, body) == ("wal", 1, 5000)


def test_open_without_migrate_refuses_an_old_schema(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    with pytest.raises(StoreError, match="nubis db upgrade"):
        asyncio.run(Store.open(url, migrate=False))


def test_default_state_url_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    url = default_state_url(data_dir)
    assert data_dir.is_dir()
    assert url == f"sqlite+aiosqlite:///{data_dir.resolve() / 'nubis.db'}"
    assert upgrade(url) == head_revision()
    with sqlite3.connect(data_dir / "nubis.db") as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    connection.close()
    assert {"projects", "functions", "function_logs", "api_tokens", "alembic_version"} <= tables


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root@localhost/x", "unsupported state URL scheme"),
        ("not a url", "invalid state URL"),
        ("sqlite+aiosqlite://", "in-memory SQLite"),
        ("sqlite+aiosqlite:///:memory:", "in-memory SQLite"),
    ],
)
def test_unusable_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        asyncio.run(Store.open(url))


def test_driver_errors_become_store_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="Could not migrate the database"):
        asyncio.run(Store.open(f"sqlite+aiosqlite:///{blocker / 'sub' / 'x.db'}"))
    not_a_db = tmp_path / "garbage.db"
    not_a_db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"Could not migrate the database .*garbage\.db"):
        asyncio.run(Store.open(f"sqlite+aiosqlite:///{not_a_db}"))
    with pytest.raises(StoreError, match="Could not migrate the database postgresql"):
        asyncio.run(Store.open("postgresql+psycopg://postgres:secret@127.0.0.1:1/nubis"))


def test_errors_after_open_name_the_operation(store_url: str) -> None:
    async def body(store: Store) -> None:
        async with store.engine.begin() as connection:
            await connection.execute(text("DROP TABLE function_logs"))
        await new_function(store)
        with pytest.raises(StoreError, match="Could not read logs of function echo: no such table"):
            await store.get_logs("echo")

    with_store(store_url, body)


def test_cli_upgrade(tmp_path: Path) -> None:
    runner = CliRunner()
    data_dir = tmp_path / "data"
    result = runner.invoke(db_app, ["upgrade"], env={"NUBIS_DATA_DIR": str(data_dir), "NUBIS_STATE_URL": ""})
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f"at revision {head_revision()}")
    assert (data_dir / "nubis.db").is_file()

    url = f"sqlite+aiosqlite:///{tmp_path / 'other.db'}"
    result = runner.invoke(db_app, ["upgrade", "--state-url", url])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{url}: at revision {head_revision()}"

    result = runner.invoke(db_app, ["upgrade", "--state-url", "mysql://x"])
    assert result.exit_code == 1
    assert "unsupported state URL scheme" in result.output
