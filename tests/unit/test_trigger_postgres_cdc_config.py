"""The `postgres-cdc` trigger's attributes: what a good spec turns into, and a precise SpecError
(field, expected, found) for each bad one, through the registry's validator as the control plane
calls it at deploy (which must not import psycopg)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from nubis.errors import SpecError
from nubis.processor.triggers.postgres_cdc_config import default_slot, parse
from nubis.processor.triggers.registry import BUILTIN_TRIGGERS, BUILTIN_VALIDATORS, TriggerRegistry
from nubis.spec.trigger import Trigger

FIELD = "spec.triggers.orders"
URL = "postgresql://cdc:s3cret@db.example:5432/shop"


def cdc(trigger_url: str | None = URL, **attributes: Any) -> Trigger:
    spec = {"kind": "postgres-cdc", "name": "orders", "url": trigger_url, "attributes": attributes}
    return Trigger.model_validate(spec)


def test_defaults_name_slot_and_publication_after_function_and_trigger() -> None:
    config = parse(cdc(tables=["orders", "sales.refunds"]), FIELD, "Billing-Fn", "orders")
    assert config.tables == (("public", "orders"), ("sales", "refunds"))
    assert config.operations == frozenset(("insert", "update", "delete"))
    assert config.slot == config.publication == "nubis_billing_fn_orders"
    assert config.create_slot and config.create_publication
    assert config.progress_table == "nubis_cdc_progress"  # the record that survives a PostgreSQL crash
    assert parse(cdc(tables=["t"], progressTable=""), FIELD, "f", "t").progress_table == ""
    assert "s3cret" not in config.where and "slot nubis_billing_fn_orders" in config.where
    assert len(default_slot("f" * 80, "t")) == 63


def test_the_other_attributes() -> None:
    trigger = cdc(
        None,
        url=URL,
        table="orders",
        operations="insert",
        slot="my_slot",
        publication="Pub$1",
        createSlot=False,
        createPublication=False,
    )
    config = parse(trigger, FIELD, "billing", "orders")
    assert (config.url, config.tables, config.operations) == (URL, (("public", "orders"),), frozenset({"insert"}))
    assert (config.slot, config.publication, config.create_slot, config.create_publication) == (
        "my_slot",
        "Pub$1",
        False,
        False,
    )


@pytest.mark.parametrize(
    ("url", "attributes", "at", "found"),
    [
        ("redis://h:6379", {"tables": ["t"]}, "url", "redis://h:6379"),
        ("postgresql://u:pw@h/db", {}, "attributes.tables", "None"),
        ("postgresql://u:pw@h/db", {"tables": ["a.b.c"]}, "attributes.tables", "'a.b.c'"),
        ("postgresql://u:pw@h/db", {"tables": ["bad name"]}, "attributes.tables", "'bad name'"),
        (
            "postgresql://u:pw@h/db",
            {"tables": ["t"], "operations": ["truncate"]},
            "attributes.operations",
            "['truncate']",
        ),
        ("postgresql://u:pw@h/db", {"tables": ["t"], "slot": "Has-Caps"}, "attributes.slot", "'Has-Caps'"),
        ("postgresql://u:pw@h/db", {"tables": ["t"], "publication": "1x"}, "attributes.publication", "'1x'"),
        ("postgresql://u:pw@h/db", {"tables": ["t"], "createSlot": "yes"}, "attributes.createSlot", "'yes'"),
        ("postgresql://u:pw@h/db", {"tables": ["t"], "progressTable": "a;b"}, "attributes.progressTable", "'a;b'"),
        ("postgresql://u:pw@h/db", {"tables": ["t"], "maxAttempts": 0}, "attributes.maxAttempts", None),
        ("postgresql://u:pw@h/db", {"tables": ["t"], "prefetchCount": -1}, "attributes.prefetchCount", None),
    ],
)
def test_bad_attributes_are_refused_with_field_expected_and_found(
    url: str, attributes: dict[str, Any], at: str, found: str | None
) -> None:
    registry = TriggerRegistry(BUILTIN_TRIGGERS, BUILTIN_VALIDATORS)
    if at.endswith("prefetchCount"):
        from nubis.processor.options import ProcessorOptions

        with pytest.raises(SpecError) as caught:
            registry.create(
                "postgres-cdc", name="orders", trigger=cdc(url, **attributes), options=ProcessorOptions(), field=FIELD
            )
    else:
        with pytest.raises(SpecError) as caught:
            registry.validate("postgres-cdc", cdc(url, **attributes), field=FIELD)
    assert caught.value.field == f"{FIELD}.{at}" and caught.value.expected
    if found is not None:
        assert caught.value.found == found
    assert "pw" not in str(caught.value.found)


def test_the_validator_does_not_import_psycopg() -> None:
    code = (
        "import sys; from nubis.processor.triggers.registry import get_default_registry as r; "
        "from nubis.spec.trigger import Trigger; "
        "r().validate('postgres-cdc', Trigger.model_validate({'kind': 'postgres-cdc', 'url': 'postgresql://h/d', "
        "'attributes': {'tables': ['t']}}), field='f'); assert 'psycopg' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
