"""The Python runtime, as seen from the platform side.

The code that runs *inside* a worker lives in the `nubis_worker` package beside this file. It is
put on the function interpreter's `PYTHONPATH` rather than installed, because it must run in the
function's own interpreter (Python 3.9 to 3.13) with nothing but the standard library, msgpack and
nuclio-sdk.
"""

from __future__ import annotations

from pathlib import Path

#: What every Python function environment gets on top of its own requirements. nuclio-sdk 0.6.3 is
#: the first release with the streaming helpers (generators as response bodies); msgpack 1.1.0
#: ships wheels for CPython 3.9 to 3.13.
RUNTIME_REQUIREMENTS: tuple[str, ...] = ("nuclio-sdk==0.6.3", "msgpack==1.1.0")

#: Oldest and newest Python a function may ask for with `runtime: python:3.X`.
SUPPORTED_VERSIONS: tuple[str, ...] = ("3.9", "3.10", "3.11", "3.12", "3.13")

#: Directory to put first on a function interpreter's PYTHONPATH so `import nubis_worker` works.
WORKER_PATH: Path = Path(__file__).resolve().parent
