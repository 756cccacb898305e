"""A failed deploy as one line plus the user's traceback: the report parser, the worker's traceback
trimming, and the pieces of `nubis deploy` that decide what a deploy is (project, archive bytes)."""

from __future__ import annotations

import io
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

import nubis.runtimes.python
from nubis.cli.deploy import project_of
from nubis.cli.packing import pack_directory
from nubis.control.api.function_objects import check_triggers
from nubis.control.deploy_failure import summarize_failure
from nubis.errors import SpecError
from nubis.processor.triggers.registry import TriggerRegistry
from nubis.spec import parse_config

sys.path.insert(0, str(nubis.runtimes.python.WORKER_PATH))
from nubis_worker.loader import HandlerLoadError, load_handler
from nubis_worker.tracebacks import user_traceback

USER_TRACEBACK = """Traceback (most recent call last):
  File "/data/functions/missing/g2/main.py", line 1, in <module>
    import missing_module
ModuleNotFoundError: No module named 'missing_module'"""

IMPORT_FAILURE = f"""generation 2 failed: replica g2-r0 exited with code 4 before it was ready:
08:06:05.431 ERROR missing: the zygote process exited unexpectedly (code None); stopping this replica
08:06:05.464 ERROR cannot load handler 'main:handler': No module named 'missing_module'
{USER_TRACEBACK}
"""

INIT_FAILURE = """generation 1 failed: replica g1-r0 exited with code 4 before it was ready:
08:06:01.289 ERROR [init-error w0] Exception raised while running init_context exc=cannot connect worker_id=0
08:06:01.366 ERROR worker 0 of trigger 'h' failed to start: Exception raised while running init_context: cannot connect
Traceback (most recent call last):
  File "/data/functions/init-error/g1/main.py", line 5, in init_context
    raise ValueError("cannot connect")
ValueError: cannot connect
08:06:01.370 INFO processor stopped"""


def test_an_import_failure_becomes_its_cause_and_the_traceback_once() -> None:
    report = summarize_failure(IMPORT_FAILURE)
    assert report.summary == "cannot load handler 'main:handler': No module named 'missing_module'"
    assert report.details == USER_TRACEBACK
    assert report.message.splitlines()[0] == report.summary
    assert report.message.count("Traceback (most recent call last)") == 1


def test_an_init_context_failure_keeps_the_error_line_before_its_traceback() -> None:
    report = summarize_failure(INIT_FAILURE)
    assert report.summary == (
        "worker 0 of trigger 'h' failed to start: Exception raised while running init_context: cannot connect"
    )
    assert report.details.splitlines()[-1] == "ValueError: cannot connect"
    assert "processor stopped" not in report.details


def test_chained_tracebacks_are_kept_whole() -> None:
    chained = textwrap.dedent(
        """\
        12:00:00.000 ERROR cannot load handler 'main:handler': no config
        Traceback (most recent call last):
          File "/f/main.py", line 3, in <module>
            open("config.json")
        FileNotFoundError: config.json

        The above exception was the direct cause of the following exception:

        Traceback (most recent call last):
          File "/f/main.py", line 5, in <module>
            raise RuntimeError("no config") from exc
        RuntimeError: no config
        12:00:00.100 INFO bye"""
    )
    report = summarize_failure(chained)
    assert report.summary == "cannot load handler 'main:handler': no config"
    assert report.details.count("Traceback (most recent call last)") == 2
    assert report.details.splitlines()[-1] == "RuntimeError: no config"


def test_without_a_traceback_the_last_error_line_or_the_first_line_is_the_cause() -> None:
    no_traceback = "generation 3 failed: replica g3-r0 exited with code 4 before it was ready:\n"
    no_traceback += "12:00:00.000 ERROR cannot load handler 'x:handler': Handler module 'x' not found in /f\n"
    assert (
        summarize_failure(no_traceback).summary == "cannot load handler 'x:handler': Handler module 'x' not found in /f"
    )
    build = "build step failed: 'exit 3' (exit code 3)\nlast 1 lines of output:\n  marker"
    report = summarize_failure(build)
    assert report.summary == "build step failed: 'exit 3' (exit code 3)"
    assert report.details == "last 1 lines of output:\n  marker"
    assert summarize_failure("one line").message == "one line"
    assert summarize_failure("").summary == "the deploy failed without a reason"


