"""Nuclio function objects: validating what clients send, and shaping what they read back."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nubis.control.api.bodies import PROJECT_LABEL, section, text_map
from nubis.control.api.trigger_secrets import (
    MASK,
    OUTPUT_ANNOTATION,
    annotation_masks_left,
    masked_metadata,
    masked_spec,
    masks_left,
    scrubbed_spec,
)
from nubis.control.sources import allowed_build_path, decode_source
from nubis.errors import BadRequest
from nubis.processor.outputs import check_outputs
from nubis.processor.triggers.registry import TriggerRegistry, get_default_registry
from nubis.runtimes.registry import DEFAULT_RUNTIME
from nubis.spec import (
    FunctionConfig,
    export_config,
    parse_config,
    parse_runtime,
    validate_function_name,
    validate_handler,
)
from nubis.spec.batch import check_batches
from nubis.store import FunctionRecord

#: States in which a deploy is under way: updates and deletes are refused with 412 (NUCLIO.md §1.8).
PROVISIONING_STATES = frozenset(
    {
        "waitingForBuild",
        "building",
        "waitingForResourceConfiguration",
        "waitingForScaleResourceFromZero",
        "waitingForScaleResourceToZero",
        "configuringResources",
    }
)
TERMINAL_STATES = frozenset({"ready", "error", "unhealthy", "scaledToZero", "imported"})
#: Annotations with which an export is imported without building or deploying it.
SKIP_BUILD = "skip-build"
SKIP_DEPLOY = "skip-deploy"
DEFAULT_INLINE_HANDLER = "main:handler"


def validated_config(
    body: dict[str, Any], *, name: str | None, project: str, code_roots: Sequence[Path] | None = None
) -> dict[str, Any]:
    """Check a create/update body as a deploy would, and return the config to store.

    With `code_roots`, a `spec.build.path` must lie inside one of them (see `allowed_build_path`).
    Raises `SpecError`/`BadRequest` (400) naming the field; nothing is stored before this passes.
    """
    metadata = section(body, "metadata")
    body_name = metadata.get("name")
    if name is not None and body_name not in (None, "", name):
        raise BadRequest(f"function name in the path ({name}) and in metadata.name ({body_name}) differ")
    name = name or body_name
    if not name:
        raise BadRequest("function name is missing: set metadata.name")
    validate_function_name(str(name))
    data = {"metadata": dict(metadata, name=name), "spec": copy.deepcopy(section(body, "spec"))}
    labels = text_map(data["metadata"], "labels", field="metadata.labels")
    labels[PROJECT_LABEL] = project
    data["metadata"]["labels"] = labels
    # What the server sets, sent back by a client that PUTs what it read, is not part of the spec.
    data["metadata"].pop("resourceVersion", None)
    data["metadata"].pop("generation", None)
    masked = masks_left(data["spec"])
    masked += annotation_masks_left(data["metadata"])
    if masked:
        raise BadRequest(
            f"{masked[0]} holds the mask {MASK} where no credential is stored: an answer's masked "
            "credentials may only be sent back to the same function, trigger and URL; send the value itself"
        )
    config = parse_config(data).config
    spec = config.spec
    build = spec.build
    if build.function_source_code:
        decode_source(build.function_source_code)
        if not spec.handler:
            spec.handler = DEFAULT_INLINE_HANDLER
    elif not build.path and not _skips_build(config.metadata.annotations):
        raise BadRequest(
            "the function has no code: set spec.build.functionSourceCode (base64 source), or "
            "spec.build.path (a directory on the server, e.g. from the archive upload route)"
        )
    if not spec.handler:
        raise BadRequest("spec.handler is missing: expected 'module:function', e.g. 'main:handler'")
    validate_handler(spec.handler)
    parse_runtime(spec.runtime or DEFAULT_RUNTIME)
    check_triggers(config)
    check_outputs(config)  # spec.outputs and nubis.io/output (docs/outputs.md)
    if code_roots is not None and build.path and not build.function_source_code:
        allowed_build_path(Path(build.path), code_roots)
    return export_config(config)


def check_triggers(config: FunctionConfig, registry: TriggerRegistry | None = None) -> None:
    """Refuse a trigger kind no processor can run, or attributes its kind cannot parse, at the
    API (400 naming `spec.triggers.<name>.kind` / `.attributes.<attr>`), rather than when a
    replica starts after the build.

    Disabled triggers are not started, so they are not checked (as in the processor).
    """
    registry = registry or get_default_registry()
    for key, trigger in config.effective_triggers().items():
        if not trigger.disabled:
            registry.validate(trigger.kind, trigger, field=f"spec.triggers.{key}")
    check_batches(config)


#: The former name (kinds only), kept for its callers.


def _skips_build(annotations: dict[str, str] | None) -> bool:
    return bool(annotations) and (SKIP_BUILD in annotations or SKIP_DEPLOY in annotations)  # type: ignore[operator]


def function_object(record: FunctionRecord, logs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """`{metadata, spec, status}` as the dashboard API returns it."""
    metadata = dict(record.config.get("metadata") or {})
    metadata["name"] = record.name
    metadata["namespace"] = record.namespace
    labels = dict(metadata.get("labels") or {})
    labels[PROJECT_LABEL] = record.project
    metadata["labels"] = labels
    metadata["resourceVersion"] = record.resource_version
    # Kubernetes' convention: the spec's generation, and the one the status describes (a deploy
    # that ended, ready or failed); `nubis deploy` compares them to tell "unchanged" from "new".
    metadata["generation"] = record.generation
    status = dict(record.status or {})
    status.setdefault("state", "building")
    status["observedGeneration"] = record.deployed_generation
    if logs is not None:
        status["logs"] = logs
    return {
        "metadata": masked_metadata(metadata),
        "spec": masked_spec(record.config.get("spec") or {}),
        "status": status,
    }


def export_object(record: FunctionRecord) -> dict[str, Any]:
    """Export form: `{metadata, spec}` with skip annotations, no namespace, trigger secrets scrubbed
    (emptied, and gone from URLs: an export is a file that travels)."""
    obj = function_object(record)
    metadata = obj["metadata"]
    metadata.pop("namespace", None)
    metadata.pop("resourceVersion", None)
    metadata.pop("generation", None)
    annotations = dict(metadata.get("annotations") or {})
    annotations[SKIP_BUILD] = "true"
    annotations[SKIP_DEPLOY] = "true"
    annotations["nuclio.io/previous-state"] = obj["status"].get("state", "")
    for key, value in list(annotations.items()):  # masked credentials emptied, as in the spec
        if value == MASK:
            annotations[key] = ""
        elif key == OUTPUT_ANNOTATION and isinstance(value, str):
            annotations[key] = value.replace(f":{MASK}@", "@")
    metadata["annotations"] = annotations
    return {"metadata": metadata, "spec": scrubbed_spec(record.config.get("spec") or {})}


def is_provisioning(record: FunctionRecord) -> bool:
    return (record.status or {}).get("state", "building") in PROVISIONING_STATES


def is_import(config: dict[str, Any]) -> bool:
    return _skips_build((config.get("metadata") or {}).get("annotations"))


def without_import_annotations(config: dict[str, Any]) -> dict[str, Any]:
    """A redeploy of an imported function builds and deploys it: the skip annotations go."""
    config = copy.deepcopy(config)
    annotations = (config.get("metadata") or {}).get("annotations") or {}
    for key in (SKIP_BUILD, SKIP_DEPLOY, "nuclio.io/previous-state"):
        annotations.pop(key, None)
    return config
