"""The typed SSA IR: values, instructions, functions, and the time loop as one structured op.

Text form, one instruction per line (modelled on Autodidax's jaxprs):

    func NAME(%arg : TYPE, ...) {
      %out : TYPE = op %arg1, %arg2 {attr=value}      # file.cell:LINE
      %a : TYPE, %b : TYPE = split %t {parts=2}
      return %x, %y
    }

    TYPE := '[' (BATCH ',')? DIM (',' DIM)* ']'     BATCH := 'B' | 'T*B'     DIM := 4*H, H + I, ...

The time loop is one `scan` instruction. Its arguments are, in order, the initial carry, the
sequences sliced per step (`xs`) and loop-invariant values (`consts`); its outputs are the final
carry, the per-step outputs stacked over time (`ys`) and per-step outputs summed over time
(`accs`). Its `step` attribute is a `Func` with parameters (carry, x_t, consts) and results
(next carry, y_t, acc_t). `reverse=True` runs t = T-1 down to 0 (the backward pass).
Read and rebuild scans through `Scan` (`Scan.of(instr).xs`, `.rebuild(...)`), not its attributes.

Values are compared by identity, so a pass can rebuild a function while reusing the values it
does not touch. Every instruction keeps the source span it came from; backward instructions keep
the span of the forward instruction they differentiate, with `grad=True`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .ops import OPS
from .shapes import ONE, Batch, Dim, ShapeMismatch, TensorType
from .source import InternalError, Span


@dataclass(frozen=True, eq=False)
class Value:
    name: str
    type: TensorType

    def __repr__(self) -> str:
        return f"%{self.name}"


@dataclass(frozen=True, eq=False)
class Instr:
    op: str
    args: tuple[Value, ...]
    outs: tuple[Value, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    span: Span | None = None
    grad: bool = False  # part of a derivative: printed as "(grad)" after the span

    @property
    def out(self) -> Value:
        assert len(self.outs) == 1, self
        return self.outs[0]


@dataclass(frozen=True, eq=False)
class Func:
    name: str
    params: tuple[Value, ...]
    body: tuple[Instr, ...]
    results: tuple[Value, ...]

    def __str__(self) -> str:
        return print_func(self)


@dataclass(frozen=True, eq=False)
class Scan:
    """A typed view of one `scan` instruction: its arguments, outputs and step, by role.

        args          carry_init...   xs...         consts...
        step params   carry_params... x_params...   const_params...
        step results  next_carry...   y_results...  acc_results...
        outs          final_carry...  ys...         accs...

    The instruction itself keeps its counts as attributes (`n_carry`, `n_xs`, `n_ys`, `reverse`,
    `step`, `out_types`): the printer shows them and the op table's shape rule reads `out_types`.
    This view is the one place that reads those keys (`Scan.of`) and `rebuild`/`scan_attrs` the
    places that write them, so no consumer re-splits arguments and outputs by hand.
    """

    instr: Instr
    step: Func
    n_carry: int
    n_xs: int
    n_ys: int
    reverse: bool  # t = T-1 down to 0 (the backward pass)

    @classmethod
    def of(cls, instr: Instr) -> Scan:
        if instr.op != "scan":
            raise InternalError(f"Scan.of: %{instr.outs[0].name} is a {instr.op}, not a scan")
        a = instr.attrs
        return cls(instr, a["step"], a["n_carry"], a["n_xs"], a["n_ys"], a["reverse"])

    def split_args(self, args):
        """(carry, xs, consts) of a sequence laid out like the arguments or the step params."""
        c, x = self.n_carry, self.n_xs
        return args[:c], args[c : c + x], args[c + x :]

    def split_outs(self, outs):
        """(carry, ys, accs) of a sequence laid out like the outputs or the step results."""
        c, y = self.n_carry, self.n_ys
        return outs[:c], outs[c : c + y], outs[c + y :]

    # The instruction's arguments and outputs.
    @property
    def carry_init(self) -> tuple[Value, ...]: return self.split_args(self.instr.args)[0]
    @property
    def xs(self) -> tuple[Value, ...]: return self.split_args(self.instr.args)[1]
    @property
    def consts(self) -> tuple[Value, ...]: return self.split_args(self.instr.args)[2]
    @property
    def final_carry(self) -> tuple[Value, ...]: return self.split_outs(self.instr.outs)[0]
    @property
    def ys(self) -> tuple[Value, ...]: return self.split_outs(self.instr.outs)[1]
    @property
    def accs(self) -> tuple[Value, ...]: return self.split_outs(self.instr.outs)[2]

    # The step's parameters and results, in the same roles.
    @property
    def carry_params(self) -> tuple[Value, ...]: return self.split_args(self.step.params)[0]
    @property
    def x_params(self) -> tuple[Value, ...]: return self.split_args(self.step.params)[1]
    @property
    def const_params(self) -> tuple[Value, ...]: return self.split_args(self.step.params)[2]
    @property
    def next_carry(self) -> tuple[Value, ...]: return self.split_outs(self.step.results)[0]
    @property
    def y_results(self) -> tuple[Value, ...]: return self.split_outs(self.step.results)[1]
    @property
    def acc_results(self) -> tuple[Value, ...]: return self.split_outs(self.step.results)[2]

    def rebuild(self, step: Func, *, xs=None, consts=None, ys=None, accs=None) -> Instr:
        """The scan with a new step and, where given, new sequences/consts (arguments) or new
        stacked outputs/accumulators; the counts and output types follow. The carry stays."""
        xs = self.xs if xs is None else tuple(xs)
        consts = self.consts if consts is None else tuple(consts)
        ys = self.ys if ys is None else tuple(ys)
        accs = self.accs if accs is None else tuple(accs)
        # Updating the existing dict keeps the attribute order, and so the printed text.
        attrs = {**self.instr.attrs, "step": step, "n_xs": len(xs), "n_ys": len(ys),
                 "out_types": tuple(scan_out_types(step, self.n_carry, len(ys)))}
        return replace(self.instr, args=(*self.carry_init, *xs, *consts),
                       outs=(*self.final_carry, *ys, *accs), attrs=attrs)


# Older name, still used by the backends: the view has the same n_* fields and split methods.
ScanParts = Scan


def scan_parts(instr: Instr) -> Scan:
    return Scan.of(instr)


def scan_attrs(step: Func, n_carry: int, n_xs: int, n_ys: int, reverse: bool) -> dict[str, Any]:
    """The attributes of a new scan instruction, in the order the printer shows them."""
    return {"step": step, "n_carry": n_carry, "n_xs": n_xs, "n_ys": n_ys, "reverse": reverse,
            "out_types": tuple(scan_out_types(step, n_carry, n_ys))}


def scan_out_types(step: Func, n_carry: int, n_ys: int) -> list[TensorType]:
    """Output types of a scan: final carry, ys stacked over time (batch T*B), accs (no batch)."""
    res = [r.type for r in step.results]
    carry = res[:n_carry]
    ys = [t.with_batch(Batch.SEQ if t.batch is Batch.STEP else Batch.NONE)
          for t in res[n_carry : n_carry + n_ys]]
    accs = res[n_carry + n_ys :]
    assert all(t.batch is Batch.NONE for t in accs), "scan accumulators must be per-batch sums"
    return carry + ys + accs


class Builder:
    """Appends instructions, inferring output types from the op table.

    Used by lowering, by the VJP rules (which read as math: `b.mul(dy, b.sub(b.const(1), y))`)
    and by passes that rewrite functions.
    """

    def __init__(self, names: Iterable[str] = (), prefix: str = "t"):
        self.body: list[Instr] = []
        self.span: Span | None = None
        self.grad = False
        self.prefix = prefix
        self._taken = set(names)
        self._counter = itertools.count()

    def fresh(self, hint: str | None = None) -> str:
        if hint and hint not in self._taken:
            self._taken.add(hint)
            return hint
        base = hint or self.prefix
        while True:
            name = f"{base}{next(self._counter)}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def taken(self, name: str) -> bool:
        return name in self._taken

    def emit(self, op: str, args, attrs=None, name: str | None = None) -> list[Value]:
        attrs = dict(attrs or {})
        if OPS[op].kind == "elementwise":
            args = self.aligned(args)
        elif op == "matvec":
            args = self.aligned(args, lead=1)
        types = OPS[op].shape([a.type for a in args], attrs)  # may raise ShapeMismatch
        outs = tuple(Value(self.fresh(name if len(types) == 1 else None), t) for t in types)
        self.body.append(Instr(op, tuple(args), outs, attrs, self.span, self.grad))
        return list(outs)

    def aligned(self, args, lead: int = 0) -> list[Value]:
        """Per-example operands of an elementwise op, reshaped to one rank by leading size-1
        axes (NumPy's broadcasting on the features; the batch axis stays first). With lead=1
        (matvec: a matrix and a vector) the first operand keeps one axis more than the others."""
        args = list(args)
        extra = [lead] + [0] * (len(args) - 1) if lead else [0] * len(args)
        # Every operand counts: a parameter [NH, D, D] times a per-example [D] needs the latter
        # as [1, 1, D], or the batch axis would line up with NH.
        rank = max((a.type.rank - x for a, x in zip(args, extra)), default=0)
        for k, (a, x) in enumerate(zip(args, extra)):
            if a.type.batch is not Batch.NONE and a.type.rank - x < rank:
                shape = (ONE,) * (rank - a.type.rank + x) + a.type.shape
                args[k] = self.op("reshape", a, shape=shape)
        return args

    def op(self, op: str, *args: Value, name: str | None = None, **attrs) -> Value:
        (out,) = self.emit(op, args, attrs, name)
        return out

    def const(self, value: float | Dim, like: TensorType | None = None) -> Value:
        t = like if like is not None else TensorType((), Batch.NONE)
        return self.op("const", value=value, type=t)

    def scan(self, step: Func, carry_init, xs, consts, *, n_ys: int, reverse: bool) -> list[Value]:
        """A time loop over `step`; its outputs are (final carry, ys, accs)."""
        attrs = scan_attrs(step, len(carry_init), len(xs), n_ys, reverse)
        return self.emit("scan", (*carry_init, *xs, *consts), attrs)

    # Arithmetic that VJP rules use; each is one instruction.
    def add(self, a, b): return self.op("add", a, b)
    def sub(self, a, b): return self.op("sub", a, b)
    def mul(self, a, b): return self.op("mul", a, b)
    def div(self, a, b): return self.op("div", a, b)
    def neg(self, a): return self.op("neg", a)


# ---------------------------------------------------------------------------------------------
# Printing


def _attr_text(k: str, v: Any) -> str:
    if isinstance(v, float):
        return f"{k}={v!r}"
    if isinstance(v, (TensorType, Func)) or k == "out_types":
        return ""
    return f"{k}={v}"


def format_instr(instr: Instr, indent: str = "  ") -> list[str]:
    outs = ", ".join(f"%{v.name} : {v.type}" for v in instr.outs)
    args = ", ".join(f"%{a.name}" for a in instr.args)
    attrs = ", ".join(t for k, v in instr.attrs.items() if (t := _attr_text(k, v)))
    text = (f"{indent}{outs} = {instr.op}" + (f" {args}" if args else "")
            + (f" {{{attrs}}}" if attrs else ""))
    if instr.span is not None:
        text = f"{text:<64} # {instr.span.source.name.rsplit('/', 1)[-1]}:{instr.span.line}"
        if instr.grad:
            text += " (grad)"
    lines = [text.rstrip()]
    if instr.op == "scan":
        lines += [indent + "  " + line for line in print_func(Scan.of(instr).step).splitlines()]
    return lines


def print_func(f: Func) -> str:
    params = ", ".join(f"%{p.name} : {p.type}" for p in f.params)
    lines = [f"func {f.name}({params}) {{"]
    for instr in f.body:
        lines += format_instr(instr)
    lines.append("  return " + ", ".join(f"%{r.name}" for r in f.results))
    lines.append("}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Verification


def verify(f: Func) -> Func:
    """Check single assignment, definition before use, and re-run every shape rule.

    Raises InternalError: a failure here is a bug in a pass, never a user mistake.
    """
    defined: set[int] = set()
    names: set[str] = set()

    def define(v: Value):
        if id(v) in defined or v.name in names:
            raise InternalError(f"{f.name}: %{v.name} is assigned twice")
        defined.add(id(v))
        names.add(v.name)

    for p in f.params:
        define(p)
    for instr in f.body:
        if instr.op not in OPS:
            raise InternalError(f"{f.name}: unknown op '{instr.op}'")
        opdef = OPS[instr.op]
        if opdef.arity is not None and len(instr.args) != opdef.arity:
            raise InternalError(f"{f.name}: {instr.op} takes {opdef.arity} arguments")
        for a in instr.args:
            if id(a) not in defined:
                raise InternalError(
                    f"{f.name}: %{a.name} is used before it is defined ({instr.op})")
        if instr.op == "scan":
            _verify_scan(instr)
        try:
            types = opdef.shape([a.type for a in instr.args], instr.attrs)
        except (ShapeMismatch, AssertionError) as e:
            raise InternalError(f"{f.name}: {instr.op} fails its shape rule: {e}") from None
        if [o.type for o in instr.outs] != list(types):
            raise InternalError(
                f"{f.name}: {instr.op} declares {[str(o.type) for o in instr.outs]},"
                f" rule gives {[str(t) for t in types]}"
            )
        for o in instr.outs:
            define(o)
    for r in f.results:
        if id(r) not in defined:
            raise InternalError(f"{f.name}: returns undefined %{r.name}")
    return f


def _verify_scan(instr: Instr):
    scan = Scan.of(instr)
    step = scan.step
    verify(step)
    if len(step.params) != len(instr.args):
        raise InternalError("scan: step takes a different number of arguments")
    for a, p in zip(scan.carry_init, scan.carry_params):
        if a.type != p.type:
            raise InternalError(f"scan: carry %{a.name} is {a.type}, step expects {p.type}")
    for a, p in zip(scan.xs, scan.x_params):
        if a.type.batch is not Batch.SEQ or a.type.with_batch(Batch.STEP) != p.type:
            raise InternalError(f"scan: sequence %{a.name} is {a.type}, step expects {p.type}")
    for a, p in zip(scan.consts, scan.const_params):
        if a.type != p.type:
            raise InternalError(f"scan: const %{a.name} is {a.type}, step expects {p.type}")
    for p, r in zip(scan.carry_params, step.results):
        if p.type != r.type:
            raise InternalError(f"scan: carry {p.name} is {p.type} but step returns {r.type}")
    if list(instr.attrs["out_types"]) != scan_out_types(step, scan.n_carry, scan.n_ys):
        raise InternalError("scan: out_types do not match its step")


# ---------------------------------------------------------------------------------------------
# Helpers for passes


def uses(f: Func) -> dict[int, list[Instr]]:
    """For each value (by id), the instructions that read it."""
    out: dict[int, list[Instr]] = {}
    for instr in f.body:
        for a in instr.args:
            out.setdefault(id(a), []).append(instr)
    return out


def substitute(f: Func, mapping: Mapping[int, Value], body: Iterable[Instr] | None = None) -> Func:
    """Rebuild f with every use of a value in `mapping` (by id) replaced."""

    def m(v: Value) -> Value:
        while id(v) in mapping:
            v = mapping[id(v)]
        return v

    new_body = []
    for instr in f.body if body is None else body:
        args = tuple(m(a) for a in instr.args)
        new_body.append(instr if args == instr.args else replace(instr, args=args))
    return replace(f, body=tuple(new_body), results=tuple(m(r) for r in f.results))


def all_instrs(f: Func) -> Iterator[Instr]:
    """Every instruction, including those inside scan steps."""
    for instr in f.body:
        yield instr
        if instr.op == "scan":
            yield from all_instrs(Scan.of(instr).step)
