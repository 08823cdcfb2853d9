"""Reverse time (`reverse=True`) and Keras masks (`layer(x, mask=m)`) on every runtime.

The NumPy reference is the oracle: its `mask` is checked against a plain step loop written here,
its `lengths` against each sequence run alone; the layers of both targets (and the eager
interpreter's) are checked against it in float64 to 1e-10: outputs, final states and the
gradients of the input, the initial states and every parameter. `reverse=True` must equal the
reverse half of a bidirectional torch.nn.LSTM after renaming its `_reverse` weights, and the
native and AOT cells must run backwards the same way.
"""

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import cellc
from cellc.backends import numpy_ref
from cellc.backends.torch_eager import load_eager
from cellc.ir import Scan
from cellc.masking import masked
from cellc.pipeline import optimized_forward

CELLS = Path(__file__).resolve().parent.parent / "cells"
T, B, I, H = 6, 3, 3, 4
MASK = np.array([[1, 0, 1, 1, 0, 1],   # holes
                 [0, 0, 1, 0, 1, 1],   # starts masked: zeros first
                 [1, 1, 1, 1, 1, 0]], dtype=bool)
TARGETS = ["torch", "llvm", "eager"]


def _cell(name):
    return cellc.load_cell(CELLS / f"{name}.cell")


def _classes(name, target):
    if target == "eager":
        return load_eager(CELLS / f"{name}.cell")
    mod = cellc.load(CELLS / f"{name}.cell", target=target)
    return mod.Layer, mod.Cell


def _params(layer, suffix=""):
    return {p: getattr(layer, f"{p}_l0{suffix}").detach().numpy()
            for p in (q.name for q in _cell(type(layer).__name__.lower()).params)}


# ---------------------------------------------------------------------------------------------
# The reference


def _step_loop(cell, sizes, xs, params, mask):
    """Keras semantics, written out: one forward of one step at a time, then the select."""
    states = {s.name: np.zeros((xs.shape[1], int(s.type.shape[0].evaluate(sizes))))
              for s in cell.states}
    y_prev, ys = None, []
    for t in range(xs.shape[0]):
        y, new = numpy_ref.forward(cell, sizes, xs[t : t + 1], params, states=states)
        m = mask[:, t][:, None]
        states = {k: np.where(m, new[k], v) for k, v in states.items()}
        y_prev = np.where(m, y[0], 0.0 if y_prev is None else y_prev)
        ys.append(y_prev)
    return np.stack(ys), states


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn"])
def test_reference_mask_is_the_step_loop(name):
    cell = _cell(name)
    sizes = cell.bind(input_size=I, hidden_size=H)
    params = numpy_ref.init_params(cell, sizes, 0)
    xs = np.random.default_rng(1).standard_normal((T, B, I))
    ys, final = numpy_ref.forward(cell, sizes, xs, params, mask=MASK)
    ys_ref, final_ref = _step_loop(cell, sizes, xs, params, MASK)
    np.testing.assert_array_equal(ys, ys_ref)  # `where` selects: exact
    assert ys[0, 1].max() == 0 and ys[1, 1].max() == 0  # before the first unmasked step
    for k in final_ref:
        np.testing.assert_array_equal(final[k], final_ref[k])
    ys_b, final_b, _ = numpy_ref.backward(cell, sizes, xs, params, mask=MASK)
    np.testing.assert_array_equal(ys_b, ys)
    assert sorted(final_b) == sorted(final)


def test_reference_lengths_run_each_sequence_alone():
    cell = _cell("lstm")
    sizes = cell.bind(input_size=I, hidden_size=H)
    params = numpy_ref.init_params(cell, sizes, 0)
    rng = np.random.default_rng(2)
    xs, d_ys = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, H))
    lengths = [6, 2, 0]
    ys, final, grads = numpy_ref.backward(cell, sizes, xs, params, lengths=lengths, d_ys=d_ys)
    for b, n in enumerate(lengths):
        assert np.all(ys[n:, b] == 0)
        if n == 0:
            assert np.all(final["h"][b] == 0) and np.all(grads["xs"][:, b] == 0)
            continue
        y1, f1, g1 = numpy_ref.backward(cell, sizes, xs[:n, b : b + 1], params,
                                        d_ys=d_ys[:n, b : b + 1])
        np.testing.assert_allclose(ys[:n, b], y1[:, 0], atol=1e-14)
        np.testing.assert_allclose(final["c"][b], f1["c"][0], atol=1e-14)
        np.testing.assert_allclose(grads["xs"][:n, b], g1["xs"][:, 0], atol=1e-14)
        assert np.all(grads["xs"][n:, b] == 0)
    with pytest.raises(ValueError, match="lengths or mask"):
        numpy_ref.forward(cell, sizes, xs, params, lengths=lengths, mask=MASK)
    with pytest.raises(ValueError, match="bool array of shape"):
        numpy_ref.forward(cell, sizes, xs, params, mask=MASK.T)


