"""Counted loops for llvmlite builders: `for_range`, the one way native code loops.

    with for_range(b, 0, n, name="r", head="row", exit="row_end") as r:
        ...  # the body, at block `head`; r is an i64 phi

is a bottom-tested loop (the test `i + step < hi` ends the body), guarded unless `guard=False`.
"""

from __future__ import annotations

from contextlib import contextmanager

from llvmlite import ir

I64 = ir.IntType(64)


def _i64(v) -> ir.Value:
    return ir.Constant(I64, v) if isinstance(v, int) else v


@contextmanager
def for_range(b: ir.IRBuilder, lo, hi, *, step: int = 1, name: str = "", head: str = "loop",
              exit: str = "exit", guard: bool = True, exit_last: bool = True):
    """for i = lo; i < hi; i += step; yields i and leaves `b` at the exit block.

    `lo` and `hi` are i64 values or Python ints. A Python 0 for `lo` guards the loop with
    `hi > 0`, any other `lo` with `lo < hi`; `guard=False` enters the body unconditionally (hi
    is known to exceed lo). The head and exit blocks are added on entry; with `exit_last` the
    exit block is moved after the blocks the body added, so nested loops read top-down.
    """
    fn = b.function
    pre = b.block
    head_b = fn.append_basic_block(head)
    exit_b = fn.append_basic_block(exit)
    hi = _i64(hi)
    if not guard:
        b.branch(head_b)
    elif isinstance(lo, int) and lo == 0:
        b.cbranch(b.icmp_signed(">", hi, ir.Constant(I64, 0)), head_b, exit_b)
    else:
        b.cbranch(b.icmp_signed("<", _i64(lo), hi), head_b, exit_b)
    b.position_at_end(head_b)
    i = b.phi(I64, name)
    i.add_incoming(_i64(lo), pre)
    yield i
    nxt = b.add(i, ir.Constant(I64, step))
    i.add_incoming(nxt, b.block)
    b.cbranch(b.icmp_signed("<", nxt, hi), head_b, exit_b)
    if exit_last:
        fn.blocks.remove(exit_b)
        fn.blocks.append(exit_b)
    b.position_at_end(exit_b)
