"""Weights from other frameworks: Keras and ONNX recurrent layers loaded into zoo cells.

    conv = cellc.interop.from_keras("gru", kernel, recurrent_kernel, bias, reset_after=False)
    conv.cell, conv.sizes          # "keras_gru.cell", {"input_size": 8, "hidden_size": 16}
    layer = conv.layer(target="llvm")           # built and loaded; or, by hand:
    layer = cellc.load(conv.path, target="llvm").Layer(**conv.sizes, **conv.options)
    layer.load_state_dict(conv.state_dict())

    layer = cellc.interop.load_onnx("LSTM", W, R, B, direction="bidirectional")

Each framework stores a layer's weights in its own layout: Keras as `x @ kernel` (kernel
[I, n*H], recurrent_kernel [H, n*H]) with gates z, r, h (GRU) or i, f, c, o (LSTM); ONNX as
`W @ x` per direction (W [dirs, n*H, I], R [dirs, n*H, H], B [dirs, 2*n*H] = Wb then Rb) with
gates i, o, f, c (LSTM) or z, r, h (GRU). Every conversion here is a transpose, a permutation of
the gate blocks and a split of the biases: no arithmetic except where two biases are only ever
added together (then they load summed). The zoo cell each lands in computes the framework's
published formula exactly (tests/test_interop.py checks that against NumPy transcriptions of
the Keras source and the ONNX operator spec):

| layer | zoo cell |
|---|---|
| Keras LSTM, ONNX LSTM | lstm.cell (peephole_lstm.cell for an ONNX LSTM given P) |
| Keras GRU reset_after=True, ONNX GRU linear_before_reset=1 | gru.cell |
| Keras GRU reset_after=False, ONNX GRU linear_before_reset=0 | keras_gru.cell |
| Keras SimpleRNN, ONNX RNN | rnn.cell |

Only the frameworks' default activations load (sigmoid gates, tanh elsewhere): another one is a
different cell, refused with a ValueError. NumPy is all this module needs; `state_dict()` and
`layer()` import torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CELLS_DIR", "Converted", "from_keras", "from_onnx", "load_keras", "load_onnx"]

# The zoo: the cells/ folder of the source tree this package sits in.
CELLS_DIR = Path(__file__).resolve().parent.parent / "cells"


@dataclass(frozen=True)
class Converted:
    """A framework layer's weights in a zoo cell's layout.

    `directions` holds one {parameter name: array} per direction (forward, then reverse), in the
    cell's own parameter names, biases left out when the layer had none. `options` are the
    layer-constructor keywords that make the cellc layer compute what the framework's did.
    """

    cell: str  # the zoo file, e.g. "lstm.cell"
    sizes: Mapping[str, int]  # {"input_size": I, "hidden_size": H}
    options: Mapping[str, object]  # {"bias": ..., "bidirectional": ..., "batch_first": ...}
    directions: tuple[Mapping[str, np.ndarray], ...]

    @property
    def path(self) -> Path:
        return CELLS_DIR / self.cell

    @property
    def dtype(self) -> np.dtype:
        return next(iter(self.directions[0].values())).dtype

    def arrays(self) -> dict[str, np.ndarray]:
        """The layer's state_dict as NumPy arrays (`weight_ih_l0`, `bias_hh_l0_reverse`, ...)."""
        return {f"{name}_l0{suffix}": a
                for suffix, params in zip(("", "_reverse"), self.directions)
                for name, a in params.items()}

    def state_dict(self) -> dict:
        """The layer's state_dict (torch tensors, copies), for `layer.load_state_dict`."""
        import torch

        return {name: torch.tensor(a) for name, a in self.arrays().items()}

    def params(self, direction: int = 0) -> dict[str, np.ndarray]:
        """One direction's parameters for the NumPy reference (`cellc.reference.forward(cell,
        sizes, xs, params)`), a missing bias as zeros (what a layer with bias=False computes)."""
        from .frontend import load_file

        cell = load_file(self.path)
        sizes = cell.bind(**self.sizes)
        given = self.directions[direction]
        return {p.name: given[p.name] if p.name in given
                else np.zeros(p.type.concrete(sizes), self.dtype) for p in cell.params}

    def layer(self, target: str = "torch", **kwargs):
        """The cellc layer (`cellc.load(self.path, target).Layer`), built with `options` and
        the weights' dtype (keywords override either) and loaded with these weights."""
        import torch

        from .api import load

        dtype = torch.from_numpy(np.empty(0, self.dtype)).dtype
        layer = load(self.path, target=target).Layer(
            **self.sizes, **{**self.options, "dtype": dtype, **kwargs})
        layer.load_state_dict(self.state_dict())
        return layer


