"""Credentials in a function's triggers and outputs never leave the API in clear: every answer
shows them masked, and a masked value sent back unchanged keeps the stored one.

What is a credential: the password of a trigger's `url` (`amqp://user:PASSWORD@host`), its
`password` and `secret` fields, and any attribute whose name says it is one (password, secret,
token, accessKey, sasl...; nested mappings such as `sasl: {password}` too). A client that reads a
function and PUTs it back (the dashboard, nuclio-jupyter's redeploy) sends the masks: `unmask`
puts the stored values back in their place, so the round trip changes nothing; a new value
replaces the stored one as usual.

Outputs (`spec.outputs`, docs/outputs.md) name brokers as triggers do and are masked the same way,
matched to the stored ones by position; so are the URLs of the `nubis.io/output` annotation.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from nubis.redact import masked_url as _masked

MASK = "********"
_SECRET_NAME = re.compile(r"pass(word)?|secret|token|access[_-]?key|credential|private[_-]?key", re.IGNORECASE)


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


#: the annotation whose URLs may hold broker passwords (spec/outputs.py's OUTPUT_ANNOTATION)
OUTPUT_ANNOTATION = "nubis.io/output"


def masked_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` with every trigger and output credential masked (a copy; `spec` is not changed)."""
    triggers = spec.get("triggers")
    outputs = spec.get("outputs")
    has_triggers = isinstance(triggers, dict) and bool(triggers)
    has_outputs = isinstance(outputs, list) and bool(outputs)
    if not has_triggers and not has_outputs:
        return spec
    spec = dict(spec)
    if has_triggers:
        assert isinstance(triggers, dict)
        spec["triggers"] = {name: _masked_trigger(trigger) for name, trigger in triggers.items()}
    if has_outputs:
        assert isinstance(outputs, list)
        spec["outputs"] = [_masked_trigger(output) for output in outputs]
    return spec


def masked_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """`metadata` with credentials in annotations masked (a copy): the value of an annotation whose
    name says it is one (`nuclio.io/kafka-sasl-password`), the passwords of the output annotation's
    URLs."""
    annotations = metadata.get("annotations")
    if not isinstance(annotations, dict):
        return metadata
    masked = {key: _masked_annotation(key, value) for key, value in annotations.items()}
    return metadata if masked == annotations else dict(metadata, annotations=masked)


def _masked_annotation(key: str, value: Any) -> Any:
    if not isinstance(value, str) or not value:
        return value
    if key == OUTPUT_ANNOTATION:
        return " ".join(masked_url(url) for url in value.split())
    return MASK if is_secret_name(key.rsplit("/", 1)[-1]) else value


def unmask_metadata(new_metadata: dict[str, Any], stored_metadata: dict[str, Any]) -> dict[str, Any]:
    """`new_metadata` with each masked annotation replaced by the stored value: a whole masked
    value, or a masked URL of the output annotation that is the stored one at its place, masked."""
    annotations = new_metadata.get("annotations")
    stored = stored_metadata.get("annotations") or {}
    if not isinstance(annotations, dict) or not isinstance(stored, dict):
        return new_metadata
    restored = dict(annotations)
    for key, value in annotations.items():
        old = stored.get(key)
        if not isinstance(value, str) or MASK not in value or not isinstance(old, str):
            continue
        if value == MASK:
            restored[key] = old
        elif key == OUTPUT_ANNOTATION:
            stored_urls, urls = old.split(), value.split()
            for index, url in enumerate(urls):
                if index < len(stored_urls) and masked_url(stored_urls[index]) == url:
                    urls[index] = stored_urls[index]
            restored[key] = " ".join(urls)
    return dict(new_metadata, annotations=restored)


def annotation_masks_left(metadata: dict[str, Any]) -> list[str]:
    """Annotations still holding a mask (`metadata.annotations.<key>`): never stored, so refused."""
    annotations = metadata.get("annotations") or {}
    if not isinstance(annotations, dict):
        return []
    return [
        f"metadata.annotations.{key}" for key, value in annotations.items() if isinstance(value, str) and MASK in value
    ]


def scrubbed_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` for an export: credentials emptied and passwords gone from URLs (`user@host`)."""
    masked = masked_spec(spec)
    if masked is spec:
        return spec
    for trigger in [*(masked.get("triggers") or {}).values(), *(masked.get("outputs") or [])]:
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
    """`new_spec` with each masked credential replaced by the stored trigger's (or output's, at the
    same position) value there."""
    new_spec = copy.deepcopy(new_spec)
    triggers = new_spec.get("triggers")
    stored = stored_spec.get("triggers") or {}
    if isinstance(triggers, dict) and isinstance(stored, dict):
        for name, trigger in triggers.items():
            old = stored.get(name)
            if isinstance(trigger, dict) and isinstance(old, dict):
                _restore(trigger, old)
    outputs = new_spec.get("outputs")
    stored_outputs = stored_spec.get("outputs") or []
    if isinstance(outputs, list) and isinstance(stored_outputs, list):
        for output, old in zip(outputs, stored_outputs, strict=False):
            if isinstance(output, dict) and isinstance(old, dict):
                _restore(output, old)
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
    outputs = spec.get("outputs")
    if isinstance(outputs, list):
        for index, output in enumerate(outputs):
            walk(output, f"spec.outputs[{index}]")
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
