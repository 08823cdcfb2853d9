"""Cells of the zoo against their papers: an independent plain-PyTorch step loop of each paper's
equations, written here from the paper (not from the .cell file), compared with every target.

For each cell: outputs, final state and the gradients of a random loss with respect to the
input, the initial state and every parameter, float64, 1e-10, on the NumPy reference
(numpy_ref.backward), the generated torch module and the native (llvm) layer.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cellc
from cellc.backends import numpy_ref

from conftest import CELLS_DIR

T, B, I, H = 6, 3, 5, 7


def min_gru(x, h, p):
    """Feng et al. (2024), section 3.1: z = sigma(Linear(x)), h~ = Linear(x),
    h_t = (1 - z) h_{t-1} + z h~."""
    ys = []
    for x_t in x:
        z = torch.sigmoid(x_t @ p["weight_z"].T + p["bias_z"])
        h_tilde = x_t @ p["weight_h"].T + p["bias_h"]
        h = (1 - z) * h + z * h_tilde
        ys.append(h)
    return torch.stack(ys), h


def min_lstm(x, h, p):
    """Feng et al. (2024), section 3.2: f, i = sigma(Linear(x)), h~ = Linear(x);
    f', i' = f / (f + i), i / (f + i); h_t = f' h_{t-1} + i' h~."""
    ys = []
    for x_t in x:
        f = torch.sigmoid(x_t @ p["weight_f"].T + p["bias_f"])
        i = torch.sigmoid(x_t @ p["weight_i"].T + p["bias_i"])
        h_tilde = x_t @ p["weight_h"].T + p["bias_h"]
        h = f / (f + i) * h + i / (f + i) * h_tilde
        ys.append(h)
    return torch.stack(ys), h


def rg_lru(x, h, p, c=8.0):
    """De et al. (2024), eqs. 1-4 on u = W_in x + b_in (the recurrent block's projection):
    r, i = sigma(W_a u + b_a), sigma(W_x u + b_x); a_t = a^(c r_t) with a = sigma(Lambda);
    h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t u_t)."""
    a = torch.sigmoid(p["Lambda"])
    ys = []
    for x_t in x:
        u = x_t @ p["weight_in"].T + p["bias_in"]
        r = torch.sigmoid(u @ p["weight_a"].T + p["bias_a"])
        i = torch.sigmoid(u @ p["weight_x"].T + p["bias_x"])
        a_t = a ** (c * r)
        h = a_t * h + torch.sqrt(1 - a_t**2) * (i * u)
        ys.append(h)
    return torch.stack(ys), h


# file -> (reference, size arguments, input size)
PAPERS = {
    "mingru": (min_gru, {"input_size": I, "hidden_size": H}, I),
    "minlstm": (min_lstm, {"input_size": I, "hidden_size": H}, I),
    "rglru": (rg_lru, {"input_size": I, "hidden_size": H}, I),
}


def _problem(name):
    reference, size_args, n_in = PAPERS[name]
    cell = cellc.load_cell(CELLS_DIR / f"{name}.cell")
    sizes = cell.bind(**size_args)
    rng = np.random.default_rng(1)
    params = {k: v for k, v in numpy_ref.init_params(cell, sizes, rng).items()
              if k in {p.name for p in cell.params if p.kind != "hyper"}}  # c: its default
    xs = rng.normal(size=(T, B, n_in))
    h0 = rng.normal(size=(B, H)) * 0.5
    d_ys = rng.normal(size=(T, B, H))
    d_h = rng.normal(size=(B, H))
    return cell, sizes, size_args, reference, params, xs, h0, d_ys, d_h


def _reference(reference, params, xs, h0, d_ys, d_h):
    p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    x = torch.tensor(xs, requires_grad=True)
    h = torch.tensor(h0, requires_grad=True)
    ys, h_T = reference(x, h, p)
    ((ys * torch.from_numpy(d_ys)).sum() + (h_T * torch.from_numpy(d_h)).sum()).backward()
    grads = {"xs": x.grad, "h": h.grad, **{k: v.grad for k, v in p.items()}}
    return ys.detach().numpy(), h_T.detach().numpy(), {k: g.numpy() for k, g in grads.items()}


def _close(got, want, what):
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10, err_msg=what)


def test_rglru_initial_decay_follows_the_paper():
    """a^c = sigma(Lambda)^8 lies in [0.9, 0.999], spread over the interval."""
    cell, sizes, *_ = _problem("rglru")
    lam = numpy_ref.init_params(cell, sizes, 0)["Lambda"]
    a_c = (1 / (1 + np.exp(-lam))) ** 8
    assert a_c.min() > 0.9 and a_c.max() < 0.999 and a_c.max() - a_c.min() > 0.08


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_numpy_reference_matches_paper(name):
    cell, sizes, _, reference, params, xs, h0, d_ys, d_h = _problem(name)
    want_ys, want_h, want_grads = _reference(reference, params, xs, h0, d_ys, d_h)
    ys, final, grads = numpy_ref.backward(cell, sizes, xs, params, {"h": h0}, d_ys=d_ys,
                                          d_states={"h": d_h})
    _close(ys, want_ys, "outputs")
    _close(final["h"], want_h, "final state")
    assert set(grads) == set(want_grads)
    for k, g in want_grads.items():
        _close(grads[k], g, f"d{k}")


@pytest.mark.parametrize("target", ["torch", "llvm"])
@pytest.mark.parametrize("name", sorted(PAPERS))
def test_layer_matches_paper(name, target):
    _, _, size_args, reference, params, xs, h0, d_ys, d_h = _problem(name)
    want_ys, want_h, want_grads = _reference(reference, params, xs, h0, d_ys, d_h)
    mod = cellc.load(CELLS_DIR / f"{name}.cell", target=target)
    layer = mod.Layer(**size_args, dtype=torch.float64)
    layer.load_state_dict({f"{k}_l0": torch.from_numpy(v) for k, v in params.items()})
    x = torch.tensor(xs, requires_grad=True)
    h = torch.tensor(h0[None], requires_grad=True)
    ys, h_n = layer(x, h)
    ((ys * torch.from_numpy(d_ys)).sum() + (h_n[0] * torch.from_numpy(d_h)).sum()).backward()
    _close(ys.detach().numpy(), want_ys, "outputs")
    _close(h_n[0].detach().numpy(), want_h, "final state")
    _close(x.grad.numpy(), want_grads["xs"], "dxs")
    _close(h.grad[0].numpy(), want_grads["h"], "dh")
    for k in params:
        _close(getattr(layer, f"{k}_l0").grad.numpy(), want_grads[k], f"d{k}")
