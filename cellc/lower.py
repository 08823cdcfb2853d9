"""AST -> typed IR: scoping, shape inference, and every user error at its AST span.

The result is a `CellIR`: the cell's declarations plus its step function

    step(states..., input, params...) -> (next states..., output)

whose parameter order is the one a `scan` step wants (carry, x_t, consts), so
`sequence_program` can wrap it in the time loop unchanged.
"""

from __future__ import annotations

import difflib
import math
import operator
from dataclasses import dataclass, field, replace

import numpy as np

from . import ast_nodes as A
from . import initializers
from .inputs import PER, InputPart
from .ir import Builder, Func, Instr, Value, scan_out_types, verify
from .names import (
    LAYER_ATTRIBUTES,
    LAYER_HYPER_ARGUMENTS,
    MAX_NAME_LENGTH,
    MODULE_ATTRIBUTES,
    why_unusable,
)
from .ops import BINARY_FUNCTIONS, REDUCTIONS, UNARY_FUNCTIONS
from .shapes import ONE, Batch, Dim, ShapeMismatch, TensorType, product
from .source import (
    CellError,
    CellNameError,
    CellShapeError,
    CellSyntaxError,
    CellValueError,
    CellWarning,
    Source,
    Span,
)
from .tensors import TENSOR_ARITY, TENSOR_USAGE, drop_axis, heads_shape

NUMERIC_FUNCTIONS = {"sqrt": math.sqrt, "exp": math.exp, "log": math.log}
# An initializer expression (`~ log(arange(1, N + 1))`) may also call arange, as NumPy's.
ARANGE_ARITY = (1, 2, 3)
MAX_ARANGE = 1 << 24  # elements of one arange: far more than any parameter, far less than memory

# The functions a .cell file may call besides split and concat, with their argument counts.
# clamp and var are written out in other ops: min(max(x, lo), hi), mean((v - mean(v))^2).
FUNCTION_ARITY = {**{f: 1 for f in UNARY_FUNCTIONS + REDUCTIONS},
                  **{f: 2 for f in BINARY_FUNCTIONS}, "where": 3, "clamp": 3, "var": 1,
                  **TENSOR_ARITY}
# The noise functions: each use is one more mask in the step's input row (cellc/inputs.py).
NOISE_ARITY = {"dropout": 2, "zoneout": 3}
NOISE_USAGE = {"dropout": "dropout(v, p) or dropout(v, p, per=sequence)",
               "zoneout": "zoneout(new, old, p)"}
BUILTIN_FUNCTIONS = frozenset(FUNCTION_ARITY) | {"split", "concat", "arange", "reshape",
                                                  *NOISE_ARITY}
# Inline expansion of defs: a bound on the expanded statements' depth (the parser bounds what
# is written, MAX_DEPTH in syntax.py; lowering recurses about three frames a level) and on the
# instructions a cell may expand to (each def may call earlier ones twice: 2^n).
MAX_EXPANDED_DEPTH = 250
MAX_INSTRUCTIONS = 20_000

# Parameter kinds: "param" and "bias" are trained ("bias" is left out, i.e. zero, in a layer
# built with bias=False); "const" (`const P[H, H] ~ orthogonal()`) is a frozen buffer and
# "hyper" a header's float hyper-parameter (`forget_bias=1.0`); neither gets a gradient.
TRAINED_KINDS = ("param", "bias")
FROZEN_KINDS = ("const", "hyper")


@dataclass(frozen=True)
class Init:
    """A parameter initializer, its arguments still expressions in the size symbols. `fn` is a
    row of cellc/initializers.py; "values" holds one expression (`log(arange(1, N + 1))`), whose
    value broadcasts to `shape`, the parameter's."""

    fn: str
    args: tuple[A.Expr, ...]
    span: Span | None
    shape: tuple[Dim, ...] | None = None  # for "values": the parameter's shape

    def values(self, sizes: dict[str, int]) -> list:
        """The arguments for bound sizes: floats, or for "values" the one float64 array,
        broadcast to the parameter's full shape (a located CellShapeError if it does not)."""
        if self.fn == "values":
            return [broadcast_values(eval_values(self.args[0], sizes), self.shape, sizes,
                                     self.span)]
        return [eval_number(a, sizes) for a in self.args]

    def __str__(self) -> str:
        if self.fn == "values":
            return A.format_expr(self.args[0])
        return f"{self.fn}({', '.join(A.format_expr(a) for a in self.args)})"


@dataclass(frozen=True)
class ParamSpec:
    name: str
    kind: str  # "param", "bias", "const" or "hyper" (see TRAINED_KINDS, FROZEN_KINDS)
    type: TensorType
    init: Init
    span: Span
    # A choice hyper-parameter (`nonlinearity in (tanh, relu)`): the functions it selects
    # among; its value is the index of the chosen one (0, the first, by default).
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class SizeSpec:
    arg: str  # constructor argument, e.g. hidden_size
    symbol: str  # size symbol, e.g. H
    optional: bool = False  # `proj_size P = 0`: may be 0, its default (see `CellIR.zero`)


@dataclass(frozen=True)
class CellIR:
    name: str
    sizes: tuple[SizeSpec, ...]
    input: Value
    states: tuple[Value, ...]
    params: tuple[ParamSpec, ...]
    output: str  # name of the output value
    step: Func
    source: Source
    warnings: tuple[CellWarning, ...] = field(default=(), compare=False)
    input_span: Span | None = field(default=None, compare=False)  # where the input is declared
    # One per state: its initial value's expression (`state m[H] = -1e30`), None for zero.
    state_init: tuple[A.Expr | None, ...] = ()
    # The parts of the step's input row when it reads x[t-1] or noise masks (cellc/inputs.py):
    # the input first, then those; () for a cell whose step reads its input alone. `input`
    # is then the row.
    input_parts: tuple = ()
    # The optional sizes this CellIR is lowered with at 0: declarations sized by them are
    # absent and `A if P else B` took B. A cell with an optional size has two forms, this one
    # and the other (cellc/variants.py); loading gives the one with every optional size 0.
    zero: frozenset = frozenset()

    @property
    def symbols(self) -> list[str]:
        """The size symbols the kernels take: not an optional size this form has at 0."""
        return [s.symbol for s in self.sizes if s.symbol not in self.zero]

    @property
    def input_size(self) -> Dim:
        """The size of the input x[I] itself: the row's first part when the step reads more
        (x[t-1], noise masks; cellc/inputs.py)."""
        return self.input_parts[0].size if self.input_parts else self.input.type.shape[0]

    def initial_value(self, k: int, sizes: dict[str, int]) -> float:
        """State k's value before the first step when no initial state is given."""
        e = self.state_init[k] if k < len(self.state_init) else None
        return 0.0 if e is None else eval_number(e, dict(sizes))

    @property
    def frozen_params(self) -> tuple[bool, ...]:
        """Per parameter: a constant for the derivative (kind const or hyper)."""
        return tuple(p.kind in FROZEN_KINDS for p in self.params)

    @property
    def param_count_formula(self) -> Dim:
        """The trained numbers: constants and hyper-parameters are not counted."""
        total = Dim.of(0)
        for p in self.params:
            if p.kind not in TRAINED_KINDS:
                continue
            total = total + product(p.type.shape)
        return total

    def bind(self, **args: int) -> dict[str, int]:
        """Map constructor arguments (input_size=..., hidden_size=...) to size symbols, checking
        that every declared shape comes out a positive whole number. An optional size may be
        left out (0); the form that has it at 0 leaves it out of the result."""
        known = {s.arg for s in self.sizes}
        for k in args:
            if k not in known:
                raise TypeError(
                    f"{self.name}: unexpected size argument {k!r}; expects {sorted(known)}")
        sizes = {}
        for s in self.sizes:
            if s.arg not in args and not s.optional:
                raise TypeError(f"{self.name}: missing size argument {s.arg!r}")
            v = args.get(s.arg, 0)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(
                    f"{self.name}: {s.arg} must be an int, got {type(v).__name__} {v!r}")
            if s.optional:
                if v < 0:
                    raise ValueError(f"{self.name}: {s.arg} must be 0 (none) or positive, got"
                                     f" {v}")
                if (v == 0) != (s.symbol in self.zero):
                    form = "0" if s.symbol in self.zero else "positive"
                    raise ValueError(f"{self.name}: this form of the cell has {s.arg} {form};"
                                     " cellc.variants.variant(cell, sizes) gives the other")
            elif v <= 0:
                raise ValueError(f"{self.name}: {s.arg} must be positive, got {v}")
            if s.symbol not in self.zero:  # a form's 0 optional size appears in no shape
                sizes[s.symbol] = v
        for v in (*self.step.params, *(i for ins in self.step.body for i in ins.outs)):
            for d in v.type.shape:
                n = d.evaluate(sizes)
                if n.denominator != 1 or n <= 0:
                    raise ValueError(
                        f"{self.name}: with {args}, '{v.name}' would have {d} = {n} features;"
                        " choose sizes that make it a positive whole number"
                    )
        # Values that only the sizes decide: initializer expressions and initial states.
        for p in self.params:
            if p.init.fn == "values":
                p.init.values(sizes)
        for k in range(len(self.states)):
            self.initial_value(k, sizes)
        return sizes


