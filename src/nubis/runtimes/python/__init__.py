"""The Python runtime, as seen from the platform side (`runtime.py`: build and worker command).

The code that runs *inside* a worker lives in the `nubis_worker` package beside this file. It is
put on the function interpreter's `PYTHONPATH` rather than installed, because it must run in the
function's own interpreter (Python 3.9 to 3.13) with nothing but the standard library, msgpack and
nuclio-sdk (`nubis.build.cache.RUNTIME_REQUIREMENTS`, installed into every environment).
"""

from __future__ import annotations

from pathlib import Path

#: Directory to put first on a function interpreter's PYTHONPATH so `import nubis_worker` works.
WORKER_PATH: Path = Path(__file__).resolve().parent
