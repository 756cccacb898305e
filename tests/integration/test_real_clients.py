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
    auth = AuthInfo(username="admin", password=token)
    code = '''
    import os

    def init_context(context):
        context.user_data.greeting = "hi"

    def handler(context, event):
        return {"greeting": context.user_data.greeting, "body": event.body.decode()}
    '''
    result = {}
    address = nuclio.deploy_code(code, dashboard_url=url, name="jupyter-code", project="jupyter",
                                 auth_info=auth)
    address = address[0] if isinstance(address, tuple) else address
    result["code_address"] = address
    result["code_answer"] = requests.post("http://" + address, data=b"ping", timeout=30).json()

    source = workdir + "/echo_fn.py"
    with open(source, "w") as f:
        f.write("def handler(context, event):\\n    return 'file says ' + event.body.decode()\\n")
    address = nuclio.deploy_file(source, dashboard_url=url, name="jupyter-file", project="jupyter",
                                 auth_info=auth)
    address = address[0] if isinstance(address, tuple) else address
    result["file_address"] = address
    result["file_answer"] = requests.post("http://" + address, data=b"pong", timeout=30).text
    nuclio.delete_func("jupyter-code", dashboard_url=url, auth_info=auth)
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


def test_nuclio_jupyter_deploys_code_and_files_and_invokes_them(
    server: RunningServer, client_python: Path, tmp_path: Path
) -> None:
    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT)
    assert server.token
    run = subprocess.run(
        [str(client_python), str(script), server.url, server.token, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}\nserver:\n{server.stderr_text()}"
    line = next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    assert result["code_answer"] == {"greeting": "hi", "body": "ping"}
    assert result["file_answer"] == "file says pong"
    with server.client() as api:
        functions = api.get("/api/functions", headers={"x-nuclio-project-name": "jupyter"}).json()
        assert set(functions) == {"jupyter-file"}  # jupyter-code was deleted by the client
        assert functions["jupyter-file"]["metadata"]["labels"]["nuclio.io/project-name"] == "jupyter"
