"""A register-blocked matrix product generated in LLVM IR, for the products inside time loops.

    C[r, n] = sum_k A[r, k] * Bm[k, n]      A: rows x K (row stride lda), Bm: K x N contiguous

K and N are compile-time constants; rows is known only at run time (the active batch rows).
A library GEMM call costs microseconds of overhead per time step (about 6-10 us here for the
products of a small cell, more than the arithmetic); this kernel is inlined into the loop.

Blocking: RB rows x CB vectors of VW lanes are accumulated in registers across the whole k loop
(each k: CB vector loads of Bm, RB broadcasts of A, RB*CB fused multiply-adds), then stored.
With AVX-512 (32 vector registers) RB=6, CB=4; with AVX2 (16) RB=6, CB=2 (see `blocking`).
Column blocks are a run-time loop (one copy of the block's code keeps compile time low);
leftover rows use blocks of 4, 2 and 1 rows, leftover vectors a smaller CB, leftover columns a
scalar loop. With `packed=True` Bm is in column panels (the transposed weights the time loops
copy once per call): a panel, K x CB vectors contiguous, is the outer loop, so it stays in
cache while every row block reads it; in the K x N layout a panel's rows lie a row of Bm apart
(4 KB at N=1024), all in one L1 set.
"""

from __future__ import annotations

import contextlib

from llvmlite import ir

from . import llvm_math
from .llvm_loops import for_range

I64 = ir.IntType(64)
I32 = ir.IntType(32)
PTR = ir.PointerType()


def blocking(features: str) -> tuple[int, int]:
    """(RB rows, CB vectors) of a register block. Measured on a Xeon with AVX-512 (M=64, K=256,
    N=1024, float32, Bm packed): 6x4 172 GFLOP/s, 8x3 167, 8x2 164, 4x4 124, 4x6 138; AVX2
    code there: 6x2 96 (its FMA peak), 4x2 92."""
    return (6, 4) if "+avx512f" in features else (6, 2)


def panel_width(dtype: str, features: str) -> int:
    """The columns of one panel of a packed Bm (Caps.panel): CB vectors."""
    t = ir.FloatType() if dtype == "float32" else ir.DoubleType()
    return blocking(features)[1] * vector_width(t, features)


def vector_width(ftype: ir.Type, features: str) -> int:
    bits = 512 if "+avx512f" in features else 256 if "+avx" in features else 128
    return bits // (32 if isinstance(ftype, ir.FloatType) else 64)


