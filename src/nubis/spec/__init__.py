"""Nuclio function configuration: typed models, loaders and the rules Nuclio applies to them."""

from nubis.spec.durations import parse_duration
from nubis.spec.function import Build, EnvVar, FunctionConfig, Meta, Spec
from nubis.spec.inline import InlineBlock, find_blocks, read_inline_config
from nubis.spec.keys import normalise_keys, suggest_key
from nubis.spec.load import CONFIG_FILE_NAMES, LoadedFunction, export_config, load_function
from nubis.spec.overrides import Overrides, parse_env_items
from nubis.spec.parse import ParsedConfig, parse_config
from nubis.spec.rules import (
    derive_function_name,
    parse_runtime,
    validate_function_name,
    validate_handler,
    validate_project_name,
)
from nubis.spec.trigger import (
    DEFAULT_HTTP_TRIGGER_NAME,
    MAX_NUM_WORKERS,
    Trigger,
    default_http_trigger,
    enrich_triggers,
)
from nubis.spec.yaml_lines import YamlDocument, parse_yaml

__all__ = [
    "CONFIG_FILE_NAMES",
    "DEFAULT_HTTP_TRIGGER_NAME",
    "MAX_NUM_WORKERS",
    "Build",
    "EnvVar",
    "FunctionConfig",
    "InlineBlock",
    "LoadedFunction",
    "Meta",
    "Overrides",
    "ParsedConfig",
    "Spec",
    "Trigger",
    "YamlDocument",
    "default_http_trigger",
    "derive_function_name",
    "enrich_triggers",
    "export_config",
    "find_blocks",
    "load_function",
    "normalise_keys",
    "parse_config",
    "parse_duration",
    "parse_env_items",
    "parse_runtime",
    "parse_yaml",
    "read_inline_config",
    "suggest_key",
    "validate_function_name",
    "validate_handler",
    "validate_project_name",
]
