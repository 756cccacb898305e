"""Function templates offered by `GET /api/function_templates`: real, deployable functions.

Each template is a source file beside this module; its first docstring line is the description.
"""

from __future__ import annotations

import ast
import base64
from importlib import resources
from typing import Any

#: template name -> (source file, handler, extra spec)
TEMPLATES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "hello-world": ("hello_world.py", "hello_world:handler", {}),
    "json-echo": ("json_echo.py", "json_echo:handler", {}),
    "word-count": ("word_count.py", "word_count:handler", {}),
    "token-stream": ("token_stream.py", "token_stream:handler", {}),
}


def _source(file_name: str) -> str:
    return resources.files(__package__).joinpath("sources", file_name).read_text(encoding="utf-8")


def render(name: str) -> dict[str, Any]:
    """The Nuclio `rendered` form: a ready-to-deploy function configuration."""
    file_name, handler, extra = TEMPLATES[name]
    source = _source(file_name)
    description = (ast.get_docstring(ast.parse(source)) or name).splitlines()[0]
    spec: dict[str, Any] = {
        "description": description,
        "runtime": "python",
        "handler": handler,
        "build": {"functionSourceCode": base64.b64encode(source.encode()).decode()},
        **extra,
    }
    return {"metadata": {"name": name}, "spec": spec}


def list_templates(contains: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name in TEMPLATES:
        rendered = render(name)
        text = name + " " + rendered["spec"]["description"]
        if contains and contains.lower() not in text.lower():
            continue
        result[name] = {"rendered": rendered}
    return result
