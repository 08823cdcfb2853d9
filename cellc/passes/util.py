"""Helpers the passes share: rebuilding scans and applying a pass inside loop bodies."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from ..ir import Func, Instr, Value, scan_out_types
from ..shapes import Batch


def map_steps(f: Func, fn: Callable[[Func], Func]) -> Func:
    """Apply fn to the step of every scan in f (f's own body is left to the caller)."""
    body = []
    changed = False
    for instr in f.body:
        if instr.op == "scan":
            step = instr.attrs["step"]
            new = fn(step)
            if new is not step:
                instr = with_step(instr, new)
                changed = True
        body.append(instr)
    return replace(f, body=tuple(body)) if changed else f


def with_step(instr: Instr, step: Func, args=None, outs=None, n_xs=None, n_ys=None) -> Instr:
    """The scan `instr` with a new step (and optionally new arguments/outputs/counts)."""
    attrs = dict(instr.attrs)
    attrs["step"] = step
    if n_xs is not None:
        attrs["n_xs"] = n_xs
    if n_ys is not None:
        attrs["n_ys"] = n_ys
    attrs["out_types"] = tuple(scan_out_types(step, attrs["n_carry"], attrs["n_ys"]))
    return replace(instr, args=instr.args if args is None else tuple(args),
                   outs=instr.outs if outs is None else tuple(outs), attrs=attrs)


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
            names |= all_names(instr.attrs["step"])
    return names
