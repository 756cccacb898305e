"""Isolation of functions on the local platform (issue 13, point 7), against a real `nubis server`.

A probe function tries to read what no function may (the admin token, the state database, the
secret store's key, the agent's token, the workload issuer's key, the agent's desired state and
another tenant's code and logs) and to write inside and outside its own directories; its answer
says what each attempt gave. Run as root (CI), `--isolation auto` is `users`: two tenants' probes
run as two unprivileged users. `--isolation landlock` is exercised too (as root, Landlock still
holds: it restricts root). Each server here is started and stopped by this module.
"""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import skip_or_fail
from server_harness import RunningServer, inline_function, started_server

PROBE = b"""
import json, os

def _try(action):
    try:
        return action()
    except Exception as exc:
        return "denied: %s: %s" % (type(exc).__name__, exc)

def _read(path):
    with open(path, "rb") as handle:
        return "read %d bytes" % len(handle.read())

def _write(path):
    with open(path, "w") as handle:
        handle.write("written by a function")
    return "written"

def handler(context, event):
    asked = json.loads(event.body or b"{}")
    with open("/proc/self/status") as status:
        no_new_privs = [line.split()[1] for line in status if line.startswith("NoNewPrivs:")]
    return context.Response(
        body=json.dumps({
            "uid": os.getuid(),
            "gid": os.getgid(),
            "groups": os.getgroups(),
            "no_new_privs": no_new_privs[0] if no_new_privs else None,
            "home": os.environ.get("HOME"),
            "tmpdir": os.environ.get("TMPDIR"),
            "read": {p: _try(lambda p=p: _read(p)) for p in asked.get("read", [])},
            "write": {p: _try(lambda p=p: _write(p)) for p in asked.get("write", [])},
        }),
        content_type="application/json",
    )
"""

TENANTS = ("tenant-a", "tenant-b")


def tenant_client(server: RunningServer, tenant: str) -> httpx.Client:
    client = server.client(timeout=60.0)
    client.headers.update({"X-Nuclio-Function-Namespace": tenant, "X-Nuclio-Project-Namespace": tenant})
    return client


def deploy_probe(server: RunningServer, tenant: str, name: str) -> dict[str, Any]:
    """A probe function in its own project of `tenant`, deployed and ready: its status."""
    with tenant_client(server, tenant) as client:
        project = f"p-{name}"
        made = client.post("/api/projects", json={"metadata": {"name": project, "namespace": tenant}, "spec": {}})
        assert made.status_code in (201, 409), made.text
        body = inline_function(name, PROBE)
        body["metadata"].update({"namespace": tenant, "labels": {"nuclio.io/project-name": project}})  # type: ignore[attr-defined]
        deployed = client.post("/api/functions", json=body)
        assert deployed.status_code == 202, deployed.text
        return wait_ready(client, name)


def wait_ready(client: httpx.Client, name: str, timeout: float = 120.0) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        answer = client.get(f"/api/functions/{name}")
        assert answer.status_code == 200, answer.text
        status = answer.json()["status"]
        if status.get("state") in ("ready", "error"):
            break
        time.sleep(0.1)
    assert status.get("state") == "ready", json.dumps(status)[-3000:]
    return status


def probe(status: dict[str, Any], *, read: Sequence[Path] = (), write: Sequence[Path] = ()) -> dict[str, Any]:
    body = json.dumps({"read": [str(p) for p in read], "write": [str(p) for p in write]})
    answer = httpx.post(f"http://127.0.0.1:{status['httpPort']}/", content=body, timeout=30.0)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def platform_secrets(server: RunningServer, other: str) -> list[Path]:
    """What no function may read, each checked to exist (the test itself, root, can read it)."""
    data = server.data_dir
    paths = [
        data / "admin-token",
        data / "nubis.db",
        data / "secret-store.key",
        data / "agent" / "agent.token",
        data / "agent" / "desired.json",
        data / "identity" / "issuer.json",
        data / "functions" / other / "g1" / "main.py",
        *sorted((data / "agent" / "logs" / other).glob("*")),
    ]
    for path in paths:
        assert path.is_file(), f"{path} should exist for the test to mean something"
    return paths


def make_secret_store_key(server: RunningServer, tenant: str, project: str) -> None:
    """The local secret store makes its key file at first use: use it once."""
    with tenant_client(server, tenant) as client:
        answer = client.put(f"/api/projects/{project}/secrets/isolation-test", json={"data": {"k": "v"}})
        assert answer.status_code in (200, 201), answer.text


def assert_denied(results: dict[str, str]) -> None:
    for path, result in results.items():
        assert result.startswith("denied: "), f"a function read {path}: {result}"
        assert result.split(":")[1].strip() in ("PermissionError", "FileNotFoundError"), result


# -- users: each tenant its own Unix user -------------------------------------------------------------
@pytest.fixture(scope="module")
def users_server(
    tmp_path_factory: pytest.TempPathFactory, nubis_data_dir: Path, free_port: Callable[[], int]
) -> Iterator[RunningServer]:
    if os.geteuid() != 0:
        skip_or_fail("users isolation needs the server to run as root (CI does)")
    yield from started_server(
        tmp_path_factory.mktemp("isolated"), free_port(), "--isolation", "auto", env_cache=nubis_data_dir / "envs"
    )


@pytest.fixture(scope="module")
def probes(users_server: RunningServer) -> dict[str, dict[str, Any]]:
    """tenant -> the ready status of its probe (`probe-a`, `probe-b`)."""
    return {tenant: deploy_probe(users_server, tenant, f"probe-{tenant[-1]}") for tenant in TENANTS}


