"""The plain-autograd torch interpreter: the IR run op by op on torch tensors, driving the layers.

`TORCH_EAGER` is the shared interpreter's op table (backends/interpret.py) over torch, whose
choices are written out in `ARRAYS`, so it has exactly the semantics of `numpy_ref.NUMPY` (same
layouts: a per-step value is (B, features), a parameter has no batch axis); `run` is its one
loop. Autograd differentiates the result, so this backend needs no backward IR: it is the
torch-side oracle for the compiled ones.

`run_direction_eager` wraps the step function in a Python time loop that follows the
`run_direction` contract of `cellc.runtime.torch_layers`, and `load_eager` puts the two together:

    LSTM, LSTMCell = load_eager("cells/lstm.cell")
    lstm = LSTM(8, 16, num_layers=2, bidirectional=True)   # loads torch.nn.LSTM state dicts
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ..ir import Func
from ..lower import CellIR
from ..runtime.torch_layers import make_layer
from ..shapes import Batch
from . import interpret
from .interpret import Context  # re-exported: tests and callers build contexts
from .layer_spec import layer_spec

ARRAYS = interpret.ArrayLib(
    name="torch eager",
    functions={
        "neg": torch.neg,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "relu": torch.relu,
        "exp": torch.exp,
        "log": torch.log,
        # log(1 + e^x) exactly, as numpy's logaddexp(0, x); F.softplus switches to x above 20.
        "softplus": lambda x: torch.logaddexp(x, torch.zeros_like(x)),
        "sqrt": torch.sqrt,
        "abs": torch.abs,
        "sign": torch.sign,
        "min": torch.minimum,
        "max": torch.maximum,
        "elu": torch.nn.functional.elu,
        "silu": torch.nn.functional.silu,
        "gelu": torch.nn.functional.gelu,
        "erf": torch.erf,
        "logsigmoid": torch.nn.functional.logsigmoid,
        "stop_gradient": torch.Tensor.detach,  # autograd differentiates this backend
        "power": torch.pow,
    },
    where=torch.where,
    store=lambda x, ctx: x,  # tensors keep their autograd history as they are
    full=lambda shape, value, ctx: torch.full(shape, value, dtype=ctx.dtype, device=ctx.device),
    as_dtype=lambda b, dtype: b.to(dtype),
    exponent=lambda x, p: float(p),
    outer=torch.outer,
    split=lambda x, sizes, axis: list(torch.split(x, sizes, dim=axis)),
    concat=lambda xs, axis: torch.cat(xs, dim=axis),
    broadcast=lambda x, n: x.expand(*x.shape[:-1], n),  # a view: autograd sums the gradient
    amax=lambda x, axis: x.amax(axis, keepdim=True),
)

# No "scan": the eager driver loops over time in Python (run_direction_eager), where it can
# leave finished rows of a packed batch untouched.
TORCH_EAGER = {op: rule for op, rule in interpret.rules(ARRAYS).items() if op != "scan"}


def run(f: Func, args: list[torch.Tensor], ctx: Context) -> list[torch.Tensor]:
    """Evaluate f on tensors, recording autograd history."""
    return interpret.run(ARRAYS, TORCH_EAGER, f, args, ctx)


def run_step(step: Func, args: list[torch.Tensor], sizes: Mapping[str, int]) -> list[torch.Tensor]:
    """Run a step function once; the batch, dtype and device come from its tensor arguments."""
    batch = next((a.shape[0] for p, a in zip(step.params, args) if p.type.batch is Batch.STEP), 1)
    first = args[0] if args else torch.empty(())
    ctx = Context(dict(sizes), 1, batch, first.dtype, first.device)
    return run(step, list(args), ctx)


def run_direction_eager(cell: CellIR, sizes: Mapping[str, int]):
    """The run_direction of `cellc.runtime.torch_layers` for one set of sizes (symbol -> int):
    a Python loop over time that calls the step function, masking finished rows; masked=True
    runs the cell's masked form (cellc/masking.py), made on first use."""
    from ..variants import variant

    cell = variant(cell, sizes)  # the form of a cell with an optional size (cellc/variants.py)
    cell.bind(**{s.arg: sizes.get(s.symbol, 0) for s in cell.sizes})  # ValueError if impossible
    sizes = dict(sizes)
    step, n = cell.step, len(cell.states)
    out_size = int(step.results[n].type.shape[0].evaluate(sizes))
    masked_run = None

    def run_direction(xs, states, params, batch_sizes=None, masked=False):
        nonlocal masked_run
        if masked:
            if masked_run is None:
                from ..masking import masked as masked_cell

                masked_run = run_direction_eager(masked_cell(cell), sizes)
            return masked_run(xs, states, params, batch_sizes)
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


def spec_from_cell(cell: CellIR) -> dict:
    """The torch_layers spec of a cell: shapes are its symbolic dims evaluated on a layer's sizes,
    initializer arguments its expressions (e.g. -1/sqrt(H)) evaluated the same way."""
    return layer_spec(cell).runtime()


def make_eager(cell: CellIR):
    """(LayerClass, CellClass) for a checked cell, run by this interpreter."""
    return make_layer(spec_from_cell(cell), lambda sizes: run_direction_eager(cell, sizes))


def load_eager(path: str | Path):
    """Read, check and wrap a `.cell` file: (LayerClass, CellClass), torch.nn-compatible."""
    from ..frontend import load_file  # here, not above: a backend takes cells, not files

    return make_eager(load_file(path))
