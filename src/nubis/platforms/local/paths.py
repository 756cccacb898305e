"""Where the agent keeps its files under a data dir."""

from __future__ import annotations

from pathlib import Path


def agent_dir(data_dir: Path) -> Path:
    """`<data>/agent`: socket, lock, desired.json, logs/, functions/ (configuration files)."""
    return data_dir / "agent"


def socket_path(data_dir: Path) -> Path:
    return agent_dir(data_dir) / "agent.sock"
