"""The LLVM (native) target: `cellc.load(path, target="llvm")`.

- NativeCell (NumPy level), every cell in cells/ (tests taking `cell_path` run once per
  cells/*.cell file, see conftest.py): forward and the gradients of xs, the initial states and
  every parameter agree with the NumPy reference (numpy_ref.backward, computed in float64), with
  non-zero initial states and cotangents of both outputs and final states. Tolerances are
  relative to the largest magnitude of the reference array: float64 1e-10, float32 1e-4.
- Variable lengths (unsorted, one of them 0, one T): each sequence equals a reference run over its
  own prefix; outputs and input cotangents past a length are exactly zero; a length-0 sequence
  keeps its initial state and passes the final-state cotangent straight through; parameter
  gradients are the sum of the per-sequence ones. T = 0 and B = 0 work too.
- step(): single steps chained by the caller equal forward over the whole sequence.
- torch layers from the llvm target match torch.nn.LSTM/GRU/RNN (and the *Cell classes) after
  load_state_dict both ways: outputs, final states, gradients of every parameter, the input and
  the initial states (float32 1e-5, float64 1e-10), and backward runs through NativeSequence.
- Bad arrays and tensors are rejected before any native call, with the argument named (all cases
  run in a subprocess, so a missing check that crashes shows up as a failed test, not a dead run).
- The on-disk object cache: written once, hit by a fresh process with bit-identical results,
  safe under two processes compiling at once; an empty, truncated or garbage entry is recompiled
  and replaced (handed to MCJIT, it would abort the process).
- The NumPy-level API works in a process where torch cannot be imported.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cellc
from cellc.backends import cache, numpy_ref

from conftest import skip_native_cell_if_row

torch = pytest.importorskip("torch")


from layer_parity import (
    CONFIGS,
    SIZES,
    TORCH_CELLS,
    TORCH_LAYERS,
    check_parity,
    close,
    compare,
    graph_names,
)

ROOT = Path(__file__).resolve().parent.parent
CELLS_DIR = ROOT / "cells"
I, H, T, B = 3, 4, 5, 3
TOL = {"float64": 1e-10, "float32": 1e-4}  # relative to the reference's largest magnitude
DTYPES = ["float64", "float32"]


PREWARM_SCRIPT = r"""
import json, sys
sys.modules["torch"] = None  # faster start; the cache key does not depend on torch
import cellc
from cellc.backends import cache
for path, args, dtype, kind in json.loads(sys.argv[1]):
    cell = cellc.load_cell(path)
    make = cache.native_program if kind == "program" else cache.native_step
    make(cell, cell.bind(**args), dtype)
"""


def _prewarm_jobs() -> list:
    """Every kernel this file compiles in-process: all cells at (I, H) in both dtypes (sequence
    program and step kernel), and the second-layer sizes of the torch layer tests."""
    jobs = []
    for path in sorted(CELLS_DIR.glob("*.cell")):
        cell = cellc.load_cell(path)
        for dtype in DTYPES:
            for kind in ("program", "step"):
                jobs.append((str(path), size_args(cell), dtype, kind))
    for name in ("lstm", "gru", "rnn"):
        for dtype in DTYPES:  # layer 1 of a bidirectional layer reads 2H features
            jobs.append((str(CELLS_DIR / f"{name}.cell"), {"input_size": 2 * H, "hidden_size": H},
                         dtype, "program"))
    return jobs


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory, request):
    """Every compile in this session caches into a fresh directory, not the user's cache.

    For a full run the directory is first filled by two child processes compiling in parallel
    (an LLVM compile holds one core for up to seconds per kernel; loading a cached object takes
    milliseconds). This is only a speed-up: a kernel the children did not leave is compiled when
    first used."""
    with pytest.MonkeyPatch.context() as mp:
        d = tmp_path_factory.mktemp("cellc-cache")
        mp.setenv("CELLC_CACHE_DIR", str(d))
        mine = [item for item in request.session.items if item.path == Path(__file__)]
        if len(mine) < 50:  # a few tests picked with -k: compile only what they use
            yield
            return
        jobs = _prewarm_jobs()
        cost = lambda job: len(Path(job[0]).read_text()) * (1 if job[3] == "program" else 0.2)
        halves = [[], []]
        for job in sorted(jobs, key=cost, reverse=True):  # greedy split by an estimated cost
            min(halves, key=lambda h: sum(map(cost, h))).append(job)
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        procs = [subprocess.Popen([sys.executable, "-c", PREWARM_SCRIPT, json.dumps(h)], cwd=ROOT,
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for h in halves]
        for p in procs:
            try:
                p.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
        yield


# ---------------------------------------------------------------------------------------------
# helpers


def size_args(cell) -> dict[str, int]:
    """I for the argument sizing the input, H for every other size argument."""
    (dim,) = cell.input.type.shape
    return {s.arg: I if dim.symbols == {s.symbol} else H for s in cell.sizes
            if not s.optional}


@functools.cache
def native(path: str, dtype: str):
    """A NativeCell per cell file and dtype, compiled once per test session."""
    mod = cellc.load(path, target="llvm")
    skip_native_cell_if_row(mod.cell)
    return mod.native(dtype=dtype, **size_args(mod.cell))


def out_width(nc) -> int:
    return int(nc.cell.step.results[len(nc.cell.states)].type.shape[0].evaluate(nc.sizes))


def problem(nc, T, B, seed=0) -> dict:
    """float64 inputs: perturbed parameters (so no gain is exactly 1 and no bias exactly 0),
    non-zero initial states, and cotangents for the outputs and the final states."""
    cell, S = nc.cell, nc.sizes
    rng = np.random.default_rng(seed)
    params = {k: v + 0.1 * rng.standard_normal(v.shape)
              for k, v in numpy_ref.init_params(cell, S, rng, np.float64).items()}
    n_in = cell.input.type.concrete(S, 1, B)[1]
    states = {s.name: 0.5 * rng.standard_normal(s.type.concrete(S, 1, B)) for s in cell.states}
    return {
        "xs": rng.standard_normal((T, B, n_in)),
        "params": params,
        "states": states,
        "d_ys": rng.standard_normal((T, B, out_width(nc))),
        "d_states": {k: rng.standard_normal(v.shape) for k, v in states.items()},
    }


def cast(p: dict, dtype) -> dict:
    return {k: cast(v, dtype) if isinstance(v, dict) else v.astype(dtype) for k, v in p.items()}


def assert_rel(got, want, tol, what):
    """max |got - want| <= tol * max |want| (floored at 1e-3, so all-zero arrays are compared
    absolutely)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite values"
    if want.size == 0:
        return
    scale = max(float(np.abs(want).max()), 1e-3)
    err = float(np.abs(got.astype(np.float64) - want).max())
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} * {scale:.3g}"


