"""Tensor-valued cells (issue 11): per-example matrices and heads, on the NumPy reference and
the torch target, against independent plain-PyTorch loops; the llvm target's located refusal;
and the located errors of the new constructs.

The references below are written from the papers (mLSTM and sLSTM: Beck et al. 2024; gated
DeltaNet: Yang et al. 2024, eq. 10, with the identity; GLA: Yang et al. 2023; Mamba's S6: Gu &
Dao 2023, Algorithm 2; RWKV-6: Peng et al. 2024, with torch's group_norm), not from the .cell
files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cellc
from cellc.backends import numpy_ref
from cellc.shapes import Batch, Dim, TensorType, broadcast
from cellc.source import CellShapeError

from conftest import CELLS_DIR, compile_text, error_text

I, NH, D, T, B = 5, 2, 3, 4, 3
MLSTM = CELLS_DIR / "mlstm.cell"
DATA = Path(__file__).resolve().parent / "data"


def _linear(p, name, x_t, bias=True):
    y = x_t @ p[f"weight_{name}"].T
    return y + p[f"bias_{name}"] if bias else y


def mlstm_reference(x, s, p):
    """xLSTM's mLSTM per head: C' = f' C + i' v k^T, n' = f' n + i' k, h = o * C'q / max(|n'q|,
    exp(-m')), with m' = max(log f + m, i~), i' = exp(i~ - m'), f' = exp(log f + m - m')."""
    B = x.shape[1]
    C, n, m = s["C"].reshape(B, NH, D, D), s["n"].reshape(B, NH, D), s["m"]
    ys = []
    for x_t in x:
        q = _linear(p, "q", x_t).reshape(B, NH, D)
        k = _linear(p, "k", x_t).reshape(B, NH, D) / D**0.5
        v = _linear(p, "v", x_t).reshape(B, NH, D)
        i_tilde, log_f = _linear(p, "i", x_t), F.logsigmoid(_linear(p, "f", x_t))
        m_next = torch.maximum(log_f + m, i_tilde)
        i, f = torch.exp(i_tilde - m_next), torch.exp(log_f + m - m_next)
        C = f[..., None, None] * C + i[..., None, None] * torch.einsum("bhi,bhj->bhij", v, k)
        n = f[..., None] * n + i[..., None] * k
        m = m_next
        numerator = torch.einsum("bhij,bhj->bhi", C, q)
        denominator = torch.maximum(torch.einsum("bhi,bhi->bh", n, q).abs(), torch.exp(-m))
        o = torch.sigmoid(_linear(p, "o", x_t))
        ys.append(o * (numerator / denominator[..., None]).reshape(B, -1))
    return torch.stack(ys), {"C": C.reshape(B, -1), "n": n.reshape(B, -1), "m": m}


def gated_deltanet_reference(x, s, p):
    """Gated DeltaNet's eq. 10 as written, with the identity: S' = S (alpha (I - beta k k^T)) +
    beta v k^T, o = S' q / sqrt(D); q, k L2-normalized after SiLU, alpha Mamba2's decay."""
    B = x.shape[1]
    S = s["S"].reshape(B, NH, D, D)
    eye = torch.eye(D, dtype=x.dtype)

    def l2(u):
        return u / torch.sqrt((u * u).sum(-1, keepdim=True) + 1e-6)

    ys = []
    for x_t in x:
        q, k, v = (F.silu(_linear(p, w, x_t, bias=False)).reshape(B, NH, D) for w in "qkv")
        q, k = l2(q), l2(k)
        alpha = torch.exp(-torch.exp(p["A_log"]) * F.softplus(_linear(p, "a", x_t, False)
                                                               + p["dt_bias"]))
        beta = torch.sigmoid(_linear(p, "b", x_t))[..., None, None]
        kk = k[..., :, None] @ k[..., None, :]
        S = S @ (alpha[..., None, None] * (eye - beta * kk)) + beta * (v[..., :, None]
                                                                       @ k[..., None, :])
        ys.append((S @ q[..., None])[..., 0].reshape(B, -1) / D**0.5)
    return torch.stack(ys), {"S": S.reshape(B, -1)}


def gla_reference(x, s, p):
    """GLA: S' = (alpha^T 1) * S + k^T v, o = q S', alpha = sigmoid(W_a2 W_a1 x + b)^(1/16)."""
    B = x.shape[1]
    S = s["S"].reshape(B, NH, D, D)
    ys = []
    for x_t in x:
        q = _linear(p, "q", x_t, bias=False).reshape(B, NH, D) / D**0.5
        k, v = (_linear(p, w, x_t, bias=False).reshape(B, NH, D) for w in "kv")
        low = x_t @ p["weight_a1"].T @ p["weight_a2"].T + p["bias_a"]
        alpha = (torch.sigmoid(low) ** (1 / 16)).reshape(B, NH, D)
        S = alpha[..., :, None] * S + k[..., :, None] @ v[..., None, :]
        ys.append((q[..., None, :] @ S)[..., 0, :].reshape(B, -1))
    return torch.stack(ys), {"S": S.reshape(B, -1)}


def slstm_reference(x, s, p):
    """sLSTM with exponential gates and the stabilizer; R block-diagonal by heads, written as
    one dense matrix per gate with zero blocks off the diagonal."""
    h, c, n, m = s["h"], s["c"], s["n"], s["m"]
    R = {g: torch.block_diag(*p[f"R_{g}"]) for g in "zifo"}  # [NH*D, NH*D]
    ys = []
    for x_t in x:
        z_in, i_in, f_in, o_in = (x_t @ p["weight_ih"].T + p["bias_ih"]).chunk(4, -1)
        z_pre, i_pre = z_in + h @ R["z"].T, i_in + h @ R["i"].T
        f_pre, o_pre = f_in + h @ R["f"].T, o_in + h @ R["o"].T
        m_next = torch.maximum(f_pre + m, i_pre)
        i, f = torch.exp(i_pre - m_next), torch.exp(f_pre + m - m_next)
        c = f * c + i * torch.tanh(z_pre)
        n = f * n + i
        m = m_next
        h = torch.sigmoid(o_pre) * c / n
        ys.append(h)
    return torch.stack(ys), {"h": h, "c": c, "n": n, "m": m}


def mamba_s6_reference(x, s, p):
    """Mamba's Algorithm 2 per channel d and state index n, on u = W_in x: h[d, n]' =
    exp(delta_d A[d, n]) h[d, n] + delta_d B_n u_d, y_d = sum_n C_n h[d, n]' + D_d u_d."""
    B = x.shape[1]
    A = -torch.exp(p["A_log"])
    h = s["h"].reshape(B, *A.shape)
    ys = []
    for x_t in x:
        u = x_t @ p["weight_in"].T
        delta = F.softplus(u @ p["weight_dt"].T + p["dt_bias"])  # [B, 1] + [H]
        B_t, C_t = u @ p["weight_B"].T, u @ p["weight_C"].T
        A_bar = torch.exp(torch.einsum("bd,dn->bdn", delta, A))
        h = A_bar * h + torch.einsum("bd,bn->bdn", delta * u, B_t)
        ys.append(torch.einsum("bdn,bn->bd", h, C_t) + p["D_skip"] * u)
    return torch.stack(ys), {"h": h.reshape(B, -1)}


