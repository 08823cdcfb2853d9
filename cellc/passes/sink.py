"""Sink per-step work that the loop does not need out of the (backward) time loop.

In the backward loop, the weight gradient of `W_hh @ h` arrives as one small product per step,
summed over time. Nothing in the loop needs it, and a sum over time of products over B rows is
one product over all T*B rows:

    scan_reverse(...):                              %dz_seq, ... = scan_reverse(...):
      step(...):                                      step(...):
        %dz = ...                                       %dz = ...
        %dW = outer %dz, %h   -> accumulated    ->      return ..., %dz        (stacked: [T*B,4*H])
                                                    %dW = outer %dz_seq, %h_seq
                                                          (one GEMM after the loop)

An instruction moves when nothing that feeds the carry needs it and it is either row-wise (its
per-step values become stacked sequences) or a sum over the batch whose result only accumulates
over time (sums over B, and sums, differences and linear reshapes of them, add up to sums over
T*B).
"""

from __future__ import annotations

from dataclasses import replace

from ..ir import Func, Instr, Scan, Value, substitute, uses
from ..ops import OPS
from ..shapes import Batch
from .util import all_names, moved_instr, to_seq


def sink(f: Func) -> Func:
    names = all_names(f)
    body: list[Instr] = []
    mapping: dict[int, Value] = {}
    for instr in f.body:
        if instr.op == "scan":
            new, post, replaced = _sink_scan(instr, names)
            if new is not instr:
                body.append(new)
                body += post
                mapping.update(replaced)
                continue
        body.append(instr)
    if not mapping and all(a is b for a, b in zip(body, f.body)) and len(body) == len(f.body):
        return f
    return substitute(f, mapping, body)


def _sink_scan(instr: Instr, names: set[str]):
    scan = Scan.of(instr)
    step = scan.step
    nc, ny = scan.n_carry, scan.n_ys
    res = step.results
    defs = {id(o): i for i in step.body for o in i.outs}

    # Everything the carry depends on must stay in the loop.
    needed: set[int] = set()
    stack = list(res[:nc])
    while stack:
        v = stack.pop()
        if id(v) not in needed:
            needed.add(id(v))
            if id(v) in defs:
                stack += defs[id(v)].args

    # Unbatched values that are sums over the batch: summing them over time is linear.
    summable: set[int] = set()
    for i in step.body:
        kind = OPS[i.op].kind
        batch_sum = kind == "reduce_batch" and all(a.type.batch is Batch.STEP for a in i.args)
        # and linear maps of them (rwkv6's bonus: a sum along an axis of a sum over the batch)
        sum_of_sums = (i.op in ("add", "sub", "neg", "sum_axis", "reshape", "transpose")
                       and all(id(a) in summable for a in i.args))
        if batch_sum or sum_of_sums:
            summable.add(id(i.out))

    role = {}  # id(result value) -> "carry" | "ys" | "acc"
    for k, r in enumerate(res):
        role.setdefault(id(r), set()).add("carry" if k < nc else "ys" if k < nc + ny else "acc")
    users = uses(step)
    sunk: set[int] = set()
    for i in reversed(step.body):
        if i.op in ("const", "scan") or any(id(o) in needed for o in i.outs):
            continue
        if not all(id(u) in sunk for o in i.outs for u in users.get(id(o), [])):
            continue
        roles = set().union(*(role.get(id(o), set()) for o in i.outs))
        batched = all(o.type.batch is Batch.STEP for o in i.outs)
        rowwise = OPS[i.op].kind in ("elementwise", "rowwise")
        stacks = batched and "acc" not in roles and rowwise  # per-step values become sequences
        accumulates = not batched and all(id(o) in summable for o in i.outs) and roles <= {"acc"}
        if stacks or accumulates:
            sunk.add(id(i))
    # Only worth it (and only needed) when a batch reduction leaves the loop.
    if not any(OPS[i.op].kind == "reduce_batch" for i in step.body if id(i) in sunk):
        return instr, [], {}

    outside = {id(p): a for p, a in zip(scan.x_params + scan.const_params, scan.xs + scan.consts)}
    const_instrs = {id(i.out): i for i in step.body if i.op == "const"}
    stacked: list[Value] = []  # step values to save per step for the moved work
    stacked_outer: list[Value] = []
    post: list[Instr] = []
    for i in step.body:
        if id(i) not in sunk:
            continue
        args = []
        for a in i.args:
            if id(a) not in outside:
                if id(a) in const_instrs:
                    copy, (v,) = moved_instr(const_instrs[id(a)], (), names)
                    post.append(copy)
                elif any(res[k] is a for k in range(nc, nc + ny)):  # already stacked
                    v = instr.outs[next(k for k in range(nc, nc + ny) if res[k] is a)]
                elif a.type.batch is Batch.NONE:
                    # A loop-invariant value the step computes (power's rule on a parameter
                    # exponent): it has no rows to stack, so this loop is left as it is.
                    return instr, [], {}
                else:  # the carry at t, or a value the loop computes anyway: stack it
                    v = Value(_fresh(names, a.name + "_seq"), to_seq(a.type))
                    stacked.append(a)
                    stacked_outer.append(v)
                outside[id(a)] = v
            args.append(outside[id(a)])
        new, outs = moved_instr(i, args, names)
        post.append(new)
        outside.update((id(o), n) for o, n in zip(i.outs, outs))

    moved = {id(o) for i in step.body if id(i) in sunk for o in i.outs}
    keep = [k for k in range(len(res)) if k < nc or id(res[k]) not in moved]
    replaced = {id(instr.outs[k]): outside[id(res[k])]
                for k in range(nc, len(res)) if k not in keep}
    ys_keep = [k for k in keep if nc <= k < nc + ny]
    acc_keep = [k for k in keep if k >= nc + ny]
    results = (*res[:nc], *(res[k] for k in ys_keep), *stacked, *(res[k] for k in acc_keep))
    new_step = replace(step, body=tuple(i for i in step.body if id(i) not in sunk), results=results)
    # The values stacked for the moved work are new stacked outputs, after the kept ones.
    ys = (*(instr.outs[k] for k in ys_keep), *stacked_outer)
    new = scan.rebuild(new_step, ys=ys, accs=(instr.outs[k] for k in acc_keep))
    return new, post, replaced


def _fresh(names: set[str], base: str) -> str:
    name, k = base.replace("'", "_next"), 0
    while name in names:
        name, k = f"{base}{k}".replace("'", "_next"), k + 1
    names.add(name)
    return name
