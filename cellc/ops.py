"""The op registry: every IR op, its arity and its shape rule.

Ops are plain strings; this table is the one place that says which exist. Every other table
(VJP rules, NumPy, torch and LLVM translations) is keyed by the same names, and
`tests/test_coverage.py` checks that each table covers each op it must.

A shape rule takes the argument types and the attributes and returns the output types, or raises
`ShapeMismatch` with a message that lowering attaches to the user's source span.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .shapes import ONE, Batch, Dim, ShapeMismatch, TensorType, broadcast, product

ShapeRule = Callable[[list[TensorType], Mapping[str, Any]], list[TensorType]]


@dataclass(frozen=True)
class OpDef:
    name: str
    arity: int | None  # None: any number of arguments
    shape: ShapeRule
    kind: str  # "elementwise" (row-wise, broadcast shape), "rowwise", "reduce_batch", "other"
    commutative: bool = False


OPS: dict[str, OpDef] = {}


def _register(name: str, arity: int | None, shape: ShapeRule, kind: str, commutative=False):
    OPS[name] = OpDef(name, arity, shape, kind, commutative)


def _same(args, attrs):
    return [args[0]]


def _broadcast(args, attrs):
    return [broadcast(args[0], args[1])]


def _const(args, attrs):
    return [attrs["type"]]


def _where(args, attrs):
    """where(c, a, b): the three broadcast together, as NumPy's where does."""
    c, a, b = args
    try:
        return [broadcast(broadcast(c, a), b)]
    except ShapeMismatch as e:
        raise ShapeMismatch(f"cannot select between {a} and {b} by {c}: {e}") from None


def _matmul(args, attrs):
    w, x = args
    if w.rank != 2 or w.batch is not Batch.NONE:
        raise ShapeMismatch(f"the left side of @ must be a parameter matrix, not {w}")
    if x.rank != 1:
        raise ShapeMismatch(f"the right side of @ must be a vector, not {x}")
    if w.shape[1] != x.shape[0]:
        raise ShapeMismatch(f"cannot multiply {w} by {x}: {w.shape[1]} != {x.shape[0]}")
    return [TensorType((w.shape[0],), x.batch)]


def _matmul_t(args, attrs):
    w, y = args
    assert w.rank == 2 and y.rank == 1 and w.shape[0] == y.shape[0], (w, y)
    return [TensorType((w.shape[1],), y.batch)]


def _outer(args, attrs):
    a, b = args
    assert a.rank == 1 and b.rank == 1 and a.batch == b.batch, (a, b)
    return [TensorType((a.shape[0], b.shape[0]), Batch.NONE)]


def _reduce_features(args, attrs):
    (x,) = args
    if x.rank != 1:
        raise ShapeMismatch(f"can only reduce a vector over its features, not {x}"
                            + ("; give the axis, as in sum(v, axis=-1)" if x.rank > 1 else ""))
    return [x.with_shape((ONE,))]


def _broadcast_to(args, attrs):
    (x,) = args
    assert x.shape == (ONE,), x
    return [x.with_shape((attrs["size"],))]


def _sum_batch(args, attrs):
    (x,) = args
    assert x.batch is not Batch.NONE, x
    return [x.with_batch(Batch.NONE)]


def _split(args, attrs):
    """split {parts=N}: N equal parts; split {sizes=(D1, D2, ...)}: parts of those sizes."""
    (x,) = args
    if x.rank == 0:
        raise ShapeMismatch("cannot split a scalar")
    sizes = attrs.get("sizes") or (x.shape[0].divide(attrs["parts"]),) * attrs["parts"]
    if sum(sizes, start=Dim.of(0)) != x.shape[0]:
        raise ShapeMismatch(f"the sizes {', '.join(map(str, sizes))} of the parts do not add up"
                            f" to {x.shape[0]}")
    return [x.with_shape((d,) + x.shape[1:]) for d in sizes]


def _concat(args, attrs):
    if not args:
        raise ShapeMismatch("concat needs at least one operand")
    first = args[0]
    batch = Batch.NONE
    for a in args:
        if a.rank != first.rank or a.rank == 0 or a.shape[1:] != first.shape[1:]:
            raise ShapeMismatch(f"cannot concatenate {first} and {a}")
        if a.batch is not Batch.NONE:
            if batch is not Batch.NONE and a.batch != batch:
                raise ShapeMismatch("per-step and whole-sequence values cannot be mixed")
            batch = a.batch
    if batch is not Batch.NONE and any(a.batch is Batch.NONE for a in args):
        raise ShapeMismatch("concat mixes per-example values and parameters; add them first")
    total = sum((a.shape[0] for a in args), start=Dim.of(0))
    return [TensorType((total,) + first.shape[1:], batch)]


