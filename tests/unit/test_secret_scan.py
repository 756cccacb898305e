"""The end-of-session secret scan finds a registered value in any file, and not in its home."""

from __future__ import annotations

from pathlib import Path

import secret_scan


def test_a_registered_secret_is_found_outside_its_home_only(tmp_path: Path) -> None:
    value = "nubis_scan-test-0123456789"
    secret_scan.register(value, home=("/its-home/",))
    try:
        (tmp_path / "its-home").mkdir()
        (tmp_path / "its-home" / "token").write_text(value)
        assert secret_scan.leaks(tmp_path) == []
        (tmp_path / "logs").mkdir()
        (tmp_path / "logs" / "server.log").write_bytes(b"x" * 1000 + value.encode() + b"\n")
        (found,) = secret_scan.leaks(tmp_path)
        assert "logs/server.log" in found and value not in found
    finally:
        (tmp_path / "logs" / "server.log").unlink(missing_ok=True)
        secret_scan.forget(value)
