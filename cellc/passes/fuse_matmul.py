"""Fuse matrix products that share their vector operand into one product plus a split.

    %a = matmul %W_xi, %x                   %W = concat %W_xi, %W_xf
    %b = matmul %W_xf, %x          ->       %ab = matmul %W, %x
                                            %a, %b = split %ab {sizes=(H, H)}

The concatenation reads only parameters, so `hoist` moves it out of the loop (once per call)
and the loop runs one GEMM instead of several.
"""

from __future__ import annotations

from dataclasses import replace

from ..ir import Builder, Func, Instr, substitute
from ..shapes import Batch
from .util import all_names, map_steps


def fuse_matmul(f: Func) -> Func:
    f = map_steps(f, fuse_matmul)
    position = {id(p): -1 for p in f.params}
    for k, instr in enumerate(f.body):
        for o in instr.outs:
            position[id(o)] = k
    groups: dict[int, list[int]] = {}
    for k, instr in enumerate(f.body):
        if instr.op == "matmul" and instr.args[0].type.batch is Batch.NONE:
            groups.setdefault(id(instr.args[1]), []).append(k)
    fusable = {}
    for ks in groups.values():
        first = ks[0]
        weights = [f.body[k].args[0] for k in ks]
        distinct = len({id(w) for w in weights}) == len(weights)
        # Every weight must exist where the first product is, to put the fused one there.
        if len(ks) > 1 and distinct and all(position[id(w)] < first for w in weights):
            fusable[first] = ks
    if not fusable:
        return f
    b = Builder(names=all_names(f), prefix="mm")
    skip = {k for ks in fusable.values() for k in ks}
    mapping = {}
    body: list[Instr] = []
    for k, instr in enumerate(f.body):
        if k in fusable:
            ks = fusable[k]
            b.body, b.span, b.grad = [], instr.span, instr.grad
            w = b.op("concat", *(f.body[j].args[0] for j in ks))
            y = b.op("matmul", w, instr.args[1])
            parts = b.emit("split", [y], {"sizes": tuple(f.body[j].out.type.shape[0] for j in ks)})
            for j, part in zip(ks, parts):
                mapping[id(f.body[j].out)] = part
            body += b.body
        elif k not in skip:
            body.append(instr)
    return substitute(replace(f), mapping, body)