def _reshape(args, attrs):
    """reshape {shape=(D1, ...)}: the per-example (or parameter) features, in row-major order,
    as that shape; the number of features must not change. The batch axis stays."""
    (x,) = args
    shape = tuple(attrs["shape"])
    if product(shape) != product(x.shape):
        raise ShapeMismatch(f"cannot reshape {x} to [{', '.join(map(str, shape))}]:"
                            f" {product(x.shape)} != {product(shape)} numbers")
    return [x.with_shape(shape)]


def _axis(x: TensorType, attrs) -> int:
    k = attrs["axis"]
    assert 0 <= k < x.rank, (x, k)
    return k


def _sum_axis(args, attrs):
    """sum_axis {axis=k}: the sum over feature axis k, kept as a size-1 axis."""
    (x,) = args
    k = _axis(x, attrs)
    return [x.with_shape(x.shape[:k] + (ONE,) + x.shape[k + 1:])]


def _expand(args, attrs):
    """expand {axis=k, size=n}: a size-1 feature axis k repeated n times (sum_axis's VJP)."""
    (x,) = args
    k = _axis(x, attrs)
    assert x.shape[k] == ONE, (x, k)
    return [x.with_shape(x.shape[:k] + (attrs["size"],) + x.shape[k + 1:])]


def _matvec(args, attrs):
    """matvec: A [..., m, k] times v [..., k], the leading axes broadcast (NumPy's matmul of a
    stack of matrices and a stack of vectors). A is a per-example value or a parameter, v a
    per-example value of A's rank minus one (Builder aligns per-example operands)."""
    a, v = args
    if a.rank < 2 or v.rank != a.rank - 1 or a.shape[-1] != v.shape[-1]:
        raise ShapeMismatch(f"cannot multiply {a} by {v}")
    lead = broadcast(a.with_shape(a.shape[:-2]), v.with_shape(v.shape[:-1]))
    return [TensorType(lead.shape + (a.shape[-2],), lead.batch)]


def _transpose(args, attrs):
    """transpose: the last two feature axes swapped."""
    (x,) = args
    if x.rank < 2:
        raise ShapeMismatch(f"cannot transpose {x}: it has fewer than two axes")
    return [x.with_shape(x.shape[:-2] + (x.shape[-1], x.shape[-2]))]


_register("const", 0, _const, "other")
for _name in ("neg", "sigmoid", "tanh", "relu", "exp", "log", "softplus", "sqrt", "abs",
              "pow", "heaviside", "sign", "elu", "silu", "gelu", "logsigmoid", "stop_gradient",
              "erf"):  # erf: no .cell function; gelu's derivative reads it
    _register(_name, 1, _same, "elementwise")
# Comparisons give 1.0 where true, else 0.0, in the operands' dtype (NaN != NaN is true).
for _name in ("add", "mul", "min", "max", "eq", "ne"):
    _register(_name, 2, _broadcast, "elementwise", commutative=True)
for _name in ("sub", "div", "ge", "lt", "le", "gt", "power"):  # power: x ** y, y a value
    _register(_name, 2, _broadcast, "elementwise")
_register("where", 3, _where, "elementwise")  # where(c, a, b): a where c != 0, else b
_register("matmul", 2, _matmul, "rowwise")
_register("matmul_t", 2, _matmul_t, "rowwise")
_register("sum", 1, _reduce_features, "rowwise")
_register("mean", 1, _reduce_features, "rowwise")
_register("broadcast", 1, _broadcast_to, "rowwise")
_register("split", 1, _split, "rowwise")
_register("concat", None, _concat, "rowwise")
# Tensor-valued cells (per-example values of rank 2 and 3): a movement op, a reduction along one
# axis and its broadcast, a transpose, and the product of a stack of matrices with a stack of
# vectors (C @ q per head). outer and dot are written with these and elementwise mul
# (cellc/lower.py).
_register("reshape", 1, _reshape, "rowwise")
_register("sum_axis", 1, _sum_axis, "rowwise")
_register("max_axis", 1, _sum_axis, "rowwise")  # the maximum along the axis, kept as size 1
_register("expand", 1, _expand, "rowwise")
_register("transpose", 1, _transpose, "rowwise")
_register("matvec", 2, _matvec, "rowwise")
_register("outer", 2, _outer, "reduce_batch")
_register("sum_batch", 1, _sum_batch, "reduce_batch")
# scan's shape rule lives in ir.py: its output types come from its step function.
_register("scan", None, lambda args, attrs: list(attrs["out_types"]), "other")

# Functions a .cell file may call, with the op each lowers to.
UNARY_FUNCTIONS = ("sigmoid", "tanh", "relu", "exp", "log", "softplus", "sqrt", "abs", "elu",
                   "silu", "gelu", "logsigmoid", "stop_gradient")
BINARY_FUNCTIONS = ("min", "max")
REDUCTIONS = ("sum", "mean")
