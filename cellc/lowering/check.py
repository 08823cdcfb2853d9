"""`verify_plan`: a plan's invariants, checked like the IR's `verify`."""

from __future__ import annotations

from ..source import InternalError
from .nodes import (
    Arg,
    FunctionPlan,
    Kernel,
    Loc,
    Nest,
    Offset,
    Plan,
    Product,
    Ptr,
    Result,
    RowBlock,
    RowSum,
    TimeLoop,
    Work,
)
from .sizes import mul, total


def _locs_of(node) -> tuple[list[Loc], list[Loc]]:
    """(read, written) locations of a node other than a loop."""
    if isinstance(node, Kernel):
        return node.ins, node.outs
    if isinstance(node, Product):
        return [x for x in (node.a, node.b, node.bm) if x is not None], [node.out]
    if isinstance(node, RowSum):
        return [node.src], [node.out]
    if isinstance(node, Nest):
        return node.ins, node.outs
    raise InternalError(f"plan: unknown node {type(node).__name__}")


def _root(p: Ptr) -> Ptr:
    while isinstance(p, (Offset, RowBlock)):
        p = p.base
    return p


def _region_coef(w: Work) -> list:
    k = {"seq": 0, "batch": 1, "step": 1}.get(w.rows, 2)
    coef = [0, 0, 0]
    coef[k] = mul(w.cols, 1 if k < 2 else w.rows)
    return coef


def _sum_coefs(regions: list[Work]) -> list:
    return [total(c) for c in zip(*[_region_coef(w) for w in regions])] or [0, 0, 0]


def verify_plan(p: Plan) -> Plan:
    """Check a plan's invariants; raises InternalError naming the first broken one.

    Every pointer is defined once, before any op uses it, and one defined in a loop's step
    only inside it; offsets and row blocks have a defined base; no op writes through an
    argument; every kernel's outputs have its loop shape and a fused kernel has a location
    for each value it reads and stores; the inlined products are inside a loop; the
    workspace formula is the sum of the regions and each loop's step share is the sum of its
    step's regions; every result buffer is defined."""
    for fp in p.functions:
        _verify_function(fp)
    return p


def _verify_function(fp: FunctionPlan) -> None:
    defined: set[int] = set()
    regions: list[Work] = []

    def fail(msg: str):
        raise InternalError(f"plan {fp.name}: {msg}")

    def need(loc: Loc, scope: set[int], what: str):
        if loc.ptr is not None and id(loc.ptr) not in scope:
            fail(f"{what} reads or writes a pointer that is not defined before it")

    def walk(ops: list, scope: set[int], in_loop: bool) -> list[Work]:
        made: list[Work] = []
        for op in ops:
            if isinstance(op, Ptr):
                if id(op) in defined:
                    fail(f"pointer {type(op).__name__} defined twice")
                base = getattr(op, "base", None)
                if base is not None and id(base) not in scope:
                    fail(f"{type(op).__name__} of a pointer that is not defined before it")
                if isinstance(op, RowBlock) and not in_loop:
                    fail("a row block outside the time loop")
                defined.add(id(op))
                scope.add(id(op))
                if isinstance(op, Work):
                    made.append(op)
                continue
            if isinstance(op, TimeLoop):
                before = walk([*op.init, *op.ys_fill, *op.prep, *op.transpose_allocs,
                               *op.transposes], scope, in_loop)
                made += before
                inner = walk(op.body, set(scope), True)  # the step's pointers stay inside
                if any(w.rows == "seq" for w in inner):
                    fail("a step allocates a whole-sequence region")
                share = _sum_coefs(inner)
                if tuple(share[1:]) != tuple(op.step_ws):
                    fail(f"loop step workspace {op.step_ws} is not its regions' {share[1:]}")
                made += inner
                continue
            reads, writes = _locs_of(op)
            name = type(op).__name__
            for loc in [*reads, *writes]:
                need(loc, scope, name)
            for loc in writes:
                if loc.ptr is None or isinstance(_root(loc.ptr), Arg):
                    fail(f"{name} writes to an argument or a constant")
            if isinstance(op, Kernel):
                if any((o.rows, o.cols) != (op.rows, op.cols) for o in op.outs):
                    fail(f"kernel {op.what} writes a location of another shape")
                if op.what == "fused" and (len(op.ins) != len(op.inputs)
                                           or len(op.outs) != len(op.outputs) or not op.outs):
                    fail("fused kernel without a location for each value it reads or stores")
            if isinstance(op, Nest):
                if any(len(x.strides) != len(op.shape) for x in [*op.ins, *op.outs]):
                    fail(f"nest {op.what} reads or writes with strides of another rank")
                if op.accumulate and len(op.outs) != 1:
                    fail("an accumulating nest has more than one output")
            inlined = isinstance(op, Product) and op.strategy != "library"
            if inlined and (not in_loop or op.bm is None):
                fail(f"{op.strategy} product outside a loop or without its kernel operand")
        return made

    regions = walk(fp.ops, set(), False)
    whole = _sum_coefs(regions)
    if tuple(whole) != tuple(fp.workspace):
        fail(f"workspace {fp.workspace} is not the sum of its regions {tuple(whole)}")
    results = {op.slot for op in fp.ops if isinstance(op, Result)}
    if results != set(range(fp.n_buffers)):
        fail("a result buffer has no pointer")
