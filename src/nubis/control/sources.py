"""Where a function's code comes from, made into a directory the builder and workers can use.

Three code entries (NUCLIO.md §1.5): inline base64 source (`spec.build.functionSourceCode`), an
uploaded archive (Nubis extension), or a directory path on the server's machine
(`spec.build.path`). Each deploy gets its own directory per generation, so a redeploy never
changes the code under running replicas.
"""

from __future__ import annotations

import base64
import binascii
import io
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from nubis.errors import SpecError

#: Largest archive accepted by the upload route (bytes); larger is a 413.
MAX_ARCHIVE_BYTES = 256 * 1024 * 1024


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


def copy_directory(source: Path, target: Path) -> Path:
    """A snapshot of a directory on the server's machine (`spec.build.path`)."""
    if not source.exists():
        raise SpecError(
            "does not exist on the server's machine",
            field="spec.build.path",
            expected="a directory or a .py file readable by the server",
            found=str(source),
        )
    if target.exists():
        shutil.rmtree(target)
    if source.is_file():
        target.mkdir(parents=True)
        shutil.copy2(source, target / source.name)
    else:
        shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", ".venv"))
    return target


def _safe_member(name: str, root_name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise SpecError(
            f"archive entry {name!r} points outside the archive root",
            field=root_name,
            expected="relative paths inside the archive",
            found=name,
        )
    return path


def extract_archive(data: bytes, target: Path) -> Path:
    """Unpack a .tar(.gz|.bz2|.xz) or .zip archive, refusing entries or links that leave its root.

    Nothing is left behind on failure: extraction goes to a sibling directory that is renamed into
    place only when every entry was checked and written.
    """
    if len(data) > MAX_ARCHIVE_BYTES:
        raise SpecError(
            "archive too large",
            field="archive",
            expected=f"at most {MAX_ARCHIVE_BYTES} bytes",
            found=len(data),
        )
    staging = target.with_name(target.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(io.BytesIO(data)):
            _extract_zip(data, staging)
        else:
            _extract_tar(data, staging)
        _flatten_single_directory(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _extract_zip(data: bytes, root: Path) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            relative = _safe_member(info.filename, "archive")
            mode = (info.external_attr >> 16) & 0o170000
            if mode == stat.S_IFLNK:
                raise SpecError(
                    f"archive entry {info.filename!r} is a symbolic link",
                    field="archive",
                    expected="regular files and directories",
                    found=info.filename,
                )
            destination = root.joinpath(*relative.parts)
            if info.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, destination.open("wb") as out:
                shutil.copyfileobj(source, out)


def _extract_tar(data: bytes, root: Path) -> None:
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")  # noqa: SIM115 - closed by `with` below
    except tarfile.TarError as exc:
        raise SpecError(
            "is not a tar or zip archive",
            field="archive",
            expected=".tar, .tar.gz, .tar.bz2, .tar.xz or .zip",
            found=str(exc),
        ) from exc
    with archive:
        for member in archive.getmembers():
            relative = _safe_member(member.name, "archive")
            if member.issym() or member.islnk():
                link = PurePosixPath(member.linkname)
                resolved = (PurePosixPath(*relative.parts[:-1]) / link) if member.issym() else link
                if link.is_absolute() or _escapes(resolved):
                    raise SpecError(
                        f"archive link {member.name!r} -> {member.linkname!r} leaves the archive root",
                        field="archive",
                        expected="links inside the archive",
                        found=member.linkname,
                    )
            elif not (member.isfile() or member.isdir()):
                raise SpecError(
                    f"archive entry {member.name!r} is not a file or directory",
                    field="archive",
                    expected="regular files, directories and internal links",
                    found=member.name,
                )
        archive.extractall(root, filter="data")


def _normalise(parts: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for part in parts:
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            else:
                out.append("..")
        elif part not in ("", "."):
            out.append(part)
    return out


def _escapes(path: PurePosixPath) -> bool:
    return bool(_normalise(path.parts)[:1] == [".."])


def _flatten_single_directory(root: Path) -> None:
    """An archive of `myfn/…` is taken as the contents of `myfn`, as users pack directories."""
    entries = list(root.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        inner = entries[0]
        holder = root.with_name(root.name + ".inner")
        inner.rename(holder)
        root.rmdir()
        holder.rename(root)