def eval_number(e: A.Expr, sizes: dict[str, int]) -> float:
    """Evaluate an initializer argument such as -1/sqrt(H) for bound sizes. A part that is not
    a finite real number (log(H - 2) with H=1) is a CellValueError at that part's span."""
    try:
        value = _evaluate(e, sizes)
    except _NotFinite as bad:
        bound = ", ".join(f"{k}={v}" for k, v in sorted(sizes.items()))
        raise CellValueError(f"{bad.message} with {bound}", bad.span) from None
    assert value is not None
    return value


def fold_number(e: A.Expr) -> float | None:
    """The value of an initializer argument that uses no size symbol, None if it uses one. A
    part without sizes that is not a finite real number (log(-1), 1/0) is a CellValueError at
    its span, so `cellc check` reports it rather than the layer constructor."""
    try:
        return _evaluate(e, None)
    except _NotFinite as bad:
        raise CellValueError(bad.message, bad.span) from None


class _NotFinite(Exception):
    def __init__(self, message: str, span: Span):
        self.message, self.span = message, span


def _evaluate(e: A.Expr, sizes: dict[str, int] | None) -> float | None:
    """Evaluate e with sizes; with sizes None, None for any part that reads a size. Every part
    is checked to be a finite real number, since Python's math gives inf (1e308 * 10), complex
    numbers ((-1) ** 0.5) or exceptions (log(-1)) outside the reals."""
    if isinstance(e, A.Num):
        return _finite(e.value, e)
    if isinstance(e, A.Name):
        return None if sizes is None else float(sizes[e.id])
    if isinstance(e, A.Neg):
        x = _evaluate(e.operand, sizes)
        return None if x is None else -x
    if isinstance(e, A.Call):
        x = _evaluate(e.args[0], sizes)
        if x is None:
            return None
        fn = e.fn.id
        if (fn in ("sqrt", "log") and x < 0) or (fn == "log" and x == 0):
            raise _NotFinite(f"{fn} of {x:g} is not a finite real number", e.span)
        try:
            return _finite(NUMERIC_FUNCTIONS[fn](x), e)
        except OverflowError:
            raise _NotFinite(f"{fn}({x:g}) is not a finite number (too large)", e.span) from None
    lhs, rhs = _evaluate(e.lhs, sizes), _evaluate(e.rhs, sizes)
    if e.op == "div" and rhs == 0:  # whatever the left side is
        raise _NotFinite("division by zero", e.span)
    if lhs is None or rhs is None:
        return None
    if e.op == "pow" and lhs == 0 and rhs < 0:
        raise _NotFinite("division by zero", e.span)
    if e.op == "pow" and lhs < 0 and rhs != int(rhs):
        raise _NotFinite(f"({lhs:g})^{rhs:g} is not a real number", e.span)
    try:
        value = {"add": operator.add, "sub": operator.sub, "mul": operator.mul,
                 "div": operator.truediv, "pow": operator.pow}[e.op](lhs, rhs)
    except OverflowError:
        raise _NotFinite("the value is not a finite number (too large)", e.span) from None
    return _finite(value, e)


def _finite(value: float, e: A.Expr) -> float:
    if not math.isfinite(value):
        raise _NotFinite("the value is not a finite number (too large)", e.span)
    return value


# -- initializer expressions (`param A_log[D, N] ~ log(arange(1, N + 1))`) -------------------


class _BadShape(Exception):
    def __init__(self, message: str, span: Span):
        self.message, self.span = message, span


def eval_values(e: A.Expr, sizes: dict[str, int]) -> np.ndarray:
    """The float64 array of an initializer expression for bound sizes; a part that is not
    finite, an arange too long or operands that do not broadcast are located errors."""
    try:
        value = _values(e, sizes)
    except _NotFinite as bad:
        bound = ", ".join(f"{k}={v}" for k, v in sorted(sizes.items()))
        raise CellValueError(f"{bad.message} with {bound}", bad.span) from None
    except _BadShape as bad:
        raise CellShapeError(bad.message, bad.span) from None
    assert value is not None
    return value


def fold_values(e: A.Expr) -> np.ndarray | None:
    """The array of an initializer expression that uses no size symbol, None if it uses one;
    the parts without sizes are checked here, so `cellc check` reports them."""
    try:
        return _values(e, None)
    except _NotFinite as bad:
        raise CellValueError(bad.message, bad.span) from None
    except _BadShape as bad:
        raise CellShapeError(bad.message, bad.span) from None


def broadcast_values(value: np.ndarray, shape: tuple[Dim, ...], sizes: dict[str, int],
                     span: Span | None) -> np.ndarray:
    """The value broadcast to the parameter's shape by NumPy's rules, as a new array."""
    full = tuple(int(d.evaluate(sizes)) for d in shape)
    try:
        return np.array(np.broadcast_to(value, full), dtype=np.float64)
    except ValueError:
        raise CellShapeError(
            f"the initializer's value has shape {list(value.shape)}, which does not broadcast"
            f" to the parameter's shape {list(full)}", span) from None


def _values(e: A.Expr, sizes: dict[str, int] | None) -> np.ndarray | None:
    """As _evaluate, elementwise over float64 arrays, with arange; None where sizes is None
    and a size is read. NumPy's warnings are off: each result is checked instead."""
    if isinstance(e, A.Num):
        return np.float64(_finite(e.value, e))
    if isinstance(e, A.Name):
        return None if sizes is None else np.float64(sizes[e.id])
    if isinstance(e, A.Neg):
        x = _values(e.operand, sizes)
        return None if x is None else -x
    if isinstance(e, A.Call) and e.fn.id == "arange":
        return _arange(e, [_values(a, sizes) for a in e.args])
    if isinstance(e, A.Call):
        x = _values(e.args[0], sizes)
        if x is None:
            return None
        fn, x = e.fn.id, np.asarray(x)
        bad = x[x < 0] if fn == "sqrt" else x[x <= 0] if fn == "log" else x[:0]
        if bad.size:
            raise _NotFinite(f"{fn} of {float(bad.flat[0]):g} is not a finite real number",
                             e.span)
        with np.errstate(all="ignore"):
            return _finite_array(getattr(np, fn)(x), e)
    lhs, rhs = _values(e.lhs, sizes), _values(e.rhs, sizes)
    if e.op == "div" and rhs is not None and np.any(rhs == 0):
        raise _NotFinite("division by zero", e.span)
    if lhs is None or rhs is None:
        return None
    try:
        np.broadcast_shapes(np.shape(lhs), np.shape(rhs))
    except ValueError:
        raise _BadShape(f"cannot combine values of shapes {list(np.shape(lhs))} and"
                        f" {list(np.shape(rhs))}", e.span) from None
    if e.op == "pow":
        if np.any((lhs == 0) & (rhs < 0)):
            raise _NotFinite("division by zero", e.span)
        if np.any((lhs < 0) & (rhs != np.round(rhs))):
            raise _NotFinite("a negative number to a fractional power is not a real number",
                             e.span)
    with np.errstate(all="ignore"):
        value = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
                 "pow": np.power}[e.op](lhs, rhs)
    return _finite_array(value, e)


def _arange(e: A.Call, args: list) -> np.ndarray | None:
    if any(a is None for a in args):
        return None
    for a, x in zip(e.args, args):
        if np.ndim(x) != 0:
            raise _BadShape("arange takes numbers, not a list of values", a.span)
    start, stop, step = ([0.0] + args + [1.0])[-3:] if len(args) == 1 else (args + [1.0])[:3]
    if step == 0:
        raise _NotFinite("arange with a step of 0 never ends", e.span)
    count = (stop - start) / step
    if not math.isfinite(count) or count > MAX_ARANGE:
        raise _NotFinite(f"arange of {count:g} numbers is too long (at most {MAX_ARANGE})",
                         e.span)
    return np.arange(start, stop, step, dtype=np.float64)


