"""The torch.nn parity harness shared by the tests of every backend of the layer API.

test_torch_layers.py (the eager interpreter), test_torch_target.py (the generated PyTorch
module) and test_llvm_target.py (native kernels) all drive the same layer machinery; each
compares its layers with torch.nn.LSTM/GRU/RNN through `check_parity`.
"""

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

TORCH_LAYERS = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}
TORCH_CELLS = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn": torch.nn.RNNCell}
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}

# name -> (constructor kwargs, input form, pass initial states)
CONFIGS = {
    "plain": ({}, "time_major", False),
    "hx": ({}, "time_major", True),
    "2layers": ({"num_layers": 2}, "time_major", True),
    "2layers_bidir": ({"num_layers": 2, "bidirectional": True}, "time_major", True),
    "batch_first": ({"num_layers": 2, "batch_first": True}, "batch_first", True),
    "batch_first_bidir": ({"num_layers": 2, "bidirectional": True, "batch_first": True},
                          "batch_first", True),
    "unbatched": ({"bidirectional": True}, "unbatched", True),
    "unbatched_bf": ({"batch_first": True}, "unbatched", False),
    "unbatched_2layers_bf": ({"num_layers": 2, "batch_first": True}, "unbatched", False),
    "no_bias": ({"num_layers": 2, "bias": False, "bidirectional": True}, "time_major", True),
    "packed_sorted": ({"num_layers": 2, "bidirectional": True}, "packed_sorted", True),
    "packed_unsorted": ({"num_layers": 2, "bidirectional": True}, "packed_unsorted", True),
    "packed_unsorted_bf_no_hx": ({"bidirectional": True, "batch_first": True}, "packed_unsorted",
                                 False),
    "packed_sorted_1layer": ({}, "packed_sorted", True),
}
LENGTHS = {"packed_sorted": [5, 4, 2, 1], "packed_unsorted": [2, 5, 1, 4]}  # T = 5, B = 4
SIZES = (5, 4, 3, 4)  # T, B, I, H


def close(a, b, dtype, what):
    tol = TOL[dtype]
    torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=lambda m: f"{what}: {m}")


def as_list(h):
    return [h] if isinstance(h, torch.Tensor) else list(h)


def graph_names(t: torch.Tensor) -> set[str]:
    """Names of every node in the autograd graph behind t."""
    seen, names, todo = set(), set(), [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(fn.name())
        todo += [f for f, _ in fn.next_functions]
    return names


def make_inputs(name, kwargs, form, with_hx, dtype, sizes=SIZES, seed=0):
    """The input (in the given form's layout) and initial states for a layer of cell `name`."""
    T, B, I, H = sizes
    g = torch.Generator().manual_seed(seed)
    LD = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    n_states = 2 if "lstm" in name else 1
    if form == "unbatched":
        x = torch.randn(T, I, generator=g, dtype=dtype)
        hx = [torch.randn(LD, H, generator=g, dtype=dtype) for _ in range(n_states)]
    else:
        x = torch.randn(T, B, I, generator=g, dtype=dtype)
        if form == "batch_first" or (form.startswith("packed") and kwargs.get("batch_first")):
            x = x.transpose(0, 1).contiguous()
        hx = [torch.randn(LD, B, H, generator=g, dtype=dtype) for _ in range(n_states)]
    return x, (hx if with_hx else None)


def run_layer(module, x, hx, form, kwargs, seed=1):
    """Forward and backward of a random linear loss. Returns (names of the autograd graph's
    nodes, {outputs, final states and every gradient})."""
    module.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    leaves = None if hx is None else [h.clone().requires_grad_() for h in hx]
    inp = x
    if form.startswith("packed"):
        inp = pack_padded_sequence(x, LENGTHS[form], batch_first=kwargs.get("batch_first", False),
                                   enforce_sorted=form == "packed_sorted")
    hx_arg = None if leaves is None else leaves[0] if len(leaves) == 1 else tuple(leaves)
    out, h_n = module(inp, hx_arg)
    if form.startswith("packed"):
        assert isinstance(out, PackedSequence)
        assert torch.equal(out.batch_sizes, inp.batch_sizes)
        assert out.unsorted_indices is None or torch.equal(out.unsorted_indices,
                                                           inp.unsorted_indices)
        out = out.data
    h_n = as_list(h_n)
    g = torch.Generator().manual_seed(seed)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in [out, *h_n])
    names = graph_names(loss)
    loss.backward()
    return names, {
        "output": out.detach(),
        **{f"h_n[{k}]": h.detach() for k, h in enumerate(h_n)},
        "grad input": x.grad,
        **{f"grad hx[{k}]": h.grad for k, h in enumerate(leaves or [])},
        **{f"grad {n}": p.grad for n, p in module.named_parameters()},
    }


def compare(ours, ref, name, kwargs, form, with_hx, dtype, sizes=SIZES, node=None):
    """ours and ref agree on outputs, final states and every gradient; with `node`, ours's
    backward runs through an autograd node of that name (e.g. "NativeSequence")."""
    x, hx = make_inputs(name, kwargs, form, with_hx, dtype, sizes)
    names, got = run_layer(ours, x, hx, form, kwargs)
    if node is not None:
        assert any(node in n for n in names), f"no {node} node in {sorted(names)}"
    _, want = run_layer(ref, x, hx, form, kwargs)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] is not None, f"{name} {key}: no gradient"
        assert got[key].shape == want[key].shape, key
        close(got[key], want[key], dtype, f"{name} {key}")


def check_parity(Layer, name, config, dtype, sizes=SIZES, node=None):
    """Layer against torch.nn, with weights loaded from torch and then into torch."""
    kwargs, form, with_hx = CONFIGS[config]
    _, _, I, H = sizes
    torch.manual_seed(0)
    ref = TORCH_LAYERS[name](I, H, dtype=dtype, **kwargs)
    ours = Layer(I, H, dtype=dtype, **kwargs)
    assert list(ours.state_dict()) == list(ref.state_dict())  # same names, same order
    ours.load_state_dict(ref.state_dict())  # torch -> ours
    compare(ours, ref, name, kwargs, form, with_hx, dtype, sizes, node)

    ours2 = Layer(I, H, dtype=dtype, **kwargs)
    ref2 = TORCH_LAYERS[name](I, H, dtype=dtype, **kwargs)
    ref2.load_state_dict(ours2.state_dict())  # ours -> torch
    compare(ours2, ref2, name, kwargs, form, with_hx, dtype, sizes, node)
