"""The NumPy reference interpreter against torch.nn.RNN / LSTM / GRU, and its argument checks.

The reference is the oracle for every other backend, so it is itself checked against an outside
implementation: the torch modules with the very same weights (the cells' parameter names are
torch's state_dict keys without the layer suffix '_l0').
"""

from __future__ import annotations

import numpy as np
import pytest

import cellc
from cellc.backends.numpy_ref import forward, init_params

from conftest import CELLS_DIR, compile_text

TORCH_MODULES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}  # cell file -> torch.nn module
# rnn.cell's nonlinearity: a hyper-parameter ([1], its choice's index), no entry of state_dict
HYPERS = {"nonlinearity"}
SHAPES = [  # (T, B, I, H)
    (1, 1, 1, 1),
    (1, 3, 4, 5),
    (5, 1, 3, 2),
    (7, 4, 6, 8),
    (12, 2, 5, 16),
]
TOL = {np.float64: 1e-10, np.float32: 1e-5}  # absolute; values are O(1)


def load(name: str):
    return cellc.load_cell(CELLS_DIR / f"{name}.cell")


def torch_run(name: str, params, xs, states, dtype):
    """torch's answer for a one-layer module with our parameters and initial states."""
    torch = pytest.importorskip("torch")  # only this comparison needs torch
    _, _, I = xs.shape
    H = states["h"].shape[1]
    tdtype = {np.float64: torch.float64, np.float32: torch.float32}[dtype]
    module = getattr(torch.nn, TORCH_MODULES[name])(I, H).to(tdtype)
    state_dict = module.state_dict()
    assert {k.removesuffix("_l0") for k in state_dict} == set(params) - HYPERS
    module.load_state_dict({k: torch.from_numpy(params[k.removesuffix("_l0")]) for k in state_dict})
    h0 = torch.from_numpy(states["h"])[None]
    with torch.no_grad():
        if name == "lstm":
            ys, (hT, cT) = module(torch.from_numpy(xs), (h0, torch.from_numpy(states["c"])[None]))
            final = {"h": hT[0].numpy(), "c": cT[0].numpy()}
        else:
            ys, hT = module(torch.from_numpy(xs), h0)
            final = {"h": hT[0].numpy()}
    return ys.numpy(), final


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=["T{}-B{}-I{}-H{}".format(*s) for s in SHAPES])
@pytest.mark.parametrize("name", sorted(TORCH_MODULES))
def test_matches_torch(name, shape, dtype):
    T, B, I, H = shape
    cell = load(name)
    sizes = cell.bind(input_size=I, hidden_size=H)
    rng = np.random.default_rng([T, B, I, H, sorted(TORCH_MODULES).index(name)])  # fixed seed
    params = init_params(cell, sizes, rng, dtype=dtype)
    xs = rng.normal(size=(T, B, I)).astype(dtype)
    # Non-zero initial states, so a backend that ignores them fails.
    states = {s.name: rng.normal(size=(B, H)).astype(dtype) for s in cell.states}

    ys, final = forward(cell, sizes, xs, params, states)
    want_ys, want_final = torch_run(name, params, xs, states, dtype)

    assert ys.dtype == dtype and ys.shape == (T, B, H)
    np.testing.assert_allclose(ys, want_ys, rtol=0, atol=TOL[dtype])
    assert sorted(final) == sorted(want_final)
    for k in final:
        assert final[k].dtype == dtype and final[k].shape == (B, H)
        np.testing.assert_allclose(final[k], want_final[k], rtol=0, atol=TOL[dtype], err_msg=k)


def test_initial_states_matter():
    # Guards the test above: if states were ignored, the outputs would not move.
    cell = load("lstm")
    sizes = cell.bind(input_size=3, hidden_size=4)
    params = init_params(cell, sizes, 0)
    xs = np.random.default_rng(1).normal(size=(3, 2, 3))
    ys0, _ = forward(cell, sizes, xs, params)
    ys1, _ = forward(cell, sizes, xs, params, {"c": np.ones((2, 4))})
    assert np.abs(ys0 - ys1).max() > 1e-3


def test_zero_initial_states_by_default():
    cell = load("gru")
    sizes = cell.bind(input_size=3, hidden_size=4)
    params = init_params(cell, sizes, 0)
    xs = np.random.default_rng(2).normal(size=(4, 2, 3))
    np.testing.assert_array_equal(
        forward(cell, sizes, xs, params)[0],
        forward(cell, sizes, xs, params, {"h": np.zeros((2, 4))})[0],
    )


# -------------------------------------------------------------------------------------------
# init_params

INITS = """\
cell Inits(input_size I, hidden_size H):
    input x[I]
    state h[H]
    param U[H, I] ~ uniform(-1/sqrt(H), 1/sqrt(H))
    param N[H, I] ~ normal(0.5, 2)
    param Q[H, H] ~ orthogonal()
    param Tall[2*H, H] ~ orthogonal(3)
    param Wide[H, 2*H] ~ orthogonal()
    param K[H] ~ constant(0.25)
    param O[H] ~ ones()
    param Z[H] ~ zeros()
    bias b[H]
    h' = tanh(U @ x + N @ x + Q @ h + Wide @ (Tall @ h) + K + O + Z + b)
    output h'
"""


@pytest.fixture(scope="module")
def inits():
    cell = compile_text(INITS)
    assert cell.warnings == ()
    sizes = cell.bind(input_size=50, hidden_size=64)
    return init_params(cell, sizes, 0), sizes


