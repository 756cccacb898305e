"""How a replica process is launched: its configuration file, command line, environment and limits.

Kept apart from the supervisor because it is the only part that knows the replica's command line
(`python -m nubis.processor.replica …`) and the limits mechanism (cgroup or rlimit); supervising
and rolling out only ask it for an argv, an env and a plan.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import msgspec

from nubis.platforms.local.identity import ReplicaIdentity
from nubis.platforms.local.isolation import Isolation, NoIsolation
from nubis.platforms.local.limits import Cgroups, LimitsPlan, ResourceLimits, plan_limits
from nubis.platforms.local.models import Deployment
from nubis.platforms.local.replica_paths import replica_paths
from nubis.sockets import REPLICA_SOCKET_SUFFIX, replica_sockets_dir


class ReplicaEnvironment:
    """What every replica of the agent shares: paths and the limits mechanism."""

    def __init__(self, agent_dir: Path, cgroups: Cgroups | str | None, isolation: Isolation | None = None) -> None:
        self.agent_dir = agent_dir
        self.cgroups = cgroups
        self.pid = os.getpid()
        #: replicas' identity tokens and secrets directories (identity.py)
        self.identity = ReplicaIdentity(agent_dir.parent)
        #: how replicas are kept from the data dir and from other tenants (isolation.py)
        self.isolation: Isolation = isolation or NoIsolation()

    def config_path(self, deployment: Deployment) -> Path:
        text = json.dumps(deployment.config, sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        return self.agent_dir / "functions" / deployment.name / f"config-{digest}.json"

    def config_file(self, deployment: Deployment) -> Path:
        """The function configuration as JSON, named by its content (so restarts read the same)."""
        path = self.config_path(deployment)
        text = json.dumps(deployment.config, sort_keys=True)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(text)
            tmp.replace(path)
        return path

    def collect_configs(self, name: str, keep: list[Deployment | None]) -> None:
        """Remove the configuration files of `name` no deployment in `keep` uses (replicas read
        theirs at start, so draining ones do not need it)."""
        wanted = {self.config_path(d) for d in keep if d is not None}
        directory = self.agent_dir / "functions" / name
        if directory.is_dir():
            for path in directory.glob("config-*.json"):
                if path not in wanted:
                    with contextlib.suppress(OSError):
                        path.unlink()

    def plan(self, deployment: Deployment) -> LimitsPlan:
        return plan_limits(ResourceLimits.from_resources(deployment.resources), self.cgroups)

    def argv(self, deployment: Deployment, slot_name: str, plan: LimitsPlan) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "nubis.processor.replica",
            "--config",
            str(self.config_file(deployment)),
            "--function-dir",
            deployment.function_dir,
            "--artifact",
            msgspec.json.encode(deployment.artifact).decode(),
            "--port",
            str(deployment.port),
            "--host",
            deployment.host,
            # the port belongs to this function of this Nubis instance (data dir): see port_owner.py
            "--port-owner",
            f"{self.agent_dir.parent.resolve()}:{deployment.name}",
            # the gateway's way to this replica alone: least-in-flight balancing, retries, drains
            "--replica-socket",
            str(self.replica_socket(deployment.name, slot_name)),
            # message triggers' events that failed for good (`nubis events failed`)
            "--failed-events-dir",
            str(self.failed_events_dir(deployment.name)),
            # the HTTP trigger's async invocations and their results (`nubis invocations get`)
            "--invocations-dir",
            str(self.invocations_dir(deployment.name)),
            # the hops of its events' traces (outputs, `nubis events trace`)
            "--traces-dir",
            str(self.traces_dir(deployment.name)),
            # one cron tick ledger for all the function's replicas: a tick fires once
            "--trigger-state-dir",
            str(self.trigger_state_dir(deployment.name)),
        ]
        if plan.mechanism == "cgroup" and isinstance(self.cgroups, Cgroups):
            path = self.cgroups.create(f"{deployment.name}.{slot_name}", plan.limits)
            argv += ["--cgroup", str(path)]
        elif plan.mechanism == "rlimit" and plan.limits.memory is not None:
            argv += ["--memory-limit", str(plan.limits.memory)]
        # its own user, mount namespace or Landlock sandbox: the launcher in front (isolation.py)
        return self.isolation.wrap(argv, deployment, replica_paths(self, deployment, slot_name))

    def trigger_state_dir(self, function: str) -> Path:
        """What the function's replicas share for their triggers: the cron tick ledger, and each
        replica's trigger report (`nubis.trigger_reports`)."""
        return self.agent_dir / "triggers" / function

    def failed_events_dir(self, function: str) -> Path:
        """The platform's failed-event store of one function (`nubis.failed_events`)."""
        return self.agent_dir / "failed" / function

    def invocations_dir(self, function: str) -> Path:
        """The platform's async invocation store of one function (`nubis.invocations`)."""
        return self.agent_dir / "invocations" / function

    def traces_dir(self, function: str) -> Path:
        """Where one function's replicas record their hops (`nubis.traces`; the platform reads
        every function's, under `agent/traces`)."""
        return self.agent_dir / "traces" / function

    def replica_socket(self, function: str, slot_name: str) -> Path:
        """The Unix socket of one replica (`nubis.processor.replica_socket`)."""
        return replica_sockets_dir(self.agent_dir.parent, function) / f"{slot_name}{REPLICA_SOCKET_SUFFIX}"

    def spool_path(self, deployment: Deployment, slot_name: str) -> Path:
        """A new output spool for one start of a replica (see `spool.py`)."""
        return self.agent_dir / "spool" / deployment.name / f"{slot_name}-{time.time_ns()}.out"

    def env(self, deployment: Deployment) -> dict[str, str]:
        """Only what the deployment names, plus what a process needs to run at all: the server's own
        environment (a state URL with a password, an API token) never reaches a function."""
        env = {key: value for key, value in os.environ.items() if inherited(key)}
        env.update(deployment.env)
        env["PYTHONUNBUFFERED"] = "1"
        return self.isolation.environ(env, deployment, replica_paths(self, deployment, ""))


#: variables of the agent's environment a replica inherits: how to find programs, whose home, the
#: locale, the time zone and the temporary directory; nothing that configures Nubis or holds a secret
INHERITED = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR"})
#: prefixes inherited as well (locale categories) and Nubis settings the processor itself reads
INHERITED_PREFIXES = ("LC_",)


def inherited(key: str) -> bool:
    return key in INHERITED or key.startswith(INHERITED_PREFIXES) or key in PROCESSOR_SETTINGS


#: settings of the processor (not of the server) that replicas must see to behave like the agent asks
PROCESSOR_SETTINGS = frozenset({"NUBIS_PORT_LOCK_DIR"})
