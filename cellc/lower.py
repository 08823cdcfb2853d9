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

from . import ast_nodes as A
from . import initializers
from .ir import Builder, Func, Instr, Value, scan_out_types, verify
from .names import LAYER_ATTRIBUTES, MAX_NAME_LENGTH, MODULE_ATTRIBUTES, why_unusable
from .ops import BINARY_FUNCTIONS, REDUCTIONS, UNARY_FUNCTIONS
from .shapes import Batch, Dim, ShapeMismatch, TensorType
from .source import (
    CellNameError,
    CellShapeError,
    CellSyntaxError,
    CellValueError,
    CellWarning,
    Source,
    Span,
)

NUMERIC_FUNCTIONS = {"sqrt": math.sqrt, "exp": math.exp, "log": math.log}


@dataclass(frozen=True)
class Init:
    """A parameter initializer, its arguments still expressions in the size symbols."""

    fn: str
    args: tuple[A.Expr, ...]
    span: Span | None

    def values(self, sizes: dict[str, int]) -> list[float]:
        return [eval_number(a, sizes) for a in self.args]

    def __str__(self) -> str:
        return f"{self.fn}({', '.join(A.format_expr(a) for a in self.args)})"


@dataclass(frozen=True)
class ParamSpec:
    name: str
    kind: str  # "param" or "bias" (a bias is left out, i.e. zero, when a layer has bias=False)
    type: TensorType
    init: Init
    span: Span


@dataclass(frozen=True)
class SizeSpec:
    arg: str  # constructor argument, e.g. hidden_size
    symbol: str  # size symbol, e.g. H


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

    @property
    def param_count_formula(self) -> Dim:
        total = Dim.of(0)
        for p in self.params:
            n = Dim.of(1)
            for d in p.type.shape:
                n = n * d
            total = total + n
        return total

    def bind(self, **args: int) -> dict[str, int]:
        """Map constructor arguments (input_size=..., hidden_size=...) to size symbols, checking
        that every declared shape comes out a positive whole number."""
        known = {s.arg for s in self.sizes}
        for k in args:
            if k not in known:
                raise TypeError(
                    f"{self.name}: unexpected size argument {k!r}; expects {sorted(known)}")
        sizes = {}
        for s in self.sizes:
            if s.arg not in args:
                raise TypeError(f"{self.name}: missing size argument {s.arg!r}")
            v = args[s.arg]
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(
                    f"{self.name}: {s.arg} must be an int, got {type(v).__name__} {v!r}")
            if v <= 0:
                raise ValueError(f"{self.name}: {s.arg} must be positive, got {v}")
            sizes[s.symbol] = v
        for v in (*self.step.params, *(i for ins in self.step.body for i in ins.outs)):
            for d in v.type.shape:
                n = d.evaluate(sizes)
                if n.denominator != 1 or n <= 0:
                    raise ValueError(
                        f"{self.name}: with {args}, '{v.name}' would have {d} = {n} features;"
                        " choose sizes that make it a positive whole number"
                    )
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


@dataclass
class _Binding:
    value: Value
    span: Span
    kind: str  # input state param bias value size


