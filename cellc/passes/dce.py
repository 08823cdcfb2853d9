"""Dead-code elimination, inside loop bodies too.

    %a = tanh %x            (unused)           ->   (removed)
    %y, %s = scan ...       (%s unused)        ->   %y = scan ...  (the step stops returning it)

A scan's unused stacked outputs and accumulators are dropped from its step, and step inputs
that become unused are dropped from the loop.
"""

from __future__ import annotations

from dataclasses import replace

from ..ir import Func, Instr, Scan


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
    scan = Scan.of(instr)
    # Keep the carry, and the stacked outputs and accumulators that are still read.
    ys = [(r, o) for r, o in zip(scan.y_results, scan.ys) if id(o) in live]
    accs = [(r, o) for r, o in zip(scan.acc_results, scan.accs) if id(o) in live]
    results = (*scan.next_carry, *(r for r, _ in ys), *(r for r, _ in accs))
    step = dce(replace(scan.step, results=results))
    # Drop per-step inputs and loop-invariant inputs the step no longer reads.
    used = {id(a) for i in step.body for a in i.args} | {id(r) for r in step.results}
    xs = [(p, a) for p, a in zip(scan.x_params, scan.xs) if id(p) in used]
    consts = [(p, a) for p, a in zip(scan.const_params, scan.consts) if id(p) in used]
    params = (*scan.carry_params, *(p for p, _ in xs), *(p for p, _ in consts))
    step = replace(step, params=params)
    new = scan.rebuild(step, xs=(a for _, a in xs), consts=(a for _, a in consts),
                       ys=(o for _, o in ys), accs=(o for _, o in accs))
    if new.outs == instr.outs and new.args == instr.args and step.body == scan.step.body:
        return instr  # nothing pruned: keep the very same instruction
    return new


def prune_residuals(fwd: Func, bwd: Func, n_results: int) -> tuple[Func, Func]:
    """Drop residuals the (optimized) backward no longer reads, from both functions."""
    used = {id(a) for i in bwd.body for a in i.args} | {id(r) for r in bwd.results}
    n_res = len(fwd.results) - n_results
    residuals = bwd.params[:n_res]
    keep = [k for k, r in enumerate(residuals) if id(r) in used]
    if len(keep) == n_res:
        return fwd, bwd
    fwd = replace(fwd, results=fwd.results[:n_results]
                  + tuple(fwd.results[n_results + k] for k in keep))
    bwd = replace(bwd, params=tuple(residuals[k] for k in keep) + bwd.params[n_res:])
    return fwd, bwd
