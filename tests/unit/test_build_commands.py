"""Build command classification and environment keys: pure logic, no network, no installs."""

from __future__ import annotations

from pathlib import Path

import pytest

from nubis.build import PythonInterpreter, environment_key, plan_build_commands
from nubis.build import cache as cache_module
from nubis.build.commands import SYSTEM_WARNING, classify_line, translate_pip_args


@pytest.mark.parametrize(
    ("line", "args"),
    [
        ("pip install six", ("six",)),
        ("pip3 install -U six", ("-U", "six")),
        ("pip3.11 install --upgrade six==1.17.0", ("--upgrade", "six==1.17.0")),
        ("python -m pip install -r extra.txt", ("-r", "extra.txt")),
        ("python3 -m pip install --no-deps idna", ("--no-deps", "idna")),
        ("sudo pip install six", ("six",)),
        ("  pip install 'requests[socks]>=2' ", ("requests[socks]>=2",)),
        ("pip install 'odd;name'", ("odd;name",)),
        ("pip install git+https://example.com/r.git#egg=r", ("git+https://example.com/r.git#egg=r",)),
    ],
)
def test_pip_lines_become_uv_installs_with_the_same_arguments(line: str, args: tuple[str, ...]) -> None:
    [step] = classify_line(line)
    assert step.kind == "pip"
    assert step.pip_args == args


def test_pip_only_options_are_dropped_or_renamed() -> None:
    args = ["--no-cache-dir", "--user", "--root-user-action=ignore", "--progress-bar", "off", "-I", "x"]
    assert translate_pip_args(args) == ("--no-cache-dir", "--reinstall", "x")
    assert translate_pip_args(["--timeout", "30", "--retries=2", "-U", "y"]) == ("-U", "y")


@pytest.mark.parametrize(
    "line",
    [
        "apt-get install -y gcc",
        "apt update",
        "yum install -y gcc",
        "apk add --no-cache gcc",
        "sudo apt-get install gcc",
        "DEBIAN_FRONTEND=noninteractive apt-get install -y gcc",
        "apt-get install -y gcc > /dev/null 2>&1",
        "apt-get update && apt-get install -y gcc",
    ],
)
def test_system_package_lines_are_not_run_but_warned(line: str) -> None:
    [step] = classify_line(line)
    assert step.kind == "system"
    assert step.warning is not None
    assert SYSTEM_WARNING in step.warning
    assert line.strip() in step.warning


def test_a_chain_keeps_its_python_part_and_warns_about_the_system_part() -> None:
    system, pip = classify_line("apt-get update && apt-get install -y gcc && pip install six")
    assert system.kind == "system"
    assert "apt-get update && apt-get install -y gcc" in (system.warning or "")
    assert pip.kind == "pip"
    assert pip.pip_args == ("six",)


@pytest.mark.parametrize(
    ("line", "uses_pip"),
    [
        ("echo hi > marker.txt", False),
        ("mkdir -p data && touch data/x", False),
        ("cd sub && pip install -r req.txt", True),
        ("pip install $PACKAGE", True),
        ("PIP_INDEX_URL=http://x pip install six", True),
        ("python setup.py build_ext --inplace", False),
        ("curl -s http://x | sh", False),
    ],
)
def test_other_lines_run_as_shell_commands(line: str, uses_pip: bool) -> None:
    [step] = classify_line(line)
    assert step.kind == "shell"
    assert step.shell == line
    assert step.uses_pip is uses_pip


def test_markers_blanks_and_comments_give_no_step() -> None:
    assert plan_build_commands(["@nuclio.postCopy", "", "   ", "# a comment"]) == []


def test_plan_keeps_the_order_of_lines() -> None:
    kinds = [s.kind for s in plan_build_commands(["pip install a", "echo x", "apk add b", "pip install c"])]
    assert kinds == ["pip", "shell", "system", "pip"]


# --- environment keys -------------------------------------------------------------------------

PY = PythonInterpreter(Path("/opt/python3.12/bin/python3.12"), "3.12")


def _key(function_dir: Path, commands: list[str] | None = None, python: PythonInterpreter = PY) -> str:
    return environment_key(function_dir, python=python, build_commands=commands or [])


def test_key_is_stable_and_readable(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("six\n")
    first = _key(tmp_path, ["pip install idna"])
    assert first == _key(tmp_path, ["pip install idna"])
    assert first.startswith("py3.12-")


def test_key_changes_with_each_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = _key(tmp_path, ["pip install idna"])
    assert _key(tmp_path, ["pip install idna"], PythonInterpreter(Path("/other/python3.12"), "3.12")) != base
    assert _key(tmp_path, ["pip install idna"], PythonInterpreter(PY.path, "3.13")) != base
    assert _key(tmp_path, ["pip install attrs"]) != base
    assert _key(tmp_path, ["pip install idna", "pip install attrs"]) != base
    (tmp_path / "requirements.txt").write_text("six\n")
    with_requirements = _key(tmp_path, ["pip install idna"])
    assert with_requirements != base
    (tmp_path / "requirements.txt").write_text("six==1.17.0\n")
    assert _key(tmp_path, ["pip install idna"]) != with_requirements
    current = _key(tmp_path, ["pip install idna"])
    monkeypatch.setattr(cache_module, "RUNTIME_REQUIREMENTS", ("nuclio-sdk==0.6.4", "msgpack==1.1.0"))
    assert _key(tmp_path, ["pip install idna"]) != current
    monkeypatch.undo()
    monkeypatch.setattr(cache_module, "FORMAT_VERSION", cache_module.FORMAT_VERSION + 1)
    assert _key(tmp_path, ["pip install idna"]) != current


def test_key_follows_files_named_by_pip_lines(tmp_path: Path) -> None:
    (tmp_path / "extra.txt").write_text("idna\n")
    before = _key(tmp_path, ["pip install -r extra.txt"])
    (tmp_path / "extra.txt").write_text("idna==3.10\n")
    assert _key(tmp_path, ["pip install -r extra.txt"]) != before


def test_key_ignores_markers_and_surrounding_whitespace(tmp_path: Path) -> None:
    assert _key(tmp_path, ["pip install idna"]) == _key(tmp_path, ["  pip install idna ", "@nuclio.postCopy"])


def test_key_depends_on_the_directory_only_when_a_shell_line_runs_there(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    assert _key(one, ["pip install idna"]) == _key(two, ["pip install idna"])
    assert _key(one, ["echo hi > marker.txt"]) != _key(two, ["echo hi > marker.txt"])
