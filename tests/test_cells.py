"""Every file in cells/: it compiles cleanly, its IR verifies, and the reference runs it.

`cell_path` is parametrized over `cells/*.cell` by conftest.py, so a new cell file is tested
here with no new test code.
"""

from __future__ import annotations

import numpy as np
import pytest

import cellc
from cellc import cli, ir
from cellc.backends.numpy_ref import forward, init_params
from cellc.lower import sequence_program

from conftest import CELL_FILES

# Distinct sizes (so a transposed weight cannot go unnoticed) that divide by 2, 3 and 4.
SIZES = (12, 24, 36)


def test_corpus_is_found():
    assert len(CELL_FILES) >= 3 and all(p.suffix == ".cell" for p in CELL_FILES)


@pytest.fixture
def cell(cell_path):
    return cellc.load_cell(cell_path)


def test_loads_without_warnings(cell, cell_path):
    assert cell.warnings == (), [str(w) for w in cell.warnings]
    assert cell.source.name == str(cell_path)
    assert len(cell.states) >= 1 and cell.params


def test_ir_verifies(cell):
    assert ir.verify(cell.step) is cell.step
    seq = sequence_program(cell)
    assert ir.verify(seq) is seq
    (scan,) = seq.body
    assert scan.op == "scan" and scan.attrs["step"] is cell.step
    # The sequence program returns the final states, then the stacked outputs.
    assert [r.type for r in seq.results[:-1]] == [s.type for s in cell.states]
    assert str(seq.results[-1].type).startswith("[T*B,")


def test_cli_check(cell_path, capsys):
    assert cli.main(["check", str(cell_path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{cell_path}: ok: ") and out.count("\n") == 1
    assert err == ""


def run(cell, dtype, T=5, B=3, seed=0):
    sizes = cell.bind(**{s.arg: n for s, n in zip(cell.sizes, SIZES) if not s.optional})
    rng = np.random.default_rng(seed)
    params = init_params(cell, sizes, rng)  # float64; forward casts
    I = int(cell.input_size.evaluate(sizes))  # x's size (the step's row may be wider)
    xs = rng.normal(size=(T, B, I))
    states = {s.name: 0.5 * rng.normal(size=s.type.concrete(sizes, 1, B)) for s in cell.states}
    ys, final = forward(cell, sizes, xs.astype(dtype), params, states, dtype=dtype)
    return sizes, ys, final


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_reference_runs(cell, dtype):
    T, B = 5, 3
    sizes, ys, final = run(cell, dtype, T, B)
    (n_out,) = [r.type for r in cell.step.results][-1].concrete(sizes, 1, B)[1:]
    assert ys.shape == (T, B, n_out) and ys.dtype == dtype
    assert np.isfinite(ys).all()
    assert sorted(final) == sorted(s.name for s in cell.states)
    for s in cell.states:
        assert final[s.name].shape == s.type.concrete(sizes, 1, B)
        assert final[s.name].dtype == dtype and np.isfinite(final[s.name]).all()
    assert np.abs(ys).max() > 1e-3  # not trivially zero


def test_float32_agrees_with_float64(cell):
    _, ys32, final32 = run(cell, np.float32)
    _, ys64, final64 = run(cell, np.float64)
    np.testing.assert_allclose(ys32, ys64, rtol=1e-4, atol=1e-4)
    for k in final64:
        np.testing.assert_allclose(final32[k], final64[k], rtol=1e-4, atol=1e-4, err_msg=k)


def test_outputs_depend_on_the_data(cell):
    _, ys, _ = run(cell, np.float64, seed=0)
    _, ys_other, _ = run(cell, np.float64, seed=1)
    assert np.abs(ys - ys_other).max() > 1e-3