# ---------------------------------------------------------------------------------------------
# Checks shared by both frameworks


def _array(name: str, a) -> np.ndarray:
    """A NumPy view of a weight (NumPy array, nested list or torch tensor), floating point."""
    if hasattr(a, "detach"):  # a torch tensor, without importing torch
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"{name} must hold floating-point numbers, got dtype {a.dtype}")
    return a


def _check_shape(name: str, a: np.ndarray, want: tuple[int, ...], formula: str) -> None:
    if a.shape != want:
        raise ValueError(f"{name} must have shape {formula} = {want}, got {a.shape}")


def _reorder(a: np.ndarray, order: str, to: str, axis: int = 0) -> np.ndarray:
    """a's gate blocks along `axis`, from the gate order `order` to `to` (one letter a gate)."""
    blocks = dict(zip(order, np.split(a, len(order), axis=axis)))
    return np.concatenate([blocks[g] for g in to], axis=axis)


def _check_activations(framework: str, kind: str, given: Mapping[str, object],
                       defaults: Mapping[str, object]) -> None:
    for key, value in given.items():
        if value is None:
            continue
        if key not in defaults:
            raise ValueError(f"{framework} {kind} has no {key}")
        want = defaults[key]
        if _lower(value) != _lower(want):
            raise ValueError(
                f"{framework} {kind} with {key}={value!r} is not a zoo cell: only the default"
                f" {key}={want!r} loads")


def _lower(v):
    return [s.lower() for s in v] if isinstance(v, (list, tuple)) else str(v).lower()


def _converted(cell, I, H, dtype, directions, **options) -> Converted:
    dirs = tuple({k: np.ascontiguousarray(v, dtype) for k, v in d.items()} for d in directions)
    return Converted(cell, {"input_size": I, "hidden_size": H}, options, dirs)


# ---------------------------------------------------------------------------------------------
# Keras: kernel [I, n*H], recurrent_kernel [H, n*H], bias [n*H] ([2, n*H]: GRU reset_after)
#
# The formulas (keras/src/layers/rnn/{lstm,gru,simple_rnn}.py, the cells' call methods):
#   LSTM: i, f, c, o = split(x @ kernel + h @ recurrent_kernel + bias)
#         c' = sigmoid(f) * c + sigmoid(i) * tanh(c); h' = sigmoid(o) * tanh(c')
#   GRU:  z = sigmoid(x_z + h @ U_z), r = sigmoid(x_r + h @ U_r), where x_* = x @ W_* + b_*
#         reset_after: hh = tanh(x_h + r * (h @ U_h + b_rec_h)); else hh = tanh(x_h + (r*h) @ U_h)
#         h' = z * h + (1 - z) * hh
#   SimpleRNN: h' = tanh(x @ kernel + bias + h @ recurrent_kernel)


def _keras_lstm(k, rk, b, H, reset_after):
    # Keras's i, f, c, o is torch's i, f, g, o: transposes only; the one bias is bias_ih.
    p = {"weight_ih": k.T, "weight_hh": rk.T}
    if b is not None:
        p |= {"bias_ih": b, "bias_hh": np.zeros_like(b)}
    return "lstm.cell", p


def _keras_gru(k, rk, b, H, reset_after):
    if not reset_after:  # keras_gru.cell is Keras's layout: z, r, h, the reset before U_h
        p = {"weight_ih": k.T, "weight_hh": rk[:, : 2 * H].T, "weight_hn": rk[:, 2 * H :].T}
        return "keras_gru.cell", p if b is None else p | {"bias": b}
    # reset_after=True is torch's GRU with the gates z, r, h permuted to r, z, n.
    p = {"weight_ih": _reorder(k.T, "zrh", "rzh"), "weight_hh": _reorder(rk.T, "zrh", "rzh")}
    if b is not None:
        p |= {"bias_ih": _reorder(b[0], "zrh", "rzh"), "bias_hh": _reorder(b[1], "zrh", "rzh")}
    return "gru.cell", p


