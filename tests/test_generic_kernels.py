"""Size-generic native kernels (issue 13): one compile of a cell per dtype serves every size.

`NativeProgram(cell, None, dtype)` compiles kernels whose feature sizes are run-time arguments;
`program.bind(sizes)` gives the forward and backward kernels at concrete sizes. For every zoo
cell, at odd sizes, sizes with a dim of 1 and larger ones, the generic kernels' outputs, final
states and every gradient match the NumPy reference and the specialized kernels, with sequences
of uneven lengths; T=0 and B=0 work; wrong arrays or sizes never reach native code.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import numpy as np
import pytest

from cellc.backends import llvm_jit, numpy_ref
from cellc.cli import main
from cellc.frontend import load_file
from cellc.native import NativeCell
from cellc.runtime import native_calls

from conftest import skip_native_cell_if_row

ROOT = Path(__file__).resolve().parent.parent
CELLS_DIR = ROOT / "cells"
TOL = {"float64": 1e-10, "float32": 1e-4}  # relative to the reference's largest magnitude
# A layer norm over one feature (H=1) divides by sqrt(var + eps) with var = 0: 1/sqrt(1e-5)
# amplifies float32 rounding ~300 times (the specialized kernels' errors are the same).
ONE_FEATURE_TOL32 = 3e-3
DTYPES = ["float64", "float32"]
# (I, H): odd sizes, every feature dim 1, and sizes past a vector width with leftovers.
SIZES = [(3, 5), (1, 1), (17, 33)]
T, B = 5, 3
LENGTHS = [3, 0, 5]  # unsorted, one empty sequence, one of full length


@functools.cache
def generic(path: str, dtype: str) -> llvm_jit.NativeProgram:
    """The one generic compile per cell file and dtype."""
    return llvm_jit.NativeProgram(load_file(path), None, dtype)


def size_args(cell, I: int, H: int) -> dict[str, int]:
    (dim,) = cell.input.type.shape
    return {s.arg: I if dim.symbols == {s.symbol} else H for s in cell.sizes
            if not s.optional}


def cells_at(path: str, dtype: str, I: int, H: int):
    """(specialized NativeCell, the same NativeCell over the generic program bound to its
    sizes)."""
    skip_native_cell_if_row(load_file(path))
    spec = NativeCell(path, dtype=dtype, **size_args(load_file(path), I, H))
    gen = copy.copy(spec)
    gen._program = generic(path, dtype).bind(spec.sizes)
    return spec, gen


def problem(nc, T, B, seed=0) -> dict:
    """float64 inputs: perturbed parameters, non-zero initial states, cotangents for the
    outputs and the final states."""
    cell, S = nc.cell, nc.sizes
    rng = np.random.default_rng(seed)
    params = {k: v + 0.1 * rng.standard_normal(v.shape)
              for k, v in numpy_ref.init_params(cell, S, rng, np.float64).items()}
    states = {s.name: 0.5 * rng.standard_normal(s.type.concrete(S, 1, B)) for s in cell.states}
    out = int(cell.step.results[len(cell.states)].type.shape[0].evaluate(S))
    return {
        "xs": rng.standard_normal((T, B, cell.input.type.concrete(S, 1, B)[1])),
        "params": params,
        "states": states,
        "d_ys": rng.standard_normal((T, B, out)),
        "d_states": {k: rng.standard_normal(v.shape) for k, v in states.items()},
    }


def cast(p: dict, dtype) -> dict:
    return {k: cast(v, dtype) if isinstance(v, dict) else v.astype(dtype) for k, v in p.items()}


def assert_rel(got, want, tol, what):
    """max |got - want| <= tol * max |want| (floored at 1e-3)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite values"
    if want.size == 0:
        return
    scale = max(float(np.abs(want).max()), 1e-3)
    err = float(np.abs(got.astype(np.float64) - want).max())
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} * {scale:.3g}"


def run(nc, p, lengths=None):
    ys, final, tape = nc.forward(p["xs"], p["params"], p["states"], lengths=lengths)
    grads = nc.backward(tape, p["d_ys"], p["d_states"])
    return ys, final, grads


def flat(results) -> dict:
    ys, final, grads = results
    return {"ys": ys, **{f"final {k}": v for k, v in final.items()},
            **{f"grad {k}": v for k, v in grads.items()}}


