"""The plain-autograd torch interpreter: the IR run op by op on torch tensors, driving the layers.

`TORCH_EAGER` maps each op to a function of (arguments, instruction, context) with exactly the
semantics of `numpy_ref.NUMPY` (same layouts: a per-step value is (B, features), a parameter has
no batch axis); `run` is one loop over a function's instructions. Autograd differentiates the
result, so this backend needs no backward IR: it is the torch-side oracle for the compiled ones.

`run_direction_eager` wraps the step function in a Python time loop that follows the
`run_direction` contract of `cellc.runtime.torch_layers`, and `load_eager` puts the two together:

    LSTM, LSTMCell = load_eager("cells/lstm.cell")
    lstm = LSTM(8, 16, num_layers=2, bidirectional=True)   # loads torch.nn.LSTM state dicts
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..frontend import load_file
from ..ir import Func, Instr
from ..lower import CellIR, eval_number
from ..runtime.torch_layers import make_layer
from ..shapes import Batch, Dim, TensorType
from ..source import InternalError


@dataclass(frozen=True)
class Context:
    sizes: Mapping[str, int]
    steps: int  # T
    batch: int  # B
    dtype: torch.dtype
    device: torch.device


def _feature_axis(t: TensorType) -> int:
    return -t.rank


def _const(args, instr: Instr, ctx: Context):
    value = instr.attrs["value"]
    if isinstance(value, Dim):
        value = float(value.evaluate(ctx.sizes))
    shape = instr.attrs["type"].concrete(ctx.sizes, ctx.steps, ctx.batch)
    return torch.full(shape, value, dtype=ctx.dtype, device=ctx.device)


def _outer(args, instr, ctx):
    a, b = args
    return a.T @ b if a.dim() == 2 else torch.outer(a, b)


def _split(args, instr, ctx):
    (x,) = args  # equal parts {parts=N} or given sizes {sizes=(...)}: the output types say which
    sizes = [int(o.type.shape[0].evaluate(ctx.sizes)) for o in instr.outs]
    return list(torch.split(x, sizes, dim=_feature_axis(instr.args[0].type)))


def _concat(args, instr, ctx):
    return torch.cat(args, dim=_feature_axis(instr.args[0].type))


def _broadcast(args, instr, ctx):
    (x,) = args
    n = int(instr.attrs["size"].evaluate(ctx.sizes))
    return x.expand(*x.shape[:-1], n)


def _ge(args, instr, ctx):
    a, b = args
    return (a >= b).to(ctx.dtype)  # the comparison broadcasts a and b; the result is 0/1


def _unary(fn):
    return lambda args, instr, ctx: fn(args[0])


def _binary(fn):
    return lambda args, instr, ctx: fn(args[0], args[1])


TORCH_EAGER: dict[str, Callable[[list[torch.Tensor], Instr, Context], Any]] = {
    "const": _const,
    "neg": _unary(torch.neg),
    "sigmoid": _unary(torch.sigmoid),
    "tanh": _unary(torch.tanh),
    "relu": _unary(torch.relu),
    "exp": _unary(torch.exp),
    "log": _unary(torch.log),
    # log(1 + e^x) exactly, as numpy's logaddexp(0, x); F.softplus switches to x above 20.
    "softplus": _unary(lambda x: torch.logaddexp(x, torch.zeros_like(x))),
    "sqrt": _unary(torch.sqrt),
    "abs": _unary(torch.abs),
    "heaviside": _unary(lambda x: (x > 0).to(x.dtype)),
    "sign": _unary(torch.sign),
    "pow": lambda args, instr, ctx: args[0] ** float(instr.attrs["exponent"]),
    "add": _binary(torch.add),
    "sub": _binary(torch.sub),
    "mul": _binary(torch.mul),
    "div": _binary(torch.div),
    "min": _binary(torch.minimum),
    "max": _binary(torch.maximum),
    "ge": _ge,
    "matmul": _binary(lambda w, x: x @ w.T),
    "matmul_t": _binary(lambda w, y: y @ w),
    "outer": _outer,
    "sum": _unary(lambda x: x.sum(-1, keepdim=True)),
    "mean": _unary(lambda x: x.mean(-1, keepdim=True)),
    "broadcast": _broadcast,
    "sum_batch": _unary(lambda x: x.sum(0)),
    "split": _split,
    "concat": _concat,
    # No "scan": the eager driver loops over time in Python (run_direction_eager).
}


def run(f: Func, args: list[torch.Tensor], ctx: Context) -> list[torch.Tensor]:
    """Evaluate f on tensors, recording autograd history."""
    env = {id(p): a for p, a in zip(f.params, args, strict=True)}
    for instr in f.body:
        fn = TORCH_EAGER.get(instr.op)
        if fn is None:
            raise InternalError(f"torch eager backend: no rule for op '{instr.op}'")
        out = fn([env[id(a)] for a in instr.args], instr, ctx)
        outs = out if isinstance(out, (list, tuple)) else [out]
        for v, x in zip(instr.outs, outs, strict=True):
            env[id(v)] = x
    return [env[id(r)] for r in f.results]


def run_step(step: Func, args: list[torch.Tensor], sizes: Mapping[str, int]) -> list[torch.Tensor]:
    """Run a step function once; the batch, dtype and device come from its tensor arguments."""
    batch = next((a.shape[0] for p, a in zip(step.params, args) if p.type.batch is Batch.STEP), 1)
    first = args[0] if args else torch.empty(())
    ctx = Context(dict(sizes), 1, batch, first.dtype, first.device)
    return run(step, list(args), ctx)


def run_direction_eager(cell: CellIR, sizes: Mapping[str, int]):
    """The run_direction of `cellc.runtime.torch_layers` for one set of sizes (symbol -> int):
    a Python loop over time that calls the step function, masking finished rows."""
    cell.bind(**{s.arg: sizes[s.symbol] for s in cell.sizes})  # ValueError for impossible sizes
    sizes = dict(sizes)
    step, n = cell.step, len(cell.states)
    out_size = int(step.results[n].type.shape[0].evaluate(sizes))

    def run_direction(xs, states, params, batch_sizes=None):
        T, B = xs.shape[0], xs.shape[1]
        states, ys = list(states), []
        for t in range(T):
            active = B if batch_sizes is None else batch_sizes[t]
            if active == B:
                res = run_step(step, [*states, xs[t], *params], sizes)
                states, y = res[:n], res[n]
            elif active == 0:
                y = xs.new_zeros(B, out_size)
            else:  # rows are sorted by length: the first `active` rows are still running
                running = [s[:active] for s in states]
                res = run_step(step, [*running, xs[t, :active], *params], sizes)
                states = [torch.cat([new, old[active:]]) for new, old in zip(res[:n], states)]
                y = torch.cat([res[n], res[n].new_zeros(B - active, out_size)])
            ys.append(y)
        out = torch.stack(ys) if ys else xs.new_zeros(0, B, out_size)
        return out, tuple(states)

    return run_direction


# ---------------------------------------------------------------------------------------------
# Spec and classes


def _whole(x: Fraction) -> int | Fraction:
    return int(x) if x.denominator == 1 else x


def _dims(shape: tuple[Dim, ...]):
    return lambda s: tuple(_whole(d.evaluate(s)) for d in shape)


def spec_from_cell(cell: CellIR) -> dict:
    """The torch_layers spec of a cell: shapes are its symbolic dims evaluated on a layer's sizes,
    initializer arguments its expressions (e.g. -1/sqrt(H)) evaluated the same way."""
    from .torch_names import check_layer_cell

    symbol = check_layer_cell(cell)
    n = len(cell.states)
    state_dims = [s.type.shape[0] for s in cell.states]
    out_dim = cell.step.results[n].type.shape[0]
    params = []
    for p in cell.params:
        params.append({
            "name": p.name,
            "kind": p.kind,
            "shape": _dims(p.type.shape),
            "init": p.init.fn,
            "init_args": lambda s, init=p.init: tuple(eval_number(a, s) for a in init.args),
        })
    return {
        "name": cell.name,
        "sizes": [(s.arg, s.symbol) for s in cell.sizes],
        "input_size": next(s.arg for s in cell.sizes if s.symbol == symbol),
        "states": [s.name for s in cell.states],
        "state_sizes": lambda s: tuple(_whole(d.evaluate(s)) for d in state_dims),
        "output_size": lambda s: _whole(out_dim.evaluate(s)),
        "params": params,
    }


def make_eager(cell: CellIR):
    """(LayerClass, CellClass) for a checked cell, run by this interpreter."""
    return make_layer(spec_from_cell(cell), lambda sizes: run_direction_eager(cell, sizes))


def load_eager(path: str | Path):
    """Read, check and wrap a `.cell` file: (LayerClass, CellClass), torch.nn-compatible."""
    return make_eager(load_file(path))
