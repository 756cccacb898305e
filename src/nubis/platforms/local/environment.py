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
from pathlib import Path

from nubis.platforms.local.limits import Cgroups, LimitsPlan, ResourceLimits, plan_limits
from nubis.platforms.local.models import Deployment


class ReplicaEnvironment:
    """What every replica of the agent shares: paths, limits mechanism, the agent's pid."""

    def __init__(self, agent_dir: Path, cgroups: Cgroups | str | None) -> None:
        self.agent_dir = agent_dir
        self.cgroups = cgroups
        self.pid = os.getpid()

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
            "--python",
            deployment.python,
            "--port",
            str(deployment.port),
            "--host",
            deployment.host,
            "--parent-pid",
            str(self.pid),
        ]
        if plan.mechanism == "cgroup" and isinstance(self.cgroups, Cgroups):
            path = self.cgroups.create(f"{deployment.name}.{slot_name}", plan.limits)
            argv += ["--cgroup", str(path)]
        elif plan.mechanism == "rlimit" and plan.limits.memory is not None:
            argv += ["--memory-limit", str(plan.limits.memory)]
        return argv

    def env(self, deployment: Deployment) -> dict[str, str]:
        env = dict(os.environ)
        env.update(deployment.env)
        env["PYTHONUNBUFFERED"] = "1"
        return env
