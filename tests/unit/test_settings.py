"""The server's one settings model: `NUBIS_*` variables, command line over environment over defaults,
errors that name the option or variable, and the CLI options made from the model's fields."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from nubis.cli import app
from nubis.cli.options import resolve_settings, setting
from nubis.control.gateway_process import GatewayOptions
from nubis.control.server import ServerError, check_settings, gateway_options
from nubis.control.settings import (
    DEFAULT_FUNCTION_PORTS,
    ServerSettings,
    SettingsError,
    load_settings,
    option_name,
)
from nubis.processor.triggers.http_limits import HttpLimits


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No `NUBIS_*` variable of the test run leaks in; the default data dir is under tmp_path."""
    for name in list(os.environ):
        if name.startswith("NUBIS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


def problems(given: dict[str, object]) -> tuple[tuple[str, str], ...]:
    with pytest.raises(SettingsError) as caught:
        load_settings(given)
    return caught.value.problems


def test_the_defaults_without_any_variable(tmp_path: Path) -> None:
    settings = load_settings({})
    assert settings == ServerSettings()
    assert (settings.platform, settings.host, settings.port, settings.state_url) == ("local", "127.0.0.1", 8070, None)
    assert settings.data_dir == tmp_path / "xdg" / "nubis"
    assert settings.function_port_range == DEFAULT_FUNCTION_PORTS
    assert settings.http_limits == HttpLimits()
    assert settings.code_roots == (settings.data_dir / "sources",)


def test_every_variable_that_worked_before_still_works(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    roots = [tmp_path / "one", tmp_path / "two"]
    for root in roots:
        root.mkdir()
    variables = {
        "NUBIS_HOST": "0.0.0.0",
        "NUBIS_PORT": "9070",
        "NUBIS_DATA_DIR": str(tmp_path / "data"),
        "NUBIS_STATE_URL": "postgresql+psycopg://nubis@db/nubis",
        "NUBIS_ALLOWED_HOSTS": "a.example, b.example c.example",
        "NUBIS_BUILD_PATH_ROOTS": f"{roots[0]} {roots[1]}",
        "NUBIS_ARCHIVE_MAX_BYTES": "1000",
        "NUBIS_ARCHIVE_MAX_FILES": "10",
        "NUBIS_MAX_CONNECTIONS": "2",
        "NUBIS_HEADER_READ_TIMEOUT": "0.5",
        "NUBIS_IDLE_TIMEOUT": "3",
        "NUBIS_FUNCTION_PORTS": "32000-32009",
        "NUBIS_PLATFORM": "other",
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    settings = load_settings({})
    assert (settings.host, settings.port, settings.data_dir) == ("0.0.0.0", 9070, tmp_path / "data")
    assert settings.state_url == "postgresql+psycopg://nubis@db/nubis"
    assert settings.allowed_hosts == ("a.example", "b.example", "c.example")
    assert settings.build_path_roots == tuple(root.resolve() for root in roots)
    assert (settings.archive_max_bytes, settings.archive_max_members) == (1000, 10)
    assert settings.http_limits == HttpLimits(max_connections=2, header_read_timeout=0.5, idle_timeout=3)
    assert settings.function_port_range == (32000, 32009)
    assert settings.platform == "other"


def test_an_empty_variable_is_not_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUBIS_STATE_URL", "")
    monkeypatch.setenv("NUBIS_PORT", "")
    assert (load_settings({}).state_url, load_settings({}).port) == (None, 8070)


def test_the_command_line_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUBIS_PORT", "9070")
    monkeypatch.setenv("NUBIS_HOST", "10.0.0.1")
    settings = load_settings({"port": 9100, "allowed_hosts": ["x.example,y.example"]})
    assert (settings.port, settings.host) == (9100, "10.0.0.1")
    assert settings.allowed_hosts == ("x.example", "y.example")


def test_a_model_built_in_code_reads_no_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUBIS_PORT", "9070")
    assert ServerSettings(host="::1").port == 8070


def test_errors_name_the_variable_or_the_option_with_expected_and_found(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NUBIS_PORT", "http")
    monkeypatch.setenv("NUBIS_FUNCTION_PORTS", "31000")
    found = problems({"max_connections": 0, "build_path_roots": [tmp_path / "missing"]})
    assert dict(found) == {
        "NUBIS_PORT": "expected a valid integer, found 'http'",
        "NUBIS_FUNCTION_PORTS": "expected LOW-HIGH, e.g. 31000-31999, found '31000'",
        "--build-path-root": f"expected an existing directory, found '{tmp_path / 'missing'}'",
        "--max-connections": "expected greater than or equal to 1, found 0",
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("31000-31999", (31000, 31999)),
        (" 2000 - 2000 ", (2000, 2000)),
        ("1000-2000", None),
        ("3000-2000", None),
        ("2000-70000", None),
        ("a-b", None),
    ],
)
def test_the_function_port_range(text: str, expected: tuple[int, int] | None) -> None:
    if expected is not None:
        assert load_settings({"function_ports": text}).function_port_range == expected
        return
    [(source, detail)] = problems({"function_ports": text})
    assert source == "--function-ports"
    assert detail.startswith("expected ") and detail.endswith(f"found {text!r}")


def test_a_tuple_range_is_checked_as_a_text_one() -> None:
    with pytest.raises(ValueError, match="expected 1024 <= LOW <= HIGH <= 65535, found '9-1'"):
        ServerSettings(function_ports=(9, 1))


# -- the command line ------------------------------------------------------------------------------

probe = typer.Typer()


@probe.command()
def show(
    ctx: typer.Context,
    port: Annotated[int | None, setting("port")] = None,
    allowed_hosts: Annotated[list[str] | None, setting("allowed_hosts")] = None,
    insecure_local: Annotated[bool | None, setting("insecure_local")] = None,
) -> None:
    settings = resolve_settings(ctx)
    typer.echo(f"{settings.port} {','.join(settings.allowed_hosts)} {settings.insecure_local}")


def test_options_over_variables_over_defaults() -> None:
    runner = CliRunner()
    assert runner.invoke(probe, []).output == "8070  False\n"
    from_env = runner.invoke(probe, [], env={"NUBIS_PORT": "9070", "NUBIS_ALLOWED_HOSTS": "a b"})
    assert from_env.output == "9070 a,b False\n"
    given = ["--port", "9100", "--allowed-host", "c", "--allowed-host", "d,e", "--insecure-local"]
    assert runner.invoke(probe, given, env={"NUBIS_PORT": "9070"}).output == "9100 c,d,e True\n"


def test_a_bad_value_is_a_usage_error_naming_its_source() -> None:
    result = CliRunner().invoke(probe, [], env={"NUBIS_PORT": "http"})
    assert result.exit_code == 2
    assert "Invalid value for NUBIS_PORT: expected a valid integer, found 'http'" in result.output
    result = CliRunner().invoke(probe, ["--port", "0"])
    assert result.exit_code == 2
    assert "Invalid value for --port: expected greater than or equal to 1, found 0" in result.output


def test_nubis_server_has_an_option_for_every_setting() -> None:
    server = get_command(app).commands["server"]  # type: ignore[attr-defined]
    flags = {flag for param in server.params for flag in param.opts}
    assert {option_name(field) for field in ServerSettings.model_fields} - flags == {"--namespace"}


def test_the_help_shows_each_variable_and_default() -> None:
    result = CliRunner().invoke(app, ["server", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Port of the API. [env var: NUBIS_PORT] [default: 8070]" in result.output
    assert "[env var: NUBIS_FUNCTION_PORTS] [default: 31000-31999]" in result.output


# -- the gateway's limits --------------------------------------------------------------------------


def test_the_gateway_limits_default_to_the_gateways_own() -> None:
    from nubis.gateway.settings import GatewaySettings

    settings, gateway = ServerSettings(), GatewaySettings()
    assert (settings.gateway_rate_limit, settings.gateway_rate_burst) == (gateway.rate_limit, gateway.rate_burst)
    assert settings.gateway_max_body_bytes == gateway.max_body_bytes
    assert settings.gateway_max_connections == gateway.limits.max_connections
    assert gateway_options(settings) == GatewayOptions(tunnel_hosts=(settings.external_address,))


def test_the_gateway_limits_come_from_variables_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUBIS_GATEWAY_RATE_LIMIT", "2.5")
    monkeypatch.setenv("NUBIS_GATEWAY_MAX_CONNECTIONS", "10")
    settings = load_settings({"gateway_rate_burst": 5, "gateway_max_body_bytes": 1000})
    options = gateway_options(settings)
    assert (options.rate_limit, options.rate_burst, options.max_body_bytes, options.max_connections) == (
        2.5,
        5,
        1000,
        10,
    )
    arguments = options.arguments()
    for flag, value in (("--rate-limit", "2.5"), ("--rate-burst", "5"), ("--max-body-bytes", "1000")):
        assert arguments[arguments.index(flag) + 1] == value
    assert arguments[arguments.index("--max-connections") + 1] == "10"
    # what decides adoption: a gateway started with the defaults is not this one
    assert options.state() != GatewayOptions(tunnel_hosts=options.tunnel_hosts).state()
    assert problems({"gateway_rate_limit": 0}) == (
        ("--gateway-rate-limit", "expected greater than or equal to 0.001, found 0"),
    )
    assert problems({"gateway_max_connections": 0})[0][0] == "--gateway-max-connections"


def test_nubis_server_parses_the_gateway_limit_options() -> None:
    server = get_command(app).commands["server"]  # type: ignore[attr-defined]
    given = ["--gateway-rate-limit", "1", "--gateway-rate-burst", "2", "--gateway-max-body-bytes", "7"]
    given += ["--gateway-max-connections", "3"]
    with server.make_context("server", given) as ctx:
        settings = resolve_settings(ctx)
    limits = (settings.gateway_rate_limit, settings.gateway_rate_burst)
    assert (*limits, settings.gateway_max_body_bytes, settings.gateway_max_connections) == (1.0, 2, 7, 3)


def test_a_rate_burst_without_a_rate_limit_is_refused() -> None:
    with pytest.raises(ServerError, match="--gateway-rate-burst sizes the bucket of --gateway-rate-limit"):
        check_settings(ServerSettings(gateway_rate_burst=3))
    check_settings(ServerSettings(gateway_rate_limit=1, gateway_rate_burst=3))
