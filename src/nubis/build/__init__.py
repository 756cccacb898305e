"""Builder for Python function environments: the local stand-in for Nuclio's image build.

`find_python` picks the interpreter for `runtime: python:3.X`; `build_environment` makes (or reuses
from its cache) a uv venv with the runtime requirements, requirements.txt and `spec.build.commands`.
"""

from nubis.build.cache import FORMAT_VERSION, environment_key
from nubis.build.commands import BuildStep, plan_build_commands
from nubis.build.environment import Environment, build_environment
from nubis.build.pythons import PythonInterpreter, clear_python_cache, default_python, find_python

__all__ = [
    "FORMAT_VERSION",
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
