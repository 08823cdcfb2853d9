"""Print IR as equations in `.cell` notation: the text of `cellc grad`.

A value used once is written inline; a value used more than once, or the cotangent of a value
the user named, gets a line of its own. Forward values the backward reads are written as the
forward expressions they come from (`tanh(c')`, `sigmoid(o)`), so the equations read as math:

    dh' += dy
    dc' += dh' * sigmoid(o) * (1 - tanh(c')^2)
    ...
    dc = dc' * sigmoid(f)

A line `dv += e` means the cotangent arriving from later time steps plus this step's share.

Every name the text uses is a name from the `.cell` file or is defined on an earlier line:
compiler temporaries (`t8_0`, the fused weights `mm5`) are written as the expressions they stand
for, and the names the printer makes up come from one `Namespace`, which never hands out a
`.cell` name or the same name twice.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .ir import Func, Instr, Scan, Value
from .shapes import Dim

if TYPE_CHECKING:
    from .lower import CellIR

_INFIX = {"add": ("+", 1), "sub": ("-", 1), "mul": ("*", 2), "div": ("/", 2), "matmul": ("@", 2)}
_COMPARE = {"ge": ">=", "lt": "<", "le": "<=", "gt": ">", "eq": "==", "ne": "!="}
_TEMP = re.compile(r"^(t|mm)\d+(_\d+)?$")
# `*` and `@` share a level in the .cell grammar and group to the left, so `a * W @ x` would read
# `(a * W) @ x`: a matrix product gets parentheses inside any product, and none inside a sum.
_MATMUL = 1.5
_COPY = re.compile(r"^(.+)_\d+$")  # hoist's copy of a step value, over all T*B rows: z -> z_0


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
            text = f"{self.ref(a[0], p)} {sym} {self.ref(a[1], right)}"
            return text, _MATMUL if op == "matmul" else p
        if op == "neg":
            return f"-{self.ref(a[0], 4)}", 3
        if op == "pow":
            return f"{self.ref(a[0], 5)}^{_number(i.attrs['exponent'])}", 4
        if op == "matmul_t":
            return f"{self.ref(a[0], 5)}^T @ {self.ref(a[1], 3)}", _MATMUL
        if op == "heaviside":
            return f"({self.ref(a[0], 2)} > 0)", 9
        if op in _COMPARE:
            return f"({self.ref(a[0], 2)} {_COMPARE[op]} {self.ref(a[1], 2)})", 9
        if op == "power":
            return f"{self.ref(a[0], 5)}^{self.ref(a[1], 5)}", 4
        if op == "sum_batch":
            return f"sum_rows({self.ref(a[0])})", 9
        if op == "broadcast":
            return self.ref(a[0], 9), 9
        if op == "split":
            # `split(v, N)` as in a .cell file when the parts are equal, else their sizes.
            sizes = [str(d) for d in i.attrs.get("sizes") or ()]
            parts = f"[{', '.join(sizes)}]" if len(set(sizes)) > 1 else str(len(i.outs))
            return f"split({self.ref(a[0])}, {parts})", 9
        return f"{op}({', '.join(self.ref(x) for x in a)})", 9


def forward_expressions(step: Func) -> dict[int, tuple[str, int]]:
    """Source-like text for each value of a forward step (temporaries inlined)."""
    p = _Printer({}, {})
    for i in step.body:
        if len(i.outs) == 1 and _TEMP.match(i.out.name):
            p.exprs[id(i.out)] = p.expr(i)
    return p.exprs


class Namespace:
    """The names the printer makes up (`dW`, `d6`, `z1`): never a name from the `.cell` file,
    never one given out twice. A cotangent is `d` + the name of its value, or `d_` + it where the
    file uses that name itself (a LayerNorm cell may call a centred value `dx`)."""

    def __init__(self, taken: set[str]):
        self.taken = set(taken)
        self.counters: dict[str, int] = {}
        self.cotangents: dict[str, str] = {}

    def unique(self, name: str) -> str:
        """`name`, or `name_1`, `name_2`, ... if it is taken."""
        k, candidate = 0, name
        while candidate in self.taken:
            k += 1
            candidate = f"{name}_{k}"
        self.taken.add(candidate)
        return candidate

    def fresh(self, prefix: str) -> str:
        """The next free numbered name: `z1`, `z2`, ..."""
        while True:
            self.counters[prefix] = k = self.counters.get(prefix, 0) + 1
            if f"{prefix}{k}" not in self.taken:
                self.taken.add(f"{prefix}{k}")
                return f"{prefix}{k}"

    def cotangent(self, name: str) -> str:
        """The cotangent's name for a named value; the same name every time it is asked for."""
        if name not in self.cotangents:
            d = "d" + name
            self.cotangents[name] = d if d not in self.taken else self.unique("d_" + name)
            self.taken.add(self.cotangents[name])
        return self.cotangents[name]


def source_names(cell: CellIR) -> set[str]:
    """The names a `.cell` file defines: sizes, input, states and next states, params, values."""
    names = {s.symbol for s in cell.sizes} | {cell.input.name} | {p.name for p in cell.params}
    names |= {s.name for s in cell.states} | {s.name + "'" for s in cell.states}
    names |= {o.name for i in cell.step.body for o in i.outs if not _TEMP.match(o.name)}
    return names


