"""The one initializer table (cellc/initializers.py) and the places that read it.

torch_layers.py holds a printed copy of the table's torch column (it must work without cellc);
lowering checks calls against the table's arity and usage; the NumPy reference draws from the
table's NumPy column. Each NumPy draw and torch fill must make the same kind of tensor.
"""

from pathlib import Path

import numpy as np
import pytest

from cellc.initializers import INITIALIZERS, NAMED, torch_table_source

from conftest import compile_text, error_text

RUNTIME = Path(__file__).resolve().parent.parent / "cellc" / "runtime" / "torch_layers.py"


def test_torch_layers_holds_the_current_torch_column():
    text = torch_table_source()
    assert text in RUNTIME.read_text(), (
        "cellc/runtime/torch_layers.py has a stale copy of the initializer table; replace its"
        f" _INITIALIZERS with:\n{text}")


@pytest.mark.parametrize("name", sorted(NAMED))
def test_lowering_checks_calls_against_the_table(name):
    """check takes exactly the argument counts the table lists, and names the usage otherwise."""
    for count in range(4):
        args = ", ".join(["0.5"] * count)
        text = (f"cell C(input_size I, hidden_size H):\n    input x[I]\n    state h[H]\n"
                f"    param W[H, I] ~ {name}({args})\n    h' = W @ x + h\n    output h'\n")
        if count in INITIALIZERS[name].arity:
            compile_text(text)
        else:
            message = error_text(text)
            assert f"wrong number of arguments; use {INITIALIZERS[name].usage}" in message


def _numpy(name, shape, args):
    return INITIALIZERS[name].numpy(np.random.default_rng(0), shape, args)


def _torch(name, shape, args):
    torch = pytest.importorskip("torch")
    namespace = {"torch": torch}
    source = torch_table_source()
    exec(compile(source, "<initializers>", "exec"), namespace)  # our own text
    counts, fill = namespace["_INITIALIZERS"][name]
    assert len(args) in counts
    w = torch.empty(shape, dtype=torch.float64)
    torch.manual_seed(0)
    fill(w, args)
    return w.numpy()


@pytest.mark.parametrize("name,args,want", [
    ("zeros", (), 0.0), ("ones", (), 1.0), ("constant", (0.25,), 0.25)])
def test_constant_initializers_agree_exactly(name, args, want):
    for draw in (_numpy, _torch):
        x = draw(name, (3, 4), args)
        assert x.shape == (3, 4) and (x == want).all()


@pytest.mark.parametrize("draw", [_numpy, _torch], ids=["numpy", "torch"])
def test_random_initializers_make_the_same_kind_of_tensor(draw):
    u = draw("uniform", (50, 40), (-0.5, 0.25))
    assert u.min() >= -0.5 and u.max() <= 0.25 and u.max() - u.min() > 0.7
    n = draw("normal", (200, 100), (1.0, 0.5))
    assert abs(n.mean() - 1.0) < 0.02 and abs(n.std() - 0.5) < 0.02
    for shape, gain in (((6, 4), (3.0,)), ((4, 6), ()), ((5, 5), (2.0,))):
        q = draw("orthogonal", shape, gain)
        g = gain[0] if gain else 1.0
        small = min(shape)
        gram = q.T @ q if shape[0] >= shape[1] else q @ q.T
        np.testing.assert_allclose(gram, g * g * np.eye(small), atol=1e-12)


def test_values_is_not_called_by_name():
    """`values` is the row of initializer expressions; `~ values(...)` is an unknown name."""
    text = ("cell C(input_size I, hidden_size H):\n    input x[I]\n    state h[H]\n"
            "    param W[H, I] ~ values(0.5)\n    h' = W @ x + h\n    output h'\n")
    assert "unknown initializer 'values'" in error_text(text)


@pytest.mark.parametrize("draw", [_numpy, _torch], ids=["numpy", "torch"])
def test_values_fills_the_broadcast_array(draw):
    """The one argument is the value, already broadcast (lowering's Init.values): copied."""
    a = np.array(np.broadcast_to(np.arange(4.0), (3, 4)))  # as Init.values gives it: a copy
    np.testing.assert_array_equal(draw("values", (3, 4), (a,)), a)
    nested = [[1.0, 2.0], [3.0, 4.0]]  # a nested list, as a generated module may pass it
    np.testing.assert_array_equal(draw("values", (2, 2), (nested,)), np.array(nested))
