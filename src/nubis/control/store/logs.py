"""`LogsMixin`: the deploy log methods of `Store` (append, read, clear).

Deploy logs are what a build or deploy printed, kept per function and capped at `log_cap` records
(the oldest go first) so a function redeployed for months does not grow the database without end.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, func, select

from nubis.control.store.base import StoreBase
from nubis.control.store.errors import StoreError
from nubis.control.store.models import FunctionLogRow, FunctionRow
from nubis.control.store.records import LogRecord
from nubis.errors import NotFound

#: Deploy log records kept per function; the oldest beyond this are deleted.
LOG_CAP_PER_FUNCTION = 2000


class LogsMixin(StoreBase):
    #: per-store cap of deploy log records kept per function (tests may lower it)
    log_cap: int = LOG_CAP_PER_FUNCTION

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


def _log(row: FunctionLogRow) -> LogRecord:
    return LogRecord(
        function=row.function,
        time=row.time,
        level=row.level,
        message=row.message,
        extra=dict(row.extra or {}),
    )
