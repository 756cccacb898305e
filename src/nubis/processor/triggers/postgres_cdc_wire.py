"""The pgoutput logical replication messages (protocol version 1) that the `postgres-cdc` trigger
reads with `pg_logical_slot_peek_binary_changes`, parsed into plain values.

Only what the trigger needs: Begin, Commit, Relation (the columns of a table, needed to read its
rows), Insert, Update, Delete. Truncate, Type, Origin and logical messages are `Other` (skipped:
they carry no row). Column values arrive as PostgreSQL's text output; `value_of` turns the common
types into JSON ones (booleans, integers, floats, json/jsonb) and leaves every other type, numeric
included (no float rounding), as its text. A TOASTed value that did not change is not sent by
PostgreSQL at all: its column is left out of the row.

Layout reference: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

#: microseconds from the Unix epoch to PostgreSQL's (2000-01-01)
PG_EPOCH_US = 946_684_800 * 1_000_000
_BOOL, _INT8, _INT2, _INT4, _OID, _JSON, _FLOAT4, _FLOAT8, _JSONB = 16, 20, 21, 23, 26, 114, 700, 701, 3802
_INTEGERS = frozenset((_INT8, _INT2, _INT4, _OID))
_FLOATS = frozenset((_FLOAT4, _FLOAT8))
_JSONS = frozenset((_JSON, _JSONB))


class WireError(ValueError):
    """Bytes that are not a pgoutput message of protocol version 1."""


@dataclass(frozen=True)
class Begin:
    #: the LSN of the transaction's commit record: what orders transactions
    final_lsn: int
    #: microseconds since the Unix epoch
    commit_time_us: int
    xid: int


@dataclass(frozen=True)
class Commit:
    commit_lsn: int
    #: the LSN just past the commit record: advancing the slot there confirms the transaction
    end_lsn: int
    commit_time_us: int


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    #: part of the replica identity (the key sent with an update's or delete's old row)
    key: bool


@dataclass(frozen=True)
class Relation:
    oid: int
    schema: str
    table: str
    columns: tuple[Column, ...]


#: a row: column name -> value (None: SQL NULL; a column left out: an unchanged TOASTed value)
Row = dict[str, Any]


@dataclass(frozen=True)
class Change:
    """An insert, update or delete; `new`/`old` are raw tuples, read with the relation's columns."""

    operation: str
    relation_oid: int
    new: tuple[tuple[str, bytes | None], ...] | None
    old: tuple[tuple[str, bytes | None], ...] | None
    #: the old tuple holds only the replica identity's columns ('K'), not the whole row ('O')
    old_is_key: bool = False


@dataclass(frozen=True)
class Other:
    """A message the trigger skips (Truncate, Type, Origin, a logical message)."""

    tag: str


Message = Begin | Commit | Relation | Change | Other


_U8, _I16, _U32, _I32 = struct.Struct(">B"), struct.Struct(">h"), struct.Struct(">I"), struct.Struct(">i")
_BEGIN, _COMMIT, _TYPE = struct.Struct(">QqI"), struct.Struct(">BQQq"), struct.Struct(">Ii")
#: a column's kind byte -> its kind: 't' text, 'b' binary, 'n' null, 'u' unchanged TOAST
_KINDS = {b"t": "t", b"b": "b", b"n": "n", b"u": "u"}


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, size: int) -> bytes:
        if self.at + size > len(self.data):
            raise WireError(f"message cut short at byte {self.at} (wanted {size} more of {len(self.data)})")
        chunk = self.data[self.at : self.at + size]
        self.at += size
        return chunk

    def unpack(self, shape: struct.Struct) -> Any:
        if self.at + shape.size > len(self.data):
            raise WireError(f"message cut short at byte {self.at} (wanted {shape.size} more of {len(self.data)})")
        value = shape.unpack_from(self.data, self.at)
        self.at += shape.size
        return value if len(value) > 1 else value[0]

    def string(self) -> str:
        end = self.data.find(b"\x00", self.at)
        if end < 0:
            raise WireError(f"unterminated string at byte {self.at}")
        text = self.data[self.at : end].decode("utf-8", "replace")
        self.at = end + 1
        return text

    def tuple_data(self) -> tuple[tuple[str, bytes | None], ...]:
        """(kind, value) per column (see `_KINDS`); the hot path of a change, so its loop keeps
        its state in locals."""
        data, at = self.data, self.at
        columns: list[tuple[str, bytes | None]] = []
        try:
            (count,) = _I16.unpack_from(data, at)
            at += 2
            for _ in range(count):
                kind = _KINDS.get(data[at : at + 1])
                at += 1
                if kind == "t" or kind == "b":
                    (size,) = _I32.unpack_from(data, at)
                    at += 4
                    if at + size > len(data):
                        raise struct.error
                    columns.append((kind, data[at : at + size]))
                    at += size
                elif kind is not None:
                    columns.append((kind, None))
                else:
                    raise WireError(f"unknown column kind {data[at - 1 : at]!r} at byte {at - 1}")
        except struct.error:
            raise WireError(f"message cut short in a row at byte {at} (of {len(data)})") from None
        self.at = at
        return tuple(columns)


