"""Dead-code elimination, inside loop bodies too.

    %a = tanh %x            (unused)           ->   (removed)
    %y, %s = scan ...       (%s unused)        ->   %y = scan ...  (the step stops returning it)

A scan's unused stacked outputs and accumulators are dropped from its step, and step inputs
that become unused are dropped from the loop.
"""

from __future__ import annotations

from dataclasses import replace

from ..ir import Func, Instr, scan_parts
from .util import with_step


def dce(f: Func) -> Func:
    live = {id(r) for r in f.results}
    body: list[Instr] = []
    for instr in reversed(f.body):
        if not any(id(o) in live for o in instr.outs):
            continue
        if instr.op == "scan":
            instr = _prune_scan(instr, live)
        live.update(id(a) for a in instr.args)
        body.append(instr)
    body.reverse()
    if len(body) == len(f.body) and all(a is b for a, b in zip(body, f.body)):
        return f
    return replace(f, body=tuple(body))


def _prune_scan(instr: Instr, live: set[int]) -> Instr:
    step: Func = instr.attrs["step"]
    parts = scan_parts(instr)
    nc, ny = parts.n_carry, parts.n_ys
    keep = [k for k, o in enumerate(instr.outs) if k < nc or id(o) in live]
    results = tuple(step.results[k] for k in keep)
    outs = tuple(instr.outs[k] for k in keep)
    new_ny = sum(1 for k in keep if nc <= k < nc + ny)
    step = dce(replace(step, results=results))
    # Drop per-step inputs and loop-invariant inputs the step no longer reads.
    used = {id(a) for i in step.body for a in i.args} | {id(r) for r in step.results}
    carry_p, xs_p, const_p = parts.split_args(step.params)
    carry_a, xs_a, const_a = parts.split_args(instr.args)
    xs = [(p, a) for p, a in zip(xs_p, xs_a) if id(p) in used]
    consts = [(p, a) for p, a in zip(const_p, const_a) if id(p) in used]
    params = (*carry_p, *(p for p, _ in xs), *(p for p, _ in consts))
    args = (*carry_a, *(a for _, a in xs), *(a for _, a in consts))
    step = replace(step, params=params)
    if outs == instr.outs and args == instr.args and step.body == instr.attrs["step"].body:
        return instr  # nothing pruned: keep the very same instruction
    return with_step(instr, step, args=args, outs=outs, n_xs=len(xs), n_ys=new_ny)


def prune_residuals(fwd: Func, bwd: Func, n_results: int) -> tuple[Func, Func]:
    """Drop residuals the (optimized) backward no longer reads, from both functions."""
    used = {id(a) for i in bwd.body for a in i.args} | {id(r) for r in bwd.results}
    n_res = len(fwd.results) - n_results
    residuals = bwd.params[:n_res]
    keep = [k for k, r in enumerate(residuals) if id(r) in used]
    if len(keep) == n_res:
        return fwd, bwd
    fwd = replace(fwd, results=fwd.results[:n_results] + tuple(fwd.results[n_results + k] for k in keep))
    bwd = replace(bwd, params=tuple(residuals[k] for k in keep) + bwd.params[n_res:])
    return fwd, bwd