def _keras_simple_rnn(k, rk, b, H, reset_after):
    p = {"weight_ih": k.T, "weight_hh": rk.T}
    if b is not None:
        p |= {"bias_ih": b, "bias_hh": np.zeros_like(b)}
    return "rnn.cell", p


@dataclass(frozen=True)
class _Kind:
    name: str  # as the framework spells it, for messages
    gates: int  # gate blocks in each weight matrix
    convert: Callable  # (checked arrays..., H, flag) -> (zoo cell, {param: array})
    activations: Mapping[str, object]  # the defaults, the only ones that load


KERAS: dict[str, _Kind] = {
    "lstm": _Kind("LSTM", 4, _keras_lstm,
                  {"activation": "tanh", "recurrent_activation": "sigmoid"}),
    "gru": _Kind("GRU", 3, _keras_gru, {"activation": "tanh", "recurrent_activation": "sigmoid"}),
    "simplernn": _Kind("SimpleRNN", 1, _keras_simple_rnn, {"activation": "tanh"}),
}


def _kind(table: Mapping[str, _Kind], framework: str, kind: str) -> _Kind:
    found = table.get(str(kind).lower())
    if found is None:
        names = ", ".join(repr(k.name) for k in table.values())
        raise ValueError(f"unknown {framework} layer {kind!r}: expected one of {names}")
    return found


def from_keras(layer_kind: str, kernel, recurrent_kernel, bias=None, *,
               reset_after: bool | None = None, activation: str | None = None,
               recurrent_activation: str | None = None) -> Converted:
    """A Keras LSTM, GRU or SimpleRNN layer's weights (`layer.get_weights()`: kernel,
    recurrent_kernel, then bias unless use_bias=False) in the matching zoo cell's layout.

    reset_after is the Keras GRU's flag (default True, as since TF 2.0; False is the Keras 2
    default before it), given only for a GRU; activations other
    than Keras's defaults are refused. The layer options include batch_first=True, since Keras
    layers take (batch, time, features).
    """
    kind = _kind(KERAS, "Keras", layer_kind)
    if reset_after is not None and kind.name != "GRU":
        raise ValueError(f"Keras {kind.name} has no reset_after")
    reset_after = reset_after is not False
    _check_activations("Keras", kind.name, {"activation": activation,
                                            "recurrent_activation": recurrent_activation},
                       kind.activations)
    k = _array("kernel", kernel)
    rk = _array("recurrent_kernel", recurrent_kernel)
    if rk.ndim != 2:
        raise ValueError(f"recurrent_kernel must have shape (H, {kind.gates}*H), got {rk.shape}")
    H, n = rk.shape[0], kind.gates
    _check_shape("recurrent_kernel", rk, (H, n * H), f"(H, {n}*H)")
    if k.ndim != 2:
        raise ValueError(f"kernel must have shape (input_size, {n}*H), got {k.shape}")
    _check_shape("kernel", k, (k.shape[0], n * H), f"(input_size, {n}*H)")
    b = None if bias is None else _array("bias", bias)
    two = kind.name == "GRU" and reset_after
    if b is not None and b.shape != ((2, n * H) if two else (n * H,)):
        want = f"(2, {n}*H) = {(2, n * H)}" if two else f"({n}*H,) = {(n * H,)}"
        flag = f" with reset_after={reset_after}" if kind.name == "GRU" else ""
        raise ValueError(f"bias must have shape {want}{flag}, got {b.shape}")
    dtype = np.result_type(*[a for a in (k, rk, b) if a is not None])
    cell, params = kind.convert(k, rk, b, H, reset_after)
    return _converted(cell, k.shape[0], H, dtype, [params], bias=b is not None,
                      batch_first=True)


