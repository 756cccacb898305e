"""`nubis secrets set`'s arguments: env files read as kubectl reads them, errors that never quote a value."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from nubis.cli.secrets import _pair, read_env_file


def test_env_file_lines(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    path.write_text("\ufeff# a comment\n\n  USER=app\nPASSWORD=a=b 'c'\nEMPTY=\n")
    assert read_env_file(path) == {"USER": "app", "PASSWORD": "a=b 'c'", "EMPTY": ""}


def test_a_bad_env_file_line_names_file_and_line_not_the_text(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    path.write_text("A=1\nhunter2-the-password\n")
    with pytest.raises(typer.BadParameter) as caught:
        read_env_file(path)
    assert f"{path}:2: expected KEY=VALUE" in str(caught.value) and "hunter2" not in str(caught.value)


def test_an_unreadable_env_file(tmp_path: Path) -> None:
    (tmp_path / "bin.env").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(typer.BadParameter, match="not UTF-8 text"):
        read_env_file(tmp_path / "bin.env")
    with pytest.raises(typer.BadParameter, match="cannot read"):
        read_env_file(tmp_path / "missing.env")


@pytest.mark.parametrize("item", ["novalue", "=value-only"])
def test_pairs_without_a_key_are_refused_without_quoting(item: str) -> None:
    with pytest.raises(typer.BadParameter) as caught:
        _pair(item, "argument 1")
    assert item not in str(caught.value)
    assert _pair("K=v=w", "x") == ("K", "v=w")
