"""How the JIT picks kernels (cache.native_program, CELLC_SPECIALIZE).

By default a cell's first calls at new sizes run its size-generic kernels, compiled unoptimized
(one quick compile per cell and dtype, whatever the sizes); from the second call at a size on,
the kernels specialized to it compile in a background thread and serve the calls after that.
"now" compiles the specialized ones first (what the rest of the suite uses, see conftest.py),
"never" keeps optimized generic ones. A specialized program on disk is used at once. Results
agree across the switch, including a forward run by the generic kernels whose backward runs on
the specialized ones.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from cellc.backends import cache, llvm_jit, numpy_ref
from cellc.frontend import load_source
from cellc.native import NativeCell
from cellc.source import Source

LSTM = Path(__file__).resolve().parent.parent / "cells" / "lstm.cell"
_fresh = itertools.count()


@pytest.fixture
def policy(monkeypatch, tmp_path):
    """Set CELLC_SPECIALIZE, with an empty disk cache of this test's own."""
    monkeypatch.setenv("CELLC_CACHE_DIR", str(tmp_path / "cache"))

    def set_policy(value: str):
        monkeypatch.setenv("CELLC_SPECIALIZE", value)

    yield set_policy
    cache.wait_for_specializations()


def fresh_lstm():
    """lstm.cell under a text of its own: no other test's compiled programs match its keys."""
    text = LSTM.read_text() + f"\n# test_specialize {next(_fresh)} {id(object())}\n"
    return load_source(Source(str(LSTM), text))


def problem(nc: NativeCell, T=6, B=3, seed=0):
    rng = np.random.default_rng(seed)
    params = {k: v.astype(nc.dtype)
              for k, v in numpy_ref.init_params(nc.cell, nc.sizes, rng, np.float64).items()}
    xs = rng.standard_normal((T, B, nc._input_size)).astype(nc.dtype)
    d_ys = rng.standard_normal((T, B, nc._output_size)).astype(nc.dtype)
    return xs, params, d_ys


def assert_matches_reference(nc: NativeCell, xs, params, d_ys, ys, grads):
    want_ys, _, want = numpy_ref.backward(nc.cell, nc.sizes, xs, params, d_ys=d_ys)
    np.testing.assert_allclose(ys, want_ys, rtol=1e-10, atol=1e-12)
    for k in want:
        np.testing.assert_allclose(grads[k], want[k], rtol=1e-9, atol=1e-11, err_msg=k)


def test_background_starts_generic_and_switches_to_specialized(policy):
    policy("background")
    cell = fresh_lstm()
    nc = NativeCell(cell, dtype="float64", input_size=3, hidden_size=5)
    first = nc.program
    assert isinstance(first, llvm_jit.BoundProgram) and first.provisional
    assert first.generic.quick  # the unoptimized stand-in
    xs, params, d_ys = problem(nc)
    ys, _, tape = nc.forward(xs, params)  # the second ask: starts the specialization
    cache.wait_for_specializations()
    later = nc.program
    assert isinstance(later, llvm_jit.NativeProgram) and not later.provisional
    assert later.sizes == nc.sizes
    # The forward's tape (generic or specialized) feeds the specialized backward.
    assert_matches_reference(nc, xs, params, d_ys, ys, nc.backward(tape, d_ys))


def test_generic_forward_with_specialized_backward_matches_the_reference(policy):
    policy("background")
    cell = fresh_lstm()
    nc = NativeCell(cell, dtype="float64", input_size=4, hidden_size=3)
    xs, params, d_ys = problem(nc, seed=1)
    # Force the forward onto the generic kernels, then let the specialized ones arrive.
    nc._program = cache._cached(cache.cache_key(cell, None, "float64", "program-quick"),
                                cache._maker(cell, None, "float64", quick=True)).bind(nc.sizes)
    nc._program.provisional = True
    ys, _, tape = nc.forward(xs, params)
    cache.native_program(cell, nc.sizes, "float64")  # the first ask
    cache.native_program(cell, nc.sizes, "float64")  # the second: starts the specialization
    cache.wait_for_specializations()
    assert isinstance(nc.program, llvm_jit.NativeProgram)
    assert_matches_reference(nc, xs, params, d_ys, ys, nc.backward(tape, d_ys))


def test_a_sweep_over_sizes_compiles_the_generic_kernels_once(policy):
    policy("never")
    cell = fresh_lstm()
    programs = [NativeCell(cell, input_size=i, hidden_size=h).program
                for i, h in [(2, 3), (5, 7), (8, 1)]]
    assert all(isinstance(p, llvm_jit.BoundProgram) and not p.provisional for p in programs)
    assert not programs[0].generic.quick  # generic for good: optimized
    assert len({id(p.generic) for p in programs}) == 1
    for i, h in [(2, 3), (8, 1)]:
        nc = NativeCell(cell, dtype="float64", input_size=i, hidden_size=h)
        xs, params, d_ys = problem(nc)
        ys, _, tape = nc.forward(xs, params)
        assert_matches_reference(nc, xs, params, d_ys, ys, nc.backward(tape, d_ys))
    cache.wait_for_specializations()
    assert isinstance(NativeCell(cell, input_size=2, hidden_size=3).program, llvm_jit.BoundProgram)


def test_now_compiles_the_specialized_kernels_first(policy):
    policy("now")
    program = NativeCell(fresh_lstm(), input_size=2, hidden_size=3).program
    assert isinstance(program, llvm_jit.NativeProgram) and program.sizes == {"I": 2, "H": 3}


def test_specialized_kernels_on_disk_are_used_at_once(policy, monkeypatch):
    cell = fresh_lstm()
    policy("now")
    NativeCell(cell, input_size=2, hidden_size=3)  # compiles and stores the specialized kernels
    monkeypatch.setattr(cache, "_memory", cache.LRU(32))  # as in a new process
    policy("background")
    program = NativeCell(cell, input_size=2, hidden_size=3).program
    assert isinstance(program, llvm_jit.NativeProgram) and not program.provisional


def test_a_bad_policy_is_an_error_naming_the_variable(policy):
    policy("sometimes")
    with pytest.raises(ValueError, match=r"CELLC_SPECIALIZE='sometimes'.*background, now, never"):
        NativeCell(fresh_lstm(), input_size=2, hidden_size=3)


def test_llvm_layer_matches_torch_before_and_after_the_switch(policy):
    torch = pytest.importorskip("torch")
    from cellc.backends.llvm_layers import make_llvm_layers

    policy("background")
    cell = fresh_lstm()
    Layer, _ = make_llvm_layers(cell)
    torch.manual_seed(0)
    ref = torch.nn.LSTM(4, 5, dtype=torch.float64)
    layer = Layer(4, 5, dtype=torch.float64)
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(7, 2, 4, dtype=torch.float64)
    want, _ = ref(x)
    want.sum().backward()
    want_grads = [p.grad.clone() for p in ref.parameters()]
    for _ in range(3):  # generic kernels, then (from the second call on) specialized ones
        layer.zero_grad()
        got, _ = layer(x)
        got.sum().backward()
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        for p, g in zip(layer.parameters(), want_grads):
            torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)
        cache.wait_for_specializations()
    program = cache.native_program(cell, {"I": 4, "H": 5}, "float64")
    assert isinstance(program, llvm_jit.NativeProgram)  # the last call ran specialized kernels
