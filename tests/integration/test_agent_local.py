"""The local platform's agent against real processes: replicas sharing a port, rolling updates,
failed updates, restarts and crash loops, memory limits, captured logs, agent restarts, delete.

Every agent a test starts runs in its own session and is stopped by pid (SIGTERM, then SIGKILL of its
group); every replica pid the test saw is killed by process group at the end as well, so nothing
outlives a test even when an assertion fails half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from harness import FUNCTIONS, REPO, PidRequests, http_client, wait_until

from nubis.platforms.base import BuildOutput, DeployFailed, FunctionDeployment
from nubis.platforms.local import AgentClient, AgentUnavailable, LocalPlatform
from nubis.platforms.local.agent_token import TokenAuth
from nubis.runtimes.python.runtime import python_artifact

BEHAVIOURS = FUNCTIONS / "behaviours"
INIT_ERROR = FUNCTIONS / "init_error"
AGENT_READY_TIMEOUT = 30.0
AGENT_STOP_TIMEOUT = 45.0
#: a deployment of a cached environment is ready in about a second; this is the bound
DEPLOY_TIMEOUT = 30.0

CRASHY_MAIN = """
import os

def init_context(context):
    flag = os.environ.get("CRASH_FLAG")
    if flag and os.path.exists(flag):
        raise RuntimeError("the crash flag is set: refusing to start")

def handler(context, event):
    return {"pid": os.getpid()}
