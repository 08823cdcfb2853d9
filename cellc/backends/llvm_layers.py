"""torch.nn-compatible layers whose time loops run in the native kernels.

The layer machinery is the same module the generated PyTorch files paste in
(`cellc/runtime/torch_layers.py`); this file only supplies its `run_direction`: one
torch.autograd.Function per layer direction whose forward and backward call the native
forward and backward over the whole sequence. Tensors must be on the CPU; they are checked
(dtype, shape, contiguity) before any native call. When autograd records the backward itself
(create_graph=True), the backward instead differentiates the eager interpreter's run of the
same cell (torch_eager), so second derivatives are right.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ..lower import CellIR
from ..runtime.torch_layers import compiler_disabled, differentiable_backward, make_layer
from . import blas, cache
from .layer_spec import layer_spec
from .llvm_jit import Arrays
from .torch_eager import run_direction_eager

_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


class TorchArrays(Arrays):
    """How the kernels see torch tensors (CPU, contiguous)."""

    def check(self, a, shape, dtype, name):
        if not isinstance(a, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor, got {type(a).__name__}")
        if a.device.type != "cpu":
            raise ValueError(f"{name}: the llvm target runs on the CPU; got a tensor on {a.device}")
        if _DTYPES.get(a.dtype) != dtype.name:
            raise TypeError(f"{name}: expected {dtype.name}, got {a.dtype}")
        if tuple(a.shape) != tuple(shape):
            raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(a.shape)}")
        if not a.is_contiguous():
            raise ValueError(f"{name}: must be contiguous")

    def empty(self, shape, dtype, like=None):
        return torch.empty(shape, dtype=like.dtype if like is not None else torch.float32)

    def ptr(self, a) -> int:
        return a.data_ptr()

    def size(self, a) -> int:
        return a.numel()


_TORCH = TorchArrays()


class NativeSequence(torch.autograd.Function):
    """One direction of one layer over a whole sequence, forward and backward in native code.

    `recompute(xs, *states_and_params) -> (ys, *final)` is the same direction as differentiable
    torch; the backward uses it only when its own graph is recorded (create_graph=True)."""

    @staticmethod
    def forward(ctx, program, batch_sizes, recompute, xs, *states_and_params):
        T, B = xs.shape[0], xs.shape[1]
        args = ([xs.reshape(T * B, xs.shape[2]).contiguous()]
                + [a.contiguous() for a in states_and_params])
        out = program.forward_kernel.run(T, B, batch_sizes, args, _TORCH)
        n = program.n_results
        ctx.program, ctx.T, ctx.B, ctx.batch_sizes = program, T, B, batch_sizes
        ctx.recompute, ctx.n_inputs = recompute, 1 + len(states_and_params)
        ctx.save_for_backward(xs, *states_and_params, *out[n:])  # inputs, then the residuals
        *final, ys = out[:n]
        return (ys.reshape(T, B, ys.shape[1]), *final)

    @staticmethod
    def backward(ctx, d_ys, *d_final):
        saved = ctx.saved_tensors
        inputs, residuals = saved[: ctx.n_inputs], list(saved[ctx.n_inputs :])
        if torch.is_grad_enabled():  # create_graph=True: the native backward is not differentiable
            grads = differentiable_backward(ctx.recompute, inputs, ctx.needs_input_grad[3:],
                                            (d_ys, *d_final))
            return (None, None, None, *grads)
        T, B = ctx.T, ctx.B
        seeds = ([d.contiguous() for d in d_final]
                 + [d_ys.reshape(T * B, d_ys.shape[2]).contiguous()])
        grads = ctx.program.backward_kernel.run(T, B, ctx.batch_sizes, residuals + seeds, _TORCH)
        d_xs, *rest = grads
        return (None, None, None, d_xs.reshape(T, B, d_xs.shape[1]), *rest)


def run_direction_for(cell: CellIR):
    def for_sizes(sizes):
        sizes = dict(sizes)
        cell.bind(**{s.arg: sizes[s.symbol] for s in cell.sizes})  # ValueError for bad sizes

        programs = {}  # dtype -> NativeProgram, looked up once per layer size and dtype
        eager = []  # the differentiable twin for double backward, built on first use

        def recompute(xs, *states_and_params, batch_sizes=None):
            if not eager:
                eager.append(run_direction_eager(cell, sizes))
            n = len(cell.states)
            ys, final = eager[0](xs, states_and_params[:n], states_and_params[n:], batch_sizes)
            return (ys, *final)

        @compiler_disabled
        def run_direction(xs, states, params, batch_sizes):
            if xs.device.type != "cpu":
                raise ValueError(f"the llvm target runs on the CPU; input is on {xs.device}")
            dtype = _DTYPES.get(xs.dtype)
            if dtype is None:
                raise TypeError(f"the llvm target runs float32 or float64, not {xs.dtype}")
            program = programs.get(dtype)
            if program is None:
                program = programs[dtype] = cache.native_program(cell, sizes, dtype)
            # One thread budget for torch's pool and the BLAS pool: torch.set_num_threads.
            blas.ensure_threads(torch.get_num_threads())
            T, B = xs.shape[0], xs.shape[1]
            bs = (np.full(T, B, np.int64) if batch_sizes is None
                  else np.asarray(batch_sizes, np.int64))
            rerun = functools.partial(recompute, batch_sizes=batch_sizes)
            ys, *final = NativeSequence.apply(program, bs, rerun, xs, *states, *params)
            return ys, tuple(final)

        return run_direction

    return for_sizes


def make_llvm_layers(cell: CellIR):
    """(LayerClass, CellClass) for a cell, drop-in for torch.nn.LSTM/LSTMCell on CPU tensors."""
    return make_layer(layer_spec(cell).runtime(), run_direction_for(cell))
