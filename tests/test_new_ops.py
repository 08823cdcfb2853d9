"""The ops of issue 12: elu, silu, gelu, logsigmoid, stop_gradient, the comparisons lt le gt eq
ne, power (x ** y of two values) and where(c, a, b), through every table.

- The NumPy reference's activations against torch.nn.functional, on a wide grid.
- Cells that call each activation (`elu(z)`: UNARY_FUNCTIONS, no frontend change): the symbolic
  backward against central differences, the NumPy reference against a torch loop written with
  torch.nn.functional and autograd, and the torch and llvm targets against the reference,
  values and gradients, float64 and float32.
- The binary and ternary ops at the IR level: a step function built with ir.Builder (the .cell
  syntax for them is another helper's), with broadcasting of [H], [1] and scalar operands, the
  same four comparisons; plus the cases where a derivative must be 0 rather than nan.
- The llvm math: erf's accuracy against math.erf on a dense grid, expm1 and the activations
  against float64 NumPy, special values, and that the loops vectorize on AVX2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import types

import numpy as np
import pytest
from test_grad import FD_RTOL, central_differences, problem_from_text, rel_err

import cellc
from cellc import ir
from cellc.backends import numpy_ref
from cellc.native import NativeCell
from cellc.ops import OPS, UNARY_FUNCTIONS
from cellc.shapes import Batch, Dim, ShapeMismatch, TensorType

torch = pytest.importorskip("torch")
F = torch.nn.functional

T, B, I, H = 4, 3, 3, 5
ACTIVATIONS = ["elu", "silu", "gelu", "logsigmoid"]


# --- the NumPy reference against torch.nn.functional ----------------------------------------

TORCH_F = {"elu": F.elu, "silu": F.silu, "gelu": F.gelu, "logsigmoid": F.logsigmoid}


def grid(dtype) -> np.ndarray:
    tiny = np.geomspace(1e-30, 1.0, 2001)
    return np.concatenate([np.linspace(-40.0, 40.0, 40_001), tiny, -tiny,
                           [0.0, -0.0, 80.0, -80.0, 700.0, -700.0]]).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("op", ACTIVATIONS)
def test_numpy_activations_match_torch_functional(op, dtype):
    x = grid(dtype)
    with np.errstate(over="ignore"):
        got = np.asarray(numpy_ref.ARRAYS.functions[op](x), dtype)
    want = TORCH_F[op](torch.from_numpy(x)).numpy()
    if dtype == np.float64:
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-300)
    else:  # float32 rounding (gelu's 1 + erf cancels for x < 0 in either: an absolute error)
        np.testing.assert_allclose(got, want, rtol=4 * np.finfo(np.float32).eps, atol=1e-6)


def test_numpy_stop_gradient_is_the_identity():
    x = grid(np.float64)
    np.testing.assert_array_equal(numpy_ref.ARRAYS.functions["stop_gradient"](x), x)


# --- cells that call the activations ---------------------------------------------------------

CELL = """\
cell Act(input_size I, hidden_size H):
    input  x[I]
    state  h[H]
    param  W[H, I], U[H, H] ~ uniform(-1, 1)
    bias   b[H] ~ uniform(-1, 1)
    z = 2 * (W @ x + U @ h + b)
    h' = tanh({expr}) + 0.5 * h
    output h'
