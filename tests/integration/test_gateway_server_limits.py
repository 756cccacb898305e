"""The gateway limits of `nubis server` (--gateway-rate-limit and the others) reach the gateway it
starts: past the burst a function is answered 429 through it, and a running gateway started with
other limits is replaced, not adopted."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from server_harness import RunningServer, inline_function, wait_state

SOURCE = b"""
def handler(context, event):
    return "hello"
"""


def _wait_route(url: str) -> None:
    """Until the gateway read the function's route from the store (it looks every 0.5 s)."""
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/hello", timeout=30).status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.05)


def test_server_gateway_limits_answer_429_and_other_limits_replace_the_gateway(
    tmp_path: Path, nubis_data_dir: Path, free_port: Callable[[], int]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    limited = ["--gateway-port", str(port), "--gateway-rate-limit", "1", "--gateway-rate-burst", "2"]
    servers: list[RunningServer] = []

    def start(*args: str) -> RunningServer:
        servers.append(RunningServer(tmp_path / "data", free_port(), *args, env_cache=nubis_data_dir / "envs"))
        return servers[-1].wait_ready()

    try:
        first = start(*limited, "--gateway-max-body-bytes", "1000")
        with first.client() as api:
            assert api.post("/api/functions", json=inline_function("hello", SOURCE)).status_code in (200, 201, 202)
            status = wait_state(api, "hello", {"ready", "error"})["status"]
            assert status["state"] == "ready", status
        _wait_route(url)  # its last request took one of the two tokens
        with httpx.Client(base_url=url, timeout=30) as client:
            statuses = []
            while 429 not in statuses and len(statuses) < 10:
                answer = client.get("/hello")
                statuses.append(answer.status_code)
            assert statuses[0] == 200 and statuses[-1] == 429, statuses
            assert int(answer.headers["retry-after"]) == 1  # one token a second
            # 413 is checked before the rate limit: the body limit came through too
            assert client.post("/hello", content=b"x" * 1001).status_code == 413
        pid = first.gateway_pid()
        first.kill()  # the gateway keeps serving; the next server with the same limits adopts it
        second = start(*limited, "--gateway-max-body-bytes", "1000")
        assert second.gateway_pid() == pid
        second.kill()
        third = start(*limited)  # the default body limit: this gateway goes, another starts
        assert third.gateway_pid() != pid
        state = json.loads((tmp_path / "data" / "gateway" / "gateway.json").read_text())
        assert (state["rate_limit"], state["rate_burst"], state["max_body_bytes"]) == (1.0, 2, 32 * 1024 * 1024)
    finally:
        for server in reversed(servers):
            server.stop()
