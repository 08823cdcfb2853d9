"""The front of the pipeline: file -> Source -> AST -> CellIR, with every user error located."""

from __future__ import annotations

from pathlib import Path

from .lower import CellIR, lower
from .source import Source
from .syntax import parse


def load_source(source: Source) -> CellIR:
    return lower(parse(source))


def load_file(path: str | Path) -> CellIR:
    """Read, parse and check a `.cell` file. Raises CellError on any user mistake."""
    return load_source(Source.read(path))