# ---------------------------------------------------------------------------------------------
# Layers against the reference


def _layer_grads(layer, x, h0, d_ys, **kw):
    x = x.clone().requires_grad_()
    h0 = [h.clone().requires_grad_() for h in h0]
    y, hn = layer(x, tuple(h0) if len(h0) > 1 else h0[0], **kw)
    (y * d_ys).sum().backward()
    hn = hn if isinstance(hn, tuple) else (hn,)
    return y.detach(), [h.detach() for h in hn], x.grad, [h.grad for h in h0]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_masked_layer_matches_the_reference(name, target):
    Layer, _ = _classes(name, target)
    cell = _cell(name)
    sizes = cell.bind(input_size=I, hidden_size=H)
    torch.manual_seed(0)
    layer = Layer(I, H, batch_first=True).double()
    rng = np.random.default_rng(3)
    xs = rng.standard_normal((T, B, I))
    d_ys = rng.standard_normal((T, B, H))
    h0 = {s.name: rng.standard_normal((B, H)) for s in cell.states}
    params = _params(layer)
    ys, final, grads = numpy_ref.backward(cell, sizes, xs, params, states=h0, d_ys=d_ys,
                                          mask=MASK)
    x = torch.tensor(xs).transpose(0, 1)  # batch_first; the mask is (B, T) either way
    y, hn, dx, dh0 = _layer_grads(layer, x, [torch.tensor(h0[s.name])[None] for s in cell.states],
                                  torch.tensor(d_ys).transpose(0, 1), mask=torch.tensor(MASK))
    np.testing.assert_allclose(y.transpose(0, 1).numpy(), ys, atol=1e-10)
    np.testing.assert_allclose(dx.transpose(0, 1).numpy(), grads["xs"], atol=1e-10)
    for k, s in enumerate(cell.states):
        np.testing.assert_allclose(hn[k][0].numpy(), final[s.name], atol=1e-10)
        np.testing.assert_allclose(dh0[k][0].numpy(), grads[s.name], atol=1e-10)
    for p in params:
        np.testing.assert_allclose(getattr(layer, f"{p}_l0").grad.numpy(), grads[p], atol=1e-10)


@pytest.mark.parametrize("target", TARGETS)
def test_packed_layer_matches_the_reference_lengths(target):
    Layer, _ = _classes("lstm", target)
    cell = _cell("lstm")
    sizes = cell.bind(input_size=I, hidden_size=H)
    layer = Layer(I, H).double()
    xs = np.random.default_rng(4).standard_normal((T, B, I))
    lengths = [4, 6, 1]
    ys, final = numpy_ref.forward(cell, sizes, xs, _params(layer), lengths=lengths)
    out, (_, c) = layer(pack_padded_sequence(torch.tensor(xs), lengths, enforce_sorted=False))
    y, _ = pad_packed_sequence(out, total_length=T)
    np.testing.assert_allclose(y.detach().numpy(), ys, atol=1e-10)
    np.testing.assert_allclose(c[0].detach().numpy(), final["c"], atol=1e-10)


