"""Shared test setup: the cell corpus and small helpers for compiling snippets.

Any test that takes a `cell_path` argument runs once per `cells/*.cell` file (ids are the file
names), so a new cell file is tested everywhere with no new test code.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cellc.frontend import load_source
from cellc.lower import CellIR
from cellc.source import CellError, Source

CELLS_DIR = Path(__file__).resolve().parent.parent / "cells"
CELL_FILES = sorted(CELLS_DIR.glob("*.cell"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "cell_path" in metafunc.fixturenames:
        metafunc.parametrize("cell_path", CELL_FILES, ids=[p.name for p in CELL_FILES])


def compile_text(text: str, name: str = "x.cell") -> CellIR:
    return load_source(Source(name, text))


def error_text(text: str, name: str = "x.cell", kind: type[CellError] = CellError) -> str:
    """Compile text that must fail; return str() of the error, checking its class."""
    with pytest.raises(kind) as info:
        compile_text(text, name)
    return str(info.value)
