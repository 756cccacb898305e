"""The secrets a function references, as Kubernetes writes them, checked field by field.

Two shapes, the ones Nuclio passes to Kubernetes unchanged:

* `spec.env[].valueFrom.secretKeyRef: {name, key, optional}`: one key as one variable;
* `spec.volumes[]: {volume: {name, secret: {secretName, items, optional, defaultMode}},
  volumeMount: {name, mountPath, readOnly}}`: every key (or the listed `items`) as files.

Every other `valueFrom` source and volume kind is left to the platform that knows it (Kubernetes
does), so a configuration written for Nuclio still loads. The rules are Kubernetes' own: a secret
name is a DNS-1123 subdomain, a key `[-._a-zA-Z0-9]+`, an item path relative without `..`. Each
error names the field (`spec.volumes[1].volume.secret.items[0].path`), what was expected and what
was found, so the user edits the right line; the values themselves never pass through here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nubis.errors import SpecError
from nubis.spec.function import FunctionConfig

#: Kubernetes' rules for a Secret's name (a DNS-1123 subdomain) and data key (a file name); nubis.secrets
#: applies the same ones
SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
NAME_MAX = KEY_MAX = 253
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SUBDOMAIN_RULE = "a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', at most 253 characters"
KEY_RULE = "a secret key: letters, digits, '-', '_' and '.', at most 253 characters"
VOLUME_RULE = "a DNS-1123 label: lower-case letters, digits and '-', at most 63 characters"
#: the `valueFrom` sources Kubernetes knows; exactly one may be given
VALUE_SOURCES = ("secretKeyRef", "configMapKeyRef", "fieldRef", "resourceFieldRef")
_SECRET_KEY_REF = frozenset({"name", "key", "optional"})
_SECRET_VOLUME = frozenset({"secretName", "items", "optional", "defaultMode"})
_ITEM = frozenset({"key", "path", "mode"})


@dataclass(frozen=True)
class SecretRef:
    """One reference to a secret of the function's own project.

    An environment variable (`env`) names one `key`; a volume (`volume`, mounted at `mount_path`)
    takes every key as a file named after it (`items` None) or the listed (key, path) pairs.
    """

    #: the secret's name in the function's tenant and project
    secret: str
    #: where in the configuration the reference is, for messages: `spec.env[2].valueFrom.secretKeyRef`
    field: str
    #: a missing secret (or key) is skipped rather than failing the deploy or the start
    optional: bool = False
    #: the key an environment variable takes; None for a volume
    key: str | None = None
    #: the environment variable's name
    env: str | None = None
    #: the volume's name (`volume.name`)
    volume: str | None = None
    #: where the volume is mounted (`volumeMount.mountPath`, absolute)
    mount_path: str | None = None
    #: (key, relative path) of each listed item; None: every key, as a file of its own name
    items: tuple[tuple[str, str], ...] | None = None
    #: file mode of the volume's files (`items[].mode`, else `defaultMode`); None: owner-only
    mode: int | None = None
    read_only: bool = True


def secret_references(config: FunctionConfig) -> list[SecretRef]:
    """Every secret reference of `config`, in spec order; SpecError names a malformed one."""
    refs: list[SecretRef] = []
    for index, var in enumerate(config.spec.env):
        ref = _env_ref(var.name, var.value, var.value_from, f"spec.env[{index}]")
        if ref is not None:
            refs.append(ref)
    for index, entry in enumerate(config.spec.volumes):
        ref = _volume_ref(entry, f"spec.volumes[{index}]")
        if ref is not None:
            refs.append(ref)
    return refs


def _env_ref(name: str, value: str | None, value_from: Any, field: str) -> SecretRef | None:
    if value_from is None:
        return None
    source = _mapping(value_from, f"{field}.valueFrom", f"one of {', '.join(VALUE_SOURCES)}")
    given = [key for key in VALUE_SOURCES if key in source]
    if len(given) > 1:
        raise SpecError(
            "valueFrom takes exactly one source", field=f"{field}.valueFrom", expected="one of them", found=given
        )
    if "secretKeyRef" not in source:
        return None
    if value:
        raise SpecError(
            "an environment variable takes value or valueFrom, not both",
            field=f"{field}.value",
            expected="no value beside valueFrom.secretKeyRef",
        )
    where = f"{field}.valueFrom.secretKeyRef"
    ref = _mapping(source["secretKeyRef"], where, "a mapping with name and key")
    _known(ref, _SECRET_KEY_REF, where)
    return SecretRef(
        secret=_secret_name(ref.get("name"), f"{where}.name"),
        key=_key(ref.get("key"), f"{where}.key"),
        optional=_flag(ref.get("optional"), f"{where}.optional"),
        env=name,
        field=where,
    )


def _volume_ref(entry: Any, field: str) -> SecretRef | None:
    entry = _mapping(entry, field, "a mapping with volume and volumeMount")
    volume = entry.get("volume")
    if not isinstance(volume, Mapping) or "secret" not in volume:
        return None  # another kind of volume: the platform's to check
    where = f"{field}.volume.secret"
    secret = _mapping(volume["secret"], where, "a mapping with secretName")
    _known(secret, _SECRET_VOLUME, where)
    name = volume.get("name")
    if not isinstance(name, str) or len(name) > 63 or not _LABEL.fullmatch(name):
        raise SpecError("invalid volume name", field=f"{field}.volume.name", expected=VOLUME_RULE, found=name)
    mount = _mapping(entry.get("volumeMount"), f"{field}.volumeMount", "a mapping with name and mountPath")
    if mount.get("name") != name:
        raise SpecError(
            "the volume mount must name its volume",
            field=f"{field}.volumeMount.name",
            expected=repr(name),
            found=mount.get("name"),
        )
    mount_path = mount.get("mountPath")
    if not isinstance(mount_path, str) or not mount_path.startswith("/") or ".." in mount_path.split("/"):
        raise SpecError(
            "invalid mount path",
            field=f"{field}.volumeMount.mountPath",
            expected="an absolute path without '..'",
            found=mount_path,
        )
    # Kubernetes mounts secret volumes read-only whatever readOnly says; so do we (the files are 0400/0600).
    read_only = _flag(mount.get("readOnly", True), f"{field}.volumeMount.readOnly")
    mode = _mode(secret.get("defaultMode"), f"{where}.defaultMode")
    items = None
    if secret.get("items") is not None:
        items, mode = _items(secret["items"], f"{where}.items", mode)
    return SecretRef(
        secret=_secret_name(secret.get("secretName"), f"{where}.secretName"),
        optional=_flag(secret.get("optional"), f"{where}.optional"),
        volume=name,
        mount_path=mount_path.rstrip("/") or "/",
        items=items,
        mode=mode,
        read_only=read_only,
        field=where,
    )


def _items(value: Any, field: str, mode: int | None) -> tuple[tuple[tuple[str, str], ...], int | None]:
    if not isinstance(value, list) or not value:
        raise SpecError("wrong type", field=field, expected="a non-empty list of {key, path}", found=_shape(value))
    items: list[tuple[str, str]] = []
    paths: set[str] = set()
    for index, raw in enumerate(value):
        where = f"{field}[{index}]"
        item = _mapping(raw, where, "a mapping with key and path")
        _known(item, _ITEM, where)
        key = _key(item.get("key"), f"{where}.key")
        path = item.get("path")
        if (
            not isinstance(path, str)
            or not path
            or path.startswith("/")
            or ".." in path.split("/")
            or "" in path.split("/")
        ):
            raise SpecError(
                "invalid item path",
                field=f"{where}.path",
                expected="a relative file path without '..' or empty parts",
                found=path,
            )
        if path in paths:
            raise SpecError("two items write the same file", field=f"{where}.path", found=path)
        paths.add(path)
        item_mode = _mode(item.get("mode"), f"{where}.mode")
        mode = item_mode if item_mode is not None else mode
        items.append((key, path))
    return tuple(items), mode


def _secret_name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError("a secret name is required", field=field, expected=SUBDOMAIN_RULE, found=_shape(value))
    if len(value) > NAME_MAX or not SECRET_NAME.fullmatch(value):
        raise SpecError("invalid secret name", field=field, expected=SUBDOMAIN_RULE, found=value)
    return value


def _key(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError("a secret key is required", field=field, expected=KEY_RULE, found=_shape(value))
    if len(value) > KEY_MAX or not SECRET_KEY.fullmatch(value) or value in (".", ".."):
        raise SpecError("invalid secret key", field=field, expected=KEY_RULE, found=value)
    return value


def _flag(value: Any, field: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise SpecError("wrong type", field=field, expected="a boolean (true or false)", found=value)
    return value


def _mode(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0o777:
        raise SpecError("invalid file mode", field=field, expected="an integer from 0 to 0777 (511)", found=value)
    return value


def _mapping(value: Any, field: str, expected: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(
            "wrong type" if value is not None else "required field is missing",
            field=field,
            expected=expected,
            found=_shape(value),
        )
    return value


def _known(value: Mapping[str, Any], known: frozenset[str], field: str) -> None:
    for key in value:
        if key not in known:
            raise SpecError("unknown key", field=f"{field}.{key}", expected=f"one of {', '.join(sorted(known))}")


def _shape(value: Any) -> Any:
    """What was found, shown by type when it is a container (no pasting a whole mapping)."""
    return type(value).__name__ if isinstance(value, Mapping | list) else value
