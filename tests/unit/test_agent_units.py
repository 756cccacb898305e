"""Units of the local platform: quantities and limits, cgroup files, log storage, deployments,
desired-state persistence, backoff and crash loops, replica processes, the API's refusals."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from nubis.errors import SpecError
from nubis.platforms.base import Platform
from nubis.platforms.local import AgentClient, AgentUnavailable, LocalPlatform, desired_replicas
from nubis.platforms.local.agent import Agent
from nubis.platforms.local.api import create_app
from nubis.platforms.local.limits import (
    Cgroups,
    ResourceLimits,
    parse_cpu,
    parse_memory,
    plan_limits,
)
from nubis.platforms.local.logstore import FunctionLogs, RotatingFile, line_time, stamp
from nubis.platforms.local.models import BadDeployment, Deployment
from nubis.platforms.local.process import ReplicaProcess, describe_exit
from nubis.platforms.local.slots import CRASH_LOOP_RESTARTS, Slot, backoff
from nubis.platforms.local.state import DesiredStore, FunctionRecord
from nubis.processor.replica import load_config, parse_args
from nubis.runtimes.python.runtime import python_artifact
from nubis.spec import Spec

CONFIG = {"metadata": {"name": "fn"}, "spec": {"runtime": "python", "handler": "main:handler"}}


def deployment_body(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "generation": 1,
        "config": CONFIG,
        "function_dir": str(tmp_path),
        "artifact": {"runtime": "python", "details": {"python": str(tmp_path / "python")}},
        "port": 8100,
        "replicas": 2,
    }
    body.update(overrides)
    return body


# -- quantities and limits ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("128Mi", 128 * 2**20),
        ("1Gi", 2**30),
        ("1G", 10**9),
        ("129e6", 129 * 10**6),
        (268435456, 268435456),
        ("1.5Gi", 3 * 2**29),
    ],
)
def test_memory_quantities(text: Any, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize(("text", "expected"), [("500m", 0.5), ("2", 2.0), (1, 1.0), ("0.25", 0.25)])
def test_cpu_quantities(text: Any, expected: float) -> None:
    assert parse_cpu(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["lots", "12Xi", "-1Gi", "", True, "1Ki"])
def test_bad_memory_quantities_name_the_field(text: Any) -> None:
    with pytest.raises(ValueError, match=r"spec\.resources\.limits\.memory"):
        parse_memory(text)


def test_limits_come_from_spec_resources_limits_only() -> None:
    limits = ResourceLimits.from_resources({"limits": {"memory": "64Mi", "cpu": "250m"}, "requests": {}})
    assert limits == ResourceLimits(memory=64 * 2**20, cpu=0.25)
    assert ResourceLimits.from_resources({"requests": {"memory": "1Gi"}}).empty


def test_plan_picks_cgroup_then_rlimit_and_says_what_is_not_enforced(tmp_path: Path) -> None:
    both = ResourceLimits(memory=2**28, cpu=0.5)
    assert plan_limits(ResourceLimits(), "whatever").mechanism == "none"
    cgroup = plan_limits(both, Cgroups(tmp_path)).report()
    assert cgroup["mechanism"] == "cgroup" and cgroup["memory_enforced"] and cgroup["cpu_enforced"]
    rlimit = plan_limits(both, "no cgroup v2 hierarchy at /sys/fs/cgroup").report()
    assert rlimit["mechanism"] == "rlimit"
    assert rlimit["memory_enforced"] and not rlimit["cpu_enforced"]
    assert "RLIMIT_AS" in rlimit["message"] and "CPU is not limited" in rlimit["message"]
    cpu_only = plan_limits(ResourceLimits(cpu=1.0), "no cgroup").report()
    assert cpu_only["mechanism"] == "none" and not cpu_only["cpu_enforced"]


def _fake_cgroup(path: Path, controllers: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cgroup.controllers").write_text(controllers)
    (path / "cgroup.subtree_control").write_text("")
    (path / "cgroup.procs").write_text("")


def test_cgroup_detection_enables_controllers_and_children_get_limits(tmp_path: Path) -> None:
    mount = tmp_path / "cgroup"
    _fake_cgroup(mount, "cpuset cpu io memory pids")
    _fake_cgroup(mount / "nubis", "cpu memory")
    cgroups = Cgroups.detect(mount=mount)
    assert isinstance(cgroups, Cgroups)
    assert (mount / "nubis" / "cgroup.subtree_control").read_text() == "+memory +cpu"
    child = mount / "nubis" / "fn.g1-r0"
    child.mkdir()
    for name in ("memory.max", "cpu.max"):
        (child / name).write_text("max")
    path = cgroups.create("fn.g1-r0", ResourceLimits(memory=128 * 2**20, cpu=0.5))
    assert path == child
    assert (child / "memory.max").read_text() == str(128 * 2**20)
    assert (child / "cpu.max").read_text() == "50000 100000"


def test_no_cgroup_v2_is_reported_as_a_reason(tmp_path: Path) -> None:
    reason = Cgroups.detect(mount=tmp_path)
    assert isinstance(reason, str) and "no cgroup v2" in reason
    _fake_cgroup(tmp_path / "v2", "io pids")
    _fake_cgroup(tmp_path / "v2" / "nubis", "io")
    missing = Cgroups.detect(mount=tmp_path / "v2")
    assert isinstance(missing, str) and "memory and cpu" in missing


# -- logs ---------------------------------------------------------------------------------------------


def test_rotating_file_keeps_a_bounded_number_of_backups(tmp_path: Path) -> None:
    handle = RotatingFile(tmp_path / "r.log", max_bytes=100, backups=2)
    for index in range(30):
        handle.write(f"line {index:03d} " + "x" * 30 + "\n")
    handle.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["r.log", "r.log.1", "r.log.2"]
    assert "line 029" in (tmp_path / "r.log").read_text() + (tmp_path / "r.log.1").read_text()
    assert all(p.stat().st_size < 200 for p in tmp_path.iterdir())


def test_function_logs_merge_replicas_by_time_and_filter_by_since(tmp_path: Path) -> None:
    logs = FunctionLogs(tmp_path / "fn")
    now = time.time()
    logs.append("g1-r0", "first\n", now - 100)
    logs.append("g1-r1", "second", now - 50)
    logs.append("g1-r0", "third", now - 1)
    lines = logs.read()
    assert [line.split(" ", 2)[2].strip() for line in lines] == ["first", "second", "third"]
    assert lines[1].split(" ")[1] == "g1-r1"
    assert [line.split(" ", 2)[2].strip() for line in logs.read(since=now - 60)] == ["second", "third"]
    assert line_time(lines[0]) == pytest.approx(now - 100, abs=0.002)
    assert line_time("no stamp here") is None
    assert stamp(0) == "1970-01-01T00:00:00.000Z"
    logs.close()


def test_function_logs_followers_collection_and_removal(tmp_path: Path) -> None:
    async def scenario() -> None:
        logs = FunctionLogs(tmp_path / "fn")
        queue = logs.follow()
        logs.append("g1-r0", "hello")
        line = await queue.get()
        assert line is not None and line.endswith("g1-r0 hello\n")
        logs.append("g2-r0", "new")
        logs.collect(lambda replica: replica.startswith("g2"))
        assert [p.name for p in logs.files()] == ["g2-r0.log"]
        logs.remove()
        queued = await queue.get()
        assert queued is not None and queued.endswith("g2-r0 new\n")
        assert await queue.get() is None  # removal ends the followers
        assert not (tmp_path / "fn").exists()

    asyncio.run(scenario())


# -- deployments and persistence -----------------------------------------------------------------------


def test_deployment_validation_names_the_field(tmp_path: Path) -> None:
    good = Deployment.from_json("fn", deployment_body(tmp_path, env={"A": "1"}, readiness_timeout=5))
    assert good.replicas == 2 and good.env == {"A": "1"} and good.readiness_timeout == 5.0
    assert Deployment.from_json("fn", good.to_json()) == good
    more = Deployment.from_json("fn", dict(good.to_json(), replicas=5))
    assert good.same_except_replicas(more) and more != good
    assert not good.same_except_replicas(Deployment.from_json("fn", deployment_body(tmp_path, replicas=5)))
    cases = {
        "port": {"port": 0},
        "replicas": {"replicas": -1},
        "generation": {"generation": "one"},
        "config": {"config": {"spec": {"handler": 3}}},
        "function_dir": {"function_dir": str(tmp_path / "absent")},
        "env": {"env": {"A": 1}},
        "readiness_timeout": {"readiness_timeout": 0},
        "artifact.runtime": {"artifact": {"runtime": "cobol"}},
        "artifact.details": {"artifact": {"runtime": "python", "details": {"python": 3}}},
    }
    for field, change in cases.items():
        with pytest.raises(BadDeployment, match=field):
            Deployment.from_json("fn", deployment_body(tmp_path, **change))
    with pytest.raises(BadDeployment, match="name"):
        Deployment.from_json("Not_A_Name", deployment_body(tmp_path))


def test_desired_state_round_trips_and_survives_a_corrupt_file(tmp_path: Path) -> None:
    store = DesiredStore(tmp_path / "agent" / "desired.json")
    assert store.load() == {}
    desired = Deployment.from_json("fn", deployment_body(tmp_path, generation=2))
    active = Deployment.from_json("fn", deployment_body(tmp_path))
    store.save({"fn": FunctionRecord(desired, active, "generation 2 failed: boom")})
    assert store.load() == {"fn": FunctionRecord(desired, active, "generation 2 failed: boom")}
    assert not [p for p in store.path.parent.iterdir() if p.name.endswith(".tmp")]
    store.path.write_text("{broken")
    assert store.load() == {}


def test_desired_state_written_by_the_previous_release_still_loads(tmp_path: Path) -> None:
    """Before runtimes were pluggable a record named its interpreter (`python`), not an artifact:
    an upgraded agent reads it as the Python runtime's artifact and adopts what it describes."""
    previous = {
        "generation": 3,
        "config": CONFIG,
        "function_dir": str(tmp_path),
        "python": "/data/envs/py3.12-0123/bin/python",
        "port": 31000,
        "replicas": 1,
        "env": {"NUBIS_FUNCTION_PORTS_FILE": "/data/functions/ports.json"},
        "resources": {},
        "readiness_timeout": 60.0,
        "host": "127.0.0.1",
    }
    replica = {"slot": "g3-r0", "generation": 3, "pid": 4242, "start_time": 99, "spool": "/s", "offset": 0}
    path = tmp_path / "agent" / "desired.json"
    path.parent.mkdir()
    document = {"desired": previous, "active": previous, "failure": None, "replicas": [dict(replica, state="ready")]}
    path.write_text(json.dumps({"version": 1, "functions": {"fn": document}}))
    record = DesiredStore(path).load()["fn"]
    assert record.desired == record.active
    assert record.desired.artifact == python_artifact("/data/envs/py3.12-0123/bin/python")
    assert record.desired.name == "fn" and record.desired.generation == 3 and record.desired.port == 31000
    assert [r.slot for r in record.replicas] == ["g3-r0"]
    saved = DesiredStore(path)
    saved.save({"fn": record})
    assert saved.load() == {"fn": record}
    assert "python" not in json.loads(path.read_text())["functions"]["fn"]["desired"]


