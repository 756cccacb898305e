"""Platform settings read once from `NUBIS_*` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def default_data_dir() -> Path:
    """`NUBIS_DATA_DIR`, else the user's data directory (XDG), e.g. ~/.local/share/nubis."""
    explicit = os.environ.get("NUBIS_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "nubis"


@dataclass
class Settings:
    data_dir: Path = field(default_factory=default_data_dir)

    @property
    def environments_dir(self) -> Path:
        """Where built function environments are cached, keyed by the hash of their inputs."""
        return self.data_dir / "envs"
