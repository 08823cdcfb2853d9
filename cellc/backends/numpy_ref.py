"""The NumPy reference interpreter: the most obvious code, the oracle for every other backend.

`NUMPY` maps each op to a function of (arguments, attributes, context); `run` is one loop over a
function's instructions. Layout: a per-step value is (B, features), a whole-sequence value is
(T*B, features) with rows ordered (t, b), a parameter has no batch axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from ..ir import Func, Instr, scan_parts
from ..lower import CellIR, sequence_program
from ..shapes import Dim, TensorType
from ..source import InternalError


@dataclass(frozen=True)
class Context:
    sizes: Mapping[str, int]
    steps: int  # T
    batch: int  # B
    dtype: np.dtype
    detach_at: int | None = None  # reverse scans: no cotangent flows from step t into t-1


def _feature_axis(t: TensorType) -> int:
    return -t.rank


def _const(args, instr: Instr, ctx: Context):
    value = instr.attrs["value"]
    if isinstance(value, Dim):
        value = float(value.evaluate(ctx.sizes))
    shape = instr.attrs["type"].concrete(ctx.sizes, ctx.steps, ctx.batch)
    return np.full(shape, value, dtype=ctx.dtype)


def _outer(args, instr, ctx):
    a, b = args
    return a.T @ b if a.ndim == 2 else np.outer(a, b)


def _split(args, instr, ctx):
    (x,) = args
    ends = np.cumsum([int(o.type.shape[0].evaluate(ctx.sizes)) for o in instr.outs])[:-1]
    return np.split(x, ends, axis=_feature_axis(instr.args[0].type))


def _concat(args, instr, ctx):
    return np.concatenate(args, axis=_feature_axis(instr.args[0].type))


def _broadcast(args, instr, ctx):
    (x,) = args
    n = int(instr.attrs["size"].evaluate(ctx.sizes))
    return np.broadcast_to(x, x.shape[:-1] + (n,)).copy()


def _unary(fn):
    return lambda args, instr, ctx: fn(args[0])


def _binary(fn):
    return lambda args, instr, ctx: fn(args[0], args[1])


NUMPY: dict[str, Callable[[list[np.ndarray], Instr, Context], Any]] = {
    "const": _const,
    "neg": _unary(np.negative),
    "sigmoid": _unary(lambda x: 1.0 / (1.0 + np.exp(-x))),
    "tanh": _unary(np.tanh),
    "relu": _unary(lambda x: np.maximum(x, 0)),
    "exp": _unary(np.exp),
    "log": _unary(np.log),
    "softplus": _unary(lambda x: np.logaddexp(0, x)),
    "sqrt": _unary(np.sqrt),
    "abs": _unary(np.abs),
    "heaviside": _unary(lambda x: (x > 0).astype(x.dtype)),
    "sign": _unary(np.sign),
    "pow": lambda args, instr, ctx: args[0] ** args[0].dtype.type(instr.attrs["exponent"]),
    "add": _binary(np.add),
    "sub": _binary(np.subtract),
    "mul": _binary(np.multiply),
    "div": _binary(np.divide),
    "min": _binary(np.minimum),
    "max": _binary(np.maximum),
    "ge": _binary(lambda a, b: np.broadcast_arrays(a >= b, a, b)[0].astype(np.result_type(a, b))),
    "matmul": _binary(lambda w, x: x @ w.T),
    "matmul_t": _binary(lambda w, y: y @ w),
    "outer": _outer,
    "sum": _unary(lambda x: x.sum(-1, keepdims=True)),
    "mean": _unary(lambda x: x.mean(-1, keepdims=True)),
    "broadcast": _broadcast,
    "sum_batch": _unary(lambda x: x.sum(0)),
    "split": _split,
    "concat": _concat,
    "scan": None,  # set below: it needs `run`
}


def _scan(args, instr: Instr, ctx: Context):
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
        res = run(step, carry + x_t + list(consts), ctx)
        carry = res[: parts.n_carry]
        if instr.attrs["reverse"] and t == ctx.detach_at:
            carry = [np.zeros_like(c) for c in carry]
        for k, y in enumerate(res[parts.n_carry : parts.n_carry + parts.n_ys]):
            ys[k][t] = y
        acc_t = res[parts.n_carry + parts.n_ys :]
        accs = acc_t if accs is None else [a + b for a, b in zip(accs, acc_t)]
    if accs is None:  # T == 0
        accs = [np.zeros(r.type.concrete(ctx.sizes), ctx.dtype)
                for r in step.results[parts.n_carry + parts.n_ys :]]
    stacked = []
    for k, y in enumerate(ys):
        feat = step.results[parts.n_carry + k].type.concrete(ctx.sizes, 1, B)
        stacked.append(np.concatenate(y, axis=0) if T else np.zeros((0,) + feat[1:], ctx.dtype))
    return list(carry) + stacked + list(accs)


NUMPY["scan"] = _scan


def run(f: Func, args: list[np.ndarray], ctx: Context) -> list[np.ndarray]:
    """Evaluate f on concrete arrays."""
    env = {id(p): a for p, a in zip(f.params, args, strict=True)}
    for instr in f.body:
        fn = NUMPY.get(instr.op)
        if fn is None:
            raise InternalError(f"numpy backend: no rule for op '{instr.op}'")
        out = fn([env[id(a)] for a in instr.args], instr, ctx)
        outs = out if isinstance(out, (list, tuple)) else [out]
        for v, x in zip(instr.outs, outs, strict=True):
            env[id(v)] = np.asarray(x, dtype=ctx.dtype)
    return [env[id(r)] for r in f.results]


# ---------------------------------------------------------------------------------------------
# Cell-level API


def init_params(cell: CellIR, sizes: Mapping[str, int], rng: np.random.Generator | int | None = None,
                dtype=np.float64) -> dict[str, np.ndarray]:
    """Draw every parameter from its initializer."""
    rng = np.random.default_rng(rng)
    out = {}
    for p in cell.params:
        shape = p.type.concrete(sizes)
        args = p.init.values(dict(sizes))
        fn = p.init.fn
        if fn == "uniform":
            x = rng.uniform(args[0], args[1], shape)
        elif fn == "normal":
            x = rng.normal(args[0], args[1], shape)
        elif fn in ("zeros", "ones", "constant"):
            x = np.full(shape, {"zeros": 0.0, "ones": 1.0}.get(fn, args[0] if args else 0.0))
        elif fn == "orthogonal":
            x = orthogonal(shape, rng) * (args[0] if args else 1.0)
        else:
            raise InternalError(f"no initializer '{fn}'")
        out[p.name] = x.astype(dtype)
    return out


def orthogonal(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A (semi-)orthogonal matrix, as torch.nn.init.orthogonal_ draws it."""
    rows, cols = shape
    a = rng.normal(size=(max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    return q if rows >= cols else q.T


def check_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, not {dtype}")
    return dtype


def forward(cell: CellIR, sizes: Mapping[str, int], xs: np.ndarray, params: Mapping[str, np.ndarray],
            states: Mapping[str, np.ndarray] | None = None, dtype=None):
    """Run the cell over a sequence xs of shape (T, B, I).

    Returns (outputs (T, B, H_out), final states {name: (B, H)}). Initial states default to zero.
    """
    dtype = check_dtype(dtype if dtype is not None else xs.dtype)
    T, B = _sequence_dims(xs)
    ctx = Context(dict(sizes), T, B, dtype)
    prog = sequence_program(cell)
    args = _program_args(cell, prog, ctx, xs, params, states)
    res = run(prog, args, ctx)
    n = len(cell.states)
    final = {s.name: r for s, r in zip(cell.states, res[:n])}
    return res[n].reshape(T, B, res[n].shape[-1]), final


def backward(cell: CellIR, sizes: Mapping[str, int], xs: np.ndarray, params: Mapping[str, np.ndarray],
             states: Mapping[str, np.ndarray] | None = None, d_ys: np.ndarray | None = None,
             d_states: Mapping[str, np.ndarray] | None = None, dtype=None,
             detach_at: int | None = None, optimize: bool = True):
    """Forward and symbolic backward over a sequence.

    d_ys (T, B, H_out) and d_states {name: (B, H)} are the cotangents of the outputs and final
    states (zero where not given). Returns (ys, final states, grads) where grads maps "xs", each
    state name (the initial state) and each parameter name to its cotangent. With detach_at=t,
    no gradient flows from step t back into step t-1 (truncated backpropagation through time),
    as if the state entering step t were detached.
    """
    from ..pipeline import compile_program

    dtype = check_dtype(dtype if dtype is not None else xs.dtype)
    T, B = _sequence_dims(xs)
    ctx = Context(dict(sizes), T, B, dtype, detach_at)
    prog = compile_program(cell, optimize=optimize)
    args = _program_args(cell, prog.fwd, ctx, xs, params, states)
    out = run(prog.fwd, args, ctx)
    n = len(cell.states)
    ys = out[n].reshape(T, B, out[n].shape[-1])
    final = {s.name: r for s, r in zip(cell.states, out[:n])}
    d_states = dict(d_states or {})
    seeds = [np.asarray(d_states.pop(s.name, np.zeros_like(final[s.name])), dtype) for s in cell.states]
    if d_states:
        raise ValueError(f"unknown states {sorted(d_states)}")
    d_ys = np.zeros_like(ys) if d_ys is None else np.asarray(d_ys, dtype)
    if d_ys.shape != ys.shape:
        raise ValueError(f"d_ys must have shape {ys.shape}, got {d_ys.shape}")
    seeds.append(d_ys.reshape(T * B, ys.shape[2]))
    grads = run(prog.bwd, out[prog.n_results :] + seeds, ctx)
    names = ["xs"] + [s.name for s in cell.states] + [p.name for p in cell.params]
    grads = dict(zip(names, grads))
    grads["xs"] = grads["xs"].reshape(xs.shape)
    return ys, final, grads


def _sequence_dims(xs) -> tuple[int, int]:
    shape = np.shape(xs)
    if len(shape) != 3:
        raise ValueError(f"xs must have shape (T, B, features), got {shape}")
    return shape[0], shape[1]


def _program_args(cell, prog, ctx, xs, params, states):
    xs = np.asarray(xs, ctx.dtype)
    expect = cell.input.type.concrete(ctx.sizes, 1, ctx.batch)
    if xs.ndim != 3 or xs.shape[1:] != expect:
        raise ValueError(f"xs must have shape (T, {expect[0]}, {expect[1]}), got {xs.shape}")
    states = dict(states or {})
    args = [xs.reshape(ctx.steps * ctx.batch, xs.shape[2])]
    for s in cell.states:
        shape = s.type.concrete(ctx.sizes, 1, ctx.batch)
        v = states.pop(s.name, None)
        v = np.zeros(shape, ctx.dtype) if v is None else np.asarray(v, ctx.dtype)
        if v.shape != shape:
            raise ValueError(f"initial state {s.name!r} must have shape {shape}, got {v.shape}")
        args.append(v)
    if states:
        raise ValueError(f"unknown states {sorted(states)}; the cell has {[s.name for s in cell.states]}")
    for p in cell.params:
        if p.name not in params:
            raise ValueError(f"missing parameter {p.name!r}")
        v = np.asarray(params[p.name], ctx.dtype)
        if v.shape != p.type.concrete(ctx.sizes):
            raise ValueError(f"parameter {p.name!r} must have shape {p.type.concrete(ctx.sizes)}, got {v.shape}")
        args.append(v)
    return args
