"""Hoist loop-invariant and input-only work out of the time loop.

Step work that does not read the carried state runs once over all T*B rows before the loop:

    scan(%h0, %xs, %W, %b):                        %p = matmul %W, %xs        : [T*B,4*H]
      step(%h, %x, %W, %b):                        %q = add %p, %b            : [T*B,4*H]
        %p = matmul %W, %x      : [B,4*H]    ->    scan(%h0, %q, ...):
        %q = add %p, %b                              step(%h, %q, ...):
        %r = add %q, (W_hh @ %h)                       %r = add %q, (W_hh @ %h)

Per-step values become sequences (the loop then reads row block t); work on parameters only
(e.g. a weight concatenation made by `fuse_matmul`, or mLSTM's `sqrt(D)`) runs once. Batch
reductions are never hoisted: summing over B rows is not summing over T*B. Nor are broadcasts
that grow a row (an outer product): hoisted, they would fill a whole-sequence buffer larger than
their operands. Elementwise work on per-step values stays
in the loop unless hoisted work needs it: there it fuses into the step's elementwise pass (in
the sketch above `%q = add %p, %b` stays, and joins `%r`'s add), where hoisted it is a pass of
its own over T*B rows and a whole-sequence buffer.
"""

from __future__ import annotations

from dataclasses import replace

from ..ir import Func, Instr, Scan
from ..ops import OPS
from ..shapes import ONE, Batch
from .util import all_names, moved_instr


def hoist(f: Func) -> Func:
    names = all_names(f)
    body: list[Instr] = []
    changed = False
    for instr in f.body:
        if instr.op == "scan":
            pre, new = _hoist_scan(instr, names)
            body += pre
            changed |= new is not instr
            instr = new
        body.append(instr)
    return replace(f, body=tuple(body)) if changed else f


def _hoist_scan(instr: Instr, names: set[str]) -> tuple[list[Instr], Instr]:
    scan = Scan.of(instr)
    step = scan.step
    outer = {id(p): a for p, a in zip(scan.x_params + scan.const_params, scan.xs + scan.consts)}
    const_instrs = {id(i.out): i for i in step.body if i.op == "const"}
    pre: list[Instr] = []
    origin: dict[int, Instr] = {}  # id of a hoisted copy -> the step's instruction
    hoisted: set[int] = set()
    for i in step.body:
        if i.op in ("const", "scan") or not i.args:
            continue
        if not all(id(a) in outer or id(a) in const_instrs for a in i.args):
            continue
        if OPS[i.op].kind == "reduce_batch" and any(a.type.batch is not Batch.NONE for a in i.args):
            continue
        if OPS[i.op].kind == "elementwise" and _grows(i):
            continue
        args = []
        for a in i.args:
            if id(a) not in outer:  # a constant: copy it out
                copy, (v,) = moved_instr(const_instrs[id(a)], (), names)
                pre.append(copy)
                outer[id(a)] = v
            args.append(outer[id(a)])
        new, outs = moved_instr(i, args, names)
        pre.append(new)
        origin[id(new)] = i
        outer.update((id(o), n) for o, n in zip(i.outs, outs))
        hoisted.add(id(i))
    pre = _keep_needed(pre, origin, hoisted, outer, {id(a) for a in scan.xs})
    if not hoisted:
        return [], instr
    body = tuple(i for i in step.body if id(i) not in hoisted)
    used = {id(a) for i in body for a in i.args} | {id(r) for r in step.results}
    new_xs, new_consts = [], []
    for i in step.body:
        if id(i) in hoisted:
            for o in i.outs:
                if id(o) in used:
                    (new_xs if o.type.batch is Batch.STEP else new_consts).append(o)
    # The hoisted values themselves become the step's new inputs.
    params = (*scan.carry_params, *scan.x_params, *new_xs, *scan.const_params, *new_consts)
    step = replace(step, params=params, body=body)
    xs = (*scan.xs, *(outer[id(o)] for o in new_xs))
    consts = (*scan.consts, *(outer[id(o)] for o in new_consts))
    return pre, scan.rebuild(step, xs=xs, consts=consts)


def _grows(i: Instr) -> bool:
    """Whether an elementwise instruction broadcasts its per-step operands up to more numbers
    per row (mLSTM's outer product v k^T, [NH, D, 1] * [NH, 1, D]): hoisted, it would fill a
    whole-sequence buffer T*B*NH*D*D large; in the loop it fuses into the step's pass."""
    steps = [a.type.shape for a in i.args if a.type.batch is not Batch.NONE]
    out = i.outs[0].type.shape
    def covers(s):  # s has every axis of the output: as many numbers per row
        return all(out[-k] == ONE or (k <= len(s) and s[-k] != ONE)
                   for k in range(1, len(out) + 1))
    return bool(steps) and not any(covers(s) for s in steps)


def _keep_needed(pre: list[Instr], origin: dict, hoisted: set[int], outer: dict,
                 inputs: set[int]) -> list[Instr]:
    """`pre` without the elementwise instructions on per-step values that no other hoisted
    instruction needs and that read only the loop's inputs (`inputs`: ids of its xs),
    products' results and parameters (latest first, so that chains of them stay in the loop
    whole); they leave `hoisted` too, and their outputs `outer`."""
    keep = list(pre)
    for new in reversed(pre):
        old = origin.get(id(new))
        if old is None or OPS[old.op].kind != "elementwise":
            continue
        if all(o.type.batch is not Batch.STEP for o in old.outs):
            continue  # parameters only: computed once, not per step
        if any(any(a is o for a in n.args) for n in keep for o in new.outs):
            continue  # needed by hoisted work (e.g. a product's operand)
        products = {id(o) for n in keep if origin.get(id(n)) is not None
                    and origin[id(n)].op in ("matmul", "matmul_t") for o in n.outs}
        if not all(id(a) in products or id(a) in inputs or a.type.batch is Batch.NONE
                   for a in new.args):
            continue  # only work on the loop's inputs and products' epilogues (`+ bias`)
        keep.remove(new)
        hoisted.discard(id(old))
        for o in old.outs:
            outer.pop(id(o), None)
    return keep
