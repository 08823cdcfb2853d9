"""Plan -> LLVM IR (llvmlite.ir), for one float type: specialized to concrete sizes, or generic.

Each top-level function (the forward program, the backward program) becomes

    void NAME(i64 T, i64 B, i64* batch_sizes, ptr* args, ptr* results, ptr workspace,
              i64* sizes)

`args` and `results` are arrays of data pointers (row-major, contiguous); results that are
computed are written straight into the caller's buffers; every other value lives in `workspace`,
whose size is `workspace_size(T, B)` elements. In a specialized module only T and B (and the
per-step active row counts) are known at run time: every feature size is a constant, so the
fused loops vectorize, and `sizes` is not read, unless the module has thread teams
(`team=True`, the JIT's: sizes[n], after the n symbols, is the threads, and sizes[n+1..n+3] the
addresses of GOMP_parallel, omp_get_thread_num and omp_get_num_threads, or zeros; see
FunctionRenderer.team_loop and team_gemm). In a generic module (a plan for
sizes None) `sizes[k]` is the value of the k-th size symbol (`Plan.symbols`); each distinct
size polynomial of the plan is computed once, in the function's entry block, and handed to the
elementwise loop functions as arguments (their inner loops still vectorize: unit column
strides and `noalias` pointers, only the trip count is unknown).

Every decision (fusion, value locations and views, workspace regions, which products are
inlined, what the time loop reads and writes) is made by `cellc.lowering`; this module renders a
plan's ops in order, from tables:
- `Ptr` ops define pointers (`POINTERS`): arguments, workspace regions, offsets, row blocks;
- a `Kernel` (fused elementwise run, copy, fill, sum) becomes one loop nest in its own function
  with `noalias` pointers, intermediates in registers (`TABLE` maps op -> scalar code);
- a `Product` calls BLAS gemm (`blas.py`) or the inlined kernel (`llvm_gemm`); a `RowSum` is a
  loop with a phi accumulator;
- a `TimeLoop` is a loop over t with the step's ops inline; per-step inputs are row blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from llvmlite import ir

from ..ir import Func
from ..lowering import (
    INLINE_MIN_STEPS,
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
    TimeLoop,
    Work,
    plan,
)
from ..shapes import Dim
from ..source import InternalError
from . import llvm_math
from .llvm_gemm import GemmEmitter, panel_width
from .llvm_loops import for_range

I64 = ir.IntType(64)
I32 = ir.IntType(32)
PTR = ir.PointerType()

CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_TRANS = 101, 111, 112


@dataclass
class Layout:
    """What the caller needs to call a compiled function."""

    name: str
    n_args: int
    results: list[tuple[str, int]]  # ("arg", k): return argument k; ("buf", slot): a buffer
    n_buffers: int
    workspace: tuple = (0, 0, 0)  # elements: a*T*B + b*B + c (ints, or Dims when generic)
    symbols: list[str] = field(default_factory=list)  # the order of the `sizes` argument


# ---------------------------------------------------------------------------------------------
# Scalar code for elementwise ops: (builder, float type, args) -> value


def _fconst(t, x):
    return ir.Constant(t, float(x))


def _select01(b, t, cond):
    return b.select(cond, _fconst(t, 1.0), _fconst(t, 0.0))


def _pow(b, t, args, instr):
    return llvm_math.power(b, args[0], instr.attrs["exponent"])


def _sign(b, t, args, instr):
    """-1, 0 or 1; NaN stays NaN (np.sign)."""
    (x,) = args
    pos = _select01(b, t, b.fcmp_ordered(">", x, _fconst(t, 0.0)))
    neg = _select01(b, t, b.fcmp_ordered("<", x, _fconst(t, 0.0)))
    return _keep_nan(b, x, b.fsub(pos, neg))


def _keep_nan(b, x, y):
    """x where x is NaN, else y: NaN propagates as in NumPy's maximum, minimum and sign."""
    return b.select(b.fcmp_unordered("uno", x, x), x, y)


def _minmax(op):
    def emit(b, t, args, instr):
        x, y = args
        # An ordered compare picks y when either is NaN; that is right for a NaN y only.
        cond = b.fcmp_ordered(">=" if op == "max" else "<=", x, y)
        return _keep_nan(b, x, b.select(cond, x, y))

    return emit


def _relu(b, t, args, instr):
    """max(x, 0) with NaN kept, as np.maximum(x, 0)."""
    (x,) = args
    return b.select(b.fcmp_ordered("<=", x, _fconst(t, 0.0)), _fconst(t, 0.0), x)


def _compare(op: str, ordered: bool = True):
    """1.0 where `x op y`, else 0.0. Ordered compares are false with a NaN, as NumPy's; `!=`
    is unordered: NaN != NaN is true."""
    def emit(b, t, args, instr):
        cmp = b.fcmp_ordered if ordered else b.fcmp_unordered
        return _select01(b, t, cmp(op, args[0], args[1]))

    return emit


def _where(b, t, args, instr):
    """a where c != 0 (NaN included, as NumPy's c != 0), else b: one select."""
    c, x, y = args
    return b.select(b.fcmp_unordered("!=", c, _fconst(t, 0.0)), x, y)


def _unary_math(name: str):
    return lambda b, t, a, i: llvm_math.UNARY[name](b, a[0])


TABLE: dict[str, Callable] = {
    "neg": lambda b, t, a, i: b.fneg(a[0]),
    "sigmoid": lambda b, t, a, i: llvm_math.sigmoid(b, a[0]),
    "tanh": lambda b, t, a, i: llvm_math.tanh(b, a[0]),
    "relu": _relu,
    "exp": lambda b, t, a, i: llvm_math.exp(b, a[0]),
    "log": lambda b, t, a, i: llvm_math.log(b, a[0]),
    "softplus": lambda b, t, a, i: llvm_math.softplus(b, a[0]),
    "sqrt": lambda b, t, a, i: llvm_math.sqrt(b, a[0]),
    "abs": lambda b, t, a, i: llvm_math.fabs(b, a[0]),
    "heaviside": lambda b, t, a, i: _select01(b, t, b.fcmp_ordered(">", a[0], _fconst(t, 0.0))),
    "sign": _sign,
    "pow": _pow,
    "add": lambda b, t, a, i: b.fadd(a[0], a[1]),
    "sub": lambda b, t, a, i: b.fsub(a[0], a[1]),
    "mul": lambda b, t, a, i: b.fmul(a[0], a[1]),
    "div": lambda b, t, a, i: b.fdiv(a[0], a[1]),
    "min": _minmax("min"),
    "max": _minmax("max"),
    "ge": lambda b, t, a, i: _select01(b, t, b.fcmp_ordered(">=", a[0], a[1])),
    "lt": _compare("<"),
    "le": _compare("<="),
    "gt": _compare(">"),
    "eq": _compare("=="),
    "ne": _compare("!=", ordered=False),
    "where": _where,
    "power": lambda b, t, a, i: llvm_math.pow_values(b, a[0], a[1]),
    **{op: _unary_math(op) for op in ("elu", "silu", "gelu", "logsigmoid", "erf")},
    "stop_gradient": lambda b, t, a, i: a[0],  # the identity: only grad.py treats it apart
}


