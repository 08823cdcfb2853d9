"""Reverse mode: a function -> (forward that also returns residuals, backward).

`vjp(f)` walks f's instructions in reverse with a map from each forward value to its cotangent,
applying the rule from `vjp.VJP` to each instruction, summing fan-in with `add`, and summing a
cotangent down to its value's type after a broadcast (`vjp.unbroadcast`). The backward function
reads forward values directly; those it reads are the *residuals*, which the forward must return:

    fwd(params...)                      -> (results..., residuals...)
    bwd(residuals..., d_results...)     -> (d_params...)

The time loop is where this gets interesting. A `scan` is differentiated by differentiating its
step, then running the step's backward in a reverse scan (t = T-1..0):

  * the reverse scan's carry is the cotangent of the forward carry, starting from the cotangent
    of the final state;
  * its per-step inputs are the step's residuals at time t and the cotangent of the output y_t;
  * its per-step outputs are the cotangents of the forward's per-step inputs x_t, and its
    accumulators (summed over time) are the cotangents of the loop-invariant values (weights).

The step's residuals are of three kinds. A step input x_t is already a sequence outside the loop;
a loop-invariant value (a weight) is passed to the reverse loop unchanged; anything else -- a value
computed in the step, or the carry at time t -- must be saved per step, so the forward scan gets
an extra stacked output for it. That set is exactly what the forward pass saves for the backward.

Parameters may be *frozen* (a cell's `const` and hyper-parameters): constants for the
derivative. Nothing that depends only on them is differentiated, and a scan's step gets the
step parameters of frozen (or otherwise constant) arguments frozen too, so the reverse loop
accumulates no cotangent for them; each still has its (zero) slot among the results.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .ir import Builder, Func, Instr, Scan, Value
from .shapes import ONE, Batch
from .source import InternalError
from .vjp import VJP, unbroadcast


@dataclass(frozen=True)
class Vjp:
    fwd: Func  # f's results, then the residuals
    bwd: Func  # (residuals..., cotangents of f's results...) -> cotangents of f's params
    n_results: int
    # id(backward value) -> (that value, the forward value it is the cotangent of); both are
    # kept so that their ids cannot be reused while the table lives.
    adjoint_names: dict[int, tuple[Value, Value]] = field(default_factory=dict)

    @property
    def residuals(self) -> tuple[Value, ...]:
        return self.fwd.results[self.n_results :]


def active_values(f: Func, frozen=()) -> set[int]:
    """Values that depend on a parameter of f that is not frozen (constants, frozen
    parameters and their combinations do not)."""
    frozen_ids = {id(p) for p in frozen}
    active = {id(p) for p in f.params if id(p) not in frozen_ids}
    for instr in f.body:
        if any(id(a) in active for a in instr.args):
            active.update(id(o) for o in instr.outs)
    return active


def _names(f: Func) -> list[str]:
    return [p.name for p in f.params] + [o.name for i in f.body for o in i.outs]


def vjp(f: Func, adjoint_names: dict | None = None, frozen=()) -> Vjp:
    """Differentiate f. `adjoint_names` collects, for printing, which backward value is the
    complete cotangent of which named forward value (loop bodies included). `frozen`: params
    of f that are constants for the derivative (their cotangent is a zero)."""
    active = active_values(f, frozen)
    b = Builder(names=_names(f), prefix="t")
    cotangent: dict[int, Value] = {}
    adjoint_names = {} if adjoint_names is None else adjoint_names

    def accumulate(v: Value, g: Value):
        prev = cotangent.get(id(v))
        cotangent[id(v)] = g if prev is None else b.add(prev, g)

    seeds = tuple(Value(b.fresh("d" + r.name), r.type) for r in f.results)
    # A result returned twice (h' as the next state and as the output) sums its seeds: that add
    # belongs to the statement that defined the result.
    defined_at = {id(o): i.span for i in f.body for o in i.outs}
    for r, s in zip(f.results, seeds):
        b.span, b.grad = defined_at.get(id(r)), True
        accumulate(r, s)

    forward_body = list(f.body)
    for pos in range(len(f.body) - 1, -1, -1):
        instr = f.body[pos]
        for o in instr.outs:  # o's cotangent is complete now: every use of o came later
            if id(o) in cotangent:
                g = cotangent[id(o)]
                adjoint_names.setdefault(id(g), (g, o))
        dys = [cotangent.get(id(o)) for o in instr.outs]
        if all(d is None for d in dys) or not any(id(a) in active for a in instr.args):
            continue
        b.span, b.grad = instr.span, True
        if instr.op == "scan":
            grads, forward_body[pos] = _scan_vjp(b, instr, dys, adjoint_names, active)
        else:
            rule = VJP.get(instr.op)
            if rule is None:
                raise InternalError(f"no VJP rule for op '{instr.op}'")
            grads = rule(b, instr, dys)
        for a, g in zip(instr.args, grads, strict=True):
            if g is not None and id(a) in active:
                accumulate(a, unbroadcast(b, g, a))

    b.span, b.grad = None, True
    results = []
    for p in f.params:
        g = cotangent.get(id(p))
        if g is None:
            g = b.const(0.0, like=p.type)
        adjoint_names.setdefault(id(g), (g, p))
        results.append(g)

    body = _rematerialize(b, forward_body)
    forward_ids = {id(p) for p in f.params} | {id(o) for i in forward_body for o in i.outs}
    residuals: list[Value] = []
    seen: set[int] = set()
    for instr in body:
        for a in instr.args:
            if id(a) in forward_ids and id(a) not in seen:
                seen.add(id(a))
                residuals.append(a)
    bwd = Func(f.name + "_bwd", tuple(residuals) + seeds, tuple(body), tuple(results))
    fwd = Func(f.name, f.params, tuple(forward_body), f.results + tuple(residuals))
    return Vjp(fwd, bwd, len(f.results), adjoint_names)


# Forward instructions the backward recomputes rather than reads as residuals: a reshape or a
# transpose costs nothing, and an outer product (a mul that broadcasts two reshaped vectors to a
# matrix, as outer(v, k) is written) is cheaper to redo than to save at every step.
_FREE = ("reshape", "transpose", "expand")


def _rematerialize(b: Builder, forward_body) -> list[Instr]:
    """b's backward body, with the forward values it reads that are cheap to recompute
    (`_FREE` ops and outer products) recomputed at its start from what they read, so the
    forward saves the smaller values (v and k, not v k^T; the state C, not a reshape of it)."""
    made = {id(o): i for i in forward_body for o in i.outs}
    position = {id(i): k for k, i in enumerate(forward_body)}

    def broadcast(a: Value, out: Value) -> bool:  # a has a size-1 axis that out repeats
        t = out.type
        return a.type.rank == t.rank and any(d == ONE and e != ONE
                                             for d, e in zip(a.type.shape, t.shape))

    def cheap(instr: Instr) -> bool:
        if instr.op in _FREE:
            return True
        return (instr.op == "mul" and instr.out.type.rank > 1
                and all(broadcast(a, instr.out) for a in instr.args))

    todo = [a for i in b.body for a in i.args if id(a) in made and cheap(made[id(a)])]
    chosen: dict[int, Instr] = {}
    while todo:
        instr = made[id(todo.pop())]
        if id(instr) not in chosen:
            chosen[id(instr)] = instr
            todo += [a for a in instr.args if id(a) in made and cheap(made[id(a)])]
    if not chosen:
        return list(b.body)
    mapping: dict[int, Value] = {}
    front = []
    for instr in sorted(chosen.values(), key=lambda i: position[id(i)]):
        outs = tuple(Value(b.fresh(o.name.replace("'", "_next")), o.type) for o in instr.outs)
        args = tuple(mapping.get(id(a), a) for a in instr.args)
        front.append(replace(instr, args=args, outs=outs, grad=True))
        mapping.update((id(o), n) for o, n in zip(instr.outs, outs))
    rest = [replace(i, args=tuple(mapping.get(id(a), a) for a in i.args)) for i in b.body]
    return front + rest


def _scan_vjp(b: Builder, instr: Instr, dys: list[Value | None], adjoint_names,
              active: set[int]) -> tuple[list[Value | None], Instr]:
    """Cotangents of a scan's arguments (None for the constant sequences and consts), and the
    forward scan rewritten to save residuals."""
    scan = Scan.of(instr)
    step, nc = scan.step, scan.n_carry
    if scan.acc_results:
        raise InternalError(
            "differentiating a scan with accumulators (second order) is not supported")
    if scan.reverse:
        raise InternalError("differentiating a reverse scan is not supported")
    xs_args, const_args = scan.xs, scan.consts
    xs_p, const_p = scan.x_params, scan.const_params
    # A sequence or loop-invariant argument that is constant outside is constant inside; the
    # carry stays active (the step may make it depend on active values).
    live = [id(a) in active for a in (*xs_args, *const_args)]
    frozen = [p for p, on in zip((*xs_p, *const_p), live) if not on]
    g = vjp(step, adjoint_names, frozen)
    step_residuals = g.bwd.params[: len(g.residuals)]
    seeds = g.bwd.params[len(g.residuals) :]

    # Sort the step's residuals: sequences we already have, weights, and values to save.
    # Loop-invariant values computed in the step (a constant, a product of weights) are the
    # same at every step: the reverse step recomputes them rather than saving T copies.
    per_step: list[tuple[Value, Value]] = []  # (value inside the step, its sequence outside)
    consts: list[tuple[Value, Value]] = []
    saved: list[Value] = []
    invariant = _invariant_instrs(step, const_p, step_residuals)
    recomputed = {id(o) for i in invariant for o in i.outs}
    needed_consts = {id(a) for i in invariant for a in i.args if a in const_p}
    for r in step_residuals:
        if id(r) in recomputed:
            continue
        if r in xs_p:
            per_step.append((r, xs_args[xs_p.index(r)]))
        elif r in const_p:
            consts.append((r, const_args[const_p.index(r)]))
        elif any(r is y for y in scan.y_results):  # an output the loop stacks anyway
            k = next(k for k, y in enumerate(scan.y_results) if y is r)
            per_step.append((r, scan.ys[k]))
        else:
            saved.append(r)
    for p, a in zip(const_p, const_args):
        if id(p) in needed_consts and not any(p is c for c, _ in consts):
            consts.append((p, a))
    stacked = [Value(b.fresh(r.name.replace("'", "_next") + "_seq"), r.type.with_batch(Batch.SEQ))
               for r in saved]
    per_step += list(zip(saved, stacked))

    # The forward scan, now also stacking the saved values as extra per-step outputs.
    fwd_step = Func(step.name, step.params, g.fwd.body, step.results + tuple(saved))
    forward = scan.rebuild(fwd_step, ys=scan.ys + tuple(stacked))

    # The reverse scan: carry = d(carry); xs = residuals at t and d(y_t); consts = weights.
    d_carry, d_ys = scan.split_outs(dys)[:2]
    d_final = [d if d is not None else b.const(0.0, like=c.type)
               for d, c in zip(d_carry, scan.carry_init)]
    d_ys = [d if d is not None else b.const(0.0, like=o.type) for d, o in zip(d_ys, scan.ys)]
    rev_params = (seeds[:nc] + tuple(v for v, _ in per_step)
                  + seeds[nc:] + tuple(v for v, _ in consts))
    # Its results: d(carry), then d(x_t) and d(consts) for the arguments that are not constant.
    d_carry_t, d_xs_t, d_consts_t = scan.split_args(g.bwd.results)
    d_live = [r for r, on in zip((*d_xs_t, *d_consts_t), live) if on]
    rev_step = Func(step.name + "_bwd", rev_params, tuple(invariant) + g.bwd.body,
                    (*d_carry_t, *d_live))
    # Its outputs: d(initial carry), then d(x_t) stacked over time, then d(consts) summed.
    n_live_xs = sum(live[: len(xs_p)])
    outs = b.scan(rev_step, d_final, xs=[*(s for _, s in per_step), *d_ys],
                  consts=[c for _, c in consts], n_ys=n_live_xs, reverse=True)
    found = iter(outs[nc:])
    return [*outs[:nc], *(next(found) if on else None for on in live)], forward


def _invariant_instrs(step: Func, const_p, residuals) -> list[Instr]:
    """The step instructions (in order) that compute the loop-invariant residuals: values with
    no batch axis, which depend on the loop constants only."""
    defs = {id(o): i for i in step.body for o in i.outs}
    wanted: set[int] = set()
    stack = [r for r in residuals if r.type.batch is Batch.NONE and id(r) in defs]
    while stack:
        v = stack.pop()
        if id(v) in defs and id(defs[id(v)]) not in wanted:
            wanted.add(id(defs[id(v)]))
            stack += [a for a in defs[id(v)].args if id(a) in defs]
    return [i for i in step.body if id(i) in wanted]
