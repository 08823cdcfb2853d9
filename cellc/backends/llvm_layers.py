"""torch.nn-compatible layers whose time loops run in the native kernels.

The layer machinery is the same module the generated PyTorch files paste in
(`cellc/runtime/torch_layers.py`); this file only supplies its `run_direction`: one call of the
custom op cellc::NativeSequence (torch_ops) per layer direction, whose forward and backward run
the native forward and backward over the whole sequence. Being a torch.library op, it stays one
node under torch.compile(fullgraph=True) and torch.export. Tensors must be on the CPU; they are
checked (dtype, shape, contiguity) before any native call. When autograd records the backward
itself (create_graph=True), the backward instead differentiates the eager interpreter's run of
the same cell (torch_eager), so second derivatives are right.

Pickling: a layer made here pickles as its cell's source text plus its state, and unpickling
rebuilds the classes from that text (`layer_classes`), never pickling native code.
"""

from __future__ import annotations

import torch

from .. import masking
from ..choices import choice_params, specialize
from ..lower import CellIR
from ..runtime.torch_layers import make_layer
from ..source import Source
from ..variants import variant
from . import cache, torch_ops
from .layer_spec import layer_spec
from .torch_eager import run_direction_eager

_DTYPES = torch_ops.DTYPES
_TORCH = torch_ops.TORCH_ARRAYS  # how the kernels see tensors


class Direction:
    """One layer direction of a cell at one set of sizes, as the custom ops of torch_ops find it
    by id: its native programs (one per dtype, compiled on first use) and its differentiable
    twin, the eager interpreter's run of the same cell (for create_graph=True)."""

    def __init__(self, cell: CellIR, sizes: dict):
        self.cell, self.sizes = cell, dict(sizes)
        self.n_results = len(cell.states) + 1  # final states, outputs; then the residuals
        self._programs = {}
        self._eager = None
        self.key = torch_ops.register(self)

    def program(self, dtype: torch.dtype):
        program = self._programs.get(dtype)
        if program is None or program.provisional:  # provisional: specialized code is coming
            program = cache.native_program(self.cell, self.sizes, _DTYPES[dtype])
            assert program.n_results == self.n_results, (program.n_results, self.n_results)
            self._programs[dtype] = program
        return program

    def recompute(self, xs, *states_and_params, batch_sizes=None):
        if self._eager is None:
            self._eager = run_direction_eager(self.cell, self.sizes)
        n = len(self.cell.states)
        ys, final = self._eager(xs, states_and_params[:n], states_and_params[n:], batch_sizes)
        return (ys, *final)


def run_direction_for(cell: CellIR):
    choices = choice_params(cell)

    def for_sizes(sizes):
        sizes = dict(sizes)
        # A choice hyper-parameter's index comes with the sizes: compile the chosen function
        # alone (cellc/choices.py) rather than select among all at run time.
        chosen = {name: int(sizes.pop(name)) for name in choices if name in sizes}
        cell_v = variant(cell, sizes)  # the form an optional size of 0 or not asks for
        cell_k = specialize(cell_v, chosen)
        cell_v.bind(**{s.arg: sizes.get(s.symbol, 0) for s in cell.sizes})  # ValueError if bad
        sizes = {k: v for k, v in sizes.items() if k not in cell_v.zero}  # the kernels' own
        plain, masked_run = native_run(Direction(cell_k, sizes)), None

        def run_direction(xs, states, params, batch_sizes, masked=False):
            """The cell's loop, or its masked form's (cellc/masking.py), compiled on first use."""
            nonlocal masked_run
            if not masked:
                return plain(xs, states, params, batch_sizes)
            if masked_run is None:
                masked_run = native_run(Direction(masking.masked(cell_k), sizes))
            return masked_run(xs, states, params, batch_sizes)

        run_direction.direction = plain.direction
        return run_direction

    return for_sizes


def native_run(direction: Direction):
    """run_direction over one Direction's kernels: one call of the custom op."""
    key, n = direction.key, direction.n_results

    def run_direction(xs, states, params, batch_sizes):
        if xs.device.type != "cpu":
            raise ValueError(f"the llvm target runs on the CPU; input is on {xs.device}")
        if xs.dtype not in _DTYPES:
            raise TypeError(f"the llvm target runs float32 or float64, not {xs.dtype}")
        T, B = xs.shape[0], xs.shape[1]
        bs = None if batch_sizes is None else torch.tensor(batch_sizes, dtype=torch.int64)
        if torch.is_grad_enabled() and not torch.compiler.is_compiling() and any(
                t.requires_grad for t in (xs, *states, *params)):  # a backward will follow:
            direction.program(xs.dtype).prefetch_backward()  # compile it meanwhile
        out = torch_ops.run(key, bs, xs, [*states, *params])
        *final, ys = out[:n]
        return ys.reshape(T, B, ys.shape[1]), tuple(final)

    run_direction.direction = direction  # the registry holds it weakly: this keeps it
    return run_direction


# (source name, text) -> the classes made for it last: unpickling a layer made in this process
# finds its own class again (and its compiled code), not a copy. An LRU: classes hold kernels.
_CLASSES = cache.LRU(32)


def make_llvm_layers(cell: CellIR):
    """(LayerClass, CellClass) for a cell, drop-in for torch.nn.LSTM/LSTMCell on CPU tensors."""
    key = (cell.source.name, cell.source.text)
    classes = make_layer(layer_spec(cell).runtime(), run_direction_for(cell),
                         rebuild=(layer_classes, key))
    _CLASSES[key] = classes
    return classes


def layer_classes(name: str, text: str):
    """The layer classes of the cell with this source: how a pickled layer finds its class."""
    classes = _CLASSES.get((name, text))
    if classes is None:
        from ..frontend import load_source

        classes = make_llvm_layers(load_source(Source(name, text)))
    return classes
