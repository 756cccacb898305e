"""Server options against real components: PostgreSQL state, HTTPS, and what the local platform
reports it cannot honour yet (valueFrom, volumes)."""

from __future__ import annotations

import base64
import ssl
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from harness import skip_or_fail
from server_harness import RunningServer, wait_state

SOURCE = b"def handler(context, event):\n    return 'ok'\n"


def inline(name: str, **spec: object) -> dict[str, object]:
    return {
        "metadata": {"name": name},
        "spec": {
            "runtime": "python",
            "handler": "main:handler",
            "build": {"functionSourceCode": base64.b64encode(SOURCE).decode()},
            **spec,
        },
    }


@pytest.fixture
def postgres_url() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    name = f"nubis_server_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        skip_or_fail(f"PostgreSQL on 127.0.0.1:5432 is not reachable: {exc}")
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_server_on_postgresql_deploys_and_survives_a_restart(
    tmp_path: Path, nubis_data_dir: Path, free_port: Callable[[], int], postgres_url: str
) -> None:
    server = RunningServer(
        tmp_path / "pg", free_port(), "--state-url", postgres_url, env_cache=nubis_data_dir / "envs"
    ).wait_ready()
    try:
        with server.client() as api:
            assert api.post("/api/functions", json=inline("on-pg")).status_code == 202
            assert wait_state(api, "on-pg", {"ready", "error"})["status"]["state"] == "ready"
    finally:
        server.stop()
    again = RunningServer(
        tmp_path / "pg", free_port(), "--state-url", postgres_url, env_cache=nubis_data_dir / "envs"
    ).wait_ready()
    try:
        with again.client() as api:
            assert wait_state(api, "on-pg", {"ready", "error"})["status"]["state"] == "ready"
    finally:
        again.stop()


def test_https_with_a_certificate_and_key(tmp_path: Path, free_port: Callable[[], int]) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        capture_output=True,
    )
    if made.returncode != 0:
        skip_or_fail(f"openssl could not make a test certificate: {made.stderr.decode()}")
    port = free_port()
    server = RunningServer(tmp_path / "tls", port, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        server.url = f"https://127.0.0.1:{port}"
        server.wait_ready()
        response = httpx.get(
            f"{server.url}/api/versions",
            verify=ssl.create_default_context(cafile=str(cert)),
            timeout=10,
            headers={"Authorization": f"Bearer {server.token}"},
        )
        assert response.status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/api/versions", timeout=5).raise_for_status()
    finally:
        server.stop()


def test_what_the_local_platform_cannot_honour_is_reported(server: RunningServer) -> None:
    body = inline(
        "with-refs",
        env=[
            {"name": "PLAIN", "value": "1"},
            {"name": "CONFIG", "valueFrom": {"configMapKeyRef": {"name": "db", "key": "host"}}},
        ],
        volumes=[
            {
                "volume": {"name": "data", "hostPath": {"path": "/tmp"}},
                "volumeMount": {"name": "data", "mountPath": "/data"},
            }
        ],
    )
    with server.client() as api:
        assert api.post("/api/functions", json=body).status_code == 202
        ready = wait_state(api, "with-refs", {"ready", "error"})
        assert ready["status"]["state"] == "ready"
        messages = " ".join(r["message"] for r in ready["status"]["logs"])
        assert "CONFIG uses valueFrom (configMapKeyRef)" in messages
        assert "spec.volumes other than secret volumes" in messages and "data" in messages
        # a secret the function references must exist at deploy (docs/secrets.md)
        missing = inline(
            "with-missing-secret", env=[{"name": "S", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}]
        )
        refused = api.post("/api/functions", json=missing)
        assert refused.status_code == 400 and "nope" in refused.json()["error"], refused.text
        # stored as given
        assert ready["spec"]["env"][1]["valueFrom"] == {"configMapKeyRef": {"name": "db", "key": "host"}}
        assert ready["spec"]["volumes"][0]["volumeMount"]["mountPath"] == "/data"