def reference(nc, p64: dict):
    """(ys, final, grads) of the reference in float64."""
    return numpy_ref.backward(nc.cell, nc.sizes, p64["xs"], p64["params"], p64["states"],
                              p64["d_ys"], p64["d_states"], dtype=np.float64)


def grad_names(cell) -> set[str]:
    """What backward returns: not the constants and hyper-parameters (rnn's nonlinearity)."""
    return ({"xs"} | {s.name for s in cell.states}
            | {p.name for p in cell.params if p.kind not in ("const", "hyper")})


# ---------------------------------------------------------------------------------------------
# 1. NativeCell forward/backward vs the reference, every cell


@pytest.mark.slow_cells
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_backward_match_reference(cell_path, dtype):
    nc = native(str(cell_path), dtype)
    p64 = problem(nc, T, B)
    p = cast(p64, dtype)
    p64 = cast(p, np.float64)  # the reference sees exactly the values the kernel sees
    before = cast(p, dtype)  # copies

    ys, final, tape = nc.forward(p["xs"], p["params"], p["states"])
    grads = nc.backward(tape, p["d_ys"], p["d_states"])
    want_ys, want_final, want_grads = reference(nc, p64)

    tol = TOL[dtype]
    assert ys.dtype == np.dtype(dtype)
    assert_rel(ys, want_ys, tol, "ys")
    assert final.keys() == want_final.keys() == p["states"].keys()
    for k in want_final:
        assert final[k].dtype == np.dtype(dtype)
        assert_rel(final[k], want_final[k], tol, f"final {k}")
    assert grads.keys() == want_grads.keys() == grad_names(nc.cell)
    for k in want_grads:
        assert grads[k].dtype == np.dtype(dtype), k
        assert_rel(grads[k], want_grads[k], tol, f"grad {k}")
    # the inputs (cotangents included) were only read
    for group in ("xs", "d_ys"):
        assert np.array_equal(p[group], before[group]), group
    for group in ("params", "states", "d_states"):
        for k, v in p[group].items():
            assert np.array_equal(v, before[group][k]), f"{group} {k}"


@pytest.mark.slow_cells
def test_reference_comparison_can_fail(cell_path):
    """Guard: the initial states, the final-state cotangents and every parameter move the
    results by much more than the tolerance (so a kernel ignoring any of them would fail)."""
    nc = native(str(cell_path), "float64")
    p = problem(nc, T, B)
    ys, _, grads = reference(nc, p)
    zero_states = dict(p, states={k: np.zeros_like(v) for k, v in p["states"].items()})
    assert np.abs(reference(nc, zero_states)[0] - ys).max() > 1e-3
    zero_seeds = dict(p, d_states={k: np.zeros_like(v) for k, v in p["d_states"].items()})
    zero_d_ys = dict(p, d_ys=np.zeros_like(p["d_ys"]))
    without_seeds, without_d_ys = reference(nc, zero_seeds)[2], reference(nc, zero_d_ys)[2]
    for s in p["states"]:  # the final-state cotangents reach the initial states
        assert np.abs(without_seeds[s] - grads[s]).max() > 1e-6, s
    for k, g in grads.items():  # and every gradient depends on one of the two seeds
        # (mLSTM's query weights reach only the outputs, not the states)
        moved = max(np.abs(without_seeds[k] - g).max(), np.abs(without_d_ys[k] - g).max())
        assert moved > 1e-6, k
    for k in p["params"]:
        if k in grad_names(nc.cell):  # not a constant or hyper-parameter
            assert np.abs(grads[k]).max() > 1e-3, f"gradient of {k} is (nearly) zero"


def test_native_kernels_really_run():
    """Guard: a corrupted parameter changes the native result beyond tolerance."""
    nc = native(str(CELLS_DIR / "lstm.cell"), "float64")
    p = problem(nc, T, B)
    ys, _, _ = nc.forward(p["xs"], p["params"], p["states"])
    bad = dict(p["params"], bias_hh=p["params"]["bias_hh"] + 1e-6)
    ys2, _, _ = nc.forward(p["xs"], bad, p["states"])
    assert np.abs(ys - ys2).max() > 1e-9