def reference(nc, p64, lengths=None) -> dict:
    """The reference in float64; with lengths, sequence by sequence (parameter gradients
    summed), outputs past a sequence's end zero."""
    if lengths is None:
        return flat(numpy_ref.backward(nc.cell, nc.sizes, p64["xs"], p64["params"],
                                       p64["states"], p64["d_ys"], p64["d_states"],
                                       dtype=np.float64))
    out = {"ys": np.zeros_like(p64["d_ys"]),
           "grad xs": np.zeros_like(p64["xs"])}
    for b, L in enumerate(lengths):
        one = {"xs": p64["xs"][:L, b:b + 1],
               "states": {k: v[b:b + 1] for k, v in p64["states"].items()},
               "d_ys": p64["d_ys"][:L, b:b + 1],
               "d_states": {k: v[b:b + 1] for k, v in p64["d_states"].items()}}
        ys, final, grads = numpy_ref.backward(nc.cell, nc.sizes, one["xs"], p64["params"],
                                              one["states"], one["d_ys"], one["d_states"],
                                              dtype=np.float64)
        out["ys"][:L, b] = ys[:, 0]
        out["grad xs"][:L, b] = grads["xs"][:, 0]
        for s in nc.cell.states:
            out.setdefault(f"final {s.name}", np.zeros_like(p64["states"][s.name]))[b] = \
                final[s.name][0]
            out.setdefault(f"grad {s.name}", np.zeros_like(p64["states"][s.name]))[b] = \
                grads[s.name][0]
        for k in p64["params"]:
            if k in grads:  # constants and hyper-parameters get none
                out[f"grad {k}"] = out.get(f"grad {k}", 0) + grads[k]
    return out


# ---------------------------------------------------------------------------------------------
# 1. every zoo cell: generic == specialized == reference, one generic compile for all sizes


@pytest.mark.slow_cells
@pytest.mark.parametrize("dtype", DTYPES)
def test_generic_kernels_match_specialized_and_reference(cell_path, dtype):
    program = generic(str(cell_path), dtype)
    tol = TOL[dtype]
    for k, (I, H) in enumerate(SIZES):
        spec, gen = cells_at(str(cell_path), dtype, I, H)
        assert gen.program.forward_kernel.kernel is program.forward_kernel  # the same code
        p = cast(problem(spec, T, B, seed=k), dtype)
        p64 = cast(p, np.float64)
        for lengths in (None, LENGTHS):
            want = reference(spec, p64, lengths)
            got_spec = flat(run(spec, p, lengths))
            got_gen = flat(run(gen, p, lengths))
            assert got_gen.keys() == got_spec.keys() == want.keys()
            for name, w in want.items():
                what = f"{cell_path.stem} I={I} H={H} lengths={lengths}: {name}"
                assert got_gen[name].dtype == np.dtype(dtype), what
                ref_tol = ONE_FEATURE_TOL32 if dtype == "float32" and H == 1 else tol
                assert_rel(got_gen[name], w, ref_tol, what)
                assert_rel(got_gen[name], got_spec[name].astype(np.float64), tol, what)
    assert generic.cache_info().currsize >= 1


@pytest.mark.parametrize("shape", [(0, 3), (5, 0), (0, 0), (1, 1)],
                         ids=lambda s: f"T{s[0]}-B{s[1]}")
def test_degenerate_shapes(shape):
    Tn, Bn = shape
    spec, gen = cells_at(str(CELLS_DIR / "lstm.cell"), "float64", 3, 5)
    p = problem(spec, Tn, Bn, seed=3)
    want = reference(spec, p)
    got = flat(run(gen, p))
    for name, w in want.items():
        assert_rel(got[name], w, 1e-10, name)


def test_comparison_can_fail():
    """Guard: a generic kernel bound to the wrong sizes' weights would differ; a perturbed
    parameter moves the generic result beyond tolerance."""
    _, gen = cells_at(str(CELLS_DIR / "gru.cell"), "float64", 3, 5)
    p = problem(gen, T, B)
    ys = run(gen, p)[0]
    bad = dict(p, params=dict(p["params"], bias_hh=p["params"]["bias_hh"] + 1e-6))
    assert np.abs(run(gen, bad)[0] - ys).max() > 1e-9


# ---------------------------------------------------------------------------------------------
# 2. what reaches native code


def _refuse_native(kernel):
    def never(*args):
        raise AssertionError("native code was called")

    kernel._call = never


