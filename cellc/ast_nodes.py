"""The syntax tree of a `.cell` file: frozen dataclasses, each with the span it was parsed from."""

from __future__ import annotations

from dataclasses import dataclass

from .source import Span


@dataclass(frozen=True)
class Num:
    value: float
    span: Span


@dataclass(frozen=True)
class Name:
    id: str  # may end in a prime: "c'"
    span: Span


@dataclass(frozen=True)
class BinOp:
    op: str  # add sub mul div matmul pow, or a comparison: lt le gt ge eq ne
    lhs: Expr
    rhs: Expr
    span: Span


@dataclass(frozen=True)
class Neg:
    operand: Expr
    span: Span


@dataclass(frozen=True)
class Call:
    fn: Name
    args: tuple[Expr, ...]
    span: Span
    keywords: tuple[tuple[Name, Expr], ...] = ()  # per=sequence


@dataclass(frozen=True)
class Shifted:
    """An indexed name, `x[t-1]`: the input at the previous step (lowering accepts only
    that index)."""

    name: Name
    index: Expr
    span: Span


@dataclass(frozen=True)
class Either:
    """`P or H` in a size: P, or H where the optional size P is 0."""

    lhs: Expr
    rhs: Expr
    span: Span


@dataclass(frozen=True)
class Cond:
    """`A if P else B`: A, or B where the optional size P is 0 (only that branch is lowered)."""

    then: Expr
    test: Expr
    orelse: Expr
    span: Span


Expr = Num | Name | BinOp | Neg | Call | Shifted | Either | Cond


@dataclass(frozen=True)
class SizeArg:
    arg: Name  # constructor argument name, e.g. hidden_size
    symbol: Name  # the size symbol used in shapes, e.g. H
    default: Num | None = None  # `proj_size P = 0`: an optional size, 0 (absent) by default


@dataclass(frozen=True)
class HyperArg:
    """A float hyper-parameter of the header, `forget_bias=1.0`: a constructor keyword. Or a
    choice among functions, `nonlinearity in (tanh, relu)`: a string keyword (default the
    first), called in the body as the function it names."""

    name: Name
    default: Expr | None  # None: written without a default (an error lowering reports)
    span: Span
    choices: tuple[Name, ...] = ()  # the functions of a choice; () for a number


@dataclass(frozen=True)
class Declared:
    name: Name
    dims: tuple[Expr, ...] | None  # None: no brackets (a scalar, stored as [1])
    span: Span


@dataclass(frozen=True)
class Decl:
    kind: str  # input state param bias const
    names: tuple[Declared, ...]
    init: Expr | None  # after `~`: a named initializer's call, or an expression (arange(...))
    span: Span
    value: Expr | None = None  # after `=`: a state's initial value


@dataclass(frozen=True)
class Def:
    """`def ln(z) = (z - mean(z)) / sqrt(var(z) + 1e-5)`: a function, expanded where called."""

    name: Name
    params: tuple[Name, ...]
    body: Expr
    span: Span


@dataclass(frozen=True)
class Assign:
    targets: tuple[Name, ...]
    value: Expr
    span: Span


@dataclass(frozen=True)
class Output:
    names: tuple[Name, ...]
    span: Span


Statement = Decl | Def | Assign | Output


@dataclass(frozen=True)
class Cell:
    name: Name
    sizes: tuple[SizeArg, ...]
    body: tuple[Statement, ...]
    span: Span
    hypers: tuple[HyperArg, ...] = ()  # in header order, after or among the sizes


# Comparison operators and the op each is (1.0 where true, else 0.0).
COMPARISONS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}


def format_expr(e: Expr) -> str:
    """Source-like text of an expression (used by `cellc show --emit ast`)."""
    if isinstance(e, Num):
        whole = e.value == int(e.value) and abs(e.value) < 1e15  # 1e30 stays 1e+30
        return str(int(e.value)) if whole else repr(e.value)
    if isinstance(e, Name):
        return e.id
    if isinstance(e, Neg):
        inner = format_expr(e.operand)
        # A BinOp prints its own parentheses; only a nested negation needs more.
        return f"-({inner})" if isinstance(e.operand, Neg) else f"-{inner}"
    if isinstance(e, Call):
        args = [format_expr(a) for a in e.args]
        args += [f"{k.id}={format_expr(v)}" for k, v in e.keywords]
        return f"{e.fn.id}({', '.join(args)})"
    if isinstance(e, Either):
        return f"({format_expr(e.lhs)} or {format_expr(e.rhs)})"
    if isinstance(e, Cond):
        return f"({format_expr(e.then)} if {format_expr(e.test)} else {format_expr(e.orelse)})"
    if isinstance(e, Shifted):
        index = format_expr(e.index)
        index = index[1:-1] if index.startswith("(") else index
        return f"{e.name.id}[{index.replace(' ', '')}]"  # as written: x[t-1]
    sym = {"add": "+", "sub": "-", "mul": "*", "div": "/", "matmul": "@", "pow": "^",
           **COMPARISONS}[e.op]
    return f"({format_expr(e.lhs)} {sym} {format_expr(e.rhs)})"


def _position(span: Span) -> tuple[int, int]:
    return span.line, span.col


def _header_arg(a: SizeArg | HyperArg) -> str:
    if isinstance(a, SizeArg):
        return f"{a.arg.id} {a.symbol.id}" + ("" if a.default is None else " = 0")
    if a.choices:
        return f"{a.name.id} in ({', '.join(c.id for c in a.choices)})"
    return a.name.id + ("" if a.default is None else f"={format_expr(a.default)}")


def format_cell(cell: Cell) -> str:
    header = sorted((*cell.sizes, *cell.hypers),
                    key=lambda a: _position(a.arg.span if isinstance(a, SizeArg) else a.span))
    lines = [f"Cell {cell.name.id}({', '.join(_header_arg(a) for a in header)})"]
    for st in cell.body:
        if isinstance(st, Def):
            params = ", ".join(p.id for p in st.params)
            lines.append(f"  Def {st.name.id}({params}) = {format_expr(st.body)}"
                         f"    # line {st.span.line}")
        elif isinstance(st, Decl):
            items = []
            for d in st.names:
                dims = ("" if d.dims is None
                        else "[" + ", ".join(format_expr(x) for x in d.dims) + "]")
                items.append(d.name.id + dims)
            init = f" ~ {format_expr(st.init)}" if st.init else ""
            init += f" = {format_expr(st.value)}" if st.value is not None else ""
            lines.append(f"  Decl {st.kind} {', '.join(items)}{init}    # line {st.span.line}")
        elif isinstance(st, Assign):
            targets = ", ".join(t.id for t in st.targets)
            lines.append(f"  Assign {targets} = {format_expr(st.value)}    # line {st.span.line}")
        else:
            lines.append(f"  Output {', '.join(n.id for n in st.names)}    # line {st.span.line}")
    return "\n".join(lines)