@pytest.mark.parametrize("shape", [(0, 3), (5, 0), (0, 0), (1, 1)],
                         ids=lambda s: f"T{s[0]}-B{s[1]}")
def test_degenerate_shapes(shape):
    Tn, Bn = shape
    nc = native(str(CELLS_DIR / "lstm.cell"), "float64")
    p = problem(nc, Tn, Bn, seed=3)
    ys, final, tape = nc.forward(p["xs"], p["params"], p["states"])
    grads = nc.backward(tape, p["d_ys"], p["d_states"])
    want_ys, want_final, want_grads = reference(nc, p)
    assert_rel(ys, want_ys, 1e-10, "ys")
    for k in want_final:
        assert_rel(final[k], want_final[k], 1e-10, f"final {k}")
    for k in want_grads:
        assert_rel(grads[k], want_grads[k], 1e-10, f"grad {k}")


# ---------------------------------------------------------------------------------------------
# 2. variable lengths

LENGTHS = [3, 0, 5]  # unsorted, one empty sequence, one of full length (T = 5, B = 3)


@pytest.mark.slow_cells
@pytest.mark.parametrize("dtype", DTYPES)
def test_lengths_match_per_sequence_reference(cell_path, dtype):
    nc = native(str(cell_path), dtype)
    p = cast(problem(nc, T, B, seed=1), dtype)
    p64 = cast(p, np.float64)
    tol = TOL[dtype]
    lengths = np.array(LENGTHS)
    ys, final, tape = nc.forward(p["xs"], p["params"], p["states"], lengths=lengths)
    grads = nc.backward(tape, p["d_ys"], p["d_states"])  # d_ys past the ends must be ignored
    param_sum = {k: np.zeros(v.shape) for k, v in p64["params"].items()
                 if k in grad_names(nc.cell)}
    for b, L in enumerate(LENGTHS):
        one = {
            "xs": p64["xs"][:L, b : b + 1],
            "params": p64["params"],
            "states": {k: v[b : b + 1] for k, v in p64["states"].items()},
            "d_ys": p64["d_ys"][:L, b : b + 1],
            "d_states": {k: v[b : b + 1] for k, v in p64["d_states"].items()},
        }
        w_ys, w_final, w_grads = reference(nc, one)
        assert_rel(ys[:L, b], w_ys[:, 0], tol, f"ys[:{L}, {b}]")
        assert np.all(ys[L:, b] == 0), f"outputs past length {L} of sequence {b} are not zero"
        assert_rel(grads["xs"][:L, b], w_grads["xs"][:, 0], tol, f"grad xs[:{L}, {b}]")
        assert np.all(grads["xs"][L:, b] == 0), f"grad xs past length {L} of sequence {b}"
        for s in nc.cell.states:
            assert_rel(final[s.name][b], w_final[s.name][0], tol, f"final {s.name}[{b}]")
            assert_rel(grads[s.name][b], w_grads[s.name][0], tol, f"grad {s.name}[{b}]")
            if L == 0:  # the state passes through untouched, and so does its cotangent
                assert np.array_equal(final[s.name][b], p["states"][s.name][b])
                assert np.array_equal(grads[s.name][b], p["d_states"][s.name][b])
        for k in param_sum:
            param_sum[k] += w_grads[k]
    for k, v in param_sum.items():
        assert_rel(grads[k], v, tol, f"grad {k} (sum over sequences)")


def test_lengths_all_full_equal_no_lengths():
    nc = native(str(CELLS_DIR / "gru.cell"), "float64")
    p = problem(nc, T, B, seed=2)
    ys, final, tape = nc.forward(p["xs"], p["params"], p["states"])
    ys2, final2, tape2 = nc.forward(p["xs"], p["params"], p["states"], lengths=[T] * B)
    assert np.array_equal(ys, ys2) and np.array_equal(final["h"], final2["h"])
    g, g2 = (nc.backward(tape, p["d_ys"], p["d_states"]),
             nc.backward(tape2, p["d_ys"], p["d_states"]))
    for k in g:
        assert np.array_equal(g[k], g2[k]), k


def test_lengths_all_zero():
    nc = native(str(CELLS_DIR / "lstm.cell"), "float64")
    p = problem(nc, T, B, seed=4)
    ys, final, tape = nc.forward(p["xs"], p["params"], p["states"], lengths=[0] * B)
    grads = nc.backward(tape, p["d_ys"], p["d_states"])
    assert np.all(ys == 0) and np.all(grads["xs"] == 0)
    for k in p["states"]:
        assert np.array_equal(final[k], p["states"][k])
        assert np.array_equal(grads[k], p["d_states"][k])
    for k in p["params"]:
        assert np.all(grads[k] == 0), k


# ---------------------------------------------------------------------------------------------
# 3. step()


