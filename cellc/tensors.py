"""The .cell functions of tensor-valued cells (per-example matrices, heads), as lowering reads
them: their arities, their usage lines for error notes, and the shape arithmetic they need.

    heads(v, NH)        [..., NH*D] -> [..., NH, D]   (a reshape: costs nothing)
    merge(h)            [NH, D] -> [NH*D]            (every axis into one)
    reshape(v, D1, ...) the same numbers in another shape
    outer(a, b)         [..., m], [..., n] -> [..., m, n]
    dot(a, b)           sum over the last axis of a * b
    transpose(A)        the last two axes swapped
    A @ v               A [..., m, k], v [..., k] -> [..., m] (A a state, a value or a parameter)
    sum(v, axis=k), mean(v, axis=k), max(v, axis=k)   along one axis, which goes away

Lowering writes outer and dot with the IR's reshape, elementwise mul and sum_axis, and A @ v as
its matvec (cellc/ops.py), so every backend and the symbolic backward need only those.
"""

from __future__ import annotations

from .shapes import ONE, Dim, TensorType

TENSOR_ARITY = {"heads": 2, "merge": 1, "outer": 2, "dot": 2, "transpose": 1}
TENSOR_USAGE = {"reshape": "reshape(v, D1, D2, ...) with sizes D1, D2, ... whose product is v's"
                           " number of features"}


def heads_shape(t: TensorType, n: Dim) -> tuple[Dim, ...] | None:
    """The shape of heads(v, n): the last axis split in n heads, or None if n does not divide
    it (symbolically: a whole number, or a size symbol in every term)."""
    if t.rank == 0:
        return None
    last = t.shape[-1]
    c = n.constant
    if c is not None:
        if c.denominator != 1 or c <= 0:
            return None
        return t.shape[:-1] + (n, last.divide(int(c)))
    if len(n.terms) != 1 or n.terms[0][1] != 1 or len(n.terms[0][0]) != 1:
        return None
    (sym,) = n.terms[0][0]
    if not last.terms or any(sym not in m for m, _ in last.terms):
        return None
    per_head = []
    for m, coef in last.terms:
        rest = list(m)
        rest.remove(sym)
        per_head.append((tuple(rest), coef))
    return t.shape[:-1] + (n, Dim._make(dict(per_head)))


def drop_axis(shape: tuple[Dim, ...], k: int) -> tuple[Dim, ...]:
    """The shape without axis k; a vector's only axis leaves [1] (sum's result)."""
    rest = shape[:k] + shape[k + 1:]
    return rest or (ONE,)