def _finite_array(value, e: A.Expr):
    if not np.all(np.isfinite(value)):
        raise _NotFinite("the value is not a finite number (too large)", e.span)
    return value


def _size_names(e: A.Expr) -> set[str]:
    """The names a size expression reads (P and H in `4*P`, `P or H`)."""
    if isinstance(e, A.Name):
        return {e.id}
    if isinstance(e, A.Neg):
        return _size_names(e.operand)
    if isinstance(e, (A.BinOp, A.Either)):
        return _size_names(e.lhs) | _size_names(e.rhs)
    return set()


def _written_names(cell: A.Cell) -> set[str]:
    """Every name the file declares or assigns (the header's too)."""
    names = {s.symbol.id for s in cell.sizes} | {h.name.id for h in cell.hypers}
    for st in cell.body:
        if isinstance(st, A.Decl):
            names |= {d.name.id for d in st.names}
        elif isinstance(st, A.Assign):
            names |= {t.id for t in st.targets}
    return names


@dataclass
class _Binding:
    value: Value
    span: Span
    kind: str  # input state param bias const hyper value size


# How an error names the earlier definition of a name, by its binding's kind.
_KIND_WORDS = {"size": "size symbol", "value": "name", "hyper": "hyper-parameter",
               "def": "function", "const": "constant"}


