"""Hyper-parameters, constants, initial states and initializer expressions in every runtime.

A cell's header may declare float hyper-parameters (`forget_bias=1.0`: a keyword-only
constructor argument, kept as an attribute, passed to the loop as a [1] tensor, not in
state_dict), its body frozen constants (`const P[H, H] ~ orthogonal()`: persistent buffers, in
state_dict and moved by `.to()`, never trained), initial state values (`state m[H] = -1e30`)
and initializer expressions (`~ log(arange(1, H + 1))`). Each must give the same numbers on
the eager interpreter's layers, the generated PyTorch module, the native layers, the NumPy
reference (itself checked against finite differences), NativeCell and the AOT loader.
"""

from __future__ import annotations

import importlib.util
import io
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cellc
from cellc.backends import cache, numpy_ref
from cellc.backends.torch_eager import make_eager
from cellc.native import NativeCell

ROOT = Path(__file__).resolve().parent.parent
T, B, I, H = 4, 3, 3, 4

CELLS = {
    # torch.nn.LSTM's cell with a forget-gate bias (Jozefowicz et al. 2015) as a hyper-parameter.
    "forget_bias": """
cell LSTM(input_size I, hidden_size H, forget_bias=1.0):
    input  x[I]
    state  h[H], c[H]
    param  weight_ih[4*H, I], weight_hh[4*H, H] ~ uniform(-1/sqrt(H), 1/sqrt(H))
    bias   bias_ih[4*H], bias_hh[4*H]           ~ uniform(-1/sqrt(H), 1/sqrt(H))
    i, f, g, o = split(weight_ih @ x + bias_ih + weight_hh @ h + bias_hh, 4)
    c' = sigmoid(f + forget_bias) * c + sigmoid(i) * tanh(g)
    h' = sigmoid(o) * tanh(c')
    output h'
""",
    # A fixed random orthogonal recurrence: a buffer, not a parameter.
    "const": """
cell CRNN(input_size I, hidden_size H):
    input x[I]
    state h[H]
    param W[H, I] ~ uniform(-1/sqrt(H), 1/sqrt(H))
    bias  b[H] ~ zeros()
    const P[H, H] ~ orthogonal()
    h' = tanh(W @ x + b + P @ h)
    output h'
""",
    # A running-max stabilizer that starts at minus "infinity" (sLSTM-style), and a state whose
    # start reads a size (so stacked layers start it at their own input size).
    "state_init": """
cell Stab(input_size I, hidden_size H, scale=0.5):
    input x[I]
    state h[H]
    state m[H] = -1e30
    state n[H] = 1 / I
    param W[H, I], U[H, H] ~ uniform(-1/sqrt(H), 1/sqrt(H))
    z = W @ x + U @ h
    m' = max(z, m)
    n' = scale * n + sigmoid(z)
    h' = tanh(h * exp(m - m') + exp(z - m') + n)
    output h'
""",
    # Mamba's A_log = log(1..N) and a ramp broadcast over the rows of a matrix.
    "values": """
cell ALog(input_size I, hidden_size H):
    input x[I]
    state h[H]
    param W[H, I] ~ uniform(-1/sqrt(H), 1/sqrt(H))
    param A_log[H] ~ log(arange(1, H + 1))
    param D[H, I] ~ arange(I) / (I + 1) - 0.25
    h' = tanh(W @ x + D @ x + exp(-exp(A_log)) * h)
    output h'
""",
}
TARGETS = ["eager", "torch", "llvm"]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    base = tmp_path_factory.mktemp("hyper_const")
    out = {}
    for name, text in CELLS.items():
        out[name] = base / f"{name}.cell"
        out[name].write_text(text.lstrip())
    return out


_CLASSES = {}


