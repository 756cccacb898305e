"""The pgoutput parser of the `postgres-cdc` trigger, on messages captured from PostgreSQL 15
(`pg_logical_slot_peek_binary_changes`, proto_version 1): a table `t (id int primary key, v text,
j jsonb, f float8, b bool)`, one insert, then an update, an insert and a delete in one transaction."""

from __future__ import annotations

import pytest

from nubis.processor.triggers import postgres_cdc_wire as wire

BEGIN = b"B\x00\x00\x00\x00\x01T\x16p\x00\x03\x04\x95\x13\xfd\xdc'\x00\x00\x02\xd7"
RELATION = (
    b"R\x00\x00@\x00public\x00t\x00d\x00\x05\x01id\x00\x00\x00\x00\x17\xff\xff\xff\xff\x00v\x00\x00\x00\x00\x19"
    b"\xff\xff\xff\xff\x00j\x00\x00\x00\x0e\xda\xff\xff\xff\xff\x00f\x00\x00\x00\x02\xbd\xff\xff\xff\xff\x00b"
    b"\x00\x00\x00\x00\x10\xff\xff\xff\xff"
)
INSERT = (
    b'I\x00\x00@\x00N\x00\x05t\x00\x00\x00\x011t\x00\x00\x00\x01at\x00\x00\x00\x08{"x": 1}t\x00\x00\x00\x031.5'
    b"t\x00\x00\x00\x01t"
)
COMMIT = b"C\x00\x00\x00\x00\x00\x01T\x16p\x00\x00\x00\x00\x01T\x16\xa0\x00\x03\x04\x95\x13\xfd\xdc'"
UPDATE = (
    b'U\x00\x00@\x00N\x00\x05t\x00\x00\x00\x011t\x00\x00\x00\x01bt\x00\x00\x00\x08{"x": 1}t\x00\x00\x00\x031.5'
    b"t\x00\x00\x00\x01t"
)
INSERT_NULLS = b"I\x00\x00@\x00N\x00\x05t\x00\x00\x00\x012nnnt\x00\x00\x00\x01f"
DELETE_KEY = b"D\x00\x00@\x00K\x00\x05t\x00\x00\x00\x012nnnn"


def relation() -> wire.Relation:
    parsed = wire.parse_message(RELATION)
    assert isinstance(parsed, wire.Relation)
    return parsed


def test_begin_and_commit_carry_the_lsns_that_order_and_confirm_a_transaction() -> None:
    begin, commit = wire.parse_message(BEGIN), wire.parse_message(COMMIT)
    assert isinstance(begin, wire.Begin) and isinstance(commit, wire.Commit)
    assert wire.lsn_text(begin.final_lsn) == "0/1541670" == wire.lsn_text(commit.commit_lsn)
    assert wire.lsn_text(commit.end_lsn) == "0/15416A0"  # the peek's lsn of the commit row
    assert begin.xid == 727 and begin.commit_time_us == commit.commit_time_us
    assert 1_600_000_000 < begin.commit_time_us // 1_000_000 < 2_500_000_000  # Unix seconds


def test_a_relation_names_its_columns_types_and_key() -> None:
    parsed = relation()
    assert (parsed.oid, parsed.schema, parsed.table) == (16384, "public", "t")
    assert [(c.name, c.type_oid, c.key) for c in parsed.columns] == [
        ("id", 23, True),
        ("v", 25, False),
        ("j", 3802, False),
        ("f", 701, False),
        ("b", 16, False),
    ]


def test_rows_are_typed_json_values() -> None:
    insert = wire.parse_message(INSERT)
    assert isinstance(insert, wire.Change) and insert.operation == "insert" and insert.old is None
    assert insert.new is not None
    assert wire.row_of(relation(), insert.new) == {"id": 1, "v": "a", "j": {"x": 1}, "f": 1.5, "b": True}
    nulls = wire.parse_message(INSERT_NULLS)
    assert isinstance(nulls, wire.Change) and nulls.new is not None
    assert wire.row_of(relation(), nulls.new) == {"id": 2, "v": None, "j": None, "f": None, "b": False}


def test_an_update_without_a_full_identity_has_no_old_row_and_a_delete_only_its_key() -> None:
    update = wire.parse_message(UPDATE)
    assert isinstance(update, wire.Change) and update.operation == "update" and update.old is None
    delete = wire.parse_message(DELETE_KEY)
    assert isinstance(delete, wire.Change) and delete.operation == "delete" and delete.new is None
    assert delete.old is not None and delete.old_is_key
    assert wire.row_of(relation(), delete.old, key_only=delete.old_is_key) == {"id": 2}


def test_unchanged_toast_values_are_left_out_and_other_messages_skipped() -> None:
    toasted = wire.parse_message(b"U\x00\x00@\x00N\x00\x05t\x00\x00\x00\x011unnn")
    assert isinstance(toasted, wire.Change) and toasted.new is not None
    assert wire.row_of(relation(), toasted.new) == {"id": 1, "j": None, "f": None, "b": None}
    assert wire.parse_message(b"T\x00\x00\x00\x01\x00\x00\x00@\x00") == wire.Other("T")


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (INSERT[:-3], "cut short"),
        (b"I\x00\x00@\x00X", "expected the new tuple"),
        (b"R\x00\x00@\x00pub", "unterminated"),
    ],
)
def test_bad_bytes_are_a_wire_error(data: bytes, says: str) -> None:
    with pytest.raises(wire.WireError, match=says):
        wire.parse_message(data)


def test_values_and_lsns() -> None:
    assert wire.value_of(1700, b"1.10") == "1.10"  # numeric stays exact
    assert wire.value_of(701, b"NaN") == "NaN" and wire.value_of(20, b"-9") == -9
    assert wire.lsn_of("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert wire.lsn_text(wire.lsn_of("16/B374D848")) == "16/B374D848"
    with pytest.raises(wire.WireError, match="2 columns"):
        wire.row_of(relation(), (("t", b"1"), ("n", None)))
