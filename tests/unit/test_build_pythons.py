"""Interpreter lookup: fallback warnings, pyenv layout, shims, the in-process cache."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nubis.build import clear_python_cache, default_python, find_python, pythons

RUNNING = f"{sys.version_info[0]}.{sys.version_info[1]}"


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    clear_python_cache()
    yield
    clear_python_cache()


def test_default_is_the_running_base_interpreter() -> None:
    found = find_python(None)
    assert found.warning is None
    assert found.version == RUNNING
    assert found.path.is_file()
    assert "shims" not in found.path.parts


def test_an_unsupported_version_falls_back_with_a_warning() -> None:
    found = find_python("3.8")
    default = default_python()
    assert (found.path, found.version) == (default.path, default.version)
    assert found.warning == (
        "runtime python:3.8 asked for Python 3.8, which Nubis does not support "
        f"(python:3.9 to python:3.13); using Python {default.version} ({default.path})"
    )


def test_a_missing_version_falls_back_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pythons, "_candidates", lambda wanted: iter(()))
    wanted = "3.13" if RUNNING != "3.13" else "3.12"
    found = find_python(wanted)
    default = default_python()
    assert found.path == default.path
    assert found.warning == (
        f"runtime python:{wanted} asked for Python {wanted}, which this machine does not have; "
        f"using Python {default.version} ({default.path})"
    )


def test_a_patch_version_is_reduced_to_major_minor(monkeypatch: pytest.MonkeyPatch) -> None:
    found = find_python(f"{RUNNING}.99")
    assert found.version == RUNNING
    assert found.warning is None


def test_lookups_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    first = find_python(None)

    def no_probe(path: Path) -> str | None:
        raise AssertionError("probed again")

    monkeypatch.setattr(pythons, "probe_version", no_probe)
    assert find_python(None) is first


def _script(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_pyenv_versions_newest_patch_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path))
    for name in ("3.12.1", "3.12.10", "3.12.9", "3.12-dev", "3.13.0"):
        _script(tmp_path / "versions" / name / "bin" / "python3.12", "")
    found = pythons._pyenv_candidates("3.12")
    assert [p.parts[-3] for p in found] == ["3.12.10", "3.12.9", "3.12.1"]


def test_pyenv_shims_on_path_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shim = _script(tmp_path / "shims" / "python3.12", '#!/usr/bin/env bash\nexec pyenv exec "$@"\n')
    other = _script(tmp_path / "wrappers" / "python3.12", '#!/bin/sh\nexec "$(pyenv which python)"\n')
    real = _script(tmp_path / "real" / "python3.12", "\x7fELF not really")
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path))
    monkeypatch.setenv("PATH", ":".join(str(p.parent) for p in (shim, other, real)))
    assert pythons._path_candidates("3.12") == [real]


def test_an_interpreter_that_does_not_run_is_rejected(tmp_path: Path) -> None:
    broken = _script(tmp_path / "python3.12", "#!/bin/sh\nexit 1\n")
    assert pythons.probe_version(broken) is None
    assert pythons.probe_version(tmp_path / "missing") is None
    assert pythons.probe_version(Path(sys.executable)) == RUNNING