"""
# stop_gradient: the cotangent reaches z through the second factor only.
EXPRS = {**{op: f"{op}(z)" for op in ACTIVATIONS}, "stop_gradient": "stop_gradient(z) * z"}
TORCH_EXPRS = {**TORCH_F, "stop_gradient": lambda z: z.detach() * z}


def cell_text(op: str) -> str:
    return CELL.format(expr=EXPRS[op])


def test_the_activations_are_cell_functions():
    assert set(EXPRS) <= set(UNARY_FUNCTIONS) and set(EXPRS) <= set(OPS)


@pytest.mark.parametrize("op", ACTIVATIONS)
def test_cell_gradients_match_central_differences(op):
    p = problem_from_text(cell_text(op))
    num = central_differences(p.loss, p.inputs())
    for optimize in (True, False):
        sym = p.symbolic(optimize=optimize)
        for name in num:
            assert rel_err(num[name], sym[name]) < FD_RTOL, (name, optimize)


class Data:
    """Weights, inputs, initial state and loss weights for one cell, float64."""

    def __init__(self, cell, seed=0):
        self.cell = cell
        self.sizes = cell.bind(input_size=I, hidden_size=H)
        rng = np.random.default_rng(seed)
        self.params = numpy_ref.init_params(cell, self.sizes, rng)
        self.xs = rng.normal(size=(T, B, I))
        self.h0 = {s.name: rng.normal(size=(B, int(s.type.shape[0].evaluate(self.sizes))))
                   for s in cell.states}
        ys, _ = numpy_ref.forward(cell, self.sizes, self.xs, self.params, self.h0)
        self.d_ys = rng.normal(size=ys.shape)
        self.d_states = {k: rng.normal(size=v.shape) for k, v in self.h0.items()}

    def reference(self):
        """(ys, final states, grads) of the NumPy reference and its symbolic backward."""
        return numpy_ref.backward(self.cell, self.sizes, self.xs, self.params, self.h0,
                                  d_ys=self.d_ys, d_states=self.d_states)


def torch_loop(op: str, d: Data):
    """The cell as a torch loop over torch.nn.functional, differentiated by autograd."""
    t = {k: torch.from_numpy(v).requires_grad_() for k, v in
         {"xs": d.xs, "h": d.h0["h"], **d.params}.items()}
    h, ys = t["h"], []
    for x in t["xs"]:
        z = 2 * (x @ t["W"].T + h @ t["U"].T + t["b"])
        h = torch.tanh(TORCH_EXPRS[op](z)) + 0.5 * h
        ys.append(h)
    ys = torch.stack(ys)
    loss = (ys * torch.from_numpy(d.d_ys)).sum() + (h * torch.from_numpy(d.d_states["h"])).sum()
    loss.backward()
    return ys.detach().numpy(), h.detach().numpy(), {k: v.grad.numpy() for k, v in t.items()}


def load_text(text: str) -> cellc.CellIR:
    return cellc.load_source(cellc.Source("t.cell", text))


@pytest.mark.parametrize("op", [*ACTIVATIONS, "stop_gradient"])
def test_reference_matches_torch_functional_and_autograd(op):
    d = Data(load_text(cell_text(op)))
    ys, final, grads = d.reference()
    t_ys, t_h, t_grads = torch_loop(op, d)
    np.testing.assert_allclose(ys, t_ys, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(final["h"], t_h, rtol=1e-10, atol=1e-12)
    for k in t_grads:
        np.testing.assert_allclose(grads[k], t_grads[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_stop_gradient_stops_the_cotangent():
    # Guards the test above: without stop_gradient, the gradients differ.
    d = Data(load_text(cell_text("stop_gradient")))
    _, _, grads = d.reference()
    plain = Data(load_text(CELL.format(expr="z * z")))
    _, _, plain_grads = plain.reference()
    assert not np.allclose(grads["W"], plain_grads["W"], rtol=1e-3)


TOLS = {"float64": 1e-10, "float32": 2e-5}


def check_target(run, d: Data, dtype: str):
    """`run(d, dtype)` -> (ys, final h, grads) against the float64 reference."""
    ys, final, grads = d.reference()
    got_ys, got_h, got_grads = run(d, dtype)
    tol = TOLS[dtype]
    np.testing.assert_allclose(got_ys, ys, rtol=tol, atol=tol)
    np.testing.assert_allclose(got_h, final["h"], rtol=tol, atol=tol)
    for k, g in grads.items():
        np.testing.assert_allclose(got_grads[k], g, rtol=tol, atol=tol, err_msg=k)


def run_llvm(d: Data, dtype: str):
    nc = NativeCell(d.cell, dtype=dtype, input_size=I, hidden_size=H)
    cast = {k: v.astype(dtype) for k, v in d.params.items()}
    ys, final, tape = nc.forward(d.xs.astype(dtype), cast, {"h": d.h0["h"].astype(dtype)})
    grads = nc.backward(tape, d.d_ys.astype(dtype), {"h": d.d_states["h"].astype(dtype)})
    return ys, final["h"], grads


def generated_module(cell) -> types.ModuleType:
    """The torch target's module for a CellIR (as cellc.load makes it from a file)."""
    from cellc.backends.torch_src import emit_module
    from cellc.pipeline import compile_program

    text = emit_module(cell, compile_program(cell), "t.cell", "test")
    module = types.ModuleType("cellc_generated_test_new_ops")
    exec(compile(text, "<test_new_ops>", "exec"), module.__dict__)
    return module


