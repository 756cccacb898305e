"""The local agent as the local platform keeps it: adopted or started, and started again when it dies.

The agent runs in its own session, so a SIGKILL of the server leaves it (and the replicas)
serving, and the next server adopts it through its socket. The other way round is handled here:
an agent that dies (SIGKILL, OOM) is started again after a backoff, and the new agent adopts the
replicas that kept serving meanwhile (see `nubis.platforms.local.process`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from nubis.errors import NubisError
from nubis.platforms.local.client import AgentClient, AgentUnavailable
from nubis.platforms.local.keeper import keep_running, running, wait_exit, wait_pid
from nubis.platforms.local.models import AGENT_PROTOCOL
from nubis.platforms.local.paths import agent_dir, socket_path
from nubis.platforms.local.process import describe_exit

log = logging.getLogger("nubis.server")

#: How long a freshly started agent may take to answer on its socket (seconds).
AGENT_START_TIMEOUT = 30.0


class AgentStartError(NubisError):
    """The local agent could not be started (or did not answer)."""


class AgentProcess:
    """The local agent of a data dir: adopted when one already answers on its socket, else started."""

    def __init__(self, data_dir: Path, *, isolation: str = "auto") -> None:
        self.data_dir = data_dir
        #: `--isolation` of the agent it starts (an adopted agent keeps its own)
        self.isolation = isolation
        self.process: subprocess.Popen[bytes] | None = None
        #: the agent's pid as it said itself (adopted) or as we started it
        self.agent_pid: int | None = None
        self.restarts = 0

    @property
    def log_file(self) -> Path:
        return agent_dir(self.data_dir) / "agent.log"

    async def ensure(self) -> None:
        """Adopt the agent that answers, else start one and wait until it answers.

        An agent of another release (another `AGENT_PROTOCOL`) is replaced: SIGKILL, so its
        replicas keep serving, then a new agent adopts them from desired.json, which every release
        reads (`nubis.platforms.local.state`)."""
        health = await self._health()
        if health is not None:
            pid = health.get("pid")
            pid = pid if isinstance(pid, int) else -1
            if health.get("protocol") == AGENT_PROTOCOL or pid <= 0:
                self.process, self.agent_pid = None, pid
                log.info("adopted the running agent of %s (pid %d)", self.data_dir, pid)
                return
            await self._replace_outdated(pid, health.get("protocol"))
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as output:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "nubis.platforms.local.agent", "--data-dir", str(self.data_dir)),
                    *("--isolation", self.isolation),
                ],
                stdout=output,
                stderr=output,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.agent_pid = self.process.pid
        loop = asyncio.get_running_loop()
        deadline = loop.time() + AGENT_START_TIMEOUT
        while loop.time() < deadline:
            if self.process.poll() is not None:
                raise AgentStartError(f"the local agent {describe_exit(self.process.returncode)}; see {self.log_file}")
            if await self._answering_pid() is not None:
                return
            await asyncio.sleep(0.05)
        raise AgentStartError(f"the local agent did not answer within {AGENT_START_TIMEOUT:.0f} s; see {self.log_file}")

    async def _answering_pid(self) -> int | None:
        health = await self._health()
        if health is None:
            return None
        pid = health.get("pid")
        return pid if isinstance(pid, int) else -1

    async def _health(self) -> dict[str, Any] | None:
        """The agent's `/healthz` answer, or None when no agent answers (or it refuses us)."""
        client = AgentClient(socket_path(self.data_dir), timeout=2.0)
        try:
            return await client.health()
        except AgentUnavailable:
            return None
        except NubisError as exc:  # it answers, but refuses us (e.g. another data dir's token)
            log.warning("the agent on %s answers but refuses the server: %s", socket_path(self.data_dir), exc.message)
            return None
        finally:
            await client.aclose()

    async def _replace_outdated(self, pid: int, protocol: object) -> None:
        log.warning(
            "the running agent of %s (pid %d) speaks protocol %s, this release %d: replacing it "
            "(its replicas keep serving and are adopted)",
            self.data_dir,
            pid,
            protocol if protocol is not None else 1,
            AGENT_PROTOCOL,
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        try:
            await asyncio.wait_for(wait_pid(pid, lambda: not running(pid)), AGENT_START_TIMEOUT)
        except TimeoutError:
            raise AgentStartError(f"the outdated agent (pid {pid}) did not exit after SIGKILL") from None

    def pid(self) -> int | None:
        if self.process is not None:
            return self.process.pid
        return self.agent_pid if self.agent_pid and self.agent_pid > 0 else None

    async def wait_gone(self) -> str:
        """Return once the agent process ended, saying how."""
        return await wait_exit(self.process, self.pid())

    async def supervise(self) -> None:
        """Start the agent again, with backoff, each time it dies (runs until cancelled)."""

        async def ensure() -> None:
            await self.ensure()
            self.restarts += 1

        await keep_running(
            "local agent",
            self.pid,
            self.wait_gone,
            ensure,
            gone_note="; its replicas keep serving",
            again="starting a new agent",
            started_note="; it adopts the running replicas",
        )

    async def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM: the agent drains its replicas, then exits (SIGKILL after `timeout` s)."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        process = self.process
        gone = (lambda: process.poll() is not None) if process is not None else (lambda: not running(pid))
        try:
            await asyncio.wait_for(wait_pid(pid, gone), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
