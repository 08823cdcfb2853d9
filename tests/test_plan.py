"""The lowering plan (cellc/lowering): printed for every cell, its decisions, its checker, and the
loop helper and import order of the LLVM renderer that consumes it."""

from __future__ import annotations

import ast
import ctypes
from pathlib import Path

import pytest

from cellc.cli import main
from cellc.frontend import load_file
from cellc.lowering import (
    INLINE_MAX_ELEMENTS,
    Arg,
    Caps,
    Kernel,
    Loc,
    Product,
    TimeLoop,
    Work,
    format_plan,
    plan,
    verify_plan,
)
from cellc.pipeline import compile_program
from cellc.source import InternalError

ROOT = Path(__file__).resolve().parent.parent
CELLS = sorted((ROOT / "cells").glob("*.cell"))


def lstm_plan(hidden: int = 16, caps: Caps | None = None):
    caps = caps or Caps()
    cell = load_file(str(ROOT / "cells" / "lstm.cell"))
    prog = compile_program(cell)
    sizes = cell.bind(input_size=8, hidden_size=hidden)
    return plan([(prog.fwd, "cellc_forward"), (prog.bwd, "cellc_backward")], sizes, caps)


def nodes(ops, kind):
    """The nodes of a kind, outside and inside loops, in order: (node, inside a loop)."""
    found = []
    for op in ops:
        if isinstance(op, TimeLoop):
            found += [(n, True) for n in op.body if isinstance(n, kind)]
        elif isinstance(op, kind):
            found.append((op, False))
    return found


@pytest.mark.parametrize("path", CELLS, ids=[p.stem for p in CELLS])
def test_emit_plan_prints_for_every_cell(path, capsys):
    args = {s.arg for s in load_file(str(path)).sizes if not s.optional}
    heads = {"heads", "head_size"} <= args  # a head-wise cell: its sizes are NH and D
    sizes = "input_size=8," + ("heads=2,head_size=8" if heads else "hidden_size=16")
    rc = main(["show", str(path), "--emit", "plan", "--sizes", sizes])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.startswith("plan for sizes I=8, " + ("NH=2, D=8" if heads else "H=16"))
    for name in ("func cellc_forward", "func cellc_backward", "loop t = 0..T-1",
                 "loop t = T-1..0", "product  "):
        assert name in out, name


def test_weights_are_packed_in_column_panels_for_the_inlined_kernel():
    # H=16: the recurrent product has N = 4H = 64 columns, K = 16. Panels of 24 columns: two
    # whole ones and a last one of 16, each K x width contiguous from column c0 * K on.
    fwd, _ = lstm_plan(caps=Caps(panel=24)).functions
    (scan,) = [op for op in fwd.ops if isinstance(op, TimeLoop)]
    ((rec, _),) = [(p, inside) for p, inside in nodes(fwd.ops, Product) if inside]
    assert rec.panel == 24
    widths = [(k.ins[0].cols, k.outs[0].row_stride) for k in scan.transposes]
    assert widths == [(24, 24), (24, 24), (16, 16)]
    assert scan.transposes[0].outs[0].ptr is rec.bm.ptr
    offsets = [k.outs[0].ptr.elements for k in scan.transposes[1:]]
    assert offsets == [24 * 16, 48 * 16]
    # The source: columns c0.. of the transposed weight, i.e. its rows c0.. (row stride 16).
    assert [k.ins[0].ptr.elements for k in scan.transposes[1:]] == [24 * 16, 48 * 16]
    assert "(packed in panels of 24 columns)" in format_plan(lstm_plan(caps=Caps(panel=24)))


def test_plan_text_is_deterministic():
    assert format_plan(lstm_plan()) == format_plan(lstm_plan())


def test_lstm_input_product_goes_to_the_library_and_the_recurrent_one_is_inlined():
    fwd, bwd = lstm_plan().functions
    products = nodes(fwd.ops, Product)
    hoisted = [p for p, inside in products if not inside]
    looped = [p for p, inside in products if inside]
    # The input projection over all T*B rows: one library GEMM before the loop.
    assert [(p.instr.op, p.out.rows, p.strategy) for p in hoisted] == [("matmul", "seq", "library")]
    # h @ weight_hh^T per step: a GEMV for one active row, else the inlined kernel on the weight
    # transposed once per call (a copy made before the loop).
    (rec,) = looped
    assert (rec.instr.op, rec.strategy, rec.gemv) == ("matmul", "choose", True)
    (scan,) = [op for op in fwd.ops if isinstance(op, TimeLoop)]
    (transpose,) = scan.transposes
    assert transpose.outs[0] is rec.bm
    assert transpose.ins[0].ptr is rec.a.ptr and transpose.ins[0].col_stride == rec.a.row_stride
    # The backward's dh = d @ weight_hh reads the weight as it is: inlined, no copy.
    back = [p for p, inside in nodes(bwd.ops, Product) if inside]
    assert [(p.instr.op, p.strategy) for p in back] == [("matmul_t", "inline")]
    assert back[0].bm is back[0].a
    text = format_plan(lstm_plan())
    assert "gemv at 1 row, inline gemm on transposed" in text
    assert "library gemm (T*B x 8 x 64)" in text