def test_wrong_arrays_for_the_sizes_never_reach_native_code():
    path = str(CELLS_DIR / "lstm.cell")
    program = llvm_jit.NativeProgram(load_file(path), None, "float64")  # a private copy
    spec = NativeCell(path, dtype="float64", input_size=3, hidden_size=5)
    p = problem(spec, T, B)
    args = [p["xs"].reshape(T * B, 3), p["states"]["h"], p["states"]["c"],
            *(p["params"][q.name] for q in spec.cell.params)]
    bound = program.bind(spec.sizes)
    bound.forward_kernel.run(T, B, np.full(T, B), args, native_calls._NUMPY)  # valid: runs
    _refuse_native(program.forward_kernel)
    fwd = program.forward_kernel
    bs = np.full(T, B)
    # arrays for I=3, H=5 run at other sizes, bound or per call
    with pytest.raises(ValueError, match="expected shape"):
        program.bind({"I": 3, "H": 6}).forward_kernel.run(T, B, bs, args, native_calls._NUMPY)
    with pytest.raises(ValueError, match="expected shape"):
        fwd.run(T, B, bs, args, native_calls._NUMPY, sizes={"I": 4, "H": 5})
    with pytest.raises(ValueError, match="needs the sizes"):
        fwd.run(T, B, bs, args, native_calls._NUMPY)
    for bad in ({"I": 3}, {"I": 3, "H": 5, "X": 1}, {"I": 3, "H": 0}, {"I": 3, "H": True},
                {"I": 3, "H": 2.0}):
        with pytest.raises(ValueError):
            fwd.run(T, B, bs, args, native_calls._NUMPY, sizes=bad)
    with pytest.raises((TypeError, ValueError)):
        program.bind({"I": 3, "H": -1})


def test_sizes_that_make_a_dim_not_whole_are_refused():
    kernel = {"dtype": "float64", "sizes": ["H"], "generic": True, "buffers": 0,
              "args": [("x", ["B", [[1, 2, "H"]]])], "results": [], "workspace": [0, 0, 0],
              "dims": [[[1, 2, "H"]]]}
    assert native_calls._bind_kernel(kernel, {"H": 6})["args"] == [("x", ["B", 3])]
    with pytest.raises(ValueError, match="not whole"):
        native_calls._bind_kernel(kernel, {"H": 5})


def test_size_polynomials_evaluate_and_print():
    poly = [[4, 1, "H", "I"], [1, 2, "H"], [-3, 1]]
    assert native_calls._size_value(poly, {"H": 2, "I": 3}) == 24 + 1 - 3
    assert native_calls._size_value([[1, 3, "H"], [1, 3, "I"]], {"H": 1, "I": 2}) == 1
    assert native_calls._size_value([[1, 3, "H"]], {"H": 2}) is None
    assert native_calls._format_size(poly) == "4*H*I + H/2 - 3"
    assert native_calls._format_size([[4, 1, "H"]]) == "4*H"
    assert native_calls._format_size([[1, 1, "I"], [1, 1, "H"]]) == "I + H"
    assert native_calls._format_size(7) == "7"


def test_specs_name_the_sizes_and_keep_ints_when_specialized():
    path = str(CELLS_DIR / "lstm.cell")
    g = generic(path, "float64")
    spec = NativeCell(path, dtype="float64", input_size=3, hidden_size=5)
    s, gs = spec.program.forward_kernel.spec, g.forward_kernel.spec
    assert s["sizes"] == gs["sizes"] == ["I", "H"]
    assert not s.get("generic") and gs["generic"]
    assert gs["workspace"][0] == [[4, 1, "H"]]  # per T*B row: the input projection, 4H
    assert dict(gs["args"])["weight_ih"] == [[[4, 1, "H"]], [[1, 1, "I"]]]
    bound = g.bind(spec.sizes).forward_kernel.spec
    assert bound["args"] == s["args"] and bound["results"] == s["results"]
    # a specialized program binds only to its own sizes
    assert spec.program.bind(spec.sizes) is spec.program
    with pytest.raises(ValueError, match="specialized"):
        spec.program.bind({"I": 3, "H": 6})


# ---------------------------------------------------------------------------------------------
# 3. cellc show without --sizes: the generic plan and IR


def test_show_without_sizes_prints_the_generic_plan_and_ir(capsys):
    path = str(CELLS_DIR / "lstm.cell")
    assert main(["show", path, "--emit", "plan"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("generic plan: sizes I, H given at run time")
    assert "ws0[r*4*H + c]" in out and "workspace (4*H)*T*B + (9*H)*B" in out
    assert "inline gemm" not in out
    assert main(["show", path, "--emit", "llvm"]) == 0
    ir = capsys.readouterr().out
    assert ir.startswith("; generic (sizes I, H at run time)")
    assert '%"size1" = load i64' in ir  # H, the second size
    assert main(["show", path, "--emit", "plan", "--sizes", "input_size=8,hidden_size=16"]) == 0
    assert capsys.readouterr().out.startswith("plan for sizes I=8, H=16")
