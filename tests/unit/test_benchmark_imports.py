"""Every benchmark module imports against the current code (they are not type-checked, and a
renamed API would otherwise break `make bench` unnoticed)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.parametrize("module", sorted(p.stem for p in BENCHMARKS.glob("*.py")))
def test_the_benchmark_imports(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    try:
        importlib.import_module(module)
    finally:
        for name in [m for m in sys.modules if m == module or m == "_harness"]:
            del sys.modules[name]
