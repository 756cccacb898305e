"""`FunctionsMixin`: the function methods of `Store`: CRUD, status, HTTP ports, fingerprint.

Ports live with functions because a port is a column of the function's row, allocated under the
same row lock. Writers compare `resource_version` (optimistic concurrency) and bump `generation`
on every config change; the reconciler deploys until `deployed_generation` catches up.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from nubis.errors import Conflict, NotFound
from nubis.store.base import StoreBase, rowcount
from nubis.store.errors import StoreError
from nubis.store.models import FunctionLogRow, FunctionRow, ProjectRow
from nubis.store.projects import project_does_not_exist
from nubis.store.records import FunctionRecord, utc_now

#: States in which a function's deploy is unfinished: the reconciler picks these up at start.
RECONCILE_STATES = ("building", "waitingForResourceConfiguration")
#: Attempts of a port allocation that lost a race to another process's explicit `set_http_port`.
_RACE_RETRIES = 8
#: PostgreSQL advisory lock serialising HTTP port changes across processes (SQLite: BEGIN IMMEDIATE).
PORT_LOCK_KEY = 0x6E75626970  # "nubip"


def new_resource_version() -> str:
    return uuid.uuid4().hex


def function_not_found(name: str) -> NotFound:
    """Nuclio's text first (clients may match it), then which function it is about."""
    return NotFound(f"Function not found: function {name!r} does not exist")