def test_the_server_says_how_it_isolates(users_server: RunningServer, probes: dict[str, dict[str, Any]]) -> None:
    assert any(
        line.startswith("isolation: users: each tenant's replicas run as its own Unix user")
        for line in users_server._lines
    )
    isolation = probes["tenant-a"]["isolation"]
    assert isolation["mode"] == "users" and isolation["isolated"] is True
    assert isolation["user"] == "nubis-t-tenant-a"


def test_two_tenants_functions_run_as_their_own_unprivileged_users(probes: dict[str, dict[str, Any]]) -> None:
    seen = {tenant: probe(status) for tenant, status in probes.items()}
    for tenant, answer in seen.items():
        user = pwd.getpwnam(f"nubis-t-{tenant}")
        assert (answer["uid"], answer["gid"]) == (user.pw_uid, user.pw_gid)
        assert answer["uid"] != 0 and answer["gid"] != 0
        assert answer["groups"] == []  # no supplementary group, root's least of all
        assert answer["no_new_privs"] == "1"
    assert seen["tenant-a"]["uid"] != seen["tenant-b"]["uid"]


def test_a_function_cannot_read_the_platform_nor_another_tenants_code(
    users_server: RunningServer, probes: dict[str, dict[str, Any]]
) -> None:
    make_secret_store_key(users_server, "tenant-a", "p-probe-a")
    secrets = platform_secrets(users_server, other="probe-b")
    answer = probe(probes["tenant-a"], read=secrets)
    assert_denied(answer["read"])


def test_a_function_writes_its_own_directory_only(
    users_server: RunningServer, probes: dict[str, dict[str, Any]]
) -> None:
    status = probes["tenant-a"]
    answer = probe(status)
    home, tmpdir = Path(answer["home"]), Path(answer["tmpdir"])
    data = users_server.data_dir
    own = [home / "note.txt", tmpdir / "scratch.txt"]
    foreign = [
        data / "planted.txt",
        data / "agent" / "planted.txt",
        data / "functions" / "probe-a" / "g1" / "main.py",  # its own code: read-only
        data / "agent" / "home" / "probe-b" / "planted.txt",
        Path("/etc/planted-by-a-function"),
    ]
    env_python = next(iter((data / "envs").glob("py*/pyvenv.cfg")))
    foreign.append(env_python)  # a shared environment: nobody's to change
    code_before = (data / "functions" / "probe-a" / "g1" / "main.py").read_bytes()
    answer = probe(status, write=own + foreign)
    for path in own:
        assert answer["write"][str(path)] == "written", answer["write"]
        assert path.read_text() == "written by a function"
    for path in foreign:
        assert answer["write"][str(path)].startswith("denied: "), answer["write"]
    assert not (data / "planted.txt").exists() and not Path("/etc/planted-by-a-function").exists()
    assert (data / "functions" / "probe-a" / "g1" / "main.py").read_bytes() == code_before


# -- landlock: the agent's user, in a Landlock sandbox -------------------------------------------------
@pytest.fixture(scope="module")
def landlock_server(
    tmp_path_factory: pytest.TempPathFactory, nubis_data_dir: Path, free_port: Callable[[], int]
) -> Iterator[RunningServer]:
    version = Path("/proc/sys/kernel/osrelease").read_text().split(".")[:2]
    if tuple(int(v) for v in version if v.isdigit()) < (5, 13):
        skip_or_fail("Landlock needs Linux 5.13 or later")
    yield from started_server(
        tmp_path_factory.mktemp("landlocked"), free_port(), "--isolation", "landlock", env_cache=nubis_data_dir / "envs"
    )


def test_landlock_keeps_a_function_in_its_own_directories(landlock_server: RunningServer) -> None:
    first = deploy_probe(landlock_server, "tenant-a", "lock-a")
    second = deploy_probe(landlock_server, "tenant-b", "lock-b")
    assert first["isolation"]["mode"] == "landlock" and first["isolation"]["isolated"] is True
    assert any(
        line.startswith("isolation: landlock: replicas run in a Landlock sandbox") for line in landlock_server._lines
    )
    make_secret_store_key(landlock_server, "tenant-a", "p-lock-a")
    secrets = platform_secrets(landlock_server, other="lock-b")
    data = landlock_server.data_dir
    own = probe(first)
    answer = probe(
        first,
        read=secrets,
        write=[
            Path(own["home"]) / "note.txt",
            Path(own["tmpdir"]) / "x",
            data / "planted.txt",
            Path("/tmp/planted-by-lock-a"),
        ],
    )
    for path, result in answer["read"].items():
        assert result.startswith("denied: PermissionError"), f"{path}: {result}"  # the file is there: refused
    written = answer["write"]
    assert written[str(Path(own["home"]) / "note.txt")] == "written"
    assert written[str(Path(own["tmpdir"]) / "x")] == "written"
    assert written[str(data / "planted.txt")].startswith("denied: PermissionError")
    assert written["/tmp/planted-by-lock-a"].startswith("denied: PermissionError")
    assert probe(second)["uid"] == os.geteuid()  # Landlock keeps the agent's user


# -- none: said plainly ------------------------------------------------------------------------------
def test_without_isolation_the_server_and_every_status_say_so(server: RunningServer) -> None:
    """The suite's servers run with NUBIS_ISOLATION=none (tests/conftest.py): what that means."""
    assert any(line.startswith("isolation: none: functions are NOT isolated") for line in server._lines)
    status = deploy_probe(server, "nuclio", "open-probe")
    assert status["isolation"]["mode"] == "none" and status["isolation"]["isolated"] is False
    assert "can read the whole data dir" in status["isolation"]["message"]
    token = server.data_dir / "admin-token"
    assert probe(status, read=[token])["read"][str(token)].startswith("read ")  # as the page says
