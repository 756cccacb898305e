"""The local agent: supervises the replicas of every function and serves the agent API.

    nubis agent --data-dir DIR            (or: python -m nubis.platforms.local.agent --data-dir DIR)

It listens on the Unix socket `<data>/agent/agent.sock` (see `api.py`), keeps its desired state in
`<data>/agent/desired.json` and the replicas' output under `<data>/agent/logs/`. One agent per
data dir (`agent.lock`). When serving it prints `agent ready at <socket>` on stdout.

Replicas are started by the agent, each in its own session, and outlive it, as pods outlive a
kubelet restart: their output goes to spool files and their ready line to a pipe of its own (see
`process.py`), so a SIGKILL of the agent changes nothing for them. The next agent adopts the
replicas that still run from the records in desired.json and starts only what is missing. The API
server restarts an agent that died. SIGTERM (or SIGINT) drains every replica, then the agent
exits 0; desired.json is kept. Every request on the socket needs the agent's token
(`agent_token.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import IO, Any

import uvicorn

from nubis import logs
from nubis.errors import NubisError
from nubis.platforms.local.agent_token import ensure_token
from nubis.platforms.local.environment import ReplicaEnvironment
from nubis.platforms.local.isolation import ISOLATION_MODES, Isolation, NoIsolation, select_isolation
from nubis.platforms.local.limits import Cgroups, ResourceLimits
from nubis.platforms.local.logstore import FunctionLogs
from nubis.platforms.local.models import BadDeployment, Deployment, FunctionState, PortConflict
from nubis.platforms.local.paths import agent_dir, socket_path
from nubis.platforms.local.replica_paths import home_dir
from nubis.platforms.local.state import DesiredStore, FunctionRecord
from nubis.platforms.local.supervisor import FunctionSupervisor
from nubis.settings import default_data_dir
from nubis.sockets import replica_sockets_dir

log = logging.getLogger("nubis.agent")

#: sockaddr_un.sun_path holds 108 bytes, the terminating NUL included
MAX_SOCKET_PATH = 107


class AgentError(NubisError):
    """The agent cannot start (data dir, lock, socket path)."""


class Agent:
    """All functions of one data dir: their supervisors, desired state and logs."""

    def __init__(self, data_dir: Path, *, cgroup_root: str = "auto", isolation: Isolation | None = None) -> None:
        self.data_dir = data_dir
        self.dir = agent_dir(data_dir)
        self.socket_path = socket_path(data_dir)
        self.logs_dir = self.dir / "logs"
        self.store = DesiredStore(self.dir / "desired.json")
        self.cgroup_root = cgroup_root
        self.functions: dict[str, FunctionSupervisor] = {}
        self.environment: ReplicaEnvironment | None = None
        self.isolation: Isolation = isolation or NoIsolation()
        self._saved: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    def _detect_cgroups(self) -> Cgroups | str:
        if self.cgroup_root == "off":
            return "cgroups are turned off (--cgroup-root off)"
        explicit = None if self.cgroup_root == "auto" else Path(self.cgroup_root)
        return Cgroups.detect(explicit)

    async def start(self) -> None:
        """Start the functions desired.json describes (in the background)."""
        cgroups = self._detect_cgroups()
        if isinstance(cgroups, Cgroups):
            log.info("limits: cgroup v2 under %s", cgroups.root)
        else:
            log.info("limits: no usable cgroup v2 (%s); memory limits use RLIMIT_AS", cgroups)
        log.info("isolation: %s", self.isolation.describe())
        self.environment = ReplicaEnvironment(self.dir, cgroups, self.isolation)
        records = self.store.load()
        self._collect_garbage(records)
        for name, record in records.items():
            supervisor = self._supervisor(name)
            supervisor.restore(record.desired, record.active, record.failure, list(record.replicas))
            log.info("restoring function %s (generation %d)", name, record.desired.generation)

    def _collect_garbage(self, records: dict[str, FunctionRecord]) -> None:
        """Logs and configuration files of functions no longer desired (deleted while we were down),
        and output spools no running replica writes to any more."""
        for parent in (self.logs_dir, self.dir / "functions", self.dir / "spool", home_dir(self.dir, "")):
            if parent.is_dir():
                for entry in parent.iterdir():
                    if entry.name not in records:
                        shutil.rmtree(entry, ignore_errors=True)
        assert self.environment is not None  # secret volumes no running replica reads (identity.py)
        self.environment.identity.collect({name: {r.slot for r in rec.replicas} for name, rec in records.items()})
        adoptable = {r.spool for record in records.values() for r in record.replicas}
        spools = self.dir / "spool"
        for path in spools.glob("*/*") if spools.is_dir() else []:
            if str(path) not in adoptable:
                with contextlib.suppress(OSError):
                    path.unlink()

    async def stop(self) -> None:
        """Drain every replica (desired.json is kept: the next agent brings them back)."""
        await asyncio.gather(*(s.stop() for s in self.functions.values()), return_exceptions=True)
        for name in self.functions:
            self._remove_socket_dir(name)

    def _remove_socket_dir(self, name: str) -> None:
        """The function's replica socket directory, and the instance's above it, once empty (they
        live in the shared temp dir: nothing of a stopped instance stays there)."""
        sockets = replica_sockets_dir(self.dir.parent, name)
        for empty in (sockets, sockets.parent):
            with contextlib.suppress(OSError):
                empty.rmdir()

    def _supervisor(self, name: str) -> FunctionSupervisor:
        supervisor = self.functions.get(name)
        if supervisor is None:
            assert self.environment is not None, "Agent.start() first"
            supervisor = FunctionSupervisor(
                name, self.environment, FunctionLogs(self.logs_dir / name), on_change=self.save
            )
            self.functions[name] = supervisor
        return supervisor

    def save(self) -> None:
        records = {
            name: FunctionRecord(s.desired, s.active, s.failure, tuple(s.replica_records()))
            for name, s in self.functions.items()
            if s.desired is not None
        }
        text = repr(sorted((n, r.to_json()) for n, r in records.items()))
        if text == self._saved:
            return
        try:
            self.store.save(records)
            self._saved = text
        except OSError as exc:
            log.error("cannot save %s: %s", self.store.path, exc)

    # -- operations ---------------------------------------------------------------------------------
    async def apply(self, name: str, body: Any) -> FunctionState:
        """PUT: validate and apply a desired deployment; raises BadDeployment."""
        deployment = Deployment.from_json(name, body)
        try:
            ResourceLimits.from_resources(deployment.resources)
        except ValueError as exc:
            raise BadDeployment(str(exc)) from exc
        for other_name, other in self.functions.items():
            theirs = other.desired or other.active
            if other_name != name and theirs is not None and theirs.port == deployment.port:
                raise PortConflict(f"port: {deployment.port} is the port of function {other_name!r}")
        supervisor = self._supervisor(name)
        await supervisor.apply(deployment)
        self.save()
        return supervisor.report()

    def get(self, name: str) -> FunctionState | None:
        supervisor = self.functions.get(name)
        return supervisor.report() if supervisor is not None else None

    def list(self) -> dict[str, FunctionState]:
        return {name: s.report() for name, s in sorted(self.functions.items())}

    async def delete(self, name: str) -> bool:
        """Drain and stop every replica of the function, then remove its logs and files."""
        supervisor = self.functions.pop(name, None)
        if supervisor is None:
            return False
        self.save()
        await supervisor.stop()
        supervisor.logs.remove()
        shutil.rmtree(self.dir / "functions" / name, ignore_errors=True)
        environment = supervisor.environment
        for directory in (
            environment.trigger_state_dir(name),
            environment.failed_events_dir(name),
            environment.invocations_dir(name),
            home_dir(self.dir, name),
        ):
            shutil.rmtree(directory, ignore_errors=True)
        environment.identity.forget(name)
        self._remove_socket_dir(name)
        log.info("function %s deleted", name)
        return True

    def function_logs(self, name: str) -> FunctionLogs | None:
        supervisor = self.functions.get(name)
        return supervisor.logs if supervisor is not None else None


class AgentLock:
    """`agent.lock`: one agent per data dir; the file names the holder's pid."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise AgentError(
                f"another agent (pid {holder}) already runs on {self.path.parent}; stop it first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self._handle.close()
            self._handle = None


