"""Real environment builds by uv, with the machine's pyenv interpreters.

Packages come from the suite's wheel cache (tests/wheels.py: no index, so no network after the first
run), except where a test asks the package index itself; each build takes about a second.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import skip_or_fail

from nubis.build import Environment, build_environment, environment_key, find_python
from nubis.errors import BuildError

COMMANDS = [
    "pip install -U iniconfig",
    "python -m pip install --no-cache-dir idna",
    "echo hi > marker.txt",
    "python -c 'import sys; print(sys.prefix)' > prefix.txt",
    "apt-get install foo > apt-ran.txt",
    "@nuclio.postCopy",
]


@dataclass
class Built:
    function_dir: Path
    cache_root: Path
    env: Environment
    progress: list[str]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("build")
    function_dir = root / "fn"
    function_dir.mkdir()
    (function_dir / "requirements.txt").write_text("six\n")
    progress: list[str] = []
    env = build_environment(
        function_dir,
        python=find_python(None),
        build_commands=COMMANDS,
        cache_root=root / "cache",
        timeout_seconds=180,
        progress=progress.append,
    )
    return Built(function_dir, root / "cache", env, progress)


def _python(env: Environment, code: str) -> str:
    result = subprocess.run([str(env.python), "-c", code], capture_output=True, text=True, check=True)
    return result.stdout.strip()


def test_requirements_and_runtime_packages_are_importable(built: Built) -> None:
    assert built.env.cached is False
    assert built.env.path == built.cache_root / built.env.key
    out = _python(built.env, "import six, iniconfig, idna, nuclio_sdk, msgpack, sys; print(sys.prefix)")
    assert Path(out) == built.env.path


def test_progress_has_steps_and_installer_lines(built: Built) -> None:
    assert any(line.startswith("creating environment with Python ") for line in built.progress)
    assert "installing nuclio-sdk==0.6.3 msgpack==1.1.0 and requirements.txt" in built.progress
    assert "running: pip install -U iniconfig" in built.progress
    assert "running: echo hi > marker.txt" in built.progress
    assert any("six" in line and line.lstrip().startswith("+") for line in built.progress)


def test_shell_lines_run_in_the_function_dir_inside_the_env(built: Built) -> None:
    assert (built.function_dir / "marker.txt").read_text() == "hi\n"
    assert Path((built.function_dir / "prefix.txt").read_text().strip()) == built.env.path


def test_system_package_lines_are_warned_about_and_not_run(built: Built) -> None:
    assert not (built.function_dir / "apt-ran.txt").exists()
    [warning] = built.env.warnings
    assert "apt-get install foo" in warning
    assert "not applicable locally: install system packages on the host" in warning


def test_the_second_call_is_a_cache_hit(built: Built) -> None:
    start = time.monotonic()
    again = build_environment(
        built.function_dir,
        python=find_python(None),
        build_commands=COMMANDS,
        cache_root=built.cache_root,
    )
    elapsed = time.monotonic() - start
    print(f"cache hit took {elapsed * 1000:.1f} ms")
    assert again.cached is True
    assert again.path == built.env.path
    assert again.warnings == built.env.warnings


def test_a_failing_install_raises_and_leaves_no_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What the package registry answers for a name it does not know: this test asks the index itself.
    monkeypatch.delenv("UV_OFFLINE", raising=False)
    with pytest.raises(BuildError) as caught:
        build_environment(
            tmp_path,
            python=find_python(None),
            build_commands=["pip install nubis-no-such-package-xyz"],
            cache_root=tmp_path / "cache",
            timeout_seconds=120,
        )
    message = str(caught.value)
    assert "build command 'pip install nubis-no-such-package-xyz'" in message
    assert "nubis-no-such-package-xyz was not found in the package registry" in message
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_a_failing_shell_line_raises_and_leaves_no_env(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"build command 'echo nope >&2; exit 3' \(exit code 3\)"):
        build_environment(
            tmp_path,
            python=find_python(None),
            build_commands=["echo nope >&2; exit 3"],
            cache_root=tmp_path / "cache",
        )
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".lock"]


def test_the_build_timeout_kills_the_step(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(BuildError, match=r"build timed out after 4 s \(spec\.build\.buildTimeoutSeconds\)"):
        build_environment(
            tmp_path,
            python=find_python(None),
            build_commands=["sleep 60"],
            cache_root=tmp_path / "cache",
            timeout_seconds=4,
        )
    assert time.monotonic() - start < 20
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".lock"]


def test_a_shell_line_that_calls_pip_gets_the_envs_pip(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "req.txt").write_text("iniconfig\n")
    env = build_environment(
        tmp_path,
        python=find_python(None),
        build_commands=["cd sub && pip install -q --disable-pip-version-check -r req.txt"],
        cache_root=tmp_path / "cache",
        timeout_seconds=180,
    )
    _python(env, "import iniconfig, pip")


def test_concurrent_builds_of_one_key_build_once(tmp_path: Path) -> None:
    results: list[Environment] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(
                build_environment(tmp_path, python=find_python(None), build_commands=[], cache_root=tmp_path / "cache")
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert sorted(env.cached for env in results) == [False, True]


def test_a_half_built_env_is_replaced(tmp_path: Path) -> None:
    python = find_python(None)
    key = environment_key(tmp_path, python=python, build_commands=[])
    leftover = tmp_path / "cache" / key
    (leftover / "bin").mkdir(parents=True)
    (leftover / "junk").write_text("from a crashed build")
    env = build_environment(tmp_path, python=python, build_commands=[], cache_root=tmp_path / "cache")
    assert env.cached is False
    assert not (leftover / "junk").exists()
    _python(env, "import nuclio_sdk")


@pytest.mark.parametrize("version", ["3.9", "3.13"])
def test_oldest_and_newest_supported_pythons(tmp_path: Path, version: str) -> None:
    python = find_python(version)
    if python.warning:
        skip_or_fail(python.warning)
    env = build_environment(
        tmp_path,
        python=python,
        build_commands=[],
        cache_root=tmp_path / "cache",
        timeout_seconds=180,
    )
    assert env.key.startswith(f"py{version}-")
    out = _python(env, "import sys, nuclio_sdk, msgpack; print('%d.%d' % sys.version_info[:2])")
    assert out == version