@pytest.mark.slow_cells
@pytest.mark.parametrize("dtype", DTYPES)
def test_steps_equal_forward(cell_path, dtype):
    nc = native(str(cell_path), dtype)
    p = cast(problem(nc, T, B, seed=5), dtype)
    ys, final, _ = nc.forward(p["xs"], p["params"], p["states"])
    states = {k: v.copy() for k, v in p["states"].items()}
    outs = []
    for t in range(T):
        y, states = nc.step(p["xs"][t], states, p["params"])
        assert y.dtype == np.dtype(dtype) and y.shape == ys.shape[1:]
        outs.append(y)
    tol = TOL[dtype]
    assert_rel(np.stack(outs), ys, tol, "stepped outputs")
    assert states.keys() == final.keys()
    for k in final:
        assert_rel(states[k], final[k], tol, f"stepped state {k}")
    for k, v in p["states"].items():  # the caller's states are not overwritten
        assert not np.shares_memory(states[k], v)


def test_step_without_states_starts_from_zero():
    nc = native(str(CELLS_DIR / "lstm.cell"), "float64")
    p = problem(nc, 1, B, seed=6)
    y, st = nc.step(p["xs"][0], None, p["params"])
    ys, final, _ = nc.forward(p["xs"], p["params"])
    assert_rel(y, ys[0], 1e-10, "y")
    for k in final:
        assert_rel(st[k], final[k], 1e-10, k)


# ---------------------------------------------------------------------------------------------
# 4. torch layers from the llvm target

B_LAYER = SIZES[1]  # batch of the layer tests (the layer_parity harness's)


@functools.cache
def llvm_module(name: str):
    return cellc.load(CELLS_DIR / f"{name}.cell", target="llvm")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("name", list(TORCH_LAYERS))
def test_llvm_layer_matches_torch(name, config, dtype):
    check_parity(llvm_module(name).Layer, name, config, dtype, node="NativeSequence")


def test_llvm_layer_comparison_can_fail():
    """Guard: perturbing one weight of ours by 1e-4 makes the comparison fail."""
    Layer = llvm_module("gru").Layer
    ref = TORCH_LAYERS["gru"](I, H, dtype=torch.float64)
    ours = Layer(I, H, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    with torch.no_grad():
        ours.bias_hh_l0[0] += 1e-4
    with pytest.raises(AssertionError):
        compare(ours, ref, "gru", {}, "time_major", True, torch.float64)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(TORCH_CELLS))
def test_llvm_cell_class_matches_torch(name, dtype):
    ref = TORCH_CELLS[name](I, H, dtype=dtype)
    ours = llvm_module(name).Cell(I, H, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B_LAYER, I, generator=g, dtype=dtype)
    hx = [torch.randn(B_LAYER, H, generator=g, dtype=dtype)
          for _ in range(2 if name == "lstm" else 1)]
    results = []
    for module in (ours, ref):
        xl = x.clone().requires_grad_()
        hl = [h.clone().requires_grad_() for h in hx]
        out = module(xl, hl[0] if len(hl) == 1 else tuple(hl))
        out = [out] if isinstance(out, torch.Tensor) else list(out)
        loss = sum((o * (k + 1.5)).sum() for k, o in enumerate(out))
        if module is ours:
            assert any("NativeSequence" in n for n in graph_names(loss))
        loss.backward()
        results.append([o.detach() for o in out] + [xl.grad] + [h.grad for h in hl]
                       + [p.grad for _, p in module.named_parameters()])
    for k, (a, b) in enumerate(zip(*results)):
        close(a, b, dtype, f"{name} cell result {k}")


# ---------------------------------------------------------------------------------------------
# 5. errors before any native call

