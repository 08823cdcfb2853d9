"""Constant folding and algebraic simplification.

    %a = mul %x, 1.0          ->  (uses of %a read %x)
    %b = add %zeros, %g       ->  (uses of %b read %g)         sums of zero cotangents
    %c = mul %zeros, %x       ->  %c = const 0.0
    %d = sub 1.0, %e  where %e = sub 1.0, %x   ->  (uses of %d read %x)
    %e = add 2.0, 3.0         ->  %e = const 5.0
    %f = outer %zeros, %x     ->  %f = const 0.0                (a linear op of zero is zero)

A rewrite that would change a value's type (x + 0 where 0 is broader than x) is not made. In a
loop, a step output that is always zero becomes a zero outside the loop, so dead cotangents do
not travel through time.
"""

from __future__ import annotations

import math
from dataclasses import replace

from ..ir import Func, Instr, Value, scan_parts, substitute
from ..shapes import Dim
from .util import map_steps, to_seq

_FOLD = {
    "neg": lambda a: -a, "add": lambda a, b: a + b, "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b, "div": lambda a, b: a / b if b else None,
    "sqrt": lambda a: math.sqrt(a) if a >= 0 else None, "exp": math.exp,
    "log": lambda a: math.log(a) if a > 0 else None,
    "tanh": math.tanh, "pow": None,
}
# Ops that are linear in every argument: any zero argument makes a zero result.
_ZERO_IN_ZERO_OUT = {"mul", "matmul", "matmul_t", "outer", "sum", "mean", "broadcast",
                     "sum_batch", "neg"}


def simplify(f: Func) -> Func:
    f = map_steps(f, simplify)
    used = {id(a) for i in f.body for a in i.args} | {id(r) for r in f.results}
    consts: dict[int, float] = {}  # value id -> scalar value of a const instruction
    defs: dict[int, Instr] = {}
    mapping: dict[int, Value] = {}
    body: list[Instr] = []
    changed = False

    def const_of(v):
        return consts.get(id(v))

    for instr in f.body:
        args = tuple(mapping.get(id(a), a) for a in instr.args)
        if any(a is not b for a, b in zip(args, instr.args)):
            instr = replace(instr, args=args)
        new = _rewrite(instr, const_of, defs)
        if instr.op == "scan":
            new = _zero_scan_outputs(instr, used, body, mapping)
            changed |= new is not None
            body.append(instr)
            continue
        if new is None:
            body.append(instr)
        elif isinstance(new, Value):
            mapping[id(instr.out)] = new
            changed = True
            continue
        else:  # a replacement instruction
            instr = new
            body.append(instr)
            changed = True
        for o in instr.outs:
            defs[id(o)] = instr
        if instr.op == "const" and not isinstance(instr.attrs["value"], Dim):
            consts[id(instr.out)] = instr.attrs["value"]
    if not changed:
        return f
    return substitute(f, mapping, body)


def _const(instr: Instr, value: float) -> Instr:
    return Instr("const", (), instr.outs, {"value": float(value), "type": instr.out.type},
                 instr.span, instr.grad)


def _rewrite(instr: Instr, const_of, defs) -> Value | Instr | None:
    """A value to use instead, a replacement instruction (same outputs), or None."""
    op, args = instr.op, instr.args
    if op in ("const", "scan") or len(instr.outs) != 1:
        if op == "split" and const_of(args[0]) == 0.0:
            return None  # handled by concat/zero rules downstream; keep the split
        return None
    out_t = instr.out.type
    cs = [const_of(a) for a in args]

    def same(v):
        return v if v.type == out_t else None

    if args and all(c is not None for c in cs) and op in _FOLD and _FOLD[op] is not None:
        value = _FOLD[op](*cs)
        if value is not None and math.isfinite(value):
            return _const(instr, value)
    if op in _ZERO_IN_ZERO_OUT and any(c == 0.0 for c in cs):
        return _const(instr, 0.0)
    if op == "concat" and all(c == 0.0 for c in cs):
        return _const(instr, 0.0)
    if op == "div" and cs[0] == 0.0:
        return _const(instr, 0.0)
    if op == "add":
        for x, y in ((args[0], args[1]), (args[1], args[0])):
            inner = defs.get(id(y))
            if inner is not None and inner.op == "neg":  # x + -y -> x - y
                return replace(instr, op="sub", args=(x, inner.args[0]))
        if cs[1] == 0.0:
            return same(args[0])
        if cs[0] == 0.0:
            return same(args[1])
    if op == "sub":
        if cs[1] == 0.0:
            return same(args[0])
        if args[0] is args[1]:
            return _const(instr, 0.0)
        # 1 - (1 - x) -> x
        inner = defs.get(id(args[1]))
        if cs[0] is not None and inner is not None and inner.op == "sub" and const_of(inner.args[0]) == cs[0]:
            return same(inner.args[1])
    if op == "mul":
        if cs[1] == 1.0:
            return same(args[0])
        if cs[0] == 1.0:
            return same(args[1])
    if op == "div" and cs[1] == 1.0:
        return same(args[0])
    if op == "pow" and instr.attrs["exponent"] == 1.0:
        return same(args[0])
    if op == "neg":
        inner = defs.get(id(args[0]))
        if inner is not None and inner.op == "neg":
            return same(inner.args[0])
    return None


def _zero_scan_outputs(instr: Instr, used: set[int], body: list[Instr], mapping) -> bool | None:
    """Replace stacked outputs and accumulators that the step always sets to zero."""
    step: Func = instr.attrs["step"]
    parts = scan_parts(instr)
    step_consts = {id(i.out): i.attrs["value"] for i in step.body if i.op == "const"}
    changed = None
    for k in range(parts.n_carry, len(step.results)):
        if step_consts.get(id(step.results[k])) == 0.0 and id(instr.outs[k]) in used:
            out = instr.outs[k]
            zero = Value(out.name + "_zero", out.type)
            body.append(Instr("const", (), (zero,), {"value": 0.0, "type": to_seq(out.type)},
                              instr.span, instr.grad))
            mapping[id(out)] = zero
            changed = True
    return changed