class _Lowerer:
    def __init__(self, cell: A.Cell, zero: frozenset | None = None):
        self.cell = cell
        # Optional sizes lowered as 0 (None: every one, the form a file loads as).
        optional = {s.symbol.id for s in cell.sizes if s.default is not None}
        self.zero = frozenset(optional if zero is None else zero & optional)
        self.optional: dict[str, A.SizeArg] = {}
        self.b = Builder()
        # The values lowering adds (x_prev, noise masks) never take a name the file writes.
        self.written = _written_names(cell)
        self.env: dict[str, _Binding] = {}
        self.sizes: dict[str, A.Name] = {}
        self.defs: dict[str, A.Def] = {}
        self.choices: dict[str, A.HyperArg] = {}  # the header's choice hyper-parameters
        # What the step reads besides its input (cellc/inputs.py): x[t-1] and noise masks,
        # each (InputPart, the value the step's split gives it), in order of first use.
        self.parts: list[tuple[InputPart, Value]] = []
        self.input: tuple[Value, A.Declared] | None = None
        self.used: set[str] = set()
        self.warnings: list[CellWarning] = []
        # Inside an expanded def: its parameters' values, and the call site in the statement
        # being lowered, which every instruction of the expansion is attributed to.
        self.scope: dict[str, Value] | None = None
        self.site: Span | None = None
        self.depth = 0  # expr() levels now open, expansions included

    # -- names --------------------------------------------------------------------------------

    def previous(self, name: str) -> _Binding | None:
        if name in self.env:
            return self.env[name]
        if name in self.sizes:
            return _Binding(None, self.sizes[name].span, "size")
        if name in self.defs:
            return _Binding(None, self.defs[name].name.span, "def")
        return None

    def define(self, name: A.Name, binding: _Binding):
        prev = self.previous(name.id)
        if prev is not None:
            what = _KIND_WORDS.get(prev.kind, prev.kind)
            raise CellNameError(f"'{name.id}' is already defined", name.span).note(
                f"previous definition of {what} '{name.id}'", prev.span
            )
        self.env[name.id] = binding

    def lookup(self, name: A.Name) -> Value:
        if self.scope is not None and name.id in self.scope:
            return self.scope[name.id]
        if name.id in self.choices:
            raise CellNameError(f"'{name.id}' is a choice of function; call it, as in"
                                f" {name.id}(...)", name.span).note("declared",
                                                                    self.choices[name.id].span)
        if name.id in self.env and self.env[name.id].kind == "absent":
            b = self.env[name.id]
            size = b.value  # the optional size that is 0
            arg = self.optional[size].arg.id
            raise CellNameError(f"'{name.id}' is absent when {arg} is 0 (it is sized by {size}):"
                                f" read it only where {size} is not 0, as in"
                                f" (... {name.id} ...) if {size} else ...",
                                name.span).note("declared", b.span)
        if name.id in self.env and (self.scope is None or self.env[name.id].kind == "hyper"):
            self.used.add(name.id)
            return self.env[name.id].value
        if name.id in self.sizes:
            return self.b.const(Dim.of(name.id))
        if name.id in self.defs:
            raise CellNameError(f"'{name.id}' is a function; call it, as in {name.id}(...)",
                                name.span).note("defined", self.defs[name.id].name.span)
        if (name.id.endswith("'")
                and self.env.get(name.id[:-1], _Binding(None, None, "")).kind == "state"):
            raise CellNameError(f"'{name.id}' is used before it is assigned", name.span)
        known = list(self.env) + list(self.sizes)
        err = CellNameError(f"unknown name '{name.id}'", name.span)
        close = difflib.get_close_matches(name.id, known, n=1)
        if close:
            err.note(f"did you mean '{close[0]}'?")
        raise err

    def describe(self, e: A.Expr, v: Value) -> list[tuple[str, Span]]:
        if self.scope is None and isinstance(e, A.Name) and e.id in self.env:
            return [(f"'{e.id}' is {v.type}, defined", self.env[e.id].span)]
        return []

    # -- shapes -------------------------------------------------------------------------------

    def dim(self, e: A.Expr) -> Dim:
        if isinstance(e, A.Either):  # P or H: P, or H where the optional size P is 0
            test = self.optional_size(e.lhs, "or")
            return self.dim(e.rhs) if test in self.zero else self.dim(e.lhs)
        if isinstance(e, A.Name) and e.id in self.zero:
            return Dim.of(0)
        if isinstance(e, A.Num):
            if e.value != int(e.value):
                raise CellShapeError(f"a size must be a whole number, not {e.value:g}", e.span)
            return Dim.of(int(e.value))
        if isinstance(e, A.Name):
            if e.id not in self.sizes:
                known = ", ".join(self.sizes) or "none"
                raise CellNameError(
                    f"undefined size '{e.id}'; the header binds {known}", e.span
                )
            return Dim.of(e.id)
        if isinstance(e, A.Neg):
            return -self.dim(e.operand)
        if isinstance(e, A.BinOp) and e.op in ("add", "sub", "mul"):
            lhs, rhs = self.dim(e.lhs), self.dim(e.rhs)
            if e.op == "mul" and lhs.constant is None and rhs.constant is None:
                return lhs * rhs
            return {"add": lhs + rhs, "sub": lhs - rhs, "mul": lhs * rhs}[e.op]
        if isinstance(e, A.BinOp) and e.op == "div":
            rhs = self.dim(e.rhs)
            if rhs.constant is None or rhs.constant.denominator != 1 or rhs.constant <= 0:
                raise CellShapeError("a size can only be divided by a positive whole number",
                                     e.rhs.span)
            return self.dim(e.lhs).divide(int(rhs.constant))
        raise CellShapeError("a size is built from size symbols, whole numbers, + - * and /",
                             e.span)

    def check_numeric(self, e: A.Expr, what: str = "initializer arguments",
                      arange: bool = False, sizes: bool = True):
        """Initializer arguments: numbers, size symbols, + - * / ^ and sqrt/exp/log; an
        initializer expression (`arange`) may call arange too; a default uses no sizes."""
        if isinstance(e, A.Num):
            return
        if isinstance(e, A.Name):
            if e.id not in self.sizes or not sizes:
                allowed = "only sizes and numbers" if sizes else "only numbers"
                raise CellNameError(
                    f"'{e.id}' is not {'a size symbol' if sizes else 'a number'}; {what} may"
                    f" use {allowed}", e.span)
            return
        if isinstance(e, A.Neg):
            return self.check_numeric(e.operand, what, arange, sizes)
        if isinstance(e, A.Call):
            fn = e.fn.id
            if arange and fn == "arange":
                if len(e.args) not in ARANGE_ARITY:
                    raise CellShapeError("use arange(stop), arange(start, stop) or"
                                         " arange(start, stop, step)", e.span)
            elif fn not in NUMERIC_FUNCTIONS or len(e.args) != 1:
                also = ", log or arange" if arange else " or log"
                raise CellNameError(
                    f"'{fn}' cannot be used in {what} (use sqrt, exp{also})", e.fn.span)
            self.check_keywords(e)
            for a in e.args:
                self.check_numeric(a, what, arange, sizes)
            return
        if not isinstance(e, A.BinOp):  # x[t-1], P or H, A if P else B
            shown = A.format_expr(e)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise CellShapeError(f"'{shown}' cannot be used in {what}", e.span)
        if e.op not in ("add", "sub", "mul", "div", "pow"):
            sym = {"matmul": "@", **A.COMPARISONS}.get(e.op, e.op)
            raise CellShapeError(f"'{sym}' cannot be used in {what}", e.span)
        self.check_numeric(e.lhs, what, arange, sizes)
        self.check_numeric(e.rhs, what, arange, sizes)

    # -- expressions --------------------------------------------------------------------------

    def at(self, e: A.Expr):
        """Attribute what is emitted next to e, or, inside an expansion, to its call site."""
        self.b.span = self.site or e.span

    def expr(self, e: A.Expr) -> Value:
        self.depth += 1
        try:
            if self.site is not None and self.depth > MAX_EXPANDED_DEPTH:
                raise CellSyntaxError(
                    f"expression too deep: with the defs it calls expanded, more than"
                    f" {MAX_EXPANDED_DEPTH} levels; split it into several assignments", e.span)
            return self._expr(e)
        finally:
            self.depth -= 1

    def _expr(self, e: A.Expr) -> Value:
        self.at(e)
        if isinstance(e, A.Num):
            return self.b.const(e.value)
        if isinstance(e, A.Name):
            return self.lookup(e)
        if isinstance(e, A.Neg):
            if isinstance(e.operand, A.Num):
                return self.b.const(-e.operand.value)
            x = self.expr(e.operand)
            return self.emit("neg", [x], e)
        if isinstance(e, A.BinOp):
            return self.binop(e)
        if isinstance(e, A.Shifted):
            return self.previous_input(e)
        if isinstance(e, A.Cond):
            return self.conditional(e)
        if isinstance(e, A.Either):
            raise CellShapeError("'or' picks between sizes (P or H); between values, write"
                                 " A if P else B", e.span)
        return self.call(e)

    def emit(self, op: str, args: list[Value], e: A.Expr, operands=(), **attrs) -> Value:
        self.at(e)
        try:
            (out,) = self.b.emit(op, args, attrs)
        except ShapeMismatch as m:
            raise self.shape_error(op, args, e, operands, str(m)) from None
        return out

    def shape_error(self, op, args, e, operands, why) -> CellShapeError:
        verbs = {"add": "add", "sub": "subtract", "mul": "multiply", "div": "divide",
                 "min": "take the min of", "max": "take the max of", "power": "raise",
                 **{c: "compare" for c in A.COMPARISONS}}
        if op in verbs:
            joiner = "by" if op in ("mul", "div") else "to the power" if op == "power" else "and"
            msg = f"cannot {verbs[op]} {args[0].type} {joiner} {args[1].type}: {why}"
        else:
            msg = why if op in ("matmul", "where") else f"{op}: {why}"
        err = CellShapeError(msg, e.span)
        for sub, v in zip(operands, args):
            for text, span in self.describe(sub, v):
                err.note(text, span)
        return err

    def binop(self, e: A.BinOp) -> Value:
        if e.op == "pow":
            exponent = e.rhs
            sign = 1.0
            if isinstance(exponent, A.Neg):
                exponent, sign = exponent.operand, -1.0
            if isinstance(exponent, A.Num):  # a number exponent stays an attribute
                base = self.expr(e.lhs)
                return self.emit("pow", [base], e, exponent=sign * exponent.value)
            base, power = self.expr(e.lhs), self.expr(e.rhs)
            return self.emit("power", [base, power], e, operands=(e.lhs, e.rhs))
        lhs, rhs = self.expr(e.lhs), self.expr(e.rhs)
        if e.op == "matmul":
            return self.matmul(e, lhs, rhs)
        return self.emit(e.op, [lhs, rhs], e, operands=(e.lhs, e.rhs))

    def check_keywords(self, e: A.Call):
        """Keyword arguments: only dropout's per=, at most once."""
        seen = set()
        for k, _ in e.keywords:
            if k.id in seen:
                raise CellNameError(f"keyword argument '{k.id}' is given twice", k.span)
            seen.add(k.id)
            if k.id == "axis" and (e.fn.id in REDUCTIONS or (e.fn.id == "max"
                                                             and len(e.args) == 1)):
                continue
            if e.fn.id != "dropout" or k.id != "per":
                raise CellNameError(f"{e.fn.id} takes no keyword argument '{k.id}'" + (
                    "; dropout takes per=step or per=sequence" if e.fn.id == "dropout" else ""),
                    k.span)

    def check_call(self, e: A.Call):
        """The function exists and takes this many arguments (a def's count: `expand`)."""
        fn = e.fn.id
        self.check_keywords(e)
        if fn in NOISE_ARITY:
            if len(e.args) != NOISE_ARITY[fn]:
                raise CellShapeError(f"{fn} takes {NOISE_ARITY[fn]} arguments, not"
                                     f" {len(e.args)}: {NOISE_USAGE[fn]}", e.span)
            return
        if fn in self.defs or fn in self.choices:
            return
        if fn == "split":
            raise CellShapeError(
                "split gives several values; assign them to names, as in a, b = split(x, 2)",
                e.span)
        if fn == "concat":
            if not e.args:
                raise CellShapeError("concat needs at least one argument", e.span)
            return
        if fn == "reshape":
            if len(e.args) < 2:
                raise CellShapeError(f"use {TENSOR_USAGE['reshape']}", e.span)
            return
        arity = FUNCTION_ARITY.get(fn)
        if fn == "max" and e.keywords and len(e.args) == 1:  # max(v, axis=k): a reduction
            return
        if arity is None:
            known = sorted({*FUNCTION_ARITY, "split", "concat", "reshape", *self.defs})
            err = CellNameError(f"unknown function '{fn}'", e.fn.span)
            close = difflib.get_close_matches(fn, known, n=1)
            err.note(f"did you mean '{close[0]}'?" if close else "functions: " + ", ".join(known))
            raise err
        if len(e.args) != arity:
            raise CellShapeError(
                f"{fn} takes {arity} argument{'s' if arity > 1 else ''}, not {len(e.args)}", e.span)

    def call(self, e: A.Call) -> Value:
        fn = e.fn.id
        self.check_call(e)
        if fn in self.defs:
            return self.expand(self.defs[fn], e)
        if fn in self.choices:
            return self.chosen(self.choices[fn], e)
        if fn in NOISE_ARITY:
            return self.noise(e)
        if fn in ("heads", "reshape"):  # sizes after the value, not values
            x = self.expr(e.args[0])
            if fn == "heads":
                shape = heads_shape(x.type, self.dim(e.args[1]))
                if shape is None:
                    raise CellShapeError(f"cannot split {x.type} into {self.dim(e.args[1])}"
                                         " heads: its last size is not a multiple of it", e.span)
            else:
                shape = tuple(self.dim(a) for a in e.args[1:])
            return self.emit("reshape", [x], e, operands=e.args[:1], shape=shape)
        args = [self.expr(a) for a in e.args]
        if fn in TENSOR_ARITY or (fn in (*REDUCTIONS, "max") and e.keywords):
            return self.tensor_call(e, args)
        if fn == "clamp":  # min(max(x, lo), hi)
            low = self.emit("max", args[:2], e, operands=e.args[:2])
            return self.emit("min", [low, args[2]], e, operands=(e.args[0], e.args[2]))
        if fn == "var":  # population variance over the features: mean((v - mean(v))^2)
            centred = self.emit("sub", [args[0], self.emit("mean", args, e)], e)
            return self.emit("mean", [self.emit("pow", [centred], e, exponent=2.0)], e)
        return self.emit(fn, args, e, operands=e.args)

    # -- tensor-valued cells: outer, dot, transpose, merge, reductions along an axis ----------

    def tensor_call(self, e: A.Call, args: list[Value]) -> Value:
        fn = e.fn.id
        if fn == "merge":
            (x,) = args
            return self.emit("reshape", [x], e, operands=e.args, shape=(product(x.type.shape),))
        if fn == "transpose":
            return self.emit("transpose", args, e, operands=e.args)
        if fn in ("outer", "dot"):
            a, b = args
            for x, sub in zip(args, e.args):
                if x.type.rank == 0:
                    raise CellShapeError(f"{fn} takes vectors (or stacks of them), not a scalar",
                                         sub.span)
            if fn == "outer":  # a[..., m, 1] * b[..., 1, n]
                a = self.emit("reshape", [a], e, shape=a.type.shape + (ONE,))
                b = self.emit("reshape", [b], e, shape=b.type.shape[:-1] + (ONE,)
                              + b.type.shape[-1:])
                return self.emit("mul", [a, b], e, operands=e.args)
            if a.type.shape[-1] != b.type.shape[-1]:
                raise self.shape_error("dot", args, e, e.args,
                                       f"the last sizes differ: {a.type} and {b.type}")
            return self.reduce(self.emit("mul", args, e, operands=e.args), -1, e, "sum")
        (x,) = args  # sum or mean with axis=
        ((_, value),) = e.keywords
        axis = fold_number(value) if isinstance(value, (A.Num, A.Neg)) else None
        if axis is None or axis != int(axis) or not -x.type.rank <= axis < max(x.type.rank, 1):
            raise CellShapeError(f"axis must be a whole number from {-x.type.rank} to"
                                 f" {x.type.rank - 1} for {x.type}", value.span)
        return self.reduce(x, int(axis), e, fn)

    def reduce(self, x: Value, axis: int, e: A.Expr, fn: str) -> Value:
        """sum, mean or max of x along one feature axis, which goes away ([1] for a vector)."""
        if x.type.rank <= 1 and fn != "max":
            return self.emit(fn, [x], e)
        k = axis % x.type.rank
        total = self.emit("max_axis" if fn == "max" else "sum_axis", [x], e, axis=k)
        if fn == "mean":
            total = self.emit("div", [total, self.b.const(x.type.shape[k])], e)
        return self.emit("reshape", [total], e, shape=drop_axis(x.type.shape, k))

    def matmul(self, e: A.BinOp, lhs: Value, rhs: Value) -> Value:
        """W @ v (a parameter matrix and a vector) is a matmul; A @ v with A a stack of matrices
        (a per-example value, or a parameter [NH, D, D] applied per head) one rank above v a
        matvec: O(size of A) work, per example and step."""
        a, v = lhs.type, rhs.type
        if (a.batch is Batch.NONE and a.rank == 2 and v.rank == 1) or a.rank < 2:
            return self.emit("matmul", [lhs, rhs], e, operands=(e.lhs, e.rhs))
        if a.rank != v.rank + 1:
            why = ("a product of two matrices is not supported yet; write it per column"
                   if a.rank == v.rank else f"the left side ({a}) must be one rank above the"
                   f" right ({v})")
            raise self.shape_error("matmul", [lhs, rhs], e, (e.lhs, e.rhs), f"@: {why}")
        if a.shape[-1] != v.shape[-1]:
            raise self.shape_error("matmul", [lhs, rhs], e, (e.lhs, e.rhs),
                                   f"cannot multiply {a} by {v}: {a.shape[-1]} != {v.shape[-1]}")
        return self.emit("matvec", [lhs, rhs], e, operands=(e.lhs, e.rhs))

    # -- user functions -----------------------------------------------------------------------

    def define_function(self, d: A.Def):
        """Check a def where it is written: its name, its parameters, and that its body reads
        only its parameters, sizes and hyper-parameters and calls only known functions."""
        name = d.name.id
        if name.endswith("'"):
            raise CellNameError("a function name cannot end in a prime", d.name.span)
        if name in BUILTIN_FUNCTIONS:
            raise CellNameError(f"def '{name}' would hide the built-in function '{name}';"
                                " rename it", d.name.span)
        if name in self.defs:
            raise CellNameError(f"function '{name}' is already defined", d.name.span).note(
                "previous definition", self.defs[name].name.span)
        prev = self.previous(name)
        if prev is not None:
            raise CellNameError(f"'{name}' is already defined", d.name.span).note(
                f"previous definition of {_KIND_WORDS.get(prev.kind, prev.kind)} '{name}'",
                prev.span)
        seen: dict[str, A.Name] = {}
        for p in d.params:
            if p.id in seen:
                raise CellNameError(f"parameter '{p.id}' of '{name}' appears twice",
                                    p.span).note("first", seen[p.id].span)
            if p.id.endswith("'"):
                raise CellNameError("a function's parameter cannot end in a prime", p.span)
            hidden = self.previous(p.id)
            if hidden is not None and hidden.kind in ("size", "hyper"):
                what = _KIND_WORDS[hidden.kind]
                raise CellNameError(f"parameter '{p.id}' of '{name}' would hide the {what}"
                                    f" '{p.id}'; rename it", p.span).note("declared", hidden.span)
            seen[p.id] = p
        self.check_body(d, d.body, set(seen))
        self.defs[name] = d

    def check_body(self, d: A.Def, e: A.Expr, params: set[str]):
        if isinstance(e, A.Name):
            b = self.env.get(e.id)
            if e.id in params or e.id in self.sizes or (b is not None and b.kind == "hyper"):
                return
            if b is not None or (e.id.endswith("'") and e.id[:-1] in self.env):
                what = _KIND_WORDS.get(b.kind, b.kind) if b is not None else "next value"
                raise CellNameError(
                    f"the body of '{d.name.id}' cannot use the cell's {what} '{e.id}': a def"
                    " sees only its parameters, the sizes and hyper-parameters; pass it as an"
                    " argument", e.span)
            if e.id in self.defs:
                self.lookup(e)  # "is a function; call it"
            known = sorted(params) + list(self.sizes)
            err = CellNameError(f"unknown name '{e.id}' in the body of '{d.name.id}'", e.span)
            close = difflib.get_close_matches(e.id, known, n=1)
            raise err.note(f"did you mean '{close[0]}'?" if close else
                           f"'{d.name.id}' has parameters {', '.join(sorted(params)) or 'none'}")
        if isinstance(e, A.Neg):
            self.check_body(d, e.operand, params)
        elif isinstance(e, A.BinOp):
            self.check_body(d, e.lhs, params)
            self.check_body(d, e.rhs, params)
        elif isinstance(e, A.Call):
            if e.fn.id == d.name.id:
                raise CellNameError(
                    f"'{d.name.id}' cannot call itself: a def is expanded inline, and may call"
                    " only the defs before it", e.fn.span)
            self.check_call(e)
            if e.fn.id in self.defs:
                self.check_arguments(self.defs[e.fn.id], e)
            for a in e.args:
                self.check_body(d, a, params)

    def check_arguments(self, d: A.Def, e: A.Call):
        n, given = len(d.params), len(e.args)
        if given != n:
            raise CellShapeError(
                f"{d.name.id} takes {n} argument{'s' if n != 1 else ''}, not {given}",
                e.span).note(f"'{d.name.id}' is defined", d.span)

    def expand(self, d: A.Def, e: A.Call) -> Value:
        """Lower a def's body with its parameters bound to the call's arguments. An error in
        the body points at the body's text, with a note at the call."""
        self.check_arguments(d, e)
        args = [self.expr(a) for a in e.args]
        saved = self.scope, self.site
        self.scope = {p.id: v for p, v in zip(d.params, args)}
        self.site = self.site or e.span
        self.used.add(d.name.id)
        try:
            value = self.expr(d.body)
        except CellError as err:
            if len(err.notes) < 8:  # nested expansions: the innermost calls say enough
                err.note(f"in '{d.name.id}', called", e.span)
            raise
        finally:
            self.scope, self.site = saved
        if len(self.b.body) > MAX_INSTRUCTIONS:
            raise CellSyntaxError(
                f"expanding '{d.name.id}' makes the cell more than {MAX_INSTRUCTIONS}"
                " instructions", e.span)
        return value

    # -- statements ---------------------------------------------------------------------------

    def check_name(self, name: A.Name, what: str):
        """Cell and size names are written into generated code as they are (see names.py)."""
        why = why_unusable(name.id, what)
        if why is None:
            return
        shown = name.id if len(name.id) <= MAX_NAME_LENGTH else name.id[:12] + "..."
        if what == "cell":
            raise CellNameError(f"the cell name '{shown}' cannot name a Python class in the"
                                f" generated code: {why}; rename the cell", name.span)
        raise CellNameError(f"the {what} '{shown}' cannot be used: {why}; rename it", name.span)

    def header(self) -> list[tuple[Value, tuple]]:
        """Bind the header's size symbols and declare its hyper-parameters, which come first
        among the parameters, as [1] values that start at their defaults."""
        cell = self.cell
        args: dict[str, Span] = {}
        for s in cell.sizes:
            self.check_name(s.arg, "size argument")
            self.check_name(s.symbol, "size symbol")
            if s.symbol.id in self.sizes:
                raise CellNameError(f"size symbol '{s.symbol.id}' is bound twice", s.symbol.span)
            if s.arg.id in args:
                raise CellNameError(f"argument '{s.arg.id}' appears twice", s.arg.span)
            args[s.arg.id] = s.arg.span
            self.sizes[s.symbol.id] = s.symbol
            if s.default is not None:
                if s.default.value != 0:
                    raise CellShapeError(f"an optional size defaults to 0 (none): write"
                                         f" {s.arg.id} {s.symbol.id} = 0", s.default.span)
                if self.optional:
                    first = next(iter(self.optional.values()))
                    raise CellShapeError("a cell has at most one optional size",
                                         s.arg.span).note("the first", first.arg.span)
                self.optional[s.symbol.id] = s
        hypers = []
        for h in cell.hypers:
            name = h.name
            self.check_name(name, "hyper-parameter")
            if name.id in args:
                raise CellNameError(f"argument '{name.id}' appears twice", name.span).note(
                    "first", args[name.id])
            args[name.id] = name.span
            if h.choices:
                hypers.append(self.choice(h))
                continue
            if h.default is None:
                raise CellNameError(f"hyper-parameter '{name.id}' needs a default value, as in"
                                    f" {name.id}=1.0", name.span)
            self.check_numeric(h.default, "a hyper-parameter's default", sizes=False)
            default = fold_number(h.default)
            v = Value(self.b.fresh(name.id), TensorType((Dim.of(1),), Batch.NONE))
            self.define(name, _Binding(v, h.span, "hyper"))
            d = A.Declared(name, None, h.span)
            hypers.append((v, (d, "hyper", Init("constant", (A.Num(default, h.default.span),),
                                                 h.span))))
        return hypers

    # -- the step's input row: x[t-1], dropout and zoneout (cellc/inputs.py) -----------------

    def previous_input(self, e: A.Shifted) -> Value:
        """`x[t-1]`: the input one step earlier (zero at the first step), one more part of the
        step's input row, so it costs no state and `W @ x[t-1]` is hoisted as `W @ x` is."""
        i, x = e.index, (self.input[1].name.id if self.input is not None else None)
        previous = (isinstance(i, A.BinOp) and i.op == "sub" and isinstance(i.lhs, A.Name)
                    and i.lhs.id == "t" and isinstance(i.rhs, A.Num) and i.rhs.value == 1.0)
        if e.name.id != x and (previous or x is None):
            what = "the input" if x is None else f"the input '{x}'"
            raise CellNameError(f"only the input has earlier steps: '{e.name.id}[t-1]' needs"
                                f" {what}", e.name.span)
        if e.name.id != x:
            raise CellShapeError(f"'{e.name.id}' cannot be indexed: values are vectors (split"
                                 f" or sum them); the one index is the input's previous step,"
                                 f" {x}[t-1]", e.span)
        if not previous:
            raise CellShapeError(f"the only index is the previous step, {x}[t-1]"
                                 " (values are vectors: split or sum them instead)", i.span)
        if self.scope is not None:
            raise CellNameError(f"the body of a def cannot read {e.name.id}[t-1]; pass it as an"
                                " argument", e.span)
        for part, v in self.parts:
            if part.kind == "previous":
                return v
        x = self.input[0]
        v = Value(self.internal_name(f"{x.name}_prev"), x.type)
        self.parts.append((InputPart("previous", v.name, x.type.shape[0]), v))
        return v

    def noise(self, e: A.Call) -> Value:
        """dropout(v, p[, per=sequence]) = v * m and zoneout(new, old, p) = new + m*(old - new),
        with m a noise mask: one more part of the step's input row, which the caller draws
        (cellc/inputs.py). p is a number in [0, 1) or a hyper-parameter's name."""
        fn = e.fn.id
        values = [self.expr(a) for a in e.args[:-1]]
        rate = self.rate(e.args[-1], fn)
        per = "step"
        for _, value in e.keywords:
            if not isinstance(value, A.Name) or value.id not in PER:
                raise CellNameError("per is step (a fresh mask each step, the default) or"
                                    " sequence (one mask per sequence, Gal & Ghahramani)",
                                    value.span)
            per = value.id
        v = values[0]
        if v.type.batch != Batch.STEP or len(v.type.shape) != 1:
            err = CellShapeError(f"{fn} masks a per-example vector, not {v.type}", e.args[0].span)
            for text, span in self.describe(e.args[0], v):
                err.note(text, span)
            raise err
        if fn == "zoneout" and values[1].type != v.type:
            raise self.shape_error("zoneout", values, e, e.args[:2],
                                   f"the new value {v.type} and the old {values[1].type}"
                                   " must have the same shape")
        m = Value(self.internal_name(f"{fn}_mask"), v.type)
        self.parts.append((InputPart(fn, m.name, v.type.shape[0], rate, per), m))
        m = self.emit("stop_gradient", [m], e)  # a mask is a constant: no backward work on it
        if fn == "dropout":
            return self.emit("mul", [v, m], e)
        change = self.emit("sub", [values[1], v], e)
        return self.emit("add", [v, self.emit("mul", [m, change], e)], e)

    def rate(self, e: A.Expr, fn: str) -> float | str:
        """A noise rate: a number in [0, 1) or a (float) hyper-parameter's name."""
        if isinstance(e, A.Name) and e.id in self.env and self.env[e.id].kind == "hyper" \
                and e.id not in self.choices:
            self.used.add(e.id)
            return e.id
        if isinstance(e, A.Num):
            if not 0.0 <= e.value < 1.0:
                raise CellValueError(f"the rate of {fn} must be in [0, 1), not {e.value:g}",
                                     e.span)
            return e.value
        raise CellNameError(f"the rate of {fn} is a number or a hyper-parameter of the header"
                            f" (as p=0.1 in cell C(..., p=0.1)); it is a {fn} mask's"
                            " probability, drawn before the loop", e.span)

    def internal_name(self, hint: str) -> str:
        name, k = hint, 0
        while name in self.written or self.b.taken(name):
            name, k = f"{hint}{k}", k + 1
        return self.b.fresh(name)

    def input_row(self, step_params, body):
        """With parts besides the input: the step reads one row xin and splits it first,
        x, x_prev, masks... = split(xin, [I, I, F...]). Returns (step_params, body, xin,
        parts)."""
        if not self.parts:
            return step_params, body, None, ()
        x, decl = self.input
        parts = [(InputPart("input", x.name, x.type.shape[0]), x), *self.parts]
        width = parts[0][0].size
        for part, _ in parts[1:]:
            width = width + part.size
        xin = Value(self.internal_name(f"{x.name}_row"), x.type.with_shape((width,)))
        split = Instr("split", (xin,), tuple(v for _, v in parts),
                      {"sizes": tuple(p.size for p, _ in parts)}, decl.span)
        params = tuple(xin if v is x else v for v in step_params)
        return params, (split, *body), xin, tuple(p for p, _ in parts)

    # -- optional sizes: `proj_size P = 0`, `P or H`, `A if P else B` ------------------------

    def optional_size(self, e: A.Expr, what: str) -> str:
        """The optional size that `e` (the left of `or`, the test of `if`) names."""
        if isinstance(e, A.Name) and e.id in self.optional:
            return e.id
        example = "P or H" if what == "or" else "(W @ h) if P else h"
        raise CellShapeError(f"'{what}' tests an optional size of the header (as P in"
                             f" proj_size P = 0): write {example}", e.span)

    def conditional(self, e: A.Cond) -> Value:
        """`A if P else B`: only the branch this form takes is lowered (the other may read
        parameters that are absent here)."""
        test = self.optional_size(e.test, "if")
        return self.expr(e.orelse if test in self.zero else e.then)

    def choice(self, h: A.HyperArg) -> tuple[Value, tuple]:
        """`nonlinearity in (tanh, relu)`: a [1] hyper-parameter holding the chosen function's
        index, 0 (the first) by default. Each choice is a built-in function of one value."""
        seen: dict[str, A.Name] = {}
        for c in h.choices:
            if c.id in seen:
                raise CellNameError(f"'{c.id}' is a choice of '{h.name.id}' twice",
                                    c.span).note("first", seen[c.id].span)
            if c.id not in UNARY_FUNCTIONS or c.id == "stop_gradient":
                unary = ", ".join(f for f in UNARY_FUNCTIONS if f != "stop_gradient")
                raise CellNameError(f"the choices of '{h.name.id}' are functions of one value"
                                    f" ({unary}); '{c.id}' is not one", c.span)
            seen[c.id] = c
        if h.name.id in BUILTIN_FUNCTIONS:
            raise CellNameError(f"the choice '{h.name.id}' would hide the built-in function"
                                f" '{h.name.id}'; rename it", h.name.span)
        v = Value(self.b.fresh(h.name.id), TensorType((Dim.of(1),), Batch.NONE))
        self.define(h.name, _Binding(v, h.span, "hyper"))
        self.choices[h.name.id] = h
        d = A.Declared(h.name, None, h.span)
        return v, (d, "hyper", Init("constant", (A.Num(0.0, h.span),), h.span),
                   tuple(c.id for c in h.choices))

    def chosen(self, h: A.HyperArg, e: A.Call) -> Value:
        """A call of a choice, `nonlinearity(z)`: every choice applied to z, the chosen one
        kept by selects on the index (where(k < 0.5, tanh(z), relu(z))). Each target computes
        them all; the index is a run-time value, so a layer changes it without a recompile."""
        if len(e.args) != 1:
            raise CellShapeError(f"{h.name.id} takes 1 argument, not {len(e.args)}", e.span)
        self.used.add(h.name.id)
        index = self.env[h.name.id].value
        z = self.expr(e.args[0])
        if len(h.choices) == 1:
            return self.emit(h.choices[0].id, [z], e)
        # Each function reads z where it is chosen and 1.0 elsewhere, a point where every one
        # is finite with a finite derivative: a function not chosen (log, sqrt of a negative z)
        # then puts no nan into the gradient through the zero its select gives it.
        one, picks = self.b.const(1.0), []
        last = len(h.choices) - 1
        for k in range(last + 1):  # k < 0.5, 0.5 < k < 1.5, ..., k > last - 0.5
            bounds = ([self.emit("gt", [index, self.b.const(k - 0.5)], e)] if k else [])
            bounds += [self.emit("lt", [index, self.b.const(k + 0.5)], e)] if k < last else []
            picks.append(bounds[0] if len(bounds) == 1 else self.emit("mul", bounds, e))
        outs = [self.emit(c.id, [self.emit("where", [pick, z, one], e)], e)
                for c, pick in zip(h.choices, picks)]
        result = outs[-1]
        for pick, out in zip(picks[-2::-1], outs[-2::-1]):
            result = self.emit("where", [pick, out, result], e)
        return result

    def lower(self) -> CellIR:
        cell = self.cell
        self.check_name(cell.name, "cell")
        inputs, states, params = [], [], self.header()
        next_values: dict[str, Value] = {}
        output: A.Name | None = None
        for st in cell.body:
            try:
                output = self.statement(st, inputs, states, params, next_values, output)
            except RecursionError:
                # A last resort: the parser's pre-scan bounds the depth of expressions.
                raise CellSyntaxError("statement nested too deeply to compile", st.span) from None

        if len(inputs) != 1:
            span = inputs[1][1].span if inputs else cell.name.span
            raise CellNameError("a cell takes exactly one input, the sequence element", span)
        if not states:
            raise CellNameError("a cell needs at least one state", cell.name.span)
        for v, decl, _ in states:
            if v.name not in next_values:
                raise CellNameError(
                    f"state '{v.name}' has no next value; assign {v.name}' = ...", decl.name.span)
        if output is None:
            raise CellNameError("the cell has no 'output' statement", cell.name.span)
        for name, b in self.env.items():
            if b.kind in ("param", "bias", "const", "hyper", "input") and name not in self.used:
                what = _KIND_WORDS.get(b.kind, b.kind)
                self.warnings.append(CellWarning(f"{what} '{name}' is never used", b.span))
        for name, d in self.defs.items():
            if name not in self.used:
                self.warnings.append(CellWarning(f"function '{name}' is never used", d.name.span))

        state_vals = tuple(v for v, _, _ in states)
        results = tuple(next_values[v.name] for v in state_vals) + (self.env[output.id].value,)
        step_params = state_vals + (inputs[0][0],) + tuple(v for v, _ in params)
        step_params, body, row, parts = self.input_row(step_params, tuple(self.b.body))
        step = verify(Func(cell.name.id, step_params, body, results))
        specs = tuple(ParamSpec(v.name, kind, v.type, init, d.span, *choices)
                      for v, (d, kind, init, *choices) in params)
        return CellIR(
            cell.name.id,
            tuple(SizeSpec(s.arg.id, s.symbol.id, s.default is not None) for s in cell.sizes),
            inputs[0][0] if row is None else row, state_vals, specs, output.id, step,
            cell.span.source, tuple(self.warnings), inputs[0][1].span,
            tuple(init for _, _, init in states), parts, self.zero,
        )

    def statement(self, st: A.Statement, inputs, states, params, next_values, output):
        """Lower one statement; return the output name (the one `output` statement's)."""
        if isinstance(st, A.Decl):
            self.declare(st, inputs, states, params)
        elif isinstance(st, A.Def):
            self.define_function(st)
        elif isinstance(st, A.Assign):
            self.assign(st, next_values)
        else:
            if output is not None:
                raise CellNameError("a cell has one 'output' statement", st.span).note(
                    "first one", output.span)
            if len(st.names) != 1:
                raise CellNameError("a cell has exactly one output", st.names[1].span)
            output = st.names[0]
            v = self.lookup(output)
            if v.type.batch is not Batch.STEP or v.type.rank != 1:
                raise CellShapeError(f"an output must be a per-example vector, not {v.type}",
                                     output.span)
        return output

    def initializer(self, st: A.Decl) -> Init:
        """The `~` of a parameter or constant: a named initializer's call, or an expression."""
        if st.init is None:
            return Init("zeros", (), None)
        e = st.init
        fn = e.fn.id if isinstance(e, A.Call) else None
        known = initializers.INITIALIZERS.get(fn) if fn != "values" else None
        if known is None and fn is not None and fn not in (*NUMERIC_FUNCTIONS, "arange"):
            err = CellNameError(f"unknown initializer '{fn}'", e.fn.span)
            raise err.note("initializers: " + ", ".join(
                initializers.INITIALIZERS[n].usage for n in initializers.NAMED))
        if known is None:  # an expression of numbers, sizes and arange
            self.check_numeric(e, "an initializer expression", arange=True)
            fold_values(e)  # the parts without sizes; the rest is checked when bound
            return Init("values", (e,), e.span)
        if len(e.args) not in known.arity:
            raise CellShapeError(f"wrong number of arguments; use {known.usage}", e.span)
        for a in e.args:
            self.check_numeric(a)
            fold_number(a)  # the parts without sizes; the rest is checked when bound
        return Init(fn, e.args, e.span)

    def initial_state(self, st: A.Decl) -> A.Expr | None:
        """The `= EXPR` of a state: its value before the first step, as initializer
        arguments are written (numbers, sizes, + - * / ^, sqrt exp log)."""
        if st.value is None:
            return None
        self.check_numeric(st.value, "a state's initial value")
        fold_number(st.value)
        return st.value

    def declare(self, st: A.Decl, inputs, states, params):
        if st.init is not None and st.kind not in ("param", "bias", "const"):
            err = CellNameError(f"only parameters and constants have initializers (~), not"
                                f" {st.kind}s", st.init.span)
            if st.kind == "state":
                err.note("a state's initial value is written with '=', as in state m[H] = -1e30")
            raise err
        if st.value is not None and st.kind != "state":
            err = CellNameError(f"only states have an initial value (=), not {st.kind}s",
                                st.value.span)
            if st.kind in ("param", "bias", "const"):
                err.note("a parameter's initializer is written with '~', as in W[H] ~ ones()")
            raise err
        init, start = self.initializer(st), self.initial_state(st)
        for d in st.names:
            if d.name.id.endswith("'"):
                raise CellNameError("a primed name is a state's next value; declare it unprimed",
                                    d.name.span)
            dims = (Dim.of(1),) if d.dims is None else tuple(self.dim(x) for x in d.dims)
            absent = None  # the optional size, 0 here, that makes this declaration empty
            for x, dim in zip(d.dims or (), dims):
                c = dim.constant
                zero = self.zero & _size_names(x)
                if c == 0 and zero:
                    absent = next(iter(zero))
                    if st.kind in ("input", "state"):
                        raise CellShapeError(
                            f"{st.kind} '{d.name.id}' would have no features when {absent} is"
                            f" 0; size it as in {d.name.id}[{absent} or H]", x.span)
                elif c is not None and c <= 0:
                    raise CellShapeError(f"a size must be positive, not {dim}", x.span)
            if absent is not None:  # a parameter that exists only where its size is not 0
                self.define(d.name, _Binding(absent, d.span, "absent"))
                continue
            if st.kind == "input" and len(dims) != 1:
                raise CellShapeError(
                    f"an input is a vector: give one size, as in {d.name.id}[I]", d.span)
            if len(dims) > 3:
                raise CellShapeError(f"a {st.kind} has at most three dimensions", d.span)
            if init.fn == "orthogonal" and len(dims) != 2:
                raise CellShapeError("orthogonal() initializes matrices only", st.init.span)
            batch = Batch.STEP if st.kind in ("input", "state") else Batch.NONE
            if st.kind == "state" and len(dims) > 1:
                # A tensor-valued state travels between steps (and in and out of layers) as its
                # numbers in row-major order; the step reads it in its declared shape.
                v = Value(self.b.fresh(d.name.id), TensorType((product(dims),), batch))
                self.b.span = d.span
                shaped = self.b.op("reshape", v, shape=dims)
                self.define(d.name, _Binding(shaped, d.span, st.kind))
                states.append((v, d, start))
                continue
            v = Value(self.b.fresh(d.name.id), TensorType(dims, batch))
            self.define(d.name, _Binding(v, d.span, st.kind))
            if st.kind == "input":
                inputs.append((v, d))
                self.input = self.input or (v, d)
            elif st.kind == "state":
                states.append((v, d, start))
            elif init.fn == "values":
                self.check_broadcast(init, dims)
                params.append((v, (d, st.kind, replace(init, shape=dims))))
            else:
                params.append((v, (d, st.kind, init)))

    def check_broadcast(self, init: Init, dims: tuple[Dim, ...]):
        """What can be told before sizes are bound: a value without sizes against the
        parameter's dimensions that are numbers (the rest is checked when bound)."""
        value = fold_values(init.args[0])
        if value is None:
            return
        shape = np.shape(value)
        fits = len(shape) <= len(dims) and all(
            n == 1 or d.constant is None or d.constant == n
            for n, d in zip(reversed(shape), reversed(dims)))
        if not fits:
            raise CellShapeError(
                f"the initializer's value has shape {list(shape)}, which does not broadcast to"
                f" the parameter's shape [{', '.join(map(str, dims))}]", init.span)

    def assign(self, st: A.Assign, next_values: dict[str, Value]):
        value = st.value
        start = len(self.b.body)
        is_split = isinstance(value, A.Call) and value.fn.id == "split"
        if is_split and len(value.args) > 2:  # split(v, I, E, ...): parts of those sizes
            self.check_keywords(value)
            sizes = tuple(self.dim(a) for a in value.args[1:])
            if len(sizes) != len(st.targets):
                raise CellShapeError(
                    f"split into {len(sizes)} parts, but {len(st.targets)} name"
                    f"{'s are' if len(st.targets) != 1 else ' is'} assigned", st.span)
            x = self.expr(value.args[0])
            self.at(value)
            if x.type.rank == 0:
                raise CellShapeError("cannot split a scalar", value.args[0].span)
            try:
                outs = self.b.emit("split", [x], {"sizes": sizes})
            except ShapeMismatch as m:
                raise self.shape_error("split", [x], value, value.args[:1], str(m)) from None
        elif is_split:
            self.check_keywords(value)
            if (len(value.args) != 2 or not isinstance(value.args[1], A.Num)
                    or value.args[1].value != int(value.args[1].value)
                    or value.args[1].value < 1):
                raise CellShapeError("use split(x, N) with N a whole number of parts, or"
                                     " split(x, D1, D2, ...) with the parts' sizes", value.span)
            parts = int(value.args[1].value)
            if parts != len(st.targets):
                raise CellShapeError(
                    f"split into {parts} parts, but {len(st.targets)} name"
                    f"{'s are' if len(st.targets) != 1 else ' is'} assigned", st.span)
            x = self.expr(value.args[0])
            self.b.span = value.span
            if x.type.rank == 0:
                raise CellShapeError("cannot split a scalar", value.args[0].span)
            outs = self.b.emit("split", [x], {"parts": parts})
        else:
            if len(st.targets) != 1:
                raise CellShapeError(
                    f"{len(st.targets)} names are assigned but the right side is one value"
                    " (only split gives several)", st.span)
            outs = [self.expr(value)]
        for target, v in zip(st.targets, outs):
            name = target.id
            v = self._rename(v, name, start)
            if name.endswith("'"):
                base = self.env.get(name[:-1])
                if base is None:
                    raise CellNameError(
                        f"{name} names the next value of a state, but there is no state"
                        f" '{name[:-1]}'", target.span)
                if base.kind != "state":
                    what = {"value": "a computed value", "input": "an input",
                            "hyper": "a hyper-parameter", "const": "a constant"}.get(
                        base.kind, f"a {base.kind}")
                    how = "defined" if base.kind == "value" else "declared"
                    raise CellNameError(
                        f"{name} names the next value of a state, but '{name[:-1]}' is {what}",
                        target.span).note(how, base.span)
                if v.type != base.value.type:
                    err = CellShapeError(
                        f"the next value of state '{name[:-1]}' must be {base.value.type},"
                        f" not {v.type}",
                        st.value.span).note(f"'{name[:-1]}' is declared", base.span)
                    if v.type.rank > base.value.type.rank:
                        err.note("* + - / broadcast as NumPy's do (a matrix times a vector is a"
                                 " matrix); the matrix-vector product is W @ h")
                    raise err
                carried = v
                if v.type.rank > 1:  # a tensor-valued state: its numbers, row-major
                    self.b.span = st.value.span
                    carried = self.b.op("reshape", v, shape=(product(v.type.shape),))
                next_values[name[:-1]] = carried
            elif name in self.env and self.env[name].kind in (
                    "input", "state", "param", "bias", "const", "hyper"):
                kind = self.env[name].kind
                raise CellNameError(
                    f"cannot assign to {_KIND_WORDS.get(kind, kind)} '{name}'"
                    + (f"; its next value is {name}'" if kind == "state" else ""),
                    target.span).note("declared", self.env[name].span)
            self.define(target, _Binding(v, target.span, "value"))

    def _rename(self, v: Value, name: str, start: int) -> Value:
        """Give the value the user's name, if this statement's own instruction made it (an
        alias such as `a = b` keeps b's value). The value is the statement's last result, so
        nothing reads it yet."""
        body = self.b.body
        pos = next((k for k in range(len(body) - 1, start - 1, -1) if v in body[k].outs), None)
        if pos is None or name in self.b._taken:
            return v
        instr = body[pos]
        new = Value(self.b.fresh(name), v.type)
        body[pos] = replace(instr, outs=tuple(new if o is v else o for o in instr.outs))
        return new


