"""Where a function's code comes from, made into a directory the builder and workers can use.

Two of the code entries (NUCLIO.md §1.5) end here: inline base64 source
(`spec.build.functionSourceCode`) and a directory path on the server's machine
(`spec.build.path`, which an uploaded archive also becomes once the control plane unpacked it).
A platform's builder calls these to give each deploy its own directory per generation, so a
redeploy never changes the code under running replicas.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from nubis.errors import SpecError


def decode_source(encoded: str) -> str:
    """`functionSourceCode` is base64 of the file; CRLF becomes LF as in Nuclio."""
    try:
        raw = base64.b64decode(encoded, validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise SpecError(
            "is not valid base64-encoded UTF-8 source",
            field="spec.build.functionSourceCode",
            expected="the source file's text, base64-encoded",
            found=f"{encoded[:32]}…" if len(encoded) > 32 else encoded,
        ) from exc
    return text.replace("\r\n", "\n")


def module_file_name(handler: str) -> str:
    """Nuclio writes inline source to `<module>.py` (module names may contain '-')."""
    module = handler.partition(":")[0] or "main"
    return module.split(".")[0] + ".py"


def write_inline_source(target: Path, encoded: str, handler: str) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    (target / module_file_name(handler)).write_text(decode_source(encoded), encoding="utf-8")
    return target


def copy_directory(source: Path, target: Path, allowed_roots: Sequence[Path]) -> Path:
    """A snapshot of a directory (or .py file) on the server's machine (`spec.build.path`).

    Only paths inside `allowed_roots` are copied (the archive uploads, and `--build-path-root`
    directories), judged after resolving symbolic links, so an API user cannot have the server
    copy `/etc` or a link to it into a function; links inside the tree must stay inside it.
    """
    resolved = allowed_build_path(source, allowed_roots)
    if resolved.is_dir():
        _refuse_links_out_of(resolved, source)
    if target.exists():
        shutil.rmtree(target)
    if resolved.is_file():
        target.mkdir(parents=True)
        shutil.copy2(resolved, target / source.name)
    else:
        shutil.copytree(resolved, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", ".venv"))
    return target


def allowed_build_path(source: Path, allowed_roots: Sequence[Path]) -> Path:
    """`source` with its links resolved, when it exists inside one of `allowed_roots`.

    Raises `SpecError` naming `spec.build.path`, the path and the server option to change. Cheap
    enough to call when a create/update arrives, so it can be refused with a 400 up front.
    """
    resolved = source.resolve()
    roots = [root.resolve() for root in allowed_roots]
    if not any(resolved.is_relative_to(root) for root in roots):
        shown = str(source) if resolved == source else f"{source} (resolves to {resolved})"
        raise SpecError(
            "is outside the directories the server copies code from",
            field="spec.build.path",
            expected=f"a path under {' or '.join(str(root) for root in roots)}; upload the directory as an "
            "archive (nubis deploy does), or start the server with --build-path-root DIR",
            found=shown,
        )
    if not resolved.exists():
        raise SpecError(
            "does not exist on the server's machine",
            field="spec.build.path",
            expected="a directory or a .py file readable by the server",
            found=str(source),
        )
    return resolved


def _refuse_links_out_of(root: Path, shown: Path) -> None:
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [name for name in subdirectories if name not in ("__pycache__", ".venv")]
        for name in (*subdirectories, *files):
            path = Path(directory, name)
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                raise SpecError(
                    f"contains a symbolic link that leaves the directory: {path} -> {os.readlink(path)}",
                    field="spec.build.path",
                    expected="links to files inside the directory",
                    found=str(shown),
                )
