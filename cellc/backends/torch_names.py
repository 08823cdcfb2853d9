"""What the torch.nn-compatible layer classes (both torch-based targets) require of a cell
beyond what lowering checks for every target, without importing torch: the input's size must be
one size symbol, so that stacked layers can rebind it. (Parameter and size names that would hide
the layers' attributes are refused by lower.py, from the lists in cellc/names.py, which
tests/test_coverage.py checks against the installed torch.)
"""

from __future__ import annotations

from ..lower import CellIR
from ..names import LAYER_ATTRIBUTES, MODULE_ATTRIBUTES  # noqa: F401  (re-exported)
from ..shapes import Dim
from ..source import CellShapeError


def check_layer_cell(cell: CellIR) -> str:
    """Raise a located CellError if the cell cannot make a layer; return the size symbol of its
    input (e.g. "I"), which a stacked layer binds to the previous layer's output size."""
    dim = cell.input_size
    symbol = next((s.symbol for s in cell.sizes if dim == Dim.of(s.symbol)), None)
    if symbol is None:
        raise CellShapeError(
            f"the input's size must be one size symbol, as in x[I], for layers to"
            f" stack; it is {dim}", cell.input_span, cell.source.name)
    return symbol
