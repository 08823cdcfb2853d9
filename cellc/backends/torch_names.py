"""What the torch.nn-compatible layer classes (both torch-based targets) require of a cell,
checked without importing torch (the CLI works without it):

- parameter names must not hide torch.nn.Module's attributes, the layer classes' own attributes
  or constructor arguments (a parameter named `forward` or `training` would break them);
  tests/test_coverage.py checks MODULE_ATTRIBUTES against the installed torch;
- the input's size must be one size symbol, so that stacked layers can rebind it.
"""

from __future__ import annotations

from ..lower import CellIR, check_parameter_names
from ..names import LAYER_ATTRIBUTES, MODULE_ATTRIBUTES  # noqa: F401  (re-exported)
from ..shapes import Dim
from ..source import CellShapeError


def check_layer_cell(cell: CellIR) -> str:
    """Raise a located CellError if the cell cannot make a layer; return the size symbol of its
    input (e.g. "I"), which a stacked layer binds to the previous layer's output size."""
    check_parameter_names(cell)
    (dim,) = cell.input.type.shape
    symbol = next((s.symbol for s in cell.sizes if dim == Dim.of(s.symbol)), None)
    if symbol is None:
        raise CellShapeError(
            f"the input's size must be one size symbol, as in {cell.input.name}[I], for layers to"
            f" stack; it is {dim}", cell.input_span, cell.source.name)
    return symbol