def run_torch(d: Data, dtype: str):
    tdtype = getattr(torch, dtype)
    m = generated_module(d.cell).Layer(input_size=I, hidden_size=H, dtype=tdtype)
    with torch.no_grad():
        for k, v in d.params.items():
            getattr(m, f"{k}_l0").copy_(torch.from_numpy(v))
    x = torch.from_numpy(d.xs).to(tdtype).requires_grad_()
    h0 = torch.from_numpy(d.h0["h"]).to(tdtype)[None].requires_grad_()
    out, h_n = m(x, h0)
    loss = ((out * torch.from_numpy(d.d_ys).to(tdtype)).sum()
            + (h_n[0] * torch.from_numpy(d.d_states["h"]).to(tdtype)).sum())
    loss.backward()
    grads = {"xs": x.grad.numpy(), "h": h0.grad[0].numpy(),
             **{k: getattr(m, f"{k}_l0").grad.numpy() for k in d.params}}
    return out.detach().numpy(), h_n[0].detach().numpy(), grads


TARGETS = {"llvm": run_llvm, "torch": run_torch}


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLC_CACHE_DIR", str(tmp_path))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("op", [*ACTIVATIONS, "stop_gradient"])
def test_targets_match_the_reference(op, target, dtype, private_cache):
    check_target(TARGETS[target], Data(load_text(cell_text(op))), dtype)


# --- the binary and ternary ops at the IR level -----------------------------------------------

SKELETON = """\
# {tag}
cell Ops(input_size I, hidden_size H):
    input  x[I]
    state  h[H]
    param  W[H, I] ~ uniform(-1, 1)
    param  c[H] ~ uniform(0.5, 1.5)
    h' = tanh(W @ x + h) * c
    output h'
"""
VEC = TensorType((Dim.of("H"),), Batch.STEP)


def ops_step(h, x, W, c) -> tuple[list[ir.Instr], tuple]:
    """A step over every new binary and ternary op: comparisons of [H] with [H], with a [1]
    per-row value and with a number; power of two values ([H] ^ [H] parameter, [1] ^ [H]);
    where selecting between [H] values and a number, by a [1] and an [H] condition."""
    b = ir.Builder(names=["h", "x", "W", "c"])
    a = b.add(b.op("matmul", W, x), h)
    m = b.op("mean", a)  # [1] per row
    half = b.const(0.5)
    flags = [b.op("lt", a, h), b.op("le", a, half), b.op("gt", m, a), b.op("eq", a, a),
             b.op("ne", h, a), b.op("ge", half, a)]
    count = flags[0]
    for k, f in enumerate(flags[1:], start=2):
        count = b.add(count, b.mul(b.const(float(k)), f))
    base = b.add(b.op("sigmoid", a), half)  # in (0.5, 1.5)
    pw = b.add(b.op("power", base, c), b.op("power", b.op("exp", m), b.op("tanh", h)))
    sel = b.op("where", b.op("gt", a, b.const(0.0)), b.mul(a, c), b.op("sigmoid", h))
    sel = b.add(sel, b.op("where", b.op("lt", m, half), b.op("silu", h), half))
    out = b.op("tanh", b.add(b.add(pw, sel), b.mul(b.const(0.1), count)))
    return b.body, out


def ops_cell() -> cellc.CellIR:
    """The skeleton's CellIR with `ops_step` as its step; the cache key is the source text,
    so the text names the step it stands for."""
    base = load_text(SKELETON.format(tag="skeleton"))
    h, x, W, c = base.step.params
    body, out = ops_step(h, x, W, c)
    step = ir.verify(ir.Func("Ops", base.step.params, tuple(body), (out, out)))
    tag = hashlib.sha256(ir.print_func(step).encode()).hexdigest()
    cell = load_text(SKELETON.format(tag=tag))
    h, x, W, c = cell.step.params
    body, out = ops_step(h, x, W, c)
    step = ir.verify(ir.Func("Ops", cell.step.params, tuple(body), (out, out)))
    return dataclasses.replace(cell, step=step)