class _Lowerer:
    def __init__(self, cell: A.Cell):
        self.cell = cell
        self.b = Builder()
        self.env: dict[str, _Binding] = {}
        self.sizes: dict[str, A.Name] = {}
        self.used: set[str] = set()
        self.warnings: list[CellWarning] = []

    # -- names --------------------------------------------------------------------------------

    def define(self, name: A.Name, binding: _Binding):
        prev = self.env.get(name.id) or (
            _Binding(None, self.sizes[name.id].span, "size") if name.id in self.sizes else None
        )
        if prev is not None:
            what = ("size symbol" if prev.kind == "size"
                    else prev.kind if prev.kind != "value" else "name")
            raise CellNameError(f"'{name.id}' is already defined", name.span).note(
                f"previous definition of {what} '{name.id}'", prev.span
            )
        self.env[name.id] = binding

    def lookup(self, name: A.Name) -> Value:
        if name.id in self.env:
            self.used.add(name.id)
            return self.env[name.id].value
        if name.id in self.sizes:
            return self.b.const(Dim.of(name.id))
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
        if isinstance(e, A.Name) and e.id in self.env:
            return [(f"'{e.id}' is {v.type}, defined", self.env[e.id].span)]
        return []

    # -- shapes -------------------------------------------------------------------------------

    def dim(self, e: A.Expr) -> Dim:
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

    def check_numeric(self, e: A.Expr):
        """Initializer arguments: numbers, size symbols, + - * / ^ and sqrt/exp/log."""
        if isinstance(e, A.Num):
            return
        if isinstance(e, A.Name):
            if e.id not in self.sizes:
                raise CellNameError(
                    f"'{e.id}' is not a size symbol; initializer arguments may use only sizes and"
                    " numbers", e.span)
            return
        if isinstance(e, A.Neg):
            return self.check_numeric(e.operand)
        if isinstance(e, A.Call):
            if e.fn.id not in NUMERIC_FUNCTIONS or len(e.args) != 1:
                raise CellNameError(
                    f"'{e.fn.id}' cannot be used in an initializer argument (use sqrt, exp or log)",
                    e.fn.span)
            return self.check_numeric(e.args[0])
        if e.op == "matmul":
            raise CellShapeError("'@' cannot be used in an initializer argument", e.span)
        self.check_numeric(e.lhs)
        self.check_numeric(e.rhs)

    # -- expressions --------------------------------------------------------------------------

    def expr(self, e: A.Expr) -> Value:
        self.b.span = e.span
        if isinstance(e, A.Num):
            return self.b.const(e.value)
        if isinstance(e, A.Name):
            return self.lookup(e)
        if isinstance(e, A.Neg):
            if isinstance(e.operand, A.Num):
                self.b.span = e.span
                return self.b.const(-e.operand.value)
            x = self.expr(e.operand)
            return self.emit("neg", [x], e)
        if isinstance(e, A.BinOp):
            return self.binop(e)
        return self.call(e)

    def emit(self, op: str, args: list[Value], e: A.Expr, operands=(), **attrs) -> Value:
        self.b.span = e.span
        try:
            (out,) = self.b.emit(op, args, attrs)
        except ShapeMismatch as m:
            raise self.shape_error(op, args, e, operands, str(m)) from None
        return out

    def shape_error(self, op, args, e, operands, why) -> CellShapeError:
        verbs = {"add": "add", "sub": "subtract", "mul": "multiply", "div": "divide",
                 "min": "take the min of", "max": "take the max of"}
        if op in verbs:
            joiner = "by" if op in ("mul", "div") else "and"
            msg = f"cannot {verbs[op]} {args[0].type} {joiner} {args[1].type}: {why}"
        else:
            msg = why if op == "matmul" else f"{op}: {why}"
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
            if not isinstance(exponent, A.Num):
                raise CellShapeError("an exponent must be a number, as in x^2 or x^-0.5",
                                     e.rhs.span)
            base = self.expr(e.lhs)
            return self.emit("pow", [base], e, exponent=sign * exponent.value)
        lhs, rhs = self.expr(e.lhs), self.expr(e.rhs)
        return self.emit(e.op, [lhs, rhs], e, operands=(e.lhs, e.rhs))

    def call(self, e: A.Call) -> Value:
        fn = e.fn.id
        if fn == "split":
            raise CellShapeError(
                "split gives several values; assign them to names, as in a, b = split(x, 2)",
                e.span)
        arity = (1 if fn in UNARY_FUNCTIONS or fn in REDUCTIONS
                 else 2 if fn in BINARY_FUNCTIONS else None)
        if fn == "concat":
            if not e.args:
                raise CellShapeError("concat needs at least one argument", e.span)
            args = [self.expr(a) for a in e.args]
            return self.emit("concat", args, e, operands=e.args)
        if arity is None:
            known = sorted(UNARY_FUNCTIONS + BINARY_FUNCTIONS + REDUCTIONS + ("split", "concat"))
            err = CellNameError(f"unknown function '{fn}'", e.fn.span)
            close = difflib.get_close_matches(fn, known, n=1)
            err.note(f"did you mean '{close[0]}'?" if close else "functions: " + ", ".join(known))
            raise err
        if len(e.args) != arity:
            raise CellShapeError(
                f"{fn} takes {arity} argument{'s' if arity > 1 else ''}, not {len(e.args)}", e.span)
        args = [self.expr(a) for a in e.args]
        return self.emit(fn, args, e, operands=e.args)

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

    def lower(self) -> CellIR:
        cell = self.cell
        self.check_name(cell.name, "cell")
        for s in cell.sizes:
            self.check_name(s.arg, "size argument")
            self.check_name(s.symbol, "size symbol")
            if s.symbol.id in self.sizes:
                raise CellNameError(f"size symbol '{s.symbol.id}' is bound twice", s.symbol.span)
            args = [x.arg.id for x in cell.sizes]
            if args.count(s.arg.id) > 1:
                raise CellNameError(f"argument '{s.arg.id}' appears twice", s.arg.span)
            self.sizes[s.symbol.id] = s.symbol

        inputs, states, params = [], [], []
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
        for v, decl in states:
            if v.name not in next_values:
                raise CellNameError(
                    f"state '{v.name}' has no next value; assign {v.name}' = ...", decl.name.span)
        if output is None:
            raise CellNameError("the cell has no 'output' statement", cell.name.span)
        for name, b in self.env.items():
            if b.kind in ("param", "bias", "input") and name not in self.used:
                self.warnings.append(CellWarning(f"{b.kind} '{name}' is never used", b.span))

        state_vals = tuple(v for v, _ in states)
        results = tuple(next_values[v.name] for v in state_vals) + (self.env[output.id].value,)
        step_params = state_vals + (inputs[0][0],) + tuple(v for v, _ in params)
        step = verify(Func(cell.name.id, step_params, tuple(self.b.body), results))
        specs = tuple(ParamSpec(v.name, kind, v.type, init, d.span)
                      for v, (d, kind, init) in params)
        return CellIR(
            cell.name.id, tuple(SizeSpec(s.arg.id, s.symbol.id) for s in cell.sizes),
            inputs[0][0], state_vals, specs, output.id, step, cell.span.source,
            tuple(self.warnings), inputs[0][1].span,
        )

    def statement(self, st: A.Statement, inputs, states, params, next_values, output):
        """Lower one statement; return the output name (the one `output` statement's)."""
        if isinstance(st, A.Decl):
            self.declare(st, inputs, states, params)
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

    def declare(self, st: A.Decl, inputs, states, params):
        if st.init is not None and st.kind not in ("param", "bias"):
            raise CellNameError(f"only parameters have initializers, not {st.kind}s", st.init.span)
        init = Init("zeros", (), None)
        if st.init is not None:
            fn = st.init.fn.id
            known = initializers.INITIALIZERS.get(fn)
            if known is None:
                err = CellNameError(f"unknown initializer '{fn}'", st.init.fn.span)
                raise err.note("initializers: " + ", ".join(
                    i.usage for i in initializers.INITIALIZERS.values()))
            if len(st.init.args) not in known.arity:
                raise CellShapeError(f"wrong number of arguments; use {known.usage}",
                                     st.init.span)
            for a in st.init.args:
                self.check_numeric(a)
                fold_number(a)  # the parts without sizes; the rest is checked when bound
            init = Init(fn, st.init.args, st.init.span)
        for d in st.names:
            if d.name.id.endswith("'"):
                raise CellNameError("a primed name is a state's next value; declare it unprimed",
                                    d.name.span)
            dims = (Dim.of(1),) if d.dims is None else tuple(self.dim(x) for x in d.dims)
            for x, dim in zip(d.dims or (), dims):
                c = dim.constant
                if c is not None and c <= 0:
                    raise CellShapeError(f"a size must be positive, not {dim}", x.span)
            if st.kind in ("input", "state") and len(dims) != 1:
                raise CellShapeError(
                    f"an {st.kind} is a vector: give one size, as in {d.name.id}[H]", d.span)
            if len(dims) > 2:
                raise CellShapeError("a parameter has at most two dimensions", d.span)
            if init.fn == "orthogonal" and len(dims) != 2:
                raise CellShapeError("orthogonal() initializes matrices only", st.init.span)
            batch = Batch.STEP if st.kind in ("input", "state") else Batch.NONE
            v = Value(self.b.fresh(d.name.id), TensorType(dims, batch))
            self.define(d.name, _Binding(v, d.span, st.kind))
            if st.kind == "input":
                inputs.append((v, d))
            elif st.kind == "state":
                states.append((v, d))
            else:
                params.append((v, (d, st.kind, init)))

    def assign(self, st: A.Assign, next_values: dict[str, Value]):
        value = st.value
        start = len(self.b.body)
        is_split = isinstance(value, A.Call) and value.fn.id == "split"
        if is_split:
            if (len(value.args) != 2 or not isinstance(value.args[1], A.Num)
                    or value.args[1].value != int(value.args[1].value)
                    or value.args[1].value < 1):
                raise CellShapeError("use split(x, N) with N a whole number of parts", value.span)
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
                    what = {"value": "a computed value", "input": "an input"}.get(
                        base.kind, f"a {base.kind}")
                    how = "defined" if base.kind == "value" else "declared"
                    raise CellNameError(
                        f"{name} names the next value of a state, but '{name[:-1]}' is {what}",
                        target.span).note(how, base.span)
                if v.type != base.value.type:
                    raise CellShapeError(
                        f"the next value of state '{name[:-1]}' must be {base.value.type},"
                        f" not {v.type}",
                        st.value.span).note(f"'{name[:-1]}' is declared", base.span)
                next_values[name[:-1]] = v
            elif name in self.env and self.env[name].kind in ("input", "state", "param", "bias"):
                raise CellNameError(
                    f"cannot assign to {self.env[name].kind} '{name}'"
                    + (f"; its next value is {name}'" if self.env[name].kind == "state" else ""),
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


def lower(cell: A.Cell) -> CellIR:
    # Parameter names become attributes of the torch layer classes (both targets make them), so
    # the names those classes need are refused here, once for every target.
    ir = _Lowerer(cell).lower()
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
        if p.name in MODULE_ATTRIBUTES or p.name in LAYER_ATTRIBUTES or p.name in sizes:
            raise CellNameError(
                f"parameter '{p.name}' would hide the layer's attribute of that name"
                " (torch.nn.Module and the layer API use it); rename the parameter", p.span)