ERRORS_SCRIPT = r"""
import json, sys
import numpy as np
import cellc
from cellc.native import _ARRAYS

nc = cellc.load(sys.argv[1], target="llvm").native(dtype="float64", input_size=3, hidden_size=4)
params = nc.init_params(rng=0)
T, B = 5, 2
kf, kb = nc.program.forward_kernel, nc.program.backward_kernel
fnames = [p.name for p in kf.func.params]

def kargs():
    return ([np.zeros((T * B, 3)), np.zeros((B, 4)), np.zeros((B, 4))]
            + [params[p.name] for p in nc.cell.params])

def with_arg(k, value):
    a = kargs(); a[k] = value; return a

full = np.full(T, B)
xs = np.zeros((T, B, 3))
_, _, tape = nc.forward(xs, params)
cases = {
    "kernel float16 h0": lambda: kf.run(
        T, B, full, with_arg(1, np.zeros((B, 4), np.float16)), _ARRAYS),
    "kernel float32 c0": lambda: kf.run(
        T, B, full, with_arg(2, np.zeros((B, 4), np.float32)), _ARRAYS),
    "kernel int xs": lambda: kf.run(
        T, B, full, with_arg(0, np.zeros((T * B, 3), np.int64)), _ARRAYS),
    "kernel list xs": lambda: kf.run(
        T, B, full, with_arg(0, np.zeros((T * B, 3)).tolist()), _ARRAYS),
    "kernel non-contiguous xs": lambda: kf.run(
        T, B, full, with_arg(0, np.zeros((T * B, 6))[:, ::2]), _ARRAYS),
    "kernel fortran-order weight_hh": lambda: kf.run(
        T, B, full, with_arg(4, np.asfortranarray(params["weight_hh"])), _ARRAYS),
    "kernel short xs": lambda: kf.run(T, B, full, with_arg(0, np.zeros((T * B - 1, 3))), _ARRAYS),
    "kernel wide weight_ih": lambda: kf.run(T, B, full, with_arg(3, np.zeros((16, 4))), _ARRAYS),
    "kernel small h0": lambda: kf.run(T, B, full, with_arg(1, np.zeros((B - 1, 4))), _ARRAYS),
    "kernel too few arrays": lambda: kf.run(T, B, full, kargs()[:-1], _ARRAYS),
    "kernel batch_sizes increase": lambda: kf.run(T, B, [1, 2, 2, 2, 2], kargs(), _ARRAYS),
    "kernel batch_sizes exceed B": lambda: kf.run(T, B, [B + 1] * T, kargs(), _ARRAYS),
    "kernel batch_sizes negative": lambda: kf.run(T, B, [2, 2, 1, 0, -1], kargs(), _ARRAYS),
    "kernel batch_sizes too short": lambda: kf.run(T, B, [2, 2], kargs(), _ARRAYS),
    "backward kernel short residual": lambda: kb.run(
        T, B, full,
        [tape.residuals[0][:-1]] + list(tape.residuals[1:])
        + [np.zeros((B, 4)), np.zeros((B, 4)), np.zeros((T * B, 4))],
        _ARRAYS),
    "forward float16 xs": lambda: nc.forward(xs.astype(np.float16), params),
    "forward int xs": lambda: nc.forward(xs.astype(np.int32), params),
    "forward 2-d xs": lambda: nc.forward(xs[0], params),
    "forward wrong features": lambda: nc.forward(np.zeros((T, B, 4)), params),
    "forward float32 weight_hh": lambda: nc.forward(
        xs, dict(params, weight_hh=params["weight_hh"].astype(np.float32))),
    "forward wrong-shaped weight_hh": lambda: nc.forward(
        xs, dict(params, weight_hh=np.zeros((16, 3)))),
    "forward missing bias_hh": lambda: nc.forward(
        xs, {k: v for k, v in params.items() if k != "bias_hh"}),
    "forward wrong batch c": lambda: nc.forward(xs, params, {"c": np.zeros((B + 1, 4))}),
    "forward unknown state": lambda: nc.forward(xs, params, {"bogus": np.zeros((B, 4))}),
    "forward lengths > T": lambda: nc.forward(xs, params, lengths=[T + 1, 1]),
    "forward negative length": lambda: nc.forward(xs, params, lengths=[-1, 1]),
    "forward float lengths": lambda: nc.forward(xs, params, lengths=[1.5, 1.0]),
    "forward lengths count": lambda: nc.forward(xs, params, lengths=[1, 1, 1]),
    "backward wrong d_ys": lambda: nc.backward(tape, np.zeros((T, B, 5))),
    "backward float32 d_states": lambda: nc.backward(
        tape, None, {"h": np.zeros((B, 4), np.float32)}),
    "step wrong features": lambda: nc.step(np.zeros((B, 5)), None, params),
    "step float32 x": lambda: nc.step(np.zeros((B, 3), np.float32), None, params),
    "step wrong batch h": lambda: nc.step(np.zeros((B, 3)), {"h": np.zeros((B + 3, 4))}, params),
    "dtype float16": lambda: cellc.load(sys.argv[1], target="llvm").native(
        dtype="float16", input_size=3, hidden_size=4),
}

# the torch side: tensors into the same kernels (torch_ops.TorchArrays), and the layer classes
import torch
from cellc.backends.llvm_layers import _TORCH

TB = 4
def targs(k=None, value=None):
    a = ([torch.zeros(T * TB, 3, dtype=torch.float64), torch.zeros(TB, 4, dtype=torch.float64),
          torch.zeros(TB, 4, dtype=torch.float64)]
         + [torch.from_numpy(params[p.name]) for p in nc.cell.params])
    if k is not None:
        a[k] = value
    return a

tfull = np.full(T, TB)
mod = cellc.load(sys.argv[1], target="llvm")
cases.update({
    "torch valid call": lambda: kf.run(T, TB, [4, 4, 3, 1, 1], targs(), _TORCH),
    "torch meta xs": lambda: kf.run(
        T, TB, tfull, targs(0, torch.empty(T * TB, 3, dtype=torch.float64, device="meta")),
        _TORCH),
    "torch float32 xs": lambda: kf.run(T, TB, tfull, targs(0, torch.zeros(T * TB, 3)), _TORCH),
    "torch non-contiguous xs": lambda: kf.run(
        T, TB, tfull, targs(0, torch.zeros(T * TB, 6, dtype=torch.float64)[:, ::2]), _TORCH),
    "torch short xs": lambda: kf.run(
        T, TB, tfull, targs(0, torch.zeros(T * TB - 1, 3, dtype=torch.float64)), _TORCH),
    "torch numpy xs": lambda: kf.run(T, TB, tfull, targs(0, np.zeros((T * TB, 3))), _TORCH),
    "torch batch_sizes increase": lambda: kf.run(T, TB, [1, 2, 3, 4, 4], targs(), _TORCH),
    "torch batch_sizes exceed B": lambda: kf.run(T, TB, [TB + 1] * T, targs(), _TORCH),
    "layer on meta": lambda: mod.Layer(3, 4, device="meta")(torch.empty(T, TB, 3, device="meta")),
    "cell class on meta": lambda: mod.Cell(3, 4, device="meta")(torch.empty(TB, 3, device="meta")),
    "layer meta input, cpu weights": lambda: mod.Layer(3, 4)(torch.empty(T, TB, 3, device="meta")),
    "layer float16": lambda: mod.Layer(3, 4, dtype=torch.float16)(
        torch.zeros(T, TB, 3, dtype=torch.float16)),
})
results = {}
for name, fn in cases.items():
    try:
        fn()
        results[name] = ["no error", ""]
    except Exception as e:
        results[name] = [type(e).__name__, str(e)]
# non-contiguous input to NativeCell.forward is copied, not rejected: same answer
ys1 = nc.forward(np.ascontiguousarray(np.arange(T * B * 6.0).reshape(T, B, 6)[:, :, ::2] / 30),
                 params)[0]
ys2 = nc.forward(np.arange(T * B * 6.0).reshape(T, B, 6)[:, :, ::2] / 30, params)[0]
results["non-contiguous xs is copied"] = ["same" if np.array_equal(ys1, ys2) else "different", ""]
print(json.dumps({"fnames": fnames, "results": results}))
"""

