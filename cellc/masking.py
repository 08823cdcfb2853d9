"""Masks with Keras semantics, as a CellIR -> CellIR transform: `masked(cell)`.

At a masked step (mask False) a Keras RNN keeps every state and repeats the previous output (zeros
before the first unmasked step); a mask may have holes. The masked cell does that inside its own
step, so every backend runs it with its kernels unchanged and the symbolic backward
differentiates it with no rule of its own:

    input  xin[I + 1]                       # the input with the mask (1.0 or 0.0) appended
    state  h[H], ..., y_prev[H_out]         # one more state: the previous output, starting at 0
    x, m = split(xin, [I, 1])
    ... the cell's own step, computing h' ... and y ...
    h'      = where(m, h', h)               # for every state
    y_out   = where(m, y, y_prev)
    y_prev' = y_out
    output y_out

`where` is a select, so the unselected branch never leaks into values or gradients (an inf or a
nan of a step that is masked out stays out, which m*a + (1-m)*b would not do). `split` reads only
the input, so the hoisting pass still moves the input products (`W @ x`) out of the time loop,
now behind the split.

A caller (a layer) appends the mask to the input, starts y_prev at zero and drops it from the
final states. The masked cell's source text is the cell's with a comment line appended
(`MARK`), so the kernel caches, which key on the text, keep its kernels apart from the cell's
own; every span still points into the original text.
"""

from __future__ import annotations

from dataclasses import fields, replace

from .ir import Builder, Func, Instr, Value, all_instrs, verify
from .lower import CellIR
from .shapes import ONE
from .source import Source

MARK = "\n# masked by cellc.masking: input + mask column, state y_prev, where(m, new, old)\n"
_KEPT = 64
_MASKED: dict[int, tuple[CellIR, CellIR]] = {}  # id(cell) -> (cell, its masked cell)


def masked(cell: CellIR) -> CellIR:
    """The masked form of `cell` (see the module docstring); cached per cell object."""
    hit = _MASKED.get(id(cell))
    if hit is not None and hit[0] is cell:
        return hit[1]
    out = _masked(cell)
    _MASKED[id(cell)] = (cell, out)
    while len(_MASKED) > _KEPT:  # dicts keep insertion order: the oldest entry comes first
        del _MASKED[next(iter(_MASKED))]
    return out


def _masked(cell: CellIR) -> CellIR:
    step, n = cell.step, len(cell.states)
    taken = {p.name for p in step.params} | {o.name for i in all_instrs(step) for o in i.outs}
    b = Builder(taken, prefix="mask")
    x = cell.input
    xin = Value(b.fresh(f"{x.name}_mask"), x.type.with_shape((x.type.shape[0] + ONE,)))
    m = Value(b.fresh("m"), x.type.with_shape((ONE,)))
    # The cell's input becomes the first part of the split, so its body is reused unchanged.
    split = Instr("split", (xin,), (x, m), {"sizes": (x.type.shape[0], ONE)}, cell.input_span)
    new_states, y = step.results[:n], step.results[n]
    y_prev = Value(b.fresh("y_prev"), y.type)
    b.span = step.body[-1].span if step.body else cell.input_span
    kept = [b.op("where", m, new, old, name=f"{old.name}_kept")
            for new, old in zip(new_states, cell.states)]
    y_out = b.op("where", m, y, y_prev, name="y_kept")
    params = (*cell.states, y_prev, xin, *step.params[n + 1:])
    new_step = verify(Func(step.name, params, (split, *step.body, *b.body),
                           (*kept, y_out, y_out)))
    extra = {}
    if "state_init" in {f.name for f in fields(cell)}:  # y_prev starts at zero
        extra["state_init"] = (*cell.state_init, None)
    return replace(cell, input=xin, states=(*cell.states, y_prev), output=y_out.name,
                   step=new_step, source=Source(cell.source.name, cell.source.text + MARK),
                   **extra)
