"""The language of issue 12, front end and symbolic backward: comparisons and the new functions,
user functions (`def`), float hyper-parameters, initial state values, frozen constants,
initializer expressions (`arange`), and a backward that spends nothing on what is frozen.

Values are checked on the NumPy reference (`cellc.reference`), gradients against central
differences in float64 (tests/test_grad.py's `Problem`), errors by their text and location.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_grad import Problem, central_differences, rel_err

import cellc
from cellc import ast_nodes as A
from cellc import pipeline
from cellc.backends.numpy_ref import backward, forward, init_params  # cellc.reference
from cellc.ir import all_instrs, print_func
from cellc.lower import Init
from cellc.shapes import Batch, Dim, TensorType
from cellc.source import CellShapeError, CellSyntaxError, CellValueError, Source
from cellc.syntax import parse

from conftest import compile_text, error_text

CELLS_DIR = Path(__file__).resolve().parent.parent / "cells"
HEADER = "cell C(input_size I, hidden_size H{extra}):\n    input x[I]\n    state h[H]\n"
PARAMS = "    param W[H, I] ~ uniform(-0.5, 0.5)\n"


def cell_text(*body: str, extra: str = "", params: str = PARAMS) -> str:
    """A small cell: the header (with `extra` header arguments), x[I], h[H], W, then body."""
    lines = "".join(f"    {line}\n" for line in body)
    return HEADER.format(extra=extra) + params + lines


def one_step(text: str, seed: int = 0):
    """(cell, sizes, params, x (1, B, I), h0 (B, H), h1) for one step of the reference."""
    cell = compile_text(text)
    sizes = cell.bind(input_size=3, hidden_size=4)
    rng = np.random.default_rng(seed)
    params = init_params(cell, sizes, rng)
    xs = rng.normal(size=(1, 2, 3))
    h0 = rng.normal(size=(2, 4))
    _, final = forward(cell, sizes, xs, params, {"h": h0})
    return cell, sizes, params, xs, h0, final["h"]


def check_gradients(text: str, frozen: tuple[str, ...] = ()):
    """Symbolic gradients match central differences for all but `frozen`, which get zeros."""
    p = Problem(compile_text(text))
    sym = p.symbolic()
    num = central_differences(p.loss, p.inputs())
    for name, want in num.items():
        if name in frozen:  # a zero, or left out (the reference drops frozen slots)
            assert name not in sym or not np.any(sym[name]), name
            assert np.abs(want).max() > 0, f"{name}: a frozen value that changes nothing"
        else:
            assert rel_err(want, sym[name]) < 1e-6, name


# ---------------------------------------------------------------------------------------------
# 1. Comparisons, where, clamp, var, value exponents, stop_gradient and the new activations


def ops_of(text: str) -> list[str]:
    return [i.op for i in compile_text(text).step.body if i.op != "const"]


@pytest.mark.parametrize("sym,op", [("<", "lt"), ("<=", "le"), (">", "gt"), (">=", "ge"),
                                    ("==", "eq"), ("!=", "ne")])
def test_each_comparison_lowers_to_its_op(sym, op):
    assert ops_of(cell_text(f"h' = (W @ x {sym} h) * h", "output h'")) == ["matmul", op, "mul"]


def test_comparisons_bind_looser_than_sums():
    (st,) = [s for s in parse(Source("x.cell", cell_text("h' = h + 1 < h * 2 - 1"))).body
             if isinstance(s, A.Assign)]
    assert A.format_expr(st.value) == "((h + 1) < ((h * 2) - 1))"


def test_chained_comparisons_are_a_located_syntax_error():
    text = cell_text("h' = x < h <= h", "output h'")
    assert error_text(text, kind=CellSyntaxError) == (
        "x.cell:5:16: error: comparisons do not chain: '<=' follows a comparison; compare two"
        " values at a time, as in (a < b) * (b < c)\n"
        "        h' = x < h <= h\n"
        "                   ^^"
    )
    compile_text(cell_text("h' = ((W @ x < h) < h) * h", "output h'"))  # parenthesized: fine


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _gelu(x):
    from math import erf

    return x * 0.5 * (1 + np.vectorize(erf)(x / np.sqrt(2)))


# (expression of z = W @ x and h, the same in NumPy)
FUNCTIONS = [
    ("where(z > h, z, h * 2)", lambda z, h: np.where(z > h, z, 2 * h)),
    ("where(z, h, 1)", lambda z, h: np.where(z != 0, h, 1.0)),
    ("clamp(z, -0.1, 0.2) + h", lambda z, h: np.clip(z, -0.1, 0.2) + h),
    ("var(z) + h", lambda z, h: z.var(axis=-1, keepdims=True) + h),
    ("abs(z) ^ h", lambda z, h: np.abs(z) ** h),
    ("exp(z) ** -h", lambda z, h: np.exp(z) ** -h),
    ("2 ^ h", lambda z, h: 2.0 ** h),
    ("(z < h) + 2 * (z <= h) + 4 * (z > h) + 8 * (z >= h) + 16 * (z == z) + 32 * (z != h)",
     lambda z, h: (z < h) + 2 * (z <= h) + 4 * (z > h) + 8 * (z >= h) + 16 + 32 * (z != h)),
    ("stop_gradient(z) + h", lambda z, h: z + h),
    ("elu(z) + silu(h)", lambda z, h: np.where(z > 0, z, np.expm1(z)) + h * _sigmoid(h)),
    ("gelu(z) + logsigmoid(h)", lambda z, h: _gelu(z) + np.log(_sigmoid(h))),
]


@pytest.mark.parametrize("expr,numpy", FUNCTIONS, ids=[f[0] for f in FUNCTIONS])
def test_functions_compute_what_numpy_does(expr, numpy):
    _, _, params, xs, h0, h1 = one_step(cell_text("z = W @ x", f"h' = {expr}", "output h'"))
    z = xs[0] @ params["W"].T
    np.testing.assert_allclose(h1, numpy(z, h0), rtol=1e-12, atol=1e-12)


def test_clamp_and_var_are_written_out_in_existing_ops():
    assert ops_of(cell_text("h' = clamp(h, -1, 1) + var(h)", "output h'")) == [
        "max", "min", "mean", "sub", "pow", "mean", "add"]


def test_value_and_number_exponents():
    c = compile_text(cell_text("h' = h ^ (W @ x) + h ** -2 + h ^ 0.5", "output h'"))
    pows = [(i.op, dict(i.attrs).get("exponent")) for i in c.step.body
            if i.op in ("pow", "power")]
    assert pows == [("power", None), ("pow", -2.0), ("pow", 0.5)]


GRADIENT_CELL = cell_text(
    "z = W @ x",
    "a = where(z > 0, z * h, clamp(h, -0.5, 0.5)) + var(z + h)",
    "b = sigmoid(h) ^ exp(z) + elu(z) + silu(h) + gelu(z) + logsigmoid(h)",
    "h' = tanh(a + b)",  # stop_gradient is no derivative: tested on its own below
    "output h'",
)


def test_new_functions_gradients_match_central_differences():
    check_gradients(GRADIENT_CELL)


def test_stop_gradient_blocks_the_gradient():
    """Only what flows through stop_gradient is cut: W's gradient goes, h's other path stays."""
    p = Problem(compile_text(cell_text("h' = stop_gradient(W @ x) * h + h", "output h'")))
    sym, num = p.symbolic(), central_differences(p.loss, p.inputs())
    assert not np.any(sym["W"]) and not np.any(sym["xs"])
    assert np.abs(num["W"]).max() > 0
    assert rel_err(num["h"], sym["h"]) < 1e-6


@pytest.mark.parametrize("body,message", [
    ("h' = where(h, h)", "x.cell:5:10: error: where takes 3 arguments, not 2"),
    ("h' = clamp(h, 1)", "x.cell:5:10: error: clamp takes 3 arguments, not 2"),
    ("h' = var(h, h)", "x.cell:5:10: error: var takes 1 argument, not 2"),
    ("h' = h ^ (W @ x)[", "x.cell:5:21: error: unexpected '['"),
    ("h' = where(W @ x > 0, h, x)", "x.cell:5:10: error: cannot select between [B,H] and [B,I]"),
])
def test_function_mistakes_are_located(body, message):
    assert error_text(cell_text(body, "output h'")).startswith(message)


# ---------------------------------------------------------------------------------------------
# 2. User functions


LN = "def ln(z) = (z - mean(z)) / sqrt(var(z) + 1e-5)"


def test_a_def_is_expanded_inline():
    with_def = compile_text(cell_text(LN, "h' = ln(W @ x) + h", "output h'"))
    written = compile_text(cell_text(
        "h' = (W @ x - mean(W @ x)) / sqrt(var(W @ x) + 1e-5) + h", "output h'"))
    assert [i.op for i in with_def.step.body] == [
        "matmul", "mean", "sub", "mean", "sub", "pow", "mean", "const", "add", "sqrt", "div", "add"]
    # The written-out text computes W @ x three times; the def's argument is computed once.
    assert ([i.op for i in written.step.body if i.op != "matmul"]
            == [i.op for i in with_def.step.body if i.op != "matmul"])
    _, _, params, xs, h0, h1 = one_step(cell_text(LN, "h' = ln(W @ x) + h", "output h'"))
    z = xs[0] @ params["W"].T
    want = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-5) + h0
    np.testing.assert_allclose(h1, want, rtol=1e-12)


def test_defs_take_several_parameters_and_call_earlier_defs():
    text = cell_text(
        "param g[H] ~ ones()",
        LN,
        "def affine(v, a, b) = a * v + b",
        "def block(v, a) = affine(ln(v), a, 0.5) * H",
        "h' = block(W @ x, g) + h",
        "output h'",
    )
    cell, _, params, xs, h0, h1 = one_step(text)
    z = xs[0] @ params["W"].T
    n = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(h1, (params["g"] * n + 0.5) * 4 + h0, rtol=1e-12)
    # Instructions are attributed to the statement that calls the def (the IR prints its line).
    assert {i.span.line for i in cell.step.body} == {9}
    check_gradients(text)


def test_a_def_may_use_sizes_hyper_parameters_numbers_and_its_parameters():
    text = cell_text("def f(v) = v * scale / H + 1", "h' = f(W @ x) + h", "output h'",
                     extra=", scale=2.0")
    _, _, params, xs, h0, h1 = one_step(text)
    np.testing.assert_allclose(h1, xs[0] @ params["W"].T * 2 / 4 + 1 + h0, rtol=1e-12)


def test_layernorm_lstm_uses_a_def_and_lowers_as_written_out():
    path = CELLS_DIR / "layernorm_lstm.cell"
    text = path.read_text()
    assert "    def ln(" in text
    written = text
    for v, a, b in (("dx", "ln_x_gain", "ln_x_bias"), ("dh", "ln_h_gain", "ln_h_bias"),
                    ("dc", "ln_c_gain", "ln_c_bias")):
        written = written.replace(f"ln({v}, {a}, {b})",
                                  f"{a} * {v} / sqrt(mean({v}^2) + 1e-5) + {b}")
    written = written.replace(next(line for line in text.splitlines() if "def ln(" in line),
                              "    # (no def)")
    assert "ln(" not in written.split("cell ", 1)[1]
    name = str(path.relative_to(CELLS_DIR.parent))
    assert (print_func(cellc.load_source(Source(name, text)).step)
            == print_func(cellc.load_source(Source(name, written)).step))


@pytest.mark.parametrize("body,error", [
    # the body reads the cell's values
    (("def f(v) = v * h", "h' = f(h)"),
     "x.cell:5:20: error: the body of 'f' cannot use the cell's state 'h': a def sees only its"
     " parameters, the sizes and hyper-parameters; pass it as an argument"),
    (("def f(v) = v * W", "h' = f(h)"), "x.cell:5:20: error: the body of 'f' cannot use the"
     " cell's param 'W'"),
    (("z = h", "def f(v) = v * z", "h' = f(h)"),
     "x.cell:6:20: error: the body of 'f' cannot use the cell's name 'z'"),
    (("def f(v) = v * u", "h' = f(h)"), "x.cell:5:20: error: unknown name 'u' in the body of"
     " 'f'\n        def f(v) = v * u\n                       ^\nnote: 'f' has parameters v"),
    (("def f(value) = valeu", "h' = f(h)"), "x.cell:5:20: error: unknown name 'valeu' in the"
     " body of 'f'\n        def f(value) = valeu\n                       ^^^^^\n"
     "note: did you mean 'value'?"),
    # argument counts, names
    (("def f(a, b) = a * b", "h' = f(h)"),
     "x.cell:6:10: error: f takes 2 arguments, not 1\n        h' = f(h)\n             ^^^^\n"
     "note: 'f' is defined at x.cell:5:5"),
    (("def tanh(v) = v", "h' = tanh(h)"), "x.cell:5:9: error: def 'tanh' would hide the"
     " built-in function 'tanh'; rename it"),
    (("def where(v) = v", "h' = h"), "x.cell:5:9: error: def 'where' would hide the built-in"),
    (("def f(v) = v", "def f(v) = v * 2", "h' = f(h)"),
     "x.cell:6:9: error: function 'f' is already defined\n        def f(v) = v * 2\n"
     "            ^\nnote: previous definition at x.cell:5:9"),
    (("def h(v) = v", "h' = h"), "x.cell:5:9: error: 'h' is already defined"),
    (("def f(v) = v", "f = h", "h' = f"), "x.cell:6:5: error: 'f' is already defined\n"
     "        f = h\n        ^\nnote: previous definition of function 'f' at x.cell:5:9"),
    (("def f(v) = v", "h' = f * h"), "x.cell:6:10: error: 'f' is a function; call it, as in"
     " f(...)"),
    (("def f(v) = v", "def g(v) = f + v", "h' = g(h)"), "x.cell:6:16: error: 'f' is a"
     " function; call it"),
    (("def f(v, v) = v", "h' = f(h, h)"), "x.cell:5:14: error: parameter 'v' of 'f' appears"
     " twice"),
    (("def f(H) = H", "h' = f(h)"), "x.cell:5:11: error: parameter 'H' of 'f' would hide the"
     " size symbol 'H'"),
    (("def f(v) = f(v)", "h' = f(h)"), "x.cell:5:16: error: 'f' cannot call itself"),
    (("def f(v) = g(v)", "def g(v) = v", "h' = f(h)"), "x.cell:5:16: error: unknown function"
     " 'g'"),
    (("def f(v) = tanh(v, v)", "h' = f(h)"), "x.cell:5:16: error: tanh takes 1 argument, not 2"),
    (("def f(v) = split(v, 2)", "h' = f(h)"), "x.cell:5:16: error: split gives several values"),
    (("def f(v) = g(v, 1)", "h' = f(h)"), "x.cell:5:16: error: unknown function 'g'"),
])
def test_def_mistakes_are_located(body, error):
    assert error_text(cell_text(*body, "output h'")).startswith(error)


def test_an_error_inside_an_expanded_body_points_at_the_body_with_a_note_at_the_call():
    text = cell_text("def f(a, b) = tanh(a * b)", "def g(v) = f(v, v) + 1", "h' = g(h[0])",
                     "output h'")
    assert error_text(cell_text("def f(a, b) = tanh(a * b)", "def g(v, w) = f(v, w) + 1",
                                "h' = g(h, x)", "output h'"), kind=CellShapeError) == (
        "x.cell:5:24: error: cannot multiply [B,H] by [B,I]: feature sizes differ\n"
        "        def f(a, b) = tanh(a * b)\n"
        "                           ^^^^^\n"
        "note: in 'f', called at x.cell:6:19\n"
        "note: in 'g', called at x.cell:7:10"
    )
    assert "x.cell:7:12: error: 'h' cannot be indexed: values are vectors" in error_text(
        text, kind=CellShapeError)


def test_exponential_expansion_is_refused():
    defs = ["def f0(v) = v * 2"] + [f"def f{k}(v) = f{k - 1}(v) + f{k - 1}(v)"
                                    for k in range(1, 30)]
    message = error_text(cell_text(*defs, "h' = f29(h)", "output h'"), kind=CellSyntaxError)
    assert "makes the cell more than 20000 instructions" in message
    assert len(message.splitlines()) < 20


def test_deep_expansion_is_a_located_error():
    def body(inner):
        return "(" * 90 + inner + " + 1)" * 90

    defs = ["def f0(v) = " + body("v")] + [f"def f{k}(v) = {body(f'f{k - 1}(v)')}"
                                           for k in range(1, 4)]
    message = error_text(cell_text(*defs, "h' = f3(h)", "output h'"), kind=CellSyntaxError)
    assert "expression too deep: with the defs it calls expanded" in message


def test_an_unused_def_is_a_warning():
    cell = compile_text(cell_text("def f(v) = v", "h' = W @ x + h", "output h'"))
    assert [w.message for w in cell.warnings] == ["function 'f' is never used"]


def test_the_ast_printer_shows_defs():
    cell = parse(Source("x.cell", cell_text("def f(a, b) = a * b", "h' = f(h, h)", "output h'")))
    assert "  Def f(a, b) = (a * b)    # line 5" in A.format_cell(cell).splitlines()


# ---------------------------------------------------------------------------------------------
# 3. Float hyper-parameters


HYPER = cell_text("h' = tanh(W @ x + h * forget_bias) + slope + one", "output h'",
                  extra=", forget_bias=1.0, slope=-0.25, one=1")


def test_hyper_parameters_are_params_of_kind_hyper_first_in_header_order():
    cell = compile_text(HYPER)
    assert [(p.name, p.kind) for p in cell.params] == [
        ("forget_bias", "hyper"), ("slope", "hyper"), ("one", "hyper"), ("W", "param")]
    fb = cell.params[0]
    assert fb.type == TensorType((Dim.of(1),), Batch.NONE)
    assert fb.init.fn == "constant" and isinstance(fb.init.args[0], A.Num)
    assert [p.init.args[0].value for p in cell.params[:3]] == [1.0, -0.25, 1.0]
    assert [s.arg for s in cell.sizes] == ["input_size", "hidden_size"]
    assert [p.name for p in cell.step.params] == ["h", "x", "forget_bias", "slope", "one", "W"]
    assert str(cell.param_count_formula) == "H*I"  # only trained parameters count


def test_hyper_parameter_values_reach_the_reference():
    cell, sizes, params, xs, h0, h1 = one_step(HYPER)
    np.testing.assert_array_equal(params["slope"], [-0.25])  # the default, from init_params
    z = xs[0] @ params["W"].T
    np.testing.assert_allclose(h1, np.tanh(z + h0) - 0.25 + 1, rtol=1e-12)
    params = {**params, "forget_bias": np.array([0.5])}
    _, final = forward(cell, sizes, xs, params, {"h": h0})
    np.testing.assert_allclose(final["h"], np.tanh(z + 0.5 * h0) - 0.25 + 1, rtol=1e-12)


def test_the_ast_printer_shows_hyper_parameters_in_header_order():
    text = "cell C(fb=-1.5, input_size I,\n       hidden_size H, k=2):\n    input x[I]\n"
    assert A.format_cell(parse(Source("x.cell", text + "    output x\n"))).splitlines()[0] == (
        "Cell C(fb=-1.5, input_size I, hidden_size H, k=2)")


@pytest.mark.parametrize("extra,error", [
    (", forget_bias", "x.cell:1:37: error: hyper-parameter 'forget_bias' needs a default value,"
     " as in forget_bias=1.0"),
    (", a=1.0, a=2.0", "x.cell:1:44: error: argument 'a' appears twice"),
    (", hidden_size=2.0", "x.cell:1:37: error: argument 'hidden_size' appears twice"),
    (", H=2.0", "x.cell:1:37: error: 'H' is already defined"),
    (", dropout=0.5", "x.cell:1:37: error: the hyper-parameter 'dropout' cannot be used: the"
     " generated code uses that name; rename it"),
    (", training=0.5", "x.cell:1:37: error: the hyper-parameter 'training' cannot be used"),
    (", _p=0.5", "x.cell:1:37: error: the hyper-parameter '_p' cannot be used"),
    (", a=H", "x.cell:1:39: error: 'H' is not a number; a hyper-parameter's default may use only"
     " numbers"),
    (", a=log(0)", "x.cell:1:39: error: log of 0 is not a finite real number"),
    (", a=sqrt(4) + 1", None),
])
def test_hyper_parameter_mistakes_are_located(extra, error):
    text = cell_text("h' = W @ x + h", "output h'", extra=extra)
    if error is None:
        assert compile_text(text).params[0].init.args[0].value == 3.0
    else:
        assert error_text(text).startswith(error)


def test_a_hyper_parameter_cannot_be_assigned_or_redeclared():
    assert error_text(cell_text("a = h", "h' = h", "output h'", extra=", a=1.0")).startswith(
        "x.cell:5:5: error: cannot assign to hyper-parameter 'a'")
    assert error_text(cell_text("param a", "h' = h", "output h'", extra=", a=1.0")).startswith(
        "x.cell:5:11: error: 'a' is already defined")


def test_hyper_parameters_get_no_gradient():
    check_gradients(HYPER, frozen=("forget_bias", "slope", "one"))


# ---------------------------------------------------------------------------------------------
# 4. Initial state values


STATE_INIT = ("cell C(input_size I, hidden_size H):\n    input x[I]\n"
              "    state m[H], n[H] = -1e30\n    state h[H] = 1 / H\n    state c[H]\n"
              + PARAMS + "    m' = max(m, W @ x)\n    n' = max(n, m')\n    h' = h + c\n"
              "    c' = c + n'\n    output h'\n")


def test_state_init_applies_to_every_name_of_the_declaration():
    cell = compile_text(STATE_INIT)
    assert [A.format_expr(e) if e is not None else None for e in cell.state_init] == [
        "-1e+30", "-1e+30", "(1 / H)", None]
    sizes = cell.bind(input_size=3, hidden_size=4)
    assert [cell.initial_value(k, sizes) for k in range(4)] == [-1e30, -1e30, 0.25, 0.0]


def test_the_reference_starts_states_at_their_values():
    cell = compile_text(STATE_INIT)
    sizes = cell.bind(input_size=3, hidden_size=4)
    params = init_params(cell, sizes, 0)
    xs = np.random.default_rng(1).normal(size=(2, 1, 3))
    ys, final = forward(cell, sizes, xs, params)  # no initial states given
    z = xs @ params["W"].T
    np.testing.assert_allclose(final["m"], np.maximum(z[0], z[1]), rtol=1e-12)
    np.testing.assert_allclose(final["c"], z[0] + final["m"], rtol=1e-12)  # c0 = 0
    np.testing.assert_allclose(ys[0], np.full((1, 4), 0.25))  # h0 + c0 = 1/H + 0
    np.testing.assert_allclose(ys[1], 0.25 + z[0], rtol=1e-12)


def test_the_ast_printer_shows_state_values():
    assert "  Decl state m[H], n[H] = -1e+30    # line 3" in A.format_cell(
        parse(Source("x.cell", STATE_INIT))).splitlines()


@pytest.mark.parametrize("decl,error", [
    ("input y[I] = 1", "x.cell:5:18: error: only states have an initial value (=), not inputs"),
    ("param p[H] = 1", "x.cell:5:18: error: only states have an initial value (=), not params"
     "\n        param p[H] = 1\n                     ^\nnote: a parameter's initializer is"
     " written with '~'"),
    ("state s[H] ~ ones()", "x.cell:5:18: error: only parameters and constants have"
     " initializers (~), not states"),
    ("state s[H] = h", "x.cell:5:18: error: 'h' is not a size symbol; a state's initial value"
     " may use only sizes and numbers"),
    ("state s[H] = log(0)", "x.cell:5:18: error: log of 0 is not a finite real number"),
    ("state s[H] = 1 < 2", "x.cell:5:18: error: '<' cannot be used in a state's initial value"),
])
def test_state_value_mistakes_are_located(decl, error):
    assert error_text(cell_text(decl, "s' = h", "h' = W @ x + h", "output h'")).startswith(error)


def test_a_state_value_that_fails_for_some_sizes_fails_when_bound():
    cell = compile_text(cell_text("state s[H] = log(H - 1)", "s' = s", "h' = W @ x + h",
                                  "output h'"))
    assert cell.bind(input_size=2, hidden_size=3)
    with pytest.raises(CellValueError, match="log of 0 is not a finite real number with H=1"):
        cell.bind(input_size=2, hidden_size=1)


# ---------------------------------------------------------------------------------------------
# 5. Frozen constants, and 7. no backward work for them


CONST = cell_text("const P[H, H] ~ orthogonal()", "const s ~ constant(0.5)",
                  "h' = tanh(W @ x + P @ h) * s", "output h'")


def test_constants_are_params_of_kind_const():
    cell = compile_text(CONST)
    assert [(p.name, p.kind, str(p.init)) for p in cell.params] == [
        ("W", "param", "uniform(-0.5, 0.5)"), ("P", "const", "orthogonal()"),
        ("s", "const", "constant(0.5)")]
    assert cell.frozen_params == (False, True, True)
    assert str(cell.param_count_formula) == "H*I"


@pytest.mark.parametrize("body,error", [
    (("const P[H] ~ orthogonal()", "h' = P * h"), "orthogonal() initializes matrices only"),
    (("const P[H, H]", "P = h", "h' = h"), "x.cell:6:5: error: cannot assign to constant 'P'"),
    (("const P[H, H, H, H]", "h' = h"), "a const has at most three dimensions"),
    (("const P[H] ~ magic()", "h' = h"), "x.cell:5:18: error: unknown initializer 'magic'"),
])
def test_constant_mistakes_are_located(body, error):
    assert error in error_text(cell_text(*body, "output h'"))


def test_an_unused_constant_is_a_warning():
    cell = compile_text(cell_text("const P[H, H]", "h' = W @ x + h", "output h'"))
    assert [w.message for w in cell.warnings] == ["constant 'P' is never used"]


def outer_count(text: str) -> int:
    prog = pipeline.compile_program(compile_text(text))
    return sum(i.op == "outer" for i in all_instrs(prog.bwd))


def test_the_backward_spends_no_product_on_a_constant_matrix():
    assert outer_count(CONST) == 1  # dW only
    assert outer_count(CONST.replace("const P", "param P")) == 2  # the check can fail
    prog = pipeline.compile_program(compile_text(CONST))
    # The reverse loop accumulates nothing for the constants: its outputs are d(h0) and the
    # d(hoisted W @ x) sequence; dP and ds are zero slots.
    (scan,) = [i for i in prog.bwd.body if i.op == "scan"]
    assert len(scan.outs) == 2
    zeros = {id(i.out) for i in prog.bwd.body if i.op == "const"}
    assert [id(r) in zeros for r in prog.bwd.results] == [False, False, False, True, True]


def test_constants_get_no_gradient_and_the_rest_matches_central_differences():
    check_gradients(CONST, frozen=("P", "s"))


def test_frozen_values_computed_in_the_loop_are_not_differentiated():
    """A loop-invariant product of constants, and stop_gradient, need no cotangent work."""
    text = cell_text("const P[H, H] ~ orthogonal()", "h' = tanh(W @ x + (P * sqrt(s)) @ h)",
                     "output h'", extra=", s=2.0")
    check_gradients(text, frozen=("P", "s"))
    assert outer_count(text) == 1


# ---------------------------------------------------------------------------------------------
# 6. Initializer expressions


ARANGE = cell_text("param A_log[H, I] ~ log(arange(1, I + 1))", "param d[H] ~ 0.5 * arange(H)",
                   "param e[H] ~ -2", "h' = A_log @ x + d * e * h", "output h'")


def test_initializer_expressions_are_values_inits():
    cell = compile_text(ARANGE)
    a = cell.params[1]
    assert a.init == Init("values", (a.init.args[0],), a.init.span, (Dim.of("H"), Dim.of("I")))
    assert str(a.init) == "log(arange(1, (I + 1)))"
    sizes = cell.bind(input_size=3, hidden_size=2)
    (value,) = a.init.values(sizes)
    assert value.dtype == np.float64
    np.testing.assert_array_equal(value, np.broadcast_to(np.log([1.0, 2.0, 3.0]), (2, 3)))
    params = init_params(cell, sizes, 0)
    np.testing.assert_array_equal(params["A_log"], value)
    np.testing.assert_array_equal(params["d"], [0.0, 0.5])
    np.testing.assert_array_equal(params["e"], [-2.0, -2.0])


@pytest.mark.parametrize("args", ["5", "1, 4", "0.5, 2, 0.25", "4, 0, -1"])
def test_arange_is_numpys(args):
    cell = compile_text(cell_text(f"param v[1, H] ~ arange({args}) * 0 + arange({args})",
                                  "h' = W @ x + h", "output h'"))
    n = len(np.arange(*map(float, args.split(","))))
    (value,) = cell.params[1].init.values({"I": 1, "H": n})
    np.testing.assert_array_equal(value[0], np.arange(*map(float, args.split(","))))


@pytest.mark.parametrize("init,error", [
    ("arange(3)", "x.cell:5:21: error: the initializer's value has shape [3], which does not"
     " broadcast to the parameter's shape [4, 2]"),
    ("log(arange(3))", "x.cell:5:21: error: log of 0 is not a finite real number"),
    ("arange(1, 2, 0)", "x.cell:5:21: error: arange with a step of 0 never ends"),
    ("arange(1e9)", "x.cell:5:21: error: arange of 1e+09 numbers is too long"),
    ("arange(1, 2, 3, 4)", "x.cell:5:21: error: use arange(stop), arange(start, stop) or"),
    ("arange(arange(2))", "x.cell:5:28: error: arange takes numbers, not a list of values"),
    ("arange(2) + arange(3)", "x.cell:5:21: error: cannot combine values of shapes [2] and [3]"),
    ("magic(H)", "x.cell:5:21: error: unknown initializer 'magic'"),
    ("tanh(H)", "x.cell:5:21: error: unknown initializer 'tanh'"),
    ("sqrt(arange(H), 2)", "x.cell:5:21: error: 'sqrt' cannot be used in an initializer"
     " expression (use sqrt, exp, log or arange)"),
    ("x * 2", "x.cell:5:21: error: 'x' is not a size symbol; an initializer expression may use"
     " only sizes and numbers"),
    ("H @ H", "x.cell:5:21: error: '@' cannot be used in an initializer expression"),
])
def test_initializer_expression_mistakes_are_located(init, error):
    text = cell_text(f"param v[4, 2] ~ {init}", "h' = W @ x + h", "output h'")
    assert error_text(text).startswith(error)


def test_a_value_that_does_not_broadcast_for_the_bound_sizes_fails_when_bound():
    cell = compile_text(cell_text("param v[H] ~ arange(3)", "h' = W @ x + h * v", "output h'"))
    assert cell.bind(input_size=2, hidden_size=3)
    with pytest.raises(CellShapeError) as info:
        cell.bind(input_size=2, hidden_size=4)
    assert str(info.value).startswith(
        "x.cell:5:18: error: the initializer's value has shape [3], which does not broadcast to"
        " the parameter's shape [4]")


def test_named_initializers_keep_their_rows():
    cell = compile_text(cell_text("param v[H] ~ constant(2)", "h' = W @ x + h * v",
                                  "output h'"))
    assert cell.params[1].init.fn == "constant"
    assert cell.params[1].init.values({"H": 2}) == [2.0]


def test_the_ast_printer_shows_constants_and_initializer_expressions():
    lines = A.format_cell(parse(Source("x.cell", ARANGE + textwrap.dedent("""\
        const P[H, H] ~ orthogonal()
    """).replace("const", "    const")))).splitlines()
    assert "  Decl param A_log[H, I] ~ log(arange(1, (I + 1)))    # line 5" in lines
    assert "  Decl const P[H, H] ~ orthogonal()    # line 10" in lines


# ---------------------------------------------------------------------------------------------
# All of it together, through the reference backward


def test_everything_at_once_matches_central_differences():
    text = textwrap.dedent("""\
        cell Everything(input_size I, hidden_size H, forget_bias=1.0, leak=-0.5):
            input x[I]
            state h[H] = -1
            state c[H] = 0.5
            param W[H, I] ~ uniform(-0.5, 0.5)
            param U[H, H] ~ normal(0, 0.3)
            const P[H, H] ~ orthogonal()
            param A[H] ~ log(arange(1, H + 1))
            def ln(z) = (z - mean(z)) / sqrt(var(z) + 1e-5)
            def act(z, k) = where(z > 0, z, k * z)
            z = ln(W @ x + U @ h) + forget_bias
            c' = clamp(tanh(z) * c, -2, 2) + (P @ c) * 0.1
            h' = act(z, leak) * silu(c') + elu(A * h) + logsigmoid(h) + sigmoid(c) ^ exp(z)
            output h'
        """)
    check_gradients(text, frozen=("P", "forget_bias", "leak"))
    cell = compile_text(text)
    _, _, grads = backward(cell, cell.bind(input_size=3, hidden_size=4),
                           np.ones((2, 1, 3)), init_params(cell, {"I": 3, "H": 4}, 0),
                           {"h": np.zeros((1, 4)), "c": np.zeros((1, 4))},
                           d_ys=np.ones((2, 1, 4)))
    assert not np.any(grads.get("P", 0)) and np.any(grads["W"])
