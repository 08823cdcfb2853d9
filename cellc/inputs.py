"""The step's input row when a cell reads more than its input: `x[t-1]`, dropout and zoneout.

A cell that uses the previous input or a regularizer reads, at each step, one wider row made of
*parts*, in order: the input itself [I], then (if used) the previous input x[t-1] [I], then one
noise mask per `dropout`/`zoneout` use (its value's feature size). The cell's step begins

    x, x_prev, m1, ... = split(xin, [I, I, F1, ...])

so every backend's kernels stay unchanged (they see one input sequence) and the hoisting pass
still moves `W @ x` and `W @ x_prev` out of the time loop, behind the split. Whoever calls the
kernels builds that row from x (T, B, I): `row_numpy` (the NumPy reference) and
`cellc.runtime.torch_layers.input_row` (the layers, where autograd maps the row's gradient back
to x); `row_grad_numpy` maps a row's cotangent back to x's, d x = d part0 + shift_back(d part1).
NativeCell and the native library refuse such cells (`refuse_parts`).

x[t-1] is x shifted one step within each sequence, zero at t = 0. A reverse-direction caller
builds the row after reversing each sequence, so x_prev is the previous input in processing order.

Noise masks (drawn with torch's default generator, so `torch.manual_seed` repeats them):
- dropout(v, p) (per=step, the default: a fresh mask at every step) or dropout(v, p,
  per=sequence) (Gal & Ghahramani 2016: one mask per sequence and feature, repeated at every
  step): inverted dropout, the mask in {0, 1/(1-p)} while training, 1 in eval (the expectation);
- zoneout(new, old, p) (Krueger et al. 2016): m ~ Bernoulli(p) per step and feature while
  training, the result m*old + (1-m)*new; in eval the paper's expectation p*old + (1-p)*new,
  which feeding m = p gives.
"""

from __future__ import annotations

from dataclasses import dataclass

from .runtime.native_calls import _check_rate as check_rate
from .runtime.native_calls import _eval_mask_value as eval_mask_value
from .runtime.native_calls import _is_plain as is_plain
from .runtime.native_calls import _row_grad_numpy as row_grad_numpy
from .runtime.native_calls import _row_numpy as row_numpy
from .shapes import Dim

# The helpers above live in the runtime module, which the AOT loader copies, so they are
# private there (the loader binds no public names of its own); here they are the API.
__all__ = ["InputPart", "check_rate", "eval_mask_value", "is_plain", "row_grad_numpy",
           "row_numpy"]

KINDS = ("input", "previous", "dropout", "zoneout")
PER = ("step", "sequence")


@dataclass(frozen=True)
class InputPart:
    kind: str  # one of KINDS
    name: str  # the name the step's split gives it: x, x_prev, a mask named after its use
    size: Dim  # its feature size
    rate: float | str | None = None  # p of dropout/zoneout: a number or a hyper-parameter's name
    per: str = "step"  # dropout: "step" (a fresh mask each step) or "sequence"

    def runtime(self) -> dict:
        """Plain data for the runtime spec dict (generated modules print it as a literal);
        the size is a function of a layer's sizes, as the spec's other sizes are."""
        return {"kind": self.kind, "name": self.name, "rate": self.rate, "per": self.per,
                "size": lambda s, d=self.size: int(d.evaluate(s))}


def refuse_parts(cell, what: str) -> None:
    """Raise a located error if `what` (an API that takes the input itself, not the row) is
    given a cell whose step reads x[t-1] or noise masks: those run through the layers, which
    build the row (and draw the masks) for them."""
    if not is_plain(cell.input_parts):
        from .source import CellShapeError

        uses = sorted({_USES[p.kind] for p in cell.input_parts[1:]})
        raise CellShapeError(
            f"{what} runs cells whose step reads only its input; this one reads"
            f" {' and '.join(uses)}: run it through its layers (cellc.load(..., target=...))",
            cell.input_span, cell.source.name)


_USES = {"previous": "the previous input", "dropout": "dropout masks",
         "zoneout": "zoneout masks"}

