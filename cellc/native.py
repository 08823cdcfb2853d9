"""Native kernels at the NumPy level: works without torch.

    import cellc
    cell = cellc.native.NativeCell("cells/lstm.cell", input_size=8, hidden_size=16)
    params = cell.init_params(rng=0)
    ys, final, tape = cell.forward(xs, params)   # xs: (T, B, 8) float32
    grads = cell.backward(tape, d_ys)            # {"xs": ..., "h": ..., "weight_ih": ...}
    y, states = cell.step(x, states, params)     # one step, for streaming

Sequences of different lengths: `lengths` (B ints); outputs past a sequence's end are zero and
its final state is the one at its last step. `NativeCell(..., reverse=True)` (or
`mod.native(..., reverse=True)`) runs backwards in time, each sequence within its own length, as
the reverse half of a bidirectional torch layer: outputs in input time order, the final state
the one after x[0] (ONNX direction="reverse"; Keras' go_backwards returns the outputs reversed).
Compiled kernels are cached in memory and on disk (`cache.py`), keyed by the cell's text, the
sizes, the dtype, the cellc version and the CPU.
The argument checks are cellc/runtime/native_calls.py's, which every AOT loader holds too: a
loader refuses what NativeCell refuses, with the same message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import numpy_ref
from .backends.llvm_jit import Arrays
from .inputs import refuse_parts
from .lower import CellIR
from .runtime import native_calls as calls
from .variants import variant_for_args


@dataclass
class Tape:
    """What forward saved for backward (residuals, the batch layout). The residuals share no
    memory with what forward returned, but some are the caller's own xs and parameter arrays:
    changing those in place before backward changes the gradient."""

    residuals: list
    T: int
    B: int
    batch_sizes: np.ndarray
    order: np.ndarray | None  # rows sorted by decreasing length, or None


def _cell(cell: CellIR | str | Path) -> CellIR:
    if isinstance(cell, CellIR):
        return cell
    from .frontend import load_file

    return load_file(cell)


class NativeCell:
    """A cell compiled to native code for given sizes and dtype (float32 or float64)."""

    def __init__(self, cell: CellIR | str | Path, dtype="float32", threads: int | None = None,
                 *, reverse: bool = False, **size_args: int):
        from .backends import cache

        self.reverse = calls._check_reverse(reverse)
        self.cell = variant_for_args(_cell(cell), size_args)  # cellc/variants.py
        refuse_parts(self.cell, "NativeCell")
        self.dtype = calls._float_dtype(dtype)
        self.sizes = self.cell.bind(**size_args)
        self._program = cache.native_program(self.cell, self.sizes, self.dtype.name)
        from .backends import blas

        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise ValueError(f"threads must be a positive int or None, not {threads!r}")
        # Threads of the time loops and large products (blocks of rows on torch's OpenMP
        # team, once torch is imported), else of OpenBLAS's pool (see blas.team).
        self.threads = threads or blas.default_threads()
        self._step = None
        # Feature sizes, evaluated once: each call only checks arrays against them.
        S, n = self.sizes, len(self.cell.states)
        self._input_size = int(self.cell.input.type.shape[0].evaluate(S))
        self._output_size = int(self.cell.step.results[n].type.shape[0].evaluate(S))
        self._state_sizes = [(st.name, int(st.type.shape[0].evaluate(S)))
                             for st in self.cell.states]
        self._param_shapes = [(p.name, p.type.concrete(S)) for p in self.cell.params]
        # A state not given starts at its initial value (`state m[H] = -1e30`), a
        # hyper-parameter not given at its default; constants and hyper-parameters get no
        # gradient, so backward returns none for them.
        self._initial = [self.cell.initial_value(k, S) for k in range(n)]
        self._hyper_defaults = numpy_ref.hyper_defaults(self.cell)
        self._frozen = [p.name for p in numpy_ref.frozen_params(self.cell)]

    @property
    def program(self):
        """The kernels: the cell's size-generic ones until specialized ones are compiled (in the
        background, see cache.native_program), then those."""
        if self._program.provisional:
            from .backends import cache

            self._program = cache.native_program(self.cell, self.sizes, self.dtype.name)
        return self._program

    # -- helpers ----------------------------------------------------------------------------

    def init_params(self, rng=None) -> dict[str, np.ndarray]:
        return numpy_ref.init_params(self.cell, self.sizes, rng, self.dtype)

    def _states(self, given, B: int, label: str, order=None, initial=None) -> list[np.ndarray]:
        """One (B, H) array per state, in the cell's order: given ones checked, others at
        `initial` (zeros when None: cotangents); rows reordered by `order` (sorted by length)
        when given."""
        return calls._states(given, B, self._state_sizes, self.dtype, label, order, initial)

    def _params(self, params: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return calls._params(params, self._param_shapes, self.dtype, self._hyper_defaults)

    def _layout(self, T: int, B: int, lengths):
        """(batch_sizes, order): the AOT loader's layout, checks and messages."""
        return calls._sequence_layout(T, B, lengths, None)

    # -- whole sequences --------------------------------------------------------------------

    def forward(self, xs: np.ndarray, params: Mapping[str, np.ndarray],
                states: Mapping[str, np.ndarray] | None = None, lengths=None):
        """Run over xs (T, B, I). Returns (ys (T, B, out), {state: (B, H)}, tape)."""
        cell = self.cell
        T, B = calls._sequence_shape(xs)  # checks T*B before xs is copied
        I = self._input_size
        xs = calls._array(xs, "xs", (T, B, I), self.dtype)
        batch_sizes, order = self._layout(T, B, lengths)
        initial = self._states(states, B, "state {name}", order, self._initial)
        weights = self._params(params)
        x = xs if order is None else xs[:, order]
        x = calls._reverse_time(x, batch_sizes) if self.reverse else x
        args = [np.ascontiguousarray(x).reshape(T * B, I), *initial, *weights]
        program = self.program
        out = program.forward_kernel.run(T, B, batch_sizes, args, _ARRAYS, threads=self.threads)
        outputs = calls._unshared(out[: program.n_results])
        residuals = calls._unshared(out[program.n_results :], tuple(outputs))  # the tape's own
        n = len(cell.states)
        ys = outputs[n].reshape(T, B, self._output_size)
        ys = calls._reverse_time(ys, batch_sizes) if self.reverse else ys
        final = dict(zip((s.name for s in cell.states), outputs[:n]))
        if order is not None:
            inv = np.argsort(order)
            ys = ys[:, inv]
            final = {k: v[inv] for k, v in final.items()}
        tape = Tape(residuals, T, B, batch_sizes, order)
        return ys, final, tape

    def backward(self, tape: Tape, d_ys: np.ndarray | None = None,
                 d_states: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Cotangents of xs, the initial states and the trained parameters (not constants or
        hyper-parameters), given those of the outputs and the final states (zero where not
        given)."""
        cell, T, B = self.cell, tape.T, tape.B
        ys_shape = (T, B, self._output_size)
        d_ys = (np.zeros(ys_shape, self.dtype) if d_ys is None
                else calls._array(d_ys, "d_ys", ys_shape, self.dtype))
        seeds = self._states(d_states, B, "d_states[{name}]", tape.order)
        dy = d_ys if tape.order is None else d_ys[:, tape.order]
        dy = calls._reverse_time(dy, tape.batch_sizes) if self.reverse else dy
        seeds.append(calls._seed_rows(dy, tape.batch_sizes, T, B, ys_shape[2]))
        grads = self.program.backward_kernel.run(T, B, tape.batch_sizes,
                                                 list(tape.residuals) + seeds, _ARRAYS,
                                                 threads=self.threads)
        grads = calls._unshared(grads)
        names = ["xs"] + [s.name for s in cell.states] + [p.name for p in cell.params]
        out = dict(zip(names, grads))
        for name in self._frozen:  # their slots are zeros, not derivatives
            del out[name]
        out["xs"] = out["xs"].reshape(T, B, out["xs"].shape[1])
        if self.reverse:
            out["xs"] = calls._reverse_time(out["xs"], tape.batch_sizes)
        if tape.order is not None:
            inv = np.argsort(tape.order)
            out["xs"] = out["xs"][:, inv]
            for s in cell.states:
                out[s.name] = out[s.name][inv]
        return out

    # -- streaming --------------------------------------------------------------------------

    def step(self, x: np.ndarray, states: Mapping[str, np.ndarray] | None,
             params: Mapping[str, np.ndarray]):
        """One time step for a batch x (B, I): returns (y (B, out), {state: next value}). The
        caller keeps the state between calls. Uses a kernel compiled for single steps."""
        from .backends import cache

        if self._step is None:
            self._step = cache.native_step(self.cell, self.sizes, self.dtype.name)
        cell = self.cell
        B = calls._step_batch(x)  # checks the rows before x is copied
        args = [*self._states(states, B, "state {name}", None, self._initial),
                calls._array(x, "x", (B, self._input_size), self.dtype), *self._params(params)]
        out = calls._unshared(self._step.run(1, B, np.array([B], np.int64), args, _ARRAYS,
                                             threads=self.threads))
        n = len(cell.states)
        return out[n], dict(zip((s.name for s in cell.states), out[:n]))


_ARRAYS = Arrays()