def test_large_weights_and_no_inline_kernel_use_the_library():
    big = 300  # 4H x H = 360000 elements, more than INLINE_MAX_ELEMENTS
    assert 4 * big * big > INLINE_MAX_ELEMENTS
    for p in (lstm_plan(hidden=big), lstm_plan(caps=Caps(inline_products=False))):
        for fp in p.functions:
            assert {n.strategy for n, _ in nodes(fp.ops, Product)} == {"library"}
            assert all(not op.transposes for op in fp.ops if isinstance(op, TimeLoop))
        verify_plan(p)


def test_workspace_is_the_sum_of_the_regions():
    fwd, _ = lstm_plan().functions
    # Forward at H=16: the input projection (64 per row of T*B; its bias is added in the
    # loop), the transposed 64x16 weight once, and per step the recurrent product, the sum of
    # both with the biases and c'.
    assert fwd.workspace == (64, 144, 1024)
    (scan,) = [op for op in fwd.ops if isinstance(op, TimeLoop)]
    assert scan.step_ws == (144, 0)
    assert "workspace 64*T*B + 144*B + 1024 elements in 5 regions" in format_plan(lstm_plan())


def test_every_zoo_plan_verifies():
    for path in CELLS:
        cell = load_file(str(path))
        prog = compile_program(cell)
        sizes = cell.bind(**{s.arg: 16 for s in cell.sizes if not s.optional})
        for caps in (Caps(), Caps(inline_products=False)):
            verify_plan(plan([(prog.fwd, "f"), (prog.bwd, "b")], sizes, caps))


def generic_plan(path: Path):
    cell = load_file(str(path))
    prog = compile_program(cell)
    return cell, plan([(prog.fwd, "f"), (prog.bwd, "b")], None, Caps(),
                      cell.symbols)


@pytest.mark.parametrize("path", CELLS, ids=[p.stem for p in CELLS])
def test_every_generic_plan_verifies_and_evaluates_to_the_specialized_one(path):
    """The generic plan (sizes None) keeps sizes symbolic and sends every product to the
    library; at concrete sizes its workspace is the specialized no-inline plan's."""
    cell, gp = generic_plan(path)
    verify_plan(gp)
    assert gp.sizes is None and not gp.caps.inline_products
    assert all(n.strategy == "library" for fp in gp.functions for n, _ in nodes(fp.ops, Product))
    required = [s.arg for s in cell.sizes if not s.optional]
    for values in ((3, 5, 2), (1, 1, 1)):  # the input size, then the others
        sizes = cell.bind(**dict(zip(required, (values[0], *values[1:], values[-1]))))
        prog = compile_program(cell)
        sp = plan([(prog.fwd, "f"), (prog.bwd, "b")], sizes, Caps(inline_products=False))
        for g, s in zip(gp.functions, sp.functions):
            ws = [c if isinstance(c, int) else int(c.evaluate(sizes)) for c in g.workspace]
            assert tuple(ws) == s.workspace, (path.stem, sizes)
            assert len(g.regions) == len(s.regions)


def test_generic_plan_text_names_the_sizes():
    _, gp = generic_plan(ROOT / "cells" / "lstm.cell")
    text = format_plan(gp)
    assert text.startswith("generic plan: sizes I, H given at run time; inline products in"
                           " loops: no (library only)")
    assert "func f: workspace (4*H)*T*B + (9*H)*B elements" in text
    assert "library gemm (T*B x I x 4*H)" in text and "ws0[t]+3*H[r*4*H + c]" in text


def test_a_symbolic_size_is_never_taken_for_one():
    """A dim that is 1 only at some sizes keeps its strides: no broadcast by stride 0."""
    from cellc.lowering import broadcast_to
    from cellc.shapes import Dim

    H = Dim.of("H")
    loc = Loc(Arg(0), H, 1, "batch", H)
    assert broadcast_to(loc, "batch", H) is loc
    assert broadcast_to(Loc(Arg(0), 1, 1, "batch", 1), "batch", H).col_stride == 0


def _broken(edit) -> str:
    p = lstm_plan()
    edit(p.functions[0])
    with pytest.raises(InternalError) as e:
        verify_plan(p)
    return str(e.value)


def test_verify_plan_catches_an_undefined_pointer():
    def drop_first_region(fp):
        fp.ops.remove(next(op for op in fp.ops if isinstance(op, Work)))

    assert "not defined before" in _broken(drop_first_region)