def rwkv6_reference(x, s, p):
    """RWKV-6 time mixing: ddlerp token shift, wkv_t = r (diag(u) k^T v + S), S' = diag(w) S +
    k^T v, out = W_o (SiLU(g) * GroupNorm(wkv)); x[t-1] is 0 at the first step."""
    B = x.shape[1]
    S = s["S"].reshape(B, NH, D, D)
    x_prev = torch.zeros_like(x[0])
    ys = []
    for x_t in x:
        shift = x_prev - x_t
        xx = x_t + shift * p["mu_x"]

        def ddlerp(name, x_t=x_t, shift=shift, xx=xx):
            mix = p[f"mu_{name}"] + torch.tanh(xx @ p[f"A_{name}"].T) @ p[f"B_{name}"].T
            return x_t + shift * mix

        r, k, v = (ddlerp(n) @ p[f"weight_{n}"].T for n in "rkv")
        r, k, v = (t.reshape(B, NH, D) for t in (r, k, v))
        g = ddlerp("g") @ p["weight_g"].T
        w = torch.exp(-torch.exp(p["w0"] + torch.tanh(ddlerp("w") @ p["A_d"].T) @ p["B_d"].T))
        kv = k[..., :, None] * v[..., None, :]
        wkv = torch.einsum("bhi,bhij->bhj", r, p["u"][..., None] * kv + S)
        S = w.reshape(B, NH, D)[..., None] * S + kv
        normed = F.group_norm(wkv.reshape(B, NH * D), NH, p["ln_w"], p["ln_b"], eps=64e-5)
        ys.append((F.silu(g) * normed) @ p["weight_o"].T)
        x_prev = x_t
    return torch.stack(ys), {"S": S.reshape(B, -1)}