class FunctionRenderer:
    """Renders one function's plan (cellc/lowering) into `module`: one rule per op kind."""

    def __init__(self, module: ir.Module, ftype: ir.Type, blas: dict[str, ir.Function],
                 small_gemm=None, symbols: list[str] = (), generic: bool = False,
                 library_in_team: bool = False, x86: bool = True):
        self.x86 = x86  # x86 code: `pause` in spin loops
        self.small_gemm = small_gemm  # llvm_gemm.GemmEmitter, or None: BLAS for every product
        self.symbols = list(symbols)  # the size symbols, in the order of the `sizes` argument
        self.generic = generic  # sizes are read from `sizes` (a plan for sizes None)
        self.module = module
        self.t = ftype
        self.blas = blas
        self.groups = 0
        self.ptrs: dict[int, ir.Value] = {}
        self.row0 = None  # inside the time loop: the first row of step t (t*B)
        self.row_lo = None  # inside a team loop: the first row of the thread's block
        self.n_all = None  # inside the time loop: the step's active rows in the whole batch
        self.library_in_team = library_in_team
        self.inline_ok = None  # inside the time loop: whether the transposed weights exist
        # Inside a step split by columns: (thread k, threads n, team ctx, the barriers' ops).
        self.split = None

    def nrows(self, kind) -> ir.Value:
        if kind == "seq":
            return self.TB
        if kind == "step":
            return self.n
        if kind == "batch":
            return self.B
        return self.size(kind)

    def size(self, x) -> ir.Value:
        """A plan size as an i64: a constant, or a Dim's value computed in the entry block."""
        if not isinstance(x, Dim):
            return ir.Constant(I64, x)
        if x not in self.size_values:
            self.size_values[x] = _dim_value(self.entry, x, self.symbol_value)
        return self.size_values[x]

    def symbol_value(self, name: str) -> ir.Value:
        if name not in self.size_values:
            k = self.symbols.index(name)
            ptr = self.entry.gep(self.sizes_p, [ir.Constant(I64, k)], source_etype=I64)
            # Named by position: a cell's size names stay out of the IR text.
            self.size_values[name] = self.entry.load(ptr, typ=I64, name=f"size{k}")
        return self.size_values[name]

    def float_size(self, x) -> ir.Value:
        """A Dim as a float of the function's type (a size used as a number), in the entry
        block: exact, the integer (den * x) divided by den."""
        key = ("float", x)
        if key not in self.size_values:
            den = _denominator(x)
            e, t = self.entry, self.t
            v = e.sitofp(self.size(x * den), t)
            self.size_values[key] = e.fdiv(v, ir.Constant(t, float(den))) if den != 1 else v
        return self.size_values[key]

    def ptr(self, p: Ptr | None) -> ir.Value | None:
        return None if p is None else self.ptrs[id(p)]

    # -- entry ----------------------------------------------------------------------------

    def compile(self, fp: FunctionPlan) -> Layout:
        fty = ir.FunctionType(ir.VoidType(), [I64, I64, PTR, PTR, PTR, PTR, PTR])
        fn = ir.Function(self.module, fty, fp.name)
        self.fn = fn
        self.b = b = ir.IRBuilder(fn.append_basic_block("entry"))
        (self.T, self.B, self.batch_sizes, self.args_p, self.results_p, self.ws,
         self.sizes_p) = fn.args
        self.size_values: dict = {}
        if self.generic:
            # Sizes are computed in the entry block, ahead of its branch to the code.
            self.b = b = ir.IRBuilder(fn.append_basic_block("start"))
            self.entry = ir.IRBuilder(fn.entry_basic_block)
            self.entry.position_before(self.entry.branch(fn.blocks[1]))
        self.TB = b.mul(self.T, self.B, name="TB")
        self.n = self.B
        self.ws_off = ir.Constant(I64, 0)
        self.run(fp.ops)
        b.ret_void()
        return Layout(fp.name, len(fp.func.params), fp.results, fp.n_buffers, fp.workspace,
                      self.symbols)

    def run(self, ops: list) -> None:
        for op in ops:
            if isinstance(op, Ptr):
                self.ptrs[id(op)] = POINTERS[type(op)](self, op)
            else:
                NODES[type(op)](self, op)
                if self.split is not None and id(op) in self.split[3]:
                    self.barrier()  # the next op may touch what another thread wrote

    def barrier(self) -> None:
        """Wait for the other threads splitting this step (none when there is one)."""
        b = self.b
        _, n, ctx, _ = self.split
        with b.if_then(b.icmp_signed(">", n, ir.Constant(I64, 1))):
            b.call(_barrier_function(self.module, self.x86), [ctx, n])

    # -- pointers -------------------------------------------------------------------------

    def _load_ptr(self, arr, k: int) -> ir.Value:
        b = self.b
        return b.load(b.gep(arr, [ir.Constant(I64, k)], source_etype=PTR), typ=PTR)

    def _work(self, w: Work) -> ir.Value:
        """The next workspace region (bump allocation)."""
        b = self.b
        ptr = b.gep(self.ws, [self.ws_off], source_etype=self.t)
        size = b.mul(self.nrows(w.rows if w.rows != "step" else "batch"), self.size(w.cols))
        self.ws_off = b.add(self.ws_off, size)
        if self.row_lo is not None and w.rows in ("step", "batch"):  # the block's rows
            ptr = b.gep(ptr, [b.mul(self.row_lo, self.size(w.cols))], source_etype=self.t)
        return ptr

    def _offset(self, p: Offset) -> ir.Value:
        return self.b.gep(self.ptr(p.base), [self.size(p.elements)], source_etype=self.t)

    def _row_block(self, p: RowBlock) -> ir.Value:
        b = self.b
        step = b.mul(self.row0, self.size(p.row_stride))
        return b.gep(self.ptr(p.base), [step], source_etype=self.t)

    # -- elementwise loops ----------------------------------------------------------------

    def kernel(self, k: Kernel) -> None:
        code = KERNELS[k.what](self, k)
        if self.split is None:
            return self.elementwise_loop(k.ins, k.outs, k.rows, k.cols, code)
        if k.rows == "step":  # this thread's columns
            cols = self.share(self.size(k.cols), 16 if isinstance(self.t, ir.FloatType) else 8)
            return self.elementwise_loop(k.ins, k.outs, k.rows, k.cols, code, cols)
        with self.b.if_then(self.b.icmp_signed("==", self.split[0], ir.Constant(I64, 0))):
            self.elementwise_loop(k.ins, k.outs, k.rows, k.cols, code)  # not per row: once

    def share(self, total: ir.Value, align: int) -> list[ir.Value]:
        """[lo, hi): thread k's share of `total` items among the n threads splitting a step
        (self.split), lo a multiple of `align`; the last thread's hi is total."""
        b = self.b
        k, n = self.split[:2]

        def bound(j):
            v = b.sdiv(b.mul(total, j), n)
            return b.mul(b.sdiv(v, ir.Constant(I64, align)), ir.Constant(I64, align))

        k1 = b.add(k, ir.Constant(I64, 1))
        last = b.icmp_signed("==", k1, n)
        return [bound(k), b.select(last, total, bound(k1))]

    def _fused_code(self, k: Kernel):
        t = self.t

        def compute(b, vals):
            env = {id(a): v for a, v in zip(k.inputs, vals)}
            for i in k.instrs:
                env[id(i.out)] = TABLE[i.op](b, t, [env[id(a)] for a in i.args], i)
            return [env[id(o)] for o in k.outputs]

        return compute

    def elementwise_loop(self, ins: list[Loc], outs: list[Loc], rows, cols: int, compute,
                         col_range: list[ir.Value] | None = None):
        """for r < rows, c < cols: outs[k][r, c] = compute(ins[..][r, c]) -- as a separate
        function with noalias pointers and constant cols, so the inner loop vectorizes.
        `col_range` [lo, hi): only those columns (two more arguments)."""
        t = self.t
        # One pointer per distinct Loc (an accumulator is both read and written through one).
        unique: list[Loc] = []
        for loc in [*outs, *ins]:
            if loc.ptr is not None and not any(loc is u for u in unique):
                unique.append(loc)
        ptr_args = [self.ptr(loc.ptr) for loc in unique]
        # A generic plan's symbolic sizes (strides, cols) and size-valued constants come in
        # as arguments after the pointers, each once.
        sizes = _distinct([cols, *(x for loc in unique for x in (loc.row_stride, loc.col_stride))])
        consts = _distinct([loc.const for loc in ins if loc.ptr is None])
        fty = ir.FunctionType(ir.VoidType(), [I64] + [PTR] * len(ptr_args) + [I64] * len(sizes)
                              + [t] * len(consts) + [I64, I64] * (col_range is not None))
        self.groups += 1
        g = ir.Function(self.module, fty, f"{self.fn.name}.loop{self.groups}")
        g.linkage = "internal"
        for a in g.args[1:1 + len(ptr_args)]:
            a.add_attribute("noalias")
        gb = ir.IRBuilder(g.append_basic_block("entry"))
        gptr = {id(loc): a for loc, a in zip(unique, g.args[1:])}
        first = 1 + len(ptr_args)
        size_args = dict(zip(sizes, g.args[first:]))
        const_args = dict(zip(consts, g.args[first + len(sizes):]))

        def size(x) -> ir.Value:
            return size_args[x] if isinstance(x, Dim) else ir.Constant(I64, x)

        def const(x) -> ir.Value:
            return const_args[x] if isinstance(x, Dim) else ir.Constant(t, x)

        # Loop nest r, c with constant trip count cols; the column loop ends in `row_end`,
        # where the row loop counts.
        c_lo, c_hi, guard = 0, size(cols), False
        if col_range is not None:
            c_lo, c_hi, guard = g.args[-2], g.args[-1], True
        with (for_range(gb, 0, g.args[0], name="r", head="row", exit="exit") as r,
              for_range(gb, c_lo, c_hi, name="c", head="col", exit="row_end",
                        guard=guard) as c):

            def addr(loc: Loc):
                idx = gb.add(gb.mul(r, size(loc.row_stride)), gb.mul(c, size(loc.col_stride)))
                return gb.gep(gptr[id(loc)], [idx], source_etype=t)

            vals = [const(loc.const) if loc.ptr is None else gb.load(addr(loc), typ=t)
                    for loc in ins]
            for loc, v in zip(outs, compute(gb, vals)):
                gb.store(v, addr(loc))
        gb.ret_void()
        self.b.call(g, [self.nrows(rows)] + ptr_args + [self.size(x) for x in sizes]
                    + [self.float_size(x) for x in consts] + list(col_range or []))

    def nest(self, n: Nest) -> None:
        """A tensor op's loop nest, as a separate function like `elementwise_loop`: a loop over
        the rows, then one per axis of n.shape (row-major: the innermost reads contiguous
        numbers where the op does). An accumulating nest combines its output with each value;
        a sum reassociates, so that a sum along the innermost axis vectorizes."""
        t = self.t
        code = (self._fused_code(n) if n.what == "fused" else
                _copy_code if n.what == "copy" else _mul_code)
        unique: list = []  # one pointer per distinct operand
        for x in [*n.outs, *n.ins]:
            if x.ptr is not None and not any(x is u for u in unique):
                unique.append(x)
        ptr_args = [self.ptr(x.ptr) for x in unique]
        sizes = _distinct([*n.shape, *(v for x in unique for v in (x.row_stride, *x.strides))])
        consts = _distinct([x.const for x in n.ins if x.ptr is None])
        fty = ir.FunctionType(ir.VoidType(), [I64] + [PTR] * len(ptr_args) + [I64] * len(sizes)
                              + [t] * len(consts))
        self.groups += 1
        g = ir.Function(self.module, fty, f"{self.fn.name}.nest{self.groups}")
        g.linkage = "internal"
        for a in g.args[1:1 + len(ptr_args)]:
            a.add_attribute("noalias")
        gb = ir.IRBuilder(g.append_basic_block("entry"))
        gptr = {id(x): a for x, a in zip(unique, g.args[1:])}
        first = 1 + len(ptr_args)
        size_args = dict(zip(sizes, g.args[first:]))
        const_args = dict(zip(consts, g.args[first + len(sizes):]))

        def size(x) -> ir.Value:
            return size_args[x] if isinstance(x, Dim) else ir.Constant(I64, x)

        with ExitStack() as loops:
            r = loops.enter_context(for_range(gb, 0, g.args[0], name="r", head="row",
                                              exit="exit"))
            index = [loops.enter_context(for_range(gb, 0, size(extent), name=f"i{k}",
                                                   head=f"axis{k}", exit=f"axis{k}_end"))
                     for k, extent in enumerate(n.shape)]

            def addr(x):
                off = gb.mul(r, size(x.row_stride))
                for i, stride in zip(index, x.strides):
                    if stride != 0:
                        off = gb.add(off, gb.mul(i, size(stride)))
                return gb.gep(gptr[id(x)], [off], source_etype=t)

            vals = [(const_args[x.const] if isinstance(x.const, Dim) else
                     ir.Constant(t, x.const)) if x.ptr is None else gb.load(addr(x), typ=t)
                    for x in n.ins]
            results = code(gb, vals)
            if n.accumulate is None:
                for x, v in zip(n.outs, results):
                    gb.store(v, addr(x))
            else:
                where = addr(n.outs[0])
                old = gb.load(where, typ=t)
                new = (gb.fadd(old, results[0], flags=("reassoc",)) if n.accumulate == "sum"
                       else TABLE["max"](gb, t, [old, results[0]], None))
                gb.store(new, where)
        gb.ret_void()
        self.b.call(g, [self.nrows(n.rows)] + ptr_args + [self.size(x) for x in sizes]
                    + [self.float_size(x) for x in consts])

    # -- products and reductions ----------------------------------------------------------

    def product(self, p: Product) -> None:
        """C = op(A) op(B): the inlined kernel of llvm_gemm where the plan chose it, otherwise
        cblas_?gemm (row-major)."""
        if p.strategy == "library":
            return self.blas_gemm(p)
        b = self.b
        W, A, Bm = p.a, p.b, p.bm
        if p.panel and p.panel != self.small_gemm.panel:
            raise InternalError(f"a plan packed for panels of {p.panel}, the kernel's are "
                                f"{self.small_gemm.panel}")
        ranged = self.split is not None and bool(p.panel)
        fn = self.small_gemm.function(Bm.rows, Bm.cols, packed=bool(p.panel), ranged=ranged)
        args = [self.nrows(A.rows), self.ptr(A.ptr), ir.Constant(I64, A.row_stride or A.cols),
                self.ptr(Bm.ptr), self.ptr(p.out.ptr),
                ir.Constant(I64, p.out.row_stride or p.out.cols)]
        if ranged:  # this thread's panels
            panels = -(-Bm.cols // p.panel)
            lo, hi = self.share(ir.Constant(I64, panels), 1)
            args += [b.mul(lo, ir.Constant(I64, p.panel)), b.mul(hi, ir.Constant(I64, p.panel))]
        if p.strategy == "inline":
            b.call(fn, args)
            return
        # One active row: a dot-product GEMV on W itself. Otherwise the blocked kernel on the
        # copy made before the loop, which exists only when the loop is long enough and the
        # batch more than one row; else BLAS.
        def gemm():
            with b.if_else(self.inline_ok) as (then, otherwise):
                with then:
                    b.call(fn, args)
                with otherwise:
                    self.blas_gemm(p)

        if not p.gemv:
            return gemm()
        gemv = self.small_gemm.gemv_function(W.rows, W.cols, ranged=ranged)
        gemv_args = [self.ptr(W.ptr), self.ptr(A.ptr), self.ptr(p.out.ptr)]
        # One active row in the whole batch (not in a block of it: the GEMV rounds otherwise
        # than the GEMM, and a block's result must be the whole batch's).
        n = self.n_all if A.rows == "step" else self.nrows(A.rows)
        with b.if_else(b.icmp_signed("==", n, ir.Constant(I64, 1))) as (one, many):
            with one:
                if ranged:  # this thread's outputs, W's rows
                    gemv_args += self.share(ir.Constant(I64, W.rows), 4)
                b.call(gemv, gemv_args)
            with many:
                gemm()

    def blas_gemm(self, p: Product) -> None:
        b = self.b
        lx, ly, out = p.a, p.b, p.out
        if p.instr.op == "matmul":  # (rows, K) @ W^T, W (M, K)
            W, X = lx, ly
            m, n, k = self.nrows(X.rows), W.rows, W.cols
            ta, tb, A, lda, Bm, ldb = CBLAS_NO_TRANS, CBLAS_TRANS, X, X.row_stride, W, W.row_stride
        elif p.instr.op == "matmul_t":  # (rows, M) @ W, W (M, K)
            W, Y = lx, ly
            m, n, k = self.nrows(Y.rows), W.cols, W.rows
            ta, tb = CBLAS_NO_TRANS, CBLAS_NO_TRANS
            A, lda, Bm, ldb = Y, Y.row_stride, W, W.row_stride
        else:  # outer: A^T B summed over rows; A (rows, M), B (rows, K)
            m, n, k = self.size(lx.cols), ly.cols, self.nrows(lx.rows)
            ta, tb = CBLAS_TRANS, CBLAS_NO_TRANS
            A, lda, Bm, ldb = lx, lx.row_stride, ly, ly.row_stride

        def as32(v):
            if isinstance(v, int):
                return ir.Constant(I32, v)
            if isinstance(v, Dim):
                return b.trunc(self.size(v), I32)
            if isinstance(v, ir.Constant):
                return ir.Constant(I32, v.constant)
            return b.trunc(v, I32)

        def ld(loc: Loc, stride) -> ir.Value:  # a one-row operand has no row stride
            return as32(stride if stride != 0 else loc.cols)

        one, zero = ir.Constant(self.t, 1.0), ir.Constant(self.t, 0.0)
        args = [ir.Constant(I32, CBLAS_ROW_MAJOR), ir.Constant(I32, ta), ir.Constant(I32, tb),
                as32(m), as32(n), as32(k), one, self.ptr(A.ptr), ld(A, lda), self.ptr(Bm.ptr),
                ld(Bm, ldb), zero, self.ptr(out.ptr), ld(out, out.row_stride)]
        if p.instr.op == "outer":
            # A sum over zero rows is zero, and BLAS may not touch C when k == 0.
            self.fill(out, 0.0)
            args[11] = one
        if p.team:
            self.team_gemm(args)
        else:
            b.call(self.blas["gemm"], args)

    def team_gemm(self, args: list[ir.Value]) -> None:
        """A row-major gemm (CBLAS arguments) split in blocks of C's rows, one library call per
        block, on the team the caller passes in `sizes` (see team_loop) when it has threads
        and the product is large (TEAM_GEMM_MIN, TEAM_GEMM_ROWS); otherwise one call here.
        The blocks start at multiples of TEAM_GEMM_ROWS: A's rows (its columns when
        transposed) and C's rows from there."""
        b = self.b
        _order, ta, tb, m, n, k, _alpha, A, lda, Bm, ldb, beta, C, ldc = args
        i64 = [b.sext(v, I64) if v.type == I32 else v for v in (m, n, k, lda, ldb, ldc)]
        m64, n64, k64, lda64, ldb64, ldc64 = i64
        threads, team = self.team_args()
        brows = ir.Constant(I64, TEAM_GEMM_ROWS)
        per = b.sdiv(b.sub(b.add(m64, threads), ir.Constant(I64, 1)), threads)
        per = b.mul(b.sdiv(b.add(per, ir.Constant(I64, TEAM_GEMM_ROWS - 1)), brows), brows)
        per = _smax(b, per, brows)  # m may be 0 (an empty batch): never a block of 0 rows
        blocks = b.sdiv(b.sub(b.add(m64, per), ir.Constant(I64, 1)), per)
        work = b.mul(b.mul(m64, n64), k64)
        use = b.and_(b.and_(b.icmp_signed(">", blocks, ir.Constant(I64, 1)),
                            b.icmp_signed(">=", work, ir.Constant(I64, TEAM_GEMM_MIN))),
                     b.icmp_signed("!=", team, ir.Constant(I64, 0)))
        with b.if_else(use) as (parallel, alone):
            with parallel:
                ctx = self.entry_alloca(len(_GEMM_CTX), "gemm_ctx")
                fields = {"next": ir.Constant(I64, 0), "blocks": blocks, "per": per,
                          "ta": b.sext(ta, I64), "tb": b.sext(tb, I64), "m": m64, "n": n64,
                          "k": k64, "A": b.ptrtoint(A, I64), "lda": lda64,
                          "B": b.ptrtoint(Bm, I64), "ldb": ldb64, "C": b.ptrtoint(C, I64),
                          "ldc": ldc64, "beta1": ir.Constant(I64, int(beta.constant == 1.0))}
                for j, name in enumerate(_GEMM_CTX):
                    b.store(fields[name], b.gep(ctx, [ir.Constant(I64, j)], source_etype=I64))
                fp = b.inttoptr(team, _GOMP_PARALLEL.as_pointer())
                b.call(fp, [self.team_gemm_worker(), ctx,
                            b.trunc(_smin(b, threads, blocks), I32), ir.Constant(I32, 0)])
            with alone:
                b.call(self.blas["gemm"], args)

    def team_entry(self, j: int) -> ir.Value:
        """The team's j-th entry address from `sizes` (0: GOMP_parallel, see blas.team)."""
        at = ir.Constant(I64, len(self.symbols) + 1 + j)
        return self.b.load(self.b.gep(self.sizes_p, [at], source_etype=I64), typ=I64)

    def team_args(self) -> tuple[ir.Value, ir.Value]:
        """(threads, at least 1; GOMP_parallel's address or 0) from `sizes`, after the symbols."""
        b, n_sym = self.b, len(self.symbols)
        threads = b.load(b.gep(self.sizes_p, [ir.Constant(I64, n_sym)], source_etype=I64),
                         typ=I64, name="threads")
        team = b.load(b.gep(self.sizes_p, [ir.Constant(I64, n_sym + 1)], source_etype=I64),
                      typ=I64, name="team")
        return _smax(b, threads, ir.Constant(I64, 1)), team

    def entry_alloca(self, n: int, name: str) -> ir.Value:
        """n i64 slots on the function's stack frame (allocated once, in its entry block)."""
        entry = ir.IRBuilder(self.fn.entry_basic_block)
        entry.position_at_start(self.fn.entry_basic_block)
        return entry.alloca(I64, size=n, name=name)

    def team_gemm_worker(self) -> ir.Function:
        """`cellc.team_gemm(ctx)`, once per module: claims blocks of C's rows (an atomic
        counter in ctx, laid out as _GEMM_CTX) and calls the library on each."""
        name = "cellc.team_gemm"
        if name in self.module.globals:
            return self.module.globals[name]
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR]), name)
        fn.linkage = "internal"
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        ctx = fn.args[0]
        slot = {name: b.gep(ctx, [ir.Constant(I64, j)], source_etype=I64)
                for j, name in enumerate(_GEMM_CTX)}
        v = {name: b.load(p, typ=I64) for name, p in slot.items() if name != "next"}
        claim, work, done = (fn.append_basic_block(x) for x in ("claim", "block", "done"))
        b.branch(claim)
        b.position_at_end(claim)
        j = b.atomic_rmw("add", slot["next"], ir.Constant(I64, 1), "monotonic")
        b.cbranch(b.icmp_signed("<", j, v["blocks"]), work, done)
        b.position_at_end(work)
        r0 = b.mul(j, v["per"])
        rows = _smin(b, v["per"], b.sub(v["m"], r0))
        a_trans = b.icmp_signed("==", v["ta"], ir.Constant(I64, CBLAS_TRANS))
        a_step = b.select(a_trans, ir.Constant(I64, 1), v["lda"])  # a row of A, or a column
        a = b.gep(b.inttoptr(v["A"], PTR), [b.mul(r0, a_step)], source_etype=self.t)
        c = b.gep(b.inttoptr(v["C"], PTR), [b.mul(r0, v["ldc"])], source_etype=self.t)
        one, zero = ir.Constant(self.t, 1.0), ir.Constant(self.t, 0.0)
        beta = b.select(b.icmp_signed("!=", v["beta1"], ir.Constant(I64, 0)), one, zero)

        def i32(name):
            return b.trunc(v[name], I32)

        b.call(self.blas["gemm"], [ir.Constant(I32, CBLAS_ROW_MAJOR), i32("ta"), i32("tb"),
                                   b.trunc(rows, I32), i32("n"), i32("k"), one, a, i32("lda"),
                                   b.inttoptr(v["B"], PTR), i32("ldb"), beta, c, i32("ldc")])
        b.branch(claim)
        b.position_at_end(done)
        b.ret_void()
        return fn

    def fill(self, loc: Loc, value: float):
        self.elementwise_loop([Loc(None, 0, 0, loc.rows, loc.cols, const=value)], [loc],
                              loc.rows, loc.cols, _copy_code)

    def row_sum(self, s: RowSum) -> None:
        """[rows, n] -> [rows, 1]: sum (or mean) over features, a phi accumulator per row."""
        src, out, b, t = s.src, s.out, self.b, self.t
        with for_range(b, 0, self.nrows(src.rows), head="sum_row", exit="sum_exit") as r:
            with for_range(b, 0, self.size(src.cols), head="sum_col", exit="sum_row_end",
                           guard=False) as c:
                acc = b.phi(t)
                acc.add_incoming(ir.Constant(t, 0.0), r.parent)  # from the row loop's head
                idx = b.add(b.mul(r, self.size(src.row_stride)),
                            b.mul(c, self.size(src.col_stride)))
                x = ((self.float_size(src.const) if isinstance(src.const, Dim)
                      else ir.Constant(t, src.const)) if src.ptr is None
                     else b.load(b.gep(self.ptr(src.ptr), [idx], source_etype=t), typ=t))
                acc2 = b.fadd(acc, x, flags=("reassoc",))
            acc.add_incoming(acc2, c.parent)
            total = b.fmul(acc2, self.row_sum_scale(s)) if s.scale != 1.0 else acc2
            dst = b.gep(self.ptr(out.ptr), [b.mul(r, self.size(out.row_stride))],
                        source_etype=t)
            b.store(total, dst)

    def row_sum_scale(self, s: RowSum) -> ir.Value:
        """The mean's 1/n: a constant, or for a symbolic n computed once in the entry block."""
        if s.scale is not None:
            return ir.Constant(self.t, s.scale)
        key = ("1/", s.src.cols)
        if key not in self.size_values:
            one = ir.Constant(self.t, 1.0)
            self.size_values[key] = self.entry.fdiv(one, self.float_size(s.src.cols))
        return self.size_values[key]

    # -- the time loop --------------------------------------------------------------------

    def scan(self, s: TimeLoop) -> None:
        b = self.b
        self.run(s.init)
        # Rows of sequences that have ended are zero; only needed if one ends early.
        if s.ys_fill:
            with b.if_then(b.icmp_signed(">", self.T, ir.Constant(I64, 0))):
                last_t = b.sub(self.T, ir.Constant(I64, 1))
                last = b.load(b.gep(self.batch_sizes, [last_t], source_etype=I64), typ=I64)
                with b.if_then(b.icmp_signed("<", last, self.B)):
                    self.run(s.ys_fill)
        self.run(s.prep)
        self.inline_ok = b.and_(b.icmp_signed(">=", self.T, ir.Constant(I64, INLINE_MIN_STEPS)),
                                b.icmp_signed(">", self.B, ir.Constant(I64, 1)))
        self.run(s.transpose_allocs)
        if s.transposes:
            with b.if_then(self.inline_ok):
                self.run(s.transposes)
        with self.step_workspace(s.step_ws):
            if s.one_thread is None:
                self.team_loop(s)
            else:
                self.time_loop(s)

    def time_loop(self, s: TimeLoop, first_row=None, rows=None) -> None:
        """The loop over t, on every row, or on the `rows` rows from `first_row` on."""
        b, fn = self.b, self.fn
        with for_range(b, 0, self.T, name="k", head="t_loop", exit="t_exit",
                       exit_last=False) as k:
            t_idx = b.sub(b.sub(self.T, ir.Constant(I64, 1)), k) if s.reverse else k
            n = self.n_all = b.load(b.gep(self.batch_sizes, [t_idx], source_etype=I64), typ=I64)
            row0 = b.mul(t_idx, self.B)
            if first_row is not None:  # this block's active rows: the first ones (sorted)
                zero = ir.Constant(I64, 0)
                n = _smax(b, _smin(b, b.sub(n, first_row), rows), zero)
                row0 = b.add(row0, first_row)
            # t_body (steps with active rows) and t_latch go before t_exit; the blocks the
            # step's ops add follow it.
            body = fn.insert_basic_block(len(fn.blocks) - 1, "t_body")
            latch = fn.insert_basic_block(len(fn.blocks) - 1, "t_latch")
            b.cbranch(b.icmp_signed(">", n, ir.Constant(I64, 0)), body, latch)
            b.position_at_end(body)
            with self.at_step(n, row0):
                self.run(s.body)
            b.branch(latch)
            b.position_at_end(latch)

    # -- the time loop on a thread team -----------------------------------------------------

    def team_loop(self, s: TimeLoop) -> None:
        """The loop in a function of its own, `NAME.rows(ctx)`, that claims blocks of batch rows
        (an atomic counter in ctx) and runs the whole loop on each: called once here, or by
        every thread of the team the caller passes in `sizes` (threads, then the address of
        libgomp's GOMP_parallel, or 0). The blocks: ceil(B / threads) rows, rounded up to an
        even number, at least 4; a thread that finds no block left returns. Steps never read
        another row's values (see TimeLoop), so the blocks are independent and the result is
        the one thread's, bit for bit (unless a product falls back to MKL inside the team,
        whose rounding may depend on the rows it gets).

        A loop the plan lets split by columns (TimeLoop.columns), whose batch makes one block,
        runs on every thread instead, each taking every row and its share of each op's
        columns (see team_worker, share, barrier): again the one thread's result, bit for
        bit, since every column comes from the same code."""
        b = self.b
        outer = _outer_ptrs(s.body)
        values = [self.T, self.B, self.batch_sizes, self.ws, self.ws_off,
                  b.zext(self.inline_ok, I64), *(self.ptrs[k] for k in outer)]
        ctx = self.entry_alloca(_CTX_HEAD + len(values), "team_ctx")

        def slot(k):
            return b.gep(ctx, [ir.Constant(I64, k)], source_etype=I64)

        for k, v in enumerate(values):
            v = b.ptrtoint(v, I64) if isinstance(v.type, ir.PointerType) else v
            b.store(v, slot(_CTX_HEAD + k))
        worker = self.team_worker(s, outer)
        one = ir.Constant(I64, 1)
        threads, team = self.team_args()
        rows = b.sdiv(b.sub(b.add(self.B, threads), one), threads)
        # Even blocks of at least 4 rows: a block of fewer reads the whole weight per step for
        # too little work (T=20, B=4, H=128: 2 threads on blocks of 2 rows ran 0.82x as fast
        # as 1).
        two = ir.Constant(I64, 2)
        rows = _smax(b, b.mul(b.sdiv(b.add(rows, one), two), two), ir.Constant(I64, 4))
        blocks = b.sdiv(b.sub(b.add(self.B, rows), one), rows)
        use = b.and_(b.icmp_signed(">", blocks, one), b.icmp_signed("!=", team,
                                                                     ir.Constant(I64, 0)))
        if not self.library_in_team and any(isinstance(n, Product) and n.strategy == "choose"
                                            for n in s.body):
            # Without the transposed weights a product goes to the library, on its own threads.
            use = b.and_(use, self.inline_ok)
        columns = ir.Constant(ir.IntType(1), 0)
        if s.columns:
            # One block: split each step's columns instead, where every product can (the
            # blocked kernel needs the packed copy; one row takes the GEMV).
            can = self.inline_ok
            if s.all_gemv:
                can = b.or_(can, b.icmp_signed("==", self.B, one))
            columns = b.and_(b.and_(b.not_(use), can),
                             b.and_(b.icmp_signed(">", threads, one),
                                    b.icmp_signed("!=", team, ir.Constant(I64, 0))))
        for k in (0, 4, 5):  # the block counter, the barrier's count and generation
            b.store(ir.Constant(I64, 0), slot(k))
        b.store(b.select(use, blocks, one), slot(1))
        b.store(b.select(use, rows, self.B), slot(2))
        b.store(b.zext(columns, I64), slot(3))
        fp = b.inttoptr(team, _GOMP_PARALLEL.as_pointer())
        with b.if_else(use) as (parallel, alone):
            with parallel:
                b.call(fp, [worker, ctx, b.trunc(_smin(b, threads, blocks), I32),
                            ir.Constant(I32, 0)])
            with alone, b.if_else(columns) as (split, one_thread):
                with split:
                    for k, j in ((6, 1), (7, 2)):  # omp_get_thread_num, omp_get_num_threads
                        b.store(self.team_entry(j), slot(k))
                    b.call(fp, [worker, ctx, b.trunc(threads, I32), ir.Constant(I32, 0)])
                with one_thread:
                    b.call(worker, [ctx])

    def team_worker(self, s: TimeLoop, outer: list[int]) -> ir.Function:
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR]),
                         f"{self.fn.name}.rows{self.groups}")
        self.groups += 1
        fn.linkage = "internal"
        saved = (self.fn, self.b, self.ptrs, self.T, self.B, self.batch_sizes, self.ws,
                 self.ws_off, self.inline_ok, self.row_lo, self.n, self.n_all, self.row0,
                 self.split)
        self.fn, self.b = fn, b = fn, ir.IRBuilder(fn.append_basic_block("entry"))
        ctx = fn.args[0]

        def load(k, ty=I64):
            v = b.load(b.gep(ctx, [ir.Constant(I64, k)], source_etype=I64), typ=I64)
            return b.inttoptr(v, PTR) if ty is PTR else v

        blocks, rows = load(1), load(2)
        self.T, self.B = load(_CTX_HEAD), load(_CTX_HEAD + 1)
        self.batch_sizes, self.ws = load(_CTX_HEAD + 2, PTR), load(_CTX_HEAD + 3, PTR)
        self.ws_off = load(_CTX_HEAD + 4)
        self.inline_ok = b.icmp_signed("!=", load(_CTX_HEAD + 5), ir.Constant(I64, 0))
        bases = {k: load(_CTX_HEAD + 6 + j, PTR) for j, k in enumerate(outer)}
        by_columns = b.icmp_signed("!=", load(3), ir.Constant(I64, 0)) if s.columns else None
        claim = fn.append_basic_block("claim")
        done = fn.append_basic_block("done")
        claimed = fn.append_basic_block("claimed")
        work = fn.append_basic_block("block")
        zero, one = ir.Constant(I64, 0), ir.Constant(I64, 1)
        if by_columns is not None:  # every row, this thread's share of each step's columns
            split = fn.append_basic_block("columns")
            b.cbranch(by_columns, split, claim)
            b.position_at_end(split)
            fty = ir.FunctionType(I32, [])
            tk = b.sext(b.call(b.inttoptr(load(6), fty.as_pointer()), []), I64)
            tn = b.sext(b.call(b.inttoptr(load(7), fty.as_pointer()), []), I64)
            b.branch(work)
        else:
            b.branch(claim)
        b.position_at_end(claim)
        counter = b.gep(ctx, [ir.Constant(I64, 0)], source_etype=I64)
        j = b.atomic_rmw("add", counter, one, "monotonic")
        b.cbranch(b.icmp_signed("<", j, blocks), claimed, done)
        b.position_at_end(claimed)
        block_first = b.mul(j, rows)
        block_rows = _smin(b, rows, b.sub(self.B, block_first))
        b.branch(work)
        b.position_at_end(work)
        first, rows = b.phi(I64, "first"), b.phi(I64, "rows")
        first.add_incoming(block_first, claimed)
        rows.add_incoming(block_rows, claimed)
        if by_columns is not None:
            first.add_incoming(zero, split)
            rows.add_incoming(self.B, split)
            k, n = b.phi(I64, "thread"), b.phi(I64, "threads")
            k.add_incoming(zero, claimed)
            n.add_incoming(one, claimed)
            k.add_incoming(tk, split)
            n.add_incoming(tn, split)
            self.split = (k, n, ctx, s.barriers)
        self.ptrs = dict(bases)
        for p, stride in s.row_ptrs:  # this block's view of the per-row buffers
            if id(p) in bases:
                self.ptrs[id(p)] = b.gep(bases[id(p)], [b.mul(first, self.size(stride))],
                                         source_etype=self.t)
        self.row_lo = first
        self.time_loop(s, first, rows)
        if by_columns is not None:  # a split thread has run its loop; a block claims the next
            self.b.cbranch(by_columns, done, claim)
        else:
            self.b.branch(claim)
        self.b.position_at_end(done)
        self.b.ret_void()
        (self.fn, self.b, self.ptrs, self.T, self.B, self.batch_sizes, self.ws, self.ws_off,
         self.inline_ok, self.row_lo, self.n, self.n_all, self.row0, self.split) = saved
        return fn

    @contextmanager
    def step_workspace(self, step_ws: tuple[int, int]):
        """The step's workspace offsets are computed inside the loop body; after the loop the
        bump pointer moves past them by the same amount, computed outside the loop."""
        saved = self.ws_off
        yield
        step_b, step_c = step_ws
        b = self.b
        self.ws_off = b.add(saved, b.add(b.mul(self.B, self.size(step_b)), self.size(step_c)))

    @contextmanager
    def at_step(self, n: ir.Value, row0: ir.Value):
        """Inside one step: "step" rows are the n active rows, row blocks start at row0."""
        self.n, self.row0 = n, row0
        try:
            yield
        finally:
            self.n, self.row0 = self.B, None