def classes(paths, name, target):
    """(Layer, Cell) of a cell on a target."""
    key = (name, target)
    if key not in _CLASSES:
        if target == "eager":
            _CLASSES[key] = make_eager(cellc.load_cell(paths[name]))
        else:
            mod = cellc.load(paths[name], target=target)
            _CLASSES[key] = (mod.Layer, mod.Cell)
    return _CLASSES[key]


def params_of(layer, cell, suffix="_l0") -> dict:
    """The NumPy reference's parameters from a layer's tensors and attributes."""
    out = {}
    for p in cell.params:
        if p.kind == "hyper":
            out[p.name] = np.array([getattr(layer, p.name)])
        else:
            out[p.name] = getattr(layer, p.name + suffix).detach().numpy()
    return out


def close(got, want, what, tol=1e-10):
    got = got.detach().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=what)


# ---------------------------------------------------------------------------------------------
# The reference: gradients against central differences


@pytest.mark.parametrize("name", list(CELLS))
def test_reference_gradients_match_finite_differences(paths, name):
    cell = cellc.load_cell(paths[name])
    sizes = cell.bind(input_size=I, hidden_size=H)
    rng = np.random.default_rng(0)
    params = numpy_ref.init_params(cell, sizes, rng=1)
    for p in cell.params:  # away from the defaults, so a hyper-parameter's value matters
        if p.kind == "hyper":
            params[p.name] = params[p.name] + 0.3
    xs = rng.normal(size=(T, B, I))
    d_ys = rng.normal(size=(T, B, H))

    def loss(xs, params):
        ys, _ = numpy_ref.forward(cell, sizes, xs, params)
        return float((ys * d_ys).sum())

    _, _, grads = numpy_ref.backward(cell, sizes, xs, params, d_ys=d_ys)
    frozen = {p.name for p in cell.params if p.kind in ("const", "hyper")}
    assert set(grads) == {"xs", *(s.name for s in cell.states),
                          *(p.name for p in cell.params if p.name not in frozen)}
    eps = 1e-6
    for key in ["xs", *(p.name for p in cell.params if p.name not in frozen)]:
        base = xs if key == "xs" else params[key]
        num = np.zeros_like(base)
        for k in np.ndindex(base.shape):
            plus, minus = base.copy(), base.copy()
            plus[k] += eps
            minus[k] -= eps
            if key == "xs":
                num[k] = (loss(plus, params) - loss(minus, params)) / (2 * eps)
            else:
                num[k] = (loss(xs, {**params, key: plus}) - loss(xs, {**params, key: minus})) / (
                    2 * eps)
        np.testing.assert_allclose(grads[key], num, rtol=1e-6, atol=1e-8, err_msg=key)


def test_reference_defaults_hypers_and_states(paths):
    """forward without a hyper-parameter uses its default, without states their initial
    values; init_params gives the hyper-parameters at their defaults and evaluates the
    initializer expressions."""
    cell = cellc.load_cell(paths["state_init"])
    sizes = cell.bind(input_size=I, hidden_size=H)
    params = numpy_ref.init_params(cell, sizes, rng=0)
    assert params["scale"].tolist() == [0.5]
    xs = np.random.default_rng(1).normal(size=(T, B, I))
    given = {"h": np.zeros((B, H)), "m": np.full((B, H), -1e30), "n": np.full((B, H), 1 / I)}
    want, want_final = numpy_ref.forward(cell, sizes, xs, params, given)
    trained = {k: v for k, v in params.items() if k != "scale"}
    got, final = numpy_ref.forward(cell, sizes, xs, trained)
    np.testing.assert_array_equal(got, want)
    for k in want_final:
        np.testing.assert_array_equal(final[k], want_final[k])
    zero_start, _ = numpy_ref.forward(cell, sizes, xs, params, {"m": np.zeros((B, H))})
    assert not np.allclose(zero_start, want)  # the initial value matters in this cell
    other, _ = numpy_ref.forward(cell, sizes, xs, {**params, "scale": 0.9})  # a number is [1]
    assert not np.allclose(other, want)

    values = cellc.load_cell(paths["values"])
    vp = numpy_ref.init_params(values, values.bind(input_size=I, hidden_size=H), rng=0)
    np.testing.assert_array_equal(vp["A_log"], np.log(np.arange(1, H + 1)))
    np.testing.assert_array_equal(vp["D"], np.tile(np.arange(I) / (I + 1) - 0.25, (H, 1)))


