"""Where Nubis keeps its data, for code below the control plane.

The settings themselves are one model, `nubis.control.settings.ServerSettings`, read from the
command line and `NUBIS_*` variables. Two things are also needed where that model is out of reach:
the local agent run on its own (a lower layer) and `nubis run` (which must start without reading
the server's settings), so they live here, standard library only.
"""

from __future__ import annotations

import os
from pathlib import Path

#: every setting's environment variable is this prefix and the setting's name in capitals
ENV_PREFIX = "NUBIS_"
DATA_DIR_ENV = f"{ENV_PREFIX}DATA_DIR"


def user_data_dir() -> Path:
    """The user's data directory (XDG): $XDG_DATA_HOME/nubis, else ~/.local/share/nubis."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "nubis"


def default_data_dir() -> Path:
    """`NUBIS_DATA_DIR`, else the user's data directory, for processes that take no other settings."""
    explicit = os.environ.get(DATA_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    return user_data_dir()


def environments_dir(data_dir: Path) -> Path:
    """Where built function environments are cached, keyed by the hash of their inputs."""
    return data_dir / "envs"
