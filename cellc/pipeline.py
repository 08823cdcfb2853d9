"""The compiler's stages, in order, and the text each prints for `cellc show --emit`."""

from __future__ import annotations

from .ir import print_func
from .lower import CellIR, sequence_program


def emit(cell: CellIR, stage: str) -> str:
    if stage == "ir":
        return print_func(cell.step)
    if stage == "seq":
        return print_func(sequence_program(cell))
    raise ValueError(f"unknown stage {stage!r}")
