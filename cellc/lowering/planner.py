"""Deciding the plan: a walk over one top-level IR function in emission order (see the package
docstring for what is decided)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from ..ir import Func, Instr, Value, scan_parts
from ..ops import OPS
from ..shapes import ONE, Batch, Dim
from ..source import InternalError
from .nodes import (
    COLUMN_MIN_WORK,
    INLINE_MAX_ELEMENTS,
    PACKED_MAX_ELEMENTS,
    VIEWS,
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
from .sizes import add, mul, size, symbolic


def column_barriers(body: list) -> set[int]:
    """Where a step split by columns must wait (the ids of the ops followed by a barrier).

    Each thread runs a kernel over `cols` columns on the same share of them, so consecutive
    kernels over the same number of columns need no barrier between them where they touch a
    buffer only at the same place (base, offset and strides): each thread then reads back
    only what it wrote itself. A product reads whole rows and writes by panels: barriers on
    both sides. A broadcast read (column stride 0), another view of a buffer written since
    the last barrier (or a write to one read so), another number of columns or a kernel that
    is not per row (run by one thread) each need one first."""
    ops = [n for n in body if isinstance(n, (Kernel, Product, RowSum))]
    after: set[int] = set()
    touched: dict[int, tuple[set, bool]] = {}  # root id -> (access places, written)
    cols = None

    def wait_after(k):
        nonlocal cols
        if k >= 0:
            after.add(id(ops[k]))
        touched.clear()
        cols = None

    for k, op in enumerate(ops):
        if not isinstance(op, Kernel) or op.rows != "step":
            wait_after(k - 1)
            after.add(id(op))
            continue
        accesses = [(loc, False) for loc in op.ins] + [(loc, True) for loc in op.outs]
        places = [(loc, w, *_place(loc)) for loc, w in accesses if loc.ptr is not None]
        clash = cols is not None and op.cols != cols
        for loc, write, root, place in places:
            seen, written = touched.get(root, (set(), False))
            if seen and (write or written) and (seen != {place} or loc.col_stride == 0):
                clash = True
        if clash:
            wait_after(k - 1)
        for _loc, write, root, place in places:
            seen, written = touched.setdefault(root, (set(), False))
            seen.add(place)
            touched[root] = (seen, written or write)
        cols = op.cols
    if ops:
        after.add(id(ops[-1]))
    return after


def _place(loc: Loc) -> tuple[int, tuple]:
    """(the id of the buffer a Loc lies in, where in it: offsets and strides)."""
    p, offset, blocks = loc.ptr, 0, ()
    while isinstance(p, (Offset, RowBlock)):
        if isinstance(p, Offset):
            offset += p.elements
        else:
            blocks += (p.row_stride,)
        p = p.base
    return id(p), (offset, blocks, loc.row_stride, loc.col_stride)


def total_size(shape) -> object:
    """The number of elements of a shape of plan sizes."""
    n = 1
    for d in shape:
        n = mul(n, d)
    return n


def dims(v: Value, sizes, at_step: bool) -> tuple[object, object]:
    """(rows kind, cols) of a value as a 2-D array; sizes None (a generic plan): a feature size
    with symbols stays a Dim. A parameter matrix has its rows; any other value of two or more
    axes has its numbers in one row each, row-major (a per-example matrix, a head-wise
    parameter)."""
    t = v.type
    shape = [size(d, sizes) for d in t.shape]
    if t.batch is Batch.NONE and len(shape) == 2:
        return shape[0], shape[1]
    # A vector, or the numbers of a tensor-valued one in row-major order (see Nest).
    cols = total_size(shape)
    if t.batch is Batch.NONE:
        return 1, cols
    if t.batch is Batch.SEQ:
        return "seq", cols
    return ("step" if at_step else "batch"), cols


def group(f: Func) -> list:
    """Runs of elementwise instructions with one output shape (lists); everything else alone.
    A product that reads nothing of the open run goes before it, so that the run continues
    after the product: in a step, `x_proj + b_ih` then `W_hh @ h` then `+ t + b_hh` is one
    elementwise pass, not two."""
    out: list = []
    current: list[Instr] = []
    shape = None
    for i in f.body:
        if (current and i.op in ("matmul", "matmul_t", "outer")
                and not any(a is o for a in i.args for x in current for o in x.outs)):
            out.append(i)
            continue
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


def broadcast_to(loc: Loc, rows, cols: int) -> Loc:
    """The same elements seen as (rows, cols): a single column or row repeats."""
    col_stride = 0 if loc.cols == 1 and cols != 1 else loc.col_stride
    row_stride = 0 if loc.rows == 1 and rows != 1 else loc.row_stride
    if (col_stride, row_stride) == (loc.col_stride, loc.row_stride):
        return loc
    return Loc(loc.ptr, row_stride, col_stride, rows, cols, loc.const)


@dataclass
class _Scope:
    """What changes inside the time loop's step: the locations, the caller's buffers for the
    values computed in place, the values that must be stored, the concat slices."""

    locs: dict
    result_ptrs: dict
    extra_live: set
    into_concat: dict


class _Planner:
    """Walks one top-level function in emission order, appending ops to `self.ops`.

    The order is the renderer's: it defines each pointer where its op stands and numbers LLVM
    values as it goes, so the order of `define` and `emit` calls below is kept exactly (moving
    one changes the IR text, not its meaning)."""

    def __init__(self, sizes: dict, caps: Caps):
        self.sizes = sizes
        self.caps = caps
        self.ws_coef = [0, 0, 0]
        self.regions: list[Work] = []
        self.ops: list = []
        self.transposed: dict[int, Loc] = {}
        self.scope = _Scope({}, {}, set(), {})

    def define(self, p: Ptr) -> Ptr:
        self.ops.append(p)
        return p

    def emit(self, node):
        self.ops.append(node)
        return node

    def dims(self, v: Value, at_step: bool):
        return dims(v, self.sizes, at_step)

    # -- entry --------------------------------------------------------------------------

    def function(self, f: Func, name: str) -> FunctionPlan:
        locs = self.scope.locs
        for k, p in enumerate(f.params):
            rows, cols = self.dims(p, at_step=False)
            row_stride = cols if rows != 1 or p.type.rank == 2 else 0
            locs[id(p)] = Loc(self.define(Arg(k)), row_stride, 1, rows, cols)
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
        ptrs = {vid: self.define(Result(s)) for vid, s in slots.items()}
        for r in f.results:  # caller's buffers are contiguous
            if id(r) in ptrs:
                full = r.type.batch is not Batch.NONE or r.type.rank == 2
                self.scope.result_ptrs[id(r)] = (ptrs[id(r)], self.dims(r, False)[1] if full else 0)
        self.body(f, at_step=False)
        return FunctionPlan(name, f, self.ops, results, len(slots), tuple(self.ws_coef),
                            self.regions)

    # -- storage ------------------------------------------------------------------------

    def alloc(self, rows, cols: int) -> Ptr:
        k = {"seq": 0, "batch": 1, "step": 1}.get(rows, 2)
        self.ws_coef[k] = add(self.ws_coef[k], mul(cols, 1 if k < 2 else rows))
        w = Work(rows, cols, len(self.regions))
        self.regions.append(w)
        return self.define(w)

    def find_concat_slices(self, f: Func, at_step: bool) -> None:
        """The values computed straight into their slice of a concat's buffer: those whose only
        use is that concat."""
        uses: dict[int, list[Instr]] = {}
        for i in f.body:
            for a in i.args:
                uses.setdefault(id(a), []).append(i)
        result_ids = {id(r) for r in f.results}
        into = self.scope.into_concat = {}
        for i in f.body:
            if i.op == "concat":
                off = 0
                for a in i.args:
                    _, cols = self.dims(a, at_step)
                    if (len(uses.get(id(a), [])) == 1 and id(a) not in result_ids
                            and id(a) not in self.scope.locs
                            and sum(1 for x in i.args if x is a) == 1 and a.type.rank == 1):
                        into[id(a)] = (i, off)
                    off = add(off, cols)

    def storage(self, v: Value, at_step: bool) -> Loc:
        """A writable Loc for a value about to be computed."""
        s = self.scope
        if id(v) in s.locs:
            return s.locs[id(v)]
        rows, cols = self.dims(v, at_step)
        if id(v) in s.result_ptrs:
            ptr, stride = s.result_ptrs[id(v)]
            loc = Loc(ptr, stride, 1, rows, cols)
        elif id(v) in s.into_concat:
            concat, off = s.into_concat[id(v)]
            parent = self.storage(concat.out, at_step)
            loc = Loc(self.define(Offset(parent.ptr, off)), parent.row_stride, 1, rows, cols)
        else:
            row_stride = cols if (rows != 1 or v.type.rank == 2) else 0
            loc = Loc(self.alloc(rows, cols), row_stride, 1, rows, cols)
        s.locs[id(v)] = loc
        return loc

    def copy(self, src: Loc, dst: Loc, rows, cols: int, what: str = "copy") -> Kernel:
        return self.emit(Kernel(what, [src], [dst], rows, cols))

    def fill(self, loc: Loc, value: float) -> Kernel:
        return self.copy(Loc(None, 0, 0, loc.rows, loc.cols, const=value), loc, loc.rows,
                         loc.cols, "fill")

    def materialized(self, v: Value) -> Loc:
        """A Loc with real memory and unit column stride (for BLAS)."""
        loc = self.scope.locs[id(v)]
        if loc.ptr is not None and loc.col_stride == 1 and (loc.row_stride != 0 or loc.rows == 1):
            return loc
        out = Loc(self.alloc(loc.rows, loc.cols), loc.cols, 1, loc.rows, loc.cols)
        self.copy(loc, out, loc.rows, loc.cols)
        self.scope.locs[id(v)] = out  # copy once; later uses read the copy
        return out

    def offset(self, loc: Loc, k: int) -> Ptr | None:
        if loc.ptr is None or k == 0:
            return loc.ptr
        return self.define(Offset(loc.ptr, k))

    def bind_view(self, v: Value, view: Loc, at_step: bool):
        """A view; if the value must live in a given buffer (a result), copy it there."""
        if id(v) in self.scope.result_ptrs or id(v) in self.scope.into_concat:
            dst = self.storage(v, at_step)
            self.copy(view, dst, view.rows, view.cols)
        else:
            self.scope.locs[id(v)] = view

    # -- body ---------------------------------------------------------------------------

    def body(self, f: Func, at_step: bool):
        self.find_concat_slices(f, at_step)
        for g in group(f):
            if isinstance(g, list):
                self.fused(g, f, at_step)
            else:
                self.instr(g, at_step)

    def instr(self, i: Instr, at_step: bool):
        rule = _RULES.get(i.op)
        if rule is None:
            raise InternalError(f"llvm backend: no rule for op '{i.op}'")
        rule(self, i, at_step)

    def const(self, i: Instr, at_step: bool):
        s = self.scope
        rows, cols = self.dims(i.out, at_step)
        value = i.attrs["value"]
        if isinstance(value, Dim):  # a size as a number: known at run time in a generic plan
            value = size(value, self.sizes) if self.sizes is None else value.evaluate(self.sizes)
        value = value if symbolic(value) else float(value)
        s.locs[id(i.out)] = Loc(None, 0, 0, rows, cols, const=value)
        if id(i.out) in s.result_ptrs or id(i.out) in s.into_concat:
            src = s.locs.pop(id(i.out))
            dst = self.storage(i.out, at_step)
            self.copy(src, dst, rows, cols)

    def split(self, i: Instr, at_step: bool):
        src = self.scope.locs[id(i.args[0])]
        off = 0
        for o in i.outs:
            rows, cols = self.dims(o, at_step)
            if _is_matrix(i.args[0]):  # parameter matrices split by rows
                ptr = self.offset(src, mul(off, src.row_stride))
                off = add(off, rows)
            else:
                ptr = self.offset(src, mul(off, src.col_stride))
                off = add(off, cols)
            view = Loc(ptr, src.row_stride, src.col_stride, rows, cols, src.const)
            self.bind_view(o, view, at_step)

    def broadcast(self, i: Instr, at_step: bool):
        src = self.scope.locs[id(i.args[0])]
        rows, cols = self.dims(i.out, at_step)
        self.bind_view(i.out, Loc(src.ptr, src.row_stride, 0, rows, cols, src.const), at_step)

    def concat(self, i: Instr, at_step: bool):
        out = self.storage(i.out, at_step)
        off = 0
        for a in i.args:
            loc = self.scope.locs[id(a)]
            rows, cols = self.dims(a, at_step)
            if id(a) in self.scope.into_concat:  # already computed in place
                off = add(off, 0 if _is_matrix(a) else cols)
                continue
            if _is_matrix(a):
                dst = Loc(self.offset(out, mul(off, out.row_stride)), out.row_stride, 1, rows,
                          cols)
                off = add(off, rows)
            else:
                dst = Loc(self.offset(out, off), out.row_stride, 1, rows, cols)
                off = add(off, cols)
            self.copy(loc, dst, rows, cols)

    def fused(self, instrs: list[Instr], f: Func, at_step: bool):
        ids = {id(o) for i in instrs for o in i.outs}
        inside = {id(i) for i in instrs}
        needed_outside = set()
        for i in f.body:
            if id(i) in inside:
                continue
            for a in i.args:
                if id(a) in ids:
                    needed_outside.add(id(a))
        for r in f.results:
            if id(r) in ids:
                needed_outside.add(id(r))
        needed_outside |= ids & self.scope.extra_live
        inputs: list[Value] = []
        for i in instrs:
            for a in i.args:
                if id(a) not in ids and not any(a is x for x in inputs):
                    inputs.append(a)
        outputs = [o for i in instrs for o in i.outs if id(o) in needed_outside]
        if not outputs:
            return
        rows, cols = self.dims(instrs[0].out, at_step)
        shape = instrs[0].out.type.shape
        if any(_needs_nest(a, instrs[0].out) for a in inputs):
            ins = [self.strided(a, shape) for a in inputs]
            outs = [self.strided_out(o, at_step, shape) for o in outputs]
            self.emit(Nest("fused", ins, outs, self.nest_rows(instrs[0].out, at_step),
                           self.extents(shape), None, list(instrs), inputs, outputs))
            return
        in_locs = [broadcast_to(self.scope.locs[id(a)], rows, cols) for a in inputs]
        out_locs = [self.storage(o, at_step) for o in outputs]
        self.emit(Kernel("fused", in_locs, out_locs, rows, cols, list(instrs), inputs, outputs))

    # -- tensor-valued ops: loop nests over the per-example axes ---------------------------

    def extents(self, shape) -> tuple:
        return tuple(size(d, self.sizes) for d in shape)

    def contiguous(self, v: Value) -> Loc:
        """v's Loc with its numbers in row-major order in each row (a copy if they are not)."""
        loc = self.scope.locs[id(v)]
        if loc.ptr is None or (loc.col_stride == 1 and (
                v.type.batch is not Batch.NONE or loc.rows == 1 or loc.row_stride == loc.cols)):
            return loc
        out = Loc(self.alloc(loc.rows, loc.cols), 0 if loc.rows == 1 else loc.cols, 1,
                  loc.rows, loc.cols)
        self.copy(loc, out, loc.rows, loc.cols)
        self.scope.locs[id(v)] = out
        return out

    def strided(self, v: Value, target: tuple, shape: tuple | None = None) -> Strided:
        """v as an operand of a nest over `target` (a shape): its axes (`shape`: v's numbers
        seen in another shape of the same size) right-aligned with the target's, at stride 0
        where v has size 1 and the target does not (NumPy's broadcasting)."""
        loc = self.contiguous(v)
        shape = v.type.shape if shape is None else shape
        row_stride = 0 if v.type.batch is Batch.NONE else loc.row_stride
        return Strided(loc.ptr, row_stride, _strides(shape, target, self.sizes), loc.const)

    def strided_out(self, v: Value, at_step: bool, target: tuple,
                    shape: tuple | None = None) -> Strided:
        loc = self.storage(v, at_step)
        shape = v.type.shape if shape is None else shape
        row_stride = 0 if v.type.batch is Batch.NONE else loc.row_stride
        return Strided(loc.ptr, row_stride, _strides(shape, target, self.sizes))

    def nest_rows(self, v: Value, at_step: bool):
        """A nest's rows: the batch rows of a per-example value, one for a parameter's."""
        return 1 if v.type.batch is Batch.NONE else self.dims(v, at_step)[0]

    def reshape(self, i: Instr, at_step: bool):
        """The same numbers in another shape: a view (of a row-major copy if need be)."""
        src = self.contiguous(i.args[0])
        rows, cols = self.dims(i.out, at_step)
        if src.ptr is None:
            view = Loc(None, 0, 0, rows, cols, src.const)
        elif i.out.type.batch is Batch.NONE:
            view = Loc(src.ptr, cols if rows != 1 or i.out.type.rank == 2 else 0, 1, rows, cols)
        else:
            view = Loc(src.ptr, src.row_stride, 1, rows, cols)
        self.bind_view(i.out, view, at_step)

    def tensor_copy(self, i: Instr, at_step: bool):
        """expand (the size-1 axis read at stride 0) and transpose (the last two strides
        swapped)."""
        (x,) = i.args
        shape = i.out.type.shape
        if i.op == "transpose":
            src = self.strided(x, x.type.shape)
            src.strides = src.strides[:-2] + (src.strides[-1], src.strides[-2])
        else:
            src = self.strided(x, shape)
        out = self.strided_out(i.out, at_step, shape)
        self.emit(Nest("copy", [src], [out], self.nest_rows(i.out, at_step), self.extents(shape)))

    def reduce_axis(self, i: Instr, at_step: bool):
        """sum_axis, max_axis: the output filled (0, -inf), then combined with each element
        along the axis (the output's stride there is 0)."""
        (x,) = i.args
        shape = x.type.shape
        src = self.strided(x, shape)
        self.fill(self.storage(i.out, at_step), 0.0 if i.op == "sum_axis" else float("-inf"))
        out = self.strided_out(i.out, at_step, shape)
        self.emit(Nest("copy", [src], [out], self.nest_rows(i.out, at_step), self.extents(shape),
                       "sum" if i.op == "sum_axis" else "max"))

    def matvec(self, i: Instr, at_step: bool):
        """y[..., m] = sum_k A[..., m, k] v[..., k]: a nest over (..., m, k) that sums
        products into y (stride 0 along k), v read at stride 0 along m."""
        a, v = i.args
        y = i.out
        space = y.type.shape + (a.type.shape[-1],)
        ins = [self.strided(a, space),
               self.strided(v, space, v.type.shape[:-1] + (ONE,) + v.type.shape[-1:])]
        self.fill(self.storage(y, at_step), 0.0)
        out = self.strided_out(y, at_step, space, y.type.shape + (ONE,))
        self.emit(Nest("mul", ins, [out], self.nest_rows(y, at_step), self.extents(space), "sum"))

    # -- products and reductions --------------------------------------------------------

    def product(self, i: Instr, at_step: bool):
        out = self.storage(i.out, at_step)
        x, y = i.args
        # Materialize operands before any branch: allocation must not happen inside one.
        lx, ly = self.materialized(x), self.materialized(y)
        node = Product(i, out, lx, ly, "library")
        node.team = not at_step and self.caps.team and self.caps.library_in_team
        if at_step and self.caps.inline_products and i.op in ("matmul", "matmul_t"):
            W, A = lx, ly
            bm = self.transposed.get((id(x), i.op))  # a copy made before the loop
            node.panel = self.caps.panel if bm is not None else 0
            if bm is None and i.op == "matmul_t":  # W itself, K x N
                contiguous = W.ptr is not None and W.col_stride == 1 and W.row_stride == W.cols
                bm = W if contiguous and W.rows * W.cols <= INLINE_MAX_ELEMENTS else None
            if bm is not None and A.col_stride == 1:
                node.bm = bm
                node.strategy = "choose" if node.panel or i.op == "matmul" else "inline"
                # GEMV reads W's rows whole.
                node.gemv = i.op == "matmul" and W.row_stride == W.cols and W.col_stride == 1
        self.emit(node)

    def row_sum(self, i: Instr, at_step: bool):
        src = self.scope.locs[id(i.args[0])]
        out = self.storage(i.out, at_step)
        # A mean over a symbolic number of features divides at run time (scale None).
        scale = (None if symbolic(src.cols) else 1.0 / src.cols) if i.op == "mean" else 1.0
        self.emit(RowSum(i, src, out, scale))

    def batch_sum(self, i: Instr, at_step: bool):
        src = self.scope.locs[id(i.args[0])]
        out = self.storage(i.out, at_step)
        self.fill(out, 0.0)
        # Every row adds into row 0 (a tensor-valued one: all its numbers in one row).
        acc = Loc(out.ptr, 0, 1, src.rows, src.cols)
        # out[c] += src[r, c] for each r: a loop nest whose inner loop vectorizes.
        self.emit(Kernel("sum", [acc, src], [acc], src.rows, src.cols))

    # -- the time loop ------------------------------------------------------------------

    @contextmanager
    def collecting(self):
        """Ops planned inside go to a fresh list (one part of a loop node)."""
        outer = self.ops
        self.ops = ops = []
        try:
            yield ops
        finally:
            self.ops = outer

    @contextmanager
    def in_scope(self, scope: _Scope):
        """The step's locations and buffers stand in for the function's while it is planned."""
        outer = self.scope
        self.scope = scope
        try:
            yield
        finally:
            self.scope = outer

    def scan(self, i: Instr, at_step: bool):
        step: Func = i.attrs["step"]
        parts = scan_parts(i)
        carry_a, xs_a, const_a = parts.split_args(i.args)
        carry_o, ys_o, acc_o = parts.split_outs(i.outs)
        # Carries live in the final-carry buffers; stacked outputs start zeroed (finished rows).
        with self.collecting() as init:
            carry_locs = []
            for a, o in zip(carry_a, carry_o):
                loc = self.storage(o, at_step=False)
                self.copy(self.scope.locs[id(a)], loc, "batch", loc.cols)
                carry_locs.append(loc)
            ys_locs = [self.storage(o, at_step=False) for o in ys_o]
        with self.collecting() as ys_fill:
            for loc in ys_locs:  # rows of sequences that have ended are zero
                self.fill(loc, 0.0)
        with self.collecting() as prep:
            acc_locs = [self.storage(o, at_step=False) for o in acc_o]
            for loc in acc_locs:
                self.fill(loc, 0.0)
            xs_locs = [self.materialized(a) for a in xs_a]
        consts = [self.scope.locs[id(a)] for a in const_a]
        with self.collecting() as transpose_allocs:
            transposes = self.transposes(step, parts.split_args(step.params)[2], consts)
        saved = list(self.ws_coef)
        with self.collecting() as body:
            self.step(i, step, carry_locs, ys_locs, acc_locs, xs_locs, consts)
        if self.ws_coef[0] != saved[0]:
            raise InternalError("a step allocated a whole-sequence buffer")
        step_ws = (self.ws_coef[1] - saved[1], self.ws_coef[2] - saved[2])
        row_ptrs = [(loc.ptr, loc.row_stride) for loc in carry_locs + consts
                    if loc.rows == "batch" and loc.ptr is not None and loc.row_stride != 0]
        loop = TimeLoop(i, bool(i.attrs["reverse"]), init, ys_fill, prep, transpose_allocs,
                        transposes, body, step_ws, carry_locs, xs_locs, row_ptrs=row_ptrs)
        loop.one_thread = self.one_thread(loop, acc_locs)
        if loop.one_thread is None:
            loop.columns, loop.all_gemv = self.column_split(loop)
            if loop.columns:
                loop.barriers = column_barriers(loop.body)
        if loop.one_thread is not None and self.caps.team and self.caps.library_in_team:
            for node in body:  # a loop on one thread: its library products may use the team
                if isinstance(node, Product) and node.strategy == "library":
                    node.team = True
        self.emit(loop)

    def one_thread(self, loop: TimeLoop, acc_locs: list[Loc]) -> str | None:
        """Why the loop's batch rows cannot be split across threads, or None when they can:
        each block of rows must touch only its own rows of every buffer it writes."""
        if not self.caps.team:
            return "no thread team: a library built ahead of time"
        if self.sizes is None:
            return "a generic plan"
        if acc_locs:
            return "it accumulates over rows"
        if loop.step_ws[1] != 0:
            return "its step workspace is shared by all rows"
        own = {id(p) for p, _ in loop.row_ptrs}
        for node in loop.body:
            if isinstance(node, Ptr):
                own.add(id(node))
            elif isinstance(node, Kernel) and node.what == "sum":
                return "it sums over rows"
            elif isinstance(node, Product) and node.instr.op == "outer":
                return "it sums products over rows"
            elif isinstance(node, Product) and node.strategy == "library":
                # A product too large to inline: each one is split across the threads
                # (row blocks would each read the whole weight, every step).
                return "its library products are split across the threads, one at a time"
        for node in loop.body:
            if isinstance(node, Nest) and node.rows != "step":
                return "a step computes values shared by all rows"
            locs = (node.ins + node.outs if isinstance(node, Kernel) else
                    [node.out, node.a, node.b] if isinstance(node, Product) else
                    [node.src, node.out] if isinstance(node, RowSum) else [])
            if any(loc is not None and loc.rows == "batch" for loc in locs):
                return "a step works on the whole batch"
        for node in loop.body:
            written = (node.outs if isinstance(node, (Kernel, Nest)) else
                       [node.out] if isinstance(node, (Product, RowSum)) else [])
            for loc in written:
                if loc.ptr is not None and id(loc.ptr) not in own:
                    return "it writes a buffer shared by all rows"
        for node in loop.body:
            if isinstance(node, RowBlock) and id(node.base) in {id(p) for p, _ in loop.row_ptrs}:
                raise InternalError("a row block of a per-row buffer")
        return None

    def column_split(self, loop: TimeLoop) -> tuple[bool, bool]:
        """(whether a small batch may split the loop's steps by columns, whether every product
        has its one-row GEMV). Each op must work column by column: elementwise kernels, and
        products on packed panels (split by panels) or by GEMV (split by W's rows); a
        reduction over a row's features and a tensor op's nest cannot split. Only for enough
        work per step."""
        products = [n for n in loop.body if isinstance(n, Product)]
        if not self.caps.panel or not products or any(
                isinstance(n, (RowSum, Nest)) for n in loop.body):
            return False, False
        if any(p.strategy != "choose" or not p.panel or p.bm is None for p in products):
            return False, False
        work = sum(p.bm.rows * p.bm.cols for p in products)  # a sized plan: ints
        return work >= COLUMN_MIN_WORK, all(p.gemv for p in products)

    def transposes(self, step: Func, const_p, consts: list[Loc]) -> list[Kernel]:
        """The weights of products inside the loop, copied once per call for the inlined
        kernel: W @ x's transposed (K x N, element (k, m) = W[m, k]), and with packed panels
        (Caps.panel) d @ W's too (W as it is, K x N); packed, panel by panel of P columns
        (element (k, n) of the panel from column c0 on is at c0*K + k*width + n - c0). Only
        matrices up to INLINE_MAX_ELEMENTS, or packed PACKED_MAX_ELEMENTS (a larger one is
        better served by the library)."""
        self.transposed = {}
        out = []
        if not self.caps.inline_products:
            return out
        limit = PACKED_MAX_ELEMENTS if self.caps.panel else INLINE_MAX_ELEMENTS
        for ins in step.body:
            if ins.op not in ("matmul", "matmul_t") or (ins.op == "matmul_t"
                                                         and not self.caps.panel):
                continue
            w = ins.args[0]
            key = (id(w), ins.op)
            if not any(w is p for p in const_p) or key in self.transposed:
                continue
            src = consts[list(const_p).index(w)]
            if src.ptr is None or src.col_stride != 1 or src.rows * src.cols > limit:
                continue
            # The view: element (k, n) at src[k*rk + n*rn].
            if ins.op == "matmul":
                K, N, rk, rn = src.cols, src.rows, 1, src.row_stride
            else:
                K, N, rk, rn = src.rows, src.cols, src.row_stride, 1
            self.transposed[key] = Loc(self.alloc(K, N), N, 1, K, N)
            P = self.caps.panel or N
            for c0 in range(0, N, P):
                width = min(P, N - c0)
                dst = (self.transposed[key] if width == N else
                       Loc(self.offset(self.transposed[key], c0 * K), width, 1, K, width))
                out.append(Kernel("copy", [Loc(self.offset(src, c0 * rn), rk, rn, K, width)],
                                  [dst], K, width))
        return out

    def step(self, i: Instr, step: Func, carry_locs, ys_locs, acc_locs, xs_locs, consts):
        """One step's ops: the row blocks it reads, its body, then what it writes."""
        parts = scan_parts(i)
        nc, ny = parts.n_carry, parts.n_ys
        carry_p, xs_p, const_p = parts.split_args(step.params)
        res = step.results
        locs = {}
        for p, loc in zip(carry_p, carry_locs):
            locs[id(p)] = Loc(loc.ptr, loc.row_stride, 1, "step", loc.cols)
        for p, loc in zip(xs_p, xs_locs):
            ptr = self.define(RowBlock(loc.ptr, loc.row_stride))
            locs[id(p)] = Loc(ptr, loc.row_stride, loc.col_stride, "step", loc.cols)
        for p, loc in zip(const_p, consts):
            locs[id(p)] = loc
        # Stacked outputs computed in the step are written straight into their row block.
        params = {id(p) for p in step.params}
        direct: dict[int, tuple[Ptr, int]] = {}
        for r, loc in zip(res[nc:nc + ny], ys_locs):
            if id(r) not in params and id(r) not in direct:
                direct[id(r)] = (self.define(RowBlock(loc.ptr, loc.row_stride)), loc.row_stride)
        with self.in_scope(_Scope(locs, direct, {id(r) for r in res}, {})):
            self.body(step, at_step=True)
        # ys (those not written in place), accumulators, then the new carry.
        for r, loc in zip(res[nc:nc + ny], ys_locs):
            src = locs[id(r)]
            ptr = self.define(RowBlock(loc.ptr, loc.row_stride))
            if src.ptr is not None and id(r) in direct and src.ptr is direct[id(r)][0]:
                continue
            self.copy(src, Loc(ptr, loc.row_stride, 1, "step", loc.cols), "step", loc.cols)
        for r, loc in zip(res[nc + ny:], acc_locs):
            self.emit(Kernel("add", [loc, locs[id(r)]], [loc], loc.rows, loc.cols))
        for r, loc in zip(res[:nc], carry_locs):
            src = locs[id(r)]
            if src.ptr is not loc.ptr:
                self.copy(src, Loc(loc.ptr, loc.row_stride, 1, "step", loc.cols), "step", loc.cols)


