"""The layer spec of a cell: what the torch.nn-compatible layer classes need to know, as one value.

`layer_spec(cell)` builds a `LayerSpec` once from a checked cell: its name, size arguments, states,
parameters and their initializers, with every size still a symbolic `Dim` and every initializer
argument still an expression (-1/sqrt(H)), because a layer evaluates them for each of its
layers' sizes (layer l > 0 rebinds the input size). Two consumers read the same value:

- `LayerSpec.runtime()` gives the dict that cellc.runtime.torch_layers.make_layer takes, with the
  sizes and arguments evaluated by cellc itself (the eager and llvm layer classes);
- torch_src.spec_source prints it as that dict's Python source into a generated module, which
  must not need cellc.

Besides the trained parameters ("param", "bias"), the spec carries a cell's frozen constants
("const": torch buffers, drawn from their initializer once per layer) and hyper-parameters
("hyper": constructor keywords with a default, passed to the loop as a [1] tensor), its states'
initial values (`state m[H] = -1e30`, per layer sizes as initializer arguments are), and
initializer expressions (`~ log(arange(1, H + 1))`, the "values" initializer).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction

from .. import ast_nodes as A
from ..lower import CellIR, broadcast_values, eval_number, eval_values, fold_number
from ..shapes import ONE, Dim
from ..source import Span
from ..variants import form, optional_sizes
from .torch_names import check_layer_cell


@dataclass(frozen=True)
class SizeIf:
    """A size that depends on the form of a cell with an optional size (cellc/variants.py):
    `nonzero` where the optional size `symbol` is not 0, else `zero` (`P or H` is
    SizeIf("P", P, H))."""

    symbol: str
    nonzero: Dim
    zero: Dim

    def evaluate(self, sizes) -> Fraction:
        return (self.nonzero if sizes.get(self.symbol, 0) else self.zero).evaluate(sizes)


def _size_if(symbol: str, nonzero: Dim, zero: Dim):
    return nonzero if nonzero == zero else SizeIf(symbol, nonzero, zero)


@dataclass(frozen=True)
class LayerParam:
    name: str
    # "param", "bias" (left out, i.e. zero, in a layer built with bias=False), "const" (a
    # frozen buffer) or "hyper" (a float constructor keyword; its default is init_args[0])
    kind: str
    shape: tuple[Dim, ...]
    init: str  # a name in cellc/initializers.py
    # Checked by lowering: numbers, sizes, + - * / ^, sqrt exp log; for init "values" the one
    # expression of the value, which may also call arange and broadcasts to `shape`.
    init_args: tuple[A.Expr, ...]
    init_span: Span | None = None  # where the initializer is written (errors of "values")
    choices: tuple[str, ...] = ()  # a choice hyper-parameter's function names
    # An optional size's symbol (P) if the parameter exists only where that size is not 0
    # (`param weight_hr[P, H]`): a layer built with proj_size=0 has no such parameter.
    absent_when_zero: str | None = None

    @property
    def default(self) -> float:
        """A hyper-parameter's default (lowering folds it: it reads no size)."""
        assert self.kind == "hyper", self.kind
        return float(fold_number(self.init_args[0]))

    def init_values(self, sizes: dict) -> tuple:
        """The initializer's arguments for one layer's sizes: numbers, or for "values" the one
        float64 array, already broadcast to the parameter's shape."""
        if self.init == "values":
            value = eval_values(self.init_args[0], sizes)
            return (broadcast_values(value, self.shape, sizes, self.init_span),)
        return tuple(eval_number(a, sizes) for a in self.init_args)


@dataclass(frozen=True)
class LayerSpec:
    name: str  # the cell name, which names the classes (LSTM and LSTMCell)
    sizes: tuple[tuple[str, str], ...]  # (constructor argument, size symbol), in header order
    input_size: str  # the argument sizing the input, rebound by stacked layers
    states: tuple[str, ...]
    state_sizes: tuple[Dim, ...]  # feature size of each state
    state_init: tuple[A.Expr | None, ...]  # each state's initial value; None: zero
    output_size: Dim
    params: tuple[LayerParam, ...]  # in the order the time loop takes them
    # The step's input row (cellc/inputs.py): x, x[t-1], noise masks; () for a plain cell.
    input_parts: tuple = ()
    optional_sizes: tuple[str, ...] = ()  # constructor arguments of optional sizes (proj_size)
    # The step's other sizes that some choice of sizes could make fractional or not positive
    # (`heads(v, 3)` of [H] is [3, H/3]), with a value they size: a layer refuses such sizes
    # when it is built, as CellIR.bind does, rather than failing inside its first call.
    step_sizes: tuple[tuple[str, Dim], ...] = ()

    def runtime(self) -> dict:
        """The spec dict of cellc.runtime.torch_layers: each size a function of a layer's sizes
        (symbol -> int), evaluated exactly (a Fraction where a size does not divide), so the
        layer can reject sizes that give no whole number."""
        return {
            "name": self.name,
            "sizes": list(self.sizes),
            "input_size": self.input_size,
            "states": list(self.states),
            "state_sizes": _dims(self.state_sizes),
            "state_init": lambda s, inits=self.state_init: tuple(
                0.0 if e is None else eval_number(e, s) for e in inits),
            "output_size": lambda s, d=self.output_size: _whole(d.evaluate(s)),
            "params": [_runtime_param(p) for p in self.params],
            "input_parts": [p.runtime() for p in self.input_parts],
            "optional_sizes": list(self.optional_sizes),
            "step_sizes": [(name, lambda s, d=d: _whole(d.evaluate(s)))
                           for name, d in self.step_sizes],
        }


