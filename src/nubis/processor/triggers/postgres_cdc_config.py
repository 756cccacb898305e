"""The attributes of a `postgres-cdc` trigger (a Nubis kind; Nuclio has none), parsed without
importing the PostgreSQL client, so the control plane validates them at deploy.

```yaml
triggers:
  orders:
    kind: postgres-cdc
    url: postgresql://cdc:secret@db:5432/shop   # or attributes.url
    attributes:
      tables: [public.orders, refunds]          # `schema.table` or `table` (schema public)
      operations: [insert, update, delete]      # default: all three
      slot: nubis_billing_orders                # default: nubis_<function>_<trigger>
      publication: nubis_billing_orders         # default: the slot's name
      createSlot: true                          # default true: made at start if missing
      createPublication: true                   # default true: made for `tables` if missing
      progressTable: nubis_cdc_progress         # "" to keep no progress record (see below)
      maxAttempts: 3                            # and retryBackoff, retryBackoffMax (failures.py)
```

`progressTable` (created if missing; the role needs CREATE on the schema, or the table made for
it): the trigger records there how far it confirmed, in the same durable way as any write, before
it advances the slot. PostgreSQL writes an advanced slot position to disk only at its next
checkpoint, so after a crash of PostgreSQL itself the slot may be back where it was minutes ago;
the record moves it forward again at connect, so only the in-flight window is handled twice.

There is no `deadLetter`: an event that failed its last attempt goes to the platform's failed-event
store (`nubis events failed`), and the slot moves on past it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from nubis.errors import SpecError
from nubis.redact import masked_url
from nubis.spec import Trigger as TriggerSpec

OPERATIONS = ("insert", "update", "delete")
#: PostgreSQL's identifiers: at most 63 bytes (NAMEDATALEN - 1)
_MAX_NAME = 63
_SLOT = re.compile(r"^[a-z0-9_]{1,63}$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


@dataclass(frozen=True)
class PostgresCdcConfig:
    url: str
    #: (schema, table) pairs
    tables: tuple[tuple[str, str], ...]
    operations: frozenset[str]
    slot: str
    publication: str
    create_slot: bool
    create_publication: bool
    #: where confirmed progress is recorded ("" none; see the module docstring)
    progress_table: str = "nubis_cdc_progress"

    @property
    def where(self) -> str:
        """The URL without its password, the slot and the tables: what logs may show."""
        names = ", ".join(f"{schema}.{table}" for schema, table in self.tables)
        return f"{masked_url(self.url)} slot {self.slot} tables {names}"


def default_slot(function: str, trigger: str) -> str:
    """`nubis_<function>_<trigger>`, lower-cased, other characters as `_`, cut to 63."""
    name = re.sub(r"[^a-z0-9_]", "_", f"nubis_{function or 'function'}_{trigger or 'trigger'}".lower())
    return name[:_MAX_NAME]


def parse(trigger: TriggerSpec, field: str, function: str, name: str) -> PostgresCdcConfig:
    attributes: dict[str, Any] = dict(trigger.attributes or {})
    url = trigger.url or attributes.get("url")
    if not isinstance(url, str) or urlsplit(url).scheme not in ("postgresql", "postgres"):
        raise SpecError(
            "not a PostgreSQL URL",
            field=f"{field}.url",
            expected="postgresql://user[:password]@host[:port]/database",
            found=masked_url(str(url)),
        )
    tables = _tables(attributes.get("tables", attributes.get("table")), f"{field}.attributes.tables")
    operations = attributes.get("operations", list(OPERATIONS))
    if isinstance(operations, str):
        operations = [operations]
    if not isinstance(operations, list) or not operations or not all(op in OPERATIONS for op in operations):
        raise SpecError(
            "unknown operations",
            field=f"{field}.attributes.operations",
            expected="a list of insert, update, delete",
            found=repr(operations),
        )
    slot = attributes.get("slot") or default_slot(function, name)
    if not isinstance(slot, str) or not _SLOT.match(slot):
        raise SpecError(
            "bad replication slot name",
            field=f"{field}.attributes.slot",
            expected="1 to 63 lower-case letters, digits or _",
            found=repr(slot),
        )
    publication = attributes.get("publication") or slot
    if not isinstance(publication, str) or not _IDENTIFIER.match(publication):
        raise SpecError(
            "bad publication name",
            field=f"{field}.attributes.publication",
            expected="an identifier: a letter or _, then letters, digits, _ or $ (63 at most)",
            found=repr(publication),
        )
    flags = {key: attributes.get(key, True) for key in ("createSlot", "createPublication")}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise SpecError(
                f"{key} must be true or false",
                field=f"{field}.attributes.{key}",
                expected="true or false",
                found=repr(value),
            )
    progress = attributes.get("progressTable", "nubis_cdc_progress")
    if not isinstance(progress, str) or (progress and not _IDENTIFIER.match(progress)):
        raise SpecError(
            "bad progressTable",
            field=f"{field}.attributes.progressTable",
            expected='a table name (an identifier), or "" for none',
            found=repr(progress),
        )
    return PostgresCdcConfig(
        url, tables, frozenset(operations), slot, publication, flags["createSlot"], flags["createPublication"], progress
    )


def _tables(value: Any, field: str) -> tuple[tuple[str, str], ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise SpecError(
            "the trigger names no table",
            field=field,
            expected="a list of `schema.table` or `table` names",
            found=repr(value),
        )
    tables: list[tuple[str, str]] = []
    for item in value:
        parts = item.split(".") if isinstance(item, str) else []
        if len(parts) == 1:
            parts = ["public", *parts]
        if len(parts) != 2 or not all(_IDENTIFIER.match(part) for part in parts):
            raise SpecError(
                "bad table name",
                field=field,
                expected="`schema.table` or `table`, each an identifier (letters, digits, _ or $)",
                found=repr(item),
            )
        if (parts[0], parts[1]) not in tables:
            tables.append((parts[0], parts[1]))
    return tuple(tables)


def validate(trigger: TriggerSpec, field: str) -> None:
    """The registry's validator: the attributes parse (failure policy included)."""
    from nubis.processor.triggers.failures import policy_of

    parse(trigger, field, "function", "trigger")
    policy_of(trigger.attributes or {}, None, field)
