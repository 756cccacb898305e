"""Options several commands share, and the options made from the server's settings."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import HAS_RICH

from nubis import logs
from nubis.control.settings import ServerSettings, SettingsError, env_name, load_settings, option_name


def check_text_or_json(output: str) -> None:
    """`-o` of the commands that print text or JSON (the resource commands have more forms)."""
    if output not in ("text", "json"):
        raise typer.BadParameter("expected text or json", param_hint="-o")


def setup_logging(log_level: str, log_format: str) -> int:
    """Check `--log-level`/`--log-format` and configure console logging; returns the level."""
    if log_format not in ("text", "json"):
        raise typer.BadParameter("expected 'text' or 'json'", param_hint="--log-format")
    try:
        level = logs.parse_level(log_level)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--log-level") from None
    logs.configure(level, "json" if log_format == "json" else "text")
    return level


def setting(field: str) -> Any:
    """The option for the `ServerSettings` field `field`: its flag, help and shown default come from
    the model. The parameter's own default is None, "not given".

    Only a value given on the command line is passed on (`resolve_settings`); pydantic-settings, not
    typer, reads the `NUBIS_*` variable, so that a value from the environment is checked, and
    reported, by the model's rules. typer shows neither the variable nor the model's default of an
    option it does not read them for, so the help says both.
    """
    info = ServerSettings.model_fields[field]
    notes = [f"[env var: {env_name(field)}]"]
    if info.default_factory is None and info.default not in (None, (), False):
        shown = "{}-{}".format(*info.default) if field == "function_ports" else info.default
        notes.append(f"[default: {shown}]")
    # typer parses help as rich markup, where `[...]` would be a style (rich loads only to show help)
    text = " ".join(note.replace("[", "\\[") if HAS_RICH else note for note in notes)
    return typer.Option(option_name(field), help=f"{info.description} {text}")


def resolve_settings(ctx: typer.Context) -> ServerSettings:
    """The settings given on the command line (parameters named as fields) over `NUBIS_*` variables."""
    given = {}
    for name, value in ctx.params.items():
        source = ctx.get_parameter_source(name)
        if name in ServerSettings.model_fields and source is not None and source.name == "COMMANDLINE":
            given[name] = value
    try:
        return load_settings(given)
    except SettingsError as exc:
        if len(exc.problems) == 1:
            source_name, detail = exc.problems[0]
            raise typer.BadParameter(detail, param_hint=source_name) from None
        raise typer.BadParameter(exc.message) from None
