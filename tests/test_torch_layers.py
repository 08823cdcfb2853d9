"""The torch.nn-compatible layer machinery (cellc.runtime.torch_layers), driven by the eager
interpreter (cellc.backends.torch_eager).

Cells weight-compatible with torch (lstm, gru, rnn) must match torch.nn.LSTM/GRU/RNN and their
*Cell classes after load_state_dict in either direction: outputs, final states and the gradients
of every parameter, the input and the initial states, in float32 (1e-5) and float64 (1e-10).
Every cell in cells/ must build a layer that runs forward and backward, and agree with the NumPy
reference. The eager op table must mirror numpy_ref.NUMPY op by op.
"""

import ast
import copy
import functools
import math
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.nn.utils.rnn import pack_padded_sequence

import cellc
from cellc.backends import numpy_ref, torch_eager
from cellc.backends.torch_eager import TORCH_EAGER, load_eager, spec_from_cell
from cellc.ir import Builder, Func, Value, verify
from cellc.lower import sequence_program
from cellc.ops import OPS
from cellc.runtime import torch_layers
from cellc.runtime.torch_layers import make_layer
from cellc.shapes import ONE, Batch, Dim, TensorType
from cellc.source import InternalError

from layer_parity import (
    CONFIGS,
    SIZES,
    TORCH_CELLS,
    TORCH_LAYERS,
    check_parity,
    close,
    compare,
)

CELLS_DIR = Path(__file__).resolve().parent.parent / "cells"
T, B, I, H = SIZES


@functools.cache
def eager(name: str):
    return load_eager(CELLS_DIR / f"{name}.cell")


# ---------------------------------------------------------------------------------------------
# Layer parity with torch.nn.LSTM / GRU / RNN

@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("name", list(TORCH_LAYERS))
def test_layer_matches_torch(name, config, dtype):
    check_parity(eager(name)[0], name, config, dtype)


@pytest.mark.parametrize("name", list(TORCH_LAYERS))
def test_layer_repr_and_weights_match_torch(name):
    Layer, _ = eager(name)
    for kwargs in ({}, {"num_layers": 3, "bias": False, "batch_first": True, "dropout": 0.25,
                        "bidirectional": True}):
        ours, ref = Layer(I, H, **kwargs), TORCH_LAYERS[name](I, H, **kwargs)
        assert repr(ours) == repr(ref)
        assert ours._all_weights == ref._all_weights
        assert [[tuple(w.shape) for w in ws] for ws in ours.all_weights] == \
            [[tuple(w.shape) for w in ws] for ws in ref.all_weights]
        bound = 1 / math.sqrt(H)
        assert all(p.abs().max() <= bound for p in ours.parameters())