def test_ir_ops_gradients_match_central_differences():
    cell = ops_cell()
    d = Data(cell, seed=3)
    _, _, grads = d.reference()

    def loss(inputs):
        params = {k: inputs[k] for k in d.params}
        ys, final = numpy_ref.forward(cell, d.sizes, inputs["xs"], params, {"h": inputs["h"]})
        return float(np.sum(ys * d.d_ys) + np.sum(final["h"] * d.d_states["h"]))

    num = central_differences(loss, {"xs": d.xs, "h": d.h0["h"], **d.params})
    for name in num:
        assert rel_err(num[name], grads[name]) < FD_RTOL, name


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_ir_ops_on_the_targets_match_the_reference(target, dtype, private_cache):
    check_target(TARGETS[target], Data(ops_cell(), seed=3), dtype)


def test_ir_ops_on_torch_eager_match_the_reference():
    from cellc.backends import torch_eager

    cell = ops_cell()
    d = Data(cell, seed=3)
    sizes = d.sizes
    step = cell.step
    h = torch.from_numpy(d.h0["h"])
    args = [torch.from_numpy(v) for v in (d.xs[0], d.params["W"], d.params["c"])]
    ctx = torch_eager.Context(sizes, 1, B, torch.float64, torch.device("cpu"))
    got = torch_eager.run(step, [h, *args], ctx)[0].numpy()
    nctx = numpy_ref.Context(sizes, 1, B, np.dtype(np.float64))
    want = numpy_ref.run(step, [d.h0["h"], d.xs[0], d.params["W"], d.params["c"]], nctx)[0]
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)


def run_func(f: ir.Func, args: list[np.ndarray]) -> list[np.ndarray]:
    ctx = numpy_ref.Context({"H": args[0].shape[-1]}, 1, args[0].shape[0], np.dtype(np.float64))
    return numpy_ref.run(f, args, ctx)


def grad_func(build, n_args: int) -> ir.Func:
    """The backward (cotangents of the arguments, given one of the result) of `build`."""
    from cellc import grad

    xs = [ir.Value(f"a{k}", VEC) for k in range(n_args)]
    b = ir.Builder(names=[x.name for x in xs])
    y = build(b, *xs)
    g = grad.vjp(ir.verify(ir.Func("f", tuple(xs), tuple(b.body), (y,))))
    return g


def backward_values(build, *args: np.ndarray) -> list[np.ndarray]:
    """d(sum(y))/d(each argument) through the symbolic backward."""
    g = grad_func(build, len(args))
    fwd = run_func(g.fwd, list(args))
    return run_func(g.bwd, fwd[g.n_results:] + [np.ones_like(fwd[0])])


def test_values_of_comparisons_power_and_where():
    a = np.array([[-1.0, 0.0, 2.0, np.nan, 3.0, -0.0]])
    b = np.array([[0.0, 0.0, 1.0, np.nan, 3.0, 0.0]])
    ctx_ops = {"lt": np.less, "le": np.less_equal, "gt": np.greater, "eq": np.equal,
               "ne": np.not_equal}
    for op, fn in ctx_ops.items():
        x, y = ir.Value("x", VEC), ir.Value("y", VEC)
        bld = ir.Builder(names=["x", "y"])
        z = bld.op(op, x, y)
        (got,) = run_func(ir.Func("f", (x, y), tuple(bld.body), (z,)), [a, b])
        np.testing.assert_array_equal(got, fn(a, b).astype(np.float64), err_msg=op)
    x, y, c = (ir.Value(n, VEC) for n in "xyc")
    bld = ir.Builder(names=["x", "y", "c"])
    w = bld.op("where", c, x, y)
    p = bld.op("power", x, y)
    got_w, got_p = run_func(ir.Func("f", (x, y, c), tuple(bld.body), (w, p)), [a, b, b])
    np.testing.assert_array_equal(got_w, np.where(b != 0, a, b))  # NaN != 0: the first
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(got_p, np.power(a, b))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the unselected x^-1 and log(0)
def test_power_derivatives_are_zero_not_nan_at_zero():
    # d(x^y)/dx = y x^(y-1): 1 at x = 0, y = 1, 0 for y = 2 or 1.5 (y z / x would be nan), 0
    # for y = 0; d/dy = z log x: 0 at x = 0 for y >= 0 (not 0 * -inf).
    x = np.array([[0.0, 0.0, 0.0, 0.0, 2.0]])
    y = np.array([[1.0, 2.0, 1.5, 0.0, 3.0]])
    dx, dy = backward_values(lambda b, u, v: b.op("power", u, v), x, y)
    np.testing.assert_array_equal(dx, [[1.0, 0.0, 0.0, 0.0, 12.0]])
    np.testing.assert_allclose(dy, [[0.0, 0.0, 0.0, 0.0, 8.0 * math.log(2.0)]], rtol=1e-15)
    t = torch.tensor(x, requires_grad=True), torch.tensor(y, requires_grad=True)
    torch.pow(*t).sum().backward()
    np.testing.assert_allclose(dx, t[0].grad.numpy(), rtol=1e-15)
    np.testing.assert_allclose(dy, t[1].grad.numpy(), rtol=1e-15)


