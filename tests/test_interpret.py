"""The one interpreter (cellc.backends.interpret) over its two array libraries.

numpy_ref and torch_eager are `interpret.rules` and `interpret.run` over their own `ArrayLib`;
these tests check what that sharing promises: the libraries name the same ops, the loop rule runs
the step with the table it belongs to, and the shared rules (the time loop included) give the
NumPy reference's numbers on torch tensors.
"""

from pathlib import Path

import numpy as np
import pytest

import cellc
from cellc.backends import interpret, numpy_ref
from cellc.backends.numpy_ref import init_params
from cellc.lower import sequence_program
from cellc.ops import OPS
from cellc.source import InternalError

CELLS = sorted((Path(__file__).resolve().parent.parent / "cells").glob("*.cell"))


def test_both_libraries_spell_the_same_ops():
    torch_eager = pytest.importorskip("cellc.backends.torch_eager")
    assert set(numpy_ref.ARRAYS.functions) == set(torch_eager.ARRAYS.functions)
    assert set(numpy_ref.ARRAYS.functions) <= set(OPS)


def test_shared_rules_cover_every_op_for_any_library():
    # A library supplies only `functions`; every other op is a shared rule.
    assert set(interpret.rules(numpy_ref.ARRAYS)) == set(OPS)


def test_the_loop_rule_runs_the_step_with_its_own_table(monkeypatch):
    cell = cellc.load_cell(CELLS[0].parent / "lstm.cell")
    sizes = cell.bind(input_size=3, hidden_size=4)
    xs = np.zeros((2, 1, 3))
    numpy_ref.forward(cell, sizes, xs, init_params(cell, sizes, 0))
    monkeypatch.delitem(numpy_ref.NUMPY, "tanh")  # tanh appears only inside the scan's step
    with pytest.raises(InternalError, match="numpy backend: no rule for op 'tanh'"):
        numpy_ref.forward(cell, sizes, xs, init_params(cell, sizes, 0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_values_keep_the_context_dtype(dtype):
    cell = cellc.load_cell(CELLS[0].parent / "gru.cell")
    sizes = cell.bind(input_size=3, hidden_size=4)
    ys, final = numpy_ref.forward(cell, sizes, np.ones((3, 2, 3), dtype),
                                  init_params(cell, sizes, 0))
    assert ys.dtype == dtype and all(v.dtype == dtype for v in final.values())


@pytest.mark.parametrize("path", CELLS, ids=[p.stem for p in CELLS])
def test_whole_sequence_program_on_torch_matches_numpy(path):
    # torch_eager leaves out the loop rule (its layers loop in Python); with it, the same
    # interpreter runs the whole-sequence program on tensors and agrees with the reference.
    torch = pytest.importorskip("torch")
    torch_eager = pytest.importorskip("cellc.backends.torch_eager")
    cell = cellc.load_cell(path)
    sizes = cell.bind(**{s.arg: 3 + k for k, s in enumerate(cell.sizes)
                         if not s.optional})
    T, B = 4, 2
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((T, B, int(cell.input_size.evaluate(sizes))))
    params = init_params(cell, sizes, rng)
    want_ys, want_final = numpy_ref.forward(cell, sizes, xs, params)
    prog = sequence_program(cell)
    row = numpy_ref._input_row(cell, sizes, xs, params, None, np.float64)  # x[t-1], masks
    args = [row.reshape(T * B, -1)]
    args += [np.zeros(s.type.concrete(sizes, 1, B)) for s in cell.states]
    args += [params[p.name] for p in cell.params]
    ctx = interpret.Context(sizes, T, B, torch.float64, torch.device("cpu"))
    table = interpret.rules(torch_eager.ARRAYS)
    got = interpret.run(torch_eager.ARRAYS, table, prog, [torch.from_numpy(a) for a in args], ctx)
    n = len(cell.states)
    np.testing.assert_allclose(got[n].numpy().reshape(want_ys.shape), want_ys,
                               rtol=1e-12, atol=1e-12)
    for s, g in zip(cell.states, got[:n]):
        np.testing.assert_allclose(g.numpy(), want_final[s.name], rtol=1e-12, atol=1e-12)
