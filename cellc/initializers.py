"""Parameter initializers (`param W[H, I] ~ uniform(-1/sqrt(H), 1/sqrt(H))`): the one table.

Each row says how many arguments the initializer takes and what they mean (lowering checks a
`.cell` file against it), how the NumPy reference draws it, and the torch formula the layer
classes fill a weight with. The torch formulas are source text because they travel: the layer
machinery (cellc/runtime/torch_layers.py) is pasted verbatim into generated modules that need
only torch, so it holds a printed copy of this table's torch column (`torch_table_source`);
tests/test_initializers.py fails when that copy is stale, and prints the text to paste.

Adding an initializer is one row here, then refreshing that copy. The "values" row is the one
that is not called by name: an initializer expression such as `log(arange(1, N + 1))`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Initializer:
    usage: str  # how it is called, for error notes: "uniform(low, high)"
    arity: tuple[int, ...]  # the numbers of arguments it takes
    # (rng, shape, args) -> float64 array. The NumPy reference, seeded, is reproducible.
    numpy: Callable[[np.random.Generator, tuple[int, ...], tuple[float, ...]], np.ndarray]
    torch: str  # fills tensor `w` in place from the argument tuple `a`, as Python source


def orthogonal(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A (semi-)orthogonal matrix, as torch.nn.init.orthogonal_ draws it."""
    rows, cols = shape
    a = rng.normal(size=(max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    return q if rows >= cols else q.T


INITIALIZERS: dict[str, Initializer] = {
    "uniform": Initializer(
        "uniform(low, high)", (2,),
        lambda rng, shape, a: rng.uniform(a[0], a[1], shape),
        "torch.nn.init.uniform_(w, a[0], a[1])"),
    "normal": Initializer(
        "normal(mean, std)", (2,),
        lambda rng, shape, a: rng.normal(a[0], a[1], shape),
        "torch.nn.init.normal_(w, a[0], a[1])"),
    "zeros": Initializer(
        "zeros()", (0,),
        lambda rng, shape, a: np.full(shape, 0.0),
        "torch.nn.init.zeros_(w)"),
    "ones": Initializer(
        "ones()", (0,),
        lambda rng, shape, a: np.full(shape, 1.0),
        "torch.nn.init.ones_(w)"),
    "constant": Initializer(
        "constant(value)", (1,),
        lambda rng, shape, a: np.full(shape, a[0]),
        "torch.nn.init.constant_(w, a[0])"),
    "orthogonal": Initializer(
        "orthogonal() or orthogonal(gain)", (0, 1),
        lambda rng, shape, a: orthogonal(shape, rng) * (a[0] if a else 1.0),
        "torch.nn.init.orthogonal_(w, a[0] if a else 1.0)"),
    # An initializer expression (`~ log(arange(1, N + 1))`), not called by name: lowering makes
    # it Init("values", (expr,)), and its one argument is the value, already broadcast to the
    # parameter's shape (an array, a nested list or a tensor).
    "values": Initializer(
        "an expression of numbers, sizes and arange(...), as in log(arange(1, H + 1))", (1,),
        lambda rng, shape, a: np.array(np.broadcast_to(a[0], shape), dtype=np.float64),
        "w.copy_(torch.as_tensor(a[0], dtype=w.dtype).expand_as(w))"),
}
# Rows a .cell file calls by name after `~` (the others are written as expressions).
NAMED = tuple(name for name in INITIALIZERS if name != "values")


def torch_table_source() -> str:
    """The torch column as the `_INITIALIZERS` dict of cellc/runtime/torch_layers.py."""
    lines = ["_INITIALIZERS = {  # name -> (number of arguments allowed, fill function)"]
    for name, init in INITIALIZERS.items():
        assert name.isidentifier(), name  # our own names, written in double quotes as the file is
        lines.append(f'    "{name}": ({init.arity!r}, lambda w, a: {init.torch}),')
    return "\n".join(lines + ["}"])