@pytest.mark.parametrize("target", TARGETS)
def test_bidirectional_mask_reverses_x_and_mask_together(target):
    Layer, _ = _classes("gru", target)
    cell = _cell("gru")
    sizes = cell.bind(input_size=I, hidden_size=H)
    layer = Layer(I, H, num_layers=2, bidirectional=True).double()
    xs = np.random.default_rng(5).standard_normal((T, B, I))
    y, h_n = layer(torch.tensor(xs), mask=torch.tensor(MASK))
    fwd, f_fin = numpy_ref.forward(cell, sizes, xs, _params(layer), mask=MASK)
    bwd, b_fin = numpy_ref.forward(cell, sizes, xs[::-1], _params(layer, "_reverse"),
                                   mask=MASK[:, ::-1])
    np.testing.assert_allclose(h_n[0].detach().numpy(), f_fin["h"], atol=1e-10)
    np.testing.assert_allclose(h_n[1].detach().numpy(), b_fin["h"], atol=1e-10)
    # layer 1 reads layer 0's outputs (the reverse ones back in input order), with the mask
    top = Layer(2 * H, H, bidirectional=True).double()
    top.load_state_dict({k.replace("_l1", "_l0"): v for k, v in layer.state_dict().items()
                         if "_l1" in k})
    below = torch.tensor(np.concatenate([fwd, bwd[::-1]], axis=2))
    y_top, h_top = top(below, mask=torch.tensor(MASK))
    torch.testing.assert_close(y, y_top, atol=1e-10, rtol=0)
    torch.testing.assert_close(h_n[2:], h_top, atol=1e-10, rtol=0)


@pytest.mark.parametrize("target", TARGETS)
def test_mask_errors(target):
    Layer, _ = _classes("lstm", target)
    layer = Layer(I, H).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    with pytest.raises(TypeError, match="bool tensor"):
        layer(x, mask=torch.ones(B, T))
    with pytest.raises(ValueError, match=r"shape \[3, 6\]"):
        layer(x, mask=torch.ones(T, B, dtype=torch.bool))
    with pytest.raises(ValueError, match="PackedSequence of different lengths"):
        layer(pack_padded_sequence(x, [6, 5, 2]), mask=torch.ones(B, T, dtype=torch.bool))
    # trivial: every sequence has full length
    packed = pack_padded_sequence(x, [T] * B)
    m = torch.tensor(MASK)
    y_packed, _ = layer(packed, mask=m)
    y, _ = layer(x, mask=m)
    torch.testing.assert_close(pad_packed_sequence(y_packed)[0], y)
    # unbatched: a (T,) mask
    y1, _ = layer(x[:, 0], mask=m[0])
    torch.testing.assert_close(y1, y[:, 0])


def test_unmasked_steps_of_an_all_true_mask_are_the_plain_layer():
    Layer, _ = _classes("lstm", "llvm")
    layer = Layer(I, H).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    y, (_, c) = layer(x)
    y_m, (_, c_m) = layer(x, mask=torch.ones(B, T, dtype=torch.bool))
    torch.testing.assert_close(y_m, y, atol=1e-13, rtol=0)
    torch.testing.assert_close(c_m, c, atol=1e-13, rtol=0)


def test_masked_cell_keeps_the_input_product_out_of_the_loop():
    """split(xin, [I, 1]) reads only the input: hoisting still makes weight_ih @ x one product
    over all T*B rows before the loop."""
    fwd = optimized_forward(masked(_cell("lstm")))
    outside = [i for i in fwd.body if i.op == "matmul"]
    assert [i.args[0].name for i in outside] == ["weight_ih"]
    step = Scan.of(next(i for i in fwd.body if i.op == "scan")).step
    assert [i.args[0].name for i in step.body if i.op == "matmul"] == ["weight_hh"]


# ---------------------------------------------------------------------------------------------
# Reverse time


