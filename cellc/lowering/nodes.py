"""The plan's data: pointers, locations, nodes (kernels, products, reductions, the time loop),
and the plan of a function. Plain dataclasses: `planner` makes them, `text` prints them,
`check` verifies them, a renderer (backends/llvm_ir.py) turns them into code.

A size below (`cols`, a stride, an offset, a workspace coefficient) is an int, or in a generic
plan (sizes None) a `Dim` of the size symbols, which the kernel computes at run time (see
`sizes`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import Func, Instr, Value

# Products inside the time loop use the inlined kernel for matrices up to this many elements
# (1 MB in float32: the transposed copy stays in cache), and, for W @ x, which needs that copy,
# only when the sequence has at least INLINE_MIN_STEPS steps to pay for it.
INLINE_MAX_ELEMENTS = 1 << 18
INLINE_MIN_STEPS = 8
# With packed panels (Caps.panel) a weight up to this many elements is copied into panels once
# per call for the inlined kernel (32 MB in float32): each panel stays in cache while every
# row block reads it, so a step reads the weight once, where a library call packs it again.
# Measured M=16, K=1024, N=4096: 94 GFLOP/s inlined and packed, 68 with MKL per step.
PACKED_MAX_ELEMENTS = 1 << 23
# A library product with Product.team runs on the team only from this many multiply-adds
# (m*k*n: ~20 us of work at 100 GFLOP/s, against a fork and join of a few us) and with at
# least two blocks of TEAM_GEMM_ROWS output rows.
TEAM_GEMM_MIN = 1 << 20
TEAM_GEMM_ROWS = 16
# A loop splits its steps' columns only from this many multiply-adds per row and step in its
# products (an H=256 LSTM has 256*1024): each op then ends in a barrier (~0.1-0.3 us).
COLUMN_MIN_WORK = 1 << 17
# Ops that need no code: their result is a view of their argument.
VIEWS = ("split", "broadcast", "reshape")


@dataclass(frozen=True)
class Caps:
    """What the target offers the plan: `inline_products` is an inlined GEMM kernel for the
    products inside time loops (without one, every product goes to the library)."""

    inline_products: bool = True
    # Time loops may run on a thread team the caller passes (the JIT's kernels; a library
    # built ahead of time keeps its `sizes` argument as documented: not read when specialized).
    team: bool = True
    # The library runs one thread per call on the team's threads (MKL inside torch's OpenMP
    # team does; the JIT keeps OpenBLAS's own pool at one thread while the team exists), so
    # products outside team loops are split in blocks of output rows across the team.
    library_in_team: bool = False
    # The inlined kernel's column panel, in elements (0: Bm stays K x N): the weights the loops
    # transpose are packed in panels of this many columns, each K x panel contiguous (the last
    # one narrower), so that one panel stays in cache while every row block reads it.
    panel: int = 0


# -- pointers: defined once, at their place in the op list -------------------------------------


@dataclass(eq=False)
class Ptr:
    """A pointer the renderer defines where this op stands."""


@dataclass(eq=False)
class Arg(Ptr):
    index: int  # args[index]


@dataclass(eq=False)
class Result(Ptr):
    slot: int  # results[slot], a buffer the caller allocates


@dataclass(eq=False)
class Work(Ptr):
    """A fresh workspace region of rows x cols elements (bump allocation)."""

    rows: object
    cols: int
    index: int  # regions are numbered in order


@dataclass(eq=False)
class Offset(Ptr):
    base: Ptr
    elements: int


@dataclass(eq=False)
class RowBlock(Ptr):
    """Row block t of a sequence buffer inside the time loop: base + t*B*row_stride."""

    base: Ptr
    row_stride: int


@dataclass(eq=False)
class Loc:
    """Where a value's elements are: element (r, c) is at ptr[r * row_stride + c * col_stride]."""

    ptr: Ptr | None  # None: an immediate constant
    row_stride: int
    col_stride: int
    rows: object  # "seq" (T*B), "step" (active rows), "batch" (B) or an int
    cols: int
    const: float | None = None


# -- nodes ------------------------------------------------------------------------------------


@dataclass(eq=False)
class Kernel:
    """for r < rows, c < cols: outs[k][r, c] = f(ins[..][r, c]), one loop nest.

    what: "fused" (the elementwise `instrs`, reading `inputs`, storing `outputs`), "copy",
    "fill" (a copy from a constant), "add" (outs[0] = ins[0] + ins[1]) or "sum" (the same,
    reassociable: a sum over batch rows)."""

    what: str
    ins: list[Loc]
    outs: list[Loc]
    rows: object
    cols: int
    instrs: list[Instr] = field(default_factory=list)
    inputs: list[Value] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)


