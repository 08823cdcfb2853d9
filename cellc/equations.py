"""Print IR as equations in `.cell` notation: the text of `cellc grad`.

A value used once is written inline; a value used more than once, or the cotangent of a value
the user named, gets a line of its own. Forward values the backward reads are written as the
forward expressions they come from (`tanh(c')`, `sigmoid(o)`), so the equations read as math:

    dh' += dy
    dc' += dh' * sigmoid(o) * (1 - tanh(c')^2)
    ...
    dc = dc' * sigmoid(f)

A line `dv += e` means the cotangent arriving from later time steps plus this step's share.
"""

from __future__ import annotations

import re

from .ir import Func, Instr, Value
from .shapes import Dim

_INFIX = {"add": ("+", 1), "sub": ("-", 1), "mul": ("*", 2), "div": ("/", 2), "matmul": ("@", 2)}
_TEMP = re.compile(r"^(t|mm)\d+(_\d+)?$")


def _number(x) -> str:
    if isinstance(x, Dim):
        return str(x)
    return str(int(x)) if float(x).is_integer() else repr(float(x))


class _Printer:
    def __init__(self, names: dict[int, str], forward_exprs: dict[int, tuple[str, int]]):
        self.names = names  # id -> display name for values that get their own line or are inputs
        self.exprs: dict[int, tuple[str, int]] = dict(forward_exprs)  # id -> (text, precedence)

    def ref(self, v: Value, prec: int = 0) -> str:
        if id(v) in self.names:
            return self.names[id(v)]
        text, p = self.exprs.get(id(v), (v.name, 9))
        return f"({text})" if p < prec else text

    def expr(self, i: Instr) -> tuple[str, int]:
        op, a = i.op, i.args
        if op == "const":
            v = i.attrs["value"]
            return (_number(v), 9 if isinstance(v, Dim) or float(v) >= 0 else 3)
        if op in _INFIX:
            sym, p = _INFIX[op]
            right = p + 1 if op in ("sub", "div", "matmul") else p
            return f"{self.ref(a[0], p)} {sym} {self.ref(a[1], right)}", p
        if op == "neg":
            return f"-{self.ref(a[0], 4)}", 3
        if op == "pow":
            return f"{self.ref(a[0], 5)}^{_number(i.attrs['exponent'])}", 4
        if op == "matmul_t":
            return f"{self.ref(a[0], 5)}^T @ {self.ref(a[1], 3)}", 2
        if op == "heaviside":
            return f"({self.ref(a[0], 2)} > 0)", 9
        if op == "ge":
            return f"({self.ref(a[0], 2)} >= {self.ref(a[1], 2)})", 9
        if op == "sum_batch":
            return f"sum_rows({self.ref(a[0])})", 9
        if op == "broadcast":
            return self.ref(a[0], 9), 9
        if op == "split":
            return f"split({self.ref(a[0])}, {len(i.outs)})", 9
        return f"{op}({', '.join(self.ref(x) for x in a)})", 9


def forward_expressions(step: Func) -> dict[int, tuple[str, int]]:
    """Source-like text for each value of a forward step (temporaries inlined)."""
    p = _Printer({}, {})
    for i in step.body:
        if len(i.outs) == 1 and _TEMP.match(i.out.name):
            p.exprs[id(i.out)] = p.expr(i)
    return p.exprs


def _use_counts(f: Func) -> dict[int, int]:
    counts: dict[int, int] = {}
    for i in f.body:
        for a in i.args:
            counts[id(a)] = counts.get(id(a), 0) + 1
    for r in f.results:
        counts[id(r)] = counts.get(id(r), 0) + 1
    return counts


def equations(f: Func, names: dict[int, str], forward: dict[int, tuple[str, int]],
              result_names: list[str], soft_names: dict[int, str] | None = None) -> list[str]:
    """One line per value that needs a name; results get `result_names`. A value with a soft
    name is written inline when used once, and under that name otherwise."""
    soft_names = soft_names or {}
    counts = _use_counts(f)
    p = _Printer(dict(names), forward)
    result_ids = {id(r): n for r, n in zip(f.results, result_names)}
    lines = []
    temp = 0
    for i in f.body:
        if i.op == "scan":
            continue
        if i.op == "split":
            outs = ", ".join(p.names.setdefault(id(o), f"s{k}") for k, o in enumerate(i.outs))
            lines.append(f"{outs} = {p.expr(i)[0]}")
            continue
        (o,) = i.outs
        text, prec = p.expr(i)
        own_name = result_ids.get(id(o)) or p.names.get(id(o))
        if own_name is None and counts.get(id(o), 0) > 1 and i.op != "const":
            temp += id(o) not in soft_names
            own_name = soft_names.get(id(o), f"z{temp}")
        if own_name is None:
            p.exprs[id(o)] = (text, prec)
            continue
        p.names[id(o)] = own_name
        # `dv += e`: the cotangent from later steps plus this step's share.
        if i.op == "add" and p.ref(i.args[0]) == own_name:
            lines.append(f"{own_name} += {p.ref(i.args[1], 1)}")
        elif i.op == "add" and p.ref(i.args[1]) == own_name:
            lines.append(f"{own_name} += {p.ref(i.args[0], 1)}")
        else:
            lines.append(f"{own_name} = {text}")
    for r, n in zip(f.results, result_names):
        if p.ref(r) != n:
            lines.append(f"{n} = {p.ref(r)}")
    return lines
