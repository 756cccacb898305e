"""What one replica reads and writes, by directory: all that isolation lets it reach.

A replica reads its code (`<data>/functions/<name>/g<N>`), its configuration files
(`<data>/agent/functions/<name>`), what every function may read (`<data>/shared`: the ports
file), its built environment and the interpreters behind it, and the agent's Python with Nubis
itself (it runs `python -m nubis.processor.replica`). It writes its own state only: trigger state
and reports, failed events, async invocations, traces, its home (also its TMPDIR and bytecode
cache), its replica socket's directory and its secret volumes' directory. The spool of its output
is written through file descriptors the agent opened, so it needs no path for it.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nubis
from nubis.failed_events import REPLAY_DIR
from nubis.invocations import CLAIMS_DIR
from nubis.runtimes.base import Artifact
from nubis.trigger_reports import report_path

if TYPE_CHECKING:
    from nubis.platforms.local.environment import ReplicaEnvironment
    from nubis.platforms.local.models import Deployment

#: what every process reads on a Linux system (only those this machine has count)
SYSTEM_READS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/proc", "/sys")
#: read where present: resolv.conf's target on machines with systemd-resolved
OPTIONAL_READS = ("/run/systemd/resolve",)
#: devices a replica reads and writes; not /dev/shm, which holds other replicas' secret volumes
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/ptmx", "/dev/pts")


@dataclass(frozen=True)
class ReplicaPaths:
    """The directories of one replica: read (and executed from) and written."""

    reads: tuple[Path, ...]
    writes: tuple[Path, ...]
    #: the replica's home: HOME, and TMPDIR and the bytecode cache inside
    home: Path
    #: the directory of its replica socket (in the shared temp dir, beside other instances')
    sockets: Path
    #: where its function's built environments live (the ones it may make readable)
    environments: Path
    #: `<data>/shared`, which every replica reads
    shared: Path

    def make_shared(self) -> None:
        """`<data>/shared` exists before the replica starts (a sandbox is made of what exists), 0755."""
        self.shared.mkdir(parents=True, exist_ok=True)
        self.shared.chmod(0o755)


def home_dir(agent_dir: Path, function: str) -> Path:
    """`<data>/agent/home/<function>`: the directory the function's replicas may write as they like."""
    return agent_dir / "home" / function


def shared_dir(data_dir: Path) -> Path:
    """`<data>/shared`: what every function may read (`ports.json`); nothing secret goes there."""
    return data_dir / "shared"


def replica_paths(environment: ReplicaEnvironment, deployment: Deployment, slot: str) -> ReplicaPaths:
    name = deployment.name
    data_dir = environment.agent_dir.parent
    home = home_dir(environment.agent_dir, name)
    sockets = environment.replica_socket(name, slot).parent
    triggers, failed, invocations = (
        environment.trigger_state_dir(name),
        environment.failed_events_dir(name),
        environment.invocations_dir(name),
    )
    writes = [
        triggers,
        report_path(triggers, 0).parent,
        failed,
        # made here, not by the control plane as root when it first replays or reads
        failed / REPLAY_DIR,
        invocations,
        invocations / CLAIMS_DIR,
        environment.traces_dir(name),
        home,
        home / "tmp",
        home / ".cache",
        sockets,
    ]
    if deployment.workload is not None:
        writes.append(environment.identity.secrets_dir(name, slot))
    reads = [
        Path(deployment.function_dir),
        environment.config_path(deployment).parent,
        shared_dir(data_dir),
        *artifact_roots(deployment.artifact),
        *python_roots(),
    ]
    return ReplicaPaths(
        tuple(_unique(reads)), tuple(_unique(writes)), home, sockets, data_dir / "envs", shared_dir(data_dir)
    )


@functools.cache
def python_roots() -> tuple[Path, ...]:
    """The agent's Python (the replica's): its venv, the installation behind it, and Nubis."""
    prefixes = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
    roots = [Path(p) for p in sorted(prefixes)]
    roots += interpreter_roots(Path(sys.executable))
    roots.append(Path(nubis.__file__).resolve().parent.parent)  # src/ of a checkout, or site-packages
    return tuple(_unique(roots))


def artifact_roots(artifact: Artifact) -> list[Path]:
    """Directories the runtime's artifact points into, with the interpreters behind them (a venv's
    `bin/python` is a link to the Python it was made from, and reads that one's stdlib)."""
    roots: list[Path] = []
    for value in artifact.details.values():
        if not os.path.isabs(value) or not os.path.exists(value):
            continue
        roots += interpreter_roots(Path(value))
    return roots


def interpreter_roots(executable: Path) -> list[Path]:
    """For a program: its venv (or its directory's parent), where its links lead, and the venv's `home`."""
    roots = [venv_root(executable) or _prefix(executable)]
    real = executable.resolve()
    if real != executable:
        roots.append(_prefix(real))
    venv = venv_root(executable)
    if venv is not None:
        home = venv_home(venv)
        if home is not None:
            roots += [home.parent, home.resolve().parent]
    return roots


def venv_root(path: Path) -> Path | None:
    """The venv `path` lies in (the directory holding `pyvenv.cfg`), if any."""
    for parent in (path.parent, *path.parent.parents):
        if (parent / "pyvenv.cfg").is_file():
            return parent
    return None


def venv_home(venv: Path) -> Path | None:
    """The `home = DIR` of a venv's pyvenv.cfg: the bin directory of the Python it was made from."""
    try:
        lines = (venv / "pyvenv.cfg").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "home" and value.strip():
            return Path(value.strip())
    return None


def _prefix(program: Path) -> Path:
    """`/opt/python/3.12` of `/opt/python/3.12/bin/python3.12`; the directory of any other file."""
    return program.parent.parent if program.parent.name == "bin" else program.parent


def _unique(paths: Iterable[Path]) -> list[Path]:
    return list(dict.fromkeys(Path(os.path.abspath(p)) for p in paths))
