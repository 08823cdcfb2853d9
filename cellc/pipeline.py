"""The compiler's stages, in order, and the text each prints for `cellc show --emit`.

    CellIR --sequence_program--> forward with a scan --FORWARD_PASSES--> optimized forward
           --grad.vjp--> (forward + residuals, backward) --BACKWARD_PASSES--> optimized backward
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from . import passes
from .grad import Vjp, vjp
from .ir import Func, print_func, verify
from .lower import CellIR, sequence_program

# Each pass is Func -> Func; `verify` runs after every one.
FORWARD_PASSES = [
    passes.simplify,  # fold constants so CSE sees equal operands
    passes.cse,  # one value per (op, operands): repeated x @ W or sigmoid(f) computed once
    passes.fuse_matmul,  # W_xi @ x, W_xf @ x, ... -> one (stacked W) @ x, then split
    passes.hoist,  # work that reads no state leaves the loop: one GEMM over all T*B rows
    passes.dce,  # drop what the above made unused
]
BACKWARD_PASSES = [
    passes.simplify,  # the VJP rules produce x*1, zeros + g, 1 - (1 - s), ...
    passes.cse,
    passes.sink,  # weight gradients: one product over all T*B rows after the loop
    passes.simplify,
    passes.cse,
    passes.dce,
]


def run_passes(f: Func, pass_list) -> Func:
    verify(f)
    for p in pass_list:
        f = verify(p(f))
    return f


@dataclass(frozen=True)
class Program:
    """A cell compiled for training: forward (saving residuals) and backward over a sequence.

    fwd(xs, states0..., params...) -> (final states..., ys, residuals...)
    bwd(residuals..., d final states..., d ys) -> (d xs, d states0..., d params...)
    """

    cell: CellIR
    fwd: Func
    bwd: Func
    n_results: int
    adjoint_names: dict

    @property
    def residuals(self):
        return self.fwd.results[self.n_results :]


def optimized_forward(cell: CellIR) -> Func:
    return run_passes(sequence_program(cell), FORWARD_PASSES)


def compile_program(cell: CellIR, optimize: bool = True) -> Program:
    fwd = optimized_forward(cell) if optimize else verify(sequence_program(cell))
    g: Vjp = vjp(fwd)
    verify(g.fwd)
    verify(g.bwd)
    bwd = run_passes(g.bwd, BACKWARD_PASSES if optimize else [])
    fwd_full, bwd = passes.prune_residuals(g.fwd, bwd, g.n_results)
    if optimize:
        fwd_full = run_passes(fwd_full, [passes.dce])
    return Program(cell, verify(fwd_full), verify(bwd), g.n_results, g.adjoint_names)


def emit(cell: CellIR, stage: str) -> str:
    if stage == "ir":
        return print_func(cell.step)
    if stage == "seq":
        return print_func(sequence_program(cell))
    if stage == "opt":
        return print_func(optimized_forward(cell))
    if stage == "grad":
        prog = compile_program(cell)
        return print_func(prog.fwd) + "\n\n" + print_func(prog.bwd)
    raise ValueError(f"unknown stage {stage!r}")
