"""A cell with its choice hyper-parameters fixed: `specialize(cell, {"nonlinearity": 1})`.

A choice (`nonlinearity in (tanh, relu)` in the header) lowers to selects on a run-time index,
where(k < 0.5, tanh(z), relu(z)), so that every target runs every choice from one program and
a layer switches without a recompile. A backend that compiles per layer anyway (the llvm
target) fixes the index instead: its uses read a constant, the simplifier folds the selects,
and dead-code elimination drops the functions not chosen, so the RNN's relu variant computes no
tanh and saves no residual for it. The parameter stays in the signature (its [1] argument is
passed and ignored), so the calling convention does not change.

The specialized cell keeps the file's text; the kernel caches key on the step's IR as well
(backends/cache.py), which holds the fixed index, so they keep the variants apart.
"""

from __future__ import annotations

from dataclasses import replace

from .backends.cache import LRU
from .ir import Builder, Instr, all_instrs, substitute, verify
from .lower import CellIR

_SPECIALIZED = LRU(64)  # (id(cell), choices) -> (cell, result)


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
    return replace(cell, step=verify(substitute(step, mapping, body)))
