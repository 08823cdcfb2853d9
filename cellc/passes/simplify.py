"""Constant folding and algebraic simplification, as a table of rewrite rules.

    %a = mul %x, 1.0          ->  (uses of %a read %x)
    %b = add %zeros, %g       ->  (uses of %b read %g)         sums of zero cotangents
    %c = mul %zeros, %x       ->  %c = const 0.0
    %d = sub 1.0, %e  where %e = sub 1.0, %x   ->  (uses of %d read %x)
    %e = add 2.0, 3.0         ->  %e = const 5.0
    %f = outer %zeros, %x     ->  %f = const 0.0                (a linear op of zero is zero)
    %g = where 1.0, %a, %b    ->  (uses of %g read %a)

`RULES` maps an op to its rules, tried in order; each rule's docstring shows its before/after.
A rule returns a value to use instead, a replacement instruction (same outputs), or None when it
does not apply. A rewrite that would change a value's type (x + 0 where 0 is broader than x) is
not made. In a loop, a step output that is always zero becomes a zero outside the loop, so dead
cotangents do not travel through time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..ir import Func, Instr, Scan, Value, substitute
from ..shapes import Dim
from .util import map_steps, to_seq


@dataclass
class _Facts:
    """What simplify knows about the values defined so far in one function body."""

    consts: dict[int, float] = field(default_factory=dict)  # value id -> scalar const value
    defs: dict[int, Instr] = field(default_factory=dict)  # value id -> defining instruction

    def const(self, v: Value) -> float | None:
        return self.consts.get(id(v))

    def defined_by(self, v: Value, op: str) -> Instr | None:
        """The instruction that defines v, if it is an `op`."""
        d = self.defs.get(id(v))
        return d if d is not None and d.op == op else None

    def record(self, instr: Instr):
        for o in instr.outs:
            self.defs[id(o)] = instr
        if instr.op == "const" and not isinstance(instr.attrs["value"], Dim):
            self.consts[id(instr.out)] = instr.attrs["value"]


# A rule gets the instruction, its operands' constant values (None where not a constant) and
# the facts; it returns a replacement value or instruction, or None.
Rule = Callable[[Instr, list, _Facts], "Value | Instr | None"]
RULES: dict[str, list[Rule]] = {}


def rule(*ops: str):
    """Register the decorated function as the next rule for each of `ops`."""

    def register(fn: Rule) -> Rule:
        for op in ops:
            RULES.setdefault(op, []).append(fn)
        return fn

    return register


def simplify(f: Func) -> Func:
    f = map_steps(f, simplify)
    used = {id(a) for i in f.body for a in i.args} | {id(r) for r in f.results}
    facts = _Facts()
    mapping: dict[int, Value] = {}
    body: list[Instr] = []
    changed = False
    for instr in f.body:
        args = tuple(mapping.get(id(a), a) for a in instr.args)
        if any(a is not b for a, b in zip(args, instr.args)):
            instr = replace(instr, args=args)
        if instr.op == "scan":
            changed |= _zero_scan_outputs(instr, used, body, mapping)
            body.append(instr)
            continue
        new = _rewrite(instr, facts)
        if isinstance(new, Value):
            mapping[id(instr.out)] = new
            changed = True
            continue
        if new is not None:  # a replacement instruction
            instr = new
            changed = True
        body.append(instr)
        facts.record(instr)
    if not changed:
        return f
    return substitute(f, mapping, body)


def _rewrite(instr: Instr, facts: _Facts) -> Value | Instr | None:
    """The first rewrite one of the op's rules makes, or None."""
    rules = RULES.get(instr.op)
    if not rules:  # const, scan, split and most ops: nothing to rewrite
        return None
    cs = [facts.const(a) for a in instr.args]
    for fn in rules:
        new = fn(instr, cs, facts)
        if new is not None:
            return new
    return None


def _const(instr: Instr, value: float) -> Instr:
    return Instr("const", (), instr.outs, {"value": float(value), "type": instr.out.type},
                 instr.span, instr.grad)


def _same(instr: Instr, v: Value) -> Value | None:
    """v in place of instr's output, unless that would change the output's type."""
    return v if v.type == instr.out.type else None


# ---------------------------------------------------------------------------------------------
# The rules, in the order they are tried for each op.

_FOLD = {
    "neg": lambda a: -a, "add": lambda a, b: a + b, "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b, "div": lambda a, b: a / b if b else None,
    "sqrt": lambda a: math.sqrt(a) if a >= 0 else None, "exp": math.exp,
    "log": lambda a: math.log(a) if a > 0 else None,
    "tanh": math.tanh,
    "elu": lambda a: a if a > 0 else math.expm1(a),
    "silu": lambda a: a / (1.0 + math.exp(-a)),
    "gelu": lambda a: a * 0.5 * (1.0 + math.erf(a * math.sqrt(0.5))),
    "erf": math.erf,
    "logsigmoid": lambda a: -(max(-a, 0.0) + math.log1p(math.exp(-abs(a)))),
    # A constant has no gradient to stop; stop_gradient of a value is never removed (the
    # forward passes run before differentiation).
    "stop_gradient": lambda a: a,
    "power": lambda a, b: math.pow(a, b) if a > 0 or float(b).is_integer() else None,
    "lt": lambda a, b: float(a < b), "le": lambda a, b: float(a <= b),
    "gt": lambda a, b: float(a > b), "ge": lambda a, b: float(a >= b),
    "eq": lambda a, b: float(a == b), "ne": lambda a, b: float(a != b),
}


