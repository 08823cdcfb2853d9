"""The previous input x[t-1], dropout and zoneout: parts of the step's input row (cellc/inputs.py).

A cell that reads x[t-1] or draws noise reads one wider row per step (x, x[t-1], one mask per
dropout/zoneout use), which the layers build before the loop: masks drawn from torch's default
generator while training (so torch.manual_seed repeats them, on both targets), at their
expectation in eval. The NumPy reference builds the same row (masks given as `noise=`, or at
their eval values), so it stays the oracle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cellc
from cellc.backends import numpy_ref
from cellc.native import NativeCell
from cellc.runtime import torch_layers
from cellc.source import CellError

ZOO = Path(__file__).resolve().parent.parent / "cells"
TARGETS = ("torch", "llvm")
T, B, I, H = 6, 3, 4, 5

# y is dropout(x): with x = 1 the output is the mask itself.
DROP = """
cell Drop(input_size I, hidden_size H, p=0.5):
    input x[I]
    state h[H]
    param W[H, I] ~ uniform(-0.5, 0.5)
    y = dropout(x, p, per={per})
    h' = h + W @ y
    output y
"""


def write(tmp_path, text, name="c.cell"):
    p = tmp_path / name
    p.write_text(text)
    return p


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def qrnn_by_hand(params, xs, c):
    """Bradbury et al.'s width-2 convolution and fo-pooling, written out in NumPy."""
    prev = np.concatenate([np.zeros_like(xs[:1]), xs[:-1]])
    ys = []
    for x, xp in zip(xs, prev):
        z, f, o = np.split(x @ params["weight_x"].T + xp @ params["weight_prev"].T
                           + params["b"], 3, axis=-1)
        c = sigmoid(f) * c + (1 - sigmoid(f)) * np.tanh(z)
        ys.append(sigmoid(o) * c)
    return np.stack(ys), c