def _is_matrix(v: Value) -> bool:
    """A parameter matrix: a plan keeps its rows (any other value has one row of numbers)."""
    return v.type.batch is Batch.NONE and v.type.rank == 2


def _needs_nest(a: Value, out: Value) -> bool:
    """Whether an elementwise kernel with output `out` must read `a` through a Nest: it
    broadcasts along some axes (other than a single number), or it is a parameter of two or
    more axes next to a per-example value (its rows are not the kernel's)."""
    t, o = a.type, out.type
    if t.rank <= 1 and o.rank <= 1:
        return False
    if t.shape != o.shape:
        return any(d != ONE for d in t.shape)
    return t.batch is Batch.NONE and o.batch is not Batch.NONE


def _strides(shape: tuple, target: tuple, sizes) -> tuple:
    """The strides of a row-major array of `shape` along the axes of `target`, right-aligned;
    0 along the target's leading axes it lacks and where it has size 1 and the target not."""
    natural, step = [], 1
    for d in reversed(shape):
        natural.append(step)
        step = mul(step, size(d, sizes))
    natural.reverse()
    lead = len(target) - len(shape)
    if lead < 0:
        raise InternalError(f"a nest over {target} reads a value of shape {shape}")
    return (0,) * lead + tuple(
        0 if d == ONE and t != ONE else n for d, t, n in zip(shape, target[lead:], natural))