def _load_failure(tmp_path: Path, source: str, handler: str = "main:handler") -> BaseException:
    (tmp_path / "main.py").write_text(textwrap.dedent(source))
    try:
        load_handler(handler, str(tmp_path))
    except BaseException as exc:  # what the zygote catches; its own frame (here: this one) goes
        assert exc.__traceback__ is not None
        return exc.with_traceback(exc.__traceback__.tb_next)
    finally:
        sys.modules.pop("main", None)
        sys.path.remove(str(tmp_path))
    raise AssertionError("the handler loaded")


def test_the_worker_reports_only_the_users_frames(tmp_path: Path) -> None:
    exc = _load_failure(tmp_path, "def load():\n    import nubis_missing_module_xyz\n\nload()\n")
    text = user_traceback(exc)
    assert text.startswith("Traceback (most recent call last):\n")
    assert f'File "{tmp_path / "main.py"}", line 4, in <module>' in text
    assert "line 2, in load" in text
    assert "loader.py" not in text and "importlib" not in text and "nubis_worker" not in text
    assert text.rstrip().endswith("ModuleNotFoundError: No module named 'nubis_missing_module_xyz'")


def test_chained_user_exceptions_keep_both_parts(tmp_path: Path) -> None:
    exc = _load_failure(
        tmp_path,
        """\
        try:
            {}["model"]
        except KeyError as error:
            raise RuntimeError("no model configured") from error
        """,
    )
    text = user_traceback(exc)
    assert "KeyError: 'model'" in text and "RuntimeError: no model configured" in text
    assert "direct cause" in text and "loader.py" not in text


def test_no_user_frame_means_no_traceback(tmp_path: Path) -> None:
    exc = _load_failure(tmp_path, "x = 1\n", handler="absent:handler")
    assert isinstance(exc, HandlerLoadError)
    assert user_traceback(exc) == ""


def test_the_project_is_the_flag_then_the_label_then_default() -> None:
    labelled = {"metadata": {"name": "f", "labels": {"nuclio.io/project-name": "from-label"}}}
    assert project_of(labelled, "from-flag") == "from-flag"
    assert project_of(labelled, None) == "from-label"
    assert project_of({"metadata": {"name": "f"}}, None) == "default"


def test_an_unchanged_directory_packs_to_the_same_bytes(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("def handler(context, event):\n    return 'x'\n")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "util.py").write_text("X = 1\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\0")
    first = pack_directory(tmp_path)
    (tmp_path / "main.py").touch()  # a new mtime, the same content
    assert pack_directory(tmp_path) == first
    with tarfile.open(fileobj=io.BytesIO(first)) as archive:
        assert archive.getnames() == ["lib", "lib/util.py", "main.py"]
    (tmp_path / "main.py").write_text("def handler(context, event):\n    return 'y'\n")
    assert pack_directory(tmp_path) != first


def test_unknown_trigger_kinds_name_the_field_the_kind_and_the_known_ones() -> None:
    registry = TriggerRegistry({"http": "nubis.processor.triggers.http:create"})
    config = parse_config({"metadata": {"name": "f"}, "spec": {"triggers": {"tick": {"kind": "cron"}}}}).config
    with pytest.raises(SpecError) as raised:
        check_triggers(config, registry)
    assert raised.value.message == (
        "spec.triggers.tick.kind: trigger kind 'cron' is not supported by Nubis yet "
        "(expected one of http, found 'cron')"
    )
    disabled = parse_config(
        {"metadata": {"name": "f"}, "spec": {"triggers": {"tick": {"kind": "cron", "disabled": True}}}}
    ).config
    check_triggers(disabled, registry)  # not started, so not refused
