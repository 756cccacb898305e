"""Turn `spec.build.commands` (Dockerfile `RUN` lines in Nuclio) into steps that make sense locally.

Nuclio runs each line in an image layer as root. Locally there is no image: Python packages go into
the function's own environment, so `pip install` lines are handed to `uv pip install` (fast, and it
never touches the interpreter it was made from); system package managers would change the host, so
their lines are reported rather than run; anything else runs in a shell inside the environment.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Literal

StepKind = Literal["pip", "shell", "system"]

#: Nuclio's marker that splits commands into pre/post code-copy layers; meaningless without layers.
POST_COPY_MARKER = "@nuclio.postCopy"

SYSTEM_MANAGERS = frozenset({"apt-get", "apt", "yum", "apk", "dnf", "microdnf"})
SYSTEM_WARNING = "not applicable locally: install system packages on the host"

_PIP = re.compile(r"pip(3(\.\d+)?)?")
_PYTHON = re.compile(r"python(3(\.\d+)?)?")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_MENTIONS_PIP = re.compile(r"\bpip(3(\.\d+)?)?\b")

# pip options that uv rejects but that are harmless to drop: they tune pip's own behaviour.
_DROP_FLAGS = frozenset({"--user", "--no-warn-script-location", "--no-input", "--prefer-binary"})
_DROP_WITH_VALUE = frozenset({"--root-user-action", "--progress-bar", "--timeout", "--retries", "--upgrade-strategy"})
_RENAME = {"-I": "--reinstall", "--ignore-installed": "--reinstall"}


@dataclass(frozen=True)
class BuildStep:
    """One thing to do for a build command line.

    `pip_args` are the `uv pip install` arguments of a "pip" step; `shell` is the text a "shell"
    step runs with `/bin/sh -c`; `warning` explains a "system" step, which is never run.
    """

    kind: StepKind
    line: str
    pip_args: tuple[str, ...] = ()
    shell: str = ""
    warning: str | None = None

    @property
    def uses_pip(self) -> bool:
        """A shell step that calls pip needs pip inside the environment (uv venvs have none)."""
        return self.kind == "shell" and bool(_MENTIONS_PIP.search(self.shell))


def plan_build_commands(commands: list[str]) -> list[BuildStep]:
    """Classify every build command line, in order; blank, comment and marker lines give no step."""
    steps: list[BuildStep] = []
    for line in commands:
        steps.extend(classify_line(line))
    return steps


def classify_line(line: str) -> list[BuildStep]:
    """Classify one line; a `&&`/`;` chain mixing system and other commands gives one step of each."""
    text = line.strip()
    if not text or text.startswith("#") or text == POST_COPY_MARKER:
        return []
    segments, simple_chain = _split_chain(text)
    if not simple_chain:
        # Pipes, redirections, subshells: run as written unless a system manager is in it.
        if any(_command_word(_words(part)) in SYSTEM_MANAGERS for part in _pipeline_parts(text)):
            return [_system_step(text)]
        return [BuildStep("shell", text, shell=text)]
    is_system = [_command_word(_words(seg)) in SYSTEM_MANAGERS for seg in segments]
    system = [seg for seg, flag in zip(segments, is_system, strict=True) if flag]
    rest = [seg for seg, flag in zip(segments, is_system, strict=True) if not flag]
    steps = [_system_step(" && ".join(system))] if system else []
    if len(rest) == 1:
        steps.append(_single_step(rest[0]))
    elif rest:
        joined = " && ".join(rest)
        steps.append(BuildStep("shell", joined, shell=joined))
    return steps


def _single_step(segment: str) -> BuildStep:
    args = _pip_install_args(segment)
    if args is not None:
        return BuildStep("pip", segment, pip_args=translate_pip_args(args))
    return BuildStep("shell", segment, shell=segment)


def _system_step(text: str) -> BuildStep:
    return BuildStep("system", text, warning=f"build command {text!r} {SYSTEM_WARNING}")


def _pip_install_args(segment: str) -> list[str] | None:
    """The arguments after `install` when the segment is a plain pip install, else None."""
    if "$" in segment or "`" in segment:
        return None  # needs shell expansion
    words = _words(segment)
    if words and words[0] == "sudo":
        words = words[1:]
    if not words:
        return None
    if _PIP.fullmatch(words[0]) and words[1:2] == ["install"]:
        return words[2:]
    if _PYTHON.fullmatch(words[0]) and words[1:4] == ["-m", "pip", "install"]:
        return words[4:]
    return None


def translate_pip_args(args: list[str]) -> tuple[str, ...]:
    """Map pip options to uv's: drop pip-only tuning flags, rename the few that differ."""
    out: list[str] = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
            continue
        name = arg.split("=", 1)[0]
        if name in _DROP_WITH_VALUE:
            skip_value = "=" not in arg
        elif arg not in _DROP_FLAGS:
            out.append(_RENAME.get(arg, arg))
    return tuple(out)


def _words(segment: str) -> list[str]:
    try:
        return shlex.split(segment, comments=False)
    except ValueError:
        return segment.split()


def _command_word(words: list[str]) -> str:
    """The program a simple command runs, past `VAR=value` prefixes and `sudo`."""
    for word in words:
        if _ASSIGNMENT.match(word) or word == "sudo" or word.startswith("-"):
            continue
        return word.rsplit("/", 1)[-1]
    return ""


def _split_chain(text: str) -> tuple[list[str], bool]:
    """Split on top-level `&&` and `;` (quotes respected); False if other shell syntax appears."""
    segments: list[str] = []
    current: list[str] = []
    quote = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\" and quote == '"' and i + 1 < len(text):
                current.append(text[i : i + 2])
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        elif ch in "'\"":
            quote = ch
        elif text.startswith("&&", i) or ch in ";\n":
            segments.append("".join(current).strip())
            current = []
            i += 2 if ch == "&" else 1
            continue
        elif ch in "|&<>()`" or text.startswith("$(", i):
            return [text], False
        current.append(ch)
        i += 1
    segments.append("".join(current).strip())
    return [seg for seg in segments if seg], True


def _pipeline_parts(text: str) -> list[str]:
    """Rough split of a complex line at every operator, to spot system managers anywhere in it."""
    return [part for part in re.split(r"&&|\|\||[|;&()\n`]|\$\(", text) if part.strip()]
