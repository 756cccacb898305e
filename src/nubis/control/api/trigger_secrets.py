"""Credentials in a function's triggers never leave the API in clear: every answer shows them
masked, and a masked value sent back unchanged keeps the stored one.

What is a credential: the password of a trigger's `url` (`amqp://user:PASSWORD@host`), its
`password` and `secret` fields, and any attribute whose name says it is one (password, secret,
token, accessKey, sasl...; nested mappings such as `sasl: {password}` too). A client that reads a
function and PUTs it back (the dashboard, nuclio-jupyter's redeploy) sends the masks: `unmask`
puts the stored values back in their place, so the round trip changes nothing; a new value
replaces the stored one as usual.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from nubis.redact import masked_url as _masked

MASK = "********"
_SECRET_NAME = re.compile(r"pass(word)?|secret|token|access_?key|credential|private_?key", re.IGNORECASE)


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def masked_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` with every trigger credential masked (a copy; `spec` is not changed)."""
    triggers = spec.get("triggers")
    if not isinstance(triggers, dict) or not triggers:
        return spec
    spec = dict(spec)
    spec["triggers"] = {name: _masked_trigger(trigger) for name, trigger in triggers.items()}
    return spec


def scrubbed_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` for an export: credentials emptied and passwords gone from URLs (`user@host`)."""
    masked = masked_spec(spec)
    if masked is spec:
        return spec
    for trigger in masked["triggers"].values():
        if isinstance(trigger, dict):
            _scrub(trigger)
    return masked


def _scrub(mapping: dict[str, Any]) -> None:
    for key, value in mapping.items():
        if value == MASK:
            mapping[key] = ""
        elif isinstance(value, str) and f":{MASK}@" in value:
            mapping[key] = value.replace(f":{MASK}@", "@")
        elif isinstance(value, dict):
            _scrub(value)


def unmask(new_spec: dict[str, Any], stored_spec: dict[str, Any]) -> dict[str, Any]:
    """`new_spec` with each masked credential replaced by the stored trigger's value there."""
    triggers = new_spec.get("triggers")
    stored = stored_spec.get("triggers") or {}
    if not isinstance(triggers, dict) or not isinstance(stored, dict):
        return new_spec
    new_spec = copy.deepcopy(new_spec)
    for name, trigger in new_spec["triggers"].items():
        old = stored.get(name)
        if isinstance(trigger, dict) and isinstance(old, dict):
            _restore(trigger, old)
    return new_spec


def _masked_trigger(trigger: Any) -> Any:
    if not isinstance(trigger, dict):
        return trigger
    trigger = copy.deepcopy(trigger)
    if isinstance(trigger.get("url"), str):
        trigger["url"] = masked_url(trigger["url"])
    for key in ("password", "secret"):
        if isinstance(trigger.get(key), str) and trigger[key]:
            trigger[key] = MASK
    if isinstance(trigger.get("attributes"), dict):
        _mask_attributes(trigger["attributes"])
    return trigger


def _mask_attributes(attributes: dict[str, Any]) -> None:
    for key, value in attributes.items():
        if isinstance(value, dict):
            _mask_attributes(value)
        elif isinstance(value, str) and value and is_secret_name(key):
            attributes[key] = MASK
        elif isinstance(value, str) and "://" in value:
            attributes[key] = masked_url(value)


def masks_left(spec: dict[str, Any]) -> list[str]:
    """Fields of `spec`'s triggers still holding a mask (`spec.triggers.q.url`): a credential
    that was never stored there, which must be sent in clear."""
    found: list[str] = []

    def walk(value: Any, field: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{field}.{key}")
        elif isinstance(value, str) and MASK in value:
            found.append(field)

    triggers = spec.get("triggers")
    if isinstance(triggers, dict):
        walk(triggers, "spec.triggers")
    return found


def masked_url(url: str) -> str:
    """`url` with its credentials replaced by the mask."""
    return _masked(url, MASK)


def _restore(new: dict[str, Any], old: dict[str, Any]) -> None:
    for key, value in new.items():
        previous = old.get(key)
        if value == MASK and isinstance(previous, str):
            new[key] = previous
        elif isinstance(value, str) and MASK in value and isinstance(previous, str) and masked_url(previous) == value:
            new[key] = previous  # a URL whose password was masked, otherwise the same
        elif isinstance(value, dict) and isinstance(previous, dict):
            _restore(value, previous)
