"""`format_plan`: a plan as text, one line per kernel, product or reduction (`cellc show FILE
--emit plan`). Names are positions and numbers, never object ids, so the text is the same on
every run."""

from __future__ import annotations

from ..ir import Func, scan_parts
from ..source import InternalError
from .nodes import (
    INLINE_MIN_STEPS,
    TEAM_GEMM_MIN,
    TEAM_GEMM_ROWS,
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
    Strided,
    TimeLoop,
    Work,
)
from .sizes import factor

_ROWS = {"seq": "T*B", "step": "n_t", "batch": "B"}


def _rows(kind) -> str:
    return _ROWS.get(kind, str(kind))


class _Names:
    """Readable, deterministic names for pointers: arguments and results by position,
    workspace regions by number, offsets and row blocks from their base."""

    def __init__(self, fp: FunctionPlan):
        self.params = [p.name for p in fp.func.params]

    def ptr(self, p: Ptr) -> str:
        if isinstance(p, Arg):
            return f"arg{p.index}({self.params[p.index]})"
        if isinstance(p, Result):
            return f"out{p.slot}"
        if isinstance(p, Work):
            return f"ws{p.index}"
        if isinstance(p, Offset):
            return f"{self.ptr(p.base)}+{factor(p.elements)}"
        if isinstance(p, RowBlock):
            return f"{self.ptr(p.base)}[t]"
        raise InternalError(f"plan: unknown pointer {type(p).__name__}")

    def loc(self, loc: Loc) -> str:
        if loc.ptr is None:
            return repr(loc.const)
        terms = [f"{v}*{factor(s)}" if s != 1 else v
                 for v, s in (("r", loc.row_stride), ("c", loc.col_stride)) if s != 0]
        return f"{self.ptr(loc.ptr)}[{' + '.join(terms) or '0'}]"

    def strided(self, s: Strided) -> str:
        """ptr[r*row_stride + i0*s0 + ...] over a nest's index i (axes at stride 0 left out)."""
        if s.ptr is None:
            return repr(s.const)
        axes = [("r", s.row_stride)] + [(f"i{k}", x) for k, x in enumerate(s.strides)]
        terms = [f"{v}*{factor(x)}" if x != 1 else v for v, x in axes if x != 0]
        return f"{self.ptr(s.ptr)}[{' + '.join(terms) or '0'}]"


def _shape(rows, cols: int) -> str:
    return f"[{_rows(rows)}, {cols}]"


def _coef(ws: tuple) -> str:
    """a*T*B + b*B + c; a symbolic coefficient in parentheses: (4*H)*T*B."""
    terms = [(f"({a})*{x}" if not isinstance(a, int) else f"{a}*{x}") if x else str(a)
             for a, x in zip(ws, ("T*B", "B", "")) if a != 0]
    return " + ".join(terms) or "0"


def _gemm_dims(p: Product) -> str:
    """m x k x n of a library product, as the renderer passes them to gemm."""
    a, b = p.a, p.b
    if p.instr.op == "matmul":  # (rows, K) @ W^T, W (M, K)
        m, k, n = _rows(b.rows), a.cols, a.rows
    elif p.instr.op == "matmul_t":  # (rows, M) @ W, W (M, K)
        m, k, n = _rows(b.rows), a.rows, a.cols
    else:  # outer: A^T B summed over rows
        m, k, n = a.cols, _rows(a.rows), b.cols
    return f"{m} x {k} x {n}"


