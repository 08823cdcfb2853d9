"""The compiler's stages, in order, and the text each prints for `cellc show --emit`.

    CellIR --sequence_program--> forward with a scan --FORWARD_PASSES--> optimized forward
           --grad.vjp--> (forward + residuals, backward) --BACKWARD_PASSES--> optimized backward
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

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
    passes.cse,  # the rules recompute shared factors: sigmoid(o) * (1 - sigmoid(o)) once
    passes.sink,  # weight gradients: one product over all T*B rows after the loop
    passes.simplify,  # folds what sink built; changes no zoo cell today, kept as a safety net
    passes.cse,  # sums sink moved out that are now equal: dbias_ih = dbias_hh is one sum
    passes.dce,  # drop residuals and temporaries nothing reads any more
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

    @functools.cached_property
    def infer(self) -> Func:
        """The forward for inference: (xs, states0..., params...) -> (final states..., ys),
        saving nothing (made on first use: only calls without gradients need it)."""
        return optimized_forward(self.cell)


def optimized_forward(cell: CellIR) -> Func:
    return run_passes(sequence_program(cell), FORWARD_PASSES)


def frozen_params(cell: CellIR, fwd: Func) -> tuple:
    """The parameters of the sequence forward `fwd` (xs, initial states, then the cell's
    parameters) that are constants for the derivative: the cell's consts and hypers."""
    params = fwd.params[len(fwd.params) - len(cell.params):] if cell.params else ()
    return tuple(p for p, frozen in zip(params, cell.frozen_params) if frozen)


def compile_program(cell: CellIR, optimize: bool = True) -> Program:
    fwd = optimized_forward(cell) if optimize else verify(sequence_program(cell))
    g: Vjp = vjp(fwd, frozen=frozen_params(cell, fwd))
    verify(g.fwd)
    verify(g.bwd)
    bwd = run_passes(g.bwd, BACKWARD_PASSES if optimize else [])
    fwd_full, bwd = passes.prune_residuals(g.fwd, bwd, g.n_results)
    if optimize:
        fwd_full = run_passes(fwd_full, [passes.dce])
    return Program(cell, verify(fwd_full), verify(bwd), g.n_results, g.adjoint_names)


def emit(cell: CellIR, stage: str) -> str:
    """The text of one compiler stage (the targets' stages are in cellc/targets)."""
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


def residual_summary(prog: Program, texts: dict[int, tuple[str, int]]) -> list[str]:
    """The values the forward pass saves per time step for the backward, and their size;
    `texts` are the forward values' texts from `equations.forward_texts`."""
    from .ir import Scan
    from .shapes import Dim, product

    scan = Scan.of(next(i for i in prog.fwd.body if i.op == "scan"))
    by_out = {id(o): r for o, r in zip(scan.instr.outs, scan.step.results)}
    # The cell's output sequence, stored anyway (absent when the passes made it a constant).
    output = scan.ys[0] if scan.ys else None
    saved, reads, total = [], [], Dim.of(0)
    for r in prog.residuals:
        if output is not None and r is output:
            reads.append(f"{prog.cell.output} (the output)")
        elif id(r) in by_out:
            v = by_out[id(r)]
            saved.append(texts.get(id(v), (v.name, 0))[0])
            total = total + product(v.type.shape)  # every axis: a matrix is rows x columns
        else:
            reads.append(texts.get(id(r), (r.name, 0))[0])
    lines = [(f"# Saved per time step for the backward ({len(saved)} values, {total} numbers"
              f" per batch row, {total * 4} bytes in float32):")]
    lines += [f"#   {s}" for s in saved]
    if reads:
        lines.append("# Also read, not copied: " + ", ".join(reads))
    return lines


def _with_comment(line: str, comments: dict[str, str]) -> str:
    name = line.split(" ", 1)[0]
    return f"{line}    # d({comments[name]})" if name in comments else line


def _row_lines(cell: CellIR) -> list[str]:
    """The header line that names what the step reads from its input row besides x
    (cellc/inputs.py), for a cell that uses x[t-1], dropout or zoneout."""
    if len(cell.input_parts) <= 1:
        return []
    x = cell.input_parts[0].name
    what = {"previous": f"{x}[t-1]", "dropout": "a dropout mask", "zoneout": "a zoneout mask"}
    parts = ", ".join(f"{p.name} ({what[p.kind]})" for p in cell.input_parts[1:])
    lines = [f"# The step's input row also holds: {parts}; masks are constants (no cotangent)."]
    if any(p.kind == "previous" for p in cell.input_parts):
        lines.append(f"# d{cell.input.name} is the row's cotangent: d{x} = its first part, plus"
                     " the x[t-1] part shifted back a step.")
    return lines