HEADS = {"input_size": I, "heads": NH, "head_size": D}
# file -> (reference, size arguments)
PAPERS = {"mlstm": (mlstm_reference, HEADS), "gated_deltanet": (gated_deltanet_reference, HEADS),
          "gla": (gla_reference, HEADS), "slstm": (slstm_reference, HEADS),
          "rwkv6": (rwkv6_reference, HEADS),
          "mamba_s6": (mamba_s6_reference, {"input_size": I, "hidden_size": 6, "state_size": 4})}


def cell_file(name):
    """cells/NAME.cell; sLSTM's file is in tests/data: cells/ would run the zoo-wide tests on
    it, whose random initial states put its normalizer n near 0 (h = o c / n blows up), where
    running from zero states keeps n > 0."""
    return CELLS_DIR / f"{name}.cell" if name != "slstm" else DATA / "slstm.cell"


def _problem(name, seed=0):
    cell = cellc.load_cell(cell_file(name))
    sizes = cell.bind(**PAPERS[name][1])
    rng = np.random.default_rng(seed)
    params = numpy_ref.init_params(cell, sizes, rng)
    for k, v in params.items():  # zeros at initialization (biases, LoRA halves) would hide terms
        if not v.any():
            params[k] = 0.3 * rng.normal(size=v.shape)
    xs = rng.normal(size=(T, B, I))
    states = {st.name: rng.normal(size=st.type.concrete(sizes, 1, B)) * 0.5
              for st in cell.states}
    if "n" in states and name == "slstm":  # a normalizer is a sum of positive gates
        states["n"] = np.abs(states["n"]) + 0.5
    ys, _ = numpy_ref.forward(cell, sizes, xs, params, states)
    d_ys = rng.normal(size=ys.shape)
    d_states = {k: rng.normal(size=v.shape) for k, v in states.items()}
    return cell, sizes, params, xs, states, d_ys, d_states


def _reference(name, params, xs, states, d_ys, d_states):
    p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    x = torch.tensor(xs, requires_grad=True)
    s0 = {k: torch.tensor(v, requires_grad=True) for k, v in states.items()}
    ys, final = PAPERS[name][0](x, s0, p)
    loss = (ys * torch.from_numpy(d_ys)).sum()
    loss = loss + sum((final[k] * torch.from_numpy(d_states[k])).sum() for k in states)
    loss.backward()
    grads = {"xs": x.grad, **{k: s0[k].grad for k in s0}, **{k: p[k].grad for k in p}}
    return (ys.detach().numpy(), {k: f.detach().numpy() for k, f in final.items()},
            {k: g.numpy() for k, g in grads.items()})


def _close(got, want, what):
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10, err_msg=what)


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_numpy_reference_matches_the_paper(name):
    cell, sizes, params, xs, states, d_ys, d_states = _problem(name)
    want_ys, want_final, want_grads = _reference(name, params, xs, states, d_ys, d_states)
    ys, final, grads = numpy_ref.backward(cell, sizes, xs, params, states, d_ys=d_ys,
                                          d_states=d_states)
    _close(ys, want_ys, "outputs")
    for k in states:
        _close(final[k], want_final[k], f"final {k}")
    assert set(grads) == set(want_grads)
    for k, g in want_grads.items():
        _close(grads[k], g, f"d{k}")


