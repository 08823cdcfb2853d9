"""IR -> LLVM IR (llvmlite.ir), specialized to concrete sizes and one float type.

Each top-level function (the forward program, the backward program) becomes

    void NAME(i64 T, i64 B, i64* batch_sizes, ptr* args, ptr* results, ptr workspace)

`args` and `results` are arrays of data pointers (row-major, contiguous); results that are
computed are written straight into the caller's buffers; every other value lives in `workspace`,
whose size is `workspace_size(T, B)` elements. Only T and B (and the per-step active row counts)
are known at run time: every feature size is a constant, so the fused loops vectorize.

Every value is a 2-D array (rows, cols) reached through a `Loc`: a base pointer plus row and
column strides. Views cost nothing: `split` is a column offset, `broadcast` a zero column stride,
a parameter vector broadcast over the batch a zero row stride, and a scalar constant an
immediate. A value whose only use is a `concat` is computed straight into its slice of the
concat's buffer, and a step value stacked over time is computed straight into its row block.

Code per op kind:
- elementwise ops, in maximal runs of the same shape, become one fused loop nest in its own
  function with `noalias` pointers, intermediates in registers (`TABLE` maps op -> scalar code);
- matrix products call BLAS gemm (`blas.py`); batch sums and feature sums are loops;
- a scan is a loop over t with the step's code inline; per-step inputs are row blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from llvmlite import ir

from ..ir import Func, Instr, Value, scan_parts
from ..ops import OPS
from ..shapes import Batch, Dim
from ..source import InternalError
from . import llvm_math

I64 = ir.IntType(64)
I32 = ir.IntType(32)
PTR = ir.PointerType()

CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_TRANS = 101, 111, 112
# Products inside the time loop use the inlined kernel (llvm_gemm) for matrices up to this many
# elements (1 MB in float32: the transposed copy stays in cache), and, for W @ x, which needs
# that copy, only when the sequence has at least INLINE_MIN_STEPS steps to pay for it.
INLINE_MAX_ELEMENTS = 1 << 18
INLINE_MIN_STEPS = 8


@dataclass
class Loc:
    """Where a value's elements are: element (r, c) is at ptr[r * row_stride + c * col_stride]."""

    ptr: ir.Value | None  # None: an immediate constant
    row_stride: int
    col_stride: int
    rows: object  # "seq" (T*B), "step" (active rows), "batch" (B) or an int
    cols: int
    const: float | None = None


@dataclass
class Layout:
    """What the caller needs to call a compiled function."""

    name: str
    n_args: int
    results: list[tuple[str, int]]  # ("arg", k): return argument k; ("buf", slot): a buffer
    n_buffers: int
    workspace: tuple[int, int, int] = (0, 0, 0)  # elements: a*T*B + b*B + c


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
}
# Ops that need no code: their result is a view of their argument.
VIEWS = ("split", "broadcast")


def _size(d: Dim, sizes) -> int:
    v = d.evaluate(sizes)
    if v.denominator != 1:
        raise InternalError(f"size {d} is not whole for {sizes}")
    return int(v)