# ---------------------------------------------------------------------------------------------
# Layers on every target against the reference


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", list(CELLS))
def test_layer_matches_reference(paths, name, target):
    """Outputs, final states and gradients with hx=None (the states' initial values) and the
    hyper-parameters away from their defaults, float64 at 1e-10."""
    cell = cellc.load_cell(paths[name])
    sizes = cell.bind(input_size=I, hidden_size=H)
    Layer, _ = classes(paths, name, target)
    hypers = {p.name: 0.25 for p in cell.params if p.kind == "hyper"}
    torch.manual_seed(0)
    layer = Layer(I, H, dtype=torch.float64, **hypers)
    params = params_of(layer, cell)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    out, h_n = layer(x)
    h_n = [h_n] if isinstance(h_n, torch.Tensor) else list(h_n)
    d_ys = torch.randn(T, B, H, dtype=torch.float64)
    (out * d_ys).sum().backward()

    ys, final, grads = numpy_ref.backward(cell, sizes, x.detach().numpy(), params,
                                          d_ys=d_ys.numpy())
    close(out, ys, "output")
    for s, h in zip(cell.states, h_n):
        close(h[0], final[s.name], f"final {s.name}")
    close(x.grad, grads["xs"], "grad xs")
    for p in cell.params:
        if p.kind in ("param", "bias"):
            close(getattr(layer, p.name + "_l0").grad, grads[p.name], f"grad {p.name}")