@pytest.mark.parametrize("target", ["torch", "llvm"])
@pytest.mark.parametrize("name", sorted(PAPERS))
def test_layer_matches_the_paper(name, target):
    cell, _, params, xs, states, d_ys, d_states = _problem(name, 1)
    want_ys, want_final, want_grads = _reference(name, params, xs, states, d_ys, d_states)
    mod = cellc.load(cell_file(name), target=target)
    layer = mod.Layer(**PAPERS[name][1], dtype=torch.float64)
    layer.load_state_dict({f"{k}_l0": torch.from_numpy(v) for k, v in params.items()})
    x = torch.tensor(xs, requires_grad=True)
    names = [st.name for st in cell.states]
    hx = [torch.tensor(states[k][None], requires_grad=True) for k in names]
    ys, h_n = layer(x, hx[0] if len(hx) == 1 else tuple(hx))
    h_n = [h_n] if len(hx) == 1 else list(h_n)
    assert [tuple(h.shape) for h in h_n] == [(1, *states[k].shape) for k in names]
    loss = (ys * torch.from_numpy(d_ys)).sum()
    loss = loss + sum((h[0] * torch.from_numpy(d_states[k])).sum() for k, h in zip(names, h_n))
    loss.backward()
    _close(ys.detach().numpy(), want_ys, "outputs")
    for k, h in zip(names, h_n):
        _close(h[0].detach().numpy(), want_final[k], f"final {k}")
    _close(x.grad.numpy(), want_grads["xs"], "dxs")
    for k, h in zip(names, hx):
        _close(h.grad[0].numpy(), want_grads[k], f"d{k}")
    for k in params:
        _close(getattr(layer, f"{k}_l0").grad.numpy(), want_grads[k], f"d{k}")


def test_mlstm_layer_stacks_and_runs_both_directions():
    """Two bidirectional layers, batch first, a packed batch of unequal lengths: the llvm
    layer against the torch target's (outputs, final states, every gradient)."""
    torch.manual_seed(0)
    layers = {target: cellc.load(MLSTM, target=target).Layer(
        input_size=I, heads=NH, head_size=D, num_layers=2, bidirectional=True,
        batch_first=True, dtype=torch.float64) for target in ("torch", "llvm")}
    layers["llvm"].load_state_dict(layers["torch"].state_dict())
    x = torch.randn(B, T, I, dtype=torch.float64)
    lengths = [T, T - 1, 2][:B]
    got = {}
    for target, layer in layers.items():
        xg = x.clone().requires_grad_()
        packed = torch.nn.utils.rnn.pack_padded_sequence(xg, lengths, batch_first=True)
        out, (C, n, m) = layer(packed)
        ys, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
        assert ys.shape == (B, T, 2 * NH * D) and C.shape == (4, B, NH * D * D)
        (ys.square().sum() + C.sum() + n.sum() + m.sum()).backward()
        got[target] = [ys, C, n, m, xg.grad] + [p.grad for p in layer.parameters()]
    assert torch.isfinite(got["llvm"][4]).all() and got["llvm"][4].abs().sum() > 0
    for a, b in zip(got["llvm"], got["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", sorted(PAPERS))
def test_llvm_layer_matches_the_paper_in_float32(name):
    """The llvm layer in float32 (the specialized kernels' other float type), within float32's
    tolerance of the paper's float64 equations: outputs, final states and every gradient."""
    cell, _, params, xs, states, d_ys, d_states = _problem(name, 2)
    want_ys, want_final, want_grads = _reference(name, params, xs, states, d_ys, d_states)
    layer = cellc.load(cell_file(name), target="llvm").Layer(**PAPERS[name][1])
    layer.load_state_dict({f"{k}_l0": torch.tensor(v, dtype=torch.float32)
                           for k, v in params.items()})
    x = torch.tensor(xs, dtype=torch.float32, requires_grad=True)
    names = [st.name for st in cell.states]
    hx = [torch.tensor(states[k][None], dtype=torch.float32, requires_grad=True) for k in names]
    ys, h_n = layer(x, hx[0] if len(hx) == 1 else tuple(hx))
    h_n = [h_n] if len(hx) == 1 else list(h_n)
    loss = (ys * torch.tensor(d_ys, dtype=torch.float32)).sum()
    loss = loss + sum((h[0] * torch.tensor(d_states[k], dtype=torch.float32)).sum()
                      for k, h in zip(names, h_n))
    loss.backward()

    def near(got, want, what):
        got = got.detach().double().numpy()
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale, err_msg=what)

    near(ys, want_ys, "outputs")
    for k, h, h0 in zip(names, h_n, hx):
        near(h[0], want_final[k], f"final {k}")
        near(h0.grad[0], want_grads[k], f"d{k}")
    near(x.grad, want_grads["xs"], "dxs")
    for k in params:
        near(getattr(layer, f"{k}_l0").grad, want_grads[k], f"d{k}")


