"""cellc.interop: Keras and ONNX recurrent layers' weights, loaded into zoo cells.

Neither Keras nor ONNX is installed: the oracles are NumPy transcriptions, written here, of the
formulas each framework publishes (the Keras cells' `call` methods, the ONNX operator spec's
equations), run on random weights in that framework's own layout. The cellc layer loaded through
the helper must reproduce their outputs and final states in float64 to 1e-10, on both targets.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cellc
from cellc import interop

I, H, T, B = 3, 4, 6, 2
TARGETS = ["torch", "llvm"]
TOL = 1e-10


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def weights(rng, *shape):
    return rng.uniform(-0.8, 0.8, shape)


def close(got, want, what):
    got = got.detach().numpy() if hasattr(got, "detach") else got
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = np.abs(got - want).max()
    assert err <= TOL, f"{what}: max error {err:.3g}"


# ---------------------------------------------------------------------------------------------
# Keras oracles: x (B, T, I), kernel [I, n*H], recurrent_kernel [H, n*H]; the state after each
# step is the output. Gate orders and formulas as keras/src/layers/rnn/*.py write them.


def keras_lstm(x, kernel, recurrent_kernel, bias):
    # LSTMCell.call: z = x @ kernel + h_tm1 @ recurrent_kernel + bias; z0..z3 = split(z, 4);
    # i = sigmoid(z0), f = sigmoid(z1), c = f * c_tm1 + i * tanh(z2), o = sigmoid(z3);
    # h = o * tanh(c).
    h = c = np.zeros((x.shape[0], recurrent_kernel.shape[0]))
    ys = []
    for t in range(x.shape[1]):
        z = x[:, t] @ kernel + h @ recurrent_kernel + (0 if bias is None else bias)
        z0, z1, z2, z3 = np.split(z, 4, axis=1)
        i, f, o = sigmoid(z0), sigmoid(z1), sigmoid(z3)
        c = f * c + i * np.tanh(z2)
        h = o * np.tanh(c)
        ys.append(h)
    return np.stack(ys, 1), (h, c)


def keras_gru(x, kernel, recurrent_kernel, bias, reset_after):
    # GRUCell.call: input_bias, recurrent_bias = unstack(bias) if reset_after else (bias, None);
    # x_z, x_r, x_h = split(x @ kernel + input_bias, 3);
    # reset_after: z_h = h_tm1 @ recurrent_kernel + recurrent_bias, split in three;
    #   else z_h = h_tm1 @ recurrent_kernel[:, :2*units], split in two;
    # z = sigmoid(x_z + recurrent_z), r = sigmoid(x_r + recurrent_r);
    # reset_after: recurrent_h = r * recurrent_h, else (r * h_tm1) @ recurrent_kernel[:, 2*units:];
    # hh = tanh(x_h + recurrent_h); h = z * h_tm1 + (1 - z) * hh.
    units = recurrent_kernel.shape[0]
    if bias is None:
        in_bias, rec_bias = 0, 0
    else:
        in_bias, rec_bias = (bias[0], bias[1]) if reset_after else (bias, None)
    h = np.zeros((x.shape[0], units))
    ys = []
    for t in range(x.shape[1]):
        x_z, x_r, x_h = np.split(x[:, t] @ kernel + in_bias, 3, axis=1)
        if reset_after:
            rec_z, rec_r, rec_h = np.split(h @ recurrent_kernel + rec_bias, 3, axis=1)
        else:
            rec_z, rec_r = np.split(h @ recurrent_kernel[:, : 2 * units], 2, axis=1)
        z, r = sigmoid(x_z + rec_z), sigmoid(x_r + rec_r)
        rec_h = r * rec_h if reset_after else (r * h) @ recurrent_kernel[:, 2 * units :]
        hh = np.tanh(x_h + rec_h)
        h = z * h + (1 - z) * hh
        ys.append(h)
    return np.stack(ys, 1), (h,)


def keras_simple_rnn(x, kernel, recurrent_kernel, bias):
    # SimpleRNNCell.call: h = inputs @ kernel + bias;
    # output = tanh(h + prev_output @ recurrent_kernel).
    h = np.zeros((x.shape[0], recurrent_kernel.shape[0]))
    ys = []
    for t in range(x.shape[1]):
        h = np.tanh(x[:, t] @ kernel + (0 if bias is None else bias) + h @ recurrent_kernel)
        ys.append(h)
    return np.stack(ys, 1), (h,)


# kind, reset_after (None: not a GRU), gates, oracle
KERAS = {
    "lstm": ("LSTM", None, 4, keras_lstm),
    "gru-reset_after": ("GRU", True, 3, lambda *a: keras_gru(*a, reset_after=True)),
    "gru-reset_before": ("GRU", False, 3, lambda *a: keras_gru(*a, reset_after=False)),
    "simple_rnn": ("SimpleRNN", None, 1, keras_simple_rnn),
}


def keras_case(name, use_bias=True, seed=0):
    kind, reset_after, n, oracle = KERAS[name]
    rng = np.random.default_rng(seed)
    kernel, rk = weights(rng, I, n * H), weights(rng, H, n * H)
    two = kind == "GRU" and reset_after
    bias = (weights(rng, 2, n * H) if two else weights(rng, n * H)) if use_bias else None
    x = rng.normal(size=(B, T, I))
    return kind, reset_after, (kernel, rk, bias), x, oracle(x, kernel, rk, bias)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", KERAS)
def test_keras_layer_matches_keras_formula(name, target):
    kind, reset_after, arrays, x, (ys, final) = keras_case(name)
    layer = interop.load_keras(kind, *arrays, reset_after=reset_after, target=target)
    assert layer.batch_first  # as Keras takes its input
    out, hn = layer(torch.from_numpy(x))
    close(out, ys, f"{name} output")
    for got, want in zip(hn if isinstance(hn, tuple) else (hn,), final):
        close(got[0], want, f"{name} final state")


@pytest.mark.parametrize("name", ["lstm", "gru-reset_before", "simple_rnn"])
def test_keras_without_bias_builds_a_layer_without_bias(name):
    kind, reset_after, arrays, x, (ys, _) = keras_case(name, use_bias=False, seed=1)
    layer = interop.load_keras(kind, *arrays, reset_after=reset_after)
    assert layer.bias is False and not any("bias" in k for k in layer.state_dict())
    close(layer(torch.from_numpy(x))[0], ys, f"{name} output")


def test_keras_gru_reset_after_false_loads_into_the_keras_gru_cell():
    kind, reset_after, arrays, x, (ys, final) = keras_case("gru-reset_before")
    conv = interop.from_keras(kind, *arrays, reset_after=reset_after)
    assert conv.cell == "keras_gru.cell" and conv.path.is_file()
    assert conv.sizes == {"input_size": I, "hidden_size": H}
    # The NumPy reference, no torch: params() names the cell's own parameters.
    cell = cellc.load_cell(conv.path)
    got, states = cellc.reference.forward(cell, cell.bind(**conv.sizes), x.transpose(1, 0, 2),
                                          conv.params())
    close(got.transpose(1, 0, 2), ys, "reference output")
    close(states["h"], final[0], "reference final state")


def test_keras_weights_may_be_torch_tensors_and_float32():
    _, _, (kernel, rk, bias), _, _ = keras_case("lstm")
    a = interop.from_keras("lstm", kernel, rk, bias).arrays()
    b = interop.from_keras("LSTM", *(torch.from_numpy(w).float() for w in (kernel, rk, bias)))
    assert b.dtype == np.float32 and list(b.arrays()) == list(a)
    for k, v in b.arrays().items():
        assert np.allclose(v, a[k], atol=1e-7), k
    assert b.layer().weight_ih_l0.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# ONNX oracles: X (T, B, I); per direction W [n*H, I], R [n*H, H], Wb, Rb [n*H]; gate orders
# and equations as the operator spec (onnx/docs/Operators.md) writes them. Returns Y
# (T, num_directions, B, H) and Y_h (and Y_c) (num_directions, B, H).


def onnx_lstm_step(x, h, c, W, R, Wb, Rb, P):
    # it = f(Xt*(Wi^T) + Ht-1*(Ri^T) + Pi (.) Ct-1 + Wbi + Rbi)
    # ft = f(Xt*(Wf^T) + Ht-1*(Rf^T) + Pf (.) Ct-1 + Wbf + Rbf)
    # ct = g(Xt*(Wc^T) + Ht-1*(Rc^T) + Wbc + Rbc)
    # Ct = ft (.) Ct-1 + it (.) ct
    # ot = f(Xt*(Wo^T) + Ht-1*(Ro^T) + Po (.) Ct + Wbo + Rbo)
    # Ht = ot (.) h(Ct)
    Wi, Wo, Wf, Wc = np.split(W, 4)
    Ri, Ro, Rf, Rc = np.split(R, 4)
    Wbi, Wbo, Wbf, Wbc = np.split(Wb, 4)
    Rbi, Rbo, Rbf, Rbc = np.split(Rb, 4)
    Pi, Po, Pf = np.split(P, 3)
    i = sigmoid(x @ Wi.T + h @ Ri.T + Pi * c + Wbi + Rbi)
    f = sigmoid(x @ Wf.T + h @ Rf.T + Pf * c + Wbf + Rbf)
    g = np.tanh(x @ Wc.T + h @ Rc.T + Wbc + Rbc)
    c = f * c + i * g
    o = sigmoid(x @ Wo.T + h @ Ro.T + Po * c + Wbo + Rbo)
    return o * np.tanh(c), c


def onnx_gru_step(x, h, W, R, Wb, Rb, linear_before_reset):
    # zt = f(Xt*(Wz^T) + Ht-1*(Rz^T) + Wbz + Rbz)
    # rt = f(Xt*(Wr^T) + Ht-1*(Rr^T) + Wbr + Rbr)
    # ht = g(Xt*(Wh^T) + (rt (.) Ht-1)*(Rh^T) + Rbh + Wbh)   # linear_before_reset = 0
    # ht = g(Xt*(Wh^T) + (rt (.) (Ht-1*(Rh^T) + Rbh)) + Wbh) # linear_before_reset != 0
    # Ht = (1 - zt) (.) ht + zt (.) Ht-1
    Wz, Wr, Wh = np.split(W, 3)
    Rz, Rr, Rh = np.split(R, 3)
    Wbz, Wbr, Wbh = np.split(Wb, 3)
    Rbz, Rbr, Rbh = np.split(Rb, 3)
    z = sigmoid(x @ Wz.T + h @ Rz.T + Wbz + Rbz)
    r = sigmoid(x @ Wr.T + h @ Rr.T + Wbr + Rbr)
    if linear_before_reset:
        hh = np.tanh(x @ Wh.T + r * (h @ Rh.T + Rbh) + Wbh)
    else:
        hh = np.tanh(x @ Wh.T + (r * h) @ Rh.T + Rbh + Wbh)
    return ((1 - z) * hh + z * h,)


def onnx_rnn_step(x, h, W, R, Wb, Rb):
    # Ht = f(Xt*(Wi^T) + Ht-1*(Ri^T) + Wbi + Rbi), f = Tanh by default
    return (np.tanh(x @ W.T + h @ R.T + Wb + Rb),)


def onnx_run(step, X, W, R, B, P, direction, nstates):
    """Y, [Y_h, Y_c]: the spec's direction semantics (the reverse direction reads X from the
    last step back, and Y[t] holds the state after reading X[t])."""
    dirs = W.shape[0]
    Hs = R.shape[2]
    Y = np.zeros((X.shape[0], dirs, X.shape[1], Hs))
    finals = [np.zeros((dirs, X.shape[1], Hs)) for _ in range(nstates)]
    for d in range(dirs):
        Wb, Rb = np.split(B[d], 2)
        extra = (P[d],) if P is not None else ()
        states = [np.zeros((X.shape[1], Hs)) for _ in range(nstates)]
        backward = direction == "reverse" or d == 1
        for t in reversed(range(X.shape[0])) if backward else range(X.shape[0]):
            states = list(step(X[t], *states, W[d], R[d], Wb, Rb, *extra))
            Y[t, d] = states[0]
        for f, s in zip(finals, states):
            f[d] = s
    return Y, finals


# op_type, gates, linear_before_reset, peepholes, oracle step
ONNX = {
    "lstm": ("LSTM", 4, 0, False, onnx_lstm_step),
    "lstm-peepholes": ("LSTM", 4, 0, True, onnx_lstm_step),
    "gru-lbr0": ("GRU", 3, 0, False, lambda *a: onnx_gru_step(*a, linear_before_reset=0)),
    "gru-lbr1": ("GRU", 3, 1, False, lambda *a: onnx_gru_step(*a, linear_before_reset=1)),
    "rnn": ("RNN", 1, 0, False, onnx_rnn_step),
}


def onnx_case(name, direction, seed=0):
    op, n, lbr, peepholes, step = ONNX[name]
    dirs = 2 if direction == "bidirectional" else 1
    rng = np.random.default_rng(seed)
    W, R = weights(rng, dirs, n * H, I), weights(rng, dirs, n * H, H)
    Bias = weights(rng, dirs, 2 * n * H)
    P = weights(rng, dirs, 3 * H) if peepholes else None
    X = rng.normal(size=(T, B, I))
    # Without P the spec's peepholes are zero: the oracle gets zeros, the helper gets None.
    Pz = P if P is not None or op != "LSTM" else np.zeros((dirs, 3 * H))
    expected = onnx_run(step, X, W, R, Bias, Pz, direction, 2 if op == "LSTM" else 1)
    return op, lbr, dict(W=W, R=R, B=Bias, P=P), X, expected


def check_onnx_layer(layer, X, expected, what):
    Y, finals = expected
    out, hn = layer(torch.from_numpy(X))
    dirs = Y.shape[1]
    # cellc's output (T, B, dirs*H) is ONNX's Y (T, dirs, B, H) with the direction axis moved.
    close(out.detach().numpy().reshape(T, B, dirs, H).transpose(0, 2, 1, 3), Y, f"{what} Y")
    for got, want, label in zip(hn if isinstance(hn, tuple) else (hn,), finals, ("Y_h", "Y_c")):
        close(got, want, f"{what} {label}")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("name", ONNX)
def test_onnx_layer_matches_onnx_spec(name, direction, target):
    op, lbr, arrays, X, expected = onnx_case(name, direction)
    layer = interop.load_onnx(op, **arrays, direction=direction, linear_before_reset=lbr,
                              target=target)
    assert layer.bidirectional == (direction == "bidirectional")
    check_onnx_layer(layer, X, expected, f"{name} {direction}")


@pytest.mark.parametrize("name", ["lstm", "gru-lbr0"])
def test_onnx_reverse_direction(name):
    op, lbr, arrays, X, expected = onnx_case(name, "reverse")
    conv = interop.from_onnx(op, **arrays, direction="reverse", linear_before_reset=lbr)
    assert conv.options["reverse"] is True and all("reverse" not in k for k in conv.arrays())
    check_onnx_layer(conv.layer(), X, expected, f"{name} reverse")


def test_onnx_cells_and_layout():
    # lbr=0 shares keras_gru.cell (same formula, same gate order, the two biases summed);
    # lbr=1 is torch's GRU; P selects the peephole LSTM.
    cells = {name: interop.from_onnx(ONNX[name][0], **onnx_case(name, "forward")[2],
                                     linear_before_reset=ONNX[name][2]).cell for name in ONNX}
    assert cells == {"lstm": "lstm.cell", "lstm-peepholes": "peephole_lstm.cell",
                     "gru-lbr0": "keras_gru.cell", "gru-lbr1": "gru.cell", "rnn": "rnn.cell"}
    op, _, arrays, X, expected = onnx_case("rnn", "forward")
    arrays.pop("P")
    layer = interop.load_onnx(op, **arrays, layout=1)  # layout=1: X is (B, T, I)
    assert layer.batch_first
    out, hn = layer(torch.from_numpy(X.transpose(1, 0, 2).copy()))
    close(out.transpose(0, 1), expected[0][:, 0], "layout=1 Y")
    close(hn, expected[1][0], "layout=1 Y_h")


def test_onnx_without_B_is_zero_bias():
    op, lbr, arrays, X, _ = onnx_case("gru-lbr1", "bidirectional")
    dirs = arrays["W"].shape[0]
    expected = onnx_run(ONNX["gru-lbr1"][4], X, arrays["W"], arrays["R"],
                        np.zeros((dirs, 6 * H)), None, "bidirectional", 1)
    layer = interop.load_onnx(op, arrays["W"], arrays["R"], direction="bidirectional",
                              linear_before_reset=lbr)
    assert layer.bias is False
    check_onnx_layer(layer, X, expected, "no B")


# ---------------------------------------------------------------------------------------------
# Refusals


def test_wrong_shapes_name_the_argument_and_both_shapes():
    rng = np.random.default_rng(0)
    k, rk = weights(rng, I, 3 * H), weights(rng, H, 3 * H)
    cases = [
        (lambda: interop.from_keras("gru", k[:, :-1], rk), "kernel", (I, 3 * H - 1)),
        (lambda: interop.from_keras("gru", k, rk[:, :-1]), "recurrent_kernel", (H, 3 * H - 1)),
        (lambda: interop.from_keras("gru", k, rk, np.zeros(3 * H)), "bias", (3 * H,)),
        (lambda: interop.from_keras("gru", k, rk, np.zeros((2, 3 * H)), reset_after=False),
         "bias", (2, 3 * H)),
        (lambda: interop.from_keras("lstm", k, rk), "recurrent_kernel", (H, 3 * H)),
    ]
    W, R = weights(rng, 1, 4 * H, I), weights(rng, 1, 4 * H, H)
    cases += [
        (lambda: interop.from_onnx("LSTM", W[:, 1:], R), "W", (1, 4 * H - 1, I)),
        (lambda: interop.from_onnx("LSTM", W, R[:, 1:]), "R", (1, 4 * H - 1, H)),
        (lambda: interop.from_onnx("LSTM", W, R, np.zeros((1, 4 * H))), "B", (1, 4 * H)),
        (lambda: interop.from_onnx("LSTM", W, R, P=np.zeros((1, 4 * H))), "P", (1, 4 * H)),
        (lambda: interop.from_onnx("LSTM", W, R, direction="bidirectional"), "R", (1, 4 * H, H)),
    ]
    for call, name, got in cases:
        with pytest.raises(ValueError) as e:
            call()
        msg = str(e.value)
        assert msg.startswith(f"{name} must have shape ") and msg.endswith(f"got {got}"), msg
        assert msg.count("(") >= 3, msg  # the formula, its value and the shape given


@pytest.mark.parametrize("call, match", [
    (lambda k, rk: interop.from_keras("lstm", k, rk, recurrent_activation="hard_sigmoid"),
     "recurrent_activation='hard_sigmoid' is not a zoo cell"),
    (lambda k, rk: interop.from_keras("simplernn", k, rk, activation="relu"),
     "activation='relu' is not a zoo cell"),
    (lambda k, rk: interop.from_keras("simplernn", k, rk, recurrent_activation="sigmoid"),
     "SimpleRNN has no recurrent_activation"),
    (lambda k, rk: interop.from_keras("conv_lstm", k, rk), "unknown Keras layer 'conv_lstm'"),
    (lambda k, rk: interop.from_keras("lstm", k, rk, reset_after=False),
     "Keras LSTM has no reset_after"),
])
def test_keras_refusals(call, match):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=match):
        call(weights(rng, I, 4 * H), weights(rng, H, 4 * H))


@pytest.mark.parametrize("kwargs, match", [
    ({"activations": ["Sigmoid", "Relu"]}, "activations=.*Relu.* is not a zoo cell"),
    ({"clip": 3.0}, "clip=3.0"),
    ({"input_forget": 1}, "input_forget=1"),
    ({"direction": "backward"}, "direction must be one of"),
    ({"hidden_size": H + 1}, f"hidden_size={H + 1} but R has shape"),
    ({"linear_before_reset": 1, "op_type": "RNN"}, "RNN has no linear_before_reset"),
    ({"op_type": "Scan"}, "unknown ONNX layer 'Scan'"),
])
def test_onnx_refusals(kwargs, match):
    rng = np.random.default_rng(0)
    op = kwargs.pop("op_type", "GRU")
    n = {"GRU": 3, "RNN": 1}.get(op, 3)
    W, R = weights(rng, 1, n * H, I), weights(rng, 1, n * H, H)
    with pytest.raises(ValueError, match=match):
        interop.from_onnx(op, W, R, **kwargs)


def test_default_activations_spelled_out_are_accepted():
    rng = np.random.default_rng(0)
    W, R = weights(rng, 2, 3 * H, I), weights(rng, 2, 3 * H, H)
    conv = interop.from_onnx("GRU", W, R, direction="bidirectional",
                             activations=["Sigmoid", "Tanh", "Sigmoid", "Tanh"])
    assert conv.options["bidirectional"] is True and len(conv.directions) == 2
    k, rk = weights(rng, I, 3 * H), weights(rng, H, 3 * H)
    conv = interop.from_keras("gru", k, rk, activation="tanh", recurrent_activation="sigmoid")
    assert conv.cell == "gru.cell"
