"""The pieces of local isolation that need no process: user names, the launcher's command line,
the mount plan of `users`, owners and modes, and the choice of a mode (docs/isolation.md)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from nubis.platforms.local import confine
from nubis.platforms.local.isolation import CONFINE, IsolationError, NoIsolation, launcher, select_isolation
from nubis.platforms.local.isolation_users import group_readable, mount_steps, share_readable
from nubis.platforms.local.models import Deployment
from nubis.platforms.local.replica_paths import ReplicaPaths, interpreter_roots, venv_home
from nubis.platforms.local.tenant_users import MAX_USER_NAME, TenantUser, user_name

STRANGER = TenantUser("tenant-x", "nubis-t-tenant-x", 54321, 54321)


def test_a_tenant_user_is_named_after_its_tenant_and_long_names_get_a_digest() -> None:
    assert user_name("tenant-a") == "nubis-t-tenant-a"
    long_a, long_b = "a" * 40 + "-one", "a" * 40 + "-two"
    assert user_name(long_a) != user_name(long_b)
    for name in (long_a, "Tenant_With.Dots", "x" * 63):
        made = user_name(name)
        assert made.startswith("nubis-t-") and len(made) <= MAX_USER_NAME
        assert made == user_name(name)  # the same tenant, the same user, on every start
        assert all(c.isalnum() or c == "-" for c in made) and made == made.lower()


def test_the_launcher_goes_in_front_and_takes_the_cgroup_join() -> None:
    argv = ["/py", "-m", "nubis.processor.replica", "--cgroup", "/sys/fs/cgroup/nubis/f.r0", "--port", "1"]
    wrapped = launcher({"mode": "landlock"}, argv)
    assert wrapped[1:4] == ["-I", "-S", str(CONFINE)] and wrapped[5] == "--"
    assert wrapped[6:] == ["/py", "-m", "nubis.processor.replica", "--port", "1"]
    assert '"cgroup": "/sys/fs/cgroup/nubis/f.r0"' in wrapped[4]


def test_no_isolation_leaves_the_command_alone_and_says_so(tmp_path: Path) -> None:
    isolation = NoIsolation("turned off (--isolation none)")
    paths = _paths(tmp_path, reads=[], writes=[])
    assert isolation.wrap(["/py", "x"], _deployment(tmp_path), paths) == ["/py", "x"]
    assert "functions are NOT isolated (turned off (--isolation none))" in isolation.describe()
    assert isolation.report(None)["isolated"] is False


def test_a_mode_is_one_of_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(IsolationError, match="expected one of auto, users, landlock, none, found 'bwrap'"):
        select_isolation("bwrap", tmp_path)
    assert select_isolation("none", tmp_path).mode == "none"


def test_users_hides_the_data_dir_and_what_the_tenant_cannot_traverse(tmp_path: Path) -> None:
    locked = tmp_path / "locked"  # root's 0700 (as /root holding pyenv)
    python = locked / "python"
    data = tmp_path / "open" / "data"
    code, home, other = data / "functions" / "f" / "g1", data / "agent" / "home" / "f", data / "functions" / "g"
    for directory in (python, code, home, other):
        directory.mkdir(parents=True)
    locked.chmod(0o700)
    for level in (tmp_path, tmp_path / "open"):
        level.chmod(0o755)
    data.chmod(0o700)
    steps = mount_steps(_paths(tmp_path, reads=[code, python], writes=[home]), STRANGER, data)
    hidden = [Path(s["target"]) for s in steps if s["op"] == "hide"]
    binds = {Path(s["target"]): s["write"] for s in steps if s["op"] == "bind"}
    assert all(any(p.is_relative_to(h) for h in hidden) for p in (data, locked))  # pytest's 0700 dir may hide both
    assert binds == {python: False, code: False, home: True}
    assert other not in binds and all(s["source"] == s["target"] for s in steps if s["op"] == "bind")
    first_bind = next(i for i, s in enumerate(steps) if s["op"] == "bind")
    assert all(s["op"] == "bind" for s in steps[first_bind:])


def test_a_bind_that_would_show_the_data_dir_again_is_followed_by_hiding_it(tmp_path: Path) -> None:
    prefix = tmp_path / "opt"  # Nubis installed in /opt/nubis, its data dir inside, /opt 0700
    data = prefix / "nubis" / "data"
    code = data / "functions" / "f" / "g1"
    code.mkdir(parents=True)
    prefix.chmod(0o700)
    steps = mount_steps(_paths(tmp_path, reads=[prefix / "nubis", code], writes=[]), STRANGER, data)
    ops = [(s["op"], Path(s["target"])) for s in steps]
    assert ops.index(("bind", prefix / "nubis")) < ops.index(("hide", data)) < ops.index(("bind", code))


def test_code_is_readable_by_the_tenant_group_only_and_environments_by_all(tmp_path: Path) -> None:
    code, environment = tmp_path / "g1", tmp_path / "env"
    for directory in (code, environment / "bin"):
        directory.mkdir(parents=True, mode=0o700)
    (code / "main.py").write_text("x")
    (code / "main.py").chmod(0o600)
    (environment / "bin" / "python").write_text("")
    (environment / "bin" / "python").chmod(0o700)
    group_readable(code, STRANGER.gid)
    info = (code / "main.py").stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (os.getuid(), STRANGER.gid, 0o640)
    assert stat.S_IMODE(code.stat().st_mode) == 0o750
    share_readable(environment)
    assert stat.S_IMODE((environment / "bin" / "python").stat().st_mode) == 0o755
    assert stat.S_IMODE((environment / "bin").stat().st_mode) == 0o755
    assert (environment / ".nubis-readable").exists()


def test_an_environment_leads_to_the_python_it_was_made_from(tmp_path: Path) -> None:
    base = tmp_path / "pythons" / "3.12"
    (base / "bin").mkdir(parents=True)
    (base / "bin" / "python3.12").write_text("")
    venv = tmp_path / "envs" / "py3.12-key"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(base / "bin" / "python3.12")
    (venv / "pyvenv.cfg").write_text(f"home = {base / 'bin'}\nversion = 3.12.1\n")
    assert venv_home(venv) == base / "bin"
    assert set(interpreter_roots(venv / "bin" / "python")) == {venv, base}


def test_the_launcher_refuses_what_it_does_not_understand() -> None:
    assert confine.main(["{}"]) == confine.CONFINE_FAILED
    assert confine.main(['{"mode": "chroot"}', "--", "/bin/true"]) == confine.CONFINE_FAILED
    assert confine.handled_rights(0) == 0
    assert confine.handled_rights(4) == confine.handled_rights(3) == (1 << 15) - 1
    assert confine.handled_rights(7) == (1 << 16) - 1


def test_a_deployment_names_its_tenant(tmp_path: Path) -> None:
    assert _deployment(tmp_path).tenant == "nuclio"
    assert _deployment(tmp_path, tenant="tenant-a").tenant == "tenant-a"


def _paths(tmp_path: Path, *, reads: list[Path], writes: list[Path]) -> ReplicaPaths:
    home = tmp_path / "home"
    return ReplicaPaths(tuple(reads), tuple(writes), home, tmp_path / "sock", tmp_path / "envs", tmp_path / "shared")


def _deployment(tmp_path: Path, **fields: str) -> Deployment:
    body = {
        "generation": 1,
        "config": {"metadata": {"name": "f"}, "spec": {"handler": "main:handler"}},
        "function_dir": str(tmp_path),
        "python": "/usr/bin/python3",
        "port": 31000,
        "replicas": 1,
    }
    return Deployment.from_json("f", dict(body, **fields))
