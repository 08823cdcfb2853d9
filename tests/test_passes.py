"""The optimization passes: IR in, IR out, and the numbers unchanged.

Each pass gets small before/after tests, on functions built with `ir.Builder` or on short `.cell`
sources, asserting on the printed IR or on its structure. Every pass must return its input object
when nothing applies (UFL's reuse_if_untouched), leave IR that `ir.verify` accepts, and keep the
NumPy reference's results: the last is checked for every pass at every stage of both pipelines,
for every file in `cells/` and the cells below.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import cellc
from cellc import grad, ir, passes, pipeline
from cellc.backends import numpy_ref
from cellc.backends.numpy_ref import Context
from cellc.lower import sequence_program
from cellc.shapes import Batch, Dim, TensorType

CELLS_DIR = Path(__file__).resolve().parent.parent / "cells"
CELL_FILES = sorted(CELLS_DIR.glob("*.cell"))

PASSES = {
    "simplify": passes.simplify,
    "cse": passes.cse,
    "dce": passes.dce,
    "fuse_matmul": passes.fuse_matmul,
    "hoist": passes.hoist,
    "sink": passes.sink,
}
SIZES = {"H": 4, "I": 3}
T, B = 3, 2
RESULT_TOL = 1e-12  # float64; passes only reassociate a few sums

HD = Dim.of("H")
VEC = TensorType((HD,), Batch.STEP)  # [B,H]
PARAM = TensorType((HD,), Batch.NONE)  # [H]
SEQ = TensorType((HD,), Batch.SEQ)  # [T*B,H]
MAT = TensorType((HD, HD), Batch.NONE)  # [H,H]

# An LSTM written gate by gate: eight separate matrix products, for fuse_matmul and hoist.
GATE_LSTM = """\
cell GateLSTM(input_size I, hidden_size H):
    input  x[I]
    state  h[H], c[H]
    param  W_xi[H, I], W_xf[H, I], W_xg[H, I], W_xo[H, I] ~ uniform(-0.5, 0.5)
    param  W_hi[H, H], W_hf[H, H], W_hg[H, H], W_ho[H, H] ~ uniform(-0.5, 0.5)
    bias   b_i[H], b_f[H], b_g[H], b_o[H] ~ uniform(-0.5, 0.5)
    i = sigmoid(W_xi @ x + W_hi @ h + b_i)
    f = sigmoid(W_xf @ x + W_hf @ h + b_f)
    g = tanh(W_xg @ x + W_hg @ h + b_g)
    o = sigmoid(W_xo @ x + W_ho @ h + b_o)
    c' = f * c + i * g
    h' = o * tanh(c')
    output h'