# case -> (exception class, words its message must contain)
EXPECTED_ERRORS = {
    "kernel float16 h0": ("TypeError", ["{f1}", "float16"]),
    "kernel float32 c0": ("TypeError", ["{f2}", "float32"]),
    "kernel int xs": ("TypeError", ["{f0}", "int64"]),
    "kernel list xs": ("TypeError", ["{f0}", "list"]),
    "kernel non-contiguous xs": ("ValueError", ["{f0}", "contiguous"]),
    "kernel fortran-order weight_hh": ("ValueError", ["weight_hh", "contiguous"]),
    "kernel short xs": ("ValueError", ["{f0}", "shape"]),
    "kernel wide weight_ih": ("ValueError", ["weight_ih", "shape"]),
    "kernel small h0": ("ValueError", ["{f1}", "shape"]),
    "kernel too few arrays": ("ValueError", ["arrays"]),
    "kernel batch_sizes increase": ("ValueError", ["batch_sizes"]),
    "kernel batch_sizes exceed B": ("ValueError", ["batch_sizes"]),
    "kernel batch_sizes negative": ("ValueError", ["batch_sizes"]),
    "kernel batch_sizes too short": ("ValueError", ["batch_sizes"]),
    "backward kernel short residual": ("ValueError", ["shape"]),
    "forward float16 xs": ("TypeError", ["xs", "float16"]),
    "forward int xs": ("TypeError", ["xs", "int32"]),
    "forward 2-d xs": ("ValueError", ["xs"]),
    "forward wrong features": ("ValueError", ["xs", "shape"]),
    "forward float32 weight_hh": ("TypeError", ["weight_hh", "float32"]),
    "forward wrong-shaped weight_hh": ("ValueError", ["weight_hh", "shape"]),
    "forward missing bias_hh": ("ValueError", ["bias_hh"]),
    "forward wrong batch c": ("ValueError", ["'c'", "shape"]),
    "forward unknown state": ("ValueError", ["bogus"]),
    "forward lengths > T": ("ValueError", ["lengths"]),
    "forward negative length": ("ValueError", ["lengths"]),
    "forward float lengths": ("ValueError", ["lengths"]),
    "forward lengths count": ("ValueError", ["lengths"]),
    "backward wrong d_ys": ("ValueError", ["d_ys", "shape"]),
    "backward float32 d_states": ("TypeError", ["d_states", "float32"]),
    "step wrong features": ("ValueError", ["x", "shape"]),
    "step float32 x": ("TypeError", ["x", "float32"]),
    "step wrong batch h": ("ValueError", ["'h'", "shape"]),
    "dtype float16": ("TypeError", ["float16"]),
    "non-contiguous xs is copied": ("same", []),
    "torch valid call": ("no error", []),
    "torch meta xs": ("ValueError", ["{f0}", "CPU"]),
    "torch float32 xs": ("TypeError", ["{f0}", "float32"]),
    "torch non-contiguous xs": ("ValueError", ["{f0}", "contiguous"]),
    "torch short xs": ("ValueError", ["{f0}", "shape"]),
    "torch numpy xs": ("TypeError", ["{f0}", "tensor"]),
    "torch batch_sizes increase": ("ValueError", ["batch_sizes"]),
    "torch batch_sizes exceed B": ("ValueError", ["batch_sizes"]),
    "layer on meta": ("ValueError", ["CPU", "meta"]),
    "cell class on meta": ("ValueError", ["CPU", "meta"]),
    # the layer machinery's device check (RuntimeError, as torch's modules raise for mismatched
    # devices) fires before anything native
    "layer meta input, cpu weights": ("RuntimeError", ["meta", "cpu"]),
    "layer float16": ("TypeError", ["float16"]),
}


def python(script, *args, env=None, timeout=180, **kw):
    e = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    e.update(env or {})
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env=e, timeout=timeout, check=False, **kw)


@pytest.fixture(scope="module")
def error_results():
    """All bad calls (NumPy arrays into NativeCell and the kernels, tensors into the kernels and
    the layers), made in a child process: a missing check that lets a native call crash shows up
    as a non-zero exit status (-11 for a segfault) instead of killing the test run."""
    res = python(ERRORS_SCRIPT, CELLS_DIR / "lstm.cell")
    assert res.returncode == 0, f"child died with status {res.returncode}:\n{res.stderr[-3000:]}"
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("case", list(EXPECTED_ERRORS))
def test_bad_arguments_are_rejected(error_results, case):
    kind, words = EXPECTED_ERRORS[case]
    got_kind, message = error_results["results"][case]
    assert got_kind == kind, f"{case}: got {got_kind}: {message}"
    f = error_results["fnames"]
    for w in words:
        w = w.format(f0=f[0], f1=f[1], f2=f[2])
        assert w in message, f"{case}: {w!r} not in {message!r}"