def _torch_reverse_half(target, dtype=torch.float64):
    Layer, _ = _classes("lstm", target)
    ref = torch.nn.LSTM(I, H, bidirectional=True).to(dtype)
    layer = Layer(I, H, reverse=True).to(dtype)
    layer.load_state_dict({k.removesuffix("_reverse"): v for k, v in ref.state_dict().items()
                           if k.endswith("_reverse")})
    return ref, layer


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_reverse_layer_is_the_reverse_half_of_a_bidirectional_torch_layer(target, packed):
    ref, layer = _torch_reverse_half(target)
    assert "reverse=True" in repr(layer)
    assert not any("reverse" in k for k in layer.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    inp = pack_padded_sequence(x, [3, 6, 1], enforce_sorted=False) if packed else x
    y, (h, c) = layer(inp)
    y_ref, (h_ref, c_ref) = ref(inp)
    if packed:
        y, y_ref = pad_packed_sequence(y)[0], pad_packed_sequence(y_ref)[0]
    torch.testing.assert_close(y, y_ref[..., H:], atol=1e-10, rtol=0)
    torch.testing.assert_close((h, c), (h_ref[1:], c_ref[1:]), atol=1e-10, rtol=0)
    (y.sum() + c.sum()).backward()
    (y_ref[..., H:].sum() + c_ref[1:].sum()).backward()
    for name, w in layer.named_parameters():
        torch.testing.assert_close(w.grad, getattr(ref, name + "_reverse").grad, atol=1e-10,
                                   rtol=0)


@pytest.mark.parametrize("target", TARGETS)
def test_reverse_with_mask_and_errors(target):
    Layer, _ = _classes("lstm", target)
    with pytest.raises(ValueError, match="bidirectional"):
        Layer(I, H, bidirectional=True, reverse=True)
    with pytest.raises(TypeError, match="reverse should be of type bool"):
        Layer(I, H, reverse=1)
    with pytest.raises(TypeError):
        Layer(I, H, False, False, False, 0.0, False, None, None, True)  # keyword-only
    cell = _cell("lstm")
    sizes = cell.bind(input_size=I, hidden_size=H)
    layer = Layer(I, H, reverse=True).double()
    xs = np.random.default_rng(6).standard_normal((T, B, I))
    y, (_, c) = layer(torch.tensor(xs), mask=torch.tensor(MASK))
    ys, final = numpy_ref.forward(cell, sizes, xs[::-1], _params(layer), mask=MASK[:, ::-1])
    np.testing.assert_allclose(y.detach().numpy(), ys[::-1], atol=1e-10)
    np.testing.assert_allclose(c[0].detach().numpy(), final["c"], atol=1e-10)


def test_native_reverse_matches_the_reverse_layer():
    _, layer = _torch_reverse_half("llvm")
    mod = cellc.load(CELLS / "lstm.cell", target="llvm")
    native = mod.native(input_size=I, hidden_size=H, dtype="float64", reverse=True)
    params = {n: w.detach().numpy() for n, w in layer.named_parameters()
              if n.endswith("_l0")}
    params = {n.removesuffix("_l0"): w for n, w in params.items()}
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    lengths = [3, 6, 1]
    y, (_, c) = layer(pack_padded_sequence(x, lengths, enforce_sorted=False))
    y = pad_packed_sequence(y, total_length=T)[0]
    d_ys = torch.randn_like(y)
    (y * d_ys).sum().backward()
    ys, final, tape = native.forward(x.detach().numpy(), params, lengths=lengths)
    np.testing.assert_allclose(ys, y.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(final["c"], c[0].detach().numpy(), atol=1e-12)
    grads = native.backward(tape, d_ys.numpy())
    np.testing.assert_allclose(grads["xs"], x.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(grads["weight_hh"], layer.weight_hh_l0.grad.numpy(), atol=1e-12)
    with pytest.raises(TypeError, match="reverse must be a bool"):
        mod.native(input_size=I, hidden_size=H, reverse="yes")


@pytest.mark.slow
def test_aot_loader_reverse(tmp_path):
    import importlib.util

    from cellc.backends import aot

    cell = _cell("lstm")
    aot.build(cell, None, tmp_path)
    spec = importlib.util.spec_from_file_location("lstm_rev_loader", tmp_path / "lstm.py")
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    loaded = loader.LSTM(input_size=I, hidden_size=H, dtype="float64", reverse=True)
    native = cellc.native.NativeCell(cell, dtype="float64", reverse=True,
                                     input_size=I, hidden_size=H)
    params = native.init_params(rng=0)
    xs = np.random.default_rng(7).standard_normal((T, B, I))
    ys, final, tape = loaded.forward(xs, params, lengths=[2, 6, 5])
    ys_n, final_n, tape_n = native.forward(xs, params, lengths=[2, 6, 5])
    np.testing.assert_allclose(ys, ys_n, atol=1e-12)
    np.testing.assert_allclose(final["h"], final_n["h"], atol=1e-12)
    d_ys = np.ones_like(ys)
    np.testing.assert_allclose(loaded.backward(tape, d_ys)["xs"],
                               native.backward(tape_n, d_ys)["xs"], atol=1e-12)
    # and backwards means backwards: the reference on each reversed sequence
    sizes = cell.bind(input_size=I, hidden_size=H)
    for b, n in enumerate([2, 6, 5]):
        y1, f1 = numpy_ref.forward(cell, sizes, xs[:n, b : b + 1][::-1], params)
        np.testing.assert_allclose(ys[:n, b], y1[::-1, 0], atol=1e-12)
        np.testing.assert_allclose(final["c"][b], f1["c"][0], atol=1e-12)