def _runtime_param(p: LayerParam) -> dict:
    out = {"name": p.name, "kind": p.kind, "shape": _dims(p.shape), "init": p.init,
           "init_args": p.init_values}
    if p.absent_when_zero is not None:
        out["absent_when_zero"] = p.absent_when_zero
    if p.choices:
        out["default"], out["choices"] = p.choices[0], list(p.choices)
    elif p.kind == "hyper":
        out["default"] = p.default
    return out


def layer_spec(cell: CellIR) -> LayerSpec:
    """The spec of a cell, or a located CellError if the cell cannot make a layer. A cell with
    an optional size gets one spec for both its forms: sizes that differ are SizeIf, and the
    parameters the 0 form lacks are marked absent_when_zero."""
    optional = optional_sizes(cell)
    if not optional:
        return _layer_spec(cell)
    (sym,) = optional
    zero, nonzero = (_layer_spec(form(cell, z)) for z in (frozenset(optional), frozenset()))
    present = {p.name for p in zero.params}
    params = []
    for p in nonzero.params:
        if p.name not in present:
            params.append(replace(p, absent_when_zero=sym))
            continue
        q = next(q for q in zero.params if q.name == p.name)
        params.append(replace(p, shape=tuple(_size_if(sym, a, b)
                                             for a, b in zip(p.shape, q.shape))))
    return replace(
        nonzero,
        state_sizes=tuple(_size_if(sym, a, b)
                          for a, b in zip(nonzero.state_sizes, zero.state_sizes)),
        output_size=_size_if(sym, nonzero.output_size, zero.output_size),
        params=tuple(params),
        # A size of one form is checked where that form is the layer's (1 in the other).
        step_sizes=(*((n, _size_if(sym, d, ONE)) for n, d in nonzero.step_sizes),
                    *((n, _size_if(sym, ONE, d)) for n, d in zero.step_sizes)),
    )


def _layer_spec(cell: CellIR) -> LayerSpec:
    symbol = check_layer_cell(cell)
    n = len(cell.states)
    return LayerSpec(
        name=cell.name,
        sizes=tuple((s.arg, s.symbol) for s in cell.sizes),
        input_size=next(s.arg for s in cell.sizes if s.symbol == symbol),
        states=tuple(s.name for s in cell.states),
        state_sizes=tuple(s.type.shape[0] for s in cell.states),
        state_init=tuple(cell.state_init) or (None,) * n,
        output_size=cell.step.results[n].type.shape[0],
        params=tuple(LayerParam(p.name, p.kind, p.type.shape, p.init.fn, tuple(p.init.args),
                                p.init.span, p.choices) for p in cell.params),
        input_parts=tuple(cell.input_parts),
        optional_sizes=tuple(s.arg for s in cell.sizes if s.optional),
        step_sizes=_step_sizes(cell),
    )


def _step_sizes(cell: CellIR) -> tuple[tuple[str, Dim], ...]:
    """Each distinct size of the step's values that is not a whole, positive number for every
    choice of positive whole sizes (a fraction or a negative coefficient), with a value it
    sizes."""
    found: dict[Dim, str] = {}
    for v in (*cell.step.params, *(o for i in cell.step.body for o in i.outs)):
        for d in v.type.shape:
            risky = any(c.denominator != 1 or c < 0 for _, c in d.terms)
            if risky and d not in found:
                found[d] = v.name
    return tuple((name, d) for d, name in found.items())


def _whole(x: Fraction) -> int | Fraction:
    return int(x) if x.denominator == 1 else x


def _dims(shape: tuple[Dim, ...]):
    return lambda s: tuple(_whole(d.evaluate(s)) for d in shape)