def _node_lines(node, names: _Names, indent: str) -> list[str]:
    """One line per kernel, product or reduction; a loop is a header and its body."""
    if isinstance(node, Ptr):
        return []  # where a value lives is printed with the node that writes it
    if isinstance(node, Kernel):
        outs = ", ".join(names.loc(o) for o in node.outs)
        if node.what == "fused":
            ops = " ".join(i.op for i in node.instrs)
            stored = ", ".join(f"%{v.name} -> {names.loc(o)}"
                               for v, o in zip(node.outputs, node.outs))
            return [f"{indent}kernel   fused{_shape(node.rows, node.cols)}: {ops}; {stored}"]
        ins = " + ".join(names.loc(i) for i in node.ins)
        return [f"{indent}kernel   {node.what}{_shape(node.rows, node.cols)}: {ins} -> {outs}"]
    if isinstance(node, Nest):
        space = ", ".join(map(factor, node.shape))
        head = f"{indent}nest     {node.what}[{_rows(node.rows)}; {space}]: "
        if node.what == "fused":
            head += " ".join(i.op for i in node.instrs) + "; "
        ins = ", ".join(names.strided(x) for x in node.ins)
        outs = ", ".join(names.strided(x) for x in node.outs)
        how = f" {node.accumulate}=" if node.accumulate else " ->"
        return [f"{head}{ins}{how} {outs}"]
    if isinstance(node, Product):
        i = node.instr
        what = (f"%{i.out.name}{_shape(node.out.rows, node.out.cols)} = {i.op}"
                f"(%{i.args[0].name}, %{i.args[1].name}) -> {names.loc(node.out)}")
        if node.strategy == "library":
            how = f"library gemm ({_gemm_dims(node)})" + (
                f", row blocks on the team when threads > 1, T*B >= 64, m > {TEAM_GEMM_ROWS}"
                f" and m*k*n >= {TEAM_GEMM_MIN}"
                if node.team else "")
        elif node.strategy == "inline":
            how = f"inline gemm (K={node.bm.rows}, N={node.bm.cols}) on {names.loc(node.bm)}"
        else:
            how = ("gemv at 1 row, " if node.gemv else "") + (
                f"inline gemm on {'transposed ' if i.op == 'matmul' else ''}"
                f"{names.loc(node.bm)}"
                + (f" (packed in panels of {node.panel} columns)" if node.panel else "")
                + f" when T >= {INLINE_MIN_STEPS} and B > 1, else library gemm")
        return [f"{indent}product  {what}    {how}"]
    if isinstance(node, RowSum):
        i = node.instr
        line = (f"{indent}reduce   %{i.out.name} = {i.op} over {node.src.cols} features of "
                f"{names.loc(node.src)} -> {names.loc(node.out)}")
        return [line]
    if isinstance(node, TimeLoop):
        return _scan_lines(node, names, indent)
    raise InternalError(f"plan: unknown node {type(node).__name__}")


def _scan_lines(s: TimeLoop, names: _Names, indent: str) -> list[str]:
    step: Func = s.instr.attrs["step"]
    parts = scan_parts(s.instr)
    carry, xs, consts = parts.split_args(step.params)
    _, ys, accs = parts.split_outs(s.instr.outs)
    order = "t = T-1..0" if s.reverse else "t = 0..T-1"
    lines = []
    for node in [*s.init, *s.prep]:
        lines += _node_lines(node, names, indent)
    lines += [f"{indent}if a sequence ends early: zero {names.loc(k.outs[0])}" for k in s.ys_fill]
    lines += [f"{indent}if T >= {INLINE_MIN_STEPS} and B > 1: "
              + ("transpose" if k.ins[0].row_stride == 1 and k.ins[0].col_stride != 1 else "pack")
              + f" {names.loc(k.ins[0])} -> {names.loc(k.outs[0])}" for k in s.transposes]

    def vals(vs) -> str:
        return " ".join(f"%{v.name}" for v in vs) or "-"

    lines.append(f"{indent}loop {order} over rows 0..n_t: carry {vals(carry)}; reads xs "
                 f"{vals(xs)}, consts {vals(consts)}; writes ys {vals(ys)}, accs {vals(accs)};"
                 f" step workspace {_coef((0, *s.step_ws))}")
    threads = ("blocks of batch rows, one per thread of the team" if s.one_thread is None
               else f"one ({s.one_thread})")
    if s.columns:
        when = (f" (B = 1, or T >= {INLINE_MIN_STEPS})" if s.all_gemv
                else f" (from 2 rows, T >= {INLINE_MIN_STEPS})")
        threads += (f"; a batch of one block{when}: each step's columns across the team, "
                    f"{len(s.barriers)} barriers per step")
    lines.append(f"{indent}  threads: {threads}")
    for node in s.body:
        lines += _node_lines(node, names, indent + "  ")
    return lines


def format_plan(p: Plan) -> str:
    """The plan as text: per function its workspace, then one line per kernel or product."""
    inline = "yes" if p.caps.inline_products else "no (library only)"
    if p.sizes is None:
        head = f"generic plan: sizes {', '.join(p.symbols)} given at run time"
    else:
        head = "plan for sizes " + ", ".join(f"{k}={v}" for k, v in p.sizes.items())
    out = [f"{head}; inline products in loops: {inline}"]
    for fp in p.functions:
        names = _Names(fp)
        out.append("")
        out.append(f"func {fp.name}: workspace {_coef(fp.workspace)} elements in "
                   f"{len(fp.regions)} regions; {len(fp.func.params)} args, {fp.n_buffers} "
                   "result buffers")
        for op in fp.ops:
            out += _node_lines(op, names, "  ")
    return "\n".join(out)