@rule(*_FOLD)
def fold(instr, cs, facts):
    """op c1, c2 -> const op(c1, c2), when every operand is a constant and the result is
    finite:  add 2.0, 3.0 -> const 5.0;  log -1.0, div 1.0, 0.0 and exp 1000.0 stay (the
    kernels then compute inf or nan as NumPy does)."""
    if cs and all(c is not None for c in cs):
        try:
            value = _FOLD[instr.op](*cs)
        except (OverflowError, ValueError, ZeroDivisionError):  # math.exp(1000.0), 0.0 ** -1
            return None
        if value is not None and math.isfinite(value):
            return _const(instr, value)
    return None


# Ops that are linear in every argument: any zero argument makes a zero result. (neg is linear
# too, but `fold` already turns neg 0.0 into const -0.0.)
@rule("mul", "matmul", "matmul_t", "outer", "sum", "mean", "broadcast", "sum_batch")
def linear_of_zero(instr, cs, facts):
    """mul 0.0, %x -> const 0.0;  outer %zeros, %x -> const 0.0 (of the output's type)."""
    return _const(instr, 0.0) if any(c == 0.0 for c in cs) else None


@rule("concat")
def concat_of_zeros(instr, cs, facts):
    """concat 0.0, 0.0 -> const 0.0."""
    return _const(instr, 0.0) if all(c == 0.0 for c in cs) else None


@rule("div")
def zero_over(instr, cs, facts):
    """div 0.0, %x -> const 0.0."""
    return _const(instr, 0.0) if cs[0] == 0.0 else None


@rule("add")
def add_neg(instr, cs, facts):
    """add %x, (neg %y) -> sub %x, %y;  add (neg %y), %x -> sub %x, %y."""
    a, b = instr.args
    for x, y in ((a, b), (b, a)):
        inner = facts.defined_by(y, "neg")
        if inner is not None:
            return replace(instr, op="sub", args=(x, inner.args[0]))
    return None


@rule("add")
def add_zero(instr, cs, facts):
    """add %x, 0.0 -> %x;  add 0.0, %x -> %x."""
    if cs[1] == 0.0:
        return _same(instr, instr.args[0])
    if cs[0] == 0.0:
        return _same(instr, instr.args[1])
    return None


@rule("sub")
def sub_zero(instr, cs, facts):
    """sub %x, 0.0 -> %x."""
    return _same(instr, instr.args[0]) if cs[1] == 0.0 else None


@rule("sub")
def sub_self(instr, cs, facts):
    """sub %x, %x -> const 0.0."""
    return _const(instr, 0.0) if instr.args[0] is instr.args[1] else None


@rule("sub")
def c_minus_c_minus(instr, cs, facts):
    """sub c, (sub c, %x) -> %x, for the same constant c:  1 - (1 - x) -> x."""
    inner = facts.defined_by(instr.args[1], "sub")
    if cs[0] is not None and inner is not None and facts.const(inner.args[0]) == cs[0]:
        return _same(instr, inner.args[1])
    return None


@rule("mul")
def mul_one(instr, cs, facts):
    """mul %x, 1.0 -> %x;  mul 1.0, %x -> %x."""
    if cs[1] == 1.0:
        return _same(instr, instr.args[0])
    if cs[0] == 1.0:
        return _same(instr, instr.args[1])
    return None


@rule("div")
def div_one(instr, cs, facts):
    """div %x, 1.0 -> %x."""
    return _same(instr, instr.args[0]) if cs[1] == 1.0 else None


@rule("where")
def where_constant(instr, cs, facts):
    """where 1.0, %a, %b -> %a;  where 0.0, %a, %b -> %b;  where %c, %a, %a -> %a;
    where %c, 0.0, 0.0 -> const 0.0 (a select between equal constants: a dead cotangent)."""
    _, a, b = instr.args
    if cs[0] is not None:
        return _same(instr, a if cs[0] != 0.0 else b)
    if a is b:
        return _same(instr, a)
    if cs[1] is not None and cs[1] == cs[2]:
        return _const(instr, cs[1])
    return None


@rule("pow")
def pow_one(instr, cs, facts):
    """pow %x {exponent=1.0} -> %x."""
    return _same(instr, instr.args[0]) if instr.attrs["exponent"] == 1.0 else None


@rule("neg")
def neg_neg(instr, cs, facts):
    """neg (neg %x) -> %x."""
    inner = facts.defined_by(instr.args[0], "neg")
    return _same(instr, inner.args[0]) if inner is not None else None


# ---------------------------------------------------------------------------------------------
# Loops


def _zero_scan_outputs(instr: Instr, used: set[int], body: list[Instr], mapping) -> bool:
    """Replace stacked outputs and accumulators that the step always sets to zero."""
    scan = Scan.of(instr)
    step_consts = {id(i.out): i.attrs["value"] for i in scan.step.body if i.op == "const"}
    changed = False
    for r, out in zip(scan.y_results + scan.acc_results, scan.ys + scan.accs):
        if step_consts.get(id(r)) == 0.0 and id(out) in used:
            zero = Value(out.name + "_zero", out.type)
            body.append(Instr("const", (), (zero,), {"value": 0.0, "type": to_seq(out.type)},
                              instr.span, instr.grad))
            mapping[id(out)] = zero
            changed = True
    return changed
