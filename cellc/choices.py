"""A cell with its choice hyper-parameters fixed: `specialize(cell, {"nonlinearity": 1})`.

A choice (`nonlinearity in (tanh, relu)` in the header) lowers to selects on a run-time index,
where(k < 0.5, tanh(z), relu(z)), so that every target runs every choice from one program and
a layer switches without a recompile. A backend that compiles per layer anyway (the llvm
target) fixes the index instead: its uses read a constant, the simplifier folds the selects,
and dead-code elimination drops the functions not chosen, so the RNN's relu variant computes no
tanh and saves no residual for it. The parameter stays in the signature (its [1] argument is
passed and ignored), so the calling convention does not change.

The specialized cell's source text is the cell's with a comment appended (as masking.py's
is), so the kernel caches, which key on the text, keep the variants apart.
"""

from __future__ import annotations

from dataclasses import replace

from .ir import Builder, Instr, all_instrs, substitute, verify
from .lower import CellIR
from .source import Source

_KEPT = 64
_SPECIALIZED: dict[tuple, tuple[CellIR, CellIR]] = {}  # (id(cell), choices) -> (cell, result)


def choice_params(cell: CellIR) -> dict[str, tuple[str, ...]]:
    """The cell's choice hyper-parameters: name -> its function names."""
    return {p.name: p.choices for p in cell.params if p.choices}


def specialize(cell: CellIR, chosen: dict[str, int]) -> CellIR:
    """`cell` with each choice in `chosen` (name -> index) fixed; cached per cell object."""
    choices = choice_params(cell)
    for name, k in chosen.items():
        if name not in choices or not 0 <= k < len(choices[name]):
            raise ValueError(f"{cell.name}: no choice {name}={k}; choices are {choices}")
    if not chosen:
        return cell
    key = (id(cell), tuple(sorted(chosen.items())))
    hit = _SPECIALIZED.get(key)
    if hit is not None and hit[0] is cell:
        return hit[1]
    out = _specialize(cell, chosen)
    _SPECIALIZED[key] = (cell, out)
    while len(_SPECIALIZED) > _KEPT:  # dicts keep insertion order: the oldest entry comes first
        del _SPECIALIZED[next(iter(_SPECIALIZED))]
    return out


def _specialize(cell: CellIR, chosen: dict[str, int]) -> CellIR:
    step, n = cell.step, len(cell.states)
    taken = {p.name for p in step.params} | {o.name for i in all_instrs(step) for o in i.outs}
    b = Builder(taken, prefix="choice")
    b.span = cell.input_span
    by_name = {v.name: v for v in step.params[n + 1:]}
    mapping = {id(by_name[name]): b.const(float(k), by_name[name].type)
               for name, k in sorted(chosen.items())}
    body: list[Instr] = [*b.body, *step.body]
    new_step = verify(substitute(step, mapping, body))
    mark = "".join(f"\n# {name} = {choice_params(cell)[name][k]} (fixed by cellc.choices)"
                   for name, k in sorted(chosen.items()))
    return replace(cell, step=new_step, source=Source(cell.source.name,
                                                      cell.source.text + mark + "\n"))
