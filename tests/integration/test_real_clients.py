"""Nuclio's own Python client (nuclio-jupyter, from PyPI) deploys to and invokes a real `nubis server`.

The client runs in a separate virtual environment, as a user's notebook would, with its own
dependencies; it authenticates with basic auth, the API token as password.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
from harness import skip_or_fail
from server_harness import RunningServer

import wheels
from nubis.build.pythons import find_python

NUCLIO_JUPYTER = "nuclio-jupyter==0.13.2"

CLIENT_SCRIPT = textwrap.dedent(
    """
    import json, sys, requests
    import nuclio
    from nuclio.auth import AuthInfo

    url, token, workdir = sys.argv[1], sys.argv[2], sys.argv[3]
    prefix, project = (sys.argv[4], sys.argv[5]) if len(sys.argv) > 5 else ("jupyter", "jupyter")
    auth = AuthInfo(username="admin", password=token)
    code = '''
    import os

    def init_context(context):
        context.user_data.greeting = "hi"

    def handler(context, event):
        return {"greeting": context.user_data.greeting, "body": event.body.decode()}
    '''
    result = {}
    address = nuclio.deploy_code(code, dashboard_url=url, name=prefix + "-code", project=project,
                                 auth_info=auth)
    address = address[0] if isinstance(address, tuple) else address
    result["code_address"] = address
    result["code_answer"] = requests.post("http://" + address, data=b"ping", timeout=30).json()

    source = workdir + "/echo_fn.py"
    with open(source, "w") as f:
        f.write("def handler(context, event):\\n    return 'file says ' + event.body.decode()\\n")
    address = nuclio.deploy_file(source, dashboard_url=url, name=prefix + "-file", project=project,
                                 auth_info=auth)
    address = address[0] if isinstance(address, tuple) else address
    result["file_address"] = address
    result["file_answer"] = requests.post("http://" + address, data=b"pong", timeout=30).text
    nuclio.delete_func(prefix + "-code", dashboard_url=url, auth_info=auth)
    print("RESULT " + json.dumps(result))
    """
)


@pytest.fixture(scope="session")
def client_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with nuclio-jupyter from PyPI (built with uv; cached by uv)."""
    from uv import find_uv_bin

    venv = tmp_path_factory.mktemp("nuclio-jupyter") / "venv"
    python = find_python("3.11")
    uv = find_uv_bin()
    created = subprocess.run([uv, "venv", "--python", str(python.path), str(venv)], capture_output=True, text=True)
    if created.returncode != 0:
        skip_or_fail(f"cannot create a venv for nuclio-jupyter: {created.stderr}")
    installed = subprocess.run(
        [uv, "pip", "install", "--python", str(venv / "bin" / "python"), NUCLIO_JUPYTER, "requests"],
        capture_output=True,
        text=True,
        timeout=600,
        env=wheels.online_environment(),  # the suite's wheel cache holds only what functions install
    )
    if installed.returncode != 0:
        skip_or_fail(f"cannot install {NUCLIO_JUPYTER} from PyPI: {installed.stderr[-2000:]}")
    return venv / "bin" / "python"


def run_client(server: RunningServer, client_python: Path, tmp_path: Path, token: str, *names: str) -> dict:  # type: ignore[type-arg]
    """Run CLIENT_SCRIPT (nuclio-jupyter) against the server; its RESULT line."""
    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT)
    run = subprocess.run(
        [str(client_python), str(script), server.url, token, str(tmp_path), *names],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}\nserver:\n{server.stderr_text()}"
    line = next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])  # type: ignore[no-any-return]


def test_nuclio_jupyter_deploys_into_a_tenant_with_a_tenant_token(
    server: RunningServer, client_python: Path, tmp_path: Path
) -> None:
    """A notebook with a token of one tenant: nuclio-jupyter sends no namespace, and its project
    and functions land in that tenant, invisible to another tenant's token."""
    with server.client() as admin:
        for tenant in ("notebook-team", "other-team"):
            made = admin.post("/api/tenants", json={"name": tenant})
            assert made.status_code in (201, 409), made.text
        tokens = {}
        for tenant in ("notebook-team", "other-team"):
            made = admin.post("/api/tokens", json={"name": "nb", "tenant": tenant, "role": "developer"})
            assert made.status_code == 201, made.text
            tokens[tenant] = made.json()["token"]
    result = run_client(server, client_python, tmp_path, tokens["notebook-team"], "nb", "nb-project")
    assert result["code_answer"] == {"greeting": "hi", "body": "ping"}
    assert result["file_answer"] == "file says pong"
    with server.client(token=tokens["notebook-team"]) as notebook, server.client(token=tokens["other-team"]) as other:
        functions = notebook.get("/api/functions").json()
        assert set(functions) == {"nb-file"}
        assert functions["nb-file"]["metadata"]["namespace"] == "notebook-team"
        assert notebook.get("/api/projects").json()["nb-project"]["metadata"]["namespace"] == "notebook-team"
        assert other.get("/api/functions").json() == {} and other.get("/api/functions/nb-file").status_code == 404
        assert notebook.delete("/api/functions/nb-file").status_code == 204


def test_nuclio_jupyter_deploys_code_and_files_and_invokes_them(
    server: RunningServer, client_python: Path, tmp_path: Path
) -> None:
    assert server.token
    result = run_client(server, client_python, tmp_path, server.token)
    assert result["code_answer"] == {"greeting": "hi", "body": "ping"}
    assert result["file_answer"] == "file says pong"
    with server.client() as api:
        functions = api.get("/api/functions", headers={"x-nuclio-project-name": "jupyter"}).json()
        assert set(functions) == {"jupyter-file"}  # jupyter-code was deleted by the client
        assert functions["jupyter-file"]["metadata"]["labels"]["nuclio.io/project-name"] == "jupyter"
