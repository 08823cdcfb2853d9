"""Sizes in a plan: a Python int (a specialized plan, or a literal size) or, in a generic plan,
a `Dim` (a polynomial in the cell's size symbols, known only when the kernel runs).

The planner and the checker combine sizes only through `add` and `mul`, which keep ints ints
(so a specialized plan is exactly what it was) and turn a `Dim` that comes out constant back
into an int (so a literal 1 is still 1, while a symbolic size is never taken for 1).
"""

from __future__ import annotations

from functools import reduce

from ..shapes import Dim
from ..source import InternalError

Size = int | Dim


def size(d: Dim, sizes: dict | None) -> Size:
    """A shape's dim: evaluated for concrete sizes, else an int when it has no symbols."""
    v = d.evaluate(sizes) if sizes is not None else d.constant
    if v is None:
        return d
    if v.denominator != 1:
        raise InternalError(f"size {d} is not whole for {sizes}")
    return int(v)


def _norm(d: Dim) -> Size:
    v = d.constant
    return d if v is None else size(d, None)


def add(x: Size, y: Size) -> Size:
    if isinstance(x, int) and isinstance(y, int):
        return x + y
    return _norm(Dim.of(x) + Dim.of(y))


def mul(x: Size, y: Size) -> Size:
    if isinstance(x, int) and isinstance(y, int):
        return x * y
    return _norm(Dim.of(x) * Dim.of(y))


def total(xs) -> Size:
    return reduce(add, xs, 0)


def symbolic(x) -> bool:
    return isinstance(x, Dim)


def factor(x) -> str:
    """x as a factor of a product in text: a sum of terms in parentheses (`r*(H + I)`)."""
    text = str(x)
    return f"({text})" if isinstance(x, Dim) and len(x.terms) > 1 else text