def forward_texts(fwd: Func, cell: CellIR) -> tuple[dict[int, tuple[str, int]], dict[int, str]]:
    """Text for every value of the training forward `fwd` (the whole sequence, its step inside),
    as the backward's equations should show it, and the source name of those that have one.

    A value the `.cell` file named keeps that name, also where `hoist` copied it out of the loop
    (`z_0` is `z` over all T*B rows); a parameter, the input sequence and a state's initial value
    (`h0`) are named too. Every other value is its expression, temporaries inlined: the fused
    weights of `fuse_matmul` read `concat(U_z, U_r)`, a part of their product `W_z @ x`. A step's
    parameters read as the outer values they receive, a stacked output as the step's value.
    """
    source = source_names(cell)
    p = _Printer({}, {})
    named: dict[int, str] = {id(fwd.params[0]): cell.input.name}
    named.update((id(v), s.name + "0") for v, s in zip(fwd.params[1:], cell.states))
    named.update((id(v), v.name) for v in fwd.params[1 + len(cell.states) :])
    defs: dict[int, Instr] = {}  # value -> its instruction, looking through the scan boundary

    def name_of(v: Value) -> str | None:
        if v.name in source:
            return v.name
        copy = _COPY.match(v.name)
        return copy[1] if copy and copy[1] in source else None

    def matmul_parts(i: Instr) -> list[str] | None:
        """`W_a @ x`, `W_b @ x` for `split(concat(W_a, W_b) @ x)`, the shape fuse_matmul makes."""
        mm = defs.get(id(i.args[0]))
        w = mm and mm.op == "matmul" and defs.get(id(mm.args[0]))
        if not w or w.op != "concat" or len(w.args) != len(i.outs):
            return None
        return [f"{p.ref(wk, 5)} @ {p.ref(mm.args[1], 3)}" for wk in w.args]

    def visit(f: Func):
        for i in f.body:
            defs.update((id(o), i) for o in i.outs)
            if i.op == "scan":
                scan = Scan.of(i)
                named.update((id(sp), sp.name) for sp in scan.carry_params)  # the states: h, c
                for a, sp in zip(scan.xs + scan.consts, scan.x_params + scan.const_params):
                    p.exprs[id(sp)] = p.exprs.get(id(a), (a.name, 9))
                    defs[id(sp)] = defs.get(id(a))
                    if id(a) in named:
                        named[id(sp)] = named[id(a)]
                visit(scan.step)
                for o, r in zip(scan.ys + scan.accs, scan.y_results + scan.acc_results):
                    p.exprs[id(o)] = p.exprs.get(id(r), (r.name, 9))
                    if id(r) in named:
                        named[id(o)] = named[id(r)]
                continue
            parts = matmul_parts(i) if i.op == "split" else None
            for k, o in enumerate(i.outs):
                if (n := name_of(o)) is not None:
                    named[id(o)] = n
                    p.exprs[id(o)] = (n, 9)
                elif len(i.outs) == 1:
                    p.exprs[id(o)] = p.expr(i)
                else:  # a part of a split the file did not name
                    p.exprs[id(o)] = (parts[k], _MATMUL) if parts else (f"{p.expr(i)[0]}[{k}]", 9)

    for v in fwd.params:
        p.exprs[id(v)] = (named[id(v)], 9)
    visit(fwd)
    return p.exprs, named


def _use_counts(f: Func) -> dict[int, int]:
    counts: dict[int, int] = {}
    for i in f.body:
        for a in i.args:
            counts[id(a)] = counts.get(id(a), 0) + 1
    for r in f.results:
        counts[id(r)] = counts.get(id(r), 0) + 1
    return counts


def equations(f: Func, names: dict[int, str], forward: dict[int, tuple[str, int]],
              result_names: list[str], soft_names: dict[int, str], ns: Namespace) -> list[str]:
    """One line per value that needs a name; results get `result_names`. A value with a soft
    name is written inline when used once, and under that name otherwise; other values used
    more than once get a fresh `z1`, `z2`, ... from `ns`."""
    counts = _use_counts(f)
    p = _Printer(dict(names), forward)
    result_ids = {id(r): n for r, n in zip(f.results, result_names)}
    lines = []
    for i in f.body:
        if i.op == "scan":
            continue
        if i.op == "split":  # parts that are results take the results' names: dW_z, dW_r = ...
            outs = [result_ids.get(id(o)) or p.names.get(id(o)) or ns.fresh("s") for o in i.outs]
            p.names.update((id(o), n) for o, n in zip(i.outs, outs))
            lines.append(f"{', '.join(outs)} = {p.expr(i)[0]}")
            continue
        (o,) = i.outs
        text, prec = p.expr(i)
        own_name = result_ids.get(id(o)) or p.names.get(id(o))
        if own_name is None and counts.get(id(o), 0) > 1 and i.op != "const":
            own_name = soft_names.get(id(o)) or ns.fresh("z")
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
