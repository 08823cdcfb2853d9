"""The optimization passes: IR in, IR out, and the numbers unchanged.

Each pass gets small before/after tests, on functions built with `ir.Builder` or on short `.cell`
sources, asserting on the printed IR or on its structure. Every pass must return its input object
when nothing applies (UFL's reuse_if_untouched), leave IR that `ir.verify` accepts, and keep the
NumPy reference's results: the last is checked for every pass at every stage of both pipelines,
for every file in `cells/` and the cells below.
"""

from __future__ import annotations

import importlib
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
from cellc.source import InternalError

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
    return cell.bind(**{s.arg: {"input_size": 3}.get(s.arg, 4) for s in cell.sizes
                         if not s.optional})


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
            (i.op == "add" and (0.0 in cs or any(d is not None and d.op == "neg" for d in inner)))
            or (i.op == "mul" and (0.0 in cs or 1.0 in cs))
            or (
                i.op == "sub"
                and cs[0] is not None
                and inner[1] is not None
                and inner[1].op == "sub"
                and consts.get(id(inner[1].args[0])) == cs[0]
            )
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


# simplify's rule table: one case per (op, rule), each the before side of the rule's docstring.
# The module (passes.simplify is the pass function).
SIMPLIFY = importlib.import_module("cellc.passes.simplify")
ONE_VEC = TensorType((Dim.of(1),), Batch.STEP)  # [B,1]


def zeros(b, t):
    return b.const(0.0, like=t)


RULE_CASES = [
    ("add", "fold", {}, lambda b: b.add(b.const(2.0), b.const(3.0))),
    ("sub", "fold", {}, lambda b: b.sub(b.const(2.0), b.const(3.0))),
    ("mul", "fold", {}, lambda b: b.mul(b.const(2.0), b.const(3.0))),
    ("div", "fold", {}, lambda b: b.div(b.const(6.0), b.const(4.0))),
    ("neg", "fold", {}, lambda b: b.neg(b.const(2.0))),
    ("sqrt", "fold", {}, lambda b: b.op("sqrt", b.const(2.0))),
    ("exp", "fold", {}, lambda b: b.op("exp", b.const(0.5))),
    ("log", "fold", {}, lambda b: b.op("log", b.const(2.0))),
    ("tanh", "fold", {}, lambda b: b.op("tanh", b.const(0.5))),
    ("mul", "linear_of_zero", {"x": VEC}, lambda b, x: b.mul(x, b.const(0.0))),
    ("matmul", "linear_of_zero", {"x": VEC}, lambda b, x: b.op("matmul", zeros(b, MAT), x)),
    ("matmul_t", "linear_of_zero", {"x": VEC}, lambda b, x: b.op("matmul_t", zeros(b, MAT), x)),
    ("outer", "linear_of_zero", {"x": VEC}, lambda b, x: b.op("outer", x, zeros(b, VEC))),
    ("sum", "linear_of_zero", {}, lambda b: b.op("sum", zeros(b, VEC))),
    ("mean", "linear_of_zero", {}, lambda b: b.op("mean", zeros(b, VEC))),
    ("broadcast", "linear_of_zero", {}, lambda b: b.op("broadcast", zeros(b, ONE_VEC), size=HD)),
    ("sum_batch", "linear_of_zero", {}, lambda b: b.op("sum_batch", zeros(b, VEC))),
    ("concat", "concat_of_zeros", {}, lambda b: b.op("concat", zeros(b, VEC), zeros(b, VEC))),
    ("div", "zero_over", {"x": VEC}, lambda b, x: b.div(b.const(0.0), x)),
    ("add", "add_neg", {"x": VEC, "y": VEC}, lambda b, x, y: b.add(b.neg(y), x)),
    ("add", "add_zero", {"x": VEC}, lambda b, x: b.add(x, zeros(b, VEC))),
    ("sub", "sub_zero", {"x": VEC}, lambda b, x: b.sub(x, b.const(0.0))),
    ("sub", "sub_self", {"x": VEC}, lambda b, x: b.sub(x, x)),
    ("sub", "c_minus_c_minus", {"x": VEC},
     lambda b, x: b.sub(b.const(2.0), b.sub(b.const(2.0), x))),
    ("mul", "mul_one", {"x": VEC}, lambda b, x: b.mul(b.const(1.0), x)),
    ("div", "div_one", {"x": VEC}, lambda b, x: b.div(x, b.const(1.0))),
    ("pow", "pow_one", {"x": VEC}, lambda b, x: b.op("pow", x, exponent=1.0)),
    ("neg", "neg_neg", {"x": VEC}, lambda b, x: b.neg(b.neg(x))),
    # issue 12's ops
    *[(op, "fold", {}, lambda b, op=op: b.op(op, b.const(0.5)))
      for op in ("elu", "silu", "gelu", "erf", "logsigmoid", "stop_gradient")],
    *[(op, "fold", {}, lambda b, op=op: b.op(op, b.const(0.5), b.const(2.0)))
      for op in ("power", "lt", "le", "gt", "ge", "eq", "ne")],
    ("where", "where_constant", {"x": VEC, "y": VEC},
     lambda b, x, y: b.op("where", b.const(1.0), x, y)),
]