def begin_of(data: bytes) -> tuple[int, int, int]:
    """A Begin message's (final LSN, commit time in µs since the Unix epoch, xid), without the
    `Begin` (the trigger's path per transaction: `postgres_cdc._changes`)."""
    if len(data) < 1 + _BEGIN.size:
        raise WireError(f"message cut short at byte 1 (wanted {_BEGIN.size} more of {len(data)})")
    final_lsn, time_us, xid = _BEGIN.unpack_from(data, 1)
    return final_lsn, time_us + PG_EPOCH_US, xid


def commit_of(data: bytes) -> tuple[int, int, int]:
    """A Commit message's (commit LSN, end LSN, commit time in µs since the Unix epoch)."""
    if len(data) < 1 + _COMMIT.size:
        raise WireError(f"message cut short at byte 1 (wanted {_COMMIT.size} more of {len(data)})")
    _flags, commit_lsn, end_lsn, time_us = _COMMIT.unpack_from(data, 1)
    return commit_lsn, end_lsn, time_us + PG_EPOCH_US


def parse_message(data: bytes) -> Message:
    """One pgoutput message; WireError when the bytes do not parse."""
    reader = _Reader(bytes(data))
    tag = reader.take(1).decode("ascii", "replace")
    if tag == "B":
        return Begin(*begin_of(reader.data))
    if tag == "C":
        return Commit(*commit_of(reader.data))
    if tag == "R":
        oid = reader.unpack(_U32)
        schema, table = reader.string(), reader.string()
        reader.take(1)  # replica identity setting
        columns = []
        for _ in range(reader.unpack(_I16)):
            flags = reader.unpack(_U8)
            name = reader.string()
            type_oid, _typmod = reader.unpack(_TYPE)
            columns.append(Column(name, type_oid, bool(flags & 1)))
        return Relation(oid, schema, table, tuple(columns))
    if tag in ("I", "U", "D"):
        return _change(tag, reader)
    return Other(tag)


def _change(tag: str, reader: _Reader) -> Change:
    oid = reader.unpack(_U32)
    marker = reader.take(1)
    old = None
    old_is_key = False
    if tag != "I" and marker in (b"K", b"O"):
        old_is_key = marker == b"K"
        old = reader.tuple_data()
        marker = reader.take(1) if tag == "U" else b""
    new = None
    if tag != "D":
        if marker != b"N":
            raise WireError(f"expected the new tuple ('N') of an {tag} message, found {marker!r}")
        new = reader.tuple_data()
    operation = {"I": "insert", "U": "update", "D": "delete"}[tag]
    return Change(operation, oid, new, old, old_is_key)


def row_of(relation: Relation, values: tuple[tuple[str, bytes | None], ...], key_only: bool = False) -> Row:
    """A tuple as {column: value}; `key_only`: only the replica identity's columns."""
    if len(values) != len(relation.columns):
        raise WireError(
            f"{relation.schema}.{relation.table}: a row of {len(values)} columns, "
            f"the relation has {len(relation.columns)}"
        )
    row: Row = {}
    for column, (kind, raw) in zip(relation.columns, values, strict=True):
        if kind == "u" or (key_only and not column.key):
            continue
        row[column.name] = None if raw is None else value_of(column.type_oid, raw)
    return row


def value_of(type_oid: int, raw: bytes) -> Any:
    """A column's text output as a JSON value (see the module docstring)."""
    text = raw.decode("utf-8", "replace")
    if type_oid == _BOOL:
        return text == "t"
    if type_oid in _INTEGERS:
        return int(text)
    if type_oid in _FLOATS:
        number = float(text)
        return number if math.isfinite(number) else text
    if type_oid in _JSONS:
        return json.loads(text)
    return text


def lsn_text(lsn: int) -> str:
    """An LSN as PostgreSQL writes it: `16/B374D848`."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_of(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)
