"""The registry of output kinds: kind name -> import string of its `OutputKind`, resolved lazily,
and what a function's configuration makes of them (`targets`, `outputs_for`).

A new kind is one module with an `OutputKind` (base.py says what it provides) plus one line in
`BUILTIN_OUTPUTS`. Its URL scheme in the `nubis.io/output` annotation is its kind name, with an
optional `+variant` the kind reads (`nats+jetstream://`, `mqtt+tls://`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from nubis.errors import SpecError
from nubis.processor.options import ProcessorOptions
from nubis.processor.outputs.base import OutputKind, Target, at
from nubis.processor.outputs.chain import Outputs
from nubis.redact import masked_url
from nubis.settings import default_data_dir
from nubis.spec import FunctionConfig
from nubis.spec.outputs import ANNOTATION_FIELD, Output, annotation_urls, status_ranges
from nubis.traces import TraceWriter

#: kind -> "module:attr" (an `OutputKind`); the trigger kinds' aliases map to the same module
BUILTIN_OUTPUTS: dict[str, str] = {
    "kafka": "nubis.processor.outputs.kafka:create",
    "kafka-cluster": "nubis.processor.outputs.kafka:create",
    "nats": "nubis.processor.outputs.nats:create",
    "redis-stream": "nubis.processor.outputs.redis_stream:create",
    "rabbit-mq": "nubis.processor.outputs.rabbitmq:create",
    "rabbitMq": "nubis.processor.outputs.rabbitmq:create",
    "mqtt": "nubis.processor.outputs.mqtt:create",
}
_URL_FORM = "<kind>://host:port/<destination> (docs/outputs.md), several separated by spaces"


class OutputRegistry:
    """Kinds a replica can publish to. Registering a kind twice is a programming error."""

    def __init__(self, builtins: dict[str, str] | None = None) -> None:
        self._entries: dict[str, str | OutputKind] = dict(builtins or {})

    def register(self, kind: str, entry: str | OutputKind) -> None:
        if kind in self._entries:
            raise ValueError(f"output kind {kind!r} is already registered")
        self._entries[kind] = entry

    def kinds(self) -> list[str]:
        return sorted(self._entries)

    def kind(self, name: str, *, field: str) -> OutputKind:
        entry = self._entries.get(name)
        if entry is None:
            raise SpecError(
                f"output kind {name!r} is not supported", field=field, expected="one of " + ", ".join(self.kinds())
            )
        if isinstance(entry, str):
            module_name, _, attr = entry.partition(":")
            entry = self._entries[name] = getattr(importlib.import_module(module_name), attr)
        assert not isinstance(entry, str)
        return entry

    def targets(self, config: FunctionConfig) -> list[Target]:
        """Every output of `config`: `spec.outputs`, then the annotation's URLs, each checked as a
        replica would use it. Raises `SpecError` naming the field (the control plane's check)."""
        declared: list[tuple[Output, str]] = [
            (output, f"spec.outputs[{index}]") for index, output in enumerate(config.spec.outputs)
        ]
        declared += [(self._from_url(url), ANNOTATION_FIELD) for url in annotation_urls(config.metadata.annotations)]
        found: list[Target] = []
        for position, (output, field) in enumerate(declared):
            target = self._target(output, field, position)
            if any(other.name == target.name for other in found):
                raise SpecError(
                    "two outputs have this name",
                    field=at(field, "name"),
                    expected="a name of its own",
                    found=target.name,
                )
            found.append(target)
        return found

    def _target(self, output: Output, field: str, position: int) -> Target:
        if not output.kind:
            raise SpecError(
                "output kind is missing", field=at(field, "kind"), expected="one of " + ", ".join(self.kinds())
            )
        kind = self.kind(output.kind, field=at(field, "kind"))
        parsed = kind.parse(output, field)
        on_status = status_ranges(output.on_status, at(field, "onStatus"))
        name = output.name or f"{kind.kind}-{position}"
        return Target(kind.kind, name, field, on_status, parsed.where, parsed.destination, parsed.settings)

    def _from_url(self, text: str) -> Output:
        """The `Output` one URL of the annotation stands for."""
        try:
            url = urlsplit(text)
        except ValueError:
            url = urlsplit("")
        name, _, variant = url.scheme.partition("+")
        if not name or "://" not in text:
            raise SpecError("not an output URL", field=ANNOTATION_FIELD, expected=_URL_FORM, found=masked_url(text))
        kind = self.kind(name, field=ANNOTATION_FIELD)
        fields: dict[str, Any] = {"kind": name, **kind.from_url(url, variant)}
        try:
            return Output.model_validate(fields)
        except ValidationError as exc:
            problem = exc.errors(include_url=False)[0]
            raise SpecError(
                f"the URL's {'.'.join(map(str, problem['loc']))}: {problem['msg']}",
                field=ANNOTATION_FIELD,
                expected=_URL_FORM,
                found=masked_url(text),
            ) from None


_default = OutputRegistry(BUILTIN_OUTPUTS)


def get_default_registry() -> OutputRegistry:
    return _default


def set_default_registry(registry: OutputRegistry) -> None:
    global _default
    _default = registry


def check_outputs(config: FunctionConfig, registry: OutputRegistry | None = None) -> None:
    """Refuse outputs a replica could not use, at deploy (400 naming the field)."""
    (registry or get_default_registry()).targets(config)


def outputs_for(config: FunctionConfig, options: ProcessorOptions, registry: OutputRegistry | None = None) -> Outputs:
    """The replica's outputs (publishers not yet connected) and its trace writer, in
    `options.traces_dir` (else `<data dir>/traces/<function>`). Raises `SpecError`."""
    registry = registry or get_default_registry()
    function = config.metadata.name or "function"
    client = f"nubis-{function}"
    publishers = [
        (target, registry.kind(target.kind, field=target.field).publisher(target, client))
        for target in registry.targets(config)
    ]
    directory = Path(options.traces_dir) if options.traces_dir else default_data_dir() / "traces" / function
    return Outputs(function, publishers, TraceWriter(directory))
