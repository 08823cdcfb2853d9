"""The llvm target's native kernels as torch.library custom ops: cellc::NativeSequence (the
forward over a whole sequence) and cellc::NativeSequenceBackward, with fake implementations and
an autograd formula, so torch.compile(fullgraph=True) and torch.export see one opaque op per
layer direction instead of breaking the graph around it.

An op's arguments can only be tensors, numbers and lists of them, so the compiled program is not
one: the op takes the id of a *direction* (one layer direction of one cell at one set of sizes,
see llvm_layers), found in a registry. The registry holds directions weakly: a direction lives as
long as the layer class keeps its run_direction (the few most recently used sizes), and a traced
or exported graph that outlives it gets a clear error, not stale code. A direction gives

    direction.program(dtype)    the NativeProgram for a torch dtype (compiled on first use)
    direction.n_results         outputs of the forward before the residuals: final states, ys
    direction.recompute(xs, *states_and_params, batch_sizes=None) -> (ys, *final states)
                                the same direction as differentiable torch (double backward)

The fake implementations read output shapes from the kernel's spec (native_calls._shape), so
tracing compiles the program but never runs it.

Eager calls do not go through the ops: the first call of any custom op imports torch._dynamo
(1.5 s here), which would triple a layer's cold start. `run` uses the ops only while torch is
compiling or exporting, and otherwise `NativeSequence`, an autograd.Function over the same two
functions (`forward`, `backward`) the ops and their autograd formula call.

No `from __future__ import annotations` here: torch.library reads the type hints to build the
op schema.
"""

import itertools
import weakref

import numpy as np
import torch
from torch.autograd import forward_ad

from ..runtime import native_calls
from ..runtime.torch_layers import differentiable_backward, op_results
from .llvm_jit import Arrays

DTYPES = {torch.float32: "float32", torch.float64: "float64"}
_TORCH_DTYPE = {np.dtype(name): t for t, name in DTYPES.items()}


