"""The lowering plan: every decision between the optimized IR and native code, as plain data.

`plan(func, sizes, caps)` decides, once, for one top-level function at concrete sizes (or,
with sizes None, the generic plan: every feature size a `Dim` of the size symbols, which the
kernels compute at run time, and every product a library GEMM; see `sizes`):

- where each value lives (`Loc`: a pointer plus row and column strides; a view of a `split`,
  `broadcast` or parameter vector costs nothing, a scalar constant is an immediate, a value
  whose only use is a `concat` is computed into its slice of the concat's buffer);
- which elementwise instructions fuse into one loop nest (`Kernel`), and which of their values
  must be stored because something outside the kernel reads them; a tensor-valued value
  (per-example matrices, heads) keeps its numbers row-major in one row, so a `reshape` is a
  view, and an op that broadcasts, transposes, reduces along an axis or multiplies a matrix by
  a vector per head is a loop nest over its axes with a stride per operand and axis (`Nest`);
- how each matrix product runs (`Product`: a library GEMM, or inside the time loop the inlined
  kernel, with a GEMV for one active row and a transposed copy of the weight made per call);
- the workspace: every region the function needs, and its size as a*T*B + b*B + c elements;
- the time loop (`TimeLoop`): what it copies in before the first step, what each step reads (row
  blocks of the sequences, the carry, the constants) and writes (its row block of the stacked
  outputs, the accumulators, the next carry).

A function's plan is a list of ops in the order the renderer emits them. An op is either a
node that computes something or a `Ptr`, which defines a pointer at that point (an argument,
a workspace region, an offset into another pointer): the renderer keeps no decisions of its
own, it turns each op into code with a table and one loop (backends/llvm_ir.py).

Modules: `nodes` (the data), `planner` (`plan`), `text` (`format_plan`, for `cellc show FILE
--emit plan`), `check` (`verify_plan`).
"""

from .check import verify_plan
from .nodes import (
    INLINE_MAX_ELEMENTS,
    INLINE_MIN_STEPS,
    PACKED_MAX_ELEMENTS,
    TEAM_GEMM_MIN,
    TEAM_GEMM_ROWS,
    Arg,
    Caps,
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
    Strided,
    TimeLoop,
    Work,
)
from .planner import broadcast_to, dims, group, plan, plan_function
from .text import format_plan

__all__ = [
    "INLINE_MAX_ELEMENTS", "INLINE_MIN_STEPS", "PACKED_MAX_ELEMENTS", "TEAM_GEMM_MIN",
    "TEAM_GEMM_ROWS", "Arg", "Caps",
    "FunctionPlan", "Kernel", "Loc", "Nest", "Offset", "Plan", "Product", "Ptr", "Result",
    "RowBlock", "RowSum", "Strided", "TimeLoop", "Work",
    "broadcast_to", "dims", "format_plan", "group", "plan", "plan_function", "verify_plan",
]