def first_rule(f: ir.Func) -> str | None:
    """The name of the first rule that rewrites f's last instruction, given what precedes it."""
    facts = SIMPLIFY._Facts()
    for i in f.body[:-1]:
        facts.record(i)
    last = f.body[-1]
    cs = [facts.const(a) for a in last.args]
    return next((fn.__name__ for fn in SIMPLIFY.RULES.get(last.op, []) if fn(last, cs, facts)),
                None)


@pytest.mark.parametrize(
    "op,rule,params,body", RULE_CASES, ids=[f"{c[0]}-{c[1]}" for c in RULE_CASES]
)
def test_simplify_rule(op, rule, params, body):
    f = build(params, body)
    assert f.body[-1].op == op and f.body[-1].out is f.results[0]
    assert first_rule(f) == rule
    g = ir.verify(passes.simplify(f))
    assert g is not f and not any(i.op == op for i in passes.dce(g).body)
    assert_same_results(f, g, random_args(f, np.random.default_rng(12)))


def test_every_simplify_rule_has_a_case():
    # A rule nothing reaches is a dead arm; a case for a rule that is gone is a stale test.
    table = {(op, fn.__name__) for op, fns in SIMPLIFY.RULES.items() for fn in fns}
    assert table == {(c[0], c[1]) for c in RULE_CASES}


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
    # + bias_ih is input-only too, but elementwise: it stays in the step, where it joins the
    # step's own adds in one pass (hoisted, it would be a pass over T*B rows of its own).
    assert not [i for i in g.body if i.op == "add"]
    scan = scan_of(g)
    step = scan.attrs["step"]
    (p,) = [p for p, a in zip(step.params, scan.args) if a is mm.out]  # now a sequence input
    assert p.type == TensorType((HD * 4,), Batch.STEP)
    (add,) = [i for i in step.body if i.op == "add" and p in i.args]
    assert [a.name for a in add.args if a is not p] == ["bias_ih"]
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


OUTER = """cell O(input_size I, heads N, head_size D):
    input  x[I]
    state  S[N, D, D]
    param  W[N*D, I] ~ uniform(-1, 1)
    k = heads(W @ x, N) / sqrt(D)
    S' = S + outer(k, k)
    y = merge(S' @ k)
    output y
"""


def test_hoist_moves_work_on_constants_but_not_an_outer_product():
    f = sequence_program(load(OUTER))
    g = ir.verify(passes.hoist(f))
    assert "sqrt" in ops_of(g) and "sqrt" not in step_ops(g)  # sqrt(D): once, not per step
    assert "div" in ops_of(g)  # k reads only the input: computed over all T*B rows
    # k k^T reads only the input too, but hoisted it would fill a T*B*N*D*D buffer: it stays
    # in the step, where it fuses into S + k k^T.
    assert "mul" in step_ops(g) and "mul" not in ops_of(g)
    sizes = {"I": 3, "N": 2, "D": 4}
    assert_same_results(f, g, random_args(f, np.random.default_rng(8), sizes), sizes)


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
    # The three accumulators (dweight_hh, dbias_ih, dbias_hh) are gone; the moved products
    # and sums read what the loop already has: the stacked cotangent it returns anyway and
    # the saved h sequence it was given.
    assert len(scan.outs) == len(scan_of(f).outs) - 3
    (dw_hh,) = [i for i in outers if i.args[1].name == "h_seq"]
    assert dw_hh.args[1] in g.params and dw_hh.args[0] in scan.outs
    rng = np.random.default_rng(8)
    assert_same_results(f, g, random_args(f, rng))


def scan_func(step_body, n_ys: int, reverse: bool = False, builder: bool = False) -> ir.Func:
    """f(h0 [B,H], xs [T*B,H], w [H]) = scan with step(h, x, w) built by step_body(b, h, x, w);
    the scan is written out attribute by attribute, or made by `Builder.scan` when `builder`."""

    def body(b, h0, xs, w):
        sb = ir.Builder(prefix="s")
        h, x, wp = ir.Value("h", VEC), ir.Value("x", VEC), ir.Value("w", PARAM)
        results = step_body(sb, h, x, wp)
        step = ir.verify(ir.Func("step", (h, x, wp), tuple(sb.body), results))
        if builder:
            return tuple(b.scan(step, [h0], [xs], [w], n_ys=n_ys, reverse=reverse))
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
# ir.Scan: the typed view of a scan that the passes read and rebuild through


