"""`Store`: the control plane's desired state (projects, functions, deploy logs, API tokens).

One `Store` per process, shared by the API and the reconciler. Every method is one transaction:
it commits entirely or leaves nothing behind. Database failures surface as `StoreError` naming
the operation; `NotFound`, `Conflict` and `PreconditionFailed` (nubis.errors) mean what the API
answers with 404, 409 and 412.

Concurrency: on SQLite, writing transactions begin with `BEGIN IMMEDIATE` (one writer at a time,
others wait up to the busy timeout), so read-then-write is atomic; on PostgreSQL, rows about to be
changed are read `FOR UPDATE`, and inserts that race another process are told apart after a
savepoint rollback.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import CursorResult, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from nubis.control.store.engine import SQLITE_BEGIN_OPTION, create_store_engine, display_url, parse_url
from nubis.control.store.errors import StoreError
from nubis.control.store.migrate import current_revision, head_revision, upgrade
from nubis.control.store.models import ApiTokenRow, FunctionLogRow, FunctionRow, ProjectRow
from nubis.control.store.records import (
    FunctionRecord,
    LogRecord,
    ProjectRecord,
    TokenRecord,
    utc_now,
)
from nubis.errors import Conflict, NotFound, NubisError, PreconditionFailed

DEFAULT_PROJECT = "default"
DEFAULT_NAMESPACE = "nuclio"
#: Deploy log records kept per function; the oldest beyond this are deleted.
LOG_CAP_PER_FUNCTION = 2000
#: `find_token` writes `last_used_at` at most this often per token (a read stays a read).
TOKEN_TOUCH_INTERVAL = timedelta(seconds=60)
#: States in which a function's deploy is unfinished: the reconciler picks these up at start.
RECONCILE_STATES = ("building", "waitingForResourceConfiguration")
#: Attempts of a port allocation that lost a race to another process's explicit `set_http_port`.
_RACE_RETRIES = 8
#: PostgreSQL advisory lock serialising HTTP port changes across processes (SQLite: BEGIN IMMEDIATE).
PORT_LOCK_KEY = 0x6E75626970  # "nubip"


def new_resource_version() -> str:
    return uuid.uuid4().hex


class Store:
    """Async repository over the state database. Create with `await Store.open(url)`."""

    #: per-store cap of deploy log records kept per function (tests may lower it)
    log_cap: int = LOG_CAP_PER_FUNCTION

    def __init__(self, engine: AsyncEngine, url: URL) -> None:
        self._engine = engine
        self._url = url
        self._dialect = url.get_backend_name()

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True) -> Store:
        """Connect to the database at `url`, first applying pending migrations (`migrate=True`).

        With `migrate=False` the schema must already be at the head revision (`nubis db upgrade`).
        """
        parsed = parse_url(url)
        if migrate:
            await asyncio.to_thread(upgrade, url)
        try:
            engine = create_store_engine(parsed)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"Could not open the database {display_url(parsed)}: {_reason(exc)}") from exc
        store = cls(engine, parsed)
        try:
            if not migrate:
                await store._check_schema()
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        """Close every pooled connection; the store is unusable afterwards."""
        await self._engine.dispose()

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine (diagnostics and tests; the store's methods are the interface)."""
        return self._engine

    @property
    def url(self) -> str:
        """The database URL, password hidden."""
        return display_url(self._url)

    async def _check_schema(self) -> None:
        async with self._session("read the schema revision") as session:
            connection = await session.connection()
            revision = await connection.run_sync(current_revision)
        head = head_revision()
        if revision != head:
            raise StoreError(
                f"The database {self.url} is at schema revision {revision or 'none'}, this Nubis needs "
                f"{head}: run `nubis db upgrade`"
            )

    @asynccontextmanager
    async def _session(self, operation: str, *, write: bool = False) -> AsyncIterator[AsyncSession]:
        """One transaction; commits when the block ends, rolls back on any error.

        Driver and SQLAlchemy errors become `StoreError("Could not <operation>: <reason>")`.
        """
        try:
            async with self._engine.connect() as connection:
                if write:
                    await connection.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
                async with AsyncSession(bind=connection, expire_on_commit=False) as session, session.begin():
                    yield session
        except NubisError:
            raise
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"Could not {operation}: {_reason(exc)}") from exc
        except (TypeError, ValueError) as exc:
            # A value the driver cannot store (psycopg raises JSON encoding errors unwrapped).
            raise StoreError(f"Could not {operation}: {exc}") from exc

    def _insert(self) -> Callable[..., Any]:
        return postgresql.insert if self._dialect == "postgresql" else sqlite.insert

    # -- projects -------------------------------------------------------------------------------

    async def list_projects(self) -> list[ProjectRecord]:
        async with self._session("list projects") as session:
            rows = await session.scalars(select(ProjectRow).order_by(ProjectRow.name))
            return [_project(row) for row in rows]

    async def get_project(self, name: str) -> ProjectRecord | None:
        async with self._session(f"read project {name}") as session:
            row = await session.get(ProjectRow, name)
            return _project(row) if row else None

    async def create_project(self, record: ProjectRecord) -> ProjectRecord:
        """Store a new project; `Conflict` if one with that name exists."""
        async with self._session(f"create project {record.name}", write=True) as session:
            if await session.get(ProjectRow, record.name) is not None:
                raise Conflict("Project already exists")
            row = _project_row(record)
            try:
                async with session.begin_nested():
                    session.add(row)
            except IntegrityError:
                raise Conflict("Project already exists") from None
            return _project(row)

    async def upsert_project(self, record: ProjectRecord) -> ProjectRecord:
        """Create the project, or replace its namespace, labels, annotations and spec."""
        async with self._session(f"store project {record.name}", write=True) as session:
            values = {
                "namespace": record.namespace,
                "labels": dict(record.labels),
                "annotations": dict(record.annotations),
                "spec": dict(record.spec),
            }
            statement = self._insert()(ProjectRow).values(name=record.name, created_at=record.created_at, **values)
            await session.execute(statement.on_conflict_do_update(index_elements=[ProjectRow.name], set_=values))
            row = await session.get(ProjectRow, record.name, populate_existing=True)
            assert row is not None
            return _project(row)

    async def delete_project(self, name: str) -> None:
        """`NotFound` if missing; `PreconditionFailed` while functions still belong to it."""
        async with self._session(f"delete project {name}", write=True) as session:
            row = await session.get(ProjectRow, name, with_for_update=True)
            if row is None:
                raise NotFound("Project not found")
            count = await session.scalar(
                select(func.count()).select_from(FunctionRow).where(FunctionRow.project == name)
            )
            if count:
                raise PreconditionFailed("Project contains functions")
            await session.delete(row)

    async def ensure_default_project(self, namespace: str = DEFAULT_NAMESPACE) -> ProjectRecord:
        """Create the `default` project unless it exists; safe when several processes race."""
        async with self._session("create the default project", write=True) as session:
            statement = self._insert()(ProjectRow).values(
                name=DEFAULT_PROJECT,
                namespace=namespace,
                labels={},
                annotations={},
                spec={},
                created_at=utc_now(),
            )
            await session.execute(statement.on_conflict_do_nothing(index_elements=[ProjectRow.name]))
            row = await session.get(ProjectRow, DEFAULT_PROJECT)
            assert row is not None
            return _project(row)

    # -- functions ------------------------------------------------------------------------------

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

    async def functions_fingerprint(self) -> tuple[int, Any]:
        """(count, newest updated_at) of all functions: changes whenever any function does, so a
        reader can cache what it built from a full listing and re-check it with one cheap query."""
        table = FunctionRow.__table__
        async with self._session("read the functions fingerprint") as session:
            row = (await session.execute(select(func.count(), func.max(table.c.updated_at)))).one()
            return int(row[0]), row[1]

    async def get_function(self, name: str) -> FunctionRecord | None:
        async with self._session(f"read function {name}") as session:
            row = await session.get(FunctionRow, name)
            return _function(row) if row else None

    async def create_function(self, name: str, project: str, namespace: str, config: dict[str, Any]) -> FunctionRecord:
        """Store a new function in state `building` (generation 1, never deployed).

        `Conflict` if the name exists (in any project: names are global), `PreconditionFailed`
        if the project does not exist.
        """
        async with self._session(f"create function {name}", write=True) as session:
            await self._refuse_existing_function(session, name)
            if await session.get(ProjectRow, project) is None:
                raise PreconditionFailed(f"Project {project} does not exist")
            now = utc_now()
            row = FunctionRow(
                name=name,
                project=project,
                namespace=namespace,
                config=dict(config),
                status={"state": "building"},
                generation=1,
                deployed_generation=0,
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
                raise PreconditionFailed(f"Project {project} does not exist") from None
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
                    raise PreconditionFailed(f"Project {project} does not exist")
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
            return _rowcount(result) > 0

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
            raise NotFound("Function not found")
        return row

    # -- deploy logs ----------------------------------------------------------------------------

    async def append_logs(self, function: str, records: Iterable[dict[str, Any]]) -> None:
        """Append log records (`{"time": epoch ms, "level", "message", ...extra}`) to the function.

        A record without `time` gets now, without `level` gets `info`. Only the newest `log_cap`
        records are kept. `NotFound` if the function does not exist.
        """
        rows = [_log_row(function, record) for record in records]
        if not rows:
            return
        async with self._session(f"append logs of function {function}", write=True) as session:
            if await session.get(FunctionRow, function, with_for_update=True) is None:
                raise NotFound("Function not found")
            session.add_all(rows)
            await session.flush()
            count = await session.scalar(
                select(func.count()).select_from(FunctionLogRow).where(FunctionLogRow.function == function)
            )
            if count and count > self.log_cap:
                newest = (
                    select(FunctionLogRow.id)
                    .where(FunctionLogRow.function == function)
                    .order_by(FunctionLogRow.time.desc(), FunctionLogRow.id.desc())
                    .limit(self.log_cap)
                )
                await session.execute(
                    delete(FunctionLogRow)
                    .where(FunctionLogRow.function == function, FunctionLogRow.id.not_in(newest))
                    .execution_options(synchronize_session=False)
                )

    async def get_logs(self, function: str, limit: int = 500) -> list[dict[str, Any]]:
        """The newest `limit` records of the function, oldest first (empty if none or no function)."""
        statement = (
            select(FunctionLogRow)
            .where(FunctionLogRow.function == function)
            .order_by(FunctionLogRow.time.desc(), FunctionLogRow.id.desc())
            .limit(max(0, limit))
        )
        async with self._session(f"read logs of function {function}") as session:
            rows = list(await session.scalars(statement))
        return [_log(row).as_dict() for row in reversed(rows)]

    async def clear_logs(self, function: str) -> None:
        async with self._session(f"clear logs of function {function}", write=True) as session:
            await session.execute(delete(FunctionLogRow).where(FunctionLogRow.function == function))

    # -- API tokens -----------------------------------------------------------------------------

    async def add_token(self, principal: str, token_hash: str) -> TokenRecord:
        """Store a token's sha256 hex digest for `principal`; `Conflict` if that hash exists."""
        async with self._session(f"add a token for {principal}", write=True) as session:
            if await session.scalar(select(ApiTokenRow.id).where(ApiTokenRow.token_hash == token_hash)):
                raise Conflict("Token already exists")
            row = ApiTokenRow(principal=principal, token_hash=token_hash, created_at=utc_now())
            try:
                async with session.begin_nested():
                    session.add(row)
            except IntegrityError:
                raise Conflict("Token already exists") from None
            return _token(row)

    async def find_token(self, token_hash: str) -> TokenRecord | None:
        """The token with this hash, its `last_used_at` set to now (written at most once a minute)."""
        async with self._session("look up a token") as session:
            row = await session.scalar(select(ApiTokenRow).where(ApiTokenRow.token_hash == token_hash))
        if row is None:
            return None
        now = utc_now()
        if row.last_used_at is None or now - row.last_used_at >= TOKEN_TOUCH_INTERVAL:
            async with self._session("record a token's use", write=True) as session:
                await session.execute(update(ApiTokenRow).where(ApiTokenRow.id == row.id).values(last_used_at=now))
            row.last_used_at = now
        return _token(row)

    async def has_tokens(self) -> bool:
        async with self._session("count tokens") as session:
            return await session.scalar(select(ApiTokenRow.id).limit(1)) is not None

    async def list_tokens(self) -> list[TokenRecord]:
        async with self._session("list tokens") as session:
            return [_token(row) for row in await session.scalars(select(ApiTokenRow).order_by(ApiTokenRow.id))]

    async def delete_token(self, token_id: int) -> bool:
        async with self._session(f"delete token {token_id}", write=True) as session:
            result = await session.execute(delete(ApiTokenRow).where(ApiTokenRow.id == token_id))
            return _rowcount(result) > 0


# -- helpers ------------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    """The driver's message (first line), without SQLAlchemy's statement dump."""
    original = getattr(exc, "orig", None)
    text = str(original if original is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _rowcount(result: Any) -> int:
    return result.rowcount if isinstance(result, CursorResult) else 0


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


def _log_row(function: str, record: dict[str, Any]) -> FunctionLogRow:
    extra = {k: v for k, v in record.items() if k not in ("time", "level", "message")}
    raw_time = record.get("time")
    try:
        when = float(raw_time) if raw_time is not None else time.time() * 1000.0
    except (TypeError, ValueError):
        raise StoreError(
            f"Could not append logs of function {function}: 'time' must be epoch milliseconds, found {raw_time!r}"
        ) from None
    return FunctionLogRow(
        function=function,
        time=when,
        level=str(record.get("level") or "info"),
        message=str(record.get("message", "")),
        extra=extra,
    )


def _project_row(record: ProjectRecord) -> ProjectRow:
    return ProjectRow(
        name=record.name,
        namespace=record.namespace,
        labels=dict(record.labels),
        annotations=dict(record.annotations),
        spec=dict(record.spec),
        created_at=record.created_at,
    )


def _project(row: ProjectRow) -> ProjectRecord:
    return ProjectRecord(
        name=row.name,
        namespace=row.namespace,
        labels=dict(row.labels or {}),
        annotations=dict(row.annotations or {}),
        spec=dict(row.spec or {}),
        created_at=row.created_at,
    )


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


def _log(row: FunctionLogRow) -> LogRecord:
    return LogRecord(
        function=row.function,
        time=row.time,
        level=row.level,
        message=row.message,
        extra=dict(row.extra or {}),
    )


def _token(row: ApiTokenRow) -> TokenRecord:
    return TokenRecord(
        id=row.id,
        principal=row.principal,
        token_hash=row.token_hash,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
    )
