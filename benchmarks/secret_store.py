"""Secret store benchmark: put and read latency of the local encrypted store and of Vault (OpenBao).

In one run, in-process (the backends as the control plane calls them, no HTTP API in between): the
local store in a temporary data dir (AES-256-GCM, one fsynced file per secret) and the Vault backend
against an OpenBao dev server started here on a free port (KV version 2 over loopback HTTP). Each
secret has KEYS keys of VALUE_BYTES each; p50/p90/p99 in milliseconds over ROUNDS operations.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

from nubis.secrets.base import SecretBackend
from nubis.secrets.local import LocalSecretStore
from nubis.secrets.vault import VaultOptions, VaultSecretStore

from _harness import VENV_BIN, free_port

KEYS = 4
VALUE_BYTES = 64


def percentiles(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    q = statistics.quantiles(ms, n=100)
    return f"p50 {q[49]:.2f} ms, p90 {q[89]:.2f} ms, p99 {q[98]:.2f} ms"


async def timed(rounds: int, operation: Callable[[int], Awaitable[object]]) -> list[float]:
    samples = []
    for i in range(rounds):
        start = time.perf_counter()
        await operation(i)
        samples.append(time.perf_counter() - start)
    return samples


async def measure(name: str, backend: SecretBackend, rounds: int) -> None:
    values = {f"key{k}": secrets.token_hex(VALUE_BYTES // 2) for k in range(KEYS)}
    await timed(20, lambda i: backend.put("bench", "web", f"warm-{i}", values))  # warm up
    puts = await timed(rounds, lambda i: backend.put("bench", "web", f"s-{i % 50}", values))
    reads = await timed(rounds, lambda i: backend.read("bench", "web", f"s-{i % 50}"))
    print(f"{name:6} put:  {percentiles(puts)}")
    print(f"{name:6} read: {percentiles(reads)}")
    await backend.close()


def start_openbao(directory: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    port, token = free_port(), "bench-" + secrets.token_hex(8)
    process = subprocess.Popen(
        [
            str(VENV_BIN / "bao"),
            "server",
            "-dev",
            f"-dev-root-token-id={token}",
            f"-dev-listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(directory)},
    )
    addr = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{addr}/v1/sys/health", timeout=1):
                return process, addr, token
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("openbao did not start") from None
            time.sleep(0.05)


async def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        await measure("local", LocalSecretStore.open(Path(directory)), rounds)
        process, addr, token = start_openbao(Path(directory))
        try:
            vault = VaultSecretStore(VaultOptions(addr=addr, token=token))
            await vault.start()
            await measure("vault", vault, rounds)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(15)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=500)
    asyncio.run(main(parser.parse_args().rounds))