"""
# The output is not a state: dropping it leaves its work (and V) dead inside the loop.
READOUT = """\
cell Readout(input_size I, hidden_size H):
    input  x[I]
    state  h[H]
    param  W[H, I], U[H, H] ~ uniform(-0.5, 0.5)
    param  V[H] ~ uniform(-0.5, 0.5)
    h' = tanh(W @ x + U @ h)
    y = V * sigmoid(h')
    output y
"""
# Repeated subexpressions, written both ways round, and input-only work with constants.
REPEATS = """\
cell Repeats(input_size I, hidden_size H):
    input  x[I]
    state  h[H]
    param  W[H, I], U[H, H] ~ uniform(-0.5, 0.5)
    bias   b[H] ~ uniform(-0.5, 0.5)
    a = sigmoid(W @ x + b) * 2
    z = U @ h
    h' = tanh(a * z + z * a + 1 * sigmoid(W @ x + b) - (1 - (1 - h)))
    output h'
"""
EXTRA_CELLS = {"gate_lstm.cell": GATE_LSTM, "readout.cell": READOUT, "repeats.cell": REPEATS}


def load(text: str, name: str = "t.cell"):
    return cellc.load_source(cellc.Source(name, text))


CELL_LABELS = [p.name for p in CELL_FILES] + list(EXTRA_CELLS)


def load_named(label: str):
    if label in EXTRA_CELLS:
        return load(EXTRA_CELLS[label], label)
    return cellc.load_cell(CELLS_DIR / label)


def all_cells():
    return [(label, load_named(label)) for label in CELL_LABELS]


def bound_sizes(cell) -> dict[str, int]:
    return cell.bind(**{s.arg: {"input_size": 3}.get(s.arg, 4) for s in cell.sizes})


def build(params: dict[str, TensorType], body) -> ir.Func:
    """func f(params) { body(builder, *params) }, verified."""
    ps = tuple(ir.Value(n, t) for n, t in params.items())
    b = ir.Builder(names=params)
    results = body(b, *ps)
    results = results if isinstance(results, tuple) else (results,)
    return ir.verify(ir.Func("f", ps, tuple(b.body), results))


def text(f: ir.Func) -> str:
    return ir.print_func(f)


def ops_of(f: ir.Func) -> list[str]:
    return [i.op for i in f.body]


def scan_of(f: ir.Func) -> ir.Instr:
    (scan,) = [i for i in f.body if i.op == "scan"]
    return scan


def step_ops(f: ir.Func) -> list[str]:
    return ops_of(scan_of(f).attrs["step"])


def random_args(f: ir.Func, rng, sizes=SIZES) -> list[np.ndarray]:
    return [rng.normal(size=p.type.concrete(sizes, T, B)) for p in f.params]


def run(f: ir.Func, args, sizes=SIZES) -> list[np.ndarray]:
    return numpy_ref.run(f, args, Context(sizes, T, B, np.dtype(np.float64)))


def assert_same_results(before: ir.Func, after: ir.Func, args, sizes=SIZES):
    assert [p.type for p in after.params] == [p.type for p in before.params]
    want, got = run(before, args, sizes), run(after, args, sizes)
    assert len(got) == len(want)
    for k, (w, g) in enumerate(zip(want, got)):
        assert g.shape == w.shape, k
        np.testing.assert_allclose(g, w, rtol=RESULT_TOL, atol=RESULT_TOL, err_msg=f"result {k}")


# ---------------------------------------------------------------------------------------------
# simplify


def test_simplify_mul_by_one_and_add_zero():
    f = build({"x": VEC}, lambda b, x: b.add(b.mul(x, b.const(1.0)), b.const(0.0)))
    g = ir.verify(passes.simplify(f))
    assert g.results[0] is g.params[0]
    assert text(passes.dce(g)) == "func f(%x : [B,H]) {\n  return %x\n}"


def test_simplify_one_times_and_zero_plus():
    f = build({"x": VEC}, lambda b, x: b.add(b.const(0.0), b.mul(b.const(1.0), x)))
    assert passes.simplify(f).results[0] is f.params[0]


def test_simplify_zero_times():
    f = build({"x": VEC}, lambda b, x: b.mul(b.const(0.0), x))
    g = passes.dce(ir.verify(passes.simplify(f)))
    assert text(g) == "func f(%x : [B,H]) {\n  %t1 : [B,H] = const {value=0.0}\n  return %t1\n}"


def test_simplify_one_minus_one_minus():
    f = build({"x": VEC}, lambda b, x: b.sub(b.const(1.0), b.sub(b.const(1.0), x)))
    assert ir.verify(passes.simplify(f)).results[0] is f.params[0]


def test_simplify_one_minus_two_minus_is_kept():
    # 1 - (2 - x) is x - 1, not x.
    f = build({"x": VEC}, lambda b, x: b.sub(b.const(1.0), b.sub(b.const(2.0), x)))
    assert passes.simplify(f) is f


def test_simplify_add_neg_is_sub():
    f = build({"x": VEC, "y": VEC}, lambda b, x, y: b.add(x, b.neg(y)))
    g = passes.dce(ir.verify(passes.simplify(f)))
    assert (
        text(g) == "func f(%x : [B,H], %y : [B,H]) {\n  %t1 : [B,H] = sub %x, %y\n  return %t1\n}"
    )
    f = build({"x": VEC, "y": VEC}, lambda b, x, y: b.add(b.neg(y), x))  # -y + x
    assert "sub %x, %y" in text(passes.simplify(f))


def test_simplify_folds_constants():
    # (2 + 3) * 4 * x -> 20 * x
    f = build(
        {"x": VEC}, lambda b, x: b.mul(b.mul(b.add(b.const(2.0), b.const(3.0)), b.const(4.0)), x)
    )
    g = passes.dce(ir.verify(passes.simplify(f)))
    assert text(g) == (
        "func f(%x : [B,H]) {\n"
        "  %t4 : [] = const {value=20.0}\n"
        "  %t5 : [B,H] = mul %t4, %x\n"
        "  return %t5\n"
        "}"
    )


def test_simplify_does_not_fold_invalid_constants():
    # log(-1) and 1/0 stay as they are: folding them would make a NaN or raise.
    f = build({}, lambda b: (b.op("log", b.const(-1.0)), b.div(b.const(1.0), b.const(0.0))))
    assert passes.simplify(f) is f


def test_simplify_zero_cotangent_sum():
    # The sum of a zero cotangent (a [B,H] zero tensor) and a real one is the real one.
    f = build({"g": VEC}, lambda b, g: b.add(b.const(0.0, like=VEC), g))
    assert passes.simplify(f).results[0] is f.params[0]


def test_simplify_keeps_types():
    # zeros[B,H] + bias[H] is [B,H]; replacing it by the [H] bias would change its type.
    f = build({"b": PARAM}, lambda b, p: b.add(b.const(0.0, like=VEC), p))
    assert passes.simplify(f) is f
    f = build({"x": PARAM}, lambda b, x: b.mul(x, b.const(1.0, like=VEC)))
    assert passes.simplify(f) is f


def test_simplify_linear_op_of_zero():
    f = build({"x": VEC}, lambda b, x: b.op("outer", b.const(0.0, like=VEC), x))
    g = passes.dce(ir.verify(passes.simplify(f)))
    assert ops_of(g) == ["const"] and g.results[0].type == MAT


def test_simplify_zero_step_output_leaves_the_loop():
    # A per-step output that is always zero becomes one zero outside the loop.
    def body(b, h0, xs, w):
        sb = ir.Builder(prefix="s")
        h, x, wp = ir.Value("h", VEC), ir.Value("x", VEC), ir.Value("w", PARAM)
        nh = sb.add(sb.mul(h, wp), x)
        zero = sb.mul(sb.const(0.0), x)
        step = ir.Func("step", (h, x, wp), tuple(sb.body), (nh, zero))
        return tuple(
            b.emit(
                "scan",
                [h0, xs, w],
                {
                    "step": step,
                    "n_carry": 1,
                    "n_xs": 1,
                    "n_ys": 1,
                    "reverse": False,
                    "out_types": tuple(ir.scan_out_types(step, 1, 1)),
                },
            )
        )

    f = build({"h0": VEC, "xs": SEQ, "w": PARAM}, body)
    g = ir.verify(passes.simplify(f))
    zero = g.results[1]
    (zdef,) = [i for i in g.body if zero in i.outs]
    assert zdef.op == "const" and zdef.attrs["value"] == 0.0 and zero.type == SEQ
    assert_same_results(f, g, random_args(f, np.random.default_rng(0)))


def leftovers(f: ir.Func) -> list[ir.Instr]:
    """Instructions simplify should have rewritten: x+0, x*0, x*1, x + -y, 1 - (1 - x)."""
    consts = {id(i.out): i.attrs["value"] for i in ir.all_instrs(f) if i.op == "const"}
    defs = {id(o): i for i in ir.all_instrs(f) for o in i.outs}
    found = []
    for i in ir.all_instrs(f):
        cs = [consts.get(id(a)) for a in i.args]
        inner = [defs.get(id(a)) for a in i.args]
        if (
            i.op == "add"
            and (0.0 in cs or any(d is not None and d.op == "neg" for d in inner))
            or i.op == "mul"
            and (0.0 in cs or 1.0 in cs)
            or i.op == "sub"
            and cs[0] is not None
            and inner[1] is not None
            and inner[1].op == "sub"
            and consts.get(id(inner[1].args[0])) == cs[0]
        ):
            found.append(i)
    return found


def test_simplify_cleans_the_raw_backward():
    # d(1 - z) = -dz, so the VJP rules leave `add %g, %neg` in GRU's backward.
    cell = cellc.load_cell(CELLS_DIR / "gru.cell")
    raw = grad.vjp(pipeline.optimized_forward(cell)).bwd
    assert [i.op for i in leftovers(raw)] == ["add"]
    assert leftovers(ir.verify(passes.simplify(raw))) == []


def test_nothing_left_to_simplify_after_the_pipeline():
    for label, cell in all_cells():
        prog = pipeline.compile_program(cell)
        assert leftovers(prog.fwd) == [] and leftovers(prog.bwd) == [], label


# ---------------------------------------------------------------------------------------------
# cse


def test_cse_merges_repeated_and_commuted():
    def body(b, x, y):
        s1, s2 = b.op("sigmoid", x), b.op("sigmoid", x)
        return b.add(b.mul(s1, y), b.mul(y, s2))  # x*y and y*x meet

    f = build({"x": VEC, "y": VEC}, body)
    assert text(ir.verify(passes.cse(f))) == (
        "func f(%x : [B,H], %y : [B,H]) {\n"
        "  %t0 : [B,H] = sigmoid %x\n"
        "  %t2 : [B,H] = mul %t0, %y\n"
        "  %t4 : [B,H] = add %t2, %t2\n"
        "  return %t4\n"
        "}"
    )


def test_cse_keeps_different_operand_order_and_attrs():
    def body(b, x, y):
        return b.add(b.sub(x, y), b.sub(y, x)), b.add(
            b.op("pow", x, exponent=2.0), b.op("pow", x, exponent=3.0)
        )

    f = build({"x": VEC, "y": VEC}, body)
    assert passes.cse(f) is f


def test_cse_inside_the_loop():
    f = sequence_program(load(REPEATS))
    before = step_ops(f)
    g = ir.verify(passes.cse(passes.simplify(f)))
    after = step_ops(g)
    assert before.count("matmul") == 3 and after.count("matmul") == 2  # W @ x once, U @ h
    assert before.count("sigmoid") == 2 and after.count("sigmoid") == 1
    assert after.count("mul") == before.count("mul") - 2  # a*z = z*a; 1 * s is gone
    assert_same_results(f, g, random_args(f, np.random.default_rng(1)))


# ---------------------------------------------------------------------------------------------
# dce


def test_dce_removes_unused():
    def body(b, x):
        b.op("tanh", x)
        return b.op("sigmoid", x)

    f = build({"x": VEC}, body)
    assert text(ir.verify(passes.dce(f))) == (
        "func f(%x : [B,H]) {\n  %t1 : [B,H] = sigmoid %x\n  return %t1\n}"
    )


def test_dce_prunes_unused_scan_outputs_and_inputs():
    f = sequence_program(load(READOUT))
    f = replace(f, results=f.results[:1])  # only the final state: ys is dead
    g = ir.verify(passes.dce(f))
    scan = scan_of(g)
    assert len(scan.outs) == 1 and scan.attrs["n_ys"] == 0
    assert step_ops(g) == ["matmul", "matmul", "add", "tanh"]  # V * sigmoid(h') is gone
    assert [a.name for a in scan.args] == ["h0", "xs", "W", "U"]  # and so is V
    assert_same_results(f, g, random_args(f, np.random.default_rng(2)))


# ---------------------------------------------------------------------------------------------
# fuse_matmul


def test_fuse_matmul_fragment():
    W = TensorType((HD, Dim.of("I")), Batch.NONE)
    X = TensorType((Dim.of("I"),), Batch.STEP)
    f = build(
        {"Wa": W, "Wb": W, "x": X},
        lambda b, wa, wb, x: b.add(b.op("matmul", wa, x), b.op("matmul", wb, x)),
    )
    g = ir.verify(passes.fuse_matmul(f))
    assert text(g) == (
        "func f(%Wa : [H,I], %Wb : [H,I], %x : [B,I]) {\n"
        "  %mm0 : [2*H,I] = concat %Wa, %Wb\n"
        "  %mm1 : [B,2*H] = matmul %mm0, %x\n"
        "  %mm2 : [B,H], %mm3 : [B,H] = split %mm1 {sizes=(H, H)}\n"
        "  %t2 : [B,H] = add %mm2, %mm3\n"
        "  return %t2\n"
        "}"
    )
    assert_same_results(f, g, random_args(f, np.random.default_rng(3)))


def test_fuse_matmul_needs_a_shared_operand_and_distinct_weights():
    def body(b, w, x, y):
        return b.add(b.op("matmul", w, x), b.op("matmul", w, y)), b.op("matmul", w, x)

    f = build({"W": MAT, "x": VEC, "y": VEC}, body)
    assert passes.fuse_matmul(f) is f  # W@x twice is CSE's business; W@x and W@y share nothing


def test_fuse_matmul_gate_lstm_has_one_matmul_per_step():
    cell = load(GATE_LSTM)
    f = sequence_program(cell)
    assert step_ops(f).count("matmul") == 8
    fused = ir.verify(passes.fuse_matmul(f))
    assert step_ops(fused).count("matmul") == 2  # one over x, one over h
    assert_same_results(f, fused, random_args(f, np.random.default_rng(4)))
    opt = pipeline.optimized_forward(cell)
    assert step_ops(opt).count("matmul") == 1  # the x product left the loop
    outer = [i for i in opt.body if i.op == "matmul"]
    assert len(outer) == 1 and outer[0].out.type == TensorType((HD * 4,), Batch.SEQ)
    assert_same_results(f, opt, random_args(f, np.random.default_rng(5)))


# ---------------------------------------------------------------------------------------------
# hoist


def test_hoist_moves_the_input_projection_out_of_the_loop():
    f = sequence_program(cellc.load_cell(CELLS_DIR / "lstm.cell"))
    assert step_ops(f).count("matmul") == 2
    g = ir.verify(passes.hoist(f))
    assert step_ops(g).count("matmul") == 1
    (mm,) = [i for i in g.body if i.op == "matmul"]
    assert [a.name for a in mm.args] == ["weight_ih", "xs"]
    assert mm.out.type == TensorType((HD * 4,), Batch.SEQ)  # [T*B,4*H]: one GEMM over all rows
    (add,) = [i for i in g.body if i.op == "add"]  # + bias_ih is input-only too
    assert add.out.type == TensorType((HD * 4,), Batch.SEQ)
    scan = scan_of(g)
    step = scan.attrs["step"]
    (p,) = [p for p, a in zip(step.params, scan.args) if a is add.out]  # now a sequence input
    assert p.type == TensorType((HD * 4,), Batch.STEP)
    (x,) = [p for p, a in zip(step.params, scan.args) if a.name == "xs"]
    assert x not in {a for i in step.body for a in i.args}  # x_t itself is no longer read
    assert_same_results(f, g, random_args(f, np.random.default_rng(6)))


def test_hoist_copies_constants_out():
    f = sequence_program(load(REPEATS))
    g = ir.verify(passes.hoist(f))
    outer = ops_of(g)
    assert "sigmoid" in outer and "const" in outer  # sigmoid(W @ x + b) * 2
    assert "sigmoid" not in step_ops(g)
    assert_same_results(f, g, random_args(f, np.random.default_rng(7)))


def test_hoist_leaves_batch_reductions_in_the_loop():
    # A per-step sum over the batch, accumulated over time: summing it over all T*B rows once
    # and then again T times would be wrong.
    def body(b, h0, xs):
        sb = ir.Builder(prefix="s")
        h, x = ir.Value("h", VEC), ir.Value("x", VEC)
        nh = sb.add(h, x)
        acc = sb.op("sum_batch", x)
        step = ir.Func("step", (h, x), tuple(sb.body), (nh, acc))
        return tuple(
            b.emit(
                "scan",
                [h0, xs],
                {
                    "step": step,
                    "n_carry": 1,
                    "n_xs": 1,
                    "n_ys": 0,
                    "reverse": False,
                    "out_types": tuple(ir.scan_out_types(step, 1, 0)),
                },
            )
        )

    f = build({"h0": VEC, "xs": SEQ}, body)
    assert passes.hoist(f) is f
    _, acc = run(f, [np.ones((B, 4)), np.ones((T * B, 4))])
    np.testing.assert_array_equal(acc, np.full(4, T * B))


def test_hoist_nothing_to_move():
    f = sequence_program(
        load(
            "cell C(input_size I, hidden_size H):\n    input x[H]\n    state h[H]\n"
            "    param U[H, H] ~ uniform(-0.5, 0.5)\n    h' = tanh(U @ h + x)\n    output h'\n"
        )
    )
    assert passes.hoist(f) is f


# ---------------------------------------------------------------------------------------------
# sink


def lstm_backward_before_sink():
    cell = cellc.load_cell(CELLS_DIR / "lstm.cell")
    g = grad.vjp(pipeline.optimized_forward(cell))
    return ir.verify(passes.cse(passes.simplify(g.bwd)))


def test_sink_moves_weight_gradients_after_the_reverse_loop():
    f = lstm_backward_before_sink()
    assert scan_of(f).attrs["reverse"]
    assert {"outer", "sum_batch"} <= set(step_ops(f))
    g = ir.verify(passes.sink(f))
    assert not {"outer", "sum_batch"} & set(step_ops(g))
    scan = scan_of(g)
    after = g.body[g.body.index(scan) + 1 :]
    outers = [i for i in after if i.op == "outer"]
    assert len(outers) == 2  # dweight_ih (already outside) and dweight_hh (moved)
    assert all(a.type.batch is Batch.SEQ for i in outers for a in i.args)  # over all T*B rows
    assert not [i for i in g.body[: g.body.index(scan)] if i.op in ("outer", "sum_batch")]
    # The two accumulators are gone; the moved products read what the loop already has: the
    # stacked cotangent it returns anyway and the saved h sequence it was given.
    assert len(scan.outs) == len(scan_of(f).outs) - 2
    (dw_hh,) = [i for i in outers if i.args[1].name == "h_seq"]
    assert dw_hh.args[1] in g.params and dw_hh.args[0] in scan.outs
    rng = np.random.default_rng(8)
    assert_same_results(f, g, random_args(f, rng))


def scan_func(step_body, n_ys: int, reverse: bool = False) -> ir.Func:
    """f(h0 [B,H], xs [T*B,H], w [H]) = scan with step(h, x, w) built by step_body(b, h, x, w)."""

    def body(b, h0, xs, w):
        sb = ir.Builder(prefix="s")
        h, x, wp = ir.Value("h", VEC), ir.Value("x", VEC), ir.Value("w", PARAM)
        results = step_body(sb, h, x, wp)
        step = ir.verify(ir.Func("step", (h, x, wp), tuple(sb.body), results))
        return tuple(
            b.emit(
                "scan",
                [h0, xs, w],
                {
                    "step": step,
                    "n_carry": 1,
                    "n_xs": 1,
                    "n_ys": n_ys,
                    "reverse": reverse,
                    "out_types": tuple(ir.scan_out_types(step, 1, n_ys)),
                },
            )
        )

    return build({"h0": VEC, "xs": SEQ, "w": PARAM}, body)


def test_sink_keeps_what_loop_work_still_reads():
    # acc1 = sum_batch(x * x) moves out of the loop, and x * x with it: its only user moved, so
    # it runs once over all T*B rows instead of being stacked. acc2 = sum_batch(x * h) * w stays
    # (a product with w is not a sum over time), so x * h, which it reads, stays too.
    def step(b, h, x, w):
        nh = b.op("tanh", b.add(b.mul(h, w), x))
        xh = b.mul(x, h)
        acc1 = b.op("sum_batch", b.mul(x, x))
        acc2 = b.mul(b.op("sum_batch", xh), w)
        return nh, acc1, acc2

    f = scan_func(step, n_ys=0, reverse=True)
    g = ir.verify(passes.sink(f))
    assert step_ops(g) == ["mul", "add", "tanh", "mul", "sum_batch", "mul"]
    assert ops_of(g) == ["scan", "mul", "sum_batch"]
    assert_same_results(f, g, random_args(f, np.random.default_rng(11)))


def test_sink_nothing_to_move():
    f = pipeline.optimized_forward(cellc.load_cell(CELLS_DIR / "lstm.cell"))
    assert passes.sink(f) is f  # no batch reduction in the forward loop


def test_pipeline_backward_has_no_reduction_in_the_loop():
    for name, cell in all_cells():
        bwd = pipeline.compile_program(cell).bwd
        assert not {"outer", "sum_batch"} & set(step_ops(bwd)), name


# ---------------------------------------------------------------------------------------------
# Every pass: unchanged input object, verify, same numbers


def trivial_func() -> ir.Func:
    return build({"x": VEC, "w": PARAM}, lambda b, x, w: b.op("tanh", b.add(x, w)))


@pytest.mark.parametrize("name", sorted(PASSES))
def test_pass_returns_input_when_nothing_applies(name):
    f = trivial_func()
    assert PASSES[name](f) is f


@pytest.mark.parametrize("name", sorted(PASSES))
def test_optimized_forward_is_a_fixed_point(name):
    # After the forward pipeline there is nothing left for any pass to do.
    for label, cell in all_cells():
        f = pipeline.optimized_forward(cell)
        assert PASSES[name](f) is f, label


def pipeline_stages(cell, sizes, rng):
    """(label, func, args) for every stage of the forward and the backward pipeline."""
    f = sequence_program(cell)
    args = random_args(f, rng, sizes)
    yield "fwd:seq", f, args
    for p in pipeline.FORWARD_PASSES:
        f = p(f)
        yield f"fwd:{p.__name__}", f, args
    g = grad.vjp(f)
    out = run(g.fwd, args, sizes)
    seeds = [
        rng.normal(size=s.type.concrete(sizes, T, B)) for s in g.bwd.params[len(g.residuals) :]
    ]
    bwd_args = out[g.n_results :] + seeds
    b = g.bwd
    yield "bwd:raw", b, bwd_args
    for k, p in enumerate(pipeline.BACKWARD_PASSES):
        b = p(b)
        yield f"bwd:{k}:{p.__name__}", b, bwd_args


@pytest.mark.parametrize("name", sorted(PASSES))
@pytest.mark.parametrize("label", CELL_LABELS)
def test_pass_keeps_numpy_results_at_every_stage(label, name):
    cell = load_named(label)
    sizes = bound_sizes(cell)
    rng = np.random.default_rng(9)
    for stage, f, args in pipeline_stages(cell, sizes, rng):
        g = PASSES[name](f)
        ir.verify(g)
        if g is not f:
            assert_same_results(f, g, args, sizes)


def test_every_pass_applies_somewhere_in_the_corpus():
    # Guards the test above: each pass changes at least one stage of some cell.
    applied = set()
    rng = np.random.default_rng(10)
    for label, cell in all_cells():
        for stage, f, args in pipeline_stages(cell, bound_sizes(cell), rng):
            applied |= {name for name, p in PASSES.items() if p(f) is not f}
    assert applied == set(PASSES)
