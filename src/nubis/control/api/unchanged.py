"""Whether an update asks for exactly what already serves, so no new generation is made.

`make run` and CI pipelines deploy the same function again and again; each new generation costs a
build check, new replicas and a drain, and pushes the serving generation's log out of sight. An
update is a no-op when the function is `ready` on the generation it was last deployed at, the new
configuration equals the stored one, the code is pinned by the configuration itself (inline
source, or an uploaded archive, whose path names its content hash), and the platform really
serves that generation. Anything less certain redeploys, as Nuclio always does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nubis.errors import NubisError
from nubis.store import FunctionRecord


async def is_unchanged(control: Any, current: FunctionRecord, config: dict[str, Any]) -> bool:
    """True when deploying `config` over `current` would change nothing that runs."""
    if current.state != "ready" or current.deployed_generation != current.generation:
        return False
    if _canonical(config) != _canonical(current.config):
        return False
    if not _code_is_pinned(config, control.settings.data_dir / "sources"):
        return False
    try:
        status = await control.platform.status(current.name)
    except NubisError:
        return False  # the platform cannot say what serves: deploy, and let that report it
    return status is not None and status.state == "ready" and status.active_generation == current.generation


def _canonical(config: dict[str, Any]) -> str:
    """One text per configuration, whatever its key order or JSON round trips did to it."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)


def _code_is_pinned(config: dict[str, Any], sources_dir: Path) -> bool:
    """The configuration names its code's content: inline source, or an uploaded archive (unpacked
    under `sources/<function>/<sha256 prefix>`). A server directory may change under the same path."""
    build = (config.get("spec") or {}).get("build") or {}
    if build.get("functionSourceCode"):
        return True
    path = build.get("path")
    if not path:
        return False
    return Path(str(path)).resolve().is_relative_to(sources_dir.resolve())