class TorchArrays(Arrays):
    """How the kernels see torch tensors (CPU, contiguous)."""

    def check(self, a, shape, dtype, name):
        # Checked on every call of a kernel: attribute lookups only (numpy's dtype.name is
        # computed in Python each time).
        if not isinstance(a, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor, got {type(a).__name__}")
        if not a.is_cpu:
            raise ValueError(f"{name}: the llvm target runs on the CPU; got a tensor on {a.device}")
        if a.dtype is not _TORCH_DTYPE.get(dtype):
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


TORCH_ARRAYS = TorchArrays()

_DIRECTIONS = weakref.WeakValueDictionary()  # id -> direction
_IDS = itertools.count()


def register(direction) -> int:
    """A new id naming `direction` in the ops' arguments (held weakly)."""
    key = next(_IDS)
    _DIRECTIONS[key] = direction
    return key


def _direction(key: int):
    d = _DIRECTIONS.get(key)
    if d is None:
        raise RuntimeError(
            f"cellc::NativeSequence: layer direction {key} no longer exists (its layer class let"
            " go of these sizes); trace or export the model again")
    return d


def _kernel_batch_sizes(batch_sizes, T, B) -> np.ndarray:
    if batch_sizes is None:
        return native_calls._full_batch_sizes(T, B)
    return batch_sizes.to(torch.int64).numpy()


def _flat(t: torch.Tensor) -> torch.Tensor:
    """(T, B, F) -> the (T*B, F) rows the kernels read."""
    return t.reshape(t.shape[0] * t.shape[1], t.shape[2]).contiguous()


def _forward_results(direction: int, batch_sizes, xs: torch.Tensor, args: list) -> list:
    """The forward kernel over (T, B, I) xs and the states and parameters `args`: the kernel's
    results (final states, (T*B, H) outputs, then the residuals), as it returns them (some
    residuals are arguments: xs, weights)."""

    program = _direction(direction).program(xs.dtype)
    T, B = xs.shape[0], xs.shape[1]
    kargs = [_flat(xs)] + [a.contiguous() for a in args]
    return kargs, program.forward_kernel.run(T, B, _kernel_batch_sizes(batch_sizes, T, B),
                                             kargs, TORCH_ARRAYS,
                                             threads=torch.get_num_threads())


def infer(direction: int, batch_sizes, xs: torch.Tensor, args: list) -> list:
    """The forward's results (final states, (T*B, H) outputs) from the kernel that saves
    nothing for a backward: for calls that record no gradient."""

    program = _direction(direction).program(xs.dtype)
    T, B = xs.shape[0], xs.shape[1]
    kargs = [_flat(xs)] + [a.contiguous() for a in args]
    out = program.inference_kernel.run(T, B, _kernel_batch_sizes(batch_sizes, T, B), kargs,
                                       TORCH_ARRAYS, threads=torch.get_num_threads())
    return op_results(out, kargs, kargs[0])


def forward(direction: int, batch_sizes, xs: torch.Tensor, args: list) -> list:
    """The forward kernel's results, none aliasing an input or another (the op's rule: the
    residuals that are arguments are copied)."""
    kargs, out = _forward_results(direction, batch_sizes, xs, args)
    return op_results(out, kargs, kargs[0])


def backward(direction: int, batch_sizes, T: int, B: int, args: list) -> list:
    """The backward kernel: (residuals, d final states, d outputs as (T*B, H)) -> (d xs as
    (T*B, I), d states, d parameters)."""

    program = _direction(direction).program(args[0].dtype)
    kargs = [a.contiguous() for a in args]
    bs = _kernel_batch_sizes(batch_sizes, T, B)
    if bs.size and bs.min() < B:  # zero past the ends, as native_calls._seed_rows
        running = torch.from_numpy(np.arange(B).reshape(1, B) < bs.reshape(T, 1))
        kargs[-1] = kargs[-1] * running.reshape(T * B, 1).to(kargs[-1].dtype)
    out = program.backward_kernel.run(T, B, bs, kargs, TORCH_ARRAYS,
                                      threads=torch.get_num_threads())
    return op_results(out, kargs, kargs[0])


def gradients(direction: int, batch_sizes, inputs: list, residuals: list, needs: list,
              grads: list, native_backward) -> list:
    """d xs (T, B, I) and the gradients of the states and parameters (None where not needed)
    from the gradients of the forward's outputs (None for an output nobody used), through
    `native_backward` (the op or `backward`), or, while autograd records the backward itself
    (create_graph=True), through the differentiable twin."""
    xs = inputs[0]
    T, B = xs.shape[0], xs.shape[1]
    d = _direction(direction)
    n = d.n_results
    # A constant or hyper-parameter gets no gradient (its slot from the kernel is zeros, not
    # its derivative), even passed as a tensor that requires grad.
    frozen = [False] * (len(inputs) - len(d.cell.params)) + list(d.cell.frozen_params)
    needs = [need and not f for need, f in zip(needs, frozen)]
    # An output nobody used has no gradient; the kernel wants zeros there.
    shapes = [native_calls._shape(s, T, B)
              for _, _, s in d.program(xs.dtype).forward_kernel.spec["results"][:n]]
    seeds = [g if g is not None else xs.new_zeros(shape) for g, shape in zip(grads[:n], shapes)]
    *d_final, d_ys = seeds
    if torch.is_grad_enabled():  # create_graph=True: the native backward is not differentiable
        bs = None if batch_sizes is None else [int(k) for k in batch_sizes]

        def rerun(xs, *rest):
            ys, *final = d.recompute(xs, *rest, batch_sizes=bs)
            return (ys.reshape(T * B, ys.shape[2]), *final)

        return differentiable_backward(rerun, inputs, needs, (d_ys, *d_final))
    d_xs, *rest = native_backward(direction, batch_sizes, T, B, residuals + d_final + [d_ys])
    rest = [g if need else None for g, need in zip(rest, needs[1:])]
    return [d_xs.reshape(xs.shape), *rest]


# -- the ops, for torch.compile and torch.export ----------------------------------------------


@torch.library.custom_op("cellc::NativeSequence", mutates_args=(), device_types="cpu")
def native_sequence(direction: int, batch_sizes: torch.Tensor | None, xs: torch.Tensor,
                    args: list[torch.Tensor]) -> list[torch.Tensor]:
    """`forward` as an op."""
    return forward(direction, batch_sizes, xs, args)


@native_sequence.register_fake
def _native_sequence_fake(direction, batch_sizes, xs, args):
    spec = _direction(direction).program(xs.dtype).forward_kernel.spec
    T, B = xs.shape[0], xs.shape[1]
    return [xs.new_empty(native_calls._shape(s, T, B)) for _, _, s in spec["results"]]


@torch.library.custom_op("cellc::NativeSequenceBackward", mutates_args=(), device_types="cpu")
def native_sequence_backward(direction: int, batch_sizes: torch.Tensor | None, T: int, B: int,
                             args: list[torch.Tensor]) -> list[torch.Tensor]:
    """`backward` as an op."""
    return backward(direction, batch_sizes, T, B, args)


@native_sequence_backward.register_fake
def _native_sequence_backward_fake(direction, batch_sizes, T, B, args):
    spec = _direction(direction).program(args[0].dtype).backward_kernel.spec
    return [args[0].new_empty(native_calls._shape(s, T, B)) for _, _, s in spec["results"]]


def _setup_context(ctx, inputs, output):
    direction, batch_sizes, xs, args = inputs
    n = _direction(direction).n_results
    ctx.direction, ctx.n_args, ctx.packed = direction, len(args), batch_sizes is not None
    ctx.needs = [t.requires_grad for t in (xs, *args)]
    extra = [batch_sizes] if batch_sizes is not None else []
    ctx.save_for_backward(xs, *args, *output[n:], *extra)  # inputs, residuals, batch sizes


def _op_backward(ctx, grads):
    saved = list(ctx.saved_tensors)
    batch_sizes = saved.pop() if ctx.packed else None
    inputs, residuals = saved[: 1 + ctx.n_args], saved[1 + ctx.n_args :]
    d_xs, *rest = gradients(ctx.direction, batch_sizes, inputs, residuals, ctx.needs, grads,
                            native_sequence_backward)
    return None, None, d_xs, list(rest)


native_sequence.register_autograd(_op_backward, setup_context=_setup_context)


# -- eager calls --------------------------------------------------------------------------------


class NativeSequence(torch.autograd.Function):
    """`forward` and `gradients` as an autograd.Function: the ops' formula without the ops."""

    @staticmethod
    def forward(ctx, direction, batch_sizes, xs, *args):
        # The residuals are saved as the kernel returns them, not copied as the op must (a
        # residual that is xs or a weight costs nothing here; a copy per call slowed a
        # 2-thread forward 2x, waking torch's pool beside BLAS's).
        _, out = _forward_results(direction, batch_sizes, xs, list(args))
        ctx.direction, ctx.batch_sizes, ctx.n_args = direction, batch_sizes, len(args)
        n = _direction(direction).n_results
        ctx.save_for_backward(xs, *args, *out[n:])
        return tuple(out[:n])

    @staticmethod
    def backward(ctx, *grads):
        saved = list(ctx.saved_tensors)
        inputs, residuals = saved[: 1 + ctx.n_args], saved[1 + ctx.n_args :]
        needs = list(ctx.needs_input_grad[2:])
        return (None, None, *gradients(ctx.direction, ctx.batch_sizes, inputs, residuals, needs,
                                       list(grads), backward))


def run(direction: int, batch_sizes, xs: torch.Tensor, args: list) -> list:
    """The forward's results, differentiable: through the op while torch compiles or exports,
    else through NativeSequence, or without a gradient to record through `infer`."""
    if torch.compiler.is_compiling():
        return torch.ops.cellc.NativeSequence(direction, batch_sizes, xs, args)
    if not ((torch.is_grad_enabled() and any(t.requires_grad for t in (xs, *args)))
            or _has_tangents((xs, *args))):
        return infer(direction, batch_sizes, xs, args)  # nothing to save for a backward
    return list(NativeSequence.apply(direction, batch_sizes, xs, *args))


def _has_tangents(tensors) -> bool:
    """Whether forward-mode AD tangents ride on any of the tensors (NativeSequence then says
    it has no jvp rule, rather than the inference kernel dropping them)."""
    if forward_ad._current_level < 0:  # no dual level entered: none can
        return False
    return any(forward_ad.unpack_dual(t).tangent is not None for t in tensors)
