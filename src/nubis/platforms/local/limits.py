"""`spec.resources.limits` for local replicas: Kubernetes quantities, cgroup v2 or rlimits.

Where a cgroup v2 hierarchy with the memory and cpu controllers is writable, each replica gets its
own child cgroup (`memory.max`, `cpu.max`) and joins it before it starts any worker, so the zygote
and workers count against the same limit. Elsewhere memory falls back to RLIMIT_AS, per process
(address space, not resident memory: an allocation past it raises MemoryError), and CPU is not
limited at all (RLIMIT_CPU caps CPU seconds, not a rate). The function's state says which applied.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from nubis.platforms.local.models import LimitsDict, LimitsMechanism

_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)([a-zA-Z]*)$")
_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
#: cpu.max period in microseconds
CPU_PERIOD = 100_000


def parse_quantity(value: Any, *, field: str) -> Decimal:
    """A Kubernetes quantity (`128Mi`, `1G`, `500m`, `2`, `1e3`) as a non-negative Decimal."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{field}: expected a quantity such as 128Mi or 500m, found {value!r}")
    text = str(value).strip()
    match = _QUANTITY.match(text)
    if match is None or match[2] not in _SUFFIXES:
        raise ValueError(f"{field}: expected a quantity such as 128Mi or 500m, found {value!r}")
    try:
        number = Decimal(match[1]) * _SUFFIXES[match[2]]
    except InvalidOperation:
        raise ValueError(f"{field}: not a number: {value!r}") from None
    if number < 0:
        raise ValueError(f"{field}: must not be negative, found {value!r}")
    return number


def parse_memory(value: Any, *, field: str = "spec.resources.limits.memory") -> int:
    """Bytes (rounded up) of a memory quantity; must be at least 1 MiB."""
    amount = math.ceil(parse_quantity(value, field=field))
    if amount < 2**20:
        raise ValueError(f"{field}: at least 1Mi is needed to run a replica, found {value!r}")
    return amount


def parse_cpu(value: Any, *, field: str = "spec.resources.limits.cpu") -> float:
    """CPU cores of a quantity (`500m` → 0.5); at least 1m."""
    cores = float(parse_quantity(value, field=field))
    if cores < 0.001:
        raise ValueError(f"{field}: at least 1m is needed, found {value!r}")
    return cores


@dataclass(frozen=True)
class ResourceLimits:
    memory: int | None = None
    cpu: float | None = None

    @classmethod
    def from_resources(cls, resources: Mapping[str, Any]) -> ResourceLimits:
        """`spec.resources.limits` (requests are scheduling hints; the local platform ignores them)."""
        limits = resources.get("limits") or {}
        if not isinstance(limits, Mapping):
            raise ValueError("spec.resources.limits: expected a mapping such as {memory: 128Mi, cpu: 500m}")
        memory = limits.get("memory")
        cpu = limits.get("cpu")
        return cls(
            memory=None if memory in (None, "") else parse_memory(memory),
            cpu=None if cpu in (None, "") else parse_cpu(cpu),
        )

    @property
    def empty(self) -> bool:
        return self.memory is None and self.cpu is None


class Cgroups:
    """A cgroup v2 directory, delegated to the agent, with memory and cpu enabled for children."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def detect(cls, explicit: Path | None = None, mount: Path = Path("/sys/fs/cgroup")) -> Cgroups | str:
        """A usable hierarchy, or the reason why there is none (for the function's state).

        `explicit` is a cgroup directory delegated to us (e.g. by systemd, `Delegate=yes`); otherwise
        `<mount>/nubis` is created when the cgroup v2 root is writable.
        """
        root = explicit if explicit is not None else mount / "nubis"
        parent = root.parent
        if not (parent / "cgroup.controllers").exists():
            return f"no cgroup v2 hierarchy at {parent}"
        try:
            root.mkdir(exist_ok=True)
        except OSError as exc:
            return f"cgroup v2 at {parent} is not writable ({exc.strerror or exc})"
        try:
            available = set((root / "cgroup.controllers").read_text().split())
            missing = {"memory", "cpu"} - available
            if missing:
                _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(missing)))
                available = set((root / "cgroup.controllers").read_text().split())
            if not {"memory", "cpu"} <= available:
                return f"the memory and cpu controllers are not delegated to {root}"
            enabled = set((root / "cgroup.subtree_control").read_text().split())
            if not {"memory", "cpu"} <= enabled:
                _write(root / "cgroup.subtree_control", "+memory +cpu")
        except OSError as exc:
            return f"cannot enable the memory and cpu controllers under {root} ({exc.strerror or exc})"
        return cls(root)

    def create(self, name: str, limits: ResourceLimits) -> Path:
        """A child cgroup with the limits written in; raises OSError when it cannot be made."""
        path = self.root / name
        with contextlib.suppress(FileExistsError):
            path.mkdir()
        if limits.memory is not None:
            _write(path / "memory.max", str(limits.memory))
            with contextlib.suppress(OSError):  # no swap beyond the limit, where swap exists
                _write(path / "memory.swap.max", "0")
        if limits.cpu is not None:
            quota = max(1000, round(limits.cpu * CPU_PERIOD))
            _write(path / "cpu.max", f"{quota} {CPU_PERIOD}")
        return path

    def remove(self, name: str) -> None:
        """Remove a child cgroup once its processes are gone (best effort)."""
        with contextlib.suppress(OSError):
            (self.root / name).rmdir()


def _write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


@dataclass(frozen=True)
class LimitsPlan:
    """How one function's limits are applied to its replicas."""

    limits: ResourceLimits
    mechanism: LimitsMechanism
    message: str

    def report(self) -> LimitsDict:
        memory_enforced = self.limits.memory is not None and self.mechanism in ("cgroup", "rlimit")
        return {
            "mechanism": self.mechanism,
            "memory": self.limits.memory,
            "cpu": self.limits.cpu,
            "memory_enforced": memory_enforced,
            "cpu_enforced": self.limits.cpu is not None and self.mechanism == "cgroup",
            "message": self.message,
        }


def plan_limits(limits: ResourceLimits, cgroups: Cgroups | str | None) -> LimitsPlan:
    """Pick the mechanism: cgroup v2 when usable, else RLIMIT_AS for memory (CPU unlimited)."""
    if limits.empty:
        return LimitsPlan(limits, "none", "no limits asked for (spec.resources.limits)")
    if isinstance(cgroups, Cgroups):
        return LimitsPlan(limits, "cgroup", f"cgroup v2 under {cgroups.root}")
    why = cgroups or "cgroups disabled"
    if limits.memory is None:
        return LimitsPlan(limits, "none", f"{why}; CPU cannot be limited without cgroups")
    cpu_note = "; CPU is not limited (no cgroup)" if limits.cpu is not None else ""
    return LimitsPlan(limits, "rlimit", f"{why}; memory limited per process with RLIMIT_AS (address space){cpu_note}")