# A team loop's context: [next block, blocks, rows per block, by columns (0/1), the barrier's
# count and generation, omp_get_thread_num, omp_get_num_threads, then the captured values].
_CTX_HEAD = 8
# A waiting thread yields its core every this many spins (a power of 2). LSTM H=256, batch 1,
# T=100 forward on 2 cores: 2 threads ~1.2 ms at 2^8 and 2^10, 1.6 ms at 2^6 (the yields cost);
# 3 threads (more than the cores): 5-6 ms at 2^8, 11 ms at 2^10, 1.2 s with no yield at all.
BARRIER_SPINS = 1 << 8


def _barrier_function(module: ir.Module, x86: bool) -> ir.Function:
    """`cellc.barrier(ctx, n)`, once per module: the n threads of a split step wait for each
    other. Each reads the generation, then counts itself in; the last one resets the count
    and moves the generation on (release), the others spin until it moves: with `pause` on
    x86, and every BARRIER_SPINS spins a sched_yield, so that a team larger than the free
    cores (a busy machine, a CPU quota) hands the core to the thread it waits for."""
    name = "cellc.barrier"
    if name in module.globals:
        return module.globals[name]
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, I64]), name)
    fn.linkage = "internal"
    ctx, n = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    count = b.gep(ctx, [ir.Constant(I64, 4)], source_etype=I64)
    gen_p = b.gep(ctx, [ir.Constant(I64, 5)], source_etype=I64)
    gen = b.load_atomic(gen_p, "acquire", 8, typ=I64)
    before = b.atomic_rmw("add", count, ir.Constant(I64, 1), "acq_rel")
    last, wait, spin, out = (fn.append_basic_block(x) for x in ("last", "wait", "spin", "out"))
    b.cbranch(b.icmp_signed("==", before, b.sub(n, ir.Constant(I64, 1))), last, wait)
    b.position_at_end(last)
    b.atomic_rmw("xchg", count, ir.Constant(I64, 0), "monotonic")  # (store_atomic: typed ptrs)
    b.atomic_rmw("add", gen_p, ir.Constant(I64, 1), "release")
    b.branch(out)
    b.position_at_end(wait)
    b.branch(spin)
    b.position_at_end(spin)
    spins = b.phi(I64, "spins")
    spins.add_incoming(ir.Constant(I64, 0), wait)
    if x86:
        pause = module.globals.get("llvm.x86.sse2.pause") or ir.Function(
            module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
        b.call(pause, [])
    spins_next = b.add(spins, ir.Constant(I64, 1))
    with b.if_then(b.icmp_signed("==", b.and_(spins_next, ir.Constant(I64, BARRIER_SPINS - 1)),
                                 ir.Constant(I64, 0))):
        yield_fn = module.globals.get("cellc_sched_yield") or ir.Function(
            module, ir.FunctionType(I32, []), "cellc_sched_yield")
        b.call(yield_fn, [])
    spins.add_incoming(spins_next, b.block)
    now = b.load_atomic(gen_p, "acquire", 8, typ=I64)
    b.cbranch(b.icmp_signed("==", now, gen), spin, out)
    b.position_at_end(out)
    b.ret_void()
    return fn
# A team gemm's context (i64 slots; pointers as integers, beta1: beta is 1, else 0).
_GEMM_CTX = ("next", "blocks", "per", "ta", "tb", "m", "n", "k", "A", "lda", "B", "ldb", "C",
             "ldc", "beta1")
# void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags)
_GOMP_PARALLEL = ir.FunctionType(ir.VoidType(), [PTR, PTR, I32, I32])


def _smin(b, x, y):
    return b.select(b.icmp_signed("<", x, y), x, y)


def _smax(b, x, y):
    return b.select(b.icmp_signed(">", x, y), x, y)


def _outer_ptrs(body: list) -> list[int]:
    """The ids of the pointers a loop body uses but does not define, in first-use order."""
    defined: set[int] = set()
    used: list[int] = []

    def use(p):
        if p is not None and id(p) not in defined and id(p) not in used:
            used.append(id(p))

    for node in body:
        if isinstance(node, (Offset, RowBlock)):
            use(node.base)
        if isinstance(node, Ptr):
            defined.add(id(node))
        elif isinstance(node, Kernel):
            for loc in (*node.ins, *node.outs):
                use(loc.ptr)
        elif isinstance(node, Product):
            for loc in (node.out, node.a, node.b, node.bm):
                use(None if loc is None else loc.ptr)
        elif isinstance(node, RowSum):
            use(node.src.ptr)
            use(node.out.ptr)
        elif isinstance(node, Nest):
            for x in (*node.ins, *node.outs):
                use(x.ptr)
    return used


def _distinct(xs: list) -> list[Dim]:
    """The Dims among xs, each once, in order."""
    out: list[Dim] = []
    for x in xs:
        if isinstance(x, Dim) and x not in out:
            out.append(x)
    return out


def _denominator(d: Dim) -> int:
    den = 1
    for _, c in d.terms:
        den = den * c.denominator // math.gcd(den, c.denominator)
    return den


def _dim_value(b: ir.IRBuilder, d: Dim, symbol) -> ir.Value:
    """A Dim's value as i64 code at `b`: the integer polynomial den*d, divided by den last
    (cell.bind refuses sizes that make a dim not whole, so the division is exact)."""
    den = _denominator(d)
    total = None  # the first term starts the sum (a polynomial with two or more terms adds)
    for monomial, c in d.terms:
        factors = [symbol(name) for name in monomial]
        coef = int(c * den)
        if coef != 1 or not factors:
            factors.insert(0, ir.Constant(I64, coef))
        term = factors[0]
        for f in factors[1:]:
            term = b.mul(term, f)
        total = term if total is None else b.add(total, term)
    if total is None:
        total = ir.Constant(I64, 0)
    return b.sdiv(total, ir.Constant(I64, den)) if den != 1 else total


def _copy_code(b, vals):
    return [vals[0]]


def _mul_code(b, vals):
    return [b.fmul(vals[0], vals[1])]


def _add_code(b, vals):
    return [b.fadd(vals[0], vals[1])]


def _sum_code(b, vals):
    return [b.fadd(vals[0], vals[1], flags=("reassoc",))]


POINTERS = {
    Arg: lambda r, p: r._load_ptr(r.args_p, p.index),
    Result: lambda r, p: r._load_ptr(r.results_p, p.slot),
    Work: FunctionRenderer._work,
    Offset: FunctionRenderer._offset,
    RowBlock: FunctionRenderer._row_block,
}
NODES = {
    Kernel: FunctionRenderer.kernel,
    Product: FunctionRenderer.product,
    RowSum: FunctionRenderer.row_sum,
    Nest: FunctionRenderer.nest,
    TimeLoop: FunctionRenderer.scan,
}
KERNELS = {
    "fused": FunctionRenderer._fused_code,
    "copy": lambda r, k: _copy_code,
    "fill": lambda r, k: _copy_code,
    "add": lambda r, k: _add_code,
    "sum": lambda r, k: _sum_code,
}


def build_module(funcs: list[tuple[Func, str]], sizes: dict | None, dtype: str,
                 blas_names: dict[str, str], features: str = "",
                 symbols: list[str] | None = None, team: bool = False):
    """An llvmlite module with one native function per (IR function, name). `features` (the
    target's CPU features) selects the vector width of the inlined products; with none given,
    every product calls BLAS. With sizes None the module is generic: the functions take the
    values of `symbols` (the cell's size symbols, in order) in their `sizes` argument, and
    every product calls BLAS (the inlined kernel is specialized on its K and N)."""
    caps = Caps(inline_products=bool(features), team=team,
                library_in_team=bool(blas_names.get("in_team")),
                panel=panel_width(dtype, features) if features else 0)
    return render(plan(funcs, sizes, caps, symbols), dtype, blas_names, features)


def render(p: Plan, dtype: str, blas_names: dict[str, str], features: str = ""):
    """(llvmlite module, layouts) for a plan; `features` as for `build_module`."""
    ftype = ir.FloatType() if dtype == "float32" else ir.DoubleType()
    module = ir.Module(name="cellc")
    small_gemm = GemmEmitter(module, ftype, features) if features else None
    gemm_ty = ir.FunctionType(ir.VoidType(), [I32, I32, I32, I32, I32, I32, ftype, PTR, I32, PTR,
                                              I32, ftype, PTR, I32])
    if blas_names.get("abi") == "fortran":
        blas = {"gemm": _fortran_gemm_wrapper(module, gemm_ty, ftype, blas_names["gemm"])}
    else:
        blas = {"gemm": ir.Function(module, gemm_ty, blas_names["gemm"])}
    layouts = [FunctionRenderer(module, ftype, blas, small_gemm, p.symbols,
                                generic=p.sizes is None,
                                library_in_team=p.caps.library_in_team,
                                x86="+sse2" in features).compile(fp)
               for fp in p.functions]
    return module, layouts


def _fortran_gemm_wrapper(module, cblas_ty, ftype, fortran_name: str) -> ir.Function:
    """A CBLAS-style row-major gemm that calls a Fortran (column-major, by-reference) ?gemm_.

    Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands and
    their flags, keep the leading dimensions.
    """
    fty = ir.FunctionType(ir.VoidType(), [PTR] * 13)
    fortran = ir.Function(module, fty, fortran_name)
    fn = ir.Function(module, cblas_ty, fortran_name + ".rowmajor")
    fn.linkage = "internal"
    _order, ta, tb, m, n, k, alpha, a, lda, bb, ldb, beta, c, ldc = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    i8 = ir.IntType(8)

    def ref(value, ty):
        slot = b.alloca(ty)
        b.store(value, slot)
        return slot

    def flag(t):  # CblasNoTrans (111) -> 'N', CblasTrans (112) -> 'T'
        is_t = b.icmp_signed("==", t, ir.Constant(I32, CBLAS_TRANS))
        return ref(b.select(is_t, ir.Constant(i8, ord("T")), ir.Constant(i8, ord("N"))), i8)

    b.call(fortran, [flag(tb), flag(ta), ref(n, I32), ref(m, I32), ref(k, I32), ref(alpha, ftype),
                     bb, ref(ldb, I32), a, ref(lda, I32), ref(beta, ftype), c, ref(ldc, I32)])
    b.ret_void()
    return fn
