"""Tracebacks of the user's code, without the worker's own frames.

An import error or an `init_context` exception is the user's to fix, and the frames of the worker,
the loader and importlib's machinery around their code only push the cause off the screen. The
frames of the user's files (and of the libraries they call) are kept, chained exceptions too.
"""

from __future__ import annotations

import importlib
import os
import traceback

_HERE = os.path.dirname(os.path.abspath(__file__))


def _own_roots():  # type: ignore[no-untyped-def]
    roots = [_HERE + os.sep, os.path.dirname(os.path.abspath(importlib.__file__)) + os.sep]
    # Run from the nubis source tree (src/nubis/runtimes/python/nubis_worker): nubis's frames too.
    python_dir = os.path.dirname(_HERE)
    runtimes_dir = os.path.dirname(python_dir)
    nubis_dir = os.path.dirname(runtimes_dir)
    if (os.path.basename(python_dir), os.path.basename(runtimes_dir), os.path.basename(nubis_dir)) == (
        "python",
        "runtimes",
        "nubis",
    ):
        roots.append(nubis_dir + os.sep)
    return tuple(roots)


_OWN_ROOTS = _own_roots()


def _is_own(filename):  # type: ignore[no-untyped-def]
    if filename.startswith("<frozen importlib"):
        return True
    return os.path.abspath(filename).startswith(_OWN_ROOTS)


def _trim(summary, seen):  # type: ignore[no-untyped-def]
    """Drop our frames from `summary` and its chain; True if any of the user's frames remain."""
    if summary is None or id(summary) in seen:
        return False
    seen.add(id(summary))
    summary.stack = traceback.StackSummary.from_list([f for f in summary.stack if not _is_own(f.filename)])
    kept = bool(summary.stack)
    kept = _trim(summary.__cause__, seen) or kept
    kept = _trim(summary.__context__, seen) or kept
    return kept


def user_traceback(exc):  # type: ignore[no-untyped-def]
    """`exc`'s traceback as text, with only the user's frames; "" when none of them is involved
    (a malformed handler string, a missing module file: the message says it all)."""
    summary = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    if not _trim(summary, set()):
        return ""
    return "".join(summary.format())
