"""Loading a function from disk: a directory, a `function.yaml`, or a single source file.

Where the configuration comes from follows nuctl (NUCLIO.md §1.6): a directory's `function.yaml`,
else a single source file's inline `# @nuclio.configure` block, else the command line alone; the
command line always wins. Defaults Nuclio's builder would fill in (name, handler, runtime) are
filled in here, so the processor and the CLI see one complete, validated configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nubis.errors import SpecError
from nubis.spec.batch import check_batches
from nubis.spec.function import FunctionConfig
from nubis.spec.inline import read_inline_file
from nubis.spec.overrides import Overrides, apply_overrides
from nubis.spec.parse import located, normalise_config, validate_config
from nubis.spec.rules import derive_function_name, parse_runtime, validate_function_name, validate_handler
from nubis.spec.secret_refs import secret_references
from nubis.spec.yaml_lines import YamlDocument, parse_yaml

CONFIG_FILE_NAMES = ("function.yaml", "function.yml")


@dataclass
class LoadedFunction:
    config: FunctionConfig
    #: the function's code directory (where the handler module is imported from)
    directory: Path
    #: the handler's source file when it exists on disk
    source_file: Path | None
    #: where the configuration was read from: function.yaml, or the source file holding an inline
    #: block; None when it came from the command line only
    config_file: Path | None
    #: unknown-key warnings ("file:line: field: unknown key, did you mean ...?") for the user
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Source:
    directory: Path
    document: YamlDocument
    config_file: Path | None = None
    #: the single source file the user pointed at (or whose inline block configures the function)
    single_file: Path | None = None


def load_function(path: Path, overrides: Overrides | None = None) -> LoadedFunction:
    """Load, merge, enrich and validate a function. Raises `SpecError` naming file, line and field."""
    source = _read_source(Path(path))
    label = str(source.config_file) if source.config_file else None
    lines = source.document.lines
    data, warnings = normalise_config(source.document.data, file=label, lines=lines)
    data = apply_overrides(data, overrides or Overrides(), warnings)
    config = validate_config(data, file=label, lines=lines)
    config, source_file = located(lambda: _enrich(config, source), file=label, lines=lines)
    located(lambda: _check(config), file=label, lines=lines)
    return LoadedFunction(config, source.directory, source_file, source.config_file, warnings)


def export_config(config: FunctionConfig) -> dict[str, Any]:
    """Nuclio's shape: camelCase keys, only what was given or enriched, unknown keys verbatim."""
    return config.model_dump(mode="json", by_alias=True, exclude_unset=True)


def _read_source(path: Path) -> _Source:
    if path.is_dir():
        for name in CONFIG_FILE_NAMES:
            if (path / name).is_file():
                return _Source(path, _read_yaml(path / name), config_file=path / name)
        python_files = sorted(path.glob("*.py"))
        if len(python_files) == 1:
            document = read_inline_file(python_files[0])
            if document is not None:
                return _Source(path, document, config_file=python_files[0], single_file=python_files[0])
        return _Source(path, YamlDocument(None))
    if path.is_file():
        if path.suffix in (".yaml", ".yml"):
            return _Source(path.parent, _read_yaml(path), config_file=path)
        document = read_inline_file(path) if path.suffix == ".py" else None
        if document is None:
            return _Source(path.parent, YamlDocument(None), single_file=path)
        return _Source(path.parent, document, config_file=path, single_file=path)
    raise SpecError(f"no such file or directory: {path}")


def _read_yaml(path: Path) -> YamlDocument:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"cannot read configuration: {err}", file=str(path)) from err
    return parse_yaml(text, file=str(path))


def _enrich(config: FunctionConfig, source: _Source) -> tuple[FunctionConfig, Path | None]:
    """Fill in what Nuclio's builder derives: name from the path, `<file>:handler`, the runtime."""
    metadata, spec = config.metadata, config.spec
    if not metadata.name:
        stem = source.single_file.stem if source.single_file else source.directory.resolve().name
        metadata = metadata.model_copy(update={"name": derive_function_name(stem)})
    if not spec.handler and source.single_file is not None:
        spec = spec.model_copy(update={"handler": f"{source.single_file.stem}:handler"})
    if not spec.handler:
        raise SpecError(
            "handler is missing: add it to function.yaml or pass --handler",
            field="spec.handler",
            expected="'module:function', e.g. 'main:handler'",
        )
    module, _ = validate_handler(spec.handler)
    candidate = source.single_file or source.directory / (module.replace(".", "/") + ".py")
    source_file = candidate if candidate.is_file() else None
    if not spec.runtime:
        language, _ = parse_runtime("", source_file=source_file)
        spec = spec.model_copy(update={"runtime": language})
    return config.model_copy(update={"metadata": metadata, "spec": spec}), source_file


def _check(config: FunctionConfig) -> None:
    validate_function_name(config.metadata.name)
    parse_runtime(config.spec.runtime)
    config.spec.event_timeout_seconds()
    for key, trigger in config.effective_triggers().items():
        trigger.termination_timeout_seconds(field=f"spec.triggers.{key}.workerTerminationTimeout")
    check_batches(config)
    secret_references(config)  # the shapes of secretKeyRef and secret volumes (docs/secrets.md)
