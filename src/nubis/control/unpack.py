"""Unpacking an uploaded function archive: contained, and bounded while it is written.

Refused: entries or links that leave the archive's root, links in zip files, special files, and
archives that expand past the server's limits (issue 7: 8.7 MB of gzip became 2 GB on disk).
The limits hold for the bytes actually written, not for what an archive says about itself:

- a tar member's data is exactly the size in its header (tarfile copies that many bytes and no
  more), so the running total, checked before each member is written, bounds what reaches the
  disk. Headers are read one at a time, so decompression stops at the first member over a limit
  instead of inflating the whole stream first;
- a zip entry's declared size can lie, so zip bytes are counted as they are decompressed (the
  declared total is only an early refusal).

Nothing is left behind on failure: extraction goes to a sibling directory that is renamed into
place only when every entry was checked and written.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from nubis.control.settings import DEFAULT_ARCHIVE_MAX_BYTES, DEFAULT_ARCHIVE_MAX_MEMBERS
from nubis.errors import BadRequest, SpecError

#: Largest archive accepted by the upload route (bytes); larger is a 413.
MAX_ARCHIVE_BYTES = 256 * 1024 * 1024
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ArchiveLimits:
    """What one archive may expand to: bytes of file data, and entries (files, directories, links)."""

    max_bytes: int = DEFAULT_ARCHIVE_MAX_BYTES
    max_members: int = DEFAULT_ARCHIVE_MAX_MEMBERS


def extract_archive(data: bytes, target: Path, limits: ArchiveLimits | None = None) -> Path:
    """Unpack a .tar(.gz|.bz2|.xz) or .zip archive into `target`.

    Raises `SpecError` (400) for an entry that is unsafe or an archive that is damaged, and
    `BadRequest` with status 413 when the archive or what it expands to is over a limit.
    """
    limits = limits or ArchiveLimits()
    if len(data) > MAX_ARCHIVE_BYTES:
        raise BadRequest(f"archive larger than {MAX_ARCHIVE_BYTES} bytes", status_code=413)
    staging = target.with_name(target.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    created = [parent for parent in staging.parents if not parent.exists()]
    staging.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(io.BytesIO(data)):
            _extract_zip(data, staging, limits)
        else:
            _extract_tar(data, staging, limits)
        _flatten_single_directory(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in created:  # innermost first; only the directories made here, when still empty
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise
    return target


def _too_many(limits: ArchiveLimits) -> BadRequest:
    return BadRequest(
        f"archive holds more than {limits.max_members} entries, the server's limit "
        f"(nubis server --archive-max-files {limits.max_members}); pack fewer files, or raise the limit",
        status_code=413,
    )


def _too_big(limits: ArchiveLimits, entry: str) -> BadRequest:
    return BadRequest(
        f"archive expands to more than {limits.max_bytes} bytes (reached at entry {entry!r}), the "
        f"server's limit (nubis server --archive-max-bytes {limits.max_bytes}); leave large files "
        "out of the function's directory, or raise the limit",
        status_code=413,
    )


def _damaged(exc: Exception) -> SpecError:
    return SpecError(
        "is damaged and cannot be unpacked",
        field="archive",
        expected="a complete .tar, .tar.gz, .tar.bz2, .tar.xz or .zip",
        found=f"{type(exc).__name__}: {exc}",
    )


def _safe_member(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise SpecError(
            f"archive entry {name!r} points outside the archive root",
            field="archive",
            expected="relative paths inside the archive",
            found=name,
        )
    return path


def _extract_zip(data: bytes, root: Path, limits: ArchiveLimits) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        if len(infos) > limits.max_members:
            raise _too_many(limits)
        declared = 0
        for info in infos:  # an early refusal only: the bytes are counted again as they inflate
            declared += info.file_size
            if declared > limits.max_bytes:
                raise _too_big(limits, info.filename)
        written = 0
        for info in infos:
            relative = _safe_member(info.filename)
            if (info.external_attr >> 16) & 0o170000 == stat.S_IFLNK:
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
            try:
                with archive.open(info) as source, destination.open("wb") as out:
                    while chunk := source.read(_CHUNK):
                        written += len(chunk)
                        if written > limits.max_bytes:
                            raise _too_big(limits, info.filename)
                        out.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError) as exc:  # RuntimeError: encrypted
                raise _damaged(exc) from exc


def _extract_tar(data: bytes, root: Path, limits: ArchiveLimits) -> None:
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
        members = written = 0
        try:
            # Iterating reads one header at a time (not getmembers(), which inflates everything first).
            for member in archive:
                members += 1
                if members > limits.max_members:
                    raise _too_many(limits)
                _check_tar_member(member)
                if member.isfile():
                    written += member.size
                    if written > limits.max_bytes:
                        raise _too_big(limits, member.name)
                archive.extract(member, root, filter="data")
        except tarfile.FilterError as exc:
            # The data filter resolves links already written, so it catches what a lexical check cannot
            # (a link through an earlier link).
            raise SpecError(
                f"archive entry {exc.tarinfo.name!r} leaves the archive root ({exc})",
                field="archive",
                expected="entries and links inside the archive",
                found=exc.tarinfo.name,
            ) from exc
        except (tarfile.TarError, zlib.error, EOFError) as exc:
            raise _damaged(exc) from exc


def _check_tar_member(member: tarfile.TarInfo) -> None:
    relative = _safe_member(member.name)
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


def _escapes(path: PurePosixPath) -> bool:
    depth = 0
    for part in path.parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def _flatten_single_directory(root: Path) -> None:
    """An archive of `myfn/…` is taken as the contents of `myfn`, as users pack directories."""
    entries = list(root.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        inner = entries[0]
        holder = root.with_name(root.name + ".inner")
        inner.rename(holder)
        root.rmdir()
        holder.rename(root)