@pytest.mark.parametrize("name", ["mlstm", "mamba_s6"])
def test_native_library_of_a_tensor_cell_builds(name, tmp_path):
    """`cellc compile --target llvm` writes the shared library of a tensor cell, specialized
    and generic (sizes at run time)."""
    for sizes in (",".join(f"{k}={v}" for k, v in PAPERS[name][1].items()), None):
        out = tmp_path / f"out{sizes is None}"
        run = subprocess.run([sys.executable, "-m", "cellc", "compile", str(cell_file(name)),
                              "--target", "llvm", "-o", str(out)]
                             + (["--sizes", sizes] if sizes else []),
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert any(p.suffix == ".so" for p in out.iterdir()), list(out.iterdir())


# ---------------------------------------------------------------------------------------------
# The constructs one by one, against NumPy formulas (every backward also by the zoo-wide
# finite-difference tests once a cell is in cells/; here through numpy_ref.backward)

HEADER = "cell X(input_size I, heads N, head_size D):\n    input x[I]\n"


def _run(body: str, state: str, state_shape: tuple, seed=0):
    cell = compile_text(HEADER + body)
    sizes = cell.bind(input_size=4, heads=2, head_size=3)
    rng = np.random.default_rng(seed)
    params = numpy_ref.init_params(cell, sizes, rng)
    xs = rng.normal(size=(1, 2, 4))
    s0 = rng.normal(size=(2, int(np.prod(state_shape))))
    ys, final = numpy_ref.forward(cell, sizes, xs, params, {state: s0})
    return params, xs[0], s0.reshape((2, *state_shape)), ys[0], final


def test_heads_outer_and_transposed_product():
    body = ("    state S[N, D, D]\n    param Wk[N*D, I], Wq[N*D, I]\n"
            "    k = heads(Wk @ x, N)\n    q = heads(Wq @ x, N)\n"
            "    S' = S + outer(k, q)\n    y = merge(transpose(S') @ q)\n    output y\n")
    p, x, S, y, final = _run(body, "S", (2, 3, 3))
    k, q = (x @ p["Wk"].T).reshape(2, 2, 3), (x @ p["Wq"].T).reshape(2, 2, 3)
    S1 = S + k[..., :, None] * q[..., None, :]
    np.testing.assert_allclose(final["S"], S1.reshape(2, -1), rtol=1e-12)
    np.testing.assert_allclose(y, np.einsum("bhji,bhj->bhi", S1, q).reshape(2, -1), rtol=1e-12)


def test_head_wise_parameter_dot_and_reductions():
    body = ("    state h[N, D]\n    param R[N, D, D], W[N*D, I]\n"
            "    a = R @ h + heads(W @ x, N)\n"
            "    h' = a - reshape(mean(a, axis=-1), N, 1) + reshape(dot(a, h), N, 1)\n"
            "    y = merge(h') * sum(sum(h', axis=1), axis=0)\n    output y\n")
    p, x, h, y, final = _run(body, "h", (2, 3))
    a = np.einsum("hij,bhj->bhi", p["R"], h) + (x @ p["W"].T).reshape(2, 2, 3)
    h1 = a - a.mean(-1, keepdims=True) + (a * h).sum(-1, keepdims=True)
    np.testing.assert_allclose(final["h"], h1.reshape(2, -1), rtol=1e-12)
    np.testing.assert_allclose(y, h1.reshape(2, -1) * h1.sum((1, 2))[:, None], rtol=1e-12)


def test_numpy_broadcasting_of_per_example_shapes():
    t = TensorType((Dim.of(1), Dim.of("I")), Batch.STEP)
    w = TensorType((Dim.of("H"), Dim.of("I")), Batch.NONE)
    assert broadcast(t, w) == TensorType((Dim.of("H"), Dim.of("I")), Batch.STEP)


def test_a_per_example_vector_is_aligned_with_a_parameter_of_higher_rank():
    """W[H, I] * x[I] is a per-example [H, I]: x's batch axis must not line up with H (here
    B = H, where NumPy would broadcast the wrong axes without an error)."""
    body = ("    state h[I]\n    param W[N, I]\n    param R[N, D, I]\n"
            "    y = sum(sum(W * x, axis=1), axis=0) + sum(sum(sum(R * h, axis=2), axis=1),"
            " axis=0)\n    h' = x * y\n    output h'\n")
    cell = compile_text(HEADER + body)
    sizes = cell.bind(input_size=4, heads=2, head_size=3)
    rng = np.random.default_rng(0)
    params = numpy_ref.init_params(cell, sizes, rng)
    params["W"], params["R"] = rng.normal(size=(2, 4)), rng.normal(size=(2, 3, 4))
    xs, h0 = rng.normal(size=(1, 2, 4)), rng.normal(size=(2, 4))
    ys, _ = numpy_ref.forward(cell, sizes, xs, params, {"h": h0})
    x = xs[0]
    y = (params["W"][None] * x[:, None]).sum((1, 2)) + (params["R"][None]
                                                         * h0[:, None, None]).sum((1, 2, 3))
    np.testing.assert_allclose(ys[0], x * y[:, None], rtol=1e-12)


@pytest.mark.parametrize("line, error", [
    ("    h' = merge(heads(h, I))\n", "x.cell:6:16: error: cannot split [B,D*N] into I heads"),
    ("    h' = merge(heads(h, 0))\n", "error: cannot split [B,D*N] into 0 heads"),
    ("    h' = merge(reshape(h, N, N))\n", "error: reshape: cannot reshape [B,D*N] to [N, N]"),
    ("    h' = merge(heads(h, N) @ heads(h, N))\n", "a product of two matrices is not supported"),
    ("    h' = merge(outer(h, h) @ outer(h, h))\n", "a product of two matrices is not supported"),
    ("    h' = h * dot(heads(h, N), h)\n", "error: dot: the last sizes differ"),
    ("    h' = h * sum(heads(h, N), axis=2)\n", "error: axis must be a whole number from -2 to 1"),
    ("    h' = h * sum(heads(h, N), axis=x)\n", "error: axis must be a whole number"),
    ("    h' = h * sum(h, 1)\n", "error: sum takes 1 argument, not 2"),
    ("    h' = h * sum(heads(h, N))\n", "give the axis, as in sum(v, axis=-1)"),
    ("    h' = h * max(h, h, axis=0)\n", "error: max takes no keyword argument 'axis'"),
    ("    h' = h * sum(h, axes=1)\n", "error: sum takes no keyword argument 'axes'"),
    ("    h' = h * reshape(h)\n", "error: use reshape(v, D1, D2, ...)"),
    ("    h' = merge(transpose(h))\n", "error: transpose: cannot transpose [B,D*N]"),
    ("    h' = h * outer(h, 1)\n", "outer takes vectors (or stacks of them), not a scalar"),
])
def test_tensor_mistakes_are_located(line, error):
    text = HEADER + "    state h[N*D]\n    param W[N*D, I]\n    h = h + W @ x\n" + line
    text += "    output h'\n"
    got = error_text(text.replace("    h = h + W @ x\n", "    y = W @ x\n"))
    assert error in got, got
    assert "\n        h' = " in got and "^" in got  # the source line and a caret


def test_an_input_stays_a_vector_and_declarations_have_at_most_three_axes():
    assert "an input is a vector" in error_text(
        "cell X(input_size I):\n    input x[I, I]\n    state h[I]\n    h' = h\n    output h'\n")
    assert "a state has at most three dimensions" in error_text(
        "cell X(input_size I):\n    input x[I]\n    state h[I, I, I, I]\n    h' = h\n"
        "    output h'\n", kind=CellShapeError)


# ---------------------------------------------------------------------------------------------
# split into parts of given sizes (every target: the IR's split already takes sizes)

UNEQUAL = """cell Ctx(input_size I, hidden_size H):
    input  x[I]
    state  h[H]
    param  W[H, I], U[H, H] ~ uniform(-0.5, 0.5)
    a, b = split(W @ x + U @ h, 1, H - 1)
    h' = tanh(concat(b, a))
    output h'
"""


@pytest.mark.parametrize("target", ["torch", "llvm"])
def test_split_into_parts_of_given_sizes(tmp_path, target):
    path = tmp_path / "ctx.cell"
    path.write_text(UNEQUAL)
    torch.manual_seed(0)
    layer = cellc.load(path, target=target).Layer(3, 5, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    ys, _ = layer(x)
    W, U = layer.W_l0.detach(), layer.U_l0.detach()
    h, want = torch.zeros(2, 5, dtype=torch.float64), []
    for x_t in x:
        z = x_t @ W.T + h @ U.T
        h = torch.tanh(torch.cat([z[:, 1:], z[:, :1]], -1))
        want.append(h)
    torch.testing.assert_close(ys.detach(), torch.stack(want), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("line, error", [
    ("a, b = split(h, H, I)", "x.cell:4:12: error: split: the sizes H, I of the parts do not add"
                              " up to H"),
    ("a, b = split(h, 1, 2, H - 3)", "x.cell:4:5: error: split into 3 parts, but 2 names are"
                                     " assigned"),
    ("a, b = split(h, 1, q)", "x.cell:4:24: error: undefined size 'q'"),
])
def test_unequal_split_mistakes_are_located(line, error):
    text = (f"cell C(input_size I, hidden_size H):\n    input x[I]\n    state h[H]\n    {line}\n"
            "    h' = concat(a, b) + 0 * sum(x)\n    output h'\n")
    assert error_text(text).startswith(error), error_text(text)


def test_backward_recomputes_outer_products_and_reshapes_instead_of_saving_them():
    """The mLSTM's forward saves two matrices per head and step (the state before and after the
    step), not also v k^T or a reshape of the state: the backward recomputes those
    (k, computed before the loop, is read from there, not copied)."""
    from cellc import pipeline

    text = pipeline.grad_equations(cellc.load_cell(MLSTM))
    saved = text.split("# Saved per time step for the backward (")[1]
    assert saved.startswith("12 values, 2*D^2*NH + 3*D*NH + 7*NH numbers per batch row"), saved
    listed = saved.split("# Also read")[0]
    assert "#   C\n" in listed and "#   C'\n" in listed and "reshape(v) * reshape(k)" not in listed


MAXED = """cell M(input_size I, heads N, head_size D):
    input  x[I]
    state  h[N*D]
    param  W[N*D, I] ~ uniform(-1, 1)
    a = heads(W @ x, N) + heads(h, N)
    h' = merge(a - reshape(max(a, axis=-1), N, 1)) + max(h, axis=0)
    output h'
"""


def test_max_along_an_axis_matches_torch_amax_with_its_tie_rule(tmp_path):
    """max(v, axis=k) on the NumPy reference and the torch target against torch.amax, forward
    and gradients, with ties in h (the cotangent is shared evenly among equal maxima)."""
    cell = compile_text(MAXED)
    sizes = cell.bind(input_size=4, heads=2, head_size=3)
    rng = np.random.default_rng(0)
    params = numpy_ref.init_params(cell, sizes, rng)
    xs = rng.normal(size=(3, 2, 4))
    h0 = np.array([[1.0, 2.0, 2.0, 0.5, 2.0, -1.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    d_ys = rng.normal(size=(3, 2, 6))
    ys, _, grads = numpy_ref.backward(cell, sizes, xs, params, {"h": h0}, d_ys=d_ys)

    W = torch.tensor(params["W"], requires_grad=True)
    x = torch.tensor(xs, requires_grad=True)
    h = h_init = torch.tensor(h0, requires_grad=True)
    want = []
    for x_t in x:
        a = (x_t @ W.T).reshape(2, 2, 3) + h.reshape(2, 2, 3)
        h = (a - a.amax(-1, keepdim=True)).reshape(2, 6) + h.amax(1, keepdim=True)
        want.append(h)
    want = torch.stack(want)
    (want * torch.from_numpy(d_ys)).sum().backward()
    _close(ys, want.detach().numpy(), "outputs")
    _close(grads["W"], W.grad.numpy(), "dW")
    _close(grads["h"], h_init.grad.numpy(), "dh (ties)")
    _close(grads["xs"], x.grad.numpy(), "dx")
    path = tmp_path / "maxed.cell"
    path.write_text(MAXED)
    layer = cellc.load(path, target="torch").Layer(input_size=4, heads=2, head_size=3,
                                                   dtype=torch.float64)
    layer.load_state_dict({"W_l0": torch.from_numpy(params["W"])})
    h1 = torch.tensor(h0[None], requires_grad=True)
    out, _ = layer(torch.from_numpy(xs), h1)
    (out * torch.from_numpy(d_ys)).sum().backward()
    _close(out.detach().numpy(), ys, "torch target outputs")
    _close(h1.grad[0].numpy(), h_init.grad.numpy(), "torch target dh (ties)")
    _close(layer.W_l0.grad.numpy(), W.grad.numpy(), "torch target dW")
    native = cellc.load(path, target="llvm").Layer(input_size=4, heads=2, head_size=3,
                                                   dtype=torch.float64)
    native.load_state_dict({"W_l0": torch.from_numpy(params["W"])})
    h2 = torch.tensor(h0[None], requires_grad=True)
    out, _ = native(torch.from_numpy(xs), h2)
    (out * torch.from_numpy(d_ys)).sum().backward()
    _close(out.detach().numpy(), ys, "llvm target outputs")
    _close(h2.grad[0].numpy(), h_init.grad.numpy(), "llvm target dh (ties)")
    _close(native.W_l0.grad.numpy(), W.grad.numpy(), "llvm target dW")


@pytest.mark.parametrize("line", ["a = heads(W @ x, 3)\n    h' = merge(a) + h",
                                  "a, b, c = split(W @ x, 3)\n    h' = concat(a, b, c) + h"])
def test_layers_refuse_sizes_that_make_a_step_size_fractional(tmp_path, line):
    """H = 4 makes a [H/3]: the torch layer and cell classes refuse it when built (as the llvm
    layers do through CellIR.bind), not with a torch error inside their first call."""
    path = tmp_path / "odd.cell"
    path.write_text("cell Odd(input_size I, hidden_size H):\n    input x[I]\n    state h[H]\n"
                    f"    param W[H, I]\n    {line}\n    output h'\n")
    mod = cellc.load(path, target="torch")
    for cls in (mod.Layer, mod.Cell):
        with pytest.raises(ValueError, match=r"^Odd: with input_size=2, hidden_size=4, the size"
                                             r" of 'a' would be 1\.33+; choose sizes"):
            cls(2, 4)
    assert mod.Layer(2, 6)(torch.randn(3, 2, 2))[0].shape == (3, 2, 6)
