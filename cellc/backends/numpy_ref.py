"""The NumPy reference interpreter: the most obvious code, the oracle for every other backend.

`NUMPY` is the shared interpreter's op table (backends/interpret.py) over NumPy, whose choices
are written out in `ARRAYS`; `run` is its one loop. Values are computed in the context's dtype,
float64 for gradient checks. Layout: a per-step value is (B, features), a whole-sequence value is
(T*B, features) with rows ordered (t, b), a parameter has no batch axis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..initializers import INITIALIZERS
from ..inputs import is_plain, row_grad_numpy, row_numpy
from ..ir import Func
from ..lower import CellIR, sequence_program
from ..runtime import native_calls
from ..source import InternalError
from ..variants import variant
from . import interpret
from .interpret import Context  # re-exported: tests and callers build contexts

# NumPy has no erf: libm's, element by element (the reference is for small arrays).
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _elu(x):
    """x for x > 0, else e^x - 1 (expm1: exact near 0; min: no overflow warning for large x)."""
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def _gelu(x):
    """x Phi(x) = x (1 + erf(x/sqrt(2)))/2, as torch's gelu (approximate='none') writes it."""
    return x * 0.5 * (1.0 + _erf(x * math.sqrt(0.5)))


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
        "elu": _elu,
        "silu": lambda x: x / (1.0 + np.exp(-x)),
        "gelu": _gelu,
        "erf": _erf,
        "logsigmoid": lambda x: -np.logaddexp(0, -x),
        "stop_gradient": lambda x: x,
        "power": np.power,
    },
    where=np.where,
    # Every value is kept as an array of the context's dtype (a rule may give a NumPy scalar).
    store=lambda x, ctx: np.asarray(x, dtype=ctx.dtype),
    full=lambda shape, value, ctx: np.full(shape, value, dtype=ctx.dtype),
    as_dtype=lambda b, dtype: b.astype(dtype),
    exponent=lambda x, p: x.dtype.type(p),  # p rounded to x's precision
    outer=np.outer,
    split=lambda x, sizes, axis: np.split(x, np.cumsum(sizes)[:-1], axis=axis),
    concat=lambda xs, axis: np.concatenate(xs, axis=axis),
    broadcast=lambda x, n: np.broadcast_to(x, x.shape[:-1] + (n,)).copy(),
    amax=lambda x, axis: x.max(axis, keepdims=True),
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
    """Draw every parameter from its initializer (the NumPy column of cellc/initializers.py):
    constants too, an initializer expression evaluated, and each hyper-parameter at its
    default (a [1] array), so the dict is complete for `forward`."""
    rng = np.random.default_rng(rng)
    out = {}
    for p in variant(cell, sizes).params:
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
            states: Mapping[str, np.ndarray] | None = None, dtype=None,
            lengths=None, mask=None, noise=None):
    """Run the cell over a sequence xs of shape (T, B, I).

    Returns (outputs (T, B, H_out), final states {name: (B, H)}). A state not given starts at
    its initial value (zero unless the cell says, as `state m[H] = -1e30` does), a
    hyper-parameter not in params at its default.
    Sequences of different lengths (`lengths`, B ints in [0, T]) as torch's packed sequences:
    outputs past a row's length are zero, its final state is the one at its last step. Or a
    `mask` (B, T) of bools, as Keras has it (holes allowed): at a False step the states keep
    their values and the output repeats the previous output (zero before the first True step).
    Both run the cell's masked form (cellc/masking.py); at most one of them may be given.
    A cell that reads x[t-1] or noise masks (cellc/inputs.py) gets its step's row built here;
    `noise` maps a mask's name to its array ((T, B, F)), a mask not given takes its eval value
    (dropout 1, zoneout p).
    """
    cell = variant(cell, sizes)  # the form of a cell with an optional size (cellc/variants.py)
    dtype = check_dtype(dtype if dtype is not None else xs.dtype)
    T, B = _sequence_dims(xs)
    xs = _input_row(cell, sizes, xs, params, noise, dtype)
    run_cell, xs, keep = _with_mask(cell, xs, lengths, mask, dtype)
    ctx = Context(dict(sizes), T, B, dtype)
    prog = sequence_program(run_cell)
    args = _program_args(run_cell, prog, ctx, xs, params, states)
    res = run(prog, args, ctx)
    n = len(run_cell.states)
    final = {s.name: r for s, r in zip(cell.states, res[:n])}  # without the masked y_prev
    ys = res[n].reshape(T, B, res[n].shape[-1])
    return _zero_past_lengths(ys, keep, lengths), final