class GemmEmitter:
    def __init__(self, module: ir.Module, ftype: ir.Type, features: str):
        self.module = module
        self.t = ftype
        self.vw = vector_width(ftype, features)
        self.vt = ir.VectorType(ftype, self.vw)
        self.rb, self.cb = blocking(features)
        self.panel = self.cb * self.vw  # the columns of one panel of a packed Bm
        # Blocks of RB rows, then the leftover rows in blocks of 4 (a batch of 4 reads each
        # panel once, not twice), 2 and 1.
        self.tails = tuple(sorted({r for r in (self.rb, 4, 2, 1) if r <= self.rb}, reverse=True))
        self.cache: dict[tuple, ir.Function] = {}

    def function(self, K: int, N: int, accumulate: bool = False, packed: bool = False,
                 ranged: bool = False) -> ir.Function:
        """void gemm(i64 rows, ptr A, i64 lda, ptr Bm, ptr C, i64 ldc). `packed`: Bm is in
        column panels, the outer loop (see _packed_body). `ranged` (packed only): two more
        i64 arguments, the columns [lo, hi) to compute, lo a multiple of `panel`; the last
        panel's leftover columns belong to the range with hi > N // panel * panel."""
        key = (K, N, accumulate, packed, ranged)
        if key not in self.cache:
            name = (f"cellc.gemm.k{K}.n{N}" + (".acc" if accumulate else "")
                    + (".packed" if packed else "") + (".ranged" if ranged else ""))
            fty = ir.FunctionType(ir.VoidType(), [I64, PTR, I64, PTR, PTR, I64]
                                  + [I64, I64] * ranged)
            fn = ir.Function(self.module, fty, name)
            fn.linkage = "internal"
            for a in (fn.args[1], fn.args[3], fn.args[4]):
                a.add_attribute("noalias")
            if packed:
                self._packed_body(fn, K, N, accumulate)
            else:
                self._body(fn, K, N, accumulate)
            self.cache[key] = fn
        return self.cache[key]

    def _body(self, fn: ir.Function, K: int, N: int, accumulate: bool):
        rows, A, lda, Bm, C, ldc = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        nvec = N // self.vw
        # Blocks of RB rows, then the leftover rows (self.tails): every pass over Bm serves as
        # many rows as the registers allow.
        start = ir.Constant(I64, 0)
        for rb in self.tails:
            left = b.sub(rows, start)
            stop = b.add(start, b.mul(b.sdiv(left, ir.Constant(I64, rb)), ir.Constant(I64, rb)))
            self._row_loop(b, start, stop, rb, K, N, nvec, A, lda, Bm, C, ldc, accumulate)
            start = stop
        b.ret_void()

    def _packed_body(self, fn: ir.Function, K: int, N: int, accumulate: bool):
        """Bm packed in panels of CB vectors (`panel` columns; the last one narrower, holding
        the leftover vectors and columns), each K x width contiguous: element (k, c) of the
        panel from column c0 on is at c0*K + k*width + c - c0. Panels are the outer loop, so a
        panel stays in cache while every row block reads it."""
        rows, A, lda, Bm, C, ldc = fn.args[:6]
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        step = self.panel
        nvec = N // self.vw
        full = N // step * step
        lo, hi = fn.args[6:] if len(fn.args) > 6 else (ir.Constant(I64, 0), None)

        def row_blocks(emit):
            start = ir.Constant(I64, 0)
            for rb in self.tails:
                stop = b.add(start, b.mul(b.sdiv(b.sub(rows, start), ir.Constant(I64, rb)),
                                          ir.Constant(I64, rb)))
                with self._loop(b, start, stop, rb, f"p{rb}") as r0:
                    emit(r0, rb)
                start = stop

        if full:
            stop = ir.Constant(I64, full)
            if hi is not None:
                stop = b.select(b.icmp_signed("<", hi, stop), hi, stop)
            with self._loop(b, lo, stop, step, "cpan") as c0:
                row_blocks(lambda r0, rb: self._block(b, r0, rb, c0, self.cb, K, A, lda, Bm, C,
                                                      ldc, N, accumulate, panel=(c0, step)))
        if full < N:
            last = (ir.Constant(I64, full), N - full)
            tail = (contextlib.nullcontext() if hi is None else
                    b.if_then(b.icmp_signed(">", hi, ir.Constant(I64, full))))
            with tail:
                if nvec * self.vw > full:
                    row_blocks(lambda r0, rb: self._block(b, r0, rb, last[0],
                                                          nvec - full // self.vw, K, A, lda,
                                                          Bm, C, ldc, N, accumulate,
                                                          panel=last))
                for col in range(nvec * self.vw, N):
                    row_blocks(lambda r0, rb, col=col: self._scalar_column(
                        b, r0, rb, col, K, A, lda, Bm, C, ldc, N, accumulate,
                        panel=(full, N - full)))
        b.ret_void()

    @staticmethod
    def _loop(b, start, stop, step: int, name: str):
        """for i = start; i < stop; i += step (i64), blocks named after the loop, its exit
        right after its head."""
        return for_range(b, start, stop, step=step, name=name, head=f"{name}.head",
                         exit=f"{name}.exit", exit_last=False)

    def _row_loop(self, b, start, stop, rb, K, N, nvec, A, lda, Bm, C, ldc, accumulate):
        full = nvec // self.cb * self.cb  # vectors in whole column blocks

        def rows_body(r0):
            # Whole column blocks in a run-time loop (one copy of the block's code), then the
            # leftover vectors, then the leftover columns one by one.
            if full:
                stop = ir.Constant(I64, full * self.vw)
                with self._loop(b, ir.Constant(I64, 0), stop, self.cb * self.vw, "cblk") as col0:
                    self._block(b, r0, rb, col0, self.cb, K, A, lda, Bm, C, ldc, N, accumulate)
            if nvec > full:
                self._block(b, r0, rb, ir.Constant(I64, full * self.vw), nvec - full, K, A, lda,
                            Bm, C, ldc, N, accumulate)
            for col in range(nvec * self.vw, N):
                self._scalar_column(b, r0, rb, col, K, A, lda, Bm, C, ldc, N, accumulate)

        with self._loop(b, start, stop, rb, f"r{rb}") as r0:
            rows_body(r0)

    def gemv_function(self, M: int, K: int, ranged: bool = False) -> ir.Function:
        """void gemv(ptr W, ptr x, ptr y): y[m] = sum_k W[m, k] x[k], W (M, K) row-major.
        `ranged`: two more i64 arguments, the outputs [lo, hi) to compute, lo a multiple of
        4; the leftover rows past M // 4 * 4 belong to the range with hi = M.

        For one active row (batch 1) the product is bound by reading W once: dot products
        along W's contiguous rows, four rows at a time with one vector accumulator each, then
        a horizontal sum per row.
        """
        key = ("gemv", M, K, ranged)
        if key not in self.cache:
            fty = ir.FunctionType(ir.VoidType(), [PTR, PTR, PTR] + [I64, I64] * ranged)
            fn = ir.Function(self.module, fty,
                             f"cellc.gemv.m{M}.k{K}" + (".ranged" if ranged else ""))
            fn.linkage = "internal"
            for a in fn.args[:3]:
                a.add_attribute("noalias")
            self._gemv_body(fn, M, K)
            self.cache[key] = fn
        return self.cache[key]

    def _gemv_body(self, fn, M: int, K: int):
        W, x, y = fn.args[:3]
        lo, hi = fn.args[3:] if len(fn.args) > 3 else (ir.Constant(I64, 0), None)
        t, vt = self.t, self.vt
        align = 4 if isinstance(t, ir.FloatType) else 8
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        nk = K // self.vw
        suffix = "f32" if isinstance(t, ir.FloatType) else "f64"
        reduce_name = f"llvm.vector.reduce.fadd.v{self.vw}{suffix}"
        reduce = self.module.globals.get(reduce_name) or ir.Function(
            self.module, ir.FunctionType(t, [t, vt]), reduce_name)

        def rows(m0, rb):
            pre = b.block
            accs = [ir.Constant(vt, [0.0] * self.vw)] * rb
            if nk:
                with for_range(b, 0, nk, name="kv", head="kv.head", exit="kv.done",
                               guard=False) as kv:
                    phis = [b.phi(vt) for _ in range(rb)]
                    for p in phis:
                        p.add_incoming(ir.Constant(vt, [0.0] * self.vw), pre)
                    k0 = b.mul(kv, ir.Constant(I64, self.vw))
                    xv = b.load(b.gep(x, [k0], source_etype=t), typ=vt, align=align)
                    new = []
                    for r, p in enumerate(phis):
                        row = b.mul(b.add(m0, ir.Constant(I64, r)), ir.Constant(I64, K))
                        wv = b.load(b.gep(W, [b.add(row, k0)], source_etype=t), typ=vt,
                                    align=align)
                        new.append(llvm_math.fma(b, wv, xv, p))
                for p, v in zip(phis, new):
                    p.add_incoming(v, kv.parent)
                accs = new
            for r in range(rb):
                total = b.call(reduce, [ir.Constant(t, -0.0), accs[r]], fastmath=("reassoc",))
                row = b.mul(b.add(m0, ir.Constant(I64, r)), ir.Constant(I64, K))
                for k in range(nk * self.vw, K):  # columns past the last full vector
                    w = b.load(b.gep(W, [b.add(row, ir.Constant(I64, k))], source_etype=t), typ=t)
                    xk = b.load(b.gep(x, [ir.Constant(I64, k)], source_etype=t), typ=t)
                    total = llvm_math.fma(b, w, xk, total)
                b.store(total, b.gep(y, [b.add(m0, ir.Constant(I64, r))], source_etype=t))

        full = M // 4 * 4
        if full:
            stop = ir.Constant(I64, full)
            if hi is not None:
                stop = b.select(b.icmp_signed("<", hi, stop), hi, stop)
            with self._loop(b, lo, stop, 4, "m4") as m0:
                rows(m0, 4)
        if full < M:
            tail = (contextlib.nullcontext() if hi is None else
                    b.if_then(b.icmp_signed(">=", hi, ir.Constant(I64, M))))
            with tail:
                for m in range(full, M):
                    rows(ir.Constant(I64, m), 1)
        b.ret_void()

    def _splat(self, b, x):
        v = b.insert_element(ir.Constant(self.vt, None), x, ir.Constant(I32, 0))
        zeros = ir.Constant(ir.VectorType(I32, self.vw), [0] * self.vw)
        return b.shuffle_vector(v, ir.Constant(self.vt, None), zeros)

    def _block(self, b, r0, rb, col0, cb, K, A, lda, Bm, C, ldc, N, accumulate, panel=None):
        """Accumulate an rb x (cb vectors) block of C over all k in registers. `panel`:
        (first column, width) of the packed panel that holds the block's columns."""
        t, vt = self.t, self.vt
        pre = b.block
        align = 4 if isinstance(t, ir.FloatType) else 8  # buffers are only element-aligned
        with for_range(b, 0, K, name="k", head="k.head", exit="k.done", guard=False) as k:
            accs = [[b.phi(vt) for _ in range(cb)] for _ in range(rb)]
            for row in accs:
                for acc in row:
                    acc.add_incoming(ir.Constant(vt, [0.0] * self.vw), pre)
            if panel is None:  # element (k, col) at k*N + col
                bk, first = b.mul(k, ir.Constant(I64, N)), col0
            else:  # element (k, col) at c0*K + k*width + (col - c0)
                bk = b.add(b.mul(panel[0], ir.Constant(I64, K)),
                           b.mul(k, ir.Constant(I64, panel[1])))
                first = b.sub(col0, panel[0])
            bvec = [b.load(b.gep(Bm, [b.add(bk, b.add(first, ir.Constant(I64, c * self.vw)))],
                                 source_etype=t), typ=vt, align=align) for c in range(cb)]
            new = []
            for r in range(rb):
                arow = b.add(r0, ir.Constant(I64, r))
                a = b.load(b.gep(A, [b.add(b.mul(arow, lda), k)], source_etype=t), typ=t)
                av = self._splat(b, a)
                new.append([llvm_math.fma(b, av, bvec[c], accs[r][c]) for c in range(cb)])
        for r in range(rb):
            for c in range(cb):
                accs[r][c].add_incoming(new[r][c], k.parent)
        for r in range(rb):
            crow = b.mul(b.add(r0, ir.Constant(I64, r)), ldc)
            for c in range(cb):
                col = b.add(col0, ir.Constant(I64, c * self.vw))
                p = b.gep(C, [b.add(crow, col)], source_etype=t)
                v = new[r][c]
                if accumulate:
                    v = b.fadd(v, b.load(p, typ=vt, align=align))
                b.store(v, p, align=align)

    def _scalar_column(self, b, r0, rb, col, K, A, lda, Bm, C, ldc, N, accumulate, panel=None):
        t = self.t
        pre = b.block
        with for_range(b, 0, K, name="k", head="ks.head", exit="ks.done", guard=False) as k:
            accs = [b.phi(t) for _ in range(rb)]
            for acc in accs:
                acc.add_incoming(ir.Constant(t, 0.0), pre)
            if panel is None:
                at = b.add(b.mul(k, ir.Constant(I64, N)), ir.Constant(I64, col))
            else:
                c0, width = panel
                at = ir.Constant(I64, c0 * K + col - c0)
                at = b.add(at, b.mul(k, ir.Constant(I64, width)))
            w = b.load(b.gep(Bm, [at], source_etype=t), typ=t)
            new = []
            for r in range(rb):
                arow = b.add(r0, ir.Constant(I64, r))
                a = b.load(b.gep(A, [b.add(b.mul(arow, lda), k)], source_etype=t), typ=t)
                new.append(llvm_math.fma(b, a, w, accs[r]))
        for r in range(rb):
            accs[r].add_incoming(new[r], k.parent)
        for r in range(rb):
            crow = b.mul(b.add(r0, ir.Constant(I64, r)), ldc)
            p = b.gep(C, [b.add(crow, ir.Constant(I64, col))], source_etype=t)
            v = new[r]
            if accumulate:
                v = b.fadd(v, b.load(p, typ=t))
            b.store(v, p)