def test_replicas_follow_min_replicas_then_replicas_capped_by_max() -> None:
    assert desired_replicas(Spec()) == 1
    assert desired_replicas(Spec.model_validate({"replicas": 3})) == 3
    assert desired_replicas(Spec.model_validate({"minReplicas": 2, "maxReplicas": 4, "replicas": 3})) == 2
    assert desired_replicas(Spec.model_validate({"minReplicas": 0, "maxReplicas": 4})) == 0
    assert desired_replicas(Spec.model_validate({"replicas": 9, "maxReplicas": 4})) == 4


# -- supervision policy ---------------------------------------------------------------------------------


def test_backoff_doubles_from_half_a_second_to_thirty() -> None:
    assert [backoff(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_crash_loop_by_restart_rate_or_failed_start_ups(tmp_path: Path) -> None:
    slot = Slot("g1-r0", 1, Deployment.from_json("fn", deployment_body(tmp_path)))
    assert not slot.crash_looping()
    now = time.monotonic()
    slot.restart_times.extend([now - 120] * 10)  # old restarts do not count
    slot.restart_times.extend([now] * (CRASH_LOOP_RESTARTS - 1))
    assert not slot.crash_looping()
    slot.restart_times.append(now)
    assert slot.crash_looping()
    slot.restart_times.clear()
    slot.start_failures = 3
    assert slot.crash_looping()


# -- replica processes ------------------------------------------------------------------------------------


def test_replica_process_ready_line_output_and_stop(tmp_path: Path) -> None:
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
        "print('starting', file=sys.stderr, flush=True)\n"
        "print('to stdout', flush=True)\n"
        "import os; ready = int(sys.argv[sys.argv.index('--ready-fd') + 1])\n"
        "os.write(ready, b'fn ready at http://127.0.0.1:1/\\n'); os.close(ready)\n"
        "time.sleep(30)\n"
    )
    lines: list[str] = []

    async def scenario() -> None:
        process = ReplicaProcess(
            "g1-r0",
            [sys.executable, "-c", script],
            env={},
            cwd=str(tmp_path),
            spool=tmp_path / "spool" / "g1-r0.out",
            on_output=lines.append,
        )
        process.start()
        assert await process.wait_ready(10)
        assert process.url == "http://127.0.0.1:1/"
        assert await process.stop(10) == 0
        assert process.exited.is_set()

    asyncio.run(scenario())
    assert sorted(lines) == sorted(["starting", "to stdout", "fn ready at http://127.0.0.1:1/"])
    assert not (tmp_path / "spool" / "g1-r0.out").exists(), "a spool goes away with its replica"


def test_replica_process_exit_before_ready_keeps_the_tail(tmp_path: Path) -> None:
    script = "import sys\nprint('Traceback: boom', file=sys.stderr)\nsys.exit(4)\n"

    async def scenario() -> ReplicaProcess:
        process = ReplicaProcess(
            "g1-r0",
            [sys.executable, "-c", script],
            env={},
            cwd=str(tmp_path),
            spool=tmp_path / "g1-r0.out",
            on_output=lambda _: None,
        )
        process.start()
        assert not await process.wait_ready(10)
        await process.exited.wait()
        return process

    process = asyncio.run(scenario())
    assert process.returncode == 4
    assert "Traceback: boom" in process.output_tail()
    assert describe_exit(4) == "exited with code 4"
    assert describe_exit(-9) == "killed by SIGKILL"


def test_replica_command_line_and_config_errors(tmp_path: Path) -> None:
    args = parse_args(["--config", "c.json", "--function-dir", "d", "--python", "p", "--port", "8080"])
    assert args.host == "127.0.0.1" and args.memory_limit is None and args.parent_pid is None
    assert args.artifact == python_artifact("p")
    artifact = '{"runtime": "python", "details": {"python": "/env/bin/python"}}'
    args = parse_args(["--config", "c.json", "--function-dir", "d", "--artifact", artifact, "--port", "8080"])
    assert args.artifact == python_artifact("/env/bin/python")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(SpecError, match="not valid JSON"):
        load_config(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(CONFIG))
    assert load_config(good).metadata.name == "fn"


# -- API and client ---------------------------------------------------------------------------------------


def test_client_reports_a_missing_agent_with_its_socket(tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"

    async def ask() -> None:
        async with AgentClient(sock) as client:
            await client.get("fn")

    with pytest.raises(AgentUnavailable, match=str(sock)):
        asyncio.run(ask())
    assert isinstance(LocalPlatform(tmp_path), Platform)


def test_api_refuses_bad_requests(tmp_path: Path) -> None:
    async def scenario() -> None:
        agent = Agent(tmp_path / "data", cgroup_root="off")
        await agent.start()
        transport = httpx.ASGITransport(app=create_app(agent, "the-token"))
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as stranger:
            for path in ("/healthz", "/v1/functions", "/v1/functions/fn"):
                refused = await stranger.get(path)
                assert refused.status_code == 401 and "token" in refused.json()["error"]
            wrong = await stranger.get("/v1/functions", headers={"Authorization": "Bearer not-the-token"})
            assert wrong.status_code == 401
            assert (await stranger.put("/v1/functions/fn", json={})).status_code == 401
        headers = {"Authorization": "Bearer the-token"}
        async with httpx.AsyncClient(transport=transport, base_url="http://agent", headers=headers) as client:
            health = await client.get("/healthz")
            assert health.json()["status"] == "ok"
            assert (await client.get("/v1/functions")).json() == {}
            assert (await client.get("/v1/functions/fn")).status_code == 404
            assert (await client.delete("/v1/functions/fn")).status_code == 404
            assert (await client.get("/v1/functions/fn/logs")).status_code == 404
            refused = await client.put("/v1/functions/fn", json={"generation": 1})
            assert refused.status_code == 400
            assert refused.json()["error"] == "config: a required field is missing"
            refused = await client.put("/v1/functions/fn", content=b"[")
            assert refused.status_code == 400
            limits = deployment_body(tmp_path, resources={"limits": {"cpu": "fast"}})
            refused = await client.put("/v1/functions/fn", json=limits)
            assert refused.status_code == 400 and "cpu" in refused.json()["error"]
        await agent.stop()

    asyncio.run(scenario())
