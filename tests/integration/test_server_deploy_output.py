"""What `nubis deploy` and friends print against a real server: only this deploy's lines, no new
generation for an unchanged function, failures as one line naming the function and the cause
followed by the user's traceback once, and errors that name what they are about."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from harness import FUNCTIONS, REPO, nubis_executable
from server_harness import RunningServer, started_server, wait_state
from test_server_cli import cli

from nubis.processor.triggers.registry import get_default_registry

HELLO_SOURCE = (REPO / "examples" / "hello" / "main.py").read_text()
TRACEBACK = "Traceback (most recent call last)"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, nubis_data_dir: Path, free_port: Callable[[], int]
) -> Iterator[RunningServer]:
    yield from started_server(tmp_path_factory.mktemp("server"), free_port(), env_cache=nubis_data_dir / "envs")


def function_dir(root: Path, name: str, source: str, *, labels: dict[str, str] | None = None, **spec: object) -> Path:
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "main.py").write_text(source)
    config = {
        "metadata": {"name": name, **({"labels": labels} if labels else {})},
        "spec": {"runtime": "python", "handler": "main:handler", **spec},
    }
    (directory / "function.yaml").write_text(json.dumps(config))
    return directory


def first_error_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("error:"))


def assert_user_traceback_once(stderr: str, user_file: str) -> None:
    assert stderr.count(TRACEBACK) == 1, stderr
    frames = [line for line in stderr.splitlines() if line.lstrip().startswith('File "')]
    assert frames, stderr
    assert all(user_file in frame for frame in frames), frames  # no nubis_worker, importlib, nubis frames


def generations(server: RunningServer, name: str) -> tuple[int, int]:
    with server.client() as api:
        obj = api.get(f"/api/functions/{name}").json()
    return obj["metadata"]["generation"], obj["status"]["observedGeneration"]


def delete(server: RunningServer, name: str) -> None:
    with server.client() as api:
        assert api.request("DELETE", "/api/functions", json={"metadata": {"name": name}}).status_code == 204


def test_a_missing_module_fails_in_one_line_then_a_fixed_deploy_prints_only_its_own_lines(
    server: RunningServer, tmp_path: Path
) -> None:
    directory = function_dir(tmp_path, "fixme", "import missing_module\n\n" + HELLO_SOURCE)
    failed = cli(server, "deploy", str(directory))
    assert failed.returncode == 1, failed.stderr
    first = first_error_line(failed.stderr)
    assert first.startswith("error: function 'fixme' failed to deploy: ")
    assert "No module named 'missing_module'" in first
    assert_user_traceback_once(failed.stderr, "/main.py")
    assert "import missing_module" in failed.stderr
    assert len(failed.stderr.splitlines()) < 30, failed.stderr

    (directory / "main.py").write_text(HELLO_SOURCE)
    fixed = cli(server, "deploy", str(directory))
    assert fixed.returncode == 0, fixed.stderr
    assert "fixme ready at http://" in fixed.stdout
    # only generation 2's own lines: no replay of generation 1 and its failure
    assert "missing_module" not in fixed.stderr and TRACEBACK not in fixed.stderr
    assert "deploying generation 2" in fixed.stderr
    assert "generation 1" not in fixed.stderr.replace("draining generation 1", "")
    assert fixed.stderr.count("Deploying function") == 1

    # the same spec and code again: no new generation, and the CLI says so
    again = cli(server, "deploy", str(directory))
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("fixme unchanged (generation 2), ready at http://")
    assert again.stderr == ""
    assert generations(server, "fixme") == (2, 2)

    with server.client() as api:
        status = api.get("/api/functions/fixme").json()["status"]
        assert "missing_module" not in json.dumps(status["logs"])
        # older deploys stay readable, per generation, on a documented route
        history = api.get("/api/functions/fixme/deploy_logs").json()
        assert sorted(history) == ["1", "2"]
        assert "missing_module" in json.dumps(history["1"])
        assert history["2"] == status["logs"]
        assert list(api.get("/api/functions/fixme/deploy_logs", params={"generation": "1"}).json()) == ["1"]
        documented = api.get("/api/openapi.json").json()["paths"]["/api/functions/{name}/deploy_logs"]["get"]
        assert "keyed by generation" in documented["summary"]
    delete(server, "fixme")


def test_an_init_context_failure_is_one_line_then_the_users_traceback_once(server: RunningServer) -> None:
    failed = cli(server, "deploy", str(FUNCTIONS / "init_error"), "--name", "init-once")
    assert failed.returncode == 1, failed.stderr
    first = first_error_line(failed.stderr)
    assert first.startswith("error: function 'init-once' failed to deploy: ")
    assert "init_context" in first and "cannot connect to the database: init failure" in first
    assert_user_traceback_once(failed.stderr, "/main.py")
    assert 'raise ValueError("cannot connect to the database: init failure")' in failed.stderr
    with server.client() as api:
        message = api.get("/api/functions/init-once").json()["status"]["message"]
    assert message.splitlines()[0] in first and message.count(TRACEBACK) == 1
    delete(server, "init-once")


def test_logs_of_a_build_failed_function_print_its_deploy_log(server: RunningServer, tmp_path: Path) -> None:
    directory = function_dir(
        tmp_path, "build-fails", HELLO_SOURCE, build={"commands": ["echo nubis-build-marker && exit 3"]}
    )
    assert cli(server, "deploy", str(directory)).returncode == 1
    logs = cli(server, "logs", "build-fails")
    assert logs.returncode == 1
    assert "nubis-build-marker" in logs.stdout  # the build's own output
    assert logs.stderr.count("\n") == 1, logs.stderr
    assert logs.stderr.startswith("error: function 'build-fails' has no replicas, so no replica logs: it is error")
    assert "Traceback" not in logs.stderr
    delete(server, "build-fails")


def test_missing_resources_and_bad_names_are_named(server: RunningServer) -> None:
    logs = cli(server, "logs", "nope")
    assert (logs.returncode, logs.stdout, logs.stderr) == (1, "", "error: function 'nope' does not exist\n")
    deleted = cli(server, "delete", "function", "nope")
    assert deleted.returncode == 1
    assert deleted.stderr == "error: function 'nope' does not exist; nothing was deleted\n"
    bad = cli(server, "create", "project", "Bad_Name")
    assert bad.returncode != 0
    assert bad.stderr.startswith("error: invalid project name (expected a DNS-1123 label")
    assert "found 'Bad_Name'" in bad.stderr and "function" not in bad.stderr
    with server.client() as api:
        assert api.get("/api/functions/nope").json()["error"] == "Function not found: function 'nope' does not exist"
        assert api.get("/api/projects/nope").json()["error"] == "Project not found: project 'nope' does not exist"
        assert api.get("/api/functions/nope/logs").json()["error"].startswith("Function not found: function 'nope'")
        assert api.post("/api/projects", json={"metadata": {"name": "twice"}, "spec": {}}).status_code == 201
        again = api.post("/api/projects", json={"metadata": {"name": "twice"}, "spec": {}})
        assert (again.status_code, again.json()["error"].split(";")[0]) == (
            409,
            "Project already exists: project 'twice' exists",
        )
        body = {
            "metadata": {"name": "orphan"},
            "spec": {
                "runtime": "python",
                "handler": "main:handler",
                "build": {"functionSourceCode": base64.b64encode(HELLO_SOURCE.encode()).decode()},
            },
        }
        missing = api.post("/api/functions", json=body, headers={"x-nuclio-project-name": "ghost"})
        assert missing.status_code == 412
        assert missing.json()["error"].startswith("Project does not exist: project 'ghost' does not exist")
        bad_body = api.post("/api/projects", json={"metadata": {"name": "Bad_Name"}, "spec": {}})
        assert bad_body.status_code == 400
        assert bad_body.json()["error"].startswith("metadata.name: invalid project name (expected a DNS-1123 label")
        assert api.request("DELETE", "/api/projects", json={"metadata": {"name": "twice"}}).status_code == 204


def test_an_unknown_trigger_kind_is_refused_at_deploy(server: RunningServer, tmp_path: Path) -> None:
    directory = function_dir(tmp_path, "ticker", HELLO_SOURCE, triggers={"tick": {"kind": "pigeon"}})
    result = cli(server, "deploy", str(directory))
    assert result.returncode == 1
    kinds = ", ".join(get_default_registry().kinds())
    assert result.stderr.strip() == (
        "error: spec.triggers.tick.kind: trigger kind 'pigeon' is not supported by Nubis yet "
        f"(expected one of {kinds}, found 'pigeon') (HTTP 400)"
    )
    with server.client() as api:
        assert api.get("/api/functions/ticker").status_code == 404


def test_deploy_and_import_honour_the_project_label(server: RunningServer, tmp_path: Path) -> None:
    labelled = function_dir(tmp_path, "labelled", HELLO_SOURCE, labels={"nuclio.io/project-name": "from-label"})
    assert cli(server, "deploy", str(labelled), "--no-wait").returncode == 0
    flagged = cli(server, "deploy", str(labelled), "--name", "flagged", "--project-name", "from-flag", "--no-wait")
    assert flagged.returncode == 0, flagged.stderr
    with server.client() as api:
        wait_state(api, "labelled", {"ready", "error"})
        wait_state(api, "flagged", {"ready", "error"})
        projects = {
            name: api.get(f"/api/functions/{name}").json()["metadata"]["labels"]["nuclio.io/project-name"]
            for name in ("labelled", "flagged")
        }
    assert projects == {"labelled": "from-label", "flagged": "from-flag"}
    exported = cli(server, "export", "labelled")
    assert exported.returncode == 0, exported.stderr
    export_file = tmp_path / "labelled.yaml"
    export_file.write_text(exported.stdout)
    delete(server, "labelled")
    imported = cli(server, "import", str(export_file))
    assert (imported.returncode, imported.stdout) == (0, "labelled imported into project from-label\n")
    delete(server, "labelled")
    into = cli(server, "import", str(export_file), "--project-name", "from-flag")
    assert (into.returncode, into.stdout) == (0, "labelled imported into project from-flag\n")
    with server.client() as api:
        state = api.get("/api/functions/labelled").json()
    assert state["status"]["state"] == "imported"
    assert state["metadata"]["labels"]["nuclio.io/project-name"] == "from-flag"
    delete(server, "labelled")
    delete(server, "flagged")


def test_the_readme_export_import_example_runs_as_written(server: RunningServer, tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    deploy_line = next(line for line in readme.splitlines() if line.startswith("nubis deploy examples/json-api"))
    example = next(line for line in readme.splitlines() if line.startswith("nubis export json-api >"))
    deployed = cli(server, *shlex.split(deploy_line.split("#")[0])[1:], "--no-wait")
    assert deployed.returncode == 0, deployed.stderr
    with server.client() as api:
        wait_state(api, "json-api", {"ready", "error"})
    before = generations(server, "json-api")
    env = dict(
        os.environ,
        NUBIS_URL=server.url,
        NUBIS_TOKEN=server.token or "",
        XDG_CONFIG_HOME=str(server.data_dir),
        PATH=f"{nubis_executable().parent}{os.pathsep}{os.environ['PATH']}",
    )
    shell = ["bash", "-c", example.split("#")[0]]
    result = subprocess.run(shell, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "json-api unchanged (it exists with this configuration)\n"
    assert generations(server, "json-api") == before  # nothing was redeployed
    # edited, the import is refused as nuctl refuses it, naming the function and what to do
    exported = yaml.safe_load((tmp_path / "json-api.yaml").read_text())
    exported["spec"]["description"] = "edited"
    (tmp_path / "json-api.yaml").write_text(yaml.safe_dump(exported))
    refused = subprocess.run(
        ["bash", "-c", "nubis import json-api.yaml"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert refused.returncode == 1
    assert "function 'json-api' already exists with another configuration" in refused.stderr
    delete(server, "json-api")


def test_wide_output_is_never_cut_when_piped(server: RunningServer, tmp_path: Path) -> None:
    long_name = "a-function-with-a-rather-long-name-to-widen-the-table"
    directory = function_dir(tmp_path, long_name, HELLO_SOURCE)
    assert cli(server, "deploy", str(directory)).returncode == 0
    table = cli(server, "get", "functions", "-o", "wide")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    row = next(line for line in lines if line.startswith(long_name))
    port = http_port(server, long_name)
    assert re.search(rf"\b127\.0\.0\.1:{port}$", row), row
    assert "…" not in table.stdout and max(map(len, lines)) > 80
    assert all(line == line.rstrip() for line in lines)
    delete(server, long_name)


def http_port(server: RunningServer, name: str) -> int:
    with server.client() as api:
        port: int = api.get(f"/api/functions/{name}").json()["status"]["httpPort"]
    return port
