"""The torch target on CUDA: generated LSTM/GRU/RNN layers against torch.nn on the GPU.

Skipped where torch sees no GPU (CI); run on a machine with one. The generated code is
device-agnostic torch; this checks that claim: outputs, final states and every gradient match
torch.nn's on the same device, for stacked, bidirectional, batch-first and packed input, and
gradcheck passes in float64.
"""

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

import cellc

# cuDNN's RNNs use TF32 for float32 on recent GPUs by default; compare exact float32.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

CELLS = Path(__file__).resolve().parent.parent / "cells"
REF = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def _pair(name, dtype, **kw):
    mod = cellc.load(CELLS / f"{name}.cell", target="torch")
    ours = mod.Layer(5, 7, **kw).to("cuda", dtype)
    ref = REF[name](5, 7, **kw).to("cuda", dtype)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _flat(out):
    y, h = out
    y = y.data if isinstance(y, torch.nn.utils.rnn.PackedSequence) else y
    return [y] + (list(h) if isinstance(h, tuple) else [h])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", sorted(REF))
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_parity_on_cuda(name, dtype, packed):
    ours, ref = _pair(name, dtype, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(4, 6, 5, device="cuda", dtype=dtype, requires_grad=True)

    def prepare():  # packed separately for each layer: the two backward passes share nothing
        if not packed:
            return x
        return torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([6, 2, 5, 3]),
                                                       batch_first=True, enforce_sorted=False)

    got, want = _flat(ours(prepare())), _flat(ref(prepare()))
    assert got[0].device.type == "cuda"
    for a, b in zip(got, want):
        assert (a - b).abs().max().item() < TOL[dtype]
    loss_a = sum((t * (k + 1)).sum() for k, t in enumerate(got))
    loss_b = sum((t * (k + 1)).sum() for k, t in enumerate(want))
    ga = torch.autograd.grad(loss_a, [x, *ours.parameters()])
    gb = torch.autograd.grad(loss_b, [x, *ref.parameters()])
    for a, b in zip(ga, gb):
        scale = max(1.0, b.abs().max().item())
        assert (a - b).abs().max().item() / scale < 10 * TOL[dtype]


@pytest.mark.parametrize("path", sorted(CELLS.glob("*.cell")), ids=lambda p: p.name)
def test_gradcheck_on_cuda(path):
    mod = cellc.load(path, target="torch")
    layer = mod.Layer(3, 4).to("cuda", torch.float64)
    x = torch.randn(4, 2, 3, device="cuda", dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: layer(x)[0], (x,), eps=1e-6, atol=1e-6)