def prepare(data_dir: Path) -> Path:
    """Create `<data>/agent` (private to the user) and check the socket path fits sun_path."""
    directory = agent_dir(data_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
    except OSError as exc:
        raise AgentError(f"cannot create {directory}: {exc.strerror or exc}") from None
    sock = socket_path(data_dir)
    if len(os.fsencode(sock)) > MAX_SOCKET_PATH:
        raise AgentError(
            f"the agent socket path {sock} is longer than {MAX_SOCKET_PATH} bytes; use a shorter --data-dir"
        )
    return sock


def run_agent(data_dir: Path, *, cgroup_root: str = "auto", isolation: str = "auto") -> int:
    """Serve the agent until SIGTERM/SIGINT; returns the exit code."""
    from nubis.platforms.local.api import create_app

    data_dir = data_dir.expanduser().resolve()
    sock = prepare(data_dir)
    lock = AgentLock(agent_dir(data_dir) / "agent.lock")
    lock.acquire()
    try:
        agent = Agent(data_dir, cgroup_root=cgroup_root, isolation=select_isolation(isolation, data_dir))
        config = uvicorn.Config(
            create_app(agent, ensure_token(agent_dir(data_dir))),
            uds=str(sock),
            loop="uvloop",
            lifespan="on",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        server = _Server(config)
        server.run()
        with contextlib.suppress(OSError):
            sock.unlink()
        return 0 if server.started else 1
    finally:
        lock.release()


class _Server(uvicorn.Server):
    """uvicorn's server, announcing readiness on stdout once the socket listens."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.config.uds:
            with contextlib.suppress(OSError):
                os.chmod(self.config.uds, 0o600)
            print(f"agent ready at {self.config.uds}", flush=True)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal after shutting down; a drained agent exits 0 instead
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nubis.platforms.local.agent", description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=None, help="data dir (default: NUBIS_DATA_DIR)")
    parser.add_argument(
        "--cgroup-root",
        default="auto",
        help="'auto' (<cgroup2 mount>/nubis when writable), 'off' (rlimits only), or a delegated cgroup",
    )
    parser.add_argument(
        "--isolation",
        choices=ISOLATION_MODES,
        default=os.environ.get("NUBIS_ISOLATION", "auto"),
        help="how replicas are kept from the data dir and each other: 'auto' (users as root, else landlock "
        "where the kernel has it, else none), 'users', 'landlock' or 'none' (default: NUBIS_ISOLATION, else auto; "
        "docs/isolation.md)",
    )
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    args = parser.parse_args(argv)
    try:
        level = logs.parse_level(args.log_level)
    except ValueError as exc:
        print(f"--log-level: {exc}", file=sys.stderr)
        return 2
    logs.configure(level, "json" if args.log_format == "json" else "text")
    try:
        return run_agent(args.data_dir or default_data_dir(), cgroup_root=args.cgroup_root, isolation=args.isolation)
    except NubisError as exc:
        log.error("%s", exc.message)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
