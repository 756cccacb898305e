"""`LogsMixin`: the deploy log methods of `Store` (append, read, clear).

Deploy logs are what a build or deploy printed. Each record belongs to the generation whose deploy
wrote it, so `status.logs` shows the current deploy only (a client printing it never replays an
older deploy's failure), while older deploys stay readable per generation. Records are capped at
`log_cap` per function (the oldest go first), so a function redeployed for months does not grow
the database without end.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, func, select

from nubis.store.base import StoreBase
from nubis.store.errors import StoreError
from nubis.store.functions import function_not_found
from nubis.store.models import FunctionLogRow, FunctionRow
from nubis.store.records import LogRecord

#: Deploy log records kept per function; the oldest beyond this are deleted.
LOG_CAP_PER_FUNCTION = 2000


class LogsMixin(StoreBase):
    #: per-store cap of deploy log records kept per function (tests may lower it)
    log_cap: int = LOG_CAP_PER_FUNCTION

    async def append_logs(
        self, function: str, records: Iterable[dict[str, Any]], *, generation: int | None = None
    ) -> None:
        """Append log records (`{"time": epoch ms, "level", "message", ...extra}`) to the function.

        They belong to `generation`'s deploy; None means the function's current generation (what
        a deploy in progress or the serving generation's health reports belong to). A record
        without `time` gets now, without `level` gets `info`. Only the newest `log_cap` records
        are kept. `NotFound` if the function does not exist.
        """
        records = list(records)
        if not records:
            return
        async with self._session(f"append logs of function {function}", write=True) as session:
            row = await session.get(FunctionRow, function, with_for_update=True)
            if row is None:
                raise function_not_found(function)
            deploy = row.generation if generation is None else generation
            session.add_all([_log_row(function, deploy, record) for record in records])
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

    async def get_logs(self, function: str, limit: int = 500, *, generation: int | None = None) -> list[dict[str, Any]]:
        """The newest `limit` records of one deploy, oldest first: `generation`'s, or (None) the
        function's current generation's. Empty if none or no such function."""
        if generation is None:
            wanted: Any = select(FunctionRow.generation).where(FunctionRow.name == function).scalar_subquery()
        else:
            wanted = generation
        statement = (
            select(FunctionLogRow)
            .where(FunctionLogRow.function == function, FunctionLogRow.generation == wanted)
            .order_by(FunctionLogRow.time.desc(), FunctionLogRow.id.desc())
            .limit(max(0, limit))
        )
        async with self._session(f"read logs of function {function}") as session:
            rows = list(await session.scalars(statement))
        return [_log(row).as_dict() for row in reversed(rows)]

    async def deploy_logs(self, function: str) -> dict[int, list[dict[str, Any]]]:
        """Every kept record of the function, by the generation whose deploy wrote it (generations
        ascending, records oldest first); empty if none or no such function."""
        statement = (
            select(FunctionLogRow)
            .where(FunctionLogRow.function == function)
            .order_by(FunctionLogRow.generation, FunctionLogRow.time, FunctionLogRow.id)
        )
        by_generation: dict[int, list[dict[str, Any]]] = {}
        async with self._session(f"read the deploy logs of function {function}") as session:
            for row in await session.scalars(statement):
                by_generation.setdefault(row.generation, []).append(_log(row).as_dict())
        return by_generation

    async def clear_logs(self, function: str) -> None:
        async with self._session(f"clear logs of function {function}", write=True) as session:
            await session.execute(delete(FunctionLogRow).where(FunctionLogRow.function == function))


def _log_row(function: str, generation: int, record: dict[str, Any]) -> FunctionLogRow:
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
        generation=generation,
        time=when,
        level=str(record.get("level") or "info"),
        message=str(record.get("message", "")),
        extra=extra,
    )


def _log(row: FunctionLogRow) -> LogRecord:
    return LogRecord(
        function=row.function,
        time=row.time,
        level=row.level,
        message=row.message,
        extra=dict(row.extra or {}),
    )
