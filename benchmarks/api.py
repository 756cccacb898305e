"""API benchmark: `GET /api/functions` with 1,000 functions stored, beside a bare Starlette route.

In one run, for SQLite and for PostgreSQL: the Nubis API (auth gate, store query, Nuclio objects,
JSON) and a bare Starlette app on uvicorn returning the same JSON document, both loaded by wrk
(pinned to core 0; servers on core 1). Target (issue #4): p50 of the API <= 2x the bare route.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

import httpx

from nubis.store import Store, default_state_url

from _harness import ROOT, VENV_BIN, free_port, pinned, start_server, stop, wrk

FUNCTIONS = 1000
BARE_APP = """
import json, sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
data = json.load(open(sys.argv[2]))
async def functions(request):
    return JSONResponse(data)
app = Starlette(routes=[Route("/api/functions", functions)])
print("bare ready", flush=True)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", http="httptools", loop="uvloop")
"""


async def seed(url: str) -> None:
    store = await Store.open(url)
    try:
        await store.ensure_default_project()
        source = base64.b64encode((ROOT / "examples" / "hello" / "main.py").read_bytes()).decode()
        for i in range(FUNCTIONS):
            name = f"fn-{i:04d}"
            config = {
                "metadata": {"name": name, "labels": {"team": "bench"}},
                "spec": {
                    "runtime": "python",
                    "handler": "main:handler",
                    "build": {"functionSourceCode": source},
                    "triggers": {"http": {"kind": "http", "numWorkers": 1}},
                },
            }
            record = await store.create_function(name, "default", "nuclio", config)
            await store.set_function_status(
                name,
                {
                    "state": "ready",
                    "httpPort": 31000 + i,
                    "internalInvocationUrls": [f"127.0.0.1:{31000 + i}"],
                    "externalInvocationUrls": [f"127.0.0.1:{31000 + i}"],
                },
                deployed_generation=record.generation,
                only_if_generation=record.generation,
            )
    finally:
        await store.close()


async def uncached(state_url: str, api_port: int, bare_port: int, samples: int = 20) -> tuple[float, float]:
    """Median latency of sequential GETs when every request finds the cache stale (a write first)."""
    import time

    store = await Store.open(state_url, migrate=False)
    api_times, bare_times = [], []
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            for i in range(samples):
                record = await store.get_function("fn-0000")
                assert record is not None
                await store.set_function_status("fn-0000", dict(record.status, tick=i))
                start = time.perf_counter()
                (await client.get(f"http://127.0.0.1:{api_port}/api/functions")).raise_for_status()
                api_times.append((time.perf_counter() - start) * 1000)
                start = time.perf_counter()
                (await client.get(f"http://127.0.0.1:{bare_port}/api/functions")).raise_for_status()
                bare_times.append((time.perf_counter() - start) * 1000)
    finally:
        await store.close()
    return statistics.median(api_times), statistics.median(bare_times)


def postgres_url() -> tuple[str, str]:
    import psycopg

    name = f"nubis_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", name


def drop_postgres(name: str) -> None:
    import psycopg

    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def measure(backend: str, state_url: str, data_dir: Path, rounds: int, seconds: int) -> tuple[float, float]:
    asyncio.run(seed(state_url))
    api_port, bare_port = free_port(), free_port()
    api = start_server(
        pinned(
            1,
            [
                str(VENV_BIN / "nubis"),
                "server",
                "--port",
                str(api_port),
                "--insecure-local",
                "--data-dir",
                str(data_dir),
                "--state-url",
                state_url,
                "--log-level",
                "warn",
            ],
        ),
        "nubis server ready",
    )
    try:
        document = httpx.get(f"http://127.0.0.1:{api_port}/api/functions", timeout=30).json()
        assert len(document) == FUNCTIONS, len(document)
        doc_file = data_dir / "functions.json"
        doc_file.write_text(json.dumps(document))
        bare = start_server(pinned(1, [sys.executable, "-c", BARE_APP, str(bare_port), str(doc_file)]), "bare ready")
        try:
            ratios, api_p50s, bare_p50s, api_p99s, bare_p99s = [], [], [], [], []
            wrk(f"http://127.0.0.1:{api_port}/api/functions", 4, 1)
            wrk(f"http://127.0.0.1:{bare_port}/api/functions", 4, 1)
            for round_no in range(1, rounds + 1):
                a = wrk(f"http://127.0.0.1:{api_port}/api/functions", 4, seconds)
                b = wrk(f"http://127.0.0.1:{bare_port}/api/functions", 4, seconds)
                ratios.append(a.p50_ms / b.p50_ms)
                api_p50s.append(a.p50_ms), bare_p50s.append(b.p50_ms)
                api_p99s.append(a.p99_ms), bare_p99s.append(b.p99_ms)
                print(
                    f"{backend} round {round_no}: api p50 {a.p50_ms:.2f} ms p99 {a.p99_ms:.2f} ms "
                    f"({a.rps:.0f} req/s) | bare p50 {b.p50_ms:.2f} ms p99 {b.p99_ms:.2f} ms ({b.rps:.0f} req/s)",
                    flush=True,
                )
            api_cold, bare_cold = asyncio.run(uncached(state_url, api_port, bare_port))
        finally:
            stop(bare)
    finally:
        stop(api)
    print(
        f"{backend} uncached (a function changes before every request, so the list is rebuilt from the "
        f"store): api {api_cold:.1f} ms vs bare {bare_cold:.1f} ms, ratio {api_cold / bare_cold:.2f}"
    )
    print(
        f"{backend}: api p50 {statistics.median(api_p50s):.2f} ms, p99 {statistics.median(api_p99s):.2f} ms; "
        f"bare p50 {statistics.median(bare_p50s):.2f} ms, p99 {statistics.median(bare_p99s):.2f} ms; "
        f"ratio p50 api/bare {statistics.median(ratios):.2f} (target <= 2)"
    )
    return statistics.median(ratios), statistics.median(api_p50s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_dir = Path(tmp) / "sqlite"
        sqlite_dir.mkdir()
        measure("sqlite", default_state_url(sqlite_dir), sqlite_dir, args.rounds, args.seconds)
        pg_url, pg_name = postgres_url()
        try:
            pg_dir = Path(tmp) / "postgres"
            pg_dir.mkdir()
            measure("postgresql", pg_url, pg_dir, args.rounds, args.seconds)
        finally:
            drop_postgres(pg_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
