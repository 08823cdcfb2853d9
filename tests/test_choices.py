"""Choice hyper-parameters: `nonlinearity in (tanh, relu)` in a cell's header.

A choice is a keyword-only constructor argument taking one of its function names (the first by
default), called in the body as that function: `h' = nonlinearity(W @ x + U @ h)`. Lowering
makes it selects on a [1] run-time index, so the NumPy reference, the eager layers and the
generated module run every choice from one program; the llvm layers compile the chosen
function alone (cellc/choices.py). zoo's rnn.cell uses one, as torch.nn.RNN's nonlinearity;
tests/test_torch_module_db.py runs torch's own relu samples on it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cellc
from cellc import choices, pipeline
from cellc.backends import cache, numpy_ref
from cellc.ir import all_instrs
from cellc.source import CellError

ZOO = Path(__file__).resolve().parent.parent / "cells"
T, B, I, H = 5, 3, 4, 6
TARGETS = ("torch", "llvm")

THREE = """
cell Act(input_size I, hidden_size H, act in (tanh, relu, sigmoid)):
    input x[I]
    state h[H]
    param W[H, I], U[H, H] ~ uniform(-1/sqrt(H), 1/sqrt(H))
    bias  b[H] ~ uniform(-0.5, 0.5)
    h' = act(W @ x + b + U @ h) + 0.1 * act(h)
    output h'
"""
NUMPY = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0.0),
         "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z))}


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    p = tmp_path_factory.mktemp("choices") / "act.cell"
    p.write_text(THREE)
    return p


def by_hand(params, xs, h, act):
    """The cell's equations in NumPy, the choice applied directly."""
    f, ys = NUMPY[act], []
    for x in xs:
        h = f(x @ params["W"].T + params["b"] + h @ params["U"].T) + 0.1 * f(h)
        ys.append(h)
    return np.stack(ys), h


