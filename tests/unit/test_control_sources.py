"""Function code entries: inline base64 source and archives (with the escapes they must refuse)."""

from __future__ import annotations

import base64
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from nubis.control.sources import (
    ArchiveLimits,
    copy_directory,
    extract_archive,
    module_file_name,
    write_inline_source,
)
from nubis.errors import BadRequest, SpecError


def _tar(entries: list[tarfile.TarInfo], contents: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for info in entries:
            data = (contents or {}).get(info.name)
            if data is not None:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            else:
                archive.addfile(info)
    return buffer.getvalue()


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def test_inline_source_is_written_as_the_handler_module_with_lf_line_ends(tmp_path: Path) -> None:
    encoded = base64.b64encode(b"def handler(context, event):\r\n    return 'hi'\r\n").decode()
    target = write_inline_source(tmp_path / "code", encoded, "my-nb-nuclio:handler")
    text = (target / "my-nb-nuclio.py").read_text()
    assert text == "def handler(context, event):\n    return 'hi'\n"


def test_module_file_name_defaults_to_main() -> None:
    assert module_file_name("") == "main.py"
    assert module_file_name("pkg.sub:fn") == "pkg.py"


def test_bad_base64_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"spec\.build\.functionSourceCode"):
        write_inline_source(tmp_path, "not base64!!", "main:handler")


def test_tar_archive_is_extracted_and_a_single_top_directory_flattened(tmp_path: Path) -> None:
    data = _tar([_file("fn/main.py"), _file("fn/lib/util.py")], {"fn/main.py": b"x = 1\n", "fn/lib/util.py": b""})
    target = extract_archive(data, tmp_path / "code")
    assert (target / "main.py").read_text() == "x = 1\n"
    assert (target / "lib" / "util.py").exists()