"""


def alive(pid: int) -> bool:
    """True while `pid` runs (zombies do not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class AgentProcess:
    """One `python -m nubis.platforms.local.agent` process on a data dir."""

    def __init__(self, data_dir: Path, seen: set[int]) -> None:
        self.data_dir = data_dir
        self.sock = data_dir / "agent" / "agent.sock"
        self.seen = seen
        data_dir.mkdir(parents=True, exist_ok=True)
        number = len(list(data_dir.glob("agent-*.out")))
        self.out_path = data_dir / f"agent-{number}.out"
        self.err_path = data_dir / f"agent-{number}.err"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nubis.platforms.local.agent", "--data-dir", str(data_dir)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=REPO,
                start_new_session=True,
            )
        self.client = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.sock)),
            base_url="http://agent",
            timeout=httpx.Timeout(60.0),
            trust_env=False,
            auth=TokenAuth(data_dir / "agent"),
        )
        self._wait_started()

    def _wait_started(self) -> None:
        deadline = time.monotonic() + AGENT_READY_TIMEOUT
        while f"agent ready at {self.sock}" not in self.out_path.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the agent did not start:\n{self.err_path.read_text()}")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.process.pid

    def state(self, name: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/functions/{name}")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        self.seen.update(r["pid"] for r in data["replicas"] if r["pid"])
        return data

    def put(self, name: str, body: dict[str, Any]) -> httpx.Response:
        return self.client.put(f"/v1/functions/{name}", json=body)

    def wait_state(self, name: str, predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        result: dict[str, Any] = wait_until(
            lambda: (lambda s: s if predicate(s) else None)(self.state(name)), DEPLOY_TIMEOUT, what, 0.05
        )
        return result

    def deploy(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.put(name, body)
        assert response.status_code == 202, response.text
        generation = body["generation"]
        return self.wait_state(
            name,
            lambda s: s["state"] != "deploying" and (s["active_generation"] == generation or s["state"] == "failed"),
            f"a verdict on generation {generation} of {name}",
        )

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(10)
        self.client.close()

    def stop(self) -> int | None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(AGENT_STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(10)
        self.client.close()
        return self.process.returncode


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[[], AgentProcess]]:
    """`start_agent()`: an agent on this test's data dir; every agent and replica seen is stopped."""
    seen: set[int] = set()
    agents: list[AgentProcess] = []
    data_dir = tmp_path / "data"

    def start() -> AgentProcess:
        agent = AgentProcess(data_dir, seen)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop()
    for pid in seen:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def body(
    generation: int,
    python: Path,
    port: int,
    *,
    directory: Path = BEHAVIOURS,
    replicas: int = 1,
    config: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    if config is None:
        config = yaml.safe_load((BEHAVIOURS / "function.yaml").read_text())
    return {
        "generation": generation,
        "config": config,
        "function_dir": str(directory),
        "python": str(python),
        "port": port,
        "replicas": replicas,
        **extra,
    }


def fresh_get(url: str, path: str) -> httpx.Response:
    """A request on a new connection (no keep-alive connection a draining replica could close)."""
    with http_client(url) as client:
        return client.get(path, headers={"Connection": "close"})


def serving_pids(url: str, want: int, attempts: int = 200) -> set[int]:
    """Worker pids answering /pid, sampled until `want` distinct ones are seen (or attempts run out)."""
    pids: set[int] = set()
    for _ in range(attempts):
        response = fresh_get(url, "/pid")
        assert response.status_code == 200, response.text
        pids.add(response.json()["pid"])
        if len(pids) >= want:
            break
    return pids


def test_replicas_share_the_port_updates_switch_without_errors_and_a_failed_update_keeps_serving(
    start_agent: Callable[[], AgentProcess], python_env: Path, free_port: Callable[[], int]
) -> None:
    agent = start_agent()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"

    first = agent.deploy("behaviours", body(1, python_env, port, replicas=2))
    assert first["state"] == "ready", first
    assert [r["state"] for r in first["replicas"]] == ["ready", "ready"]
    replica_pids_1 = {r["pid"] for r in first["replicas"]}
    assert len(replica_pids_1) == 2
    workers_1 = serving_pids(url, want=2)
    assert len(workers_1) == 2, "both replicas should serve the one port"

    loop = PidRequests(url, fresh_connections=True)
    loop.start()
    try:
        wait_until(lambda: len(loop.outcomes) >= 5, 10, "requests flowing before the update")
        second = agent.deploy("behaviours", body(2, python_env, port, replicas=2, env={"UPDATED": "yes"}))
        assert second["state"] == "ready" and second["active_generation"] == 2, second
        served_before_stop = len(loop.outcomes)
        wait_until(lambda: len(loop.outcomes) >= served_before_stop + 5, 10, "requests after the update")
    finally:
        loop.stop()
    failures = [o for o in loop.outcomes if isinstance(o, str) or o[0] != 200]
    assert not failures, f"{len(failures)} of {len(loop.outcomes)} requests failed: {failures[:5]}"
    assert all(r["generation"] == 2 for r in second["replicas"])
    replica_pids_2 = {r["pid"] for r in second["replicas"]}
    assert not replica_pids_2 & replica_pids_1
    wait_until(lambda: not any(alive(p) for p in replica_pids_1), 40, "the old replicas to drain and exit")
    workers_2 = serving_pids(url, want=2)
    assert not workers_2 & workers_1
    assert fresh_get(url, "/env?names=UPDATED").json() == {"UPDATED": "yes"}

    # a broken update: init_context raises in the new generation
    third = agent.deploy("behaviours", body(3, python_env, port, replicas=2, directory=INIT_ERROR))
    assert third["state"] == "failed", third
    assert third["active_generation"] == 2
    assert "generation 3 failed" in third["message"]
    assert "cannot connect to the database: init failure" in third["message"]
    assert "Traceback" in third["message"]
    assert any(e["level"] == "error" and "init failure" in e["message"] for e in third["events"])
    assert {r["pid"] for r in third["replicas"]} == replica_pids_2
    assert all(alive(p) for p in replica_pids_2)
    assert serving_pids(url, want=2) <= workers_2
    assert fresh_get(url, "/env?names=UPDATED").json() == {"UPDATED": "yes"}
    logs = agent.client.get("/v1/functions/behaviours/logs").text
    assert "init failure" in logs


def test_a_killed_replica_is_restarted_and_a_crash_loop_makes_the_function_unhealthy(
    start_agent: Callable[[], AgentProcess], python_env: Path, free_port: Callable[[], int], tmp_path: Path
) -> None:
    source = tmp_path / "crashy"
    source.mkdir()
    (source / "main.py").write_text(CRASHY_MAIN)
    flag = tmp_path / "crash-flag"
    config = {"metadata": {"name": "crashy"}, "spec": {"runtime": "python", "handler": "main:handler"}}
    agent = start_agent()
    port = free_port()
    deployed = agent.deploy(
        "crashy",
        body(1, python_env, port, directory=source, config=config, env={"CRASH_FLAG": str(flag)}),
    )
    assert deployed["state"] == "ready", deployed
    first_pid = deployed["replicas"][0]["pid"]

    os.kill(first_pid, signal.SIGKILL)
    restarted = agent.wait_state(
        "crashy",
        lambda s: s["replicas"][0]["restarts"] == 1 and s["replicas"][0]["state"] == "ready",
        "the killed replica to be restarted",
    )
    replica = restarted["replicas"][0]
    assert replica["pid"] != first_pid
    assert replica["last_exit"]["code"] == -signal.SIGKILL
    assert "SIGKILL" in replica["last_exit"]["reason"]
    messages = [e["message"] for e in restarted["events"]]
    assert any("killed by SIGKILL" in m for m in messages), messages
    assert any("restarted" in m for m in messages), messages
    assert restarted["state"] == "ready"
    assert fresh_get(f"http://127.0.0.1:{port}/", "/").json()["pid"] != first_pid

    # from now on every start-up fails: restarts back off (0.5, 1, 2 s), then the function is unhealthy
    flag.write_text("crash")
    os.kill(replica["pid"], signal.SIGKILL)
    unhealthy = agent.wait_state("crashy", lambda s: s["state"] == "unhealthy", "a crash loop")
    assert unhealthy["message"] == "Function is not healthy"
    assert unhealthy["replicas"][0]["restarts"] >= 3
    events = unhealthy["events"]
    assert any("crash-looping" in e["message"] for e in events), events
    assert any("the crash flag is set" in e["message"] for e in events), events


def test_memory_limit_is_enforced_and_logs_are_captured_and_served(
    start_agent: Callable[[], AgentProcess], python_env: Path, free_port: Callable[[], int]
) -> None:
    agent = start_agent()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    deployed = agent.deploy(
        "behaviours",
        body(1, python_env, port, resources={"limits": {"memory": "256Mi", "cpu": "500m"}}),
    )
    assert deployed["state"] == "ready", deployed
    limits = deployed["limits"]
    assert limits["mechanism"] in ("cgroup", "rlimit"), limits
    assert limits["memory"] == 256 * 2**20 and limits["memory_enforced"] is True
    assert limits["cpu"] == 0.5
    assert limits["cpu_enforced"] is (limits["mechanism"] == "cgroup")

    # 600 MB in one handler: MemoryError under RLIMIT_AS, the OOM killer under cgroup: a 500 either way
    assert fresh_get(url, "/big?size=600000000").status_code == 500
    assert fresh_get(url, "/str").text == "hello"

    follow_lines: list[str] = []
    followed = threading.Event()

    def follow() -> None:
        params = {"follow": "1", "since": "0"}
        with agent.client.stream("GET", "/v1/functions/behaviours/logs", params=params) as response:
            for line in response.iter_lines():
                follow_lines.append(line)
                if "behaviours-log-line" in line:
                    followed.set()
                    return

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    # the follower may subscribe after the first calls: the handler is called until the line arrives
    deadline = time.monotonic() + 10
    while not followed.is_set() and time.monotonic() < deadline:
        assert fresh_get(url, "/log").text == "logged"
        followed.wait(0.5)
    assert followed.is_set(), follow_lines
    follower.join(5)

    everything = agent.client.get("/v1/functions/behaviours/logs").text
    assert "behaviours ready at" in everything
    assert "behaviours-log-line" in everything
    assert "MemoryError" in everything or limits["mechanism"] == "cgroup"
    recent = agent.client.get("/v1/functions/behaviours/logs", params={"since": "3600"}).text
    assert "behaviours-log-line" in recent
    log_files = list((agent.data_dir / "agent" / "logs" / "behaviours").glob("g1-r0.log*"))
    assert log_files, "the replica's output should be in its log file"

    bad = agent.client.get("/v1/functions/behaviours/logs", params={"since": "soon"})
    assert bad.status_code == 400


def test_agent_restart_brings_functions_back_and_delete_drains_and_cleans_up(
    start_agent: Callable[[], AgentProcess], python_env: Path, free_port: Callable[[], int]
) -> None:
    agent = start_agent()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    platform = LocalPlatform(agent.data_dir)
    function = FunctionDeployment(
        name="behaviours",
        generation=1,
        config=yaml.safe_load((BEHAVIOURS / "function.yaml").read_text()),
        http_port=port,
    )
    status = asyncio.run(_deploy(platform, function, BuildOutput(BEHAVIOURS, python_artifact(python_env))))
    assert status.state == "ready" and status.active_generation == 1
    assert status.limits["mechanism"] == "none"
    old_pid = agent.state("behaviours")["replicas"][0]["pid"]
    assert fresh_get(url, "/str").text == "hello"
    desired = json.loads((agent.data_dir / "agent" / "desired.json").read_text())
    assert desired["functions"]["behaviours"]["active"]["generation"] == 1

    # SIGKILL of the agent: its replica serves on, unsupervised, and the next agent adopts it
    agent.kill()
    for _ in range(20):
        assert fresh_get(url, "/str").text == "hello"
    assert fresh_get(url, "/log").text == "logged"  # output written while no agent reads it
    assert alive(old_pid)
    again = start_agent()
    back = again.wait_state(
        "behaviours",
        lambda s: s["state"] == "ready" and s["active_generation"] == 1 and s["replicas_ready"] == 1,
        "the function to come back",
    )
    assert back["port"] == port
    assert back["replicas"][0]["pid"] == old_pid, back
    assert any("adopted 1 running replica" in e["message"] for e in back["events"]), back["events"]
    assert fresh_get(url, "/str").text == "hello"
    listed = again.client.get("/v1/functions").json()
    assert list(listed) == ["behaviours"]
    # what the replica wrote while no agent ran reached its logs; so does what it writes now
    wait_until(
        lambda: "behaviours-log-line" in again.client.get("/v1/functions/behaviours/logs").text,
        10,
        "the log line written while the agent was down",
    )
    # the adopted replica is supervised: killed, it is started again
    os.kill(old_pid, signal.SIGKILL)
    restarted = again.wait_state(
        "behaviours",
        lambda s: s["replicas"][0]["restarts"] == 1 and s["replicas"][0]["state"] == "ready",
        "the adopted replica to be restarted",
    )
    assert restarted["replicas"][0]["pid"] != old_pid
    assert "exit status unknown" in (restarted["replicas"][0]["last_exit"] or {}).get("reason", "")
    assert fresh_get(url, "/str").text == "hello"

    # scale through the platform (same generation: no rollout), then delete
    scaled = asyncio.run(_scale(LocalPlatform(again.data_dir), "behaviours", 2))
    assert scaled.replicas_desired == 2
    again.wait_state("behaviours", lambda s: s["replicas_ready"] == 2, "the second replica")
    replica_pids = {r["pid"] for r in again.state("behaviours")["replicas"]}

    response = again.client.delete("/v1/functions/behaviours")
    assert response.status_code == 200, response.text
    assert not any(alive(p) for p in replica_pids)
    with pytest.raises(httpx.ConnectError):
        fresh_get(url, "/str")
    assert not (again.data_dir / "agent" / "logs" / "behaviours").exists()
    assert again.client.get("/v1/functions/behaviours").status_code == 404
    assert again.client.delete("/v1/functions/behaviours").status_code == 404
    desired = json.loads((again.data_dir / "agent" / "desired.json").read_text())
    assert desired["functions"] == {}

    assert again.stop() == 0


LAUNCHER = """
import subprocess, sys, time
agent = subprocess.Popen(
    [sys.executable, "-m", "nubis.platforms.local.agent", "--data-dir", sys.argv[1]],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
)
print(agent.pid, flush=True)
time.sleep(120)
"""


def test_sigkill_of_the_process_that_started_the_agent_leaves_agent_and_replicas_serving(
    python_env: Path, free_port: Callable[[], int], tmp_path: Path
) -> None:
    """The API process of `nubis server` starts the agent; its death must not stop any function."""
    data_dir = tmp_path / "data"
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(data_dir)],
        stdout=subprocess.PIPE,
        cwd=REPO,
        start_new_session=True,
    )
    assert launcher.stdout is not None
    agent_pid = int(launcher.stdout.readline())
    launcher.stdout.close()
    replica_pids: set[int] = set()
    client = httpx.Client(
        transport=httpx.HTTPTransport(uds=str(data_dir / "agent" / "agent.sock")),
        base_url="http://agent",
        timeout=httpx.Timeout(60.0),
        trust_env=False,
        auth=TokenAuth(data_dir / "agent"),
    )
    try:

        def healthy() -> bool:
            return client.get("/healthz").status_code == 200

        def listening() -> bool:
            # the socket file appears at bind, a moment before the agent listens on it
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(data_dir / "agent" / "agent.sock"))
                except OSError:
                    return False
            return True

        wait_until(listening, AGENT_READY_TIMEOUT, "the agent listening on its socket")
        assert healthy()
        port = free_port()
        assert client.put("/v1/functions/behaviours", json=body(1, python_env, port)).status_code == 202

        def ready() -> dict[str, Any] | None:
            state: dict[str, Any] = client.get("/v1/functions/behaviours").json()
            return state if state["state"] == "ready" and state["replicas_ready"] == 1 else None

        replica_pids.update(r["pid"] for r in wait_until(ready, DEPLOY_TIMEOUT, "the function")["replicas"])

        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait(10)
        assert healthy()
        assert alive(agent_pid) and all(alive(p) for p in replica_pids)
        assert fresh_get(f"http://127.0.0.1:{port}/", "/str").text == "hello"
    finally:
        client.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(agent_pid, signal.SIGTERM)
        wait_until(lambda: not alive(agent_pid), AGENT_STOP_TIMEOUT, "the agent to stop")
        for pid in (agent_pid, launcher.pid, *replica_pids):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.wait(10)
    assert not any(alive(p) for p in replica_pids)


def test_bad_requests_are_refused_and_a_missing_agent_is_reported(
    start_agent: Callable[[], AgentProcess], python_env: Path, free_port: Callable[[], int], tmp_path: Path
) -> None:
    agent = start_agent()
    assert agent.client.get("/healthz").json()["status"] == "ok"
    port = free_port()
    assert agent.put("behaviours", {"generation": 1}).status_code == 400
    assert agent.client.put("/v1/functions/behaviours", content=b"{not json").status_code == 400
    refused = agent.put("behaviours", body(1, python_env, port, resources={"limits": {"memory": "lots"}}))
    assert refused.status_code == 400 and "memory" in refused.json()["error"]
    assert agent.put("Bad_Name", body(1, python_env, port)).status_code == 400
    assert agent.client.get("/v1/functions/nothing").status_code == 404
    assert agent.client.get("/v1/functions/nothing/logs").status_code == 404
    assert agent.deploy("first", body(1, python_env, port, replicas=0))["state"] == "ready"
    conflict = agent.put("second", body(1, python_env, port))
    assert conflict.status_code == 409, conflict.text
    zero = agent.state("first")  # at zero, one light replica keeps the triggers listening
    assert len(zero["replicas"]) == 1 and "scaled to zero" in zero["message"], zero

    # a broken first deployment: failed, nothing serves
    failed = agent.deploy("broken", body(1, python_env, free_port(), directory=INIT_ERROR))
    assert failed["state"] == "failed" and failed["active_generation"] is None

    # readinessTimeoutSeconds: a replica still in init_context when it passes fails the generation
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "main.py").write_text(
        "import time\n\ndef init_context(context):\n    time.sleep(20)\n\n"
        "def handler(context, event):\n    return 'late'\n"
    )
    config = {"metadata": {"name": "slow"}, "spec": {"runtime": "python", "handler": "main:handler"}}
    late = agent.deploy("slow", body(1, python_env, free_port(), directory=slow, config=config, readiness_timeout=1))
    assert late["state"] == "failed", late
    assert "was not ready within 1 s" in late["message"]
    assert late["replicas"] == []

    missing = tmp_path / "nowhere" / "agent.sock"

    async def ask() -> None:
        async with AgentClient(missing) as client:
            await client.list()

    with pytest.raises(AgentUnavailable, match=str(missing)):
        asyncio.run(ask())

    async def wait_failed() -> None:
        async with AgentClient(agent.sock) as client:
            await client.wait_ready("broken", 1, 5)

    with pytest.raises(DeployFailed, match="init failure"):
        asyncio.run(wait_failed())


async def _deploy(platform: LocalPlatform, function: FunctionDeployment, build: BuildOutput) -> Any:
    try:
        return await platform.deploy(function, build, timeout=DEPLOY_TIMEOUT)
    finally:
        await platform.aclose()


async def _scale(platform: LocalPlatform, name: str, replicas: int) -> Any:
    try:
        return await platform.scale(name, replicas)
    finally:
        await platform.aclose()