def grad_equations(cell: CellIR) -> str:
    """`cellc grad`: the backward pass as simplified equations, then the residual list.

    Names: a cotangent of a value with a source name is `d` + that name; one of an unnamed
    value gets a number (`d6`), with the value's expression as a comment; forward values read as
    their source names or expressions (`equations.forward_texts`). All invented names come from
    one `Namespace`, so none is a .cell name or used twice.
    """
    from .equations import Namespace, equations, forward_expressions, forward_texts, source_names
    from .ir import Scan

    prog = compile_program(cell)
    bscan = next(i for i in prog.bwd.body if i.op == "scan")
    view = Scan.of(bscan)
    bstep, nc = view.step, view.n_carry
    texts, named = forward_texts(prog.fwd, cell)
    ns = Namespace(source_names(cell))
    names, soft, comments = {}, {}, {}
    # Cotangents of unnamed forward values: numbered, with the forward expression as a comment.
    source_exprs = forward_expressions(cell.step)
    for k, (_, fv) in prog.adjoint_names.items():
        if id(fv) in named:
            names[k] = ns.cotangent(named[id(fv)])
        elif id(fv) in source_exprs:
            soft[k] = ns.fresh("d")
            comments[soft[k]] = source_exprs[id(fv)][0]
    # Then those of values the passes made (a fused product, a hoisted input projection).
    for k, (_, fv) in prog.adjoint_names.items():
        if k not in names and k not in soft and id(fv) in texts:
            soft[k] = ns.fresh("d")
            comments[soft[k]] = texts[id(fv)][0]

    # Inside the loop: the carried cotangents are those of the next states (dh', dc'); the
    # output's is dy.
    carried = [ns.cotangent(s.name + "'") for s in cell.states]
    names.update((id(p), n) for p, n in zip(bstep.params[:nc], carried))
    dy = ns.unique("dy")
    for a, p in zip(bscan.args, bstep.params):
        if a is prog.bwd.params[-1]:
            names[id(p)] = dy
    result_names = [ns.cotangent(s.name) for s in cell.states]  # dh, dc: for step t-1
    result_names += [names.get(id(r)) or soft.get(id(r)) or ns.unique(f"dout{k}")
                     for k, r in enumerate(bstep.results[nc:])]
    for k, r in enumerate(bstep.results[nc:]):
        if id(r) not in names and id(r) not in soft and not any(r is p for p in bstep.params):
            names[id(r)] = result_names[nc + k]
    step_lines = equations(bstep, names, texts, result_names, soft, ns)
    step_lines = [_with_comment(line, comments) for line in step_lines]

    # After the loop: the reverse loop's stacked outputs keep their step names.
    outer_names = {id(prog.bwd.params[-1]): dy}  # the outputs' cotangents, every row at once
    for o, n in zip(bscan.outs[nc:], result_names[nc:]):
        outer_names[id(o)] = n
    initial = [ns.cotangent(s.name + "0") for s in cell.states]
    outer_names.update((id(o), n) for o, n in zip(bscan.outs[:nc], initial))
    outer_results = [ns.cotangent(cell.input.name), *initial,
                     *(ns.cotangent(p.name) for p in cell.params)]
    outer_lines = [_with_comment(line, comments)
                   for line in equations(prog.bwd, outer_names, texts, outer_results, soft, ns)]

    out = [
        f"# Backward of {cell.name} ({cell.source.name}), derived symbolically and simplified.",
        "#",
        "# Each step, t = T-1 down to 0: " + ", ".join(carried)
        + (" arrives" if nc == 1 else " arrive") + " from step t+1 (zero at t = T-1",
        f"# unless the final states have cotangents); {dy} is the cotangent of this step's output;",
        "# `v += e` adds this step's share.",
        *_row_lines(cell),
        *step_lines,
        "#",
        "# After the loop, over all T*B rows at once (outer and sum_rows sum over time and batch):",
        *outer_lines,
        "#",
        *residual_summary(prog, texts),
    ]
    return "\n".join(out)