def test_verify_plan_catches_a_workspace_that_does_not_fit():
    def shrink(fp):
        a, b, c = fp.workspace
        fp.workspace = (a, b, c - 1)

    assert "is not the sum of its regions" in _broken(shrink)


def test_verify_plan_catches_a_write_to_an_argument():
    def clobber(fp):
        arg = next(op for op in fp.ops if isinstance(op, Arg))
        dst = Loc(arg, 16, 1, "batch", 16)
        fp.ops.append(Kernel("fill", [Loc(None, 0, 0, "batch", 16, const=0.0)], [dst], "batch", 16))

    assert "writes to an argument" in _broken(clobber)


def test_verify_plan_catches_an_inlined_product_outside_the_loop():
    def inline_hoisted(fp):
        hoisted = next(op for op in fp.ops if isinstance(op, Product))
        hoisted.strategy = "inline"

    assert "product outside a loop" in _broken(inline_hoisted)


def test_verify_plan_catches_a_wrong_step_workspace():
    def grow(fp):
        scan = next(op for op in fp.ops if isinstance(op, TimeLoop))
        scan.step_ws = (scan.step_ws[0] + 1, scan.step_ws[1])

    assert "step workspace" in _broken(grow)


def test_the_renderer_follows_the_plan():
    pytest.importorskip("llvmlite")
    from cellc.backends import llvm_ir

    names = {"gemm": "cellc_cblas_sgemm"}
    p = lstm_plan()
    inlined = str(llvm_ir.render(p, "float32", names, features="+avx,+avx2,+fma")[0])
    assert "cellc.gemv.m64.k16" in inlined and "cellc.gemm.k64.n16" in inlined
    # The same plan with every product sent to the library: no inlined kernel is emitted.
    for fp in p.functions:
        for node, _ in nodes(fp.ops, Product):
            node.strategy, node.bm = "library", None
    verify_plan(p)
    library = str(llvm_ir.render(p, "float32", names, features="+avx,+avx2,+fma")[0])
    assert "cellc.gemv" not in library and "cellc.gemm." not in library
    assert library.count("call void @\"cellc_cblas_sgemm\"") > inlined.count(
        "call void @\"cellc_cblas_sgemm\"")


# -- for_range ----------------------------------------------------------------------------------


def _jit_sum(lo: int | None, step: int):
    """JIT `i64 f(i64 lo, i64 hi)`: the sum of i over for_range(lo, hi, step) (lo=None: 0)."""
    from llvmlite import ir

    from cellc.backends import llvm_jit
    from cellc.backends.llvm_loops import for_range

    i64 = ir.IntType(64)
    mod = ir.Module(name="for_range_test")
    fn = ir.Function(mod, ir.FunctionType(i64, [i64, i64]), name="f")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    acc = b.alloca(i64)
    b.store(ir.Constant(i64, 0), acc)
    with for_range(b, 0 if lo is None else fn.args[0], fn.args[1], step=step) as i:
        b.store(b.add(b.load(acc, typ=i64), i), acc)
    b.ret(b.load(acc, typ=i64))
    llvm = llvm_jit._llvm()
    m = llvm.parse_assembly(str(mod))
    m.verify()
    engine = llvm.create_mcjit_compiler(m, llvm_jit.target_machine())
    engine.finalize_object()
    f = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)(
        engine.get_function_address("f"))
    return lambda a, z: f(a, z), engine


@pytest.mark.parametrize("lo", [None, 3])
@pytest.mark.parametrize("step", [1, 4])
def test_for_range_runs_range(lo, step):
    pytest.importorskip("llvmlite")
    f, _engine = _jit_sum(lo, step)
    for hi in (-2, 0, 1, 3, 4, 10, 37):
        start = 0 if lo is None else lo
        assert f(start, hi) == sum(range(start, hi, step)), (lo, hi, step)


# -- the renderer's modules import downward only ------------------------------------------------

ORDER = ["llvm_loops", "llvm_math", "llvm_gemm", "llvm_ir"]  # each may import those before it
CORE = {"ir", "ops", "shapes", "source", "lowering"}  # cellc modules below every backend


def _cellc_imports(module: str) -> set[str]:
    tree = ast.parse((ROOT / "cellc" / "backends" / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = (node.module or "").split(".")[0]
            if node.level == 1:  # from . import x / from .x import y
                found |= {base} if base else {a.name for a in node.names}
            else:
                found.add("cellc." + base)
    return found


@pytest.mark.parametrize("module", ORDER)
def test_renderer_modules_import_downward(module):
    allowed = set(ORDER[: ORDER.index(module)]) | {"cellc." + m for m in CORE}
    assert _cellc_imports(module) <= allowed, _cellc_imports(module) - allowed