@pytest.mark.parametrize("act", ["tanh", "relu", "sigmoid"])
def test_reference_runs_the_chosen_function(path, act):
    cell = cellc.load_cell(path)
    sizes = cell.bind(input_size=I, hidden_size=H)
    params = numpy_ref.init_params(cell, sizes, rng=0)
    params["act"] = np.array([("tanh", "relu", "sigmoid").index(act)], np.float64)
    rng = np.random.default_rng(1)
    xs, h0 = rng.normal(size=(T, B, I)), rng.normal(size=(B, H))
    ys, final = numpy_ref.forward(cell, sizes, xs, params, {"h": h0})
    want_ys, want_h = by_hand(params, xs, h0, act)
    np.testing.assert_allclose(ys, want_ys, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(final["h"], want_h, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("act", ["tanh", "relu", "sigmoid"])
def test_layers_match_the_reference_and_finite_differences(path, target, act):
    Layer = cellc.load(path, target=target).Act
    torch.manual_seed(0)
    m = Layer(I, H, act=act, dtype=torch.float64)
    assert m.act == act
    params = {k.removesuffix("_l0"): v.detach().numpy() for k, v in m.state_dict().items()}
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, B, H, dtype=torch.float64, requires_grad=True)
    ys, h_n = m(x, h0)
    want_ys, want_h = by_hand(params, x.detach().numpy(), h0[0].detach().numpy(), act)
    np.testing.assert_allclose(ys.detach().numpy(), want_ys, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(h_n[0].detach().numpy(), want_h, rtol=1e-10, atol=1e-10)
    # relu's kink: the random inputs keep every pre-activation well away from 0
    assert torch.autograd.gradcheck(lambda x, h: m(x, h)[0], (x, h0), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("target", TARGETS)
def test_the_attribute_is_read_at_each_forward(path, target):
    """As a float hyper-parameter, setting the attribute changes the next forward."""
    Layer = cellc.load(path, target=target).Act
    torch.manual_seed(0)
    m = Layer(I, H, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    y_tanh = m(x)[0]
    m.act = "relu"
    y_relu = m(x)[0]
    assert (y_relu >= 0).all() and (y_tanh < 0).any()
    torch.manual_seed(0)
    fresh = Layer(I, H, act="relu", dtype=torch.float64)
    torch.testing.assert_close(y_relu, fresh(x)[0], rtol=0, atol=0)
    m.act = "gelu"
    with pytest.raises(ValueError, match=r"^Unknown act 'gelu'\. Select from 'tanh', 'relu', "
                                         r"'sigmoid'\.$"):
        m(x)


@pytest.mark.parametrize("target", TARGETS)
def test_constructor_repr_state_dict_and_pickle(path, target):
    mod = cellc.load(path, target=target)
    with pytest.raises(ValueError, match="Unknown act 'elu'"):
        mod.Act(I, H, act="elu")
    with pytest.raises(TypeError):
        mod.Act(I, H, 2, "relu")  # keyword-only, as every hyper-parameter
    m = mod.Act(I, H, act="sigmoid")
    assert repr(m) == "Act(4, 6, act=sigmoid)" and repr(mod.Act(I, H)) == "Act(4, 6)"
    assert "act" not in "".join(m.state_dict())
    assert repr(mod.ActCell(I, H, act="relu")) == "ActCell(4, 6, act=relu)"
    back = pickle.loads(pickle.dumps(m))
    assert back.act == "sigmoid"
    x = torch.randn(T, B, I)
    torch.testing.assert_close(back(x)[0], m(x)[0], rtol=0, atol=0)


def test_rnn_drop_in_for_torch_nonlinearity():
    """The zoo's RNN takes torch.nn.RNN's nonlinearity, with torch's message for a bad one."""
    for target in TARGETS:
        mod = cellc.load(ZOO / "rnn.cell", target=target)
        for nl in ("tanh", "relu"):
            torch.manual_seed(0)
            ref = torch.nn.RNN(I, H, num_layers=2, nonlinearity=nl, dtype=torch.float64)
            ours = mod.RNN(I, H, num_layers=2, nonlinearity=nl, dtype=torch.float64)
            ours.load_state_dict(ref.state_dict())
            x = torch.randn(T, B, I, dtype=torch.float64)
            torch.testing.assert_close(ours(x), ref(x), rtol=1e-10, atol=1e-10)
        with pytest.raises(ValueError) as ours_err:
            mod.RNN(I, H, nonlinearity="sigmoid")
        with pytest.raises(ValueError) as torch_err:
            torch.nn.RNN(I, H, nonlinearity="sigmoid")
        assert str(ours_err.value) == str(torch_err.value)


def test_llvm_compiles_the_chosen_function_alone(path):
    cell = cellc.load_cell(path)
    generic = {i.op for i in all_instrs(pipeline.compile_program(cell).fwd)}
    assert {"tanh", "relu", "sigmoid", "where"} <= generic
    for k, act in enumerate(("tanh", "relu", "sigmoid")):
        fixed = choices.specialize(cell, {"act": k})
        ops = {i.op for i in all_instrs(pipeline.compile_program(fixed).fwd)}
        assert act in ops and "where" not in ops, (act, ops)
        assert not ({"tanh", "relu", "sigmoid"} - {act}) & ops, (act, ops)
        # the kernel caches keep them apart: their keys read the step's IR
        assert cache.cache_key(fixed, None, "float32", "fwd") != cache.cache_key(
            cell, None, "float32", "fwd")
        assert choices.specialize(cell, {"act": k}) is fixed
    with pytest.raises(ValueError, match="no choice act=3"):
        choices.specialize(cell, {"act": 3})


def test_equations_show_the_selects(path):
    text = cellc.grad_equations(path)
    assert "where((act < 0.5)" in text and "where((act > 0.5) * (act < 1.5)" in text
    assert "where((act > 1.5)" in text


def test_generated_module_carries_the_choices(path):
    src = cellc.torch_source(path)
    assert "\"default\": 'tanh', \"choices\": ['tanh', 'relu', 'sigmoid']," in src


ERRORS = {
    "twice": ("act in (tanh, tanh)", "1:51: error: 'tanh' is a choice of 'act' twice"),
    "not unary": ("act in (tanh, max)", "1:51: error: the choices of 'act' are functions of"
                                        " one value"),
    "reduction": ("act in (sum, tanh)", "1:45: error: the choices of 'act' are functions of"),
    "unknown": ("act in (tanh, swish)", "1:51: error: the choices of 'act' are functions of"),
    "reserved": ("dropout in (tanh, relu)", "1:37: error: the hyper-parameter 'dropout' cannot"
                                            " be used"),
    "clash": ("H in (tanh, relu)", "1:37: error: 'H' is already defined"),
    "empty": ("act in ()", "1:45: error: unexpected ')'; expected a name"),
    "var": ("act in (var, relu)", "1:45: error: the choices of 'act' are functions of"),
    "hides": ("tanh in (tanh, relu)", "1:37: error: the choice 'tanh' would hide the built-in"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_choice_mistakes_are_located(case, tmp_path):
    header, want = ERRORS[case]
    p = tmp_path / "x.cell"
    p.write_text(f"cell C(input_size I, hidden_size H, {header}):\n    input x[I]\n"
                 "    state h[H]\n    param W[H, I] ~ uniform(-0.5, 0.5)\n"
                 "    h' = tanh(W @ x) + h\n    output h'\n")
    with pytest.raises(CellError) as info:
        cellc.load_cell(p)
    assert f"x.cell:{want}" in str(info.value)


@pytest.mark.parametrize("body, want", [
    ("    h' = act + h\n", "4:10: error: 'act' is a choice of function; call it, as in act(...)"),
    ("    h' = act(h, h)\n", "4:10: error: act takes 1 argument, not 2"),
])
def test_choice_use_mistakes_are_located(body, want, tmp_path):
    p = tmp_path / "x.cell"
    p.write_text("cell C(input_size I, hidden_size H, act in (tanh, relu)):\n    input x[I]\n"
                 "    state h[H]\n" + body + "    output h'\n")
    with pytest.raises(CellError) as info:
        cellc.load_cell(p)
    assert f"x.cell:{want}" in str(info.value)


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_native_cell_takes_the_index(path, act):
    """NativeCell (and the AOT loader, which runs the same kernels) compile the selects; the
    choice is passed as its index, a [1] array, like any hyper-parameter."""
    from cellc.native import NativeCell

    cell = cellc.load_cell(path)
    nc = NativeCell(cell, "float64", input_size=I, hidden_size=H)
    params = nc.init_params(rng=0)
    params["act"] = np.array([("tanh", "relu", "sigmoid").index(act)], np.float64)
    xs = np.random.default_rng(2).normal(size=(T, B, I))
    d_ys = np.random.default_rng(3).normal(size=(T, B, H))
    ys, _, tape = nc.forward(xs, params)
    grads = nc.backward(tape, d_ys)
    _, _, want = numpy_ref.backward(cell, nc.sizes, xs, params, d_ys=d_ys)
    np.testing.assert_allclose(ys, by_hand(params, xs, np.zeros((B, H)), act)[0], rtol=1e-12,
                               atol=1e-12)
    assert grads.keys() == want.keys() and "act" not in grads
    for k in want:
        np.testing.assert_allclose(grads[k], want[k], rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("target", TARGETS)
def test_a_choice_not_taken_puts_no_nan_in_the_gradient(tmp_path, target):
    """log and sqrt of negative values are never chosen here: their gradient stays out."""
    p = tmp_path / "c.cell"
    p.write_text(THREE.replace("act in (tanh, relu, sigmoid)", "act in (relu, log, sqrt)")
                 .replace("cell Act", "cell Act3"))
    m = cellc.load(p, target=target).Act3(I, H, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    y, _ = m(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert torch.isfinite(m.W_l0.grad).all()