def test_where_keeps_inf_and_nan_of_the_other_branch_out():
    # where(c, a, log(b)) at b = 0: log's cotangent is 0 / 0 only if the select leaks; the
    # cotangent of a is the select of the seed, 0 where not chosen.
    c = np.array([[1.0, 0.0, 1.0]])
    a = np.array([[np.inf, 2.0, 3.0]])
    dc, da, db = backward_values(lambda b, u, v, w: b.op("where", u, v, w), c, a,
                                 np.array([[np.nan, 1.0, np.inf]]))
    np.testing.assert_array_equal(da, [[1.0, 0.0, 1.0]])
    np.testing.assert_array_equal(db, [[0.0, 1.0, 0.0]])
    np.testing.assert_array_equal(dc, [[0.0, 0.0, 0.0]])  # no cotangent: zeros


def test_comparisons_and_stop_gradient_pass_no_cotangent():
    x = np.array([[0.5, -1.0, 2.0]])
    for op in ("lt", "le", "gt", "eq", "ne"):
        dx, dy = backward_values(lambda b, u, v, op=op: b.op(op, u, v), x, x)
        assert not dx.any() and not dy.any(), op
    (dx,) = backward_values(lambda b, u: b.mul(b.op("stop_gradient", u), u), x)
    np.testing.assert_array_equal(dx, x)  # d(sg(x) x)/dx = sg(x)


def test_where_broadcasts_and_reports_both_shapes():
    hv = TensorType((Dim.of("H"),), Batch.STEP)
    one = TensorType((Dim.of(1),), Batch.STEP)
    scalar = TensorType((), Batch.NONE)
    assert OPS["where"].shape([one, hv, scalar], {}) == [hv]
    assert OPS["lt"].shape([scalar, hv], {}) == [hv]
    other = TensorType((Dim.of("K"),), Batch.STEP)
    with pytest.raises(ShapeMismatch, match=r"between \[B,H\] and \[B,K\] by \[B,1\]"):
        OPS["where"].shape([one, hv, other], {})
    with pytest.raises(ShapeMismatch):
        OPS["power"].shape([hv, other], {})


# --- simplify: folds, and stop_gradient kept -------------------------------------------------


def simplified(build, n_args=1):
    from cellc.passes.simplify import simplify

    xs = [ir.Value(f"a{k}", VEC) for k in range(n_args)]
    b = ir.Builder(names=[x.name for x in xs])
    y = build(b, *xs)
    return simplify(ir.verify(ir.Func("f", tuple(xs), tuple(b.body), (y,))))


def test_simplify_folds_constant_selects_and_comparisons():
    f = simplified(lambda b, u, v: b.op("where", b.op("lt", b.const(1.0), b.const(2.0)), u, v),
                   2)
    assert f.results[0] is f.params[0]
    f = simplified(lambda b, u, v: b.op("where", b.op("ge", b.const(1.0), b.const(2.0)), u, v),
                   2)
    assert f.results[0] is f.params[1]
    f = simplified(lambda b, u: b.op("where", u, b.const(0.0), b.const(0.0)))
    (last,) = [i for i in f.body if i.out is f.results[0]]
    assert (last.op, last.attrs["value"], last.attrs["type"]) == ("const", 0.0, VEC)
    f = simplified(lambda b, u: b.mul(u, b.op("power", b.const(2.0), b.const(3.0))))
    defs = {id(i.out): i for i in f.body}
    factor = defs[id(defs[id(f.results[0])].args[1])]
    assert (factor.op, factor.attrs.get("value")) == ("const", 8.0)


def test_simplify_keeps_stop_gradient_of_a_value():
    f = simplified(lambda b, u: b.op("stop_gradient", u))
    assert [i.op for i in f.body] == ["stop_gradient"]


# --- cellc grad prints the new ops ---------------------------------------------------------------