@dataclass(eq=False)
class Product:
    """C = op(A) op(B) for a matmul, matmul_t or outer instruction.

    strategy "library": a BLAS gemm. "inline": the inlined kernel on `bm` (K x N). "choose": at
    run time, a GEMV on `a` (the weight) for one active row (if `gemv`), else the inlined kernel
    on the transposed copy `bm` if the loop made it, else the library."""

    instr: Instr
    out: Loc
    a: Loc
    b: Loc
    strategy: str
    bm: Loc | None = None
    gemv: bool = False
    panel: int = 0  # bm packed in column panels this wide (see Caps.panel); 0: K x N
    # A library product split in blocks of its output's rows, one library call per thread of
    # the team (at run time: when the call has a team and the product is large enough).
    team: bool = False


@dataclass(eq=False)
class RowSum:
    """[rows, n] -> [rows, 1]: sum (mean: times 1/n) over features."""

    instr: Instr
    src: Loc
    out: Loc
    scale: float | None  # None: 1/n with n symbolic, computed at run time


@dataclass(eq=False)
class Strided:
    """Where an operand of a Nest is: element (r, i) of the nest's index i at
    ptr[r * row_stride + sum_k i[k] * strides[k]] (stride 0: that axis repeats; ptr None: the
    constant `const`)."""

    ptr: Ptr | None
    row_stride: object
    strides: tuple
    const: float | None = None


@dataclass(eq=False)
class Nest:
    """The loop nest of a tensor-valued op: for r < rows and every index i < shape (the
    per-example axes, row-major), outs[k][r, i] = f(ins[..][r, i]); with `accumulate` ("sum"
    or "max") the one output is combined with f instead, and is read at stride 0 along the
    axes it reduces (it was filled before). f: "fused" (the elementwise `instrs`, reading
    `inputs`, storing `outputs`), "copy" or "mul" (the product of the two inputs: matvec)."""

    what: str
    ins: list[Strided]
    outs: list[Strided]
    rows: object
    shape: tuple
    accumulate: str | None = None
    instrs: list[Instr] = field(default_factory=list)
    inputs: list[Value] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)


@dataclass(eq=False)
class TimeLoop:
    """The time loop. Before it: `init` (the carry copied into the final-carry buffers, the
    stacked outputs' buffers), `ys_fill` (zeroed only when a sequence ends early), `prep` (the
    accumulators zeroed, the sequences made contiguous), the regions of `transposes` (weights
    transposed for the inlined kernel, only when it will be used). `body` runs per step; the
    step's workspace regions take step_ws = (b, c) elements, b*B + c. No step reads another
    row's values, so the loop can run on blocks of rows independently (see `one_thread`)."""

    instr: Instr
    reverse: bool
    init: list
    ys_fill: list[Kernel]
    prep: list
    transpose_allocs: list
    transposes: list[Kernel]
    body: list
    step_ws: tuple[int, int]
    carry: list[Loc] = field(default_factory=list)
    xs: list[Loc] = field(default_factory=list)
    # The batch rows may be split across a thread team, each thread running the whole loop on
    # its block of rows, when `one_thread` is None; otherwise it says why one thread runs it.
    # `row_ptrs`: the per-row buffers from before the loop that the body reads or writes, with
    # their row strides (a thread's view of them starts at its first row).
    one_thread: str | None = None
    row_ptrs: list[tuple[Ptr, object]] = field(default_factory=list)
    # A batch too small for two blocks of rows may instead split each step's columns across
    # the team (`columns`): every thread runs every step on every row, each op on its share of
    # the op's columns, with a barrier after each op. `all_gemv`: every product has the GEMV
    # of one active row, so a batch of one row can split too (the blocked kernel needs the
    # copy that T >= INLINE_MIN_STEPS and B > 1 make).
    columns: bool = False
    all_gemv: bool = False
    # With `columns`: the ids of the body's ops after which the threads wait for each other
    # (see planner.column_barriers): after products, and where an op reads or writes what
    # another thread may have touched since the last barrier; always after the step's last op.
    barriers: set[int] = field(default_factory=set)


@dataclass
class FunctionPlan:
    name: str
    func: Func
    ops: list
    results: list[tuple[str, int]]  # ("arg", k): return argument k; ("buf", slot): a buffer
    n_buffers: int
    workspace: tuple  # elements: a*T*B + b*B + c
    regions: list[Work] = field(default_factory=list)


@dataclass
class Plan:
    sizes: dict | None  # None: the generic plan, for every size
    caps: Caps
    functions: list[FunctionPlan]
    symbols: list[str] = field(default_factory=list)  # the order of the kernels' `sizes` argument