def test_zip_archive_is_extracted(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("main.py", "y = 2\n")
        archive.writestr("function.yaml", "spec: {}\n")
    target = extract_archive(buffer.getvalue(), tmp_path / "code")
    assert (target / "main.py").read_text() == "y = 2\n"
    assert (target / "function.yaml").exists()


@pytest.mark.parametrize("name", ["../evil.py", "/etc/evil.py", "fn/../../evil.py"])
def test_paths_out_of_the_root_are_refused_and_nothing_is_left(tmp_path: Path, name: str) -> None:
    data = _tar([_file("main.py"), _file(name)], {"main.py": b"", name: b"boom"})
    with pytest.raises(SpecError, match="outside the archive root"):
        extract_archive(data, tmp_path / "code")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside", "a/../../x"])
def test_links_out_of_the_root_are_refused(tmp_path: Path, target: str) -> None:
    link = tarfile.TarInfo("main.py")
    link.type = tarfile.SYMTYPE
    link.linkname = target
    with pytest.raises(SpecError, match="leaves the archive root"):
        extract_archive(_tar([link]), tmp_path / "code")
    assert list(tmp_path.iterdir()) == []


def test_links_inside_the_root_are_kept(tmp_path: Path) -> None:
    link = tarfile.TarInfo("alias.py")
    link.type = tarfile.SYMTYPE
    link.linkname = "main.py"
    data = _tar([_file("main.py"), link], {"main.py": b"z = 3\n"})
    target = extract_archive(data, tmp_path / "code")
    assert (target / "alias.py").read_text() == "z = 3\n"


def test_zip_symlinks_are_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("link.py")
        info.external_attr = 0o120777 << 16
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(SpecError, match="symbolic link"):
        extract_archive(buffer.getvalue(), tmp_path / "code")


def test_garbage_is_not_an_archive(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not a tar or zip archive"):
        extract_archive(b"hello, not an archive", tmp_path / "code")


def test_copy_directory_of_a_missing_path_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"spec\.build\.path: does not exist"):
        copy_directory(tmp_path / "nope", tmp_path / "code", [tmp_path])


def _zeros_tar_gz(size: int, name: str = "fn/zeros.bin") -> bytes:
    """A real gzip bomb in miniature: `size` zero bytes compress to about size/1000."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo(name)
        info.size = size
        archive.addfile(info, io.BytesIO(bytes(size)))
    return buffer.getvalue()


def test_a_gzip_bomb_is_refused_while_extracting_naming_the_limit(tmp_path: Path) -> None:
    data = _zeros_tar_gz(8 * 1024 * 1024)
    assert len(data) < 64 * 1024
    with pytest.raises(BadRequest, match=r"expands to more than 1000000 bytes.*--archive-max-bytes") as caught:
        extract_archive(data, tmp_path / "code", ArchiveLimits(max_bytes=1_000_000))
    assert caught.value.status_code == 413
    assert list(tmp_path.iterdir()) == []
    # Within the limit, the same archive unpacks.
    assert (extract_archive(data, tmp_path / "code", ArchiveLimits(max_bytes=8 * 1024 * 1024)) / "zeros.bin").exists()


def test_too_many_entries_are_refused(tmp_path: Path) -> None:
    data = _tar([_file(f"f{i}.py") for i in range(50)])
    with pytest.raises(BadRequest, match=r"more than 10 entries.*--archive-max-files"):
        extract_archive(data, tmp_path / "code", ArchiveLimits(max_members=10))
    assert list(tmp_path.iterdir()) == []


def test_a_zip_bomb_is_refused_and_a_lying_declared_size_does_not_help(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", bytes(4 * 1024 * 1024))
    honest = buffer.getvalue()
    with pytest.raises(BadRequest, match="expands to more than"):
        extract_archive(honest, tmp_path / "code", ArchiveLimits(max_bytes=1_000_000))
    # Declare 100 bytes in both headers: the entry must not expand past that unnoticed.
    size = (4 * 1024 * 1024).to_bytes(4, "little")
    lying = honest.replace(size, (100).to_bytes(4, "little"))
    assert lying != honest
    with pytest.raises((BadRequest, SpecError)):
        extract_archive(lying, tmp_path / "code", ArchiveLimits(max_bytes=1_000_000))
    assert list(tmp_path.iterdir()) == []


def test_a_link_through_an_earlier_link_is_refused(tmp_path: Path) -> None:
    up = tarfile.TarInfo("d/a")
    up.type = tarfile.SYMTYPE
    up.linkname = ".."  # d/a is the root: inside
    out = tarfile.TarInfo("d/a/b")
    out.type = tarfile.SYMTYPE
    out.linkname = ".."  # lexically d, really the root's parent
    with pytest.raises(SpecError, match="leaves the archive root"):
        extract_archive(_tar([_file("main.py"), up, out]), tmp_path / "code")
    assert list(tmp_path.iterdir()) == []


def test_build_path_outside_the_allowed_roots_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "fn").mkdir(parents=True)
    (root / "fn" / "main.py").write_text("x = 1\n")
    with pytest.raises(SpecError, match=r"spec\.build\.path: is outside.*--build-path-root") as caught:
        copy_directory(Path("/etc"), tmp_path / "code", [root])
    assert "/etc" in caught.value.message and str(root) in caught.value.message
    assert not (tmp_path / "code").exists()
    copied = copy_directory(root / "fn", tmp_path / "code", [root])
    assert (copied / "main.py").read_text() == "x = 1\n"


def test_build_path_symlinks_are_judged_by_where_they_point(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "etc").symlink_to("/etc")
    with pytest.raises(SpecError, match="resolves to /etc"):
        copy_directory(root / "etc", tmp_path / "code", [root])
    (root / "fn").mkdir()
    (root / "fn" / "main.py").write_text("")
    (root / "fn" / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(SpecError, match="symbolic link that leaves the directory"):
        copy_directory(root / "fn", tmp_path / "code", [root])
    assert not (tmp_path / "code").exists()
