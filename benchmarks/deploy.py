"""Deploy benchmark: from `POST/PUT /api/functions` to the first successful invoke.

(a) a new function whose dependencies are cached, (b) a code-only change of a running function,
(c) a first build with one pip dependency (its own environment; uv's download cache may be warm).
Target (issue #4): (b) <= 1.5 s. Nuclio rebuilds a container image for each of these (minutes).
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from _harness import ROOT, VENV_BIN, free_port, start_server, stop

SOURCE = (ROOT / "examples" / "hello" / "main.py").read_text()


def body(name: str, marker: str, commands: list[str] | None = None) -> dict[str, object]:
    source = SOURCE.replace("(from Nubis)", f"(from Nubis {marker})")
    spec: dict[str, object] = {
        "runtime": "python",
        "handler": "main:handler",
        "build": {"functionSourceCode": base64.b64encode(source.encode()).decode(), "commands": commands or []},
    }
    return {"metadata": {"name": name}, "spec": spec}


def until_served(api: httpx.Client, name: str, marker: str, start: float, timeout: float = 600) -> float:
    """Seconds from `start` until the function answers with `marker` in its body."""
    port = None
    while time.monotonic() - start < timeout:
        status = api.get(f"/api/functions/{name}").json()["status"]
        if status.get("state") == "error":
            raise RuntimeError(f"{name} failed: {status.get('message')}")
        port = status.get("httpPort") if status.get("state") == "ready" else None
        if port:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
                if marker in answer.text:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
        time.sleep(0.01)
    raise RuntimeError(f"{name} not served within {timeout} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = start_server(
            [
                str(VENV_BIN / "nubis"),
                "server",
                "--port",
                str(port),
                "--insecure-local",
                "--data-dir",
                str(Path(tmp)),
                "--log-level",
                "warn",
            ],
            "nubis server ready",
        )
        try:
            api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
            # warm the shared environment (nuclio-sdk + msgpack) once, as a running platform has it
            api.post("/api/functions", json=body("warm", "warm"))
            until_served(api, "warm", "warm", time.monotonic())
            new, change = [], []
            for i in range(args.repeats):
                name = f"fn-{i}"
                start = time.monotonic()
                assert api.post("/api/functions", json=body(name, f"v1-{i}")).status_code == 202
                new.append(until_served(api, name, f"v1-{i}", start))
                start = time.monotonic()
                assert api.put(f"/api/functions/{name}", json=body(name, f"v2-{i}")).status_code == 202
                change.append(until_served(api, name, f"v2-{i}", start))
                print(
                    f"round {i + 1}: (a) new, cached deps {new[-1]:.3f} s   (b) code-only change {change[-1]:.3f} s",
                    flush=True,
                )
            package = "six"
            name = "with-dep"
            start = time.monotonic()
            marker = uuid.uuid4().hex[:8]
            api.post("/api/functions", json=body(name, marker, [f"pip install {package}", f"echo {marker}"]))
            first_build = until_served(api, name, marker, start)
        finally:
            stop(server)
    print(f"\n(a) new function, dependencies cached: median {statistics.median(new):.3f} s (n={len(new)})")
    print(f"(b) code-only change of a running function: median {statistics.median(change):.3f} s (target <= 1.5 s)")
    print(f"(c) first build with one pip dependency ({package}): {first_build:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