def test_error_cases_cover_the_script():
    assert set(EXPECTED_ERRORS) == {
        line.split('"')[1] for line in ERRORS_SCRIPT.splitlines() if line.startswith('    "')
    } | {"non-contiguous xs is copied"}


def test_llvm_layer_accepts_non_contiguous_input():
    layer = llvm_module("gru").Layer(I, H, dtype=torch.float64)
    x = torch.randn(T, B_LAYER, 2 * I, dtype=torch.float64)[:, :, ::2]
    assert not x.is_contiguous()
    y1, h1 = layer(x)
    y2, h2 = layer(x.contiguous())
    assert torch.equal(y1, y2) and torch.equal(h1, h2)


# ---------------------------------------------------------------------------------------------
# 6. the disk cache, 7. no torch

CACHE_SCRIPT = r"""
import json, sys, time
from pathlib import Path
sys.modules["torch"] = None  # the NumPy-level API must not need torch
import numpy as np
import cellc
from cellc.backends import cache

loads = []
_load = cache.DiskObjectCache.load
def load(self, module):
    data = _load(self, module)
    if self.path is None or self.path.suffix == ".o":  # kernels, not the parser's tables
        loads.append(None if data is None else len(data))
    return data
cache.DiskObjectCache.load = load

out, ready, go = sys.argv[1], sys.argv[2], sys.argv[3]
mod = cellc.load(sys.argv[4], target="llvm")
if ready != "-":  # start compiling together with the other process
    Path(ready).touch()
    deadline = time.time() + 60
    while not Path(go).exists() and time.time() < deadline:
        time.sleep(0.002)
nc = mod.native(dtype="float64", input_size=3, hidden_size=4)
rng = np.random.default_rng(0)
params = nc.init_params(rng=1)
xs = rng.standard_normal((5, 3, 3))
states = {"h": rng.standard_normal((3, 4)), "c": rng.standard_normal((3, 4))}
ys, final, tape = nc.forward(xs, params, states, lengths=[2, 5, 0])
grads = nc.backward(tape, rng.standard_normal(ys.shape), {"h": rng.standard_normal((3, 4))})
np.savez(out, ys=ys, **{"final_" + k: v for k, v in final.items()},
         **{"grad_" + k: v for k, v in grads.items()})
print(json.dumps({"loads": loads, "torch": sys.modules.get("torch", "absent") is None}))
"""


def run_cached(cache_dir: Path, out: Path, ready="-", go="-", popen=False):
    args = [sys.executable, "-c", CACHE_SCRIPT, str(out), str(ready), str(go),
            str(CELLS_DIR / "lstm.cell")]
    env = dict(os.environ, CELLC_CACHE_DIR=str(cache_dir), OPENBLAS_NUM_THREADS="1")
    if popen:
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=ROOT, env=env)
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=180,
                          check=False)


def report(res) -> dict:
    assert res.returncode == 0, f"child exited with status {res.returncode}:\n{res.stderr[-3000:]}"
    return json.loads(res.stdout.strip().splitlines()[-1])


def load_npz(path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def assert_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert v.dtype == b[k].dtype and np.array_equal(v, b[k]), k


def entries(d: Path):
    """The object-code entries: the forward's and the backward's (modules of their own); the
    parser's tables (*.lark) are cached beside them."""
    return sorted(p.name for p in d.iterdir() if p.suffix != ".lark")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A cache directory filled by one fresh process, and that process's results."""
    d = tmp_path_factory.mktemp("cache-first")
    out = tmp_path_factory.mktemp("results") / "first.npz"
    info = report(run_cached(d, out))
    return d, load_npz(out), info


@pytest.mark.slow
def test_disk_cache_is_written_once(first_run):
    d, _, info = first_run
    assert info["torch"] is True  # torch was blocked, not imported
    assert info["loads"] and all(n is None for n in info["loads"]), "empty cache, yet a hit"
    names = entries(d)
    assert len(names) == 2 and all(n.endswith(".o") for n in names), names
    assert min((d / n).stat().st_size for n in names) > 1000


@pytest.mark.slow
def test_disk_cache_hit_in_fresh_process(first_run, tmp_path):
    d0, want, _ = first_run
    d = tmp_path / "cache"
    shutil.copytree(d0, d)
    before = {n: (d / n).read_bytes() for n in entries(d)}
    info = report(run_cached(d, tmp_path / "second.npz"))
    assert any(n for n in info["loads"]), f"the cache entry was not used: {info['loads']}"
    assert_identical(load_npz(tmp_path / "second.npz"), want)
    assert {n: (d / n).read_bytes() for n in entries(d)} == before  # nothing rewritten or added


@pytest.mark.slow
def test_disk_cache_key_depends_on_sizes(first_run, tmp_path):
    """Guard: other sizes must not reuse the entry (different kernels)."""
    from cellc.backends.llvm_jit import blas_choice  # noqa: F401  (same process: same BLAS)

    cell = cellc.load_cell(CELLS_DIR / "lstm.cell")
    k1 = cache.cache_key(cell, cell.bind(input_size=3, hidden_size=4), "float64", "program")
    k2 = cache.cache_key(cell, cell.bind(input_size=3, hidden_size=5), "float64", "program")
    k3 = cache.cache_key(cell, cell.bind(input_size=3, hidden_size=4), "float32", "program")
    k4 = cache.cache_key(cell, cell.bind(input_size=3, hidden_size=4), "float64", "step")
    assert len({k1, k2, k3, k4}) == 4


@pytest.mark.slow
def test_concurrent_compiles_leave_one_entry(first_run, tmp_path):
    _, want, _ = first_run
    d = tmp_path / "cache"
    ready = [tmp_path / "ready0", tmp_path / "ready1"]
    go = tmp_path / "go"
    procs = [run_cached(d, tmp_path / f"r{k}.npz", ready[k], go, popen=True) for k in range(2)]
    try:
        deadline = time.time() + 120
        while not all(r.exists() for r in ready) and time.time() < deadline:
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.01)
        go.touch()
        outs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, stderr) in zip(procs, outs):
        assert p.returncode == 0, f"status {p.returncode}:\n{stderr[-3000:]}"
    for k in range(2):
        assert_identical(load_npz(tmp_path / f"r{k}.npz"), want)
    names = entries(d)
    assert not [n for n in names if n.endswith(".tmp")], names
    assert len(names) == 2 and all(n.endswith(".o") for n in names), names
    # the entry is complete: a third process loads it and gets the same answer
    info = report(run_cached(d, tmp_path / "third.npz"))
    assert any(n for n in info["loads"])
    assert_identical(load_npz(tmp_path / "third.npz"), want)