def test_dropout_between_layers():
    Layer, _ = eager("lstm")
    torch.manual_seed(0)
    x = torch.randn(T, B, I, dtype=torch.float64)
    # p = 1 is deterministic (layer 2 sees zeros), so it can be compared with torch exactly.
    ref = torch.nn.LSTM(I, H, num_layers=2, dropout=1.0, dtype=torch.float64)
    ours = Layer(I, H, num_layers=2, dropout=1.0, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    close(ours(x)[0], ref(x)[0], torch.float64, "dropout=1 output")
    # p = 0.5: random in training mode, the identity in eval mode.
    ours = Layer(I, H, num_layers=2, dropout=0.5, dtype=torch.float64)
    ref = torch.nn.LSTM(I, H, num_layers=2, dropout=0.5, dtype=torch.float64)
    ref.load_state_dict(ours.state_dict())
    assert not torch.allclose(ours(x)[0], ours(x)[0])
    ours.eval(), ref.eval()
    close(ours(x)[0], ref(x)[0], torch.float64, "eval output")
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        Layer(I, H, dropout=0.5)


def test_layer_deepcopy_and_to():
    Layer, _ = eager("gru")
    m = Layer(I, H, num_layers=2)
    m2 = copy.deepcopy(m).to(torch.float64)
    assert all(p.dtype == torch.float64 for p in m2.parameters())
    x = torch.randn(T, B, I)
    close(m2(x.double())[0].float(), m(x)[0], torch.float32, "deepcopy")


# ---------------------------------------------------------------------------------------------
# Cell parity with torch.nn.LSTMCell / GRUCell / RNNCell


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", list(TORCH_CELLS))
def test_cell_matches_torch(name, bias, dtype):
    _, Cell = eager(name)
    n_states = 2 if name == "lstm" else 1
    for direction in ("torch->ours", "ours->torch"):
        ours = Cell(I, H, bias=bias, dtype=dtype)
        ref = TORCH_CELLS[name](I, H, bias=bias, dtype=dtype)
        assert list(ours.state_dict()) == list(ref.state_dict())
        if direction == "torch->ours":
            ours.load_state_dict(ref.state_dict())
        else:
            ref.load_state_dict(ours.state_dict())
        assert repr(ours) == repr(ref)
        for batched in (True, False):
            for with_hx in (True, False):
                g = torch.Generator().manual_seed(2)
                lead = (B,) if batched else ()
                x = torch.randn(*lead, I, generator=g, dtype=dtype)
                hx = [torch.randn(*lead, H, generator=g, dtype=dtype) for _ in range(n_states)]
                results = []
                for m in (ours, ref):
                    m.zero_grad()
                    xl = x.clone().requires_grad_()
                    hl = [h.clone().requires_grad_() for h in hx]
                    arg = (hl[0] if n_states == 1 else tuple(hl)) if with_hx else None
                    out = m(xl, arg)
                    outs = [out] if n_states == 1 else list(out)
                    w = torch.Generator().manual_seed(3)
                    sum((o * torch.randn(o.shape, generator=w, dtype=dtype)).sum()
                        for o in outs).backward()
                    results.append([*outs, xl.grad, *([h.grad for h in hl] if with_hx else []),
                                    *(p.grad for p in m.parameters())])
                for k, (a, b) in enumerate(zip(*results, strict=True)):
                    close(a, b, dtype, f"{name}Cell {direction} batched={batched} item {k}")


# ---------------------------------------------------------------------------------------------
# Argument errors


@pytest.mark.parametrize("kwargs, error, match", [
    ({"num_layers": 0}, ValueError, "num_layers must be greater than zero"),
    ({"num_layers": 1.5}, TypeError, "num_layers should be of type int"),
    ({"dropout": 1.5}, ValueError, "dropout should be a number in range"),
    ({"dropout": "0.1"}, ValueError, "dropout should be a number in range"),
    ({"dropout": True}, ValueError, "dropout should be a number in range"),
    ({"bias": 1}, TypeError, "bias should be of type bool"),
    ({"batch_first": None}, TypeError, "batch_first should be of type bool"),
    ({"bidirectional": "yes"}, TypeError, "bidirectional should be of type bool"),
    ({"hidden_size": 0}, ValueError, "hidden_size must be greater than zero"),
    ({"hidden_size": 4.0}, TypeError, "hidden_size should be of type int"),
    ({"input_size": -1}, ValueError, "input_size must be greater than zero"),
    ({"proj_size": -1}, ValueError, "proj_size should be a positive integer or zero to disable"
                                    " projections"),
    ({"proj_size": H}, ValueError, "proj_size has to be smaller than hidden_size"),
    ({"proj_size": 1.0}, TypeError, "proj_size should be of type int"),
])
def test_constructor_errors(kwargs, error, match):
    Layer, _ = eager("lstm")
    args = {"input_size": I, "hidden_size": H, **kwargs}
    with pytest.raises(error, match=match):
        Layer(**args)


def test_constructor_missing_and_extra_args():
    Layer, Cell = eager("lstm")
    with pytest.raises(TypeError, match=r"LSTM\(\): missing a required argument: 'hidden_size'"):
        Layer(I)
    with pytest.raises(TypeError, match="too many positional arguments"):
        Layer(I, H, 1, True, False, 0.0, False, 0, None, None, 7)  # 0: proj_size, as torch's
    assert Layer(I, H, 1, True, False, 0.0, False, 2).proj_size == 2
    # No num_layers on a cell: 0 lands on bias, whose truth torch.nn's cells take, unchecked.
    assert Cell(I, H, 0).bias_ih is None and torch.nn.LSTMCell(I, H, 0).bias_ih is None
    with pytest.raises(ValueError, match="hidden_size must be greater than zero"):
        Cell(I, 0)


def test_forward_errors():
    Layer, _ = eager("lstm")
    m = Layer(I, H, num_layers=2)
    x = torch.randn(T, B, I)
    h = torch.zeros(2, B, H)
    with pytest.raises(ValueError, match="Expected input to be 2D or 3D, got 4D"):
        m(x[None])
    with pytest.raises(TypeError, match="input must be a Tensor or a PackedSequence, got list"):
        m([[1.0]])
    with pytest.raises(RuntimeError, match=r"input.size\(-1\) must be equal to input_size. "
                                           "Expected 3, got 5"):
        m(torch.randn(T, B, 5))
    with pytest.raises(ValueError, match=r"^RNN input dtype \(torch.float64\) does not match"
                                         r" weight dtype \(torch.float32\)\. Convert input:"
                                         r" input\.to\(torch.float32\), or convert model:"
                                         r" model\.to\(torch.float64\)$"):
        m(x.double())
    with pytest.raises(TypeError, match=r"hx must be a tuple of 2 tensors \(h_0, c_0\)"):
        m(x, h)
    with pytest.raises(ValueError, match="got 1 items"):
        m(x, (h,))
    with pytest.raises(RuntimeError,
                       match=r"^Expected hidden\[1\] size \(2, 4, 4\), got \[2, 3, 4\]$"):
        m(x, (h, torch.zeros(2, 3, H)))
    with pytest.raises(RuntimeError, match=r"^For batched 3-D input, hx and cx should also be 3-D"
                                           r" but got \(2-D, 3-D\) tensors$"):
        m(x, (h[0], h))
    with pytest.raises(RuntimeError, match=r"^For unbatched 2-D input, hx and cx should also be"
                                           r" 2-D but got \(3-D, 3-D\) tensors$"):
        m(x[:, 0], (h, h))
    with pytest.raises(ValueError, match=r"^RNN hx\[0\] dtype \(torch.float64\) does not match"):
        m(x, (h.double(), h))
    packed = pack_padded_sequence(x, [5, 3, 2, 2])
    with pytest.raises(RuntimeError,
                       match=r"^Expected hidden\[0\] size \(2, 4, 4\), got \[2, 3, 4\]$"):
        m(packed, (torch.zeros(2, 3, H), h))

    Gru, _ = eager("gru")
    with pytest.raises(TypeError,
                       match=r"hx must be a Tensor \(the initial state h_0\), got tuple"):
        Gru(I, H)(x, (torch.zeros(1, B, H),))
    with pytest.raises(RuntimeError, match=r"^Expected hidden size \(1, 4, 4\), got \[1, 4, 5\]$"):
        Gru(I, H)(x, torch.zeros(1, B, 5))
    with pytest.raises(RuntimeError,
                       match=r"^For batched 3-D input, hx should also be 3-D but got 2-D tensor$"):
        Gru(I, H)(x, torch.zeros(B, H))


def test_cell_forward_errors():
    _, Cell = eager("lstm")
    m = Cell(I, H)
    with pytest.raises(ValueError, match="LSTMCell: Expected input to be 1D or 2D, got 3D"):
        m(torch.randn(1, B, I))
    with pytest.raises(RuntimeError, match="^input has inconsistent input_size: got 5 expected 3$"):
        m(torch.randn(B, 5))
    with pytest.raises(RuntimeError,
                       match=r"^Input batch size 4 doesn't match hidden1 batch size 2$"):
        m(torch.randn(B, I), (torch.zeros(B, H), torch.zeros(2, H)))
    with pytest.raises(RuntimeError,
                       match=r"^hidden0 has inconsistent hidden_size: got 5, expected 4$"):
        m(torch.randn(B, I), (torch.zeros(B, 5), torch.zeros(B, H)))
    with pytest.raises(ValueError, match=r"^LSTMCell: Expected hx\[1\] to be 1D or 2D, got 3D"):
        m(torch.randn(B, I), (torch.zeros(B, H), torch.zeros(1, B, H)))
    with pytest.raises(ValueError, match=r"Expected hx\[0\] to be 1D like the input"):
        m(torch.randn(I), (torch.zeros(B, H), torch.zeros(B, H)))
    with pytest.raises(ValueError, match=r"^LSTMCell input dtype \(torch.float64\)"):
        m(torch.randn(B, I, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# Every cell in cells/


def _size_args(cell, layer_input=I, other=H):
    return {s.arg: layer_input if s.symbol == cell.input_size.symbols.pop() else other
            for s in cell.sizes if not s.optional}


def test_every_cell_runs_forward_and_backward(cell_path):  # cell_path: each cells/*.cell
    cell = cellc.load_cell(cell_path)
    Layer, Cell = load_eager(cell_path)
    torch.manual_seed(0)
    m = Layer(**_size_args(cell), num_layers=2, bidirectional=True, batch_first=True,
              dtype=torch.float64)
    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    packed = pack_padded_sequence(x, [3, 5, 1, 4], batch_first=True, enforce_sorted=False)
    out, h_n = m(packed)
    h_n = [h_n] if isinstance(h_n, torch.Tensor) else list(h_n)
    sizes = cell.bind(**_size_args(cell))
    want = [(4, *s.type.concrete(sizes, 1, B)) for s in cell.states]
    assert [tuple(h.shape) for h in h_n] == want
    (out.data.square().sum() + sum(h.sum() for h in h_n)).backward()
    assert torch.isfinite(x.grad).all()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # The cell class runs one step (a cell that reads x[t-1] has none: one step cannot see it).
    if any(p.kind == "previous" for p in cell.input_parts):
        with pytest.raises(TypeError, match=r"reads the previous input x\[t-1\]"):
            Cell(**_size_args(cell))
        return
    c = Cell(**_size_args(cell), dtype=torch.float64)
    step = c(torch.randn(B, I, dtype=torch.float64))
    step = [step] if isinstance(step, torch.Tensor) else list(step)
    assert len(step) == len(cell.states) and all(s.shape[0] == B for s in step)


def test_every_cell_matches_numpy_reference(cell_path):
    """One layer, one direction, float64: the eager layer against numpy_ref.forward."""
    cell = cellc.load_cell(cell_path)
    Layer, Cell = load_eager(cell_path)
    size_args = _size_args(cell)
    sizes = cell.bind(**size_args)
    torch.manual_seed(0)
    m = Layer(**size_args, dtype=torch.float64).eval()  # noise masks at their expectation
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(T, B, I))
    states = {s.name: rng.normal(size=s.type.concrete(sizes, 1, B)) for s in cell.states}
    params = {p.name: getattr(m, f"{p.name}_l0").detach().numpy() for p in cell.params
              if p.kind != "hyper"}  # hyper-parameters: forward takes their defaults
    ys, final = numpy_ref.forward(cell, sizes, xs, params, states)
    hx = [torch.from_numpy(states[s.name])[None] for s in cell.states]
    out, h_n = m(torch.from_numpy(xs), hx[0] if len(hx) == 1 else tuple(hx))
    h_n = [h_n] if isinstance(h_n, torch.Tensor) else list(h_n)
    np.testing.assert_allclose(out.detach().numpy(), ys, atol=1e-10, rtol=1e-10)
    for s, h in zip(cell.states, h_n):
        np.testing.assert_allclose(h[0].detach().numpy(), final[s.name], atol=1e-10, rtol=1e-10)
    # The cell class is one step of the same thing (none for a cell that reads x[t-1]).
    if any(p.kind == "previous" for p in cell.input_parts):
        return
    c = Cell(**size_args, dtype=torch.float64).eval()
    c.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    _, final1 = numpy_ref.forward(cell, sizes, xs[:1], params, states)
    step = c(torch.from_numpy(xs[0]), hx[0][0] if len(hx) == 1 else tuple(h[0] for h in hx))
    step = [step] if isinstance(step, torch.Tensor) else list(step)
    for s, h in zip(cell.states, step):
        np.testing.assert_allclose(h.detach().numpy(), final1[s.name], atol=1e-10, rtol=1e-10)


def test_initializers_use_each_layers_sizes():
    # weight_ih ~ uniform(-1/sqrt(I), 1/sqrt(I)), weight_hh ~ uniform(0, 1)
    Layer, _ = eager("indrnn")
    m = Layer(I, H, num_layers=2, bidirectional=True)
    assert m.weight_ih_l1_reverse.shape == (H, 2 * H)
    bound1 = 1 / math.sqrt(2 * H)
    assert bound1 / 2 < m.weight_ih_l1.abs().max() <= bound1
    assert m.weight_ih_l0.abs().max() <= 1 / math.sqrt(I)
    assert (m.weight_hh_l0 >= 0).all()
    Ln, _ = eager("layernorm_lstm")
    ln = Ln(I, H, bias=False)
    assert (ln.ln_x_gain_l0 == 1).all() and not hasattr(ln, "ln_x_bias_l0")


# ---------------------------------------------------------------------------------------------
# The spec contract, without cellc: a hand-written spec and time loop


def _hand_rnn_spec():
    return {
        "name": "RNN",
        "sizes": [("input_size", "I"), ("hidden_size", "H")],
        "input_size": "input_size",
        "states": ["h"],
        "state_sizes": lambda s: (s["H"],),
        "output_size": lambda s: s["H"],
        "params": [
            {"name": "weight_ih", "kind": "param", "shape": lambda s: (s["H"], s["I"]),
             "init": "orthogonal", "init_args": lambda s: (2.0,)},
            {"name": "weight_hh", "kind": "param", "shape": lambda s: (s["H"], s["H"]),
             "init": "normal", "init_args": lambda s: (0.0, 1 / math.sqrt(s["H"]))},
            {"name": "bias_ih", "kind": "bias", "shape": lambda s: (s["H"],),
             "init": "constant", "init_args": lambda s: (0.5,)},
            {"name": "bias_hh", "kind": "bias", "shape": lambda s: (s["H"],), "init": "ones"},
        ],
    }


def test_hand_written_spec_and_run_direction():
    calls = []

    def run_direction_for(sizes):
        calls.append(("sizes", dict(sizes)))

        def run_direction(xs, states, params, batch_sizes):
            calls.append(("run", tuple(xs.shape), batch_sizes))
            (h,), (w_ih, w_hh, b_ih, b_hh) = states, params
            ys = []
            for t in range(xs.shape[0]):
                n = xs.shape[1] if batch_sizes is None else batch_sizes[t]
                new = torch.tanh(xs[t, :n] @ w_ih.T + b_ih + h[:n] @ w_hh.T + b_hh)
                h = torch.cat([new, h[n:]])
                ys.append(torch.cat([new, new.new_zeros(xs.shape[1] - n, new.shape[1])]))
            return torch.stack(ys), (h,)

        return run_direction

    Layer, Cell = make_layer(_hand_rnn_spec(), run_direction_for)
    m = Layer(I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    assert calls == [("sizes", {"I": I, "H": H}), ("sizes", {"I": 2 * H, "H": H})]
    w = m.weight_ih_l1.detach()  # orthogonal(2.0): rows orthogonal with norm 2
    torch.testing.assert_close(w @ w.T, 4 * torch.eye(H, dtype=torch.float64))
    assert (m.bias_ih_l0 == 0.5).all() and (m.bias_hh_l1_reverse == 1).all()
    ref = torch.nn.RNN(I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    ref.load_state_dict(m.state_dict())
    kwargs = {"num_layers": 2, "bidirectional": True}
    for form in ("time_major", "packed_sorted"):
        calls.clear()
        compare(m, ref, "rnn", kwargs, form, True, torch.float64)
        batch_sizes = {c[2] and tuple(c[2]) for c in calls}
        assert batch_sizes == ({None} if form == "time_major" else {(4, 3, 2, 2, 1)})
    # a packed batch whose sequences all have the full length runs with batch_sizes=None
    calls.clear()
    m(pack_padded_sequence(torch.randn(T, B, I, dtype=torch.float64), [T] * B))
    assert {c[2] for c in calls} == {None}
    c = Cell(I, H, bias=False)
    assert [n for n, _ in c.named_parameters()] == ["weight_ih", "weight_hh"]
    assert c.bias_ih is None


def test_torch_layers_imports_only_torch_math_and_stdlib():
    path = Path(torch_layers.__file__)
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module != "__future__", ast.unparse(node)
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top in ("torch", "math") or top in sys.stdlib_module_names, ast.unparse(node)


def test_torch_layers_source_works_pasted_into_another_module():
    namespace = {"__name__": "generated_lstm"}
    exec(compile(Path(torch_layers.__file__).read_text(), "generated_lstm.py", "exec"), namespace)
    cell = cellc.load_cell(CELLS_DIR / "lstm.cell")
    Layer, _ = namespace["make_layer"](
        spec_from_cell(cell), lambda sizes: torch_eager.run_direction_eager(cell, sizes))
    ref = torch.nn.LSTM(I, H, bidirectional=True, dtype=torch.float64)
    m = Layer(I, H, bidirectional=True, dtype=torch.float64)
    m.load_state_dict(ref.state_dict())
    compare(m, ref, "lstm", {"bidirectional": True}, "packed_unsorted", True, torch.float64)


def test_spec_from_cell():
    spec = spec_from_cell(cellc.load_cell(CELLS_DIR / "gru_cho.cell"))
    s = {"I": 3, "H": 4}
    assert spec["name"] == "GRUCho" and spec["input_size"] == "input_size"
    assert spec["sizes"] == [("input_size", "I"), ("hidden_size", "H")]
    assert spec["states"] == ["h"] and spec["state_sizes"](s) == (4,)
    assert spec["output_size"](s) == 4
    assert [(p["name"], p["kind"], p["shape"](s), p["init"], p["init_args"](s))
            for p in spec["params"]] == [
        ("weight_ih", "param", (12, 3), "uniform", (-0.5, 0.5)),
        ("weight_hh", "param", (8, 4), "uniform", (-0.5, 0.5)),
        ("weight_hn", "param", (4, 4), "uniform", (-0.5, 0.5)),
        ("bias", "bias", (12,), "zeros", ()),
    ]


def test_sizes_rejected_at_construction():
    source = cellc.Source("half.cell", (
        "cell Half(input_size I, hidden_size H):\n"
        "    input x[I]\n    state h[H]\n    param w[H/2, I], u[H, H/2]\n"
        "    h' = tanh(u @ (w @ x) + h)\n    output h'\n"))
    Layer, _ = torch_eager.make_eager(cellc.load_source(source))
    assert Layer(I, 4)(torch.randn(T, B, I))[0].shape == (T, B, 4)
    with pytest.raises(ValueError, match="positive whole number"):
        Layer(I, 5)


# ---------------------------------------------------------------------------------------------
# The eager op table mirrors NUMPY


def test_eager_table_covers_every_op():
    assert set(TORCH_EAGER) == set(OPS) - {"scan"}


def test_eager_names_a_missing_rule():
    cell = cellc.load_cell(CELLS_DIR / "rnn.cell")
    prog = sequence_program(cell)
    ctx = torch_eager.Context({"I": 1, "H": 1}, 1, 1, torch.float64, torch.device("cpu"))
    # xs, h, then the parameters: nonlinearity (a [1] hyper-parameter), two weights, two biases
    args = [torch.zeros(1, 1)] * 2 + [torch.zeros(1)] + [torch.zeros(1, 1)] * 2
    args += [torch.zeros(1)] * 2
    with pytest.raises(InternalError, match="no rule for op 'scan'"):
        torch_eager.run(prog, args, ctx)


def _vec(d):
    return TensorType((Dim.of(d),), Batch.STEP)


def _par(*ds):
    return TensorType(tuple(Dim.of(d) for d in ds), Batch.NONE)


_H2 = Dim.of("H") * 2
OP_CASES = {  # op -> (argument types, attributes); unlisted elementwise ops use the defaults below
    "const": ([], {"value": _H2, "type": _vec("H")}),
    "pow": ([_vec("H")], {"exponent": 1.5}),
    "matmul": ([_par("H", "I"), _vec("I")], {}),
    "matmul_t": ([_par("H", "I"), _vec("H")], {}),
    "outer": ([_vec("H"), _vec("I")], {}),
    "broadcast": ([TensorType((ONE,), Batch.STEP)], {"size": Dim.of("H")}),
    "split": ([TensorType((_H2,), Batch.STEP)], {"parts": 2}),
    "concat": ([_vec("H"), _vec("I"), _vec("H")], {}),
    "where": ([_vec("H"), _vec("H"), _par("H")], {}),
    "reshape": ([TensorType((_H2,), Batch.STEP)], {"shape": (Dim.of(2), Dim.of("H"))}),
    "sum_axis": ([TensorType((Dim.of("I"), Dim.of("H")), Batch.STEP)], {"axis": 1}),
    "max_axis": ([TensorType((Dim.of("I"), Dim.of("H")), Batch.STEP)], {"axis": 0}),
    "expand": ([TensorType((Dim.of("I"), ONE), Batch.STEP)], {"axis": 1, "size": Dim.of("H")}),
    "transpose": ([TensorType((Dim.of("I"), Dim.of("H")), Batch.STEP)], {}),
    "matvec": ([TensorType((Dim.of("I"), Dim.of("H"), Dim.of("I")), Batch.NONE),
                TensorType((ONE, Dim.of("I")), Batch.STEP)], {}),
}
POSITIVE = {"log", "sqrt", "pow", "power"}


UNEQUAL_SPLIT = ([TensorType((_H2 + Dim.of("I"),), Batch.STEP)],
                 {"sizes": (Dim.of("I"), Dim.of("H"), Dim.of("H"))})


@pytest.mark.parametrize("op", sorted(set(OPS) - {"scan"}) + ["split_sizes"])
def test_eager_op_matches_numpy(op):
    if op == "split_sizes":
        op, (types, attrs) = "split", UNEQUAL_SPLIT
    elif op in OP_CASES:
        types, attrs = OP_CASES[op]
    elif OPS[op].arity == 2:
        types, attrs = [_vec("H"), _par("H")], {}
    else:
        types, attrs = [_vec("H")], {}
    b = Builder()
    params = tuple(Value(b.fresh(f"a{k}"), t) for k, t in enumerate(types))
    outs = b.emit(op, params, attrs)
    f = verify(Func(op, params, tuple(b.body), tuple(outs)))
    sizes, batch = {"H": 4, "I": 3}, 5
    rng = np.random.default_rng(0)
    arrays = []
    for t in types:
        a = rng.normal(size=t.concrete(sizes, 1, batch)).round(1)  # rounding makes ties for ge/max
        arrays.append(np.abs(a) + 0.1 if op in POSITIVE else a)
    want = numpy_ref.run(f, arrays, numpy_ref.Context(sizes, 1, batch, np.dtype(np.float64)))
    ctx = torch_eager.Context(sizes, 1, batch, torch.float64, torch.device("cpu"))
    got = torch_eager.run(f, [torch.from_numpy(a) for a in arrays], ctx)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == torch.float64
        np.testing.assert_allclose(g.numpy(), w, atol=1e-12, rtol=1e-12)


def test_softplus_is_exact_for_large_inputs():
    x = torch.tensor([30.0, -30.0, 0.0], dtype=torch.float64)
    got = TORCH_EAGER["softplus"]([x], None, None)
    np.testing.assert_allclose(got.numpy(), np.logaddexp(0, x.numpy()), rtol=1e-15)