class FunctionsMixin(StoreBase):
    async def list_functions(self, project: str | None = None, *, namespace: str | None = None) -> list[FunctionRecord]:
        # Plain rows, not ORM instances: listing a thousand functions is a hot read path, and
        # identity-map bookkeeping cost several times the query itself.
        table = FunctionRow.__table__
        statement = select(table).order_by(table.c.name)
        if project is not None:
            statement = statement.where(table.c.project == project)
        if namespace is not None:
            statement = statement.where(table.c.namespace == namespace)
        async with self._session("list functions") as session:
            result = await session.execute(statement)
            return [_function(row) for row in result]

    async def function_versions(self, project: str | None = None) -> list[tuple[str, Any]]:
        """(name, updated_at) of every function (of a project), by name: `updated_at` changes with
        every write to a function, so a reader can cache what it built per function and re-read
        only the functions that changed (see `functions_named`)."""
        return [(name, stamp) for name, stamp, _, _ in await self.function_places(project)]

    async def function_places(
        self, project: str | None = None, namespace: str | None = None
    ) -> list[tuple[str, Any, str, str]]:
        """(name, updated_at, namespace, project) of every function (of a project, of a namespace),
        by name: what a list needs to show each caller only the functions it may see."""
        table = FunctionRow.__table__
        statement = select(table.c.name, table.c.updated_at, table.c.namespace, table.c.project).order_by(table.c.name)
        if project is not None:
            statement = statement.where(table.c.project == project)
        if namespace is not None:
            statement = statement.where(table.c.namespace == namespace)
        async with self._session("list function versions") as session:
            return [(row[0], row[1], row[2], row[3]) for row in await session.execute(statement)]

    async def functions_named(self, names: list[str]) -> list[FunctionRecord]:
        """The named functions (missing names are skipped), read in chunks of 500."""
        table = FunctionRow.__table__
        records: list[FunctionRecord] = []
        async with self._session("read functions") as session:
            for start in range(0, len(names), 500):
                chunk = names[start : start + 500]
                result = await session.execute(select(table).where(table.c.name.in_(chunk)))
                records.extend(_function(row) for row in result)
        return records

    async def get_function(self, name: str) -> FunctionRecord | None:
        async with self._session(f"read function {name}") as session:
            row = await session.get(FunctionRow, name)
            return _function(row) if row else None

    async def create_function(
        self, name: str, project: str, namespace: str, config: dict[str, Any], *, imported: bool = False
    ) -> FunctionRecord:
        """Store a new function in state `building` (generation 1, never deployed), or with
        `imported` in state `imported`, counted as deployed so the reconciler leaves it (in the
        same statement: a reconcile pass in between would otherwise start deploying it).

        `Conflict` if the name exists (in any project: names are global), `PreconditionFailed`
        if the project does not exist.
        """
        async with self._session(f"create function {name}", write=True) as session:
            await self._refuse_existing_function(session, name)
            if await session.get(ProjectRow, project) is None:
                raise project_does_not_exist(project)
            now = utc_now()
            row = FunctionRow(
                name=name,
                project=project,
                namespace=namespace,
                config=dict(config),
                status={"state": "imported" if imported else "building"},
                generation=1,
                deployed_generation=1 if imported else 0,
                resource_version=new_resource_version(),
                http_port=None,
                created_at=now,
                updated_at=now,
            )
            try:
                async with session.begin_nested():
                    session.add(row)
            except IntegrityError:
                # Lost a race: another process created the function or deleted the project.
                await self._refuse_existing_function(session, name)
                raise project_does_not_exist(project) from None
            return _function(row)

    @staticmethod
    async def _refuse_existing_function(session: AsyncSession, name: str) -> None:
        owner = await session.scalar(select(FunctionRow.project).where(FunctionRow.name == name))
        if owner is not None:
            raise Conflict(f"Function {name} already exists in project {owner}")

    async def update_function_config(
        self,
        name: str,
        config: dict[str, Any],
        *,
        expected_resource_version: str | None = None,
        project: str | None = None,
        namespace: str | None = None,
    ) -> FunctionRecord:
        """Replace the function's config: generation + 1, a new resource_version, state `building`.

        The rest of `status` is kept except `message` (it described the previous deploy).
        `NotFound` if missing; `Conflict` if `expected_resource_version` is given and differs;
        `PreconditionFailed` if moving to a `project` that does not exist.
        """
        async with self._session(f"update function {name}", write=True) as session:
            row = await self._function_for_update(session, name)
            _check_resource_version(row, expected_resource_version)
            if project is not None and project != row.project:
                if await session.get(ProjectRow, project) is None:
                    raise project_does_not_exist(project)
                row.project = project
            if namespace is not None:
                row.namespace = namespace
            status = {k: v for k, v in row.status.items() if k != "message"}
            status["state"] = "building"
            row.config = dict(config)
            row.status = status
            row.generation += 1
            row.resource_version = new_resource_version()
            row.updated_at = utc_now()
            await session.flush()
            return _function(row)

    async def set_function_status(
        self,
        name: str,
        status: dict[str, Any],
        *,
        deployed_generation: int | None = None,
        only_if_generation: int | None = None,
    ) -> bool:
        """Replace `status` (and set `deployed_generation` if given); False if nothing was written.

        With `only_if_generation`, writes only while the function's generation still equals it
        (one compare-and-set statement), so a deploy of an older spec never overwrites the status of
        a newer one. A missing function is not an error: it returns False.
        """
        values: dict[str, Any] = {"status": dict(status), "updated_at": utc_now()}
        if deployed_generation is not None:
            values["deployed_generation"] = deployed_generation
        statement = update(FunctionRow).where(FunctionRow.name == name).values(**values)
        if only_if_generation is not None:
            statement = statement.where(FunctionRow.generation == only_if_generation)
        async with self._session(f"set the status of function {name}", write=True) as session:
            result = await session.execute(statement.execution_options(synchronize_session=False))
            return rowcount(result) > 0

    async def set_http_port(self, name: str, port: int | None) -> None:
        """Store (or clear, with None) the function's HTTP port; `Conflict` if another has it."""
        if port is not None:
            _check_port(port)
        async with self._session(f"set the HTTP port of function {name}", write=True) as session:
            await self._lock_ports(session)
            row = await self._function_for_update(session, name)
            if port is not None:
                await _refuse_taken_port(session, name, port)
            try:
                async with session.begin_nested():
                    row.http_port = port
            except IntegrityError:
                await _refuse_taken_port(session, name, port)  # taken meanwhile by another process
                raise

    async def allocate_http_port(
        self, name: str, low: int, high: int, *, available: Callable[[int], bool] | None = None
    ) -> int:
        """The function's HTTP port: the one it has, else the lowest in [low, high] no other
        function uses (and, if given, for which `available(port)` is true), stored atomically.
        """
        _check_port(low)
        _check_port(high)
        if low > high:
            raise ValueError(f"empty port range {low}-{high}")
        for _ in range(_RACE_RETRIES):
            async with self._session(f"allocate an HTTP port for function {name}", write=True) as session:
                await self._lock_ports(session)
                row = await self._function_for_update(session, name)
                if row.http_port is not None:
                    return row.http_port
                used = set(
                    await session.scalars(
                        select(FunctionRow.http_port).where(
                            FunctionRow.http_port.between(low, high), FunctionRow.name != name
                        )
                    )
                )
                port = next(
                    (p for p in range(low, high + 1) if p not in used and (available is None or available(p))),
                    None,
                )
                if port is None:
                    raise StoreError(
                        f"Could not allocate an HTTP port for function {name}: every port in {low}-{high} is taken"
                    )
                try:
                    async with session.begin_nested():
                        row.http_port = port
                except IntegrityError:
                    continue  # another process took the port first: look again
                return port
        raise StoreError(f"Could not allocate an HTTP port for function {name}: too many concurrent allocations")

    async def delete_function(self, name: str, *, expected_resource_version: str | None = None) -> bool:
        """Delete the function and its logs; False if it did not exist.

        `Conflict` if `expected_resource_version` is given and differs.
        """
        async with self._session(f"delete function {name}", write=True) as session:
            row = await session.get(FunctionRow, name, with_for_update=True)
            if row is None:
                return False
            _check_resource_version(row, expected_resource_version)
            await session.execute(delete(FunctionLogRow).where(FunctionLogRow.function == name))
            await session.delete(row)
            return True

    async def functions_needing_reconcile(self) -> list[FunctionRecord]:
        """Functions whose deploy is unfinished: generation != deployed_generation, or a
        provisioning state (`building`, `waitingForResourceConfiguration`)."""
        state = FunctionRow.status["state"].as_string()
        statement = (
            select(FunctionRow)
            .where(
                or_(
                    FunctionRow.generation != FunctionRow.deployed_generation,
                    state.in_(RECONCILE_STATES),
                )
            )
            .order_by(FunctionRow.name)
        )
        async with self._session("list functions to reconcile") as session:
            return [_function(row) for row in await session.scalars(statement)]

    async def _lock_ports(self, session: AsyncSession) -> None:
        """Serialise port changes: without it, N processes allocating at once all pick the same port
        and N - 1 of them retry (READ COMMITTED sees no uncommitted port)."""
        if self._dialect == "postgresql":
            await session.execute(select(func.pg_advisory_xact_lock(PORT_LOCK_KEY)))

    async def _function_for_update(self, session: AsyncSession, name: str) -> FunctionRow:
        row = await session.get(FunctionRow, name, with_for_update=True, populate_existing=True)
        if row is None:
            raise function_not_found(name)
        return row


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1-65535")


def _check_resource_version(row: FunctionRow, expected: str | None) -> None:
    if expected is not None and expected != row.resource_version:
        raise Conflict(
            f"Function {row.name} was changed by someone else: resourceVersion {expected} is not the "
            f"current {row.resource_version}; read the function again and retry"
        )


async def _refuse_taken_port(session: AsyncSession, name: str, port: int | None) -> None:
    owner = await session.scalar(
        select(FunctionRow.name).where(FunctionRow.http_port == port, FunctionRow.name != name)
    )
    if owner is not None:
        raise Conflict(f"Port {port} is already used by function {owner}")


def _function(row: Any) -> FunctionRecord:
    """From an ORM `FunctionRow` or a plain row of the `functions` table (same attribute names)."""
    return FunctionRecord(
        name=row.name,
        project=row.project,
        namespace=row.namespace,
        config=dict(row.config or {}),
        status=dict(row.status or {}),
        generation=row.generation,
        deployed_generation=row.deployed_generation,
        resource_version=row.resource_version,
        http_port=row.http_port,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
