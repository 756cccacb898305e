"""The tools runtimes build with: the local stand-in for Nuclio's image build.

`sources` makes a function's code into a directory (inline source, a server path); `find_python`
picks the interpreter for `runtime: python:3.X`; `build_environment` makes (or reuses from its
cache) a uv venv with the runtime requirements, requirements.txt and `spec.build.commands`. Which
runtime uses what is the runtime's own business (`nubis.runtimes.python.runtime`).
"""

from nubis.build.cache import FORMAT_VERSION, RUNTIME_REQUIREMENTS, environment_key
from nubis.build.commands import BuildStep, plan_build_commands
from nubis.build.environment import Environment, build_environment
from nubis.build.pythons import (
    SUPPORTED_VERSIONS,
    PythonInterpreter,
    clear_python_cache,
    default_python,
    find_python,
)

__all__ = [
    "FORMAT_VERSION",
    "RUNTIME_REQUIREMENTS",
    "SUPPORTED_VERSIONS",
    "BuildStep",
    "Environment",
    "PythonInterpreter",
    "build_environment",
    "clear_python_cache",
    "default_python",
    "environment_key",
    "find_python",
    "plan_build_commands",
]
