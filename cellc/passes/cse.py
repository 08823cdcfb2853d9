"""Common-subexpression elimination: one value per (op, operands, attributes).

    %a = sigmoid %f                     %a = sigmoid %f
    %b = sigmoid %f          ->         %c = mul %a, %a
    %c = mul %a, %b

Operands of commutative ops are put in a canonical order first, so `x*y` and `y*x` meet.
"""

from __future__ import annotations

from ..ir import Func, substitute
from ..ops import OPS
from .util import map_steps


def _key(instr):
    if instr.op == "scan":
        return None
    args = [id(a) for a in instr.args]
    if OPS[instr.op].commutative:
        args.sort()
    try:
        attrs = tuple(sorted(instr.attrs.items()))
        hash(attrs)
    except TypeError:
        return None
    return (instr.op, tuple(args), attrs)


def cse(f: Func) -> Func:
    f = map_steps(f, cse)
    seen: dict = {}
    mapping = {}
    body = []
    for instr in f.body:
        instr = instr if not mapping else substitute_args(instr, mapping)
        key = _key(instr)
        if key is not None and key in seen:
            for old, new in zip(instr.outs, seen[key].outs):
                mapping[id(old)] = new
            continue
        if key is not None:
            seen[key] = instr
        body.append(instr)
    if not mapping:
        return f
    return substitute(f, mapping, body)


def substitute_args(instr, mapping):
    from dataclasses import replace

    args = tuple(mapping.get(id(a), a) for a in instr.args)
    return instr if all(a is b for a, b in zip(args, instr.args)) else replace(instr, args=args)
