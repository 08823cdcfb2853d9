"""The NumPy reference interpreter: the most obvious code, the oracle for every other backend.

`NUMPY` is the shared interpreter's op table (backends/interpret.py) over NumPy, whose choices
are written out in `ARRAYS`; `run` is its one loop. Values are computed in the context's dtype,
float64 for gradient checks. Layout: a per-step value is (B, features), a whole-sequence value is
(T*B, features) with rows ordered (t, b), a parameter has no batch axis.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..initializers import INITIALIZERS
from ..ir import Func
from ..lower import CellIR, sequence_program
from ..runtime import native_calls
from ..source import InternalError
from . import interpret
from .interpret import Context  # re-exported: tests and callers build contexts

ARRAYS = interpret.ArrayLib(
    name="numpy",
    functions={
        "neg": np.negative,
        "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
        "tanh": np.tanh,
        "relu": lambda x: np.maximum(x, 0),
        "exp": np.exp,
        "log": np.log,
        "softplus": lambda x: np.logaddexp(0, x),
        "sqrt": np.sqrt,
        "abs": np.abs,
        "sign": np.sign,
        "min": np.minimum,
        "max": np.maximum,
    },
    # Every value is kept as an array of the context's dtype (a rule may give a NumPy scalar).
    store=lambda x, ctx: np.asarray(x, dtype=ctx.dtype),
    full=lambda shape, value, ctx: np.full(shape, value, dtype=ctx.dtype),
    as_dtype=lambda b, dtype: b.astype(dtype),
    exponent=lambda x, p: x.dtype.type(p),  # p rounded to x's precision
    outer=np.outer,
    split=lambda x, sizes, axis: np.split(x, np.cumsum(sizes)[:-1], axis=axis),
    concat=lambda xs, axis: np.concatenate(xs, axis=axis),
    broadcast=lambda x, n: np.broadcast_to(x, x.shape[:-1] + (n,)).copy(),
)

NUMPY = interpret.rules(ARRAYS)


def run(f: Func, args: list[np.ndarray], ctx: Context) -> list[np.ndarray]:
    """Evaluate f on concrete arrays."""
    return interpret.run(ARRAYS, NUMPY, f, args, ctx)


# ---------------------------------------------------------------------------------------------
# Cell-level API


def init_params(cell: CellIR, sizes: Mapping[str, int],
                rng: np.random.Generator | int | None = None,
                dtype=np.float64) -> dict[str, np.ndarray]:
    """Draw every parameter from its initializer (the NumPy column of cellc/initializers.py)."""
    rng = np.random.default_rng(rng)
    out = {}
    for p in cell.params:
        init = INITIALIZERS.get(p.init.fn)
        if init is None:
            raise InternalError(f"no initializer '{p.init.fn}'")
        x = init.numpy(rng, p.type.concrete(sizes), tuple(p.init.values(dict(sizes))))
        out[p.name] = x.astype(dtype)
    return out


# float32 or float64, else TypeError: the one check, kept where the AOT loader can paste it.
check_dtype = native_calls._float_dtype


def forward(cell: CellIR, sizes: Mapping[str, int], xs: np.ndarray,
            params: Mapping[str, np.ndarray],
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


def backward(cell: CellIR, sizes: Mapping[str, int], xs: np.ndarray,
             params: Mapping[str, np.ndarray],
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
    ctx = Context(dict(sizes), T, B, dtype, detach_at=detach_at)
    prog = compile_program(cell, optimize=optimize)
    args = _program_args(cell, prog.fwd, ctx, xs, params, states)
    out = run(prog.fwd, args, ctx)
    n = len(cell.states)
    ys = out[n].reshape(T, B, out[n].shape[-1])
    final = {s.name: r for s, r in zip(cell.states, out[:n])}
    d_states = dict(d_states or {})
    seeds = [np.asarray(d_states.pop(s.name, np.zeros_like(final[s.name])), dtype)
             for s in cell.states]
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
        raise ValueError(f"unknown states {sorted(states)};"
                         f" the cell has {[s.name for s in cell.states]}")
    for p in cell.params:
        if p.name not in params:
            raise ValueError(f"missing parameter {p.name!r}")
        v = np.asarray(params[p.name], ctx.dtype)
        if v.shape != p.type.concrete(ctx.sizes):
            raise ValueError(f"parameter {p.name!r} must have shape"
                             f" {p.type.concrete(ctx.sizes)}, got {v.shape}")
        args.append(v)
    return args
