"""One interpreter of IR functions, written once over an array library (NumPy or torch).

`rules(xp)` is the op table (op -> rule(arguments, instruction, context)) for the array library
described by `xp`, an `ArrayLib`; `run` is the one loop over a function's instructions. The NumPy
reference (numpy_ref) and the eager torch interpreter (torch_eager) are this table and loop over
their own `ArrayLib`, so the two oracles cannot drift apart op by op: what differs between the
libraries is only what their `ArrayLib` says.

Layout: a per-step value is (B, features), a whole-sequence value is (T*B, features) with rows
ordered (t, b), a parameter has no batch axis.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..ir import Func, Instr, scan_parts
from ..shapes import Dim, TensorType
from ..source import InternalError


@dataclass(frozen=True)
class Context:
    sizes: Mapping[str, int]
    steps: int  # T
    batch: int  # B
    dtype: Any  # np.dtype or torch.dtype: the precision every value is computed in
    device: Any = None  # torch only
    detach_at: int | None = None  # reverse scans: no cotangent flows from step t into t-1


Rule = Callable[[list, Instr, Context], Any]


@dataclass(frozen=True)
class ArrayLib:
    """What the rules need from an array library, where the libraries spell it differently.

    Everything else (slicing, `@`, `.T`, `.sum`, `+ - * /`, comparisons) is written once in the
    rules, since NumPy arrays and torch tensors agree on it."""

    name: str  # names the backend in "numpy backend: no rule for op 'tanh'"
    # op -> array function, applied to the op's arguments (neg, sigmoid, ..., min, max)
    functions: Mapping[str, Callable[..., Any]]
    where: Callable[[Any, Any, Any], Any]  # (bool array, a, b) -> a where true, else b
    store: Callable[[Any, Context], Any]  # a rule's result as the environment keeps it
    full: Callable[[tuple, float, Context], Any]  # an array of one value in the context's dtype
    as_dtype: Callable[[Any, Any], Any]  # booleans (a comparison) as 0/1 of a dtype
    exponent: Callable[[Any, float], Any]  # pow's exponent as the library raises x to it
    outer: Callable[[Any, Any], Any]  # outer product of two vectors
    split: Callable[[Any, list[int], int], list]  # parts of the given sizes along an axis
    concat: Callable[[list, int], Any]
    broadcast: Callable[[Any, int], Any]  # (..., 1) -> (..., n)
    amax: Callable[[Any, int], Any]  # the maximum along an axis, kept as size 1


def _feature_axis(t: TensorType) -> int:
    return -t.rank


def _const(xp: ArrayLib, args, instr: Instr, ctx: Context):
    value = instr.attrs["value"]
    if isinstance(value, Dim):
        value = float(value.evaluate(ctx.sizes))
    shape = instr.attrs["type"].concrete(ctx.sizes, ctx.steps, ctx.batch)
    return xp.full(shape, value, ctx)


def _outer(xp: ArrayLib, args, instr, ctx):
    a, b = args  # (rows, m) and (rows, n) sum over rows; two vectors give an (m, n) matrix
    return a.T @ b if a.ndim == 2 else xp.outer(a, b)


def _split(xp: ArrayLib, args, instr, ctx):
    (x,) = args  # equal parts {parts=N} or given sizes {sizes=(...)}: the output types say which
    sizes = [int(o.type.shape[0].evaluate(ctx.sizes)) for o in instr.outs]
    return xp.split(x, sizes, _feature_axis(instr.args[0].type))


def _concat(xp: ArrayLib, args, instr, ctx):
    return xp.concat(list(args), _feature_axis(instr.args[0].type))


def _broadcast(xp: ArrayLib, args, instr, ctx):
    (x,) = args
    return xp.broadcast(x, int(instr.attrs["size"].evaluate(ctx.sizes)))



def _reshape(args, instr, ctx):
    (x,) = args
    shape = tuple(int(d.evaluate(ctx.sizes)) for d in instr.attrs["shape"])
    return x.reshape(x.shape[:instr.args[0].type.batch_axes] + shape)


def _sum_axis(args, instr, ctx):
    return args[0].sum(instr.args[0].type.batch_axes + instr.attrs["axis"], keepdims=True)


def _max_axis(xp: ArrayLib, args, instr, ctx):
    return xp.amax(args[0], instr.args[0].type.batch_axes + instr.attrs["axis"])


def _expand(xp: ArrayLib, args, instr, ctx):
    (x,) = args
    features = instr.outs[0].type.bound(ctx.sizes).features
    return x + xp.full(x.shape[:instr.args[0].type.batch_axes] + features, 0.0, ctx)


def _compare(compare, xp: ArrayLib, args, instr, ctx):
    a, b = args
    return xp.as_dtype(compare(a, b), ctx.dtype)  # broadcasts a and b; the result is 0/1


COMPARISONS = {"ge": operator.ge, "lt": operator.lt, "le": operator.le, "gt": operator.gt,
               "eq": operator.eq, "ne": operator.ne}


def _pow(xp: ArrayLib, args, instr, ctx):
    return args[0] ** xp.exponent(args[0], instr.attrs["exponent"])


def _apply(fn):
    return lambda args, instr, ctx: fn(*args)


def _scan(xp: ArrayLib, table: dict[str, Rule], args, instr: Instr, ctx: Context):
    """Run the step over t = 0..T-1 (or T-1..0 if reversed), slicing xs by rows of B."""
    step: Func = instr.attrs["step"]
    parts = scan_parts(instr)
    carry, xs, consts = parts.split_args(list(args))
    B, T = ctx.batch, ctx.steps
    ys = [[None] * T for _ in range(parts.n_ys)]
    accs = None
    order = range(T - 1, -1, -1) if instr.attrs["reverse"] else range(T)
    for t in order:
        x_t = [x[t * B : (t + 1) * B] for x in xs]
        res = run(xp, table, step, carry + x_t + list(consts), ctx)
        carry = res[: parts.n_carry]
        if instr.attrs["reverse"] and t == ctx.detach_at:
            carry = [xp.full(c.shape, 0.0, ctx) for c in carry]
        for k, y in enumerate(res[parts.n_carry : parts.n_carry + parts.n_ys]):
            ys[k][t] = y
        acc_t = res[parts.n_carry + parts.n_ys :]
        accs = acc_t if accs is None else [a + b for a, b in zip(accs, acc_t)]
    if accs is None:  # T == 0
        accs = [xp.full(r.type.concrete(ctx.sizes), 0.0, ctx)
                for r in step.results[parts.n_carry + parts.n_ys :]]
    stacked = []
    for k, y in enumerate(ys):
        feat = step.results[parts.n_carry + k].type.concrete(ctx.sizes, 1, B)
        stacked.append(xp.concat(y, 0) if T else xp.full((0,) + feat[1:], 0.0, ctx))
    return list(carry) + stacked + list(accs)


def rules(xp: ArrayLib) -> dict[str, Rule]:
    """The op table for one array library. Its `scan` runs the step with this same table, so a
    row removed from it (a test does that) is missing inside loops too."""
    table: dict[str, Rule] = {name: _apply(fn) for name, fn in xp.functions.items()}
    table.update({
        "const": partial(_const, xp),
        "heaviside": lambda args, instr, ctx: xp.as_dtype(args[0] > 0, args[0].dtype),
        "pow": partial(_pow, xp),
        "add": _apply(operator.add),
        "sub": _apply(operator.sub),
        "mul": _apply(operator.mul),
        "div": _apply(operator.truediv),
        **{op: partial(_compare, fn, xp) for op, fn in COMPARISONS.items()},
        "where": _apply(lambda c, a, b: xp.where(c != 0, a, b)),
        "matmul": _apply(lambda w, x: x @ w.T),
        "matmul_t": _apply(lambda w, y: y @ w),
        "outer": partial(_outer, xp),
        "sum": _apply(lambda x: x.sum(-1, keepdims=True)),
        "mean": _apply(lambda x: x.mean(-1, keepdims=True)),
        "broadcast": partial(_broadcast, xp),
        "sum_batch": _apply(lambda x: x.sum(0)),
        "reshape": _reshape,
        "sum_axis": _sum_axis,
        "max_axis": partial(_max_axis, xp),
        "expand": partial(_expand, xp),
        "transpose": _apply(lambda x: x.swapaxes(-1, -2)),
        "matvec": _apply(lambda a, v: (a @ v[..., None])[..., 0]),
        "split": partial(_split, xp),
        "concat": partial(_concat, xp),
    })
    table["scan"] = partial(_scan, xp, table)
    return table


def run(xp: ArrayLib, table: Mapping[str, Rule], f: Func, args: list, ctx: Context) -> list:
    """Evaluate f on concrete arrays with the rules of `table`."""
    env = {id(p): a for p, a in zip(f.params, args, strict=True)}
    for instr in f.body:
        rule = table.get(instr.op)
        if rule is None:
            raise InternalError(f"{xp.name} backend: no rule for op '{instr.op}'")
        out = rule([env[id(a)] for a in instr.args], instr, ctx)
        outs = out if isinstance(out, (list, tuple)) else [out]
        for v, x in zip(instr.outs, outs, strict=True):
            env[id(v)] = xp.store(x, ctx)
    return [env[id(r)] for r in f.results]