class FunctionCodegen:
    """Compiles one top-level IR function into `module`."""

    def __init__(self, module: ir.Module, ftype: ir.Type, sizes: dict, blas: dict[str, ir.Function],
                 small_gemm=None):
        self.small_gemm = small_gemm  # llvm_gemm.GemmEmitter, or None: BLAS for every product
        self.transposed: dict[int, Loc] = {}
        self.extra_live: set[int] = set()  # step results: computed values that must be stored
        self.into_concat: dict = {}
        self.module = module
        self.t = ftype
        self.sizes = sizes
        self.blas = blas
        self.groups = 0

    # -- shapes ---------------------------------------------------------------------------

    def dims(self, v: Value, at_step: bool) -> tuple[object, int]:
        """(rows kind, cols) of a value as a 2-D array."""
        t = v.type
        shape = [_size(d, self.sizes) for d in t.shape]
        if t.batch is Batch.NONE:
            if len(shape) == 2:
                return shape[0], shape[1]
            return 1, (shape[0] if shape else 1)
        cols = shape[0] if shape else 1
        if t.batch is Batch.SEQ:
            return "seq", cols
        return ("step" if at_step else "batch"), cols

    def nrows(self, kind) -> ir.Value:
        if kind == "seq":
            return self.TB
        if kind == "step":
            return self.n
        if kind == "batch":
            return self.B
        return ir.Constant(I64, kind)

    # -- entry ----------------------------------------------------------------------------

    def compile(self, f: Func, name: str) -> Layout:
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [I64, I64, PTR, PTR, PTR, PTR]), name)
        self.fn = fn
        entry = fn.append_basic_block("entry")
        self.b = b = ir.IRBuilder(entry)
        self.T, self.B, self.batch_sizes, args_p, results_p, self.ws = fn.args
        self.TB = b.mul(self.T, self.B, name="TB")
        self.n = self.B
        self.ws_coef = [0, 0, 0]
        self.ws_off = ir.Constant(I64, 0)
        self.locs: dict[int, Loc] = {}

        def load_ptr(arr, k):
            return b.load(b.gep(arr, [ir.Constant(I64, k)], source_etype=PTR), typ=PTR)

        for k, p in enumerate(f.params):
            rows, cols = self.dims(p, at_step=False)
            self.locs[id(p)] = Loc(load_ptr(args_p, k), cols if rows != 1 or p.type.rank == 2 else 0, 1, rows, cols)
        # Results: a parameter is handed back; each distinct computed value gets a buffer.
        results, slots = [], {}
        params = {id(p): k for k, p in enumerate(f.params)}
        for r in f.results:
            if id(r) in params:
                results.append(("arg", params[id(r)]))
            else:
                if id(r) not in slots:
                    slots[id(r)] = len(slots)
                results.append(("buf", slots[id(r)]))
        self.result_ptrs = {vid: (load_ptr(results_p, s), None) for vid, s in slots.items()}
        for r in f.results:  # caller's buffers are contiguous
            if id(r) in self.result_ptrs:
                self.result_ptrs[id(r)] = (self.result_ptrs[id(r)][0], self.dims(r, False)[1] if (
                    r.type.batch is not Batch.NONE or r.type.rank == 2) else 0)
        self.body(f, at_step=False)
        b.ret_void()
        return Layout(name, len(f.params), results, len(slots), tuple(self.ws_coef))

    # -- storage --------------------------------------------------------------------------

    def alloc(self, rows, cols: int) -> ir.Value:
        """A fresh workspace region for rows x cols elements (bump allocation)."""
        b = self.b
        ptr = b.gep(self.ws, [self.ws_off], source_etype=self.t)
        size = b.mul(self.nrows(rows if rows != "step" else "batch"), ir.Constant(I64, cols))
        self.ws_off = b.add(self.ws_off, size)
        k = {"seq": 0, "batch": 1, "step": 1}.get(rows, 2)
        self.ws_coef[k] += cols * (1 if k < 2 else rows)
        return ptr

    def plan(self, f: Func, at_step: bool) -> None:
        """Find the values computed straight into their slice of a concat's buffer: those
        whose only use is that concat (see the module docstring)."""
        uses: dict[int, list[Instr]] = {}
        for i in f.body:
            for a in i.args:
                uses.setdefault(id(a), []).append(i)
        result_ids = {id(r) for r in f.results}
        self.into_concat = {}
        for i in f.body:
            if i.op == "concat":
                off = 0
                for a in i.args:
                    rows, cols = self.dims(a, at_step)
                    if (len(uses.get(id(a), [])) == 1 and id(a) not in result_ids
                            and id(a) not in self.locs
                            and sum(1 for x in i.args if x is a) == 1 and a.type.rank == 1):
                        self.into_concat[id(a)] = (i, off)
                    off += cols

    def storage(self, v: Value, at_step: bool) -> Loc:
        """A writable Loc for a value about to be computed."""
        if id(v) in self.locs:
            return self.locs[id(v)]
        rows, cols = self.dims(v, at_step)
        if id(v) in self.result_ptrs:
            ptr, stride = self.result_ptrs[id(v)]
            loc = Loc(ptr, stride, 1, rows, cols)
        elif id(v) in self.into_concat:
            concat, off = self.into_concat[id(v)]
            parent = self.storage(concat.out, at_step)
            ptr = self.b.gep(parent.ptr, [ir.Constant(I64, off)], source_etype=self.t)
            loc = Loc(ptr, parent.row_stride, 1, rows, cols)
        else:
            loc = Loc(self.alloc(rows, cols), cols if (rows != 1 or v.type.rank == 2) else 0, 1, rows, cols)
        self.locs[id(v)] = loc
        return loc

    def materialized(self, v: Value) -> Loc:
        """A Loc with real memory and unit column stride (for BLAS)."""
        loc = self.locs[id(v)]
        if loc.ptr is not None and loc.col_stride == 1 and (loc.row_stride != 0 or loc.rows == 1):
            return loc
        rows = loc.rows
        out = Loc(self.alloc(rows, loc.cols), loc.cols, 1, rows, loc.cols)
        self.elementwise_loop([], [loc], [out], rows, loc.cols, lambda b, vals: [vals[0]])
        self.locs[id(v)] = out  # copy once; later uses read the copy
        return out

    # -- body -----------------------------------------------------------------------------

    def body(self, f: Func, at_step: bool):
        self.plan(f, at_step)
        groups = self.group(f)
        for g in groups:
            if isinstance(g, list):
                self.fused(g, f, at_step)
            else:
                self.instr(g, at_step)

    def group(self, f: Func) -> list:
        """Runs of elementwise instructions with one output shape; everything else alone."""
        out: list = []
        current: list[Instr] = []
        shape = None
        for i in f.body:
            if OPS[i.op].kind == "elementwise":
                s = (i.out.type.batch, i.out.type.shape)
                if current and s == shape:
                    current.append(i)
                    continue
                if current:
                    out.append(current)
                current, shape = [i], s
                continue
            if i.op in ("const",) + VIEWS:
                # Views and constants do not break a run unless they read a value the run makes;
                # otherwise they are placed before it (their arguments exist already).
                if any(a is o for a in i.args for x in current for o in x.outs):
                    out.append(current)
                    current, shape = [], None
                out.append(i)
                continue
            if current:
                out.append(current)
                current, shape = [], None
            out.append(i)
        if current:
            out.append(current)
        return out

    def instr(self, i: Instr, at_step: bool):
        op = i.op
        if op == "const":
            rows, cols = self.dims(i.out, at_step)
            value = i.attrs["value"]
            value = float(value.evaluate(self.sizes)) if isinstance(value, Dim) else float(value)
            self.locs[id(i.out)] = Loc(None, 0, 0, rows, cols, const=value)
            if id(i.out) in self.result_ptrs or id(i.out) in self.into_concat:
                src = self.locs.pop(id(i.out))
                dst = self.storage(i.out, at_step)
                self.elementwise_loop([], [src], [dst], rows, cols, lambda b, vals: [vals[0]])
            return
        if op == "split":
            src = self.locs[id(i.args[0])]
            off = 0
            for o in i.outs:
                rows, cols = self.dims(o, at_step)
                if i.args[0].type.rank == 2:  # matrices split by rows
                    ptr = self.offset(src, off * src.row_stride)
                    off += rows
                    cols_ = cols
                else:
                    ptr = self.offset(src, off * src.col_stride)
                    off += cols
                    cols_ = cols
                view = Loc(ptr, src.row_stride, src.col_stride, rows, cols_, src.const)
                self.bind_view(o, view, at_step)
            return
        if op == "broadcast":
            src = self.locs[id(i.args[0])]
            rows, cols = self.dims(i.out, at_step)
            self.bind_view(i.out, Loc(src.ptr, src.row_stride, 0, rows, cols, src.const), at_step)
            return
        if op == "concat":
            out = self.storage(i.out, at_step)
            off = 0
            for a in i.args:
                loc = self.locs[id(a)]
                rows, cols = self.dims(a, at_step)
                if id(a) in self.into_concat:  # already computed in place
                    off += cols if a.type.rank == 1 else 0
                    continue
                if a.type.rank == 2:
                    dst = Loc(self.offset(out, off * out.row_stride), out.row_stride, 1, rows, cols)
                    off += rows
                else:
                    dst = Loc(self.offset(out, off), out.row_stride, 1, rows, cols)
                    off += cols
                self.elementwise_loop([], [loc], [dst], rows, cols, lambda b, vals: [vals[0]])
            return
        if op in ("matmul", "matmul_t", "outer"):
            return self.gemm(i, at_step)
        if op in ("sum", "mean"):
            return self.row_sum(i, at_step)
        if op == "sum_batch":
            return self.batch_sum(i, at_step)
        if op == "scan":
            return self.scan(i)
        raise InternalError(f"llvm backend: no rule for op '{op}'")

    def bind_view(self, v: Value, view: Loc, at_step: bool):
        """A view; if the value must live in a given buffer (a result), copy it there."""
        if id(v) in self.result_ptrs or id(v) in self.into_concat:
            dst = self.storage(v, at_step)
            self.elementwise_loop([], [view], [dst], view.rows, view.cols, lambda b, vals: [vals[0]])
        else:
            self.locs[id(v)] = view

    def offset(self, loc: Loc, k: int) -> ir.Value | None:
        if loc.ptr is None or k == 0:
            return loc.ptr
        return self.b.gep(loc.ptr, [ir.Constant(I64, k)], source_etype=self.t)

    # -- fused elementwise loops ----------------------------------------------------------

    def fused(self, instrs: list[Instr], f: Func, at_step: bool):
        ids = {id(o) for i in instrs for o in i.outs}
        inside_uses = {id(i) for i in instrs}
        needed_outside = set()
        for i in f.body:
            if id(i) in inside_uses:
                continue
            for a in i.args:
                if id(a) in ids:
                    needed_outside.add(id(a))
        for r in f.results:
            if id(r) in ids:
                needed_outside.add(id(r))
        needed_outside |= ids & self.extra_live
        inputs: list[Value] = []
        for i in instrs:
            for a in i.args:
                if id(a) not in ids and not any(a is x for x in inputs):
                    inputs.append(a)
        outputs = [o for i in instrs for o in i.outs if id(o) in needed_outside]
        if not outputs:
            return
        rows, cols = self.dims(instrs[0].out, at_step)
        in_locs = [self.broadcast_to(self.locs[id(a)], rows, cols) for a in inputs]
        out_locs = [self.storage(o, at_step) for o in outputs]
        t = self.t

        def compute(b, vals):
            env = {id(a): v for a, v in zip(inputs, vals)}
            for i in instrs:
                env[id(i.out)] = TABLE[i.op](b, t, [env[id(a)] for a in i.args], i)
            return [env[id(o)] for o in outputs]

        self.elementwise_loop(instrs, in_locs, out_locs, rows, cols, compute)

    @staticmethod
    def broadcast_to(loc: Loc, rows, cols: int) -> Loc:
        """The same elements seen as (rows, cols): a single column or row repeats."""
        col_stride = 0 if loc.cols == 1 and cols != 1 else loc.col_stride
        row_stride = 0 if loc.rows == 1 and rows != 1 else loc.row_stride
        if (col_stride, row_stride) == (loc.col_stride, loc.row_stride):
            return loc
        return Loc(loc.ptr, row_stride, col_stride, rows, cols, loc.const)

    def elementwise_loop(self, instrs, ins: list[Loc], outs: list[Loc], rows, cols: int, compute):
        """for r < rows, c < cols: outs[k][r, c] = compute(ins[..][r, c]) -- as a separate
        function with noalias pointers and constant cols, so the inner loop vectorizes."""
        t = self.t
        # One pointer per distinct Loc (an accumulator is both read and written through one).
        unique: list[Loc] = []
        for l in [*outs, *ins]:
            if l.ptr is not None and not any(l is u for u in unique):
                unique.append(l)
        ptr_args = [l.ptr for l in unique]
        fty = ir.FunctionType(ir.VoidType(), [I64] + [PTR] * len(ptr_args))
        self.groups += 1
        g = ir.Function(self.module, fty, f"{self.fn.name}.loop{self.groups}")
        g.linkage = "internal"
        for a in g.args[1:]:
            a.add_attribute("noalias")
        gb = ir.IRBuilder(g.append_basic_block("entry"))
        nrows = g.args[0]
        gptr = {id(l): a for l, a in zip(unique, g.args[1:])}
        # Loop nest r, c with constant trip count cols.
        pre = gb.block
        row_head = g.append_basic_block("row")
        col_body = g.append_basic_block("col")
        row_end = g.append_basic_block("row_end")
        exit_ = g.append_basic_block("exit")
        gb.cbranch(gb.icmp_signed(">", nrows, ir.Constant(I64, 0)), row_head, exit_)
        gb.position_at_end(row_head)
        r = gb.phi(I64, "r")
        r.add_incoming(ir.Constant(I64, 0), pre)
        gb.branch(col_body)
        gb.position_at_end(col_body)
        c = gb.phi(I64, "c")
        c.add_incoming(ir.Constant(I64, 0), row_head)

        def addr(loc: Loc):
            p = gptr[id(loc)]
            idx = gb.add(gb.mul(r, ir.Constant(I64, loc.row_stride)), gb.mul(c, ir.Constant(I64, loc.col_stride)))
            return gb.gep(p, [idx], source_etype=t)

        vals = [ir.Constant(t, l.const) if l.ptr is None else gb.load(addr(l), typ=t) for l in ins]
        results = compute(gb, vals)
        for loc, v in zip(outs, results):
            gb.store(v, addr(loc))
        c_next = gb.add(c, ir.Constant(I64, 1))
        c.add_incoming(c_next, gb.block)
        gb.cbranch(gb.icmp_signed("<", c_next, ir.Constant(I64, cols)), col_body, row_end)
        gb.position_at_end(row_end)
        r_next = gb.add(r, ir.Constant(I64, 1))
        r.add_incoming(r_next, row_end)
        gb.cbranch(gb.icmp_signed("<", r_next, nrows), row_head, exit_)
        gb.position_at_end(exit_)
        gb.ret_void()
        self.b.call(g, [self.nrows(rows)] + ptr_args)

    # -- products and reductions ----------------------------------------------------------

    def gemm(self, i: Instr, at_step: bool):
        """C = op(A) op(B): inside a time loop with the inlined kernel of llvm_gemm where it
        applies, otherwise through cblas_?gemm (row-major)."""
        b = self.b
        out = self.storage(i.out, at_step)
        x, y = i.args
        # Materialize operands before any branch: allocation must not happen inside one.
        self.materialized(x), self.materialized(y)
        if at_step and self.small_gemm is not None and i.op in ("matmul", "matmul_t"):
            W, A = self.locs[id(x)], self.materialized(y)
            if i.op == "matmul":
                Bm = self.transposed.get(id(x))
            else:
                contiguous = W.ptr is not None and W.col_stride == 1 and W.row_stride == W.cols
                Bm = W if contiguous and W.rows * W.cols <= INLINE_MAX_ELEMENTS else None
            if Bm is not None and A.col_stride == 1:
                fn = self.small_gemm.function(Bm.rows, Bm.cols)
                args = [self.nrows(A.rows), A.ptr, ir.Constant(I64, A.row_stride or A.cols), Bm.ptr,
                        out.ptr, ir.Constant(I64, out.row_stride or out.cols)]
                if i.op == "matmul_t":
                    b.call(fn, args)
                    return
                # One active row: a dot-product GEMV on W itself. Otherwise the blocked kernel
                # on the transposed copy, which exists only when the loop is long enough and
                # the batch more than one row; else BLAS.
                gemv = self.small_gemm.gemv_function(W.rows, W.cols)
                one_row = b.icmp_signed("==", self.nrows(A.rows), ir.Constant(I64, 1))
                if W.row_stride != W.cols or W.col_stride != 1:  # GEMV reads W's rows whole
                    one_row = ir.Constant(ir.IntType(1), 0)
                with b.if_else(one_row) as (one, many):
                    with one:
                        b.call(gemv, [W.ptr, A.ptr, out.ptr])
                    with many:
                        with b.if_else(self.inline_ok) as (then, otherwise):
                            with then:
                                b.call(fn, args)
                            with otherwise:
                                self.blas_gemm(i, out, at_step)
                return
        self.blas_gemm(i, out, at_step)

    def blas_gemm(self, i: Instr, out: Loc, at_step: bool):
        b = self.b
        x, y = i.args
        lx, ly = self.materialized(x), self.materialized(y)
        if i.op == "matmul":  # (rows, K) @ W^T, W (M, K)
            W, X = lx, ly
            m, n, k = self.nrows(X.rows), W.rows, W.cols
            ta, tb, A, lda, Bm, ldb = CBLAS_NO_TRANS, CBLAS_TRANS, X, X.row_stride, W, W.row_stride
        elif i.op == "matmul_t":  # (rows, M) @ W, W (M, K)
            W, Y = lx, ly
            m, n, k = self.nrows(Y.rows), W.cols, W.rows
            ta, tb, A, lda, Bm, ldb = CBLAS_NO_TRANS, CBLAS_NO_TRANS, Y, Y.row_stride, W, W.row_stride
        else:  # outer: A^T B summed over rows; A (rows, M), B (rows, K)
            m, n, k = ir.Constant(I64, lx.cols), ly.cols, self.nrows(lx.rows)
            ta, tb, A, lda, Bm, ldb = CBLAS_TRANS, CBLAS_NO_TRANS, lx, lx.row_stride, ly, ly.row_stride
        def as32(v):
            if isinstance(v, int):
                return ir.Constant(I32, v)
            if isinstance(v, ir.Constant):
                return ir.Constant(I32, v.constant)
            return b.trunc(v, I32)

        def ld(loc: Loc, stride: int) -> ir.Constant:  # a one-row operand has no row stride
            return ir.Constant(I32, stride if stride else loc.cols)

        fn = self.blas["gemm"]
        one, zero = ir.Constant(self.t, 1.0), ir.Constant(self.t, 0.0)
        args = [ir.Constant(I32, CBLAS_ROW_MAJOR), ir.Constant(I32, ta), ir.Constant(I32, tb),
                as32(m), as32(n), as32(k), one, A.ptr, ld(A, lda), Bm.ptr, ld(Bm, ldb), zero,
                out.ptr, ld(out, out.row_stride)]
        if i.op == "outer":
            # A sum over zero rows is zero, and BLAS may not touch C when k == 0.
            self.fill(out, 0.0)
            args[11] = one
        b.call(fn, args)

    def fill(self, loc: Loc, value: float):
        self.elementwise_loop([], [Loc(None, 0, 0, loc.rows, loc.cols, const=value)], [loc],
                              loc.rows, loc.cols, lambda b, vals: [vals[0]])

    def row_sum(self, i: Instr, at_step: bool):
        """[rows, n] -> [rows, 1]: sum (or mean) over features."""
        src = self.locs[id(i.args[0])]
        out = self.storage(i.out, at_step)
        cols = src.cols
        scale = 1.0 / cols if i.op == "mean" else 1.0
        b = self.b
        t = self.t
        # A loop over rows with an inner reduction: written with a phi accumulator.
        fn = self.fn
        pre = b.block
        head = fn.append_basic_block("sum_row")
        inner = fn.append_basic_block("sum_col")
        done = fn.append_basic_block("sum_row_end")
        exit_ = fn.append_basic_block("sum_exit")
        nrows = self.nrows(src.rows)
        b.cbranch(b.icmp_signed(">", nrows, ir.Constant(I64, 0)), head, exit_)
        b.position_at_end(head)
        r = b.phi(I64)
        r.add_incoming(ir.Constant(I64, 0), pre)
        b.branch(inner)
        b.position_at_end(inner)
        c = b.phi(I64)
        acc = b.phi(t)
        c.add_incoming(ir.Constant(I64, 0), head)
        acc.add_incoming(ir.Constant(t, 0.0), head)
        idx = b.add(b.mul(r, ir.Constant(I64, src.row_stride)), b.mul(c, ir.Constant(I64, src.col_stride)))
        x = ir.Constant(t, src.const) if src.ptr is None else b.load(b.gep(src.ptr, [idx], source_etype=t), typ=t)
        acc2 = b.fadd(acc, x, flags=("reassoc",))
        c2 = b.add(c, ir.Constant(I64, 1))
        c.add_incoming(c2, inner)
        acc.add_incoming(acc2, inner)
        b.cbranch(b.icmp_signed("<", c2, ir.Constant(I64, cols)), inner, done)
        b.position_at_end(done)
        total = b.fmul(acc2, ir.Constant(t, scale)) if scale != 1.0 else acc2
        b.store(total, b.gep(out.ptr, [b.mul(r, ir.Constant(I64, out.row_stride))], source_etype=t))
        r2 = b.add(r, ir.Constant(I64, 1))
        r.add_incoming(r2, done)
        b.cbranch(b.icmp_signed("<", r2, nrows), head, exit_)
        b.position_at_end(exit_)

    def batch_sum(self, i: Instr, at_step: bool):
        """[rows, n] -> [n]: sum over the batch rows (zero rows give zeros)."""
        src = self.locs[id(i.args[0])]
        out = self.storage(i.out, at_step)
        self.fill(out, 0.0)
        acc = Loc(out.ptr, 0, 1, src.rows, out.cols)  # every row adds into row 0
        # out[c] += src[r, c] for each r: a loop nest whose inner loop vectorizes.
        self.elementwise_loop([], [acc, src], [acc], src.rows, out.cols,
                              lambda b, vals: [b.fadd(vals[0], vals[1], flags=("reassoc",))])

    # -- the time loop --------------------------------------------------------------------

    def scan(self, i: Instr):
        b = self.b
        step: Func = i.attrs["step"]
        parts = scan_parts(i)
        nc, ny = parts.n_carry, parts.n_ys
        carry_a, xs_a, const_a = parts.split_args(i.args)
        carry_p, xs_p, const_p = parts.split_args(step.params)
        carry_o, ys_o, acc_o = parts.split_outs(i.outs)
        res = step.results
        # Carries live in the final-carry buffers; stacked outputs start zeroed (finished rows).
        carry_locs = []
        for a, o in zip(carry_a, carry_o):
            loc = self.storage(o, at_step=False)
            src = self.locs[id(a)]
            self.elementwise_loop([], [src], [loc], "batch", loc.cols, lambda bb, v: [v[0]])
            carry_locs.append(loc)
        ys_locs = [self.storage(o, at_step=False) for o in ys_o]
        # Rows of sequences that have ended are zero; only needed if one ends early.
        if ys_locs:
            with b.if_then(b.icmp_signed(">", self.T, ir.Constant(I64, 0))):
                last_t = b.sub(self.T, ir.Constant(I64, 1))
                last = b.load(b.gep(self.batch_sizes, [last_t], source_etype=I64), typ=I64)
                with b.if_then(b.icmp_signed("<", last, self.B)):
                    for loc in ys_locs:
                        self.fill(loc, 0.0)
        acc_locs = [self.storage(o, at_step=False) for o in acc_o]
        for loc in acc_locs:
            self.fill(loc, 0.0)
        xs_locs = [self.materialized(a) for a in xs_a]
        # Weights of products inside the loop, transposed once per call for the inlined
        # kernel: only small matrices (a large one is better served by BLAS) and only when the
        # loop has enough steps to pay for the copy.
        self.transposed = {}
        self.inline_ok = b.and_(b.icmp_signed(">=", self.T, ir.Constant(I64, INLINE_MIN_STEPS)),
                                b.icmp_signed(">", self.B, ir.Constant(I64, 1)))
        if self.small_gemm is not None:
            todo = []
            for ins in step.body:
                w = ins.args[0] if ins.op == "matmul" else None
                if w is None or not any(w is p for p in const_p) or id(w) in self.transposed:
                    continue
                src = self.locs[id(const_a[list(const_p).index(w)])]
                if src.ptr is None or src.col_stride != 1 or src.rows * src.cols > INLINE_MAX_ELEMENTS:
                    continue
                M, K = src.rows, src.cols
                self.transposed[id(w)] = Loc(self.alloc(K, M), M, 1, K, M)
                todo.append((Loc(src.ptr, 1, src.row_stride, K, M), self.transposed[id(w)]))
            if todo:
                with b.if_then(self.inline_ok):
                    for view, dst in todo:  # element (k, m) of the view is W[m, k]
                        self.elementwise_loop([], [view], [dst], dst.rows, dst.cols, lambda bb, v: [v[0]])
        # The step's workspace offsets are computed inside the loop body; after the loop the
        # bump pointer moves past them by the same amount, computed outside the loop.
        saved_off, saved_coef = self.ws_off, list(self.ws_coef)
        outer_locs = self.locs
        outer_results = self.result_ptrs
        outer_concat = getattr(self, "into_concat", {})

        fn = self.fn
        pre = b.block
        head = fn.append_basic_block("t_loop")
        body = fn.append_basic_block("t_body")
        latch = fn.append_basic_block("t_latch")
        exit_ = fn.append_basic_block("t_exit")
        b.cbranch(b.icmp_signed(">", self.T, ir.Constant(I64, 0)), head, exit_)
        b.position_at_end(head)
        k = b.phi(I64, "k")
        k.add_incoming(ir.Constant(I64, 0), pre)
        t_idx = b.sub(b.sub(self.T, ir.Constant(I64, 1)), k) if i.attrs["reverse"] else k
        n = b.load(b.gep(self.batch_sizes, [t_idx], source_etype=I64), typ=I64)
        b.cbranch(b.icmp_signed(">", n, ir.Constant(I64, 0)), body, latch)
        b.position_at_end(body)
        self.n = n
        row0 = b.mul(t_idx, self.B)
        locs = dict()
        for p, loc in zip(carry_p, carry_locs):
            locs[id(p)] = Loc(loc.ptr, loc.row_stride, 1, "step", loc.cols)
        for p, loc in zip(xs_p, xs_locs):
            ptr = b.gep(loc.ptr, [b.mul(row0, ir.Constant(I64, loc.row_stride))], source_etype=self.t)
            locs[id(p)] = Loc(ptr, loc.row_stride, loc.col_stride, "step", loc.cols)
        for p, a in zip(const_p, const_a):
            locs[id(p)] = outer_locs[id(a)]
        # Stacked outputs computed in the step are written straight into their row block.
        params = {id(p) for p in step.params}
        direct: dict[int, tuple[ir.Value, int]] = {}
        for r, loc in zip(res[nc:nc + ny], ys_locs):
            if id(r) not in params and id(r) not in direct:
                ptr = b.gep(loc.ptr, [b.mul(row0, ir.Constant(I64, loc.row_stride))], source_etype=self.t)
                direct[id(r)] = (ptr, loc.row_stride)
        self.locs = locs
        self.result_ptrs = direct
        self.extra_live = {id(r) for r in res}
        self.body(step, at_step=True)
        # ys (those not written in place), accumulators, then the new carry.
        for r, loc in zip(res[nc:nc + ny], ys_locs):
            src = self.locs[id(r)]
            ptr = b.gep(loc.ptr, [b.mul(row0, ir.Constant(I64, loc.row_stride))], source_etype=self.t)
            if src.ptr is not None and id(r) in direct and src.ptr is direct[id(r)][0]:
                continue
            dst = Loc(ptr, loc.row_stride, 1, "step", loc.cols)
            self.elementwise_loop([], [src], [dst], "step", loc.cols, lambda bb, v: [v[0]])
        for r, loc in zip(res[nc + ny:], acc_locs):
            src = self.locs[id(r)]
            self.elementwise_loop([], [loc, src], [loc], loc.rows, loc.cols,
                                  lambda bb, v: [bb.fadd(v[0], v[1])])
        new_carry = []
        for r, loc in zip(res[:nc], carry_locs):
            src = self.locs[id(r)]
            if src.ptr is loc.ptr:
                continue
            # Copy via a temporary only if the source is the carry buffer itself (no-op).
            new_carry.append((src, loc))
        for src, loc in new_carry:
            self.elementwise_loop([], [src], [Loc(loc.ptr, loc.row_stride, 1, "step", loc.cols)], "step",
                                  loc.cols, lambda bb, v: [v[0]])
        b.branch(latch)
        b.position_at_end(latch)
        k2 = b.add(k, ir.Constant(I64, 1))
        k.add_incoming(k2, latch)
        b.cbranch(b.icmp_signed("<", k2, self.T), head, exit_)
        b.position_at_end(exit_)
        # Back to the outer function.
        step_b = self.ws_coef[1] - saved_coef[1]
        step_c = self.ws_coef[2] - saved_coef[2]
        assert self.ws_coef[0] == saved_coef[0], "a step allocated a whole-sequence buffer"
        self.ws_off = b.add(saved_off, b.add(b.mul(self.B, ir.Constant(I64, step_b)),
                                             ir.Constant(I64, step_c)))
        self.n = self.B
        self.locs = outer_locs
        self.result_ptrs = outer_results
        self.into_concat = outer_concat
        self.extra_live = set()


