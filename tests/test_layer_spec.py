"""The layer spec as one value (cellc.backends.layer_spec): built once from a cell, read by the
eager and native layer classes as `LayerSpec.runtime()` and printed into generated modules by
`torch_src.spec_source`. The two readings must agree on every cell and on every layer's sizes."""

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

import cellc
from cellc.backends.layer_spec import LayerSpec, layer_spec
from cellc.backends.torch_src import spec_source

CELLS = sorted((Path(__file__).resolve().parent.parent / "cells").glob("*.cell"))


def printed(spec: LayerSpec) -> dict:
    namespace = {"math": math, "torch": torch}  # torch: initializer expressions (arange)
    exec(compile(spec_source(spec), "<spec>", "exec"), namespace)  # our text
    return namespace["SPEC"]


def evaluated(spec: dict, sizes: dict) -> dict:
    """Every entry of a torch_layers spec dict, its functions applied to sizes."""
    return {
        **{k: spec[k] for k in ("name", "sizes", "input_size", "states")},
        "state_sizes": tuple(spec["state_sizes"](sizes)),
        "output_size": spec["output_size"](sizes),
        "params": [(p["name"], p["kind"], tuple(p["shape"](sizes)), p["init"],
                    tuple(p["init_args"](sizes))) for p in spec["params"]],
    }


@pytest.mark.parametrize("path", CELLS, ids=[p.stem for p in CELLS])
def test_printed_spec_is_the_runtime_spec(path):
    spec = layer_spec(cellc.load_cell(path))
    symbols = [sym for _, sym in spec.sizes]
    first = {sym: 6 + 2 * k for k, sym in enumerate(symbols)}
    input_symbol = dict(spec.sizes)[spec.input_size]
    stacked = {**first, input_symbol: 2 * 6}  # a layer l > 0 rebinds the input size
    for sizes in (first, stacked):
        want, got = evaluated(spec.runtime(), sizes), evaluated(printed(spec), sizes)
        assert got == {**want, "params": got["params"]}  # sizes compare exactly (4.0 == 4)
        assert [p[:4] for p in got["params"]] == [p[:4] for p in want["params"]]
        for g, w in zip(got["params"], want["params"]):
            assert len(g[4]) == len(w[4]), g[0]
            for a, b in zip(g[4], w[4]):
                if np.ndim(a) == 0:
                    assert a == pytest.approx(b, rel=1e-15), g[0]
                else:  # an expression's array: torch's log and pow against NumPy's
                    a = np.broadcast_to(np.asarray(a), np.shape(b))  # both broadcast later
                    np.testing.assert_allclose(a, b, rtol=1e-13, err_msg=g[0])


def test_spec_keeps_sizes_symbolic_and_arguments_unevaluated():
    spec = layer_spec(cellc.load_cell(CELLS[0].parent / "lstm.cell"))
    assert spec.input_size == "input_size" and spec.states == ("h", "c")
    w = spec.params[0]
    assert (w.name, w.kind, w.init) == ("weight_ih", "param", "uniform")
    assert [str(d) for d in w.shape] == ["4*H", "I"]
    assert spec.runtime()["params"][0]["init_args"]({"I": 3, "H": 4}) == (-0.5, 0.5)
    assert spec.runtime()["params"][0]["init_args"]({"I": 3, "H": 16}) == (-0.25, 0.25)


def test_sizes_that_do_not_divide_stay_fractions_in_both_readings():
    source = cellc.Source("half.cell", (
        "cell Half(input_size I, hidden_size H):\n"
        "    input x[I]\n    state h[H]\n    param w[H/2, I], u[H, H/2]\n"
        "    h' = tanh(u @ (w @ x) + h)\n    output h'\n"))
    spec = layer_spec(cellc.load_source(source))
    sizes = {"I": 3, "H": 5}
    assert spec.runtime()["params"][0]["shape"](sizes) == (Fraction(5, 2), 3)
    assert printed(spec)["params"][0]["shape"](sizes) == (2.5, 3)