def lower(cell: A.Cell, zero: frozenset | None = None) -> CellIR:
    """The CellIR of a parsed cell; `zero`: the optional sizes lowered as 0 (None: all)."""
    # Parameter names become attributes of the torch layer classes (both targets make them), so
    # the names those classes need are refused here, once for every target.
    ir = _Lowerer(cell, zero).lower()
    check_parameter_names(ir)
    return ir


def sequence_program(cell: CellIR) -> Func:
    """The whole-sequence forward: one scan over the step.

        func NAME(%x : [T*B,I], %h0 : [B,H], ..., params...) {
          %hT : [B,H], ..., %y : [T*B,H] = scan %h0, ..., %x, params... {n_carry=.., ...}
          return %hT, ..., %y
        }
    """
    step = cell.step
    n = len(cell.states)
    xs = Value("xs", cell.input.type.with_batch(Batch.SEQ))
    init = tuple(Value(f"{s.name}0", s.type) for s in cell.states)
    params = tuple(Value(p.name, p.type) for p in cell.params)
    types = scan_out_types(step, n, 1)
    outs = tuple(Value(name, t)
                 for name, t in zip([f"{s.name}_n" for s in cell.states] + ["ys"], types))
    attrs = {"step": step, "n_carry": n, "n_xs": 1, "n_ys": 1, "reverse": False,
             "out_types": tuple(types)}
    scan = Instr("scan", (*init, xs, *params), outs, attrs,
                 cell.step.body[-1].span if step.body else None)
    return verify(Func(cell.name, (xs, *init, *params), (scan,), outs))


def check_parameter_names(cell: CellIR) -> None:
    """Raise a located CellNameError for a parameter whose name the layer classes need."""
    sizes = {s.arg for s in cell.sizes}
    for p in cell.params:
        if p.name.startswith("_"):
            raise CellNameError(
                f"parameter '{p.name}': names starting with '_' are kept for the layer classes'"
                " own state; rename the parameter", p.span)
        if p.kind == "hyper" and p.name in LAYER_HYPER_ARGUMENTS:
            continue  # the layer keeps it as the attribute torch.nn's does
        if p.name in MODULE_ATTRIBUTES or p.name in LAYER_ATTRIBUTES or p.name in sizes:
            raise CellNameError(
                f"parameter '{p.name}' would hide the layer's attribute of that name"
                " (torch.nn.Module and the layer API use it); rename the parameter", p.span)
