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
    op: str  # add sub mul div matmul pow
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


Expr = Num | Name | BinOp | Neg | Call


@dataclass(frozen=True)
class SizeArg:
    arg: Name  # constructor argument name, e.g. hidden_size
    symbol: Name  # the size symbol used in shapes, e.g. H


@dataclass(frozen=True)
class Declared:
    name: Name
    dims: tuple[Expr, ...] | None  # None: no brackets (a scalar, stored as [1])
    span: Span


@dataclass(frozen=True)
class Decl:
    kind: str  # input state param bias
    names: tuple[Declared, ...]
    init: Call | None
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


Statement = Decl | Assign | Output


@dataclass(frozen=True)
class Cell:
    name: Name
    sizes: tuple[SizeArg, ...]
    body: tuple[Statement, ...]
    span: Span


def format_expr(e: Expr) -> str:
    """Source-like text of an expression (used by `cellc show --emit ast`)."""
    if isinstance(e, Num):
        return repr(e.value) if e.value != int(e.value) else str(int(e.value))
    if isinstance(e, Name):
        return e.id
    if isinstance(e, Neg):
        inner = format_expr(e.operand)
        # A BinOp prints its own parentheses; only a nested negation needs more.
        return f"-({inner})" if isinstance(e.operand, Neg) else f"-{inner}"
    if isinstance(e, Call):
        return f"{e.fn.id}({', '.join(format_expr(a) for a in e.args)})"
    sym = {"add": "+", "sub": "-", "mul": "*", "div": "/", "matmul": "@", "pow": "^"}[e.op]
    return f"({format_expr(e.lhs)} {sym} {format_expr(e.rhs)})"


def format_cell(cell: Cell) -> str:
    sizes = ", ".join(f"{s.arg.id} {s.symbol.id}" for s in cell.sizes)
    lines = [f"Cell {cell.name.id}({sizes})"]
    for st in cell.body:
        if isinstance(st, Decl):
            items = []
            for d in st.names:
                dims = ("" if d.dims is None
                        else "[" + ", ".join(format_expr(x) for x in d.dims) + "]")
                items.append(d.name.id + dims)
            init = f" ~ {format_expr(st.init)}" if st.init else ""
            lines.append(f"  Decl {st.kind} {', '.join(items)}{init}    # line {st.span.line}")
        elif isinstance(st, Assign):
            targets = ", ".join(t.id for t in st.targets)
            lines.append(f"  Assign {targets} = {format_expr(st.value)}    # line {st.span.line}")
        else:
            lines.append(f"  Output {', '.join(n.id for n in st.names)}    # line {st.span.line}")
    return "\n".join(lines)