@pytest.mark.parametrize("target", TARGETS)
def test_stacked_layers_evaluate_per_layer_sizes(paths, target):
    """Layer 1 of a 2-layer stack reads inputs of size H: its initializer expression D[H, I]
    and its state start n = 1/I use I = H, as the reference with those sizes does."""
    Layer, _ = classes(paths, "values", target)
    layer = Layer(I, H, num_layers=2, dtype=torch.float64)
    assert layer.D_l0.shape == (H, I) and layer.D_l1.shape == (H, H)
    close(layer.D_l1, np.tile(np.arange(H) / (H + 1) - 0.25, (H, 1)), "D_l1", 1e-15)
    close(layer.A_log_l1, np.log(np.arange(1, H + 1)), "A_log_l1", 1e-15)

    cell = cellc.load_cell(paths["state_init"])
    Layer, _ = classes(paths, "state_init", target)
    layer = Layer(I, H, num_layers=2, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    out, h_n = layer(x)
    s0, s1 = cell.bind(input_size=I, hidden_size=H), cell.bind(input_size=H, hidden_size=H)
    y0, f0 = numpy_ref.forward(cell, s0, x.numpy(), params_of(layer, cell, "_l0"))
    y1, f1 = numpy_ref.forward(cell, s1, y0, params_of(layer, cell, "_l1"))
    close(out, y1, "output")
    for s, h in zip(cell.states, h_n):
        close(h[0], f0[s.name], f"layer 0's {s.name}")
        close(h[1], f1[s.name], f"layer 1's {s.name}")


@pytest.mark.parametrize("target", TARGETS)
def test_cell_class_matches_one_step(paths, target):
    """The Cell class takes hyper-parameters as keywords, holds constants as buffers and starts
    its states at their initial values when hx is None."""
    for name in ("forget_bias", "const", "state_init"):
        cell = cellc.load_cell(paths[name])
        sizes = cell.bind(input_size=I, hidden_size=H)
        _, Cell = classes(paths, name, target)
        hypers = {p.name: -0.5 for p in cell.params if p.kind == "hyper"}
        c = Cell(I, H, dtype=torch.float64, **hypers)
        params = params_of(c, cell, "")
        x = torch.randn(B, I, dtype=torch.float64)
        got = c(x)
        got = [got] if isinstance(got, torch.Tensor) else list(got)
        _, final = numpy_ref.forward(cell, sizes, x.numpy()[None], params)
        for s, h in zip(cell.states, got):
            close(h, final[s.name], f"{name} {s.name}")


# ---------------------------------------------------------------------------------------------
# The module side: state_dict, .to(), constructor, repr, pickling


@pytest.mark.parametrize("target", TARGETS)
def test_constants_are_buffers_and_hypers_are_attributes(paths, target):
    Layer, Cell = classes(paths, "const", target)
    layer = Layer(I, H, num_layers=2, bidirectional=True)
    assert list(layer.state_dict()) == [  # as torch orders them: parameters, then buffers
        "W_l0", "b_l0", "W_l0_reverse", "b_l0_reverse", "W_l1", "b_l1", "W_l1_reverse",
        "b_l1_reverse", "P_l0", "P_l0_reverse", "P_l1", "P_l1_reverse"]
    assert {n for n, _ in layer.named_parameters()} == {
        "W_l0", "b_l0", "W_l0_reverse", "b_l0_reverse", "W_l1", "b_l1", "W_l1_reverse",
        "b_l1_reverse"}
    assert [n for n, _ in layer.named_buffers()] == ["P_l0", "P_l0_reverse", "P_l1",
                                                      "P_l1_reverse"]
    assert all(not b.requires_grad for b in layer.buffers())
    P = layer.P_l0
    torch.testing.assert_close(P @ P.T, torch.eye(H), atol=1e-5, rtol=0)  # orthogonal
    assert "P" in dict(Cell(I, H).named_buffers())

    # An optimizer over parameters() never sees a constant; backward leaves it alone even if
    # someone asks for its gradient.
    layer.P_l0.requires_grad_(True)
    out, _ = layer(torch.randn(T, B, I))
    out.sum().backward()
    assert layer.P_l0.grad is None and layer.W_l0.grad is not None

    Layer, _ = classes(paths, "forget_bias", target)
    lstm = Layer(I, H, forget_bias=0.5)
    assert lstm.forget_bias == 0.5
    assert list(lstm.state_dict()) == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0",
                                       "bias_hh_l0"]
    assert "forget_bias=0.5" in repr(lstm) and "forget_bias" not in repr(Layer(I, H))


@pytest.mark.parametrize("target", TARGETS)
def test_to_float64_moves_constants_and_reset_keeps_them(paths, target):
    Layer, _ = classes(paths, "const", target)
    layer = Layer(I, H)
    P = layer.P_l0.clone()
    layer.reset_parameters()  # draws the trained parameters again, not the constants
    assert torch.equal(layer.P_l0, P)
    layer.to(torch.float64)
    assert layer.P_l0.dtype == torch.float64 and layer.W_l0.dtype == torch.float64
    out, _ = layer(torch.randn(T, B, I, dtype=torch.float64))
    assert out.dtype == torch.float64

    other = Layer(I, H)
    other.load_state_dict(Layer(I, H).state_dict())  # constants travel with the state dict
    assert not torch.equal(other.P_l0, P)


@pytest.mark.parametrize("target", TARGETS)
def test_hyper_constructor_errors(paths, target):
    Layer, Cell = classes(paths, "forget_bias", target)
    for cls in (Layer, Cell):
        with pytest.raises(TypeError, match="forget_bias should be a real number, got: str"):
            cls(I, H, forget_bias="1.0")
        with pytest.raises(TypeError, match="forget_bias should be a real number, got: bool"):
            cls(I, H, forget_bias=True)
        with pytest.raises(TypeError, match="forget_bias should be a real number, got: Tensor"):
            cls(I, H, forget_bias=torch.tensor(1.0))
        assert cls(I, H, forget_bias=2).forget_bias == 2.0  # an int is a real number
    with pytest.raises(TypeError, match="too many positional arguments"):  # keyword-only
        Layer(I, H, 1, True, False, 0.0, False, None, None, 0.5)
    with pytest.raises(TypeError, match="too many positional arguments"):
        Cell(I, H, True, None, None, 0.5)


