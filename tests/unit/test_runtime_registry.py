"""Runtimes are chosen by `spec.runtime` from a registry of lazy import strings; the Python runtime
turns its artifact into the workers' command line and environment."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from nubis.errors import SpecError
from nubis.runtimes.base import Artifact, WorkerRequest
from nubis.runtimes.python import WORKER_PATH
from nubis.runtimes.python.runtime import RUNTIME, PythonRuntime, python_artifact
from nubis.runtimes.registry import BUILTIN_RUNTIMES, RuntimeRegistry, get_default_registry


def test_python_is_the_built_in_runtime_with_its_versions() -> None:
    registry = get_default_registry()
    assert registry.kinds() == ["python"]
    runtime, version = registry.parse("python:3.12")
    assert runtime is RUNTIME and version == "3.12"
    assert registry.parse("Python")[1] is None
    assert registry.supported() == "python, python:3.9 … python:3.13"


def test_unknown_kinds_and_versions_are_spec_errors_listing_the_known_ones() -> None:
    registry = get_default_registry()
    with pytest.raises(SpecError) as caught:
        registry.parse("pyhton")
    assert (
        caught.value.message == "spec.runtime: unknown runtime 'pyhton' (supported: python, python:3.9 … python:3.13)"
    )
    with pytest.raises(SpecError, match=r"runtime 'nodejs:20' is not supported by Nubis yet \(supported: python"):
        registry.parse("nodejs:20")
    with pytest.raises(SpecError, match=r"--runtime: python version '3\.8' is not supported"):
        registry.parse("python:3.8", field="--runtime")
    with pytest.raises(SpecError, match=r"artifact\.runtime: unknown runtime 'cobol'"):
        registry.for_artifact(Artifact(runtime="cobol"))


def test_a_kind_is_registered_once_and_resolved_lazily() -> None:
    registry = RuntimeRegistry(BUILTIN_RUNTIMES)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("python", PythonRuntime())
    registry.register("python2", "nubis.runtimes.python.runtime:RUNTIME")
    assert registry.kinds() == ["python", "python2"]
    assert registry.parse("python2:3.11")[0] is RUNTIME
    registry.register("ghost", "nubis.runtimes.no_such_module:RUNTIME")
    with pytest.raises(ModuleNotFoundError):
        registry.get("ghost")


def test_the_python_artifact_becomes_the_workers_command_line(tmp_path: Path) -> None:
    artifact = python_artifact("/envs/py3.12-abc/bin/python")
    assert msgspec.json.decode(msgspec.json.encode(artifact), type=Artifact) == artifact
    request = WorkerRequest(
        handler="main:handler",
        function_dir=tmp_path,
        function_name="fn",
        env={"PYTHONPATH": "/mine", "VIRTUAL_ENV": "/platform-venv", "A": "1"},
    )
    command = RUNTIME.worker(artifact, request)
    assert command.argv("zygote") == [
        "/envs/py3.12-abc/bin/python", "-u", "-m", "nubis_worker.zygote",
        "--handler", "main:handler", "--function-dir", str(tmp_path), "--function-name", "fn",
        "--namespace", "nubis",
    ]  # fmt: skip
    assert command.argv("spawn")[3] == "nubis_worker.spawn" and command.supports("spawn")
    assert command.env["PYTHONPATH"] == os.pathsep.join([str(tmp_path), str(WORKER_PATH), "/mine"])
    assert "VIRTUAL_ENV" not in command.env and command.env["A"] == "1" and command.env["PYTHONUNBUFFERED"] == "1"
    assert command.program == "/envs/py3.12-abc/bin/python" and command.frames == "nubis-frames/1"
    with pytest.raises(SpecError, match="names no interpreter"):
        RUNTIME.worker(Artifact(runtime="python"), request)