def load_keras(layer_kind: str, kernel, recurrent_kernel, bias=None, *,
               reset_after: bool | None = None, activation: str | None = None,
               recurrent_activation: str | None = None, target: str = "torch", **layer_kwargs):
    """from_keras(...).layer(target, **layer_kwargs): a ready cellc layer."""
    conv = from_keras(layer_kind, kernel, recurrent_kernel, bias, reset_after=reset_after,
                      activation=activation, recurrent_activation=recurrent_activation)
    return conv.layer(target, **layer_kwargs)


# ---------------------------------------------------------------------------------------------
# ONNX: W [dirs, n*H, I], R [dirs, n*H, H], B [dirs, 2*n*H] (Wb then Rb), P [dirs, 3*H] (LSTM)
#
# The formulas (the ONNX operator spec, onnx/docs/Operators.md, LSTM, GRU and RNN):
#   LSTM: i = f(Xt W_i^T + H R_i^T + P_i . C + Wb_i + Rb_i), f likewise with P_f,
#         c = g(Xt W_c^T + H R_c^T + Wb_c + Rb_c), C' = f . C + i . c,
#         o = f(Xt W_o^T + H R_o^T + P_o . C' + Wb_o + Rb_o), H' = o . h(C')
#   GRU:  z, r = f(Xt W^T + H R^T + Wb + Rb);
#         h = g(Xt W_h^T + (r . H) R_h^T + Rb_h + Wb_h)     linear_before_reset=0
#         h = g(Xt W_h^T + r . (H R_h^T + Rb_h) + Wb_h)     linear_before_reset!=0
#         H' = (1 - z) . h + z . H
#   RNN:  H' = f(Xt W^T + H R^T + Wb + Rb)
# with f = Sigmoid, g = h = Tanh (RNN: f = Tanh) by default.


def _onnx_lstm(W, R, B, P, H, linear_before_reset):
    # ONNX's i, o, f, c to torch's i, f, g, o.
    p = {"weight_ih": _reorder(W, "iofc", "ifco"), "weight_hh": _reorder(R, "iofc", "ifco")}
    if B is not None:
        p |= {"bias_ih": _reorder(B[: 4 * H], "iofc", "ifco"),
              "bias_hh": _reorder(B[4 * H :], "iofc", "ifco")}
    if P is None:
        return "lstm.cell", p
    # peephole_lstm.cell is the spec's formula with P = [P_i, P_o, P_f].
    return "peephole_lstm.cell", p | {"peep_i": P[:H], "peep_f": P[2 * H :],
                                      "peep_o": P[H : 2 * H]}


def _onnx_gru(W, R, B, P, H, linear_before_reset):
    if not linear_before_reset:
        # keras_gru.cell, same gate order; Rb_h is added outside the product, so the biases
        # only ever appear as Wb + Rb.
        p = {"weight_ih": W, "weight_hh": R[: 2 * H], "weight_hn": R[2 * H :]}
        return "keras_gru.cell", p if B is None else p | {"bias": B[: 3 * H] + B[3 * H :]}
    p = {"weight_ih": _reorder(W, "zrh", "rzh"), "weight_hh": _reorder(R, "zrh", "rzh")}
    if B is not None:
        p |= {"bias_ih": _reorder(B[: 3 * H], "zrh", "rzh"),
              "bias_hh": _reorder(B[3 * H :], "zrh", "rzh")}
    return "gru.cell", p


def _onnx_rnn(W, R, B, P, H, linear_before_reset):
    p = {"weight_ih": W, "weight_hh": R}
    return "rnn.cell", p if B is None else p | {"bias_ih": B[:H], "bias_hh": B[H:]}


ONNX: dict[str, _Kind] = {
    "lstm": _Kind("LSTM", 4, _onnx_lstm, {"activations": ("Sigmoid", "Tanh", "Tanh")}),
    "gru": _Kind("GRU", 3, _onnx_gru, {"activations": ("Sigmoid", "Tanh")}),
    "rnn": _Kind("RNN", 1, _onnx_rnn, {"activations": ("Tanh",)}),
}

# direction attribute -> (number of directions, layer options)
DIRECTIONS = {
    "forward": (1, {"bidirectional": False}),
    "reverse": (1, {"reverse": True}),
    "bidirectional": (2, {"bidirectional": True}),
}