def backward(cell: CellIR, sizes: Mapping[str, int], xs: np.ndarray,
             params: Mapping[str, np.ndarray],
             states: Mapping[str, np.ndarray] | None = None, d_ys: np.ndarray | None = None,
             d_states: Mapping[str, np.ndarray] | None = None, dtype=None,
             detach_at: int | None = None, optimize: bool = True, lengths=None, mask=None,
             noise=None):
    """Forward and symbolic backward over a sequence.

    d_ys (T, B, H_out) and d_states {name: (B, H)} are the cotangents of the outputs and final
    states (zero where not given). Returns (ys, final states, grads) where grads maps "xs", each
    state name (the initial state) and each trained parameter's name to its cotangent
    (constants and hyper-parameters get none: no entry). With detach_at=t,
    no gradient flows from step t back into step t-1 (truncated backpropagation through time),
    as if the state entering step t were detached. `lengths` and `mask` as for `forward`
    (outputs past a row's length are constants, so their cotangents are dropped). `noise` as
    for `forward`: the masks are constants, and grads["xs"] is x's cotangent (cellc/inputs.py).
    """
    from ..pipeline import compile_program

    cell = variant(cell, sizes)
    dtype = check_dtype(dtype if dtype is not None else xs.dtype)
    T, B = _sequence_dims(xs)
    xs = _input_row(cell, sizes, xs, params, noise, dtype)
    I = np.shape(xs)[2]
    run_cell, xs, keep = _with_mask(cell, xs, lengths, mask, dtype)
    ctx = Context(dict(sizes), T, B, dtype, detach_at=detach_at)
    prog = compile_program(run_cell, optimize=optimize)
    args = _program_args(run_cell, prog.fwd, ctx, xs, params, states)
    out = run(prog.fwd, args, ctx)
    n = len(run_cell.states)
    ys = _zero_past_lengths(out[n].reshape(T, B, out[n].shape[-1]), keep, lengths)
    final = {s.name: r for s, r in zip(run_cell.states, out[:n])}
    d_states = dict(d_states or {})
    seeds = [np.asarray(d_states.pop(s.name, np.zeros_like(final[s.name])), dtype)
             for s in cell.states]
    seeds += [np.zeros_like(final[s.name]) for s in run_cell.states[len(cell.states):]]
    if d_states:
        raise ValueError(f"unknown states {sorted(d_states)}")
    d_ys = np.zeros_like(ys) if d_ys is None else np.asarray(d_ys, dtype)
    if d_ys.shape != ys.shape:
        raise ValueError(f"d_ys must have shape {ys.shape}, got {d_ys.shape}")
    d_ys = _zero_past_lengths(d_ys, keep, lengths)  # those outputs are constant zeros
    seeds.append(d_ys.reshape(T * B, ys.shape[2]))
    grads = run(prog.bwd, out[prog.n_results :] + seeds, ctx)
    names = ["xs"] + [s.name for s in run_cell.states] + [p.name for p in cell.params]
    grads = dict(zip(names, grads))
    for p in frozen_params(cell):  # their slots are zeros, not derivatives
        del grads[p.name]
    grads["xs"] = grads["xs"].reshape(xs.shape)[:, :, :I]  # not the mask's column
    grads["xs"] = row_grad_numpy(cell_parts(cell), grads["xs"], part_sizes(cell, sizes))
    for s in run_cell.states[len(cell.states):]:  # nor the masked cell's previous output
        del grads[s.name], final[s.name]
    return ys, final, grads


def cell_parts(cell: CellIR) -> tuple:
    """The parts of the cell's step input row (cellc/inputs.py); () for a plain cell."""
    return tuple(getattr(cell, "input_parts", ()) or ())


def part_sizes(cell: CellIR, sizes: Mapping[str, int]) -> list[int]:
    return [int(p.size.evaluate(dict(sizes))) for p in cell_parts(cell)]


