"""Symbolic reverse mode against numbers: finite differences, torch.autograd, truncation, residuals.

Every check runs in float64 on small sizes. The oracle for whole cells is a central difference of
the scalar loss

    L = sum(ys * R1) + sum over states s of sum(s_T * R2[s])

computed with the forward interpreter alone (`numpy_ref.forward`, which never sees the backward
IR), so a wrong VJP rule, a wrong scan transposition or a pass that changes the backward's
numbers all show up here. Every file in `cells/` is checked with no per-cell code.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest

import cellc
from cellc import grad, ir, pipeline
from cellc.backends import numpy_ref
from cellc.backends.numpy_ref import Context, backward, forward, frozen_params, init_params
from cellc.ops import OPS
from cellc.shapes import Batch, Dim, TensorType

CELLS_DIR = Path(__file__).resolve().parent.parent / "cells"
CELL_FILES = sorted(CELLS_DIR.glob("*.cell"))
CELL_IDS = [p.name for p in CELL_FILES]

T, B, I, H = 4, 2, 3, 4
SIZE_ARGS = {"input_size": I, "hidden_size": H}  # any other size argument gets SIZE_DEFAULT
SIZE_DEFAULT = 4
EPS = 1e-6  # central-difference step; truncation error ~EPS^2, rounding ~1e-16/EPS
FD_RTOL = 1e-6  # max|numeric - symbolic| / max|numeric|
TORCH_TOL = 1e-10  # float64, same weights: only rounding differs


def rel_err(num: np.ndarray, sym: np.ndarray) -> float:
    scale = np.abs(num).max()
    assert scale > 0, "a zero gradient checks nothing; change the data"
    return float(np.abs(num - sym).max() / scale)


# ---------------------------------------------------------------------------------------------
# Whole cells vs central differences


class Problem:
    """One cell with random data: parameters, inputs, initial states and loss weights."""

    def __init__(self, cell, seed: int = 0):
        self.cell = cell
        self.sizes = cell.bind(**{s.arg: SIZE_ARGS.get(s.arg, SIZE_DEFAULT) for s in cell.sizes
                                     if not s.optional})
        rng = np.random.default_rng([seed, *map(ord, cell.name)])
        # Perturb the initializers so zeros() / ones() parameters do not hide terms.
        self.params = {
            k: v + 0.3 * rng.normal(size=v.shape)
            for k, v in init_params(self.cell, self.sizes, rng).items()
        }
        self.xs = rng.normal(size=(T, B, int(self.cell.input_size.evaluate(self.sizes))))
        self.states = {
            s.name: rng.normal(size=s.type.concrete(self.sizes, 1, B)) for s in self.cell.states
        }
        ys, final = forward(self.cell, self.sizes, self.xs, self.params, self.states)
        self.r_ys = rng.normal(size=ys.shape)
        self.r_states = {k: rng.normal(size=v.shape) for k, v in final.items()}

    def inputs(self) -> dict[str, np.ndarray]:
        """Everything the gradient is taken with respect to, under backward()'s names (not
        the constants and hyper-parameters: they get none)."""
        frozen = {q.name for q in frozen_params(self.cell)}
        return {"xs": self.xs, **self.states,
                **{k: v for k, v in self.params.items() if k not in frozen}}

    def loss(self, inputs: dict[str, np.ndarray]) -> float:
        states = {k: inputs[k] for k in self.states}
        params = {k: inputs.get(k, v) for k, v in self.params.items()}
        ys, final = forward(self.cell, self.sizes, inputs["xs"], params, states)
        return float(
            np.sum(ys * self.r_ys) + sum(np.sum(final[k] * self.r_states[k]) for k in final)
        )

    def symbolic(
        self, optimize: bool = True, detach_at: int | None = None
    ) -> dict[str, np.ndarray]:
        _, _, grads = backward(
            self.cell,
            self.sizes,
            self.xs,
            self.params,
            self.states,
            d_ys=self.r_ys,
            d_states=self.r_states,
            detach_at=detach_at,
            optimize=optimize,
        )
        return grads


def central_differences(
    loss, inputs: dict[str, np.ndarray], eps: float = EPS
) -> dict[str, np.ndarray]:
    """dL/d(every element of every input), one pair of loss evaluations per element."""
    out = {}
    for name, v in inputs.items():
        g = np.zeros_like(v)
        for idx in np.ndindex(v.shape):
            vals = []
            for sign in (1.0, -1.0):
                moved = dict(inputs)
                moved[name] = v.copy()
                moved[name][idx] += sign * eps
                vals.append(loss(moved))
            g[idx] = (vals[0] - vals[1]) / (2 * eps)
        out[name] = g
    return out


@cache
def problem(path: Path) -> Problem:
    return Problem(cellc.load_cell(path))


@cache
def numeric_grads(path: Path) -> dict[str, np.ndarray]:
    p = problem(path)
    return central_differences(p.loss, p.inputs())


@cache
def problem_from_text(text: str) -> Problem:
    return Problem(cellc.load_source(cellc.Source("t.cell", text)))


@cache
def numeric_grads_from_text(text: str) -> dict[str, np.ndarray]:
    p = problem_from_text(text)
    return central_differences(p.loss, p.inputs())


@pytest.mark.slow
@pytest.mark.parametrize("optimize", [True, False], ids=["opt", "noopt"])
@pytest.mark.parametrize("path", CELL_FILES, ids=CELL_IDS)
def test_cell_gradients_match_central_differences(path, optimize):
    # Every element of xs, of every initial state and of every parameter.
    p = problem(path)
    num = numeric_grads(path)
    sym = p.symbolic(optimize=optimize)
    assert sorted(sym) == sorted(num)
    for name in num:
        assert sym[name].shape == num[name].shape, name
        assert rel_err(num[name], sym[name]) < FD_RTOL, name


@pytest.mark.parametrize("path", CELL_FILES, ids=CELL_IDS)
def test_backward_forward_results_match_forward(path):
    # The forward that saves residuals computes the same outputs as the plain forward.
    p = problem(path)
    want_ys, want_final = forward(p.cell, p.sizes, p.xs, p.params, p.states)
    ys, final, _ = backward(p.cell, p.sizes, p.xs, p.params, p.states)
    np.testing.assert_allclose(ys, want_ys, rtol=0, atol=1e-13)
    for k in want_final:
        np.testing.assert_allclose(final[k], want_final[k], rtol=0, atol=1e-13, err_msg=k)


def taylor_direction(p: Problem) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {k: rng.normal(size=v.shape) for k, v in p.inputs().items()}


def taylor_orders(p: Problem, g: dict[str, np.ndarray]) -> np.ndarray:
    """Slopes of log|L(w + h d) - L(w) - h <g, d>| against log h, for h = 1e-4 / 2^k."""
    w = p.inputs()
    d = taylor_direction(p)
    slope = sum(np.sum(g[k] * d[k]) for k in w)
    l0 = p.loss(w)
    hs = [1e-4 / 2**k for k in range(4)]
    rem = [abs(p.loss({k: w[k] + h * d[k] for k in w}) - l0 - h * slope) for h in hs]
    return np.diff(np.log(rem)) / np.diff(np.log(hs))


@pytest.mark.parametrize("path", CELL_FILES, ids=CELL_IDS)
def test_taylor_remainder_is_second_order(path):
    # The remainder is C h^2 when g is the gradient: halving h divides it by 4 (slope 2). Any
    # error e in g leaves a first-order term h <e, d>, which pulls the slope towards 1.
    p = problem(path)
    np.testing.assert_allclose(taylor_orders(p, p.symbolic()), 2.0, atol=0.15)


def test_taylor_check_can_fail():
    # Guards the test above: a gradient off by 1% of the direction in one parameter leaves a
    # first-order remainder, slope ~1.
    p = problem(CELLS_DIR / "lstm.cell")
    g = p.symbolic()
    g["weight_hh"] = g["weight_hh"] + 0.01 * taylor_direction(p)["weight_hh"]
    np.testing.assert_allclose(taylor_orders(p, g), 1.0, atol=0.15)


# Every differentiable op inside the loop, an unused parameter, a state that only carries itself
# and an output that is not a state.
ALL_OPS_CELL = """\
cell AllOps(input_size I, hidden_size H):
    input  x[I]
    state  h[H], c[H], s[H]
    param  W[2*H, I], U[H, H] ~ uniform(-0.5, 0.5)
    param  v[H], unused[H] ~ uniform(0.5, 1)
    param  k1[H], k2[H], k3[1] ~ uniform(0.1, 0.5)
    bias   b[H] ~ uniform(-0.5, 0.5)
    a, q = split(W @ x, 2)
    z = U @ h + a
    m = max(z, c) - min(q, h) + abs(z - 0.3)
    e = exp(-softplus(m)) + log(1 + sigmoid(z)^2) + sqrt(v * v + h^2)
    r = relu(e - mean(e)) / (1 + sum(e * e) * k3)
    h' = tanh(r * v + b)
    c' = k1 * c + k2 * m - c / (2 + z^2) + (-q)^3 * k2
    s' = s
    y = s * sigmoid(h' - c')
    output y