@pytest.mark.parametrize("target", TARGETS)
def test_forget_bias_changes_the_result(paths, target):
    Layer, _ = classes(paths, "forget_bias", target)
    torch.manual_seed(0)
    layer = Layer(I, H, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    base, _ = layer(x)
    other = Layer(I, H, dtype=torch.float64, forget_bias=0.5)
    other.load_state_dict(layer.state_dict())
    changed, _ = other(x)
    assert not torch.allclose(base, changed)
    layer.forget_bias = 0.5  # an attribute read at each forward
    again, _ = layer(x)
    torch.testing.assert_close(again, changed, rtol=0, atol=0)


def test_forget_bias_is_a_run_time_argument_on_llvm(paths, monkeypatch):
    """A new value compiles nothing: the kernels take the hyper-parameter as an argument."""
    Layer, _ = classes(paths, "forget_bias", "llvm")
    layer = Layer(I, H, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    out, _ = layer(x)
    out.sum().backward()  # forward and backward kernels compiled

    def refuse(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(cache, "native_program", refuse)
    for value in (0.5, -2.0):
        other = Layer(I, H, dtype=torch.float64, forget_bias=value)
        y, _ = other(x)
        y.sum().backward()


@pytest.mark.parametrize("target", ["torch", "llvm"])  # the eager classes have no module
def test_pickling_keeps_hypers_and_constants(paths, target):
    Layer, _ = classes(paths, "const", target)
    layer = Layer(I, H, dtype=torch.float64)
    Lstm, _ = classes(paths, "forget_bias", target)
    lstm = Lstm(I, H, dtype=torch.float64, forget_bias=0.5)
    x = torch.randn(T, B, I, dtype=torch.float64)
    for m in (layer, lstm):
        buf = io.BytesIO()
        torch.save(m, buf)
        buf.seek(0)
        back = torch.load(buf, weights_only=False)
        torch.testing.assert_close(back(x)[0], m(x)[0], rtol=0, atol=0)
    assert back.forget_bias == 0.5
    assert torch.equal(back.state_dict()["bias_hh_l0"], lstm.bias_hh_l0)


def test_generated_module_prints_values_as_torch_code(paths):
    """The generated module's spec holds the initializer expression as torch code (float64),
    equal to the reference's value, and the hyper-parameter's default."""
    from cellc.api import torch_source

    text = torch_source(paths["values"])
    assert "torch.log(torch.arange(1.0, (S['H'] + 1.0), dtype=torch.float64))" in text
    Layer, _ = classes(paths, "values", "torch")
    close(Layer(I, H).A_log_l0.double(), np.log(np.arange(1, H + 1)), "A_log", 1e-7)


# ---------------------------------------------------------------------------------------------
# The NumPy-level native API and the AOT loader


@pytest.mark.parametrize("name", ["forget_bias", "state_init", "const"])
def test_native_cell_defaults(paths, name):
    cell = cellc.load_cell(paths[name])
    nc = NativeCell(cell, "float64", input_size=I, hidden_size=H)
    sizes = nc.sizes
    params = nc.init_params(rng=0)
    trained = {p.name: params[p.name] for p in cell.params if p.kind != "hyper"}
    xs = np.random.default_rng(2).normal(size=(T, B, I))
    d_ys = np.random.default_rng(3).normal(size=(T, B, H))
    ys, final, tape = nc.forward(xs, trained)
    grads = nc.backward(tape, d_ys)
    want_ys, want_final, want = numpy_ref.backward(cell, sizes, xs, params, d_ys=d_ys)
    np.testing.assert_allclose(ys, want_ys, rtol=1e-10, atol=1e-12)
    for k in want_final:
        np.testing.assert_allclose(final[k], want_final[k], rtol=1e-10, atol=1e-12, err_msg=k)
    assert grads.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(grads[k], want[k], rtol=1e-10, atol=1e-12, err_msg=k)
    y, states = nc.step(xs[0], None, trained)
    want_y, want_states = numpy_ref.forward(cell, sizes, xs[:1], params)
    np.testing.assert_allclose(y, want_y[0], rtol=1e-10, atol=1e-12)
    for k in want_states:
        np.testing.assert_allclose(states[k], want_states[k], rtol=1e-10, atol=1e-12)


LOADER_CHECK = r"""
import importlib.util, sys
import numpy as np
spec = importlib.util.spec_from_file_location("stab_loader", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
data = dict(np.load(sys.argv[2]))
cell = mod.Stab("float64", input_size=int(data["I"]), hidden_size=int(data["H"]))
params = {k[2:]: v for k, v in data.items() if k.startswith("p_")}
ys, final, tape = cell.forward(data["xs"], params)
grads = cell.backward(tape, data["d_ys"])
y, _ = cell.step(data["xs"][0], None, params)
np.savez(sys.argv[3], ys=ys, y=y, **{"g_" + k: v for k, v in grads.items()})
"""


@pytest.mark.slow
def test_aot_loader_defaults(paths, tmp_path):
    """A size-generic library: the loader evaluates the state start 1/I for the sizes it is
    given, uses the hyper-parameter's default, and returns no gradient for it."""
    out = tmp_path / "lib"
    res = subprocess.run([sys.executable, "-m", "cellc", "compile", str(paths["state_init"]),
                          "--target", "llvm", "-o", str(out)], capture_output=True, text=True,
                         cwd=ROOT, timeout=600, check=False)
    assert res.returncode == 0, res.stderr
    cell = cellc.load_cell(paths["state_init"])
    for i in (I, 2):
        sizes = cell.bind(input_size=i, hidden_size=H)
        params = numpy_ref.init_params(cell, sizes, rng=0)
        rng = np.random.default_rng(4)
        xs, d_ys = rng.normal(size=(T, B, i)), rng.normal(size=(T, B, H))
        inputs = tmp_path / "in.npz"
        np.savez(inputs, xs=xs, d_ys=d_ys, I=i, H=H,
                 **{f"p_{k}": v for k, v in params.items() if k != "scale"})
        loader = next(out.glob("*.py"))
        res = subprocess.run([sys.executable, "-c", LOADER_CHECK, str(loader), str(inputs),
                              str(tmp_path / "out.npz")], capture_output=True, text=True,
                             timeout=300, check=False)
        assert res.returncode == 0, res.stderr
        got = dict(np.load(tmp_path / "out.npz"))
        want_ys, _, want = numpy_ref.backward(cell, sizes, xs, params, d_ys=d_ys)
        np.testing.assert_allclose(got["ys"], want_ys, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got["y"], want_ys[0], rtol=1e-10, atol=1e-12)
        assert {k[2:] for k in got if k.startswith("g_")} == set(want)
        for k in want:
            np.testing.assert_allclose(got["g_" + k], want[k], rtol=1e-10, atol=1e-12)


def test_spec_values_are_evaluated_per_size(paths):
    """The runtime spec's "values" argument is the broadcast array, its hyper-parameter entry
    has the default, its state_init the evaluated starts."""
    from cellc.backends.layer_spec import layer_spec

    spec = layer_spec(cellc.load_cell(paths["values"])).runtime()
    D = next(p for p in spec["params"] if p["name"] == "D")
    (value,) = D["init_args"]({"I": 3, "H": 2})
    np.testing.assert_array_equal(value, [[-0.25, 0.0, 0.25]] * 2)
    spec = layer_spec(cellc.load_cell(paths["state_init"])).runtime()
    assert spec["state_init"]({"I": 4, "H": 2}) == (0.0, -1e30, 0.25)
    (scale,) = [p for p in spec["params"] if p["kind"] == "hyper"]
    assert scale["default"] == 0.5 and scale["shape"]({"I": 4, "H": 2}) == (1,)
    assert math.isclose(spec["state_init"]({"I": 3, "H": 2})[2], 1 / 3)


def test_numpy_only_loader_names_are_importable():
    """The AOT loader pastes native_calls; its new helpers need nothing beyond the stdlib."""
    spec = importlib.util.find_spec("cellc.runtime.native_calls")
    assert spec is not None
    from cellc.runtime import native_calls

    assert native_calls._number(["div", 1.0, "I"], {"I": 4}) == 0.25
    assert native_calls._number(["log", ["sub", "H", 2.0]], {"H": 2}) is None
    assert native_calls._number(["pow", -8.0, 0.5], {}) is None


@pytest.mark.parametrize("name", list(CELLS))
def test_printed_spec_agrees_with_the_runtime_spec(paths, name):
    """The generated module's SPEC (torch and math code) gives the numbers cellc's own
    evaluation gives: state starts, defaults, initializer arguments and values."""
    from cellc.backends.layer_spec import layer_spec
    from cellc.backends.torch_src import spec_source

    spec = layer_spec(cellc.load_cell(paths[name]))
    namespace = {"math": math, "torch": torch}
    exec(compile(spec_source(spec), "<spec>", "exec"), namespace)  # our text
    printed, runtime = namespace["SPEC"], spec.runtime()
    for sizes in ({"I": 3, "H": 4}, {"I": 8, "H": 4}):
        assert printed["state_init"](sizes) == pytest.approx(runtime["state_init"](sizes))
        for got, want in zip(printed["params"], runtime["params"], strict=True):
            assert (got["name"], got["kind"], got.get("default")) == (
                want["name"], want["kind"], want.get("default"))
            for a, b in zip(got["init_args"](sizes), want["init_args"](sizes), strict=True):
                a = torch.as_tensor(a, dtype=torch.float64).expand(np.shape(b)).numpy()
                np.testing.assert_allclose(a, b, rtol=1e-15, atol=0, err_msg=got["name"])


@pytest.mark.parametrize("target", ["torch", "llvm"])
def test_masked_and_double_backward_keep_initial_states_and_frozen_slots(paths, target):
    """A mask runs the masked cell from the states' initial values; create_graph=True
    differentiates through the eager twin, where constants and hyper-parameters get no
    gradient either."""
    cell = cellc.load_cell(paths["state_init"])
    sizes = cell.bind(input_size=I, hidden_size=H)
    Layer, _ = classes(paths, "state_init", target)
    layer = Layer(I, H, dtype=torch.float64, batch_first=True)
    x = torch.randn(B, T, I, dtype=torch.float64)
    mask = torch.tensor([[True, False, True, True]] * B)
    out, _ = layer(x, mask=mask)
    ys, _ = numpy_ref.forward(cell, sizes, x.transpose(0, 1).numpy(), params_of(layer, cell),
                              mask=mask.numpy())
    close(out.transpose(0, 1), ys, "masked output")

    Layer, _ = classes(paths, "const", target)
    layer = Layer(I, H, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad((layer(x)[0] ** 2).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), layer.W_l0)
    twin, _ = classes(paths, "const", "eager")
    eager = twin(I, H, dtype=torch.float64)
    eager.load_state_dict(layer.state_dict())
    (g2,) = torch.autograd.grad((eager(x)[0] ** 2).sum(), x, create_graph=True)
    (gg2,) = torch.autograd.grad(g2.sum(), eager.W_l0)
    close(gg, gg2.numpy(), "second derivative")
    assert layer.P_l0.grad is None