def carry_y_acc_step(b, h, x, w):
    """A step with one of each: carry h, stacked y_t = h' * w, accumulator sum_batch(x)."""
    nh = b.op("tanh", b.add(b.mul(h, w), x))
    return nh, b.mul(nh, w), b.op("sum_batch", x)


def test_scan_view_names_every_part_by_role():
    f = scan_func(carry_y_acc_step, n_ys=1)
    instr = scan_of(f)
    s = ir.Scan.of(instr)
    h0, xs, w = f.params
    assert (s.carry_init, s.xs, s.consts) == ((h0,), (xs,), (w,))
    assert (s.final_carry, s.ys, s.accs) == tuple((r,) for r in f.results)
    assert [v.name for v in (*s.carry_params, *s.x_params, *s.const_params)] == ["h", "x", "w"]
    nh, y, acc = s.step.results
    assert (s.next_carry, s.y_results, s.acc_results) == ((nh,), (y,), (acc,))
    assert [o.type.batch for o in s.ys + s.accs] == [Batch.SEQ, Batch.NONE]
    assert s.step is instr.attrs["step"] and s.reverse is False
    # The backends' older name gives the same split.
    assert ir.scan_parts(instr).split_args(instr.args) == (s.carry_init, s.xs, s.consts)


def test_scan_view_of_another_op_is_an_internal_error():
    f = trivial_func()
    with pytest.raises(InternalError, match="not a scan"):
        ir.Scan.of(f.body[0])


def test_scan_rebuild_keeps_the_text_and_follows_new_parts():
    f = scan_func(carry_y_acc_step, n_ys=1)
    s = ir.Scan.of(scan_of(f))
    assert ir.format_instr(s.rebuild(s.step)) == ir.format_instr(s.instr)
    # Keep only the accumulator: n_ys and out_types follow, the attributes keep their order.
    nh, _, acc = s.step.results
    new = s.rebuild(replace(s.step, results=(nh, acc)), ys=())
    assert "{n_carry=1, n_xs=1, n_ys=0, reverse=False}" in ir.format_instr(new)[0]
    assert list(new.attrs["out_types"]) == [VEC, acc.type] and new.outs == (*s.final_carry, *s.accs)
    g = ir.verify(replace(f, body=(new,), results=new.outs))
    want = run(f, random_args(f, np.random.default_rng(13)))
    got = run(g, random_args(f, np.random.default_rng(13)))
    np.testing.assert_array_equal(got[1], want[2])
    # New sequences and consts go after the old ones; the counts follow.
    xs2, w2 = ir.Value("xs2", SEQ), ir.Value("w2", PARAM)
    x2p, w2p = ir.Value("x2", VEC), ir.Value("w2p", PARAM)
    step2 = replace(s.step, params=(*s.carry_params, *s.x_params, x2p, *s.const_params, w2p))
    wider = ir.Scan.of(s.rebuild(step2, xs=(*s.xs, xs2), consts=(*s.consts, w2)))
    assert (wider.n_xs, wider.xs, wider.consts) == (2, (*s.xs, xs2), (*s.consts, w2))
    assert wider.x_params == (*s.x_params, x2p) and wider.const_params == (*s.const_params, w2p)


def test_builder_scan_writes_what_lowering_writes():
    # Builder.scan (used by grad) and a scan written out key by key, as lower.py does, print
    # the same, so the attribute order is one convention.
    for n_ys, reverse in ((1, False), (0, True)):
        step = (carry_y_acc_step if n_ys
                else (lambda b, h, x, w: (b.add(h, x), b.op("sum_batch", x))))
        by_hand = scan_func(step, n_ys=n_ys, reverse=reverse)
        assert text(scan_func(step, n_ys=n_ys, reverse=reverse, builder=True)) == text(by_hand)


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
    for _, f, args in pipeline_stages(cell, sizes, rng):
        g = PASSES[name](f)
        ir.verify(g)
        if g is not f:
            assert_same_results(f, g, args, sizes)


def test_every_pass_applies_somewhere_in_the_corpus():
    # Guards the test above: each pass changes at least one stage of some cell.
    applied = set()
    rng = np.random.default_rng(10)
    for _, cell in all_cells():
        for _, f, _ in pipeline_stages(cell, bound_sizes(cell), rng):
            applied |= {name for name, p in PASSES.items() if p(f) is not f}
    assert applied == set(PASSES)
