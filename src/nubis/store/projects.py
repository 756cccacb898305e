"""`ProjectsMixin`: the project methods of `Store` (list, get, create, upsert, delete, default).

Projects only group functions; what ties them to functions here is that a project holding any
cannot be deleted.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from nubis.errors import Conflict, NotFound, PreconditionFailed
from nubis.store.base import StoreBase
from nubis.store.models import FunctionRow, ProjectRow
from nubis.store.records import ProjectRecord, utc_now

DEFAULT_PROJECT = "default"
DEFAULT_NAMESPACE = "nuclio"


# Nuclio's own texts come first (clients may match them), then which project it is about.
def project_not_found(name: str) -> NotFound:
    return NotFound(f"Project not found: project {name!r} does not exist")


def project_does_not_exist(name: str) -> PreconditionFailed:
    """A function names a project that is missing (412, as Nuclio answers)."""
    return PreconditionFailed(
        f"Project does not exist: project {name!r} does not exist; create it first "
        f"(POST /api/projects, or `nubis create project {name}`)"
    )


def project_already_exists(name: str) -> Conflict:
    return Conflict(f"Project already exists: project {name!r} exists; pick another name or update it (PUT)")


class ProjectsMixin(StoreBase):
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
                raise project_already_exists(record.name)
            row = _project_row(record)
            try:
                async with session.begin_nested():
                    session.add(row)
            except IntegrityError:
                raise project_already_exists(record.name) from None
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
                raise project_not_found(name)
            count = await session.scalar(
                select(func.count()).select_from(FunctionRow).where(FunctionRow.project == name)
            )
            if count:
                raise PreconditionFailed(
                    f"Project contains functions: project {name!r} still has {count}; delete them first"
                )
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
