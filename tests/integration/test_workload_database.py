"""Dynamic PostgreSQL credentials through a real `nubis server`, OpenBao and PostgreSQL.

A function asks for a database role (`nubis.io/vault-database-role`); its replica logs in to
OpenBao with its workload identity (the role and policy the server wrote at deploy), reads
`database/creds/<role>` and hands the credentials to its workers, which connect with pg8000. After
the function is deleted (its replica stops gracefully and revokes the lease) the login role is
gone; a SIGKILLed replica's credentials end with their TTL.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import wait_until
from openbao_node import OpenBaoNode
from password_postgres import can_log_in, database_engine, password_postgres, role_exists
from postgres_node import PostgresNode
from server_harness import RunningServer, inline_function, replica_pid, started_server, wait_state

FUNCTION_SOURCE = b"""
import os

import pg8000.native


def handler(context, event):
    connection = pg8000.native.Connection(
        os.environ["NUBIS_DB_USERNAME"],
        password=os.environ["NUBIS_DB_PASSWORD"],
        host="127.0.0.1",
        port=int(os.environ["PG_PORT"]),
        database="postgres",
    )
    try:
        return connection.run("SELECT current_user")[0][0]
    finally:
        connection.close()
"""
TENANT = "nuclio"
#: mounts of this module's own in the session's OpenBao
JWT_MOUNT, DB_MOUNT = "jwt-db", "database-db"


@pytest.fixture(scope="module")
def vault(openbao: OpenBaoNode) -> OpenBaoNode:
    """The session's OpenBao; this module's mounts are its own (MOUNTS)."""
    return openbao


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory, free_port: Callable[[], int]) -> Iterator[PostgresNode]:
    yield from password_postgres(tmp_path_factory.mktemp("pg"), free_port())


@pytest.fixture(scope="module")
def database_roles(vault: OpenBaoNode, postgres: PostgresNode) -> None:
    """`app` leases live an hour, `brief` ones 4 s: what a killed replica leaves ends that soon."""
    database_engine(vault, postgres, DB_MOUNT, {"app": ("1h", "2h"), "brief": ("4s", "2h")})


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    nubis_data_dir: Path,
    free_port: Callable[[], int],
    vault: OpenBaoNode,
    database_roles: None,
) -> Iterator[RunningServer]:
    directory = tmp_path_factory.mktemp("db-server")
    token_file = directory / "vault-token"
    token_file.write_text(vault.root_token)
    token_file.chmod(0o600)
    yield from started_server(
        directory / "data",
        free_port(),
        "--vault-addr",
        vault.addr,
        "--vault-token-file",
        str(token_file),
        "--vault-jwt-mount",
        JWT_MOUNT,
        "--vault-database-mount",
        DB_MOUNT,
        "--vault-database-role",
        f"{TENANT}=app",
        "--vault-database-role",
        f"{TENANT}/default=brief",
        env_cache=nubis_data_dir / "envs",
    )


def deploy(server: RunningServer, name: str, role: str, postgres: PostgresNode) -> dict[str, Any]:
    body: dict[str, Any] = inline_function(
        name, FUNCTION_SOURCE, env=[{"name": "PG_PORT", "value": str(postgres.port)}]
    )
    body["spec"]["build"]["commands"] = ["pip install pg8000"]
    body["metadata"]["annotations"] = {"nubis.io/vault-database-role": role}
    with server.client() as api:
        answer = api.post("/api/functions", json=body)
        assert answer.status_code in (201, 202), answer.text
        return wait_state(api, name, {"ready", "error"}, timeout=180)


def deploy_and_connect(server: RunningServer, name: str, role: str, postgres: PostgresNode) -> str:
    """Deploy the function with database `role`; the user its worker connected as."""
    status = deploy(server, name, role, postgres)
    assert status["status"]["state"] == "ready", status["status"]
    answer = invoke(server, name)
    assert answer.status_code == 200, answer.text
    return answer.text.strip()


def function_logs(server: RunningServer, name: str) -> str:
    with server.client() as api:
        return api.get(f"/api/functions/{name}/logs").text


def invoke(server: RunningServer, name: str) -> httpx.Response:
    with server.client() as api:
        return api.post("/api/function_invocations", headers={"x-nuclio-function-name": name})


def test_a_function_connects_with_credentials_that_end_with_it(server: RunningServer, postgres: PostgresNode) -> None:
    username = deploy_and_connect(server, "db-reader", "app", postgres)
    assert re.match(r"^v-jwt-.*-app-", username), username
    assert role_exists(postgres, username)
    match = re.search(
        r"database credentials of role app \(user \S+, lease \S+ s\) in ([\d.]+) ms", function_logs(server, "db-reader")
    )
    assert match, "the replica logs how long the credentials took"
    print(f"\nreplica start: database credentials in {match[1]} ms")
    with server.client() as api:
        assert api.delete("/api/functions/db-reader").status_code in (200, 202, 204)
    wait_until(lambda: not role_exists(postgres, username), 30, "the replica's database role outlived it")
    assert not can_log_in(postgres, username, "any-password")


def test_a_killed_replicas_credentials_expire(server: RunningServer, postgres: PostgresNode) -> None:
    username = deploy_and_connect(server, "db-brief", "brief", postgres)
    pid = replica_pid(server, "db-brief")
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: not role_exists(postgres, username), 30, "a killed replica's credentials did not expire")
    print(f"\nkilled replica's credentials gone after {time.monotonic() - killed:.1f} s (lease TTL 4 s)")
    # the agent started a new replica, with credentials of its own
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        again = invoke(server, "db-brief")
        if again.status_code == 200:
            assert again.text.strip() != username
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"the restarted replica did not answer: {again.status_code} {again.text}")
    with server.client() as api:
        api.delete("/api/functions/db-brief")


def test_a_role_the_tenant_was_not_given_fails_the_deploy(server: RunningServer, postgres: PostgresNode) -> None:
    status = deploy(server, "db-greedy", "admin-role", postgres)
    assert status["status"]["state"] == "error"
    assert "nubis.io/vault-database-role" in status["status"]["message"]
    assert "not allowed" in status["status"]["message"]