def test_grad_equations_print_the_new_ops():
    from cellc.pipeline import grad_equations

    text = grad_equations(load_text(cell_text("elu")))
    assert "where((elu(z) > 0), 1, elu(z) + 1)" in text, text
    text = grad_equations(load_text(cell_text("gelu")))
    assert "erf(" in text, text


def test_equations_print_power_where_and_comparisons():
    from cellc.equations import _Printer

    x, y, c = (ir.Value(n, VEC) for n in "xyc")
    p = _Printer({id(v): v.name for v in (x, y, c)}, {})
    texts = []
    for op, args in [("power", (x, y)), ("where", (c, x, y)), ("lt", (x, y)), ("ne", (x, y))]:
        b = ir.Builder(names=["x", "y", "c"])
        b.emit(op, args)
        texts.append(p.expr(b.body[0])[0])
    assert texts == ["x^y", "where(c, x, y)", "(x < y)", "(x != y)"]


# --- llvm math: erf, expm1 and the activations ----------------------------------------------

llvm_math_tests = pytest.importorskip("test_llvm_math")
lm = llvm_math_tests.lm


def erf_grid(dtype) -> np.ndarray:
    tiny = np.geomspace(1e-300 if dtype == np.float64 else 1e-37, 1.0, 20_001)
    return np.concatenate([np.linspace(-7.0, 7.0, 1_400_001), tiny, -tiny]).astype(dtype)


def measured_error(fn, ref, x, dtype) -> float:
    y = llvm_math_tests.compile_unary(fn, dtype)(x)
    with np.errstate(all="ignore"):
        want = ref(x.astype(np.float64))
    return float(llvm_math_tests.rel_error(y, want, dtype).max())


_math_erf = np.vectorize(math.erf, otypes=[np.float64])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_erf_accuracy_against_math_erf(dtype):
    """Measured: float64 at most 1.0 ulp (2.2e-16) over the grid; float32 (computed in double)
    correctly rounded there."""
    err = measured_error(lm.erf, _math_erf, erf_grid(dtype), dtype)
    assert err <= (1.5 if dtype == np.float64 else 0.5) * np.finfo(dtype).eps, err


ACT_REFS = {
    "expm1": np.expm1,
    "elu": lambda v: np.where(v > 0, v, np.expm1(np.minimum(v, 0))),
    "silu": lambda v: v / (1 + np.exp(-v)),
    "logsigmoid": lambda v: -np.logaddexp(0, -v),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("op", sorted(ACT_REFS))
def test_activation_accuracy(op, dtype):
    tiny = np.geomspace(1e-30, 1.0, 20_001)
    x = np.concatenate([np.linspace(-30.0, 30.0, 120_001), tiny, -tiny]).astype(dtype)
    err = measured_error(lm.UNARY[op], ACT_REFS[op], x, dtype)
    assert err <= 2.5 * np.finfo(dtype).eps, err


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_gelu_matches_torch(dtype):
    x = np.concatenate([np.linspace(-10.0, 10.0, 200_001), [0.0, -0.0, 1e30, -1e30]])
    x = x.astype(dtype)
    got = llvm_math_tests.compile_unary(lm.gelu, dtype)(x)
    # torch's float32 gelu is the oracle only in float64: its AVX-512 float32 kernel is off by
    # 1e-3 relative near x = -3.5 (gelu(-3.4976) = -0.00082100, torch gives -0.00082097).
    want = F.gelu(torch.from_numpy(x.astype(np.float64))).numpy().astype(dtype)
    if dtype == np.float64:
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-15)
    else:
        np.testing.assert_allclose(got, want, rtol=4 * np.finfo(np.float32).eps, atol=1e-6)