"""


@pytest.mark.slow
@pytest.mark.parametrize("optimize", [True, False], ids=["opt", "noopt"])
def test_all_ops_cell_gradients_match_central_differences(optimize):
    p = problem_from_text(ALL_OPS_CELL)
    num = numeric_grads_from_text(ALL_OPS_CELL)
    sym = p.symbolic(optimize=optimize)
    assert sorted(sym) == sorted(num)
    for name in num:
        if name == "unused":
            assert np.all(num[name] == 0.0) and np.all(sym[name] == 0.0)
        else:
            assert rel_err(num[name], sym[name]) < FD_RTOL, name


# A number times the state: the backward reads the number (d(0.5 h) = 0.5 dh'), a value the
# step computes that has no batch. grad.py stacks it per step as if it were [B,...]: the
# forward scan declares a [T*B] output where its rule gives [], and verify() rejects it. The
# same happens to a parameter-only product computed in the step (v * v) when hoist has not
# moved it out of the loop first.
CONST_TIMES_STATE = [
    ("half-h-opt", "h' = tanh(0.5 * h + W @ x + v)", True),
    ("half-h-noopt", "h' = tanh(0.5 * h + W @ x + v)", False),
    ("v-squared-noopt", "h' = tanh((v * v) * h + W @ x)", False),
]


@pytest.mark.parametrize(
    "line,optimize", [c[1:] for c in CONST_TIMES_STATE], ids=[c[0] for c in CONST_TIMES_STATE]
)
def test_unbatched_step_values_read_by_the_backward(line, optimize):
    text = (
        "cell C(input_size I, hidden_size H):\n    input x[I]\n    state h[H]\n"
        "    param W[H, I], v[H] ~ uniform(-0.5, 0.5)\n"
        f"    {line}\n    output h'\n"
    )
    p = problem_from_text(text)
    num = numeric_grads_from_text(text)
    sym = p.symbolic(optimize=optimize)
    for name in num:
        assert rel_err(num[name], sym[name]) < FD_RTOL, name


# ---------------------------------------------------------------------------------------------
# rnn / lstm / gru vs torch.autograd through torch.nn

TORCH_MODULES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}  # cell file stem -> torch.nn module
# rnn.cell's nonlinearity: a hyper-parameter ([1], its choice's index), no entry of state_dict
HYPERS = {"nonlinearity"}
TORCH_SHAPES = [(4, 2, 3, 4), (1, 1, 1, 1), (6, 3, 5, 7)]  # (T, B, I, H)


def torch_module(name: str, params: dict[str, np.ndarray], n_in: int, n_hidden: int):
    torch = pytest.importorskip("torch")
    module = getattr(torch.nn, TORCH_MODULES[name])(n_in, n_hidden).double()
    keys = module.state_dict().keys()
    assert {k.removesuffix("_l0") for k in keys} == set(params) - HYPERS
    module.load_state_dict({k: torch.from_numpy(params[k.removesuffix("_l0")]) for k in keys})
    return module


def torch_grads(name, params, xs, states, r_ys, r_states, detach_at=None):
    """Gradients of L through torch.nn; with detach_at=k the state entering step k is detached
    (steps 0..k-1 run, their final state is detached, steps k..T-1 continue from it)."""
    torch = pytest.importorskip("torch")
    T_, _, n_in = xs.shape
    module = torch_module(name, params, n_in, states["h"].shape[1])
    x = torch.from_numpy(xs).requires_grad_()
    s0 = {k: torch.from_numpy(v).requires_grad_() for k, v in states.items()}

    def run(x_part, s):
        if name == "lstm":
            ys, (h, c) = module(x_part, (s["h"][None], s["c"][None]))
            return ys, {"h": h[0], "c": c[0]}
        ys, h = module(x_part, s["h"][None])
        return ys, {"h": h[0]}

    k = T_ if detach_at is None else detach_at
    pieces, s = [], s0
    if k > 0:
        ys, s = run(x[:k], s)
        pieces.append(ys)
    if k < T_:
        s = {n: v.detach() for n, v in s.items()} if detach_at is not None else s
        ys, s = run(x[k:], s)
        pieces.append(ys)
    ys = torch.cat(pieces)
    loss = (ys * torch.from_numpy(r_ys)).sum() + sum(
        (s[n] * torch.from_numpy(r_states[n])).sum() for n in s
    )
    loss.backward()
    out = {"xs": x.grad.numpy()}
    for n, v in s0.items():
        out[n] = np.zeros_like(states[n]) if v.grad is None else v.grad.numpy()
    for key, prm in module.named_parameters():
        out[key.removesuffix("_l0")] = prm.grad.numpy()
    return out


def torch_problem(name: str, shape):
    T_, B_, I_, H_ = shape
    cell = cellc.load_cell(CELLS_DIR / f"{name}.cell")
    sizes = cell.bind(input_size=I_, hidden_size=H_)
    rng = np.random.default_rng([*shape, sorted(TORCH_MODULES).index(name)])
    params = init_params(cell, sizes, rng)
    xs = rng.normal(size=(T_, B_, I_))
    states = {s.name: rng.normal(size=(B_, H_)) for s in cell.states}
    r_ys = rng.normal(size=(T_, B_, H_))
    r_states = {s.name: rng.normal(size=(B_, H_)) for s in cell.states}
    return cell, sizes, params, xs, states, r_ys, r_states


def assert_grads_equal(got: dict, want: dict, tol: float):
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        assert got[k].shape == w.shape, k
        np.testing.assert_allclose(got[k], w, rtol=0, atol=tol, err_msg=k)


@pytest.mark.parametrize(
    "shape", TORCH_SHAPES, ids=["T{}-B{}-I{}-H{}".format(*s) for s in TORCH_SHAPES]
)
@pytest.mark.parametrize("name", sorted(TORCH_MODULES))
def test_gradients_match_torch(name, shape):
    cell, sizes, params, xs, states, r_ys, r_states = torch_problem(name, shape)
    want = torch_grads(name, params, xs, states, r_ys, r_states)
    _, _, got = backward(cell, sizes, xs, params, states, d_ys=r_ys, d_states=r_states)
    assert_grads_equal(got, want, TORCH_TOL)


# ---------------------------------------------------------------------------------------------
# Truncated backpropagation through time


@pytest.mark.parametrize("detach_at", [None, 0, 1, 3, 5], ids=lambda k: f"detach{k}")
@pytest.mark.parametrize("name", sorted(TORCH_MODULES))
def test_truncation_matches_torch_detach(name, detach_at):
    shape = (6, 2, 3, 4)
    cell, sizes, params, xs, states, r_ys, r_states = torch_problem(name, shape)
    want = torch_grads(name, params, xs, states, r_ys, r_states, detach_at=detach_at)
    _, _, got = backward(
        cell, sizes, xs, params, states, d_ys=r_ys, d_states=r_states, detach_at=detach_at
    )
    assert_grads_equal(got, want, TORCH_TOL)
    if detach_at is not None:
        # The check above can fail: truncation changes the gradient (at 0, only the states').
        _, _, full = backward(cell, sizes, xs, params, states, d_ys=r_ys, d_states=r_states)
        assert max(np.abs(full[k] - got[k]).max() for k in ("h", "weight_hh")) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("optimize", [True, False], ids=["opt", "noopt"])
@pytest.mark.parametrize("detach_at", [0, 2], ids=lambda k: f"detach{k}")
@pytest.mark.parametrize("path", CELL_FILES, ids=CELL_IDS)
def test_truncation_is_two_independent_segments(path, detach_at, optimize):
    # Detaching the state entering step k splits the sequence into steps 0..k-1 (which get no
    # cotangent from later steps) and steps k..T-1 (which start from a constant state). The
    # truncated gradient is the sum of the two segments' full gradients.
    p = problem(path)
    if detach_at and any(q.kind == "previous" for q in p.cell.input_parts):
        pytest.skip("x[t-1] joins the segments: the second one's first step reads x[k-1]")
    got = p.symbolic(detach_at=detach_at, optimize=optimize)
    k = detach_at

    def seg(xs, states, r_ys, r_states):
        return backward(p.cell, p.sizes, xs, p.params, states, d_ys=r_ys, d_states=r_states)

    zeros = {n: np.zeros_like(v) for n, v in p.states.items()}
    if k == 0:
        want = p.symbolic()
        want.update(zeros)  # nothing flows into the initial states
    else:
        _, s_k, first = seg(p.xs[:k], p.states, p.r_ys[:k], zeros)
        _, _, second = seg(p.xs[k:], s_k, p.r_ys[k:], p.r_states)
        want = {n: first[n] + second[n] for n in p.inputs() if n in p.params}
        want["xs"] = np.concatenate([first["xs"], second["xs"]])
        want.update({n: first[n] for n in p.states})
    assert_grads_equal(got, want, 1e-12)


def test_empty_sequence_passes_the_state_cotangent_through():
    # With no steps the final state is the initial state: its cotangent passes through
    # unchanged, and nothing reaches the parameters.
    p = problem(CELLS_DIR / "lstm.cell")
    xs = p.xs[:0]
    _, final, grads = backward(p.cell, p.sizes, xs, p.params, p.states, d_states=p.r_states)
    assert grads["xs"].shape == xs.shape
    for k in p.states:
        np.testing.assert_array_equal(final[k], p.states[k])
        np.testing.assert_array_equal(grads[k], p.r_states[k])
    for k in p.params:
        assert np.all(grads[k] == 0.0), k


# ---------------------------------------------------------------------------------------------
# What the forward saves for the backward


def lstm_program():
    return pipeline.compile_program(cellc.load_cell(CELLS_DIR / "lstm.cell"))


def saved_step_values(prog):
    """(forward scan, its step, [(step value, its stacked output)] for residuals saved per step)."""
    scan = next(i for i in prog.fwd.body if i.op == "scan")
    step = scan.attrs["step"]
    by_out = {id(o): r for o, r in zip(scan.outs, step.results)}
    return scan, step, [(by_out[id(r)], r) for r in prog.residuals if id(r) in by_out]


def test_lstm_saves_seven_activations_per_step():
    prog = lstm_program()
    scan, step, saved = saved_step_values(prog)
    n_carry = ir.scan_parts(scan).n_carry
    assert len(saved) == 7
    h_type = TensorType((Dim.of("H"),), Batch.STEP)
    assert all(v.type == h_type for v, _ in saved)
    assert all(out.type == h_type.with_batch(Batch.SEQ) for _, out in saved)
    # What each saved value is: its defining op, or the carry (state at t) it is.
    defs = {id(o): i for i in step.body for o in i.outs}
    carry = {id(p): p.name for p in step.params[:n_carry]}
    kinds = sorted(defs[id(v)].op if id(v) in defs else "state " + carry[id(v)] for v, _ in saved)
    assert kinds == ["sigmoid", "sigmoid", "sigmoid", "state c", "state h", "tanh", "tanh"]
    # Activations, not their inputs: the gate pre-activations and c' are not saved.
    args_of_activations = {id(defs[id(v)].args[0]) for v, _ in saved if id(v) in defs}
    assert not args_of_activations & {id(v) for v, _ in saved}
    # Besides the stacked values, the backward reads only the inputs (weights, xs) in place.
    others = [r for r in prog.residuals if id(r) not in {id(o) for _, o in saved}]
    assert {id(r) for r in others} <= {id(p) for p in prog.fwd.params}


def test_lstm_backward_recomputes_no_activation():
    prog = lstm_program()
    ops = [i.op for i in ir.all_instrs(prog.bwd)]
    assert "sigmoid" not in ops and "tanh" not in ops
    assert "scan" in ops and "matmul_t" in ops  # the check looks inside the loop


@pytest.mark.parametrize("optimize", [True, False], ids=["opt", "noopt"])
@pytest.mark.parametrize("path", CELL_FILES, ids=CELL_IDS)
def test_saved_values_are_computed_or_carried_and_saved_once(path, optimize):
    # The forward stacks only what exists nowhere else: values the step computes and the state
    # at t. Its per-step inputs (sequences already) and the weights are read where they are; a
    # value the loop already stacks (e.g. the output y_t) is not stacked a second time.
    prog = pipeline.compile_program(cellc.load_cell(path), optimize=optimize)
    scan, step, saved = saved_step_values(prog)
    parts = ir.scan_parts(scan)
    carry = step.params[: parts.n_carry]
    computed = {id(o) for i in step.body for o in i.outs}
    carried = {id(p) for p in carry}
    assert saved, "a loop that saves nothing checks nothing"
    for v, _ in saved:
        assert id(v) in computed or id(v) in carried, v.name
    stacked = step.results[parts.n_carry :]
    assert len({id(v) for v in stacked}) == len(stacked)
    assert len({id(r) for r in prog.residuals}) == len(prog.residuals)


@pytest.mark.parametrize("path", CELL_FILES, ids=CELL_IDS)
def test_backward_reads_saved_activations(path):
    # sigmoid' = y(1-y), tanh' = 1-y^2: the backward never recomputes them (softplus' = sigmoid
    # is the one rule that must).
    prog = pipeline.compile_program(cellc.load_cell(path))
    fwd_ops = {i.op for i in ir.all_instrs(prog.fwd)}
    if fwd_ops & {"softplus", "logsigmoid", "silu"}:
        pytest.skip("softplus', logsigmoid' and silu' read sigmoids of the input")
    bwd_ops = {i.op for i in ir.all_instrs(prog.bwd)}
    assert not bwd_ops & {"sigmoid", "tanh", "exp"}


# ---------------------------------------------------------------------------------------------
# Each VJP rule on its own

SIZES = {"H": 4, "I": 3}
HD, ID = Dim.of("H"), Dim.of("I")
VEC_H = TensorType((HD,), Batch.STEP)  # [B,H]
VEC_I = TensorType((ID,), Batch.STEP)  # [B,I]
ROW1 = TensorType((Dim.of(1),), Batch.STEP)  # [B,1]
PARAM_H = TensorType((HD,), Batch.NONE)  # [H]
MAT = TensorType((HD, ID), Batch.NONE)  # [H,I]


def single_op(op: str, arg_types, attrs=None, keep=None) -> ir.Func:
    """func(args...) { outs = op args; return outs (or the ones at indices `keep`) }"""
    params = tuple(ir.Value(f"a{k}", t) for k, t in enumerate(arg_types))
    b = ir.Builder(names=[p.name for p in params])
    outs = b.emit(op, params, attrs or {})
    results = tuple(outs if keep is None else [outs[k] for k in keep])
    return ir.verify(ir.Func(op, params, tuple(b.body), results))


# (id, op, argument types, attrs, how to draw each argument, outputs returned)
POS = "positive"  # draw from [0.5, 2]
AWAY = "away"  # |x| in [0.3, 2], so heaviside/sign are locally constant
MASK = "mask"  # 0 or 1: a condition of `where` choosing both branches
CASES = [
    ("neg", "neg", [VEC_H], {}, None, None),
    ("sigmoid", "sigmoid", [VEC_H], {}, None, None),
    ("tanh", "tanh", [VEC_H], {}, None, None),
    ("relu", "relu", [VEC_H], {}, [AWAY], None),
    ("exp", "exp", [VEC_H], {}, None, None),
    ("log", "log", [VEC_H], {}, [POS], None),
    ("softplus", "softplus", [VEC_H], {}, None, None),
    ("sqrt", "sqrt", [VEC_H], {}, [POS], None),
    ("abs", "abs", [VEC_H], {}, [AWAY], None),
    ("pow2", "pow", [VEC_H], {"exponent": 2.0}, None, None),
    ("pow3", "pow", [VEC_H], {"exponent": 3.0}, None, None),
    ("pow-half", "pow", [VEC_H], {"exponent": -0.5}, [POS], None),
    ("heaviside", "heaviside", [VEC_H], {}, [AWAY], None),
    ("sign", "sign", [VEC_H], {}, [AWAY], None),
    ("add", "add", [VEC_H, VEC_H], {}, None, None),
    ("add-bias", "add", [VEC_H, PARAM_H], {}, None, None),  # cotangent summed over the batch
    ("add-row", "add", [ROW1, VEC_H], {}, None, None),  # [B,1] + [B,H]: summed over features
    ("sub", "sub", [VEC_H, VEC_H], {}, None, None),
    ("sub-bias", "sub", [PARAM_H, VEC_H], {}, None, None),
    ("mul", "mul", [VEC_H, VEC_H], {}, None, None),
    ("mul-bias", "mul", [PARAM_H, VEC_H], {}, None, None),
    ("div", "div", [VEC_H, VEC_H], {}, [None, POS], None),
    ("div-row", "div", [VEC_H, ROW1], {}, [None, POS], None),
    ("min", "min", [VEC_H, VEC_H], {}, None, None),
    ("max", "max", [VEC_H, VEC_H], {}, None, None),
    ("max-bias", "max", [VEC_H, PARAM_H], {}, None, None),
    ("ge", "ge", [VEC_H, VEC_H], {}, None, None),
    ("matmul", "matmul", [MAT, VEC_I], {}, None, None),
    ("matmul_t", "matmul_t", [MAT, VEC_H], {}, None, None),
    ("outer", "outer", [VEC_H, VEC_I], {}, None, None),
    ("sum", "sum", [VEC_H], {}, None, None),
    ("mean", "mean", [VEC_H], {}, None, None),
    ("broadcast", "broadcast", [ROW1], {"size": HD}, None, None),
    ("sum_batch", "sum_batch", [VEC_H], {}, None, None),
    ("split", "split", [TensorType((HD * 4,), Batch.STEP)], {"parts": 4}, None, None),
    ("split-some", "split", [TensorType((HD * 4,), Batch.STEP)], {"parts": 4}, None, [2, 0]),
    ("split-sizes", "split", [TensorType((HD + ID,), Batch.STEP)], {"sizes": (ID, HD)}, None, None),
    ("concat", "concat", [VEC_H, VEC_I, VEC_H], {}, None, None),
    # issue 12's ops
    *[(op, op, [VEC_H], {}, None, None)
      for op in ("elu", "silu", "gelu", "erf", "logsigmoid", "stop_gradient")],
    *[(op, op, [VEC_H, VEC_H], {}, None, None) for op in ("lt", "le", "gt", "eq", "ne")],
    ("power", "power", [VEC_H, VEC_H], {}, [POS, None], None),
    ("power-row", "power", [ROW1, PARAM_H], {}, [POS, None], None),
    ("where", "where", [VEC_H, VEC_H, VEC_H], {}, [MASK, None, None], None),
    ("where-row", "where", [ROW1, VEC_H, PARAM_H], {}, [MASK, None, None], None),
    # issue 11's ops (tensor-valued cells)
    ("reshape", "reshape", [TensorType((HD * ID,), Batch.STEP)], {"shape": (ID, HD)}, None,
     None),
    ("sum_axis", "sum_axis", [TensorType((ID, HD), Batch.STEP)], {"axis": 0}, None, None),
    ("max_axis", "max_axis", [TensorType((ID, HD), Batch.STEP)], {"axis": 1}, None, None),
    ("expand", "expand", [TensorType((ID, Dim.of(1)), Batch.STEP)], {"axis": 1, "size": HD},
     None, None),
    ("transpose", "transpose", [TensorType((ID, HD), Batch.STEP)], {}, None, None),
    ("matvec", "matvec", [TensorType((ID, HD, ID), Batch.STEP), TensorType((ID, ID), Batch.STEP)],
     {}, None, None),
    ("matvec-param", "matvec", [TensorType((ID, HD, ID), Batch.NONE),
                                TensorType((Dim.of(1), ID), Batch.STEP)], {}, None, None),
    ("mul-heads", "mul", [TensorType((ID, Dim.of(1)), Batch.STEP), MAT.with_shape((ID, HD))], {},
     None, None),  # [B,I,1] * [I,H]: summed over the batch and the broadcast axis
]
ZERO_DERIVATIVE = {"heaviside", "sign", "ge", "lt", "le", "gt", "eq", "ne"}
# No cotangent where the derivative is not 0: stop_gradient's (1) by definition, and where's
# condition (a MASK of 0s and 1s: both sides of a central difference select the same branch).
NO_COTANGENT = {("stop_gradient", 0), ("where", 0)}


def draw(rng, t: TensorType, how):
    x = rng.normal(size=t.concrete(SIZES, 1, B))
    if how == POS:
        return rng.uniform(0.5, 2.0, size=x.shape)
    if how == AWAY:
        return np.sign(x) * rng.uniform(0.3, 2.0, size=x.shape)
    if how == MASK:
        return (x > 0).astype(np.float64)
    return x


def test_vjp_cases_cover_every_op():
    # A new op needs a row above (scan is checked through whole cells, const has no argument).
    assert {c[1] for c in CASES} == set(OPS) - {"scan", "const"}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_vjp_rule_matches_central_differences(case):
    _, op, types, attrs, how, keep = case
    f = single_op(op, types, attrs, keep)
    g = grad.vjp(f)
    ir.verify(g.fwd)
    ir.verify(g.bwd)
    ctx = Context(SIZES, 1, B, np.dtype(np.float64))
    rng = np.random.default_rng(CASES.index(case))
    args = [draw(rng, t, h) for t, h in zip(types, how or [None] * len(types))]
    if op in ("min", "max"):  # keep the arguments apart: no ties within EPS
        args[0] = args[0] + np.where(args[0] >= args[1], 0.2, -0.2)
    out = numpy_ref.run(g.fwd, args, ctx)
    results, residuals = out[: g.n_results], out[g.n_results :]
    weights = [rng.normal(size=r.shape) for r in results]
    sym = numpy_ref.run(g.bwd, residuals + weights, ctx)
    assert len(sym) == len(args)

    def loss(xs):
        res = numpy_ref.run(f, xs, ctx)
        return sum(float(np.sum(r * w)) for r, w in zip(res, weights))

    num = central_differences(
        lambda d: loss([d[k] for k in range(len(args))]), {k: a for k, a in enumerate(args)}
    )
    for k, a in enumerate(args):
        assert sym[k].shape == a.shape, k
        if (op, k) in NO_COTANGENT:
            assert np.all(sym[k] == 0.0), k
        elif op in ZERO_DERIVATIVE:
            assert np.all(num[k] == 0.0)  # guards the data: locally constant
            assert np.all(sym[k] == 0.0), k
        else:
            assert rel_err(num[k], sym[k]) < FD_RTOL, k