def build_module(funcs: list[tuple[Func, str]], sizes: dict, dtype: str, blas_names: dict[str, str],
                 features: str = ""):
    """An llvmlite module with one native function per (IR function, name). `features` (the
    target's CPU features) selects the vector width of the inlined products; with none given,
    every product calls BLAS."""
    from .llvm_gemm import GemmEmitter

    ftype = ir.FloatType() if dtype == "float32" else ir.DoubleType()
    module = ir.Module(name="cellc")
    small_gemm = GemmEmitter(module, ftype, features) if features else None
    gemm_ty = ir.FunctionType(ir.VoidType(), [I32, I32, I32, I32, I32, I32, ftype, PTR, I32, PTR, I32,
                                              ftype, PTR, I32])
    if blas_names.get("abi") == "fortran":
        blas = {"gemm": _fortran_gemm_wrapper(module, gemm_ty, ftype, blas_names["gemm"])}
    else:
        blas = {"gemm": ir.Function(module, gemm_ty, blas_names["gemm"])}
    layouts = []
    for f, name in funcs:
        cg = FunctionCodegen(module, ftype, sizes, blas, small_gemm)
        layouts.append(cg.compile(f, name))
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
    order, ta, tb, m, n, k, alpha, a, lda, bb, ldb, beta, c, ldc = fn.args
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
