"""Second derivatives through cellc layers on both torch-based targets (issue 9).

A layer direction is one torch.autograd.Function whose backward is a fast kernel (the generated
`{cell}_backward` for target="torch", the native backward for target="llvm"). That kernel reads
saved residuals as constants, so differentiating it again used to give wrong numbers without an
error. With create_graph=True the Function now differentiates a plain torch run of the forward
instead. gradgradcheck in float64 checks that for every cell in cells/, w.r.t. the input, the
initial states, every parameter and the incoming gradients; the plain backward must still be
the fast kernel and agree with the differentiable one.
"""

import functools
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from torch.nn.utils.rnn import pack_padded_sequence

import cellc
from cellc.backends import llvm_jit

from conftest import layer_size_args

CELLS_DIR = Path(__file__).resolve().parent.parent / "cells"
T, B, I, H = 3, 2, 2, 3
TARGETS = ["torch", "llvm"]


def cellc_path(name):
    return CELLS_DIR / f"{name}.cell"


@functools.cache
def module(path, target):
    return cellc.load(path, target=target)


def layer_and_inputs(path, target, seed=0, lengths=None, **kwargs):
    """A float64 layer, and the inputs of `layer_function` (input, initial states, parameters),
    all leaves requiring grad."""
    torch.manual_seed(seed)
    sizes = layer_size_args(module(path, "torch").SPEC, I, H)
    layer = module(path, target).Layer(**sizes, dtype=torch.float64, **kwargs)
    directions = 2 if layer.bidirectional else 1
    x = torch.randn(T, B, I, dtype=torch.float64)
    states = [
        torch.randn(layer.num_layers * directions, B, h, dtype=torch.float64)
        for h in layer._state_sizes
    ]
    params = [p.detach().clone() for p in layer.parameters()]
    inputs = [t.requires_grad_() for t in (x, *states, *params)]
    return layer, inputs


def layer_function(layer, n_states, lengths=None):
    """(input, *initial states, *parameters) -> (output, *final states), as a function of
    tensors only, so gradgradcheck can perturb the parameters too."""
    names = [n for n, _ in layer.named_parameters()]

    def f(x, *rest):
        hx, params = rest[:n_states], rest[n_states:]
        inp = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
        with torch.random.fork_rng():  # a cell's dropout/zoneout masks: the same every call
            torch.manual_seed(0)
            out, h_n = torch.func.functional_call(
                layer, dict(zip(names, params)), (inp, hx[0] if n_states == 1 else tuple(hx))
            )
        out = out.data if lengths is not None else out
        return (out, *((h_n,) if n_states == 1 else h_n))

    return f


def check_gradgrad(path, target, lengths=None, **kwargs):
    layer, inputs = layer_and_inputs(path, target, **kwargs)
    f = layer_function(layer, len(layer._state_sizes), lengths)
    assert torch.autograd.gradgradcheck(f, inputs, fast_mode=True, raise_exception=True)


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_gradgradcheck_every_cell(cell_path, target):
    check_gradgrad(cell_path, target)


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_gradgradcheck_packed_sequence(target):
    """Rows of different lengths (not sorted): the recomputed forward masks them as the fast
    kernels do; reverse direction included."""
    check_gradgrad(cellc_path("lstm"), target, lengths=[2, 3], bidirectional=True)


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_gradgradcheck_two_layer_bidirectional_lstm(target):
    check_gradgrad(cellc_path("lstm"), target, num_layers=2, bidirectional=True)


@pytest.mark.slow_cells
@pytest.mark.parametrize("target", TARGETS)
def test_create_graph_gradients_match_the_fast_backward(cell_path, target):
    """gradgradcheck only ever sees the create_graph path; its first derivatives must be the
    fast kernels' ones."""
    layer, inputs = layer_and_inputs(cell_path, target, seed=1, bidirectional=True)
    f = layer_function(layer, len(layer._state_sizes))
    outs = f(*inputs)
    torch.manual_seed(2)
    seeds = [torch.randn_like(o) for o in outs]
    fast = torch.autograd.grad(outs, inputs, seeds, retain_graph=True)
    recorded = torch.autograd.grad(outs, inputs, seeds, create_graph=True)
    assert all(g.requires_grad for g in recorded)
    for a, b in zip(fast, recorded):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradient_penalty_reaches_the_weights():
    """The case that used to go silently wrong: loss + |d(loss)/d(input)|^2. The penalty's seed
    (ones) does not require grad, so no error was raised and the penalty's contribution to the
    weight gradients was dropped. torch.nn.GRU, which is weight-compatible, is the reference."""
    ref = torch.nn.GRU(I, H, dtype=torch.float64)

    def penalized_grad(layer, x):
        out, _ = layer(x)
        (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        (dw,) = torch.autograd.grad(out.sum() + g.square().sum(), layer.weight_hh_l0)
        return dw

    for target in TARGETS:
        layer, (x, *_) = layer_and_inputs(cellc_path("gru"), target)
        ref.load_state_dict(layer.state_dict())
        torch.testing.assert_close(
            penalized_grad(layer, x), penalized_grad(ref, x), rtol=1e-9, atol=1e-12
        )


@pytest.fixture
def calls(monkeypatch):
    """Counts of the fast backward kernels and of the differentiable recompute, per target."""
    from cellc.backends import torch_ops

    counts = {"fast": 0, "recompute": 0}
    run = llvm_jit.Kernel.run

    def kernel_run(self, *args, **kwargs):
        counts["fast"] += self.layout.name == "cellc_backward"
        return run(self, *args, **kwargs)

    def counting(fn):
        def call(*args, **kwargs):
            counts["recompute"] += 1
            return fn(*args, **kwargs)

        return call

    monkeypatch.setattr(llvm_jit.Kernel, "run", kernel_run)
    monkeypatch.setattr(
        torch_ops, "differentiable_backward", counting(torch_ops.differentiable_backward)
    )
    mod = module(cellc_path("lstm"), "torch")
    monkeypatch.setattr(mod, "lstm_sequence", counting(mod.lstm_sequence))
    fast_torch = mod.lstm_backward

    def lstm_backward(*args):
        counts["fast"] += 1
        return fast_torch(*args)

    monkeypatch.setattr(mod, "lstm_backward", lstm_backward)
    return counts


@pytest.mark.parametrize("target", TARGETS)
def test_plain_backward_uses_the_fast_kernel(target, calls):
    layer, (x, *_) = layer_and_inputs(cellc_path("lstm"), target, bidirectional=True)
    out, _ = layer(x)
    out.sum().backward()
    assert calls == {"fast": 2, "recompute": 0}  # one backward kernel call per direction
    out, _ = layer(x)
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    assert calls == {"fast": 2, "recompute": 2}
    g.sum().backward()
    assert calls == {"fast": 2, "recompute": 2}