def test_qrnn_reference_is_the_papers_recurrence():
    cell = cellc.load_cell(ZOO / "qrnn.cell")
    sizes = cell.bind(input_size=I, hidden_size=H)
    rng = np.random.default_rng(0)
    params = {k: v + 0.1 * rng.normal(size=v.shape)
              for k, v in numpy_ref.init_params(cell, sizes, rng).items()}
    xs, c0 = rng.normal(size=(T, B, I)), rng.normal(size=(B, H))
    ys, final = numpy_ref.forward(cell, sizes, xs, params, {"c": c0})
    want_ys, want_c = qrnn_by_hand(params, xs, c0)
    np.testing.assert_allclose(ys, want_ys, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(final["c"], want_c, rtol=1e-12, atol=1e-12)
    # the backward against central differences, through the shift of x[t-1]
    d_ys = rng.normal(size=ys.shape)
    _, _, grads = numpy_ref.backward(cell, sizes, xs, params, {"c": c0}, d_ys=d_ys)
    eps, dx = 1e-6, np.zeros_like(xs)
    for idx in np.ndindex(xs.shape):
        for sign in (1, -1):
            x2 = xs.copy()
            x2[idx] += sign * eps
            dx[idx] += sign * np.sum(qrnn_by_hand(params, x2, c0)[0] * d_ys) / (2 * eps)
    np.testing.assert_allclose(grads["xs"], dx, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("target", TARGETS)
def test_qrnn_layers_match_the_reference_and_gradcheck(target):
    mod = cellc.load(ZOO / "qrnn.cell", target=target)
    torch.manual_seed(0)
    m = mod.QRNN(I, H, dtype=torch.float64)
    with torch.no_grad():
        m.b_l0.normal_()
    params = {k.removesuffix("_l0"): v.detach().numpy() for k, v in m.state_dict().items()}
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    ys, c_n = m(x)
    want_ys, want_c = qrnn_by_hand(params, x.detach().numpy(), np.zeros((B, H)))
    np.testing.assert_allclose(ys.detach().numpy(), want_ys, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(c_n[0].detach().numpy(), want_c, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: m(x)[0], (x,), eps=1e-6, atol=1e-7)
    # reverse: x[t-1] is the previous input in processing order (the next one in time)
    r = mod.QRNN(I, H, reverse=True, dtype=torch.float64)
    r.load_state_dict(m.state_dict())
    flipped, _ = qrnn_by_hand(params, x.detach().numpy()[::-1], np.zeros((B, H)))
    np.testing.assert_allclose(r(x)[0].detach().numpy(), flipped[::-1], rtol=1e-10, atol=1e-12)
    # packed sequences of different lengths: each row shifts within its own sequence
    lengths = [T, 2, 4]
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(m(packed)[0])
    for b, n in enumerate(lengths):
        want, _ = qrnn_by_hand(params, x.detach().numpy()[:n, b:b + 1], np.zeros((1, H)))
        np.testing.assert_allclose(out[:n, b].detach().numpy(), want[:, 0], rtol=1e-10,
                                   atol=1e-12)


def test_previous_input_products_run_before_the_loop():
    plan = (ZOO.parent / "tests" / "golden" / "plan" / "qrnn.txt").read_text()
    before_loop = plan.split("loop t = 0..T-1")[0]  # the golden file is checked against `show`
    assert "matmul(%weight_prev, %x_prev" in before_loop and "matmul(%weight_x, %x" in before_loop


@pytest.mark.parametrize("per", ["step", "sequence"])
def test_dropout_masks(tmp_path, per):
    path = write(tmp_path, DROP.format(per=per))
    outs = {}
    for target in TARGETS:
        m = cellc.load(path, target=target).Drop(I, H, dtype=torch.float64)
        x = torch.ones(50, 8, I, dtype=torch.float64, requires_grad=True)
        torch.manual_seed(3)
        y = m(x)[0]
        y.sum().backward()
        values = set(y.detach().unique().tolist())
        assert values == {0.0, 2.0}, values  # inverted dropout at p = 0.5
        assert 0.4 < (y == 0).double().mean() < 0.6
        if per == "sequence":  # one mask per sequence and feature, the same at every step
            assert (y == y[:1]).all()
        else:
            assert not (y == y[:1]).all()
        torch.testing.assert_close(x.grad, y.detach(), rtol=0, atol=0)  # the same masks
        outs[target] = y.detach()
        m.eval()
        torch.testing.assert_close(m(x)[0], x, rtol=0, atol=0)  # none in eval
        m.train()
        m.p = 0.0
        torch.testing.assert_close(m(x)[0], x, rtol=0, atol=0)
        m.p = 1.0
        with pytest.raises(ValueError, match=r"Drop: p must be in \[0, 1\), got 1.0"):
            m(x)
    torch.testing.assert_close(outs["torch"], outs["llvm"], rtol=0, atol=0)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ["zoneout_lstm", "variational_lstm"])
def test_rate_zero_is_torch_lstm(target, name):
    """With every rate 0 the regularized LSTMs are torch.nn.LSTM, in training too."""
    mod = cellc.load(ZOO / f"{name}.cell", target=target)
    Layer = next(getattr(mod, n) for n in ("ZoneoutLSTM", "VariationalLSTM") if hasattr(mod, n))
    rates = ({"zoneout_c": 0.0, "zoneout_h": 0.0} if name == "zoneout_lstm"
             else {"dropout_x": 0.0, "dropout_h": 0.0})
    torch.manual_seed(0)
    ref = torch.nn.LSTM(I, H, num_layers=2, dtype=torch.float64)
    ours = Layer(I, H, num_layers=2, dtype=torch.float64, **rates)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    (y1, (_, c1)), (y2, (_, c2)) = ref(x), ours(x)
    torch.testing.assert_close(y2, y1, rtol=1e-10, atol=1e-10)
    g1 = torch.autograd.grad(y1.sum() + c1.sum(), [x, *ref.parameters()])
    g2 = torch.autograd.grad(y2.sum() + c2.sum(), [x, *ours.parameters()])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("target", TARGETS)
def test_zoneout_training_is_the_reference_with_the_drawn_masks(target):
    """A training forward draws its masks from torch's generator as input_row does; given
    those masks the NumPy reference gives the same outputs and gradients."""
    cell = cellc.load_cell(ZOO / "zoneout_lstm.cell")
    sizes = cell.bind(input_size=I, hidden_size=H)
    m = cellc.load(ZOO / "zoneout_lstm.cell", target=target).ZoneoutLSTM(
        I, H, zoneout_c=0.3, zoneout_h=0.2, dtype=torch.float64)
    params = {k.removesuffix("_l0"): v.detach().numpy() for k, v in m.state_dict().items()}
    params |= {"zoneout_c": np.array([0.3]), "zoneout_h": np.array([0.2])}
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(11)
    ys, (_, c_n) = m(x)
    torch.manual_seed(11)
    parts = m._spec.input_parts
    widths = [p["size"](sizes) for p in parts]
    row = torch_layers.input_row(parts, x.detach(), widths, [0.0, 0.3, 0.2], True)
    cols = np.split(row.numpy(), np.cumsum(widths)[:-1], axis=2)
    noise = {p["name"]: c for p, c in zip(parts[1:], cols[1:])}
    assert set(np.unique(cols[1])) == {0.0, 1.0}
    d_ys = np.random.default_rng(1).normal(size=(T, B, H))
    want_ys, want_final, want = numpy_ref.backward(cell, sizes, x.detach().numpy(), params,
                                                   d_ys=d_ys, noise=noise)
    np.testing.assert_allclose(ys.detach().numpy(), want_ys, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(c_n[0].detach().numpy(), want_final["c"], rtol=1e-10, atol=1e-12)
    (ys * torch.from_numpy(d_ys)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), want["xs"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m.weight_hh_l0.grad.numpy(), want["weight_hh"], rtol=1e-10,
                               atol=1e-12)
    # eval: the expectation p * old + (1 - p) * new, as the reference without noise
    m.eval()
    ys_eval = m(x)[0].detach().numpy()
    np.testing.assert_allclose(ys_eval, numpy_ref.forward(cell, sizes, x.detach().numpy(),
                                                          params)[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("target", TARGETS)
def test_keras_mask_and_the_generated_module(target):
    """A regularized cell under a Keras mask: the row, then the mask column, both appended."""
    cell = cellc.load_cell(ZOO / "zoneout_lstm.cell")
    sizes = cell.bind(input_size=I, hidden_size=H)
    m = cellc.load(ZOO / "zoneout_lstm.cell", target=target).ZoneoutLSTM(
        I, H, dtype=torch.float64).eval()
    params = {k.removesuffix("_l0"): v.detach().numpy() for k, v in m.state_dict().items()}
    x = torch.randn(B, T, I, dtype=torch.float64)
    mask = torch.rand(B, T) > 0.3
    m.batch_first = True
    ys = m(x, mask=mask)[0].detach().numpy()
    want, _ = numpy_ref.forward(cell, sizes, x.numpy().transpose(1, 0, 2), params,
                                mask=mask.numpy())
    np.testing.assert_allclose(ys, want.transpose(1, 0, 2), rtol=1e-10, atol=1e-12)
    if target == "torch":
        src = cellc.torch_source(ZOO / "zoneout_lstm.cell")
        assert "\"input_parts\": [" in src and "'zoneout_c'" in src


def test_the_cell_class_steps_with_fresh_masks_and_refuses_x_prev():
    mod = cellc.load(ZOO / "zoneout_lstm.cell", target="torch")
    c = mod.ZoneoutLSTMCell(I, H, zoneout_c=0.0, zoneout_h=0.0, dtype=torch.float64)
    ref = torch.nn.LSTMCell(I, H, dtype=torch.float64)
    c.load_state_dict(ref.state_dict())
    x = torch.randn(B, I, dtype=torch.float64)
    torch.testing.assert_close(c(x), ref(x), rtol=1e-10, atol=1e-10)
    with pytest.raises(TypeError, match=r"QRNNCell: the cell reads the previous input x\[t-1\]"):
        cellc.load(ZOO / "qrnn.cell", target="torch").QRNNCell(I, H)


def test_grad_names_the_row():
    text = cellc.grad_equations(ZOO / "zoneout_lstm.cell")
    assert ("# The step's input row also holds: zoneout_mask (a zoneout mask), zoneout_mask0"
            " (a zoneout mask); masks are constants (no cotangent).") in text
    assert "x_prev (x[t-1])" in cellc.grad_equations(ZOO / "qrnn.cell")


def test_native_cell_refuses_with_a_located_error():
    with pytest.raises(CellError, match=r"qrnn.cell:7:12: error: NativeCell runs cells whose"
                                        r" step reads only its input; this one reads the"
                                        r" previous input"):
        NativeCell(ZOO / "qrnn.cell", "float64", input_size=I, hidden_size=H)


HEADER = "cell C(input_size I, hidden_size H, p=0.1, act in (tanh, relu)):\n"
BODY = "    input x[I]\n    state h[H]\n    param W[H, I] ~ uniform(-0.5, 0.5)\n"


@pytest.mark.parametrize("line, want", [
    ("h' = h + W @ x[t-2]", "5:20: error: the only index is the previous step, x[t-1]"),
    ("h' = h + W @ x[t]", "5:20: error: the only index is the previous step, x[t-1]"),
    ("h' = h[t-1] + W @ x", "5:10: error: only the input has earlier steps: 'h[t-1]' needs"
                            " the input 'x'"),
    ("h' = h[0] + W @ x", "5:10: error: 'h' cannot be indexed"),
    ("h' = dropout(h, 1.0) + W @ x", "5:21: error: the rate of dropout must be in [0, 1), not 1"),
    ("h' = dropout(h, H) + W @ x", "5:21: error: the rate of dropout is a number or a"
                                   " hyper-parameter"),
    ("h' = dropout(h, act) + W @ x", "5:21: error: the rate of dropout is a number"),
    ("h' = dropout(h, p, per=batch) + W @ x", "5:28: error: per is step (a fresh mask each"
                                              " step, the default) or sequence"),
    ("h' = dropout(h, p, every=step) + W @ x", "5:24: error: dropout takes no keyword argument"
                                               " 'every'; dropout takes per=step or"),
    ("h' = zoneout(h, p, per=step) + W @ x", "5:24: error: zoneout takes no keyword argument"
                                             " 'per'"),
    ("h' = zoneout(W @ x, x, p)", "5:10: error: zoneout: the new value [B,H] and the old [B,I]"
                                  " must have the same shape"),
    ("h' = zoneout(W @ x, h)", "5:10: error: zoneout takes 3 arguments, not 2: zoneout(new,"
                               " old, p)"),
    ("h' = h + dropout(W, p) @ x", "5:22: error: dropout masks a per-example vector, not"
                                   " [H,I]"),
    ("h' = tanh(h, per=step) + W @ x", "5:18: error: tanh takes no keyword argument 'per'"),
    ("h' = dropout(h, p, per=step, per=step) + W @ x", "5:34: error: keyword argument 'per' is"
                                                       " given twice"),
    ("a, b = split(W @ x, 2, per=step)\n    h' = h", "5:28: error: split takes no keyword"
                                                    " argument 'per'"),
])
def test_mistakes_are_located(tmp_path, line, want):
    path = write(tmp_path, HEADER + BODY + f"    {line}\n    output h'\n", "x.cell")
    with pytest.raises(CellError) as info:
        cellc.load_cell(path)
    assert f"x.cell:{want}" in str(info.value), str(info.value)


def test_initializers_cannot_read_the_previous_input(tmp_path):
    path = write(tmp_path, HEADER + "    input x[I]\n    state h[H]\n"
                 "    param W[H, I] ~ constant(x[t-1])\n    h' = h + W @ x\n    output h'\n",
                 "x.cell")
    with pytest.raises(CellError, match=r"x.cell:4:30: error: 'x\[t-1\]' cannot be used in"
                                        r" initializer arguments"):
        cellc.load_cell(path)


@pytest.mark.parametrize("target", TARGETS)
def test_a_bad_rate_is_refused_when_the_layer_is_built(target):
    mod = cellc.load(ZOO / "zoneout_lstm.cell", target=target)
    with pytest.raises(ValueError, match=r"ZoneoutLSTM: zoneout_c must be in \[0, 1\), got 1.5"):
        mod.ZoneoutLSTM(I, H, zoneout_c=1.5)


@pytest.mark.parametrize("target", TARGETS)
def test_torch_compile_fullgraph_builds_the_row(target):
    m = cellc.load(ZOO / "qrnn.cell", target=target).QRNN(I, H, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x)[0], m(x)[0], rtol=0, atol=1e-12)