def _corrupt(path: Path, how: str):
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"garbage, not an object file\n" * 10)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["empty", "truncated", "garbage"])
def test_corrupt_cache_entry_is_recompiled_and_replaced(first_run, tmp_path, how):
    """A broken entry must not crash the process (MCJIT aborts on a broken object file) nor be
    trusted: the kernels are recompiled (bit-identical results, so the optimized code ran) and the
    entry is rewritten whole."""
    d0, want, _ = first_run
    d = tmp_path / "cache"
    shutil.copytree(d0, d)
    good = {n: (d / n).read_bytes() for n in entries(d)}  # the forward's and the backward's
    for n in good:
        _corrupt(d / n, how)
    res = run_cached(d, tmp_path / "out.npz")
    assert res.returncode == 0, f"child exited with status {res.returncode}:\n{res.stderr[-2000:]}"
    assert_identical(load_npz(tmp_path / "out.npz"), want)
    assert entries(d) == sorted(good)
    for n, data in good.items():
        assert (d / n).read_bytes() == data, f"the broken entry {n} was not replaced"


NO_TORCH_SCRIPT = r"""
import json, sys
sys.modules["torch"] = None  # `import torch` raises ImportError from here on
import numpy as np
import cellc
from cellc.backends import numpy_ref
from cellc.backends.llvm_jit import blas_choice

mod = cellc.load(sys.argv[1], target="llvm")
errors = {}
for dtype in ("float64", "float32"):
    nc = mod.native(dtype=dtype, input_size=3, hidden_size=4)
    rng = np.random.default_rng(0)
    params = nc.init_params(rng=1)
    xs = rng.standard_normal((5, 3, 3)).astype(dtype)
    states = {"h": rng.standard_normal((3, 4)).astype(dtype),
              "c": rng.standard_normal((3, 4)).astype(dtype)}
    d_ys = rng.standard_normal((5, 3, 4)).astype(dtype)
    ys, final, tape = nc.forward(xs, params, states)
    grads = nc.backward(tape, d_ys)
    up = lambda d: {k: v.astype(np.float64) for k, v in d.items()}
    w_ys, w_final, w_grads = numpy_ref.backward(nc.cell, nc.sizes, xs.astype(np.float64),
                                                up(params), up(states), d_ys.astype(np.float64),
                                                dtype=np.float64)
    rel = lambda a, b: float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-3))
    errors[dtype] = max([rel(ys, w_ys)] + [rel(final[k], w_final[k]) for k in final]
                        + [rel(grads[k], w_grads[k]) for k in w_grads])
try:
    import torch
    imported = True
except ImportError:
    imported = False
print(json.dumps({"errors": errors, "blas": blas_choice(), "torch_imported": imported,
                  "llvm_layers_loaded": "cellc.backends.llvm_layers" in sys.modules}))
"""


@pytest.mark.slow
def test_numpy_api_without_torch():
    res = python(NO_TORCH_SCRIPT, CELLS_DIR / "lstm.cell")
    info = report(res)
    assert info["torch_imported"] is False and info["llvm_layers_loaded"] is False
    assert info["blas"] == "openblas"
    assert info["errors"]["float64"] <= TOL["float64"], info
    assert info["errors"]["float32"] <= TOL["float32"], info


def test_load_llvm_is_cached_and_names_classes():
    mod = llvm_module("lstm")
    assert cellc.load(CELLS_DIR / "lstm.cell", target="llvm") is mod
    assert mod.LSTM is mod.Layer and mod.LSTMCell is mod.Cell
    assert issubclass(mod.Layer, torch.nn.Module)
    with pytest.raises(AttributeError):
        _ = mod.GRU
    with pytest.raises(ValueError, match="target"):
        cellc.load(CELLS_DIR / "lstm.cell", target="cuda")
