"""Helpers the passes share: applying a pass inside loop bodies, moving step work out of a loop.

Scans are read and rebuilt through `ir.Scan` (`Scan.of(instr)`, `.rebuild(step, xs=...)`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ..ir import Func, Instr, Scan, Value
from ..shapes import Batch


def map_steps(f: Func, fn: Callable[[Func], Func]) -> Func:
    """Apply fn to the step of every scan in f (f's own body is left to the caller)."""
    body = []
    changed = False
    for instr in f.body:
        if instr.op == "scan":
            scan = Scan.of(instr)
            new = fn(scan.step)
            if new is not scan.step:
                instr = scan.rebuild(new)
                changed = True
        body.append(instr)
    return replace(f, body=tuple(body)) if changed else f


def to_seq(t):
    """A per-step type as a whole-sequence type (parameters stay as they are)."""
    return t.with_batch(Batch.SEQ) if t.batch is Batch.STEP else t


def moved_instr(instr: Instr, args, names: set[str]) -> tuple[Instr, list[Value]]:
    """A copy of a step instruction for the outer function, per-step types becoming sequences."""
    outs = []
    for o in instr.outs:
        name = o.name
        k = 0
        while name in names:
            name, k = f"{o.name}_{k}", k + 1
        names.add(name)
        outs.append(Value(name, to_seq(o.type)))
    attrs = dict(instr.attrs)
    if "type" in attrs:
        attrs["type"] = to_seq(attrs["type"])
    return replace(instr, args=tuple(args), outs=tuple(outs), attrs=attrs), outs


def all_names(f: Func) -> set[str]:
    names = {p.name for p in f.params}
    for instr in f.body:
        names.update(o.name for o in instr.outs)
        if instr.op == "scan":
            names |= all_names(Scan.of(instr).step)
    return names