def test_init_shapes_and_dtype(inits):
    params, _ = inits
    want = {"U": (64, 50), "N": (64, 50), "Q": (64, 64), "Tall": (128, 64), "Wide": (64, 128),
            "K": (64,), "O": (64,), "Z": (64,), "b": (64,)}
    assert {k: v.shape for k, v in params.items()} == want
    assert all(v.dtype == np.float64 for v in params.values())
    cell = compile_text(INITS)
    small = cell.bind(input_size=2, hidden_size=2)
    assert init_params(cell, small, 0, np.float32)["U"].dtype == np.float32


def test_init_uniform_bounds(inits):
    u = inits[0]["U"]
    bound = 1 / np.sqrt(64)
    assert u.min() >= -bound and u.max() <= bound
    # 3200 draws fill the range: both ends are approached and the mean is near 0.
    assert u.min() < -0.95 * bound and u.max() > 0.95 * bound
    assert abs(u.mean()) < 0.05 * bound


def test_init_normal_moments(inits):
    n = inits[0]["N"]
    assert n.mean() == pytest.approx(0.5, abs=0.15)
    assert n.std() == pytest.approx(2.0, rel=0.05)


def test_init_constants(inits):
    params = inits[0]
    np.testing.assert_array_equal(params["K"], np.full(64, 0.25))
    np.testing.assert_array_equal(params["O"], np.ones(64))
    np.testing.assert_array_equal(params["Z"], np.zeros(64))
    np.testing.assert_array_equal(params["b"], np.zeros(64))  # a bias defaults to zeros()


def test_init_orthogonal(inits):
    params = inits[0]
    q, tall, wide = params["Q"], params["Tall"], params["Wide"]
    np.testing.assert_allclose(q.T @ q, np.eye(64), rtol=0, atol=1e-12)
    np.testing.assert_allclose(tall.T @ tall, 9 * np.eye(64), rtol=0, atol=1e-11)  # gain 3
    np.testing.assert_allclose(wide @ wide.T, np.eye(64), rtol=0, atol=1e-12)  # orthonormal rows
    assert not np.allclose(q, np.eye(64), atol=0.1)  # random, not the identity


def test_init_is_reproducible(inits):
    cell = compile_text(INITS)
    sizes = inits[1]
    a, b = init_params(cell, sizes, 7), init_params(cell, sizes, 7)
    c = init_params(cell, sizes, 8)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["U"], c["U"])


def test_cell_files_initializers():
    cell = load("layernorm_lstm")
    params = init_params(cell, cell.bind(input_size=3, hidden_size=4), 0)
    np.testing.assert_array_equal(params["ln_x_gain"], np.ones(16))
    np.testing.assert_array_equal(params["ln_c_bias"], np.zeros(4))
    assert np.abs(params["weight_ih"]).max() <= 0.5  # uniform(-1/sqrt(4), 1/sqrt(4))


# -------------------------------------------------------------------------------------------
# forward's argument checks


@pytest.fixture(scope="module")
def lstm_setup():
    cell = load("lstm")
    sizes = cell.bind(input_size=3, hidden_size=4)
    return cell, sizes, init_params(cell, sizes, 0), np.zeros((5, 2, 3))


def test_forward_shapes(lstm_setup):
    cell, sizes, params, xs = lstm_setup
    ys, final = forward(cell, sizes, xs, params)
    assert ys.shape == (5, 2, 4)
    assert {k: v.shape for k, v in final.items()} == {"h": (2, 4), "c": (2, 4)}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda xs, p, s: (xs[..., :2], p, s), r"xs must have shape \(T, 2, 3\), got \(5, 2, 2\)"),
        (lambda xs, p, s: (xs[0], p, s), r"xs must have shape \(T, B, features\), got \(2, 3\)"),
        (lambda xs, p, s: (xs, p, {"h": np.zeros((2, 5))}),
         r"initial state 'h' must have shape \(2, 4\), got \(2, 5\)"),
        (lambda xs, p, s: (xs, p, {"q": np.zeros((2, 4))}),
         r"unknown states \['q'\]; the cell has \['h', 'c'\]"),
        (lambda xs, p, s: (xs, {k: v for k, v in p.items() if k != "bias_hh"}, s),
         r"missing parameter 'bias_hh'"),
        (lambda xs, p, s: (xs, {**p, "weight_ih": p["weight_ih"].T}, s),
         r"parameter 'weight_ih' must have shape \(16, 3\), got \(3, 16\)"),
    ],
    ids=["xs-features", "xs-rank", "state-shape", "unknown-state", "missing-param", "param-shape"],
)
def test_forward_value_errors(lstm_setup, change, message):
    cell, sizes, params, xs = lstm_setup
    xs, params, states = change(xs, params, None)
    with pytest.raises(ValueError, match=message):
        forward(cell, sizes, xs, params, states)


@pytest.mark.parametrize("dtype", [np.int64, np.float16, np.complex128])
def test_forward_dtype_errors(lstm_setup, dtype):
    cell, sizes, params, xs = lstm_setup
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        forward(cell, sizes, xs, params, dtype=dtype)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        forward(cell, sizes, xs.astype(dtype), params)  # taken from xs when not given


def test_forward_casts_to_the_requested_dtype(lstm_setup):
    cell, sizes, params, xs = lstm_setup
    ys, final = forward(cell, sizes, xs, params, dtype=np.float32)
    assert ys.dtype == np.float32 and all(v.dtype == np.float32 for v in final.values())
