"""The two forms of a cell with an optional size: `variant(cell, sizes)`.

An optional size (`proj_size P = 0` in the header) changes what the cell is, not only how big:
at 0 the declarations it sizes are absent (`param weight_hr[P, H]`), `P or H` is H and
`A if P else B` is B. So lowering makes one CellIR per form: `load_file` gives the one with the
size at 0 (torch.nn.LSTM's default), and `variant` the one the given sizes need, lowered again
from the same text (and cached). Every consumer that knows the sizes (the layers, the NumPy
reference, NativeCell) picks its form here; a layer class's spec merges both (layer_spec.py).

The other form's source text is the file's with a comment appended (as masking.py does), so the
kernel caches, which key on the text, keep the forms apart; spans still point into the file.
"""

from __future__ import annotations

from collections.abc import Mapping

from .lower import CellIR, lower
from .source import Source

_MARK = "\n# the form with {} not 0 (cellc.variants)\n"
_KEPT = 64
_FORMS: dict[tuple, CellIR] = {}  # (source name, file text, zero) -> that form


def optional_sizes(cell: CellIR) -> list[str]:
    """The symbols of the cell's optional sizes (at most one today)."""
    return [s.symbol for s in cell.sizes if s.optional]


def file_text(cell: CellIR) -> str:
    """The .cell file's text, without the mark a non-default form adds."""
    text = cell.source.text
    for sym in optional_sizes(cell):
        mark = _MARK.format(sym)
        if text.endswith(mark):
            return text[: -len(mark)]
    return text


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

    text = file_text(cell)
    key = (cell.source.name, text, zero)
    out = _FORMS.get(key)
    if out is None:
        nonzero = sorted(set(optional_sizes(cell)) - zero)
        marked = text + "".join(_MARK.format(s) for s in nonzero)
        out = _FORMS[key] = lower(parse(Source(cell.source.name, marked)), zero)
        while len(_FORMS) > _KEPT:  # dicts keep insertion order: the oldest entry comes first
            del _FORMS[next(iter(_FORMS))]
    return out
