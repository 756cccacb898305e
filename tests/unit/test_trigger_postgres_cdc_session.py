"""The `postgres-cdc` session's bookkeeping, without a server (the integration tests run it against
one): a peek that returns again what is in flight delivers nothing twice; the slot may move only
to the end of a transaction whose changes, and every change before them, are settled; a change
given back stops the rest of its peek (refused at `start`, so nothing after it runs before it),
and the next peek delivers from it on; a lost connection refuses the changes read ahead; and the
factory's read-ahead default."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

from nubis.processor.triggers import postgres_cdc
from nubis.processor.triggers.postgres_cdc import CdcSession, RowChange
from nubis.processor.triggers.postgres_cdc_config import OPERATIONS, PostgresCdcConfig
from nubis.processor.triggers.postgres_cdc_wire import lsn_text
from nubis.spec.trigger import Trigger

CONFIG = PostgresCdcConfig(
    "postgresql://cdc@db/shop", (("public", "items"),), frozenset(OPERATIONS), "slot", "slot", True, True, ""
)
OID = 16384


def relation(oid: int = OID, table: str = "items") -> bytes:
    column = b"\x01id\x00" + struct.pack(">Ii", 23, -1)
    return b"R" + struct.pack(">I", oid) + b"public\x00" + table.encode() + b"\x00d" + struct.pack(">h", 1) + column


def transaction(commit: int, ids: list[int], oid: int = OID) -> list[tuple[str, bytes]]:
    """A peek's rows of one transaction committed at LSN `commit`: Begin, Relation, an insert per
    id, Commit (ending at commit + 8)."""
    rows = [(lsn_text(commit - 100), b"B" + struct.pack(">QqI", commit, 0, commit)), (lsn_text(commit), relation(oid))]
    for index, id_ in enumerate(ids):
        value = str(id_).encode()
        insert = b"I" + struct.pack(">I", oid) + b"N" + struct.pack(">h", 1) + b"t" + struct.pack(">i", len(value))
        rows.append((lsn_text(commit - 50 + index), insert + value))
    rows.append((lsn_text(commit + 8), b"C" + struct.pack(">BQQq", 0, commit, commit + 8, 0)))
    return rows


def session() -> CdcSession:
    return CdcSession(None, CONFIG, 0)  # type: ignore[arg-type]  # no SQL in these tests


def peek(*transactions: list[tuple[str, bytes]]) -> list[tuple[Any, ...]]:
    return [row for rows in transactions for row in rows]


def delivered(cdc: CdcSession, rows: list[tuple[Any, ...]]) -> list[RowChange]:
    return list(cdc._changes(rows, cdc._progress.generation))


def ids(changes: list[RowChange]) -> list[int]:
    return [change.body["new"]["id"] for change in changes]


def test_a_peek_returned_again_delivers_only_what_is_new() -> None:
    cdc = session()
    first = delivered(cdc, peek(transaction(1000, [1, 2]), transaction(2000, [3])))
    assert ids(first) == [1, 2, 3]
    assert [change.event()["id"] for change in first] == ["0/3E8:0", "0/3E8:1", "0/7D0:0"]
    again = delivered(cdc, peek(transaction(1000, [1, 2]), transaction(2000, [3]), transaction(3000, [4])))
    assert ids(again) == [4]


def test_the_slot_may_move_only_past_whole_transactions_settled_in_order() -> None:
    cdc = session()
    one, two, three = delivered(cdc, peek(transaction(1000, [1, 2]), transaction(2000, [3])))

    async def settle(change: RowChange) -> int:
        await change.ack()
        return cdc._settled

    assert asyncio.run(settle(two)) == 0  # the change before it is not settled
    assert asyncio.run(settle(one)) == 1008  # the first transaction's end
    assert asyncio.run(settle(three)) == 2008


def test_a_transaction_without_a_change_for_the_trigger_is_passed_at_once() -> None:
    cdc = session()
    other = [(lsn, data) for lsn, data in transaction(1000, [1], oid=OID + 1)]
    other[1] = (other[1][0], relation(OID + 1, "other"))
    assert delivered(cdc, peek(other)) == []
    assert cdc._settled == 1008


def test_a_change_given_back_stops_its_peek_and_comes_again_first() -> None:
    cdc = session()
    rows = peek(transaction(1000, [1]), transaction(2000, [2]), transaction(3000, [3]))
    changes = cdc._changes(rows, cdc._progress.generation)
    first, second = next(changes), next(changes)
    assert first.start() and second.start()
    asyncio.run(first.ack())
    asyncio.run(second.give_back())  # not handled here (a drain, no worker)
    assert list(changes) == []  # the rest of the peek is not delivered
    assert not second.start()  # and one taken before the give-back does not run
    assert ids(delivered(cdc, rows[4:])) == [2, 3]  # the next peek (the slot past 1) from it on


def test_a_lost_connection_refuses_the_changes_read_ahead() -> None:
    cdc = session()
    waiting = delivered(cdc, peek(transaction(1000, [1]), transaction(2000, [2])))
    cdc._gone(OSError("connection reset"))
    assert cdc.lost is not None and [change.start() for change in waiting] == [False, False]


def test_the_factory_reads_ahead_unless_told_a_prefetch(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from nubis.processor.options import ProcessorOptions

    monkeypatch.setenv("NUBIS_DATA_DIR", str(tmp_path))
    options = postgres_cdc.create.options(ProcessorOptions(function_name="f"))

    def trigger(**attributes: Any) -> Trigger:
        spec = {"kind": "postgres-cdc", "url": "postgresql://db/shop", "attributes": {"tables": ["t"], **attributes}}
        return Trigger.model_validate(spec)

    made = postgres_cdc.create.create(name="t", trigger=trigger(), field="spec.triggers.t", options=options)
    assert made.prefetch == postgres_cdc.READ_AHEAD and made.ordered
    told = postgres_cdc.create.create(
        name="t", trigger=trigger(prefetchCount=3), field="spec.triggers.t", options=options
    )
    assert told.prefetch == 3