def from_onnx(op_type: str, W, R, B=None, *, P=None, direction: str = "forward",
              linear_before_reset: int = 0, hidden_size: int | None = None,
              activations=None, clip: float | None = None, input_forget: int = 0,
              layout: int = 0) -> Converted:
    """An ONNX LSTM, GRU or RNN node's weight inputs W, R, B (and an LSTM's peepholes P) in the
    matching zoo cell's layout. The keywords are the node's attributes, checked: direction
    "bidirectional" gives a bidirectional layer (the `_reverse` parameters are ONNX's second
    direction), "reverse" a layer built with reverse=True; layout=1 gives batch_first=True.
    activations other than the defaults, clip and input_forget are refused.

    The node's other inputs pass to the layer call as they are: initial_h (and an LSTM's
    initial_c) [dirs, B, H] is the layer's hx, and sequence_lens the lengths of a packed batch.
    The layer's output (T, B, dirs*H) is ONNX's Y (T, dirs, B, H) with the direction axis moved.
    """
    kind = _kind(ONNX, "ONNX", op_type)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(map(repr, DIRECTIONS))},"
                         f" got {direction!r}")
    dirs, options = DIRECTIONS[direction]
    if activations is not None:
        _check_activations("ONNX", kind.name, {"activations": list(activations)},
                           {"activations": list(kind.activations["activations"]) * dirs})
    if clip is not None:
        raise ValueError(f"ONNX {kind.name} with clip={clip!r} is not a zoo cell")
    if input_forget:
        raise ValueError(f"ONNX {kind.name} with input_forget={input_forget!r} is not a zoo cell")
    if layout not in (0, 1):
        raise ValueError(f"layout must be 0 or 1, got {layout!r}")
    if linear_before_reset and kind.name != "GRU":
        raise ValueError(f"ONNX {kind.name} has no linear_before_reset")
    if P is not None and kind.name != "LSTM":
        raise ValueError(f"ONNX {kind.name} has no peephole input P")
    W, R = _array("W", W), _array("R", R)
    n = kind.gates
    if R.ndim != 3:
        raise ValueError(f"R must have shape (num_directions, {n}*H, H), got {R.shape}")
    H = R.shape[2]
    if hidden_size is not None and hidden_size != H:
        raise ValueError(f"hidden_size={hidden_size} but R has shape {R.shape}")
    _check_shape("R", R, (dirs, n * H, H), f"(num_directions, {n}*H, H)")
    if W.ndim != 3:
        raise ValueError(f"W must have shape (num_directions, {n}*H, input_size), got {W.shape}")
    _check_shape("W", W, (dirs, n * H, W.shape[2]), f"(num_directions, {n}*H, input_size)")
    given = [W, R]
    if B is not None:
        B = _array("B", B)
        _check_shape("B", B, (dirs, 2 * n * H), f"(num_directions, {2 * n}*H)")
        given.append(B)
    if P is not None:
        P = _array("P", P)
        _check_shape("P", P, (dirs, 3 * H), "(num_directions, 3*H)")
        given.append(P)
    cell, directions = None, []
    for d in range(dirs):
        cell, params = kind.convert(W[d], R[d], None if B is None else B[d],
                                    None if P is None else P[d], H, linear_before_reset)
        directions.append(params)
    return _converted(cell, W.shape[2], H, np.result_type(*given), directions,
                      bias=B is not None, batch_first=layout == 1, **options)


def load_onnx(op_type: str, W, R, B=None, *, P=None, direction: str = "forward",
              linear_before_reset: int = 0, hidden_size: int | None = None,
              activations=None, clip: float | None = None, input_forget: int = 0,
              layout: int = 0, target: str = "torch", **layer_kwargs):
    """from_onnx(...).layer(target, **layer_kwargs): a ready cellc layer."""
    conv = from_onnx(op_type, W, R, B, P=P, direction=direction,
                     linear_before_reset=linear_before_reset, hidden_size=hidden_size,
                     activations=activations, clip=clip, input_forget=input_forget,
                     layout=layout)
    return conv.layer(target, **layer_kwargs)