INF, NAN = math.inf, math.nan
SPECIALS = {
    "erf": [(NAN, NAN), (INF, 1.0), (-INF, -1.0), (0.0, 0.0), (-0.0, -0.0), (10.0, 1.0)],
    "expm1": [(NAN, NAN), (INF, INF), (-INF, -1.0), (0.0, 0.0), (-1000.0, -1.0)],
    "elu": [(NAN, NAN), (INF, INF), (-INF, -1.0), (0.0, 0.0), (1e30, 1e30)],
    "silu": [(NAN, NAN), (INF, INF), (0.0, 0.0), (-1000.0, -0.0)],
    "gelu": [(NAN, NAN), (INF, INF), (0.0, 0.0), (-40.0, -0.0)],
    "logsigmoid": [(NAN, NAN), (INF, -0.0), (-INF, -INF), (-1000.0, -1000.0)],  # -0: NumPy's
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("op", sorted(SPECIALS))
def test_special_values(op, dtype):
    x, want = (np.array(v, dtype) for v in zip(*SPECIALS[op]))
    got = llvm_math_tests.compile_unary(lm.UNARY[op], dtype)(x)
    np.testing.assert_array_equal(got, want)
    signed = ~np.isnan(want)
    np.testing.assert_array_equal(np.signbit(got[signed]), np.signbit(want[signed]))


@pytest.mark.parametrize("op", ["erf", "elu", "silu", "gelu", "logsigmoid"])
def test_activation_loops_vectorize_on_avx2(op):
    text = llvm_math_tests.optimized_unary_ir(op, np.float32, cpu="znver3")
    # erf and gelu work in double for float32: 4 lanes of a 256-bit register.
    assert ("<4 x double>" if op in ("erf", "gelu") else "<8 x float>") in text
    called = set(re.findall(r"call [^@]*@([\w.$]+)\(", text))
    assert called and all(name.startswith("llvm.") for name in called), called


def compile_binary(emit, dtype):
    """JIT `void f(T* x, T* y, T* z, i64 n)`: z[i] = emit(x[i], y[i]); returns a numpy call."""
    import ctypes

    from llvmlite import ir as llir

    from cellc.backends import llvm_jit
    from cellc.backends.llvm_loops import for_range

    ty = llvm_math_tests._TYPES[np.dtype(dtype)]
    mod = llir.Module(name="binary")
    ptr, i64 = llir.PointerType(), llir.IntType(64)
    fn = llir.Function(mod, llir.FunctionType(llir.VoidType(), [ptr, ptr, ptr, i64]), name="f")
    for a in fn.args[:3]:
        a.add_attribute("noalias")
    b = llir.IRBuilder(fn.append_basic_block("entry"))
    align = np.dtype(dtype).itemsize
    with for_range(b, 0, fn.args[3], head="loop", exit="done") as i:
        u, v = (b.load(b.gep(a, [i], source_etype=ty), typ=ty, align=align) for a in fn.args[:2])
        b.store(emit(b, u, v), b.gep(fn.args[2], [i], source_etype=ty), align=align)
    b.ret_void()
    tm = llvm_math_tests.target_machine()
    m = llvm_jit._llvm().parse_assembly(str(mod))
    m.triple, m.data_layout = tm.triple, str(tm.target_data)
    llvm_jit.optimize(m, tm)
    engine = llvm_jit._llvm().create_mcjit_compiler(m, tm)
    engine.finalize_object()
    cfn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 3, ctypes.c_int64)(
        engine.get_function_address("f"))

    def call(x, y):
        x, y = (np.ascontiguousarray(a, dtype) for a in np.broadcast_arrays(x, y))
        z = np.empty_like(x)
        cfn(x.ctypes.data, y.ctypes.data, z.ctypes.data, x.size)
        return z

    call.keep = (engine, tm)
    return call


POW_GRID = [-INF, -1e30, -3.0, -2.0, -1.5, -1.0, -0.5, -0.0, 0.0, 0.3, 0.5, 1.0, 1.5, 2.0,
            3.0, 7.0, -7.0, 1e30, INF, NAN]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_llvm_power_of_values_matches_numpy_special_values_included(dtype):
    x, y = (a.ravel().astype(dtype) for a in np.meshgrid(POW_GRID, POW_GRID))
    got = compile_binary(lm.pow_values, dtype)(x, y)
    with np.errstate(all="ignore"):
        want = np.power(x, y)
    err = llvm_math_tests.rel_error(got, want.astype(np.float64), dtype)
    tol = 1.5 * np.finfo(dtype).eps
    if dtype == np.float64:  # exp(y log|x|): about (1 + |y log x|) ulp, as lm.power
        with np.errstate(all="ignore"):
            tol = (2 + np.nan_to_num(np.abs(y * np.log(np.abs(x))))) * np.finfo(dtype).eps
    bad = np.flatnonzero((err > tol)
                         | (np.signbit(got) != np.signbit(want)) & ~np.isnan(want))
    assert not bad.size, [(x[k], y[k], got[k], want[k]) for k in bad[:5]]
