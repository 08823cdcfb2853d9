"""Optional sizes: `proj_size P = 0` in the header, `P or H` in sizes, `A if P else B` in values.

A cell with an optional size has two forms (cellc/variants.py): at 0 the declarations it sizes
are absent and the conditionals take their else branch. cells/lstm.cell uses one for
torch.nn.LSTM's proj_size; tests/test_torch_module_db.py runs torch's own proj_size samples.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cellc
from cellc import variants
from cellc.backends import cache, numpy_ref
from cellc.native import NativeCell
from cellc.source import CellError

ZOO = Path(__file__).resolve().parent.parent / "cells"
LSTM = ZOO / "lstm.cell"
TARGETS = ("torch", "llvm")
T, B, I, H, P = 5, 3, 4, 6, 2


def test_the_two_forms():
    cell = cellc.load_cell(LSTM)
    assert cell.zero == {"P"} and [p.name for p in cell.params] == [
        "weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    assert cell.bind(input_size=I, hidden_size=H) == {"I": I, "H": H}
    other = variants.variant(cell, {"I": I, "H": H, "P": P})
    assert other.zero == frozenset() and other.params[-1].name == "weight_hr"
    assert [str(s.type) for s in other.states] == ["[B,P]", "[B,H]"]
    assert other.bind(input_size=I, hidden_size=H, proj_size=P)["P"] == P
    assert variants.variant(other, {"P": 0}).zero == {"P"}
    assert variants.variant(cell, {"P": 3}) is other  # cached
    # the kernel caches keep the forms apart (the generic kernels too, keyed without sizes)
    assert cache.cache_key(other, None, "float32", "fwd") != cache.cache_key(
        cell, None, "float32", "fwd")
    with pytest.raises(ValueError, match="this form of the cell has proj_size 0"):
        cell.bind(input_size=I, hidden_size=H, proj_size=P)
    with pytest.raises(ValueError, match="proj_size must be 0 \\(none\\) or positive, got -1"):
        cell.bind(input_size=I, hidden_size=H, proj_size=-1)


def lstm_by_hand(params, xs, h, c):
    """torch.nn.LSTM with projections (Sak et al. 2014), in NumPy."""
    sig = lambda z: 1 / (1 + np.exp(-z))
    ys = []
    for x in xs:
        i, f, g, o = np.split(x @ params["weight_ih"].T + params["bias_ih"]
                              + h @ params["weight_hh"].T + params["bias_hh"], 4, axis=-1)
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = (sig(o) * np.tanh(c)) @ params["weight_hr"].T
        ys.append(h)
    return np.stack(ys), h, c


def test_reference_and_native_cell_with_a_projection():
    cell = cellc.load_cell(LSTM)
    sizes = {"I": I, "H": H, "P": P}
    rng = np.random.default_rng(0)
    params = numpy_ref.init_params(cell, sizes, rng)  # the form of these sizes
    assert params["weight_hr"].shape == (P, H) and params["weight_hh"].shape == (4 * H, P)
    xs, h0, c0 = rng.normal(size=(T, B, I)), rng.normal(size=(B, P)), rng.normal(size=(B, H))
    ys, final = numpy_ref.forward(cell, sizes, xs, params, {"h": h0, "c": c0})
    want_ys, _, want_c = lstm_by_hand(params, xs, h0, c0)
    np.testing.assert_allclose(ys, want_ys, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(final["c"], want_c, rtol=1e-12, atol=1e-12)
    d_ys = rng.normal(size=ys.shape)
    _, _, grads = numpy_ref.backward(cell, sizes, xs, params, {"h": h0, "c": c0}, d_ys=d_ys)
    eps, num = 1e-6, np.zeros_like(params["weight_hr"])
    for idx in np.ndindex(num.shape):
        for sign in (1, -1):
            q = {**params, "weight_hr": params["weight_hr"].copy()}
            q["weight_hr"][idx] += sign * eps
            num[idx] += sign * np.sum(lstm_by_hand(q, xs, h0, c0)[0] * d_ys) / (2 * eps)
    np.testing.assert_allclose(grads["weight_hr"], num, rtol=1e-6, atol=1e-9)
    nc = NativeCell(cell, "float64", input_size=I, hidden_size=H, proj_size=P)
    got_ys, _, tape = nc.forward(xs, params, {"h": h0, "c": c0})
    np.testing.assert_allclose(got_ys, ys, rtol=1e-10, atol=1e-12)
    got = nc.backward(tape, d_ys)
    for k in grads:
        np.testing.assert_allclose(got[k], grads[k], rtol=1e-9, atol=1e-11, err_msg=k)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_layers_match_torch_lstm_with_projections(target, dtype):
    mod = cellc.load(LSTM, target=target)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P, dtype=dtype)
    ours = mod.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P, dtype=dtype)
    assert list(ours.state_dict()) == list(ref.state_dict()) and repr(ours) == repr(ref)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    hx = (torch.randn(4, B, P, dtype=dtype), torch.randn(4, B, H, dtype=dtype))
    (y1, (h1, c1)), (y2, (h2, c2)) = ref(x, hx), ours(x, hx)
    for a, b in ((y1, y2), (h1, h2), (c1, c2)):
        torch.testing.assert_close(b, a, rtol=tol, atol=tol)
    g1 = torch.autograd.grad((y1 ** 2).sum() + c1.sum(), [x, *ref.parameters()])
    g2 = torch.autograd.grad((y2 ** 2).sum() + c2.sum(), [x, *ours.parameters()])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, a, rtol=tol, atol=tol)
    # the same class without a projection: no weight_hr, h of hidden_size
    plain = mod.LSTM(I, H, dtype=dtype)
    assert "weight_hr_l0" not in plain.state_dict() and plain(x)[1][0].shape == (1, B, H)
    # the cell class takes proj_size as a keyword (torch.nn.LSTMCell has none)
    cell = mod.LSTMCell(I, H, proj_size=P, dtype=dtype)
    h, c = cell(x[0])
    assert h.shape == (B, P) and c.shape == (B, H) and repr(cell) == "LSTMCell(4, 6, proj_size=2)"


def test_generated_module_holds_both_forms():
    src = cellc.torch_source(LSTM)
    assert "def lstm_proj_size_forward(" in src and "def lstm_forward(" in src
    assert "\"optional_sizes\": ['proj_size']," in src
    assert "\"absent_when_zero\": 'P'," in src


def test_cli_shows_and_compiles_either_form(tmp_path):
    def show(*sizes):
        return subprocess.run([sys.executable, "-m", "cellc", "show", str(LSTM), "--emit", "plan",
                               "--sizes", ",".join(sizes)], capture_output=True, text=True,
                              check=True).stdout

    plain, projected = show("input_size=4", "hidden_size=6"), show(
        "input_size=4", "hidden_size=6", "proj_size=2")
    assert "weight_hr" not in plain and "matmul(%weight_hr" in projected


HEAD = "cell C(input_size I, hidden_size H, proj_size P = 0):\n    input x[I]\n"


@pytest.mark.parametrize("body, want", [
    ("    state h[P or H]\n    param W[H, I], R[P, H]\n    h' = R @ (W @ x)\n",
     "5:10: error: 'R' is absent when proj_size is 0 (it is sized by P): read it only where P"
     " is not 0"),
    ("    state h[P]\n    h' = h\n", "3:13: error: state 'h' would have no features when P is 0;"
                                     " size it as in h[P or H]"),
    ("    state h[H or P]\n    h' = h\n", "3:13: error: 'or' tests an optional size of the"
                                          " header (as P in proj_size P = 0): write P or H"),
    ("    state h[H]\n    h' = h if H else x\n", "4:15: error: 'if' tests an optional size"),
    ("    state h[H]\n    h' = h or h\n", "4:10: error: 'or' picks between sizes (P or H);"
                                          " between values, write A if P else B"),
])
def test_mistakes_are_located(tmp_path, body, want):
    p = tmp_path / "x.cell"
    p.write_text(HEAD + body + "    output h'\n")
    with pytest.raises(CellError) as info:
        cellc.load_cell(p)
    assert f"x.cell:{want}" in str(info.value), str(info.value)


@pytest.mark.parametrize("header, want", [
    ("cell C(input_size I, hidden_size H, proj_size P = 1):", "1:51: error: an optional size"
                                                             " defaults to 0 (none)"),
    ("cell C(input_size I, hidden_size H, proj_size P = 0, other_size Q = 0):",
     "1:54: error: a cell has at most one optional size"),
])
def test_header_mistakes_are_located(tmp_path, header, want):
    p = tmp_path / "x.cell"
    p.write_text(header + "\n    input x[I]\n    state h[H]\n    h' = h\n    output h'\n")
    with pytest.raises(CellError) as info:
        cellc.load_cell(p)
    assert f"x.cell:{want}" in str(info.value), str(info.value)


def test_both_forms_of_one_module_run_on_generic_kernels(monkeypatch):
    """The size-generic kernels (what a layer runs first by default): their cache key has no
    sizes, so only the step's IR tells the two forms apart."""
    monkeypatch.setenv("CELLC_SPECIALIZE", "never")
    m = cellc.load(LSTM, target="llvm")
    torch.manual_seed(0)
    x = torch.randn(T, B, I, dtype=torch.float64)
    for proj in (0, P):
        ref = torch.nn.LSTM(I, H, proj_size=proj, dtype=torch.float64)
        ours = m.LSTM(I, H, proj_size=proj, dtype=torch.float64)
        ours.load_state_dict(ref.state_dict())
        torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-10, atol=1e-10)