_RULES = {
    "reshape": _Planner.reshape,
    "expand": _Planner.tensor_copy,
    "transpose": _Planner.tensor_copy,
    "sum_axis": _Planner.reduce_axis,
    "max_axis": _Planner.reduce_axis,
    "matvec": _Planner.matvec,
    "const": _Planner.const,
    "split": _Planner.split,
    "broadcast": _Planner.broadcast,
    "concat": _Planner.concat,
    "matmul": _Planner.product,
    "matmul_t": _Planner.product,
    "outer": _Planner.product,
    "sum": _Planner.row_sum,
    "mean": _Planner.row_sum,
    "sum_batch": _Planner.batch_sum,
    "scan": _Planner.scan,
}


def plan_function(f: Func, name: str, sizes: dict | None, caps: Caps | None = None
                  ) -> FunctionPlan:
    """The plan of one top-level function, named `name` in the native code (sizes None: the
    generic plan, see `plan`)."""
    return _Planner(sizes, _caps(sizes, caps)).function(f, name)


def _caps(sizes: dict | None, caps: Caps | None) -> Caps:
    # The inlined GEMM is specialized on K and N: a generic plan sends every product to the
    # library, whatever the target offers.
    return Caps(inline_products=False) if sizes is None else (caps or Caps())


def plan(funcs, sizes: dict | None, caps: Caps | None = None,
         symbols: list[str] | None = None) -> Plan:
    """The plan of top-level functions: a Func or a list of (Func, native name).

    With sizes None it is the generic plan: feature sizes stay Dims, computed by the kernel
    from its `sizes` argument, whose order `symbols` gives (the cell's size symbols)."""
    if isinstance(funcs, Func):
        funcs = [(funcs, funcs.name)]
    caps = _caps(sizes, caps)
    if sizes is not None:
        symbols = list(sizes)
    elif symbols is None:
        raise InternalError("a generic plan needs the order of the size symbols")
    return Plan(None if sizes is None else dict(sizes), caps,
                [plan_function(f, n, sizes, caps) for f, n in funcs], list(symbols))