def _input_row(cell, sizes, xs, params, noise, dtype):
    """xs (T, B, I) as the step reads it: itself for a plain cell, else the row of parts."""
    parts = cell_parts(cell)
    if is_plain(parts):
        if noise:
            raise ValueError(f"unknown noise {sorted(noise)}; the cell has no noise masks")
        return xs
    xs = np.asarray(xs, dtype)
    rates = {**hyper_defaults(cell),
             **{k: float(np.reshape(v, -1)[0]) for k, v in params.items()
                if k in hyper_defaults(cell)}}
    return row_numpy(parts, xs, part_sizes(cell, sizes), rates, noise)


def _with_mask(cell, xs, lengths, mask, dtype):
    """(the cell to run, its input, the (T, B) bool mask or None): with `lengths` or `mask`,
    the masked cell (cellc/masking.py) and xs with the mask appended as one more feature."""
    T, B = _sequence_dims(xs)
    if lengths is not None and mask is not None:
        raise ValueError("give lengths or mask, not both")
    if lengths is not None:
        lengths = np.asarray(lengths)
        if (lengths.shape != (B,) or lengths.dtype.kind not in "iu"
                or (B and (lengths.min() < 0 or lengths.max() > T))):
            raise ValueError(f"lengths must be {B} ints in [0, {T}], got {lengths!r}")
        keep = np.arange(T)[:, None] < lengths[None, :]
    elif mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape != (B, T):
            raise ValueError(f"mask must be a bool array of shape ({B}, {T}) (batch, time), got"
                             f" {mask.dtype} {mask.shape}")
        keep = mask.T
    else:
        return cell, xs, None
    from ..masking import masked

    xin = np.concatenate([np.asarray(xs, dtype), keep[:, :, None].astype(dtype)], axis=2)
    return masked(cell), xin, keep


def _zero_past_lengths(ys, keep, lengths):
    """ys with the steps past each row's length zero (torch's packed outputs); a Keras mask
    keeps its repeated outputs."""
    return ys if lengths is None else np.where(keep[:, :, None], ys, 0).astype(ys.dtype)


def _sequence_dims(xs) -> tuple[int, int]:
    shape = np.shape(xs)
    if len(shape) != 3:
        raise ValueError(f"xs must have shape (T, B, features), got {shape}")
    return shape[0], shape[1]


def hyper_defaults(cell: CellIR) -> dict[str, float]:
    """Each hyper-parameter's default (`forget_bias=1.0` in the header): what a call that does
    not give it uses."""
    return {p.name: float(p.init.values({})[0]) for p in cell.params if p.kind == "hyper"}


def frozen_params(cell: CellIR) -> list:
    """The parameters that get no gradient: constants and hyper-parameters."""
    return [p for p, frozen in zip(cell.params, cell.frozen_params) if frozen]


def _program_args(cell, prog, ctx, xs, params, states):
    xs = np.asarray(xs, ctx.dtype)
    expect = cell.input.type.concrete(ctx.sizes, 1, ctx.batch)
    if xs.ndim != 3 or xs.shape[1:] != expect:
        raise ValueError(f"xs must have shape (T, {expect[0]}, {expect[1]}), got {xs.shape}")
    states = dict(states or {})
    args = [xs.reshape(ctx.steps * ctx.batch, xs.shape[2])]
    for k, s in enumerate(cell.states):
        shape = s.type.concrete(ctx.sizes, 1, ctx.batch)
        v = states.pop(s.name, None)
        v = (np.full(shape, cell.initial_value(k, ctx.sizes), ctx.dtype) if v is None
             else np.asarray(v, ctx.dtype))
        if v.shape != shape:
            raise ValueError(f"initial state {s.name!r} must have shape {shape}, got {v.shape}")
        args.append(v)
    if states:
        raise ValueError(f"unknown states {sorted(states)};"
                         f" the cell has {[s.name for s in cell.states]}")
    defaults = hyper_defaults(cell)
    for p in cell.params:
        if p.name not in params and p.name not in defaults:
            raise ValueError(f"missing parameter {p.name!r}")
        v = np.asarray(params.get(p.name, defaults.get(p.name)), ctx.dtype)
        if p.kind == "hyper":
            v = v.reshape(-1) if v.size == 1 else v  # a plain number is the [1] value
        if v.shape != p.type.concrete(ctx.sizes):
            raise ValueError(f"parameter {p.name!r} must have shape"
                             f" {p.type.concrete(ctx.sizes)}, got {v.shape}")
        args.append(v)
    return args
