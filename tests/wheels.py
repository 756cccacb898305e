"""The wheel cache function environments of the tests install from, filled once and then offline.

Every environment a test builds installs the runtime's requirements (nuclio-sdk, msgpack), and a
few tests install more by name (PACKAGES). They are downloaded once into a directory kept across
runs (pytest's cache dir); the suite then points uv at it in offline mode (this uv has no
environment variable for --no-index) and pip at it with no index, so a second run, and every build
within a run, needs no network. One flock makes xdist workers fill
it once; a marker naming what was downloaded, for which Pythons, says when it must be filled again.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

from nubis.build import RUNTIME_REQUIREMENTS, SUPPORTED_VERSIONS

#: What the tests install besides the runtime's requirements (test_build_env.py's commands; pip
#: goes into an environment whose build commands call pip; pg8000, pure Python, is the PostgreSQL
#: client of the function that logs in with Vault's dynamic credentials, test_workload_secrets.py).
PACKAGES = ("six", "iniconfig", "idna", "pip", "pg8000")
MARKER = "filled.json"


def fill(directory: Path) -> None:
    """Download the wheels into `directory` unless a previous run already did (network: once)."""
    directory.mkdir(parents=True, exist_ok=True)
    # wheels for every Python a function may ask for, without probing which this machine has
    wanted = {"requirements": [*RUNTIME_REQUIREMENTS, *PACKAGES], "pythons": list(SUPPORTED_VERSIONS)}
    marker = directory / MARKER
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if marker.is_file() and json.loads(marker.read_text()) == wanted:
            return
        for version in wanted["pythons"]:
            argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
            argv += ["--only-binary=:all:", "--python-version", version, "--dest", str(directory)]
            result = subprocess.run([*argv, *wanted["requirements"]], capture_output=True, text=True, timeout=300)
            if result.returncode != 0:
                raise RuntimeError(f"filling the test wheel cache {directory} failed:\n{result.stderr}")
        marker.write_text(json.dumps(wanted))
    finally:
        os.close(fd)


def online_environment() -> dict[str, str]:
    """This process's environment without `offline_environment`'s variables: for the few installs
    that must reach PyPI (a real client of the platform, installed by name and version)."""
    offline = offline_environment(Path())
    return {name: value for name, value in os.environ.items() if name not in offline}


def offline_environment(directory: Path) -> dict[str, str]:
    """Variables that make uv (the builder) and pip (build commands) install from `directory`, offline."""
    links = " ".join(filter(None, [str(directory), os.environ.get("PIP_FIND_LINKS", "")]))
    return {"UV_FIND_LINKS": str(directory), "UV_OFFLINE": "1", "PIP_FIND_LINKS": links, "PIP_NO_INDEX": "1"}
