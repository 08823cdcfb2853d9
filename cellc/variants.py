"""The two forms of a cell with an optional size: `variant(cell, sizes)`.

An optional size (`proj_size P = 0` in the header) changes what the cell is, not only how big:
at 0 the declarations it sizes are absent (`param weight_hr[P, H]`), `P or H` is H and
`A if P else B` is B. So lowering makes one CellIR per form: `load_file` gives the one with the
size at 0 (torch.nn.LSTM's default), and `variant` the one the given sizes need, lowered again
from the same text (and cached). Every consumer that knows the sizes (the layers, the NumPy
reference, NativeCell) picks its form here; a layer class's spec merges both (layer_spec.py).

Both forms keep the file's text; the kernel caches key on the step's IR and `CellIR.zero` too
(backends/cache.py), so they keep the forms apart.
"""

from __future__ import annotations

from collections.abc import Mapping

from .backends.cache import LRU
from .lower import CellIR, lower
from .source import Source

_FORMS = LRU(64)  # (source name, file text, zero) -> that form


def optional_sizes(cell: CellIR) -> list[str]:
    """The symbols of the cell's optional sizes (at most one today)."""
    return [s.symbol for s in cell.sizes if s.optional]


def variant(cell: CellIR, sizes: Mapping[str, int]) -> CellIR:
    """The form of `cell` for these sizes (symbol -> int; an optional size left out is 0)."""
    zero = frozenset(s for s in optional_sizes(cell) if not sizes.get(s, 0))
    return form(cell, zero)


def variant_for_args(cell: CellIR, args: Mapping[str, int]) -> CellIR:
    """The same, given constructor arguments (proj_size=2) rather than symbols."""
    return variant(cell, {s.symbol: args.get(s.arg, 0) for s in cell.sizes if s.optional})


def form(cell: CellIR, zero: frozenset) -> CellIR:
    """`cell` lowered with exactly the optional sizes in `zero` at 0."""
    if zero == cell.zero:
        return cell
    from .syntax import parse

    key = (cell.source.name, cell.source.text, zero)
    out = _FORMS.get(key)
    if out is None:
        out = _FORMS[key] = lower(parse(Source(cell.source.name, cell.source.text)), zero)
    return out
