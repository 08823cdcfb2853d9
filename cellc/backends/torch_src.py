"""IR -> readable PyTorch source: one table from op to Python expression, and one loop.

The emitted functions work on 2-D tensors: a whole sequence is (T*B, features) with rows ordered
(t, b), one step is (n, features) where n is the number of sequences still running at that step
(`batch_sizes[t]`, sorted longest first as in a PackedSequence). Rows past n keep their state and
get zero outputs. Every statement carries a comment with the `.cell` line it comes from.

Generated code is a boundary (STYLE.md). Text from the `.cell` file or its path reaches the
source in three ways only:
- as an identifier made by `identifier` / `Names`: ASCII letters, digits and '_' (a prime becomes
  `_next`), with a trailing underscore on keywords, builtins and the emitted code's own names;
- as `repr()` of a string (sizes, parameter and state names in SPEC);
- inside a comment, through `comment_text`: printable ASCII without the backslash, so no
  character can end the comment (a newline, \r, U+2028, NUL) and no escape exists for an
  encoding declaration to decode.
The first two lines of a module are fixed text: Python reads a PEP 263 encoding declaration
there, and under `coding=raw_unicode_escape` (or utf-7) harmless-looking comment text such as
`\u000a` (or `+AAo-`) would decode to a newline and run what follows it.
"""

from __future__ import annotations

import builtins
import hashlib
import keyword
import math
import re
from collections.abc import Callable

from ..ir import Func, Instr, Value, scan_parts
from ..runtime import pasteable_source
from ..shapes import Batch, Dim, TensorType
from ..source import InternalError
from .layer_spec import LayerSpec, SizeIf, layer_spec

# Names the emitted code uses itself; a .cell name equal to one of these is renamed.
RESERVED = {"torch", "math", "F", "S", "T", "B", "t", "n", "r", "dtype", "device", "batch_sizes",
            "xs", "ctx", "self", "grads", "outs", "saved", "stack_steps"}


def comment_text(text: str) -> str:
    """Untrusted text (a path, a .cell source line) as the body of a `#` comment: printable ASCII
    except the backslash; every other character becomes '?'."""
    return "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in text)


def identifier(name: str) -> str:
    """A name as an ASCII identifier: a prime becomes `_next`, any other character outside
    [A-Za-z0-9_] becomes '_', and a leading digit (or nothing) gets a '_' in front. The grammar
    admits only such names; this keeps the emitter safe without relying on it."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", name.replace("'", "_next"))
    return name if re.match(r"[A-Za-z_]", name) else "_" + name


class Names:
    """Python identifiers for IR values, unique within one emitted function."""

    def __init__(self):
        self.of: dict[int, str] = {}
        self.taken = set(RESERVED)

    def __call__(self, v: Value) -> str:
        if id(v) not in self.of:
            base = identifier(v.name)
            if keyword.iskeyword(base) or hasattr(builtins, base) or base.startswith("__"):
                base += "_"
            name = base
            while name in self.taken:
                name += "_"
            self.taken.add(name)
            self.of[id(v)] = name
        return self.of[id(v)]

    def fresh(self, base: str) -> str:
        name = base
        k = 0
        while name in self.taken:
            k += 1
            name = f"{base}{k}"
        self.taken.add(name)
        return name


def size_expr(d: Dim, exact: bool = False) -> str:
    """Python for a symbolic size, reading symbols from the dict S. Sizes are checked to be
    whole when a layer is built; `exact` keeps true division so that check can see a fraction.
    A size of a cell's two forms (layer_spec.SizeIf) is a conditional expression."""
    if isinstance(d, SizeIf):
        return (f"({size_expr(d.nonzero, exact)} if S[{d.symbol!r}] else"
                f" {size_expr(d.zero, exact)})")
    terms = []
    for m, c in d.terms:
        factors = [f"S[{s!r}]" for s in m]
        text = " * ".join(([str(abs(c.numerator))] if abs(c.numerator) != 1 or not factors else [])
                          + factors)
        if c.denominator != 1:
            text = f"{text} {'/' if exact else '//'} {c.denominator}"
        terms.append(("- " if c < 0 else "+ ") + text)
    text = " ".join(terms).removeprefix("+ ") if terms else "0"
    return text if len(terms) <= 1 else f"({text})"


def shape_expr(t: TensorType, rows: str) -> str:
    dims = ([rows] if t.batch is not Batch.NONE else []) + [size_expr(d) for d in t.shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def _float(x: float) -> str:
    """A number as Python. repr() of a non-finite float is `inf` or `nan`, which would read a
    variable of that name (a .cell value may be called `inf`)."""
    x = float(x)
    return repr(x) if math.isfinite(x) else f"float({repr(x)!r})"


Emit = Callable[[list[str], Instr], str]


def _unary(fmt: str) -> Emit:
    return lambda a, i: fmt.format(*a)


def _feature_dim(t: TensorType) -> int:
    return -t.rank


def _minmax(fn: str) -> Emit:
    """torch.minimum/maximum take two tensors; a scalar operand (a Python float in the generated
    code, or a rank-0 parameter) is made a tensor of the function's dtype and device first."""
    def emit(a, i):
        x, y = (f"torch.as_tensor({s}, dtype=dtype, device=device)" if _is_scalar(v) else s
                for s, v in zip(a, i.args, strict=True))
        return f"torch.{fn}({x}, {y})"

    return emit


def _is_scalar(v: Value) -> bool:
    return v.type.rank == 0 and v.type.batch is Batch.NONE


def _outer(a, i):
    x, y = a
    return f"{x}.T @ {y}" if i.args[0].type.batch is not Batch.NONE else f"torch.outer({x}, {y})"


def _broadcast(a, i):
    n = size_expr(i.attrs["size"])
    return f"{a[0]}.expand({a[0]}.shape[:-1] + ({n},))"


def _split(a, i):
    sizes = ", ".join(size_expr(o.type.shape[0]) for o in i.outs)
    return f"torch.split({a[0]}, [{sizes}], dim={_feature_dim(i.args[0].type)})"



def _reshape(a, i):
    t = i.args[0].type
    dims = [f"{a[0]}.shape[0]"] * t.batch_axes + [size_expr(d) for d in i.attrs["shape"]]
    return f"{a[0]}.reshape({', '.join(dims)})"


def _sum_axis(a, i):
    return f"{a[0]}.sum({i.args[0].type.batch_axes + i.attrs['axis']}, keepdim=True)"


def _max_axis(a, i):
    return f"{a[0]}.amax({i.args[0].type.batch_axes + i.attrs['axis']}, keepdim=True)"


def _expand(a, i):
    t = i.args[0].type
    dims = ["-1"] * (t.batch_axes + t.rank)
    dims[t.batch_axes + i.attrs["axis"]] = size_expr(i.attrs["size"])
    return f"{a[0]}.expand({', '.join(dims)})"


def _concat(a, i):
    return f"torch.cat([{', '.join(a)}], dim={_feature_dim(i.args[0].type)})"


def _pow(a, i):
    p = i.attrs["exponent"]
    return f"torch.square({a[0]})" if p == 2.0 else f"{a[0]} ** {_float(p)}"


def _as_tensor(s: str) -> str:
    return f"torch.as_tensor({s}, dtype=dtype, device=device)"


def _tensors(fmt: str) -> Emit:
    """`fmt` over the operands; when every operand is a scalar (a Python float in the generated
    code), the first is made a tensor of the function's dtype and device, so the result is
    one (torch.pow, a comparison's .to(), the functional activations need a tensor)."""
    def emit(a, i):
        if all(_is_scalar(v) for v in i.args):
            a = [_as_tensor(a[0]), *a[1:]]
        return fmt.format(*a)

    return emit


def _where(a, i):
    """torch.where needs a tensor condition, and takes scalar branches (of the other branch's
    dtype): two scalar branches would give torch's default dtype, so one becomes a tensor."""
    c, x, y = a
    if _is_scalar(i.args[0]):
        c = _as_tensor(c)
    if _is_scalar(i.args[1]) and _is_scalar(i.args[2]):
        x = _as_tensor(x)
    return f"torch.where({c} != 0, {x}, {y})"


TORCH: dict[str, Emit] = {
    "neg": _unary("-{0}"),
    "sigmoid": _tensors("torch.sigmoid({0})"),
    "tanh": _tensors("torch.tanh({0})"),
    "relu": _tensors("torch.relu({0})"),
    "exp": _tensors("torch.exp({0})"),
    "log": _tensors("torch.log({0})"),
    "softplus": _tensors("torch.logaddexp({0}, torch.zeros_like({0}))"),
    "sqrt": _tensors("torch.sqrt({0})"),
    "abs": _tensors("torch.abs({0})"),
    "heaviside": _unary("({0} > 0).to(dtype)"),
    "sign": _tensors("torch.sign({0})"),
    "pow": _pow,
    "add": _unary("{0} + {1}"),
    "sub": _unary("{0} - {1}"),
    "mul": _unary("{0} * {1}"),
    "div": _unary("{0} / {1}"),
    "min": _minmax("minimum"),
    "max": _minmax("maximum"),
    "ge": _unary("({0} >= {1}).to(dtype)"),
    "lt": _tensors("({0} < {1}).to(dtype)"),
    "le": _tensors("({0} <= {1}).to(dtype)"),
    "gt": _tensors("({0} > {1}).to(dtype)"),
    "eq": _tensors("({0} == {1}).to(dtype)"),
    "ne": _tensors("({0} != {1}).to(dtype)"),
    "where": _where,
    "power": _tensors("torch.pow({0}, {1})"),
    "elu": _tensors("torch.nn.functional.elu({0})"),
    "silu": _tensors("torch.nn.functional.silu({0})"),
    "gelu": _tensors("torch.nn.functional.gelu({0})"),
    "erf": _tensors("torch.erf({0})"),
    "logsigmoid": _tensors("torch.nn.functional.logsigmoid({0})"),
    # The identity that autograd does not see through (SYMBOLIC_BACKWARD = False, and the
    # differentiable twin that double backward runs).
    "stop_gradient": _tensors("{0}.detach()"),
    "matmul": _unary("{1} @ {0}.T"),
    "matmul_t": _unary("{1} @ {0}"),
    "outer": _outer,
    "sum": _unary("{0}.sum(-1, keepdim=True)"),
    "mean": _unary("{0}.mean(-1, keepdim=True)"),
    "broadcast": _broadcast,
    "sum_batch": _unary("{0}.sum(0)"),
    "split": _split,
    "concat": _concat,
    "reshape": _reshape,
    "sum_axis": _sum_axis,
    "max_axis": _max_axis,
    "expand": _expand,
    "transpose": _unary("{0}.transpose(-1, -2)"),
    "matvec": _unary("({0} @ {1}.unsqueeze(-1)).squeeze(-1)"),
    # "const" and "scan" are statements, written by the emitter below.
}


class FunctionEmitter:
    """Writes one IR function (with its loops) as a Python function over 2-D tensors."""

    def __init__(self, source_lines: list[str]):
        self.source_lines = source_lines
        self.names = Names()
        self.lines: list[str] = []

    def comment(self, instr: Instr) -> str:
        if instr.span is None:
            return ""
        text = (self.source_lines[instr.span.line - 1].strip()
                if instr.span.line <= len(self.source_lines) else "")
        return f"  # {instr.span.line}: {comment_text(text)}" + (" (grad)" if instr.grad else "")

    def emit_function(self, f: Func, py_name: str, doc: str) -> str:
        params = [self.names(p) for p in f.params]
        out = [f"def {py_name}(S, T, B, batch_sizes, {', '.join(params)}):", f'    """{doc}"""']
        out.append("    dtype, device = {0}.dtype, {0}.device".format(params[0]))
        self.lines = []
        self.body(f.body, indent="    ", rows="B", seq_rows="T * B")
        out += self.lines
        out.append(f"    return ({', '.join(self.names(r) for r in f.results)},)")
        return "\n".join(out)

    def body(self, instrs, indent: str, rows: str, seq_rows: str):
        for instr in instrs:
            if instr.op == "scan":
                self.scan(instr, indent)
                continue
            outs = ", ".join(self.names(o) for o in instr.outs)
            if instr.op == "const":
                expr = self.const(instr, rows, seq_rows)
            else:
                emit = TORCH.get(instr.op)
                if emit is None:
                    raise InternalError(f"torch backend: no rule for op '{instr.op}'")
                expr = emit([self.ref(a) for a in instr.args], instr)
            if len(instr.outs) > 1:
                outs += ","
            self.lines.append(f"{indent}{outs} = {expr}{self.comment(instr)}")

    def ref(self, v: Value) -> str:
        return self.names(v)

    def const(self, instr: Instr, rows: str, seq_rows: str) -> str:
        value = instr.attrs["value"]
        t: TensorType = instr.attrs["type"]
        v = f"float({size_expr(value)})" if isinstance(value, Dim) else _float(value)
        if t.rank == 0 and t.batch is Batch.NONE:
            return v
        shape = shape_expr(t, seq_rows if t.batch is Batch.SEQ else rows)
        return f"torch.full({shape}, {v}, dtype=dtype, device=device)"

    def scan(self, instr: Instr, indent: str):
        """The time loop. Carries live in full-batch tensors; step t works on the first n rows."""
        step: Func = instr.attrs["step"]
        parts = scan_parts(instr)
        carry_a, xs_a, const_a = parts.split_args(instr.args)
        carry_p, xs_p, const_p = parts.split_args(step.params)
        res = step.results
        nc, ny = parts.n_carry, parts.n_ys
        carry_outs, ys_outs, acc_outs = parts.split_outs(instr.outs)
        i2 = indent + "    "
        reverse = instr.attrs["reverse"]
        what = "backward through time" if reverse else "the time loop"
        self.lines.append(f"{indent}# {what}: step t reads rows t*B .. t*B+n of each sequence")
        for a, o in zip(carry_a, carry_outs):
            self.lines.append(f"{indent}{self.names(o)} = {self.ref(a)}")
        for p, a in zip(const_p, const_a):
            self.names.of[id(p)] = self.ref(a)
        ys_lists = [self.names.fresh(self.names(o) + "_steps") for o in ys_outs]
        for lst in ys_lists:
            self.lines.append(f"{indent}{lst} = [None] * T")
        for o in acc_outs:
            self.lines.append(f"{indent}{self.names(o)} = 0.0")
        order = "range(T - 1, -1, -1)" if reverse else "range(T)"
        self.lines.append(f"{indent}for t in {order}:")
        self.lines.append(f"{i2}n = batch_sizes[t]")
        self.lines.append(f"{i2}r = t * B")
        for p, o in zip(carry_p, carry_outs):
            self.lines.append(f"{i2}{self.names(p)} = {self.names(o)}[:n]")
        for p, a in zip(xs_p, xs_a):
            self.lines.append(f"{i2}{self.names(p)} = {self.ref(a)}[r : r + n]")
        self.body(step.body, i2, rows="n", seq_rows="T * B")
        for lst, y in zip(ys_lists, res[nc : nc + ny]):
            self.lines.append(f"{i2}{lst}[t] = {self.ref(y)}")
        for o, acc in zip(acc_outs, res[nc + ny :]):
            self.lines.append(f"{i2}{self.names(o)} = {self.names(o)} + {self.ref(acc)}")
        for o, new in zip(carry_outs, res[:nc]):
            c = self.names(o)
            self.lines.append(f"{i2}{c} = {self.ref(new)} if n == B"
                              f" else torch.cat([{self.ref(new)}, {c}[n:]])")
        for lst, o in zip(ys_lists, ys_outs):
            self.lines.append(f"{indent}{self.names(o)} = stack_steps({lst}, B)")


HELPERS = '''
def stack_steps(steps, B):
    """Per-step (n, k) blocks -> one (T*B, k) tensor, rows past n zero."""
    full = [y if y.shape[0] == B else torch.cat([y, y.new_zeros((B - y.shape[0],) + y.shape[1:])])
            for y in steps]
    return torch.cat(full) if full else None
'''


def emit_functions(fwd: Func, bwd: Func, source_lines: list[str], prefix: str) -> str:
    """Python source of `{prefix}_forward` and `{prefix}_backward`."""
    f = FunctionEmitter(source_lines).emit_function(
        fwd, f"{prefix}_forward",
        "The whole-sequence forward; returns final states, outputs, then residuals.")
    b = FunctionEmitter(source_lines).emit_function(
        bwd, f"{prefix}_backward",
        "The symbolic backward: (residuals, d final states, d outputs) -> d inputs.")
    return HELPERS.strip() + "\n\n\n" + f + "\n\n\n" + b


def shapes_source(fwd: Func, bwd: Func, name: str = "result_shapes") -> str:
    """`result_shapes(S, T, B)` (or `name`): the shapes of the forward's and the backward's
    results, from their IR types (T * B rows for a sequence, B for a state; a Python float
    result is made a 0-d tensor by the ops, and its type has shape ())."""

    def shapes(f: Func) -> str:
        rows = [shape_expr(r.type, "T * B" if r.type.batch is Batch.SEQ else "B")
                for r in f.results]
        return "[\n" + "".join(f"        {r},\n" for r in rows) + "    ]"

    return "\n".join([
        f"def {name}(S, T, B):",
        '    """The shapes of the forward\'s results and of the backward\'s: the custom ops\' fake',
        "    implementations, from which tracing learns them without running the loop.\"\"\"",
        f"    return ({shapes(fwd)}, {shapes(bwd)})",
    ])


# The ops' namespace; an op's name is the lower-case cell name (a checked identifier) and a hash.
OP_NAMESPACE = "cellc_gen"
# Stand-ins while the module text is hashed: NUL is in no emitted text (comments are printable
# ASCII, strings are repr()s), so each stand-in occurs exactly where it was put.
_SOURCE_MARK, _OP_MARK = "\0source\0", "\0op\0"


def op_name(lower: str, text: str) -> str:
    """The ops' qualified name for a module `text` written with _OP_MARK and _SOURCE_MARK: the
    same for the same cell compiled from any path (an exported program names it, and must find
    it again when the module is loaded in another process), different for different text."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"{OP_NAMESPACE}::{lower}_{digest}"


# ---------------------------------------------------------------------------------------------
# The standalone module: layer machinery + generated kernels + autograd.Function + spec


def number_expr(e) -> str:
    """Python for an initializer argument or a state's initial value (already checked by
    lowering: numbers, size symbols, + - * / ^ and sqrt/exp/log only), or for an initializer
    expression, which may also call arange: a part that does (an array) is torch code in
    float64, torch.arange(...) and torch.sqrt/exp/log, the other parts stay Python numbers."""
    from .. import ast_nodes as A

    if isinstance(e, A.Num):
        return _float(e.value)
    if isinstance(e, A.Name):
        return f"S[{e.id!r}]"
    if isinstance(e, A.Neg):
        return f"-({number_expr(e.operand)})"
    if isinstance(e, A.Call) and e.fn.id == "arange":
        args = ", ".join(number_expr(a) for a in e.args)
        return f"torch.arange({args}, dtype=torch.float64)"
    if isinstance(e, A.Call):
        fn = _NUMBER_FUNCTIONS[e.fn.id]  # KeyError: lowering let through a call it should not
        return f"{'torch' if _reads_arange(e) else 'math'}.{fn}({number_expr(e.args[0])})"
    sym = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**"}[e.op]
    return f"({number_expr(e.lhs)} {sym} {number_expr(e.rhs)})"


# The functions an initializer expression calls, as math.* and torch.* name them: from this
# table, never from the .cell text.
_NUMBER_FUNCTIONS = {"sqrt": "sqrt", "exp": "exp", "log": "log"}


def _reads_arange(e) -> bool:
    """Whether e's value is an array (it calls arange somewhere)."""
    from .. import ast_nodes as A

    if isinstance(e, A.Call):
        return e.fn.id == "arange" or any(_reads_arange(a) for a in e.args)
    if isinstance(e, A.Neg):
        return _reads_arange(e.operand)
    if isinstance(e, A.BinOp):
        return _reads_arange(e.lhs) or _reads_arange(e.rhs)
    return False


def spec_source(spec: LayerSpec) -> str:
    """The layer spec as Python source: the dict LayerSpec.runtime() gives, with its size
    functions as lambdas over the sizes dict S. Text from the .cell file enters only as repr()
    of a string (names) or through size_expr / number_expr (S[repr(symbol)], numbers, math.*,
    torch.* from fixed tables). A "values" initializer's argument is a float64 tensor (or a
    number), which the layer broadcasts to the parameter's shape when it fills it."""

    def dims(shape):
        return ("(" + ", ".join(size_expr(d, exact=True) for d in shape)
                + ("," if len(shape) == 1 else "") + ")")

    def values(exprs):
        texts = ["0.0" if e is None else number_expr(e) for e in exprs]
        return "(" + ", ".join(texts) + ("," if len(texts) == 1 else "") + ")"

    lines = [
        "SPEC = {",
        f"    \"name\": {spec.name!r},",
        f"    \"sizes\": {list(spec.sizes)!r},",
        f"    \"input_size\": {spec.input_size!r},",
        f"    \"states\": {list(spec.states)!r},",
        f"    \"state_sizes\": lambda S: {dims(spec.state_sizes)},",
        f"    \"state_init\": lambda S: {values(spec.state_init)},",
        f"    \"output_size\": lambda S: {size_expr(spec.output_size, exact=True)},",
        "    \"params\": [",
    ]
    for p in spec.params:
        default = f" \"default\": {_float(p.default)}," if p.kind == "hyper" else ""
        if p.choices:  # built-in function names, checked by lowering
            default = f" \"default\": {p.choices[0]!r}, \"choices\": {list(p.choices)!r},"
        if p.absent_when_zero is not None:  # a size symbol: a checked identifier
            default += f" \"absent_when_zero\": {p.absent_when_zero!r},"
        lines.append(
            f"        {{\"name\": {p.name!r}, \"kind\": {p.kind!r},{default}"
            f" \"shape\": lambda S: {dims(p.shape)}, \"init\": {p.init!r},"
            f" \"init_args\": lambda S: {values(p.init_args) if p.init_args else '()'}}},")
    lines.append("    ],")
    if spec.optional_sizes:  # size arguments: checked identifiers
        lines.append(f"    \"optional_sizes\": {list(spec.optional_sizes)!r},")
    if spec.step_sizes:  # value names: checked identifiers, as repr()
        lines.append("    \"step_sizes\": [")
        lines += [f"        ({name!r}, lambda S: {size_expr(d, exact=True)}),"
                  for name, d in spec.step_sizes]
        lines.append("    ],")
    if spec.input_parts:  # the step's input row (cellc/inputs.py): names are checked values'
        lines.append("    \"input_parts\": [")
        for part in spec.input_parts:
            rate = repr(part.rate) if isinstance(part.rate, str) or part.rate is None else (
                _float(part.rate))
            lines.append(f"        {{\"kind\": {part.kind!r}, \"name\": {part.name!r},"
                         f" \"rate\": {rate}, \"per\": {part.per!r},"
                         f" \"size\": lambda S: {size_expr(part.size, exact=True)}}},")
        lines.append("    ],")
    lines.append("}")
    return "\n".join(lines)


def emit_module(cell, prog, source_name: str, version: str) -> str:
    """The whole generated file for a compiled cell."""
    from ..names import why_unusable
    from ..source import CellNameError
    name = cell.name
    source_name = comment_text(source_name)  # written in comments only, never on lines 1-2
    # The cell name is written unmangled (it names the classes). lower() refuses the names the
    # generated code uses (cellc/names.py, the one list); this guards other callers of emit.
    if identifier(name) != name or why_unusable(name, "cell") is not None:
        raise CellNameError(
            f"the cell name '{name}' cannot name a Python class here; rename the cell",
            None, cell.source.name)
    text = module_text(cell, prog, _SOURCE_MARK, version)
    if text.count(_OP_MARK) != 1:
        raise InternalError("torch backend: the ops' name must be written exactly once")
    return (text.replace(_OP_MARK, repr(op_name(name.lower(), text)))
            .replace(_SOURCE_MARK, source_name))


def _masked_program(cell):
    """The compiled program of the cell's masked form (cellc/masking.py)."""
    from ..masking import masked
    from ..pipeline import compile_program  # lazily: backends take programs as arguments

    return compile_program(masked(cell))


def _other_form(cell, lines, lower) -> tuple[str, str]:
    """For a cell with an optional size (cellc/variants.py): the kernels of its form with that
    size not 0 (named `{lower}_{argument}_forward`, ...: prefixed by the cell's name, so the
    class the module binds last cannot take one), and the lines of `kernels` that pick them;
    ("", "") for any other cell. The module's default kernels are the 0 form's."""
    from ..pipeline import compile_program
    from ..variants import form, optional_sizes

    if not optional_sizes(cell):
        return "", ""
    (sym,) = optional_sizes(cell)
    arg = next(s.arg for s in cell.sizes if s.symbol == sym)  # checked identifiers
    other = form(cell, frozenset())
    oprog, omprog = compile_program(other), _masked_program(other)
    name = f"{lower}_{arg}"
    plain = emit_functions(oprog.fwd, oprog.bwd, lines, name)
    masked = emit_functions(omprog.fwd, omprog.bwd, lines, name + "_masked")
    strip = HELPERS.strip()
    text = f"""

# The cell's form with {arg} not 0 (its {sym}-sized declarations present, `A if {sym} else B`
# taking A): kernels(masked, S) picks it when S[{sym!r}] is not 0.

{plain.removeprefix(strip).lstrip()}


{masked.removeprefix(strip).lstrip()}


{shapes_source(oprog.fwd, oprog.bwd, f"{name}_result_shapes")}


{shapes_source(omprog.fwd, omprog.bwd, f"{name}_masked_result_shapes")}
"""
    pick = f"""
    if S is not None and S.get({sym!r}):  # {arg} not 0: the other form's kernels
        if masked:
            return ({name}_masked_forward, {name}_masked_backward, {omprog.n_results},
                    {name}_masked_result_shapes)
        return {name}_forward, {name}_backward, {oprog.n_results}, {name}_result_shapes"""
    return text, pick


def module_text(cell, prog, source_name: str, version: str) -> str:
    """The generated file, with _OP_MARK where the ops' name literal goes (see emit_module)."""
    name = cell.name
    lower = name.lower()
    n_results = prog.n_results
    lines = cell.source.text.split("\n")
    kernels = emit_functions(prog.fwd, prog.bwd, lines, lower)
    mprog = _masked_program(cell)
    masked_kernels = emit_functions(mprog.fwd, mprog.bwd, lines, lower + "_masked")
    masked_kernels = masked_kernels.removeprefix(HELPERS.strip()).lstrip()  # stack_steps: once
    other_form, pick = _other_form(cell, lines, lower)
    state_names = [identifier(s.name) for s in cell.states]  # in the docstring
    states = ", ".join(state_names)
    hx_doc = "h_n" if len(state_names) == 1 else f"({', '.join(s + '_n' for s in state_names)})"
    # Lines 1 and 2 are fixed text (PEP 263 reads them); the file name follows on line 3.
    return f'''# Generated by cellc {version}. Edit the .cell file and recompile, not this file.
# A standalone PyTorch module: it needs only torch and the Python standard library.
# Compiled from: {source_name}
"""{name}: a recurrent layer generated by cellc from the .cell file named above.

Drop-in for torch.nn.LSTM / GRU / RNN:

    from this_module import {name}, {name}Cell
    layer = {name}(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                   dropout=0.0, bidirectional=False)
    output, {hx_doc} = layer(input, hx)

States: {states}. Each layer runs its whole time loop inside one torch.autograd.Function
({name}Sequence) whose backward is the symbolic backward cellc derived (see `{lower}_backward`),
not torch's autograd of the loop. Set SYMBOLIC_BACKWARD = False in this module to differentiate
the forward loop with torch.autograd instead, for comparison (eager mode only).

torch.compile (fullgraph=True too, any backend) and torch.export see each layer direction as one
call of the custom op OP_NAME, whose autograd formula is the same symbolic backward (another
custom op): the graph holds the loop as one opaque op whatever the sequence length, so compile
time does not grow with it. An exported program names the op: load this module before
torch.export.load-ing it in another process.
"""

import functools
import math

import torch

SYMBOLIC_BACKWARD = True


# --------------------------------------------------------------------------------------------
# Layer machinery: stacking, directions, packing, argument checks (cellc/runtime/torch_layers.py)

{pasteable_source('torch_layers')}


# --------------------------------------------------------------------------------------------
# {name}: forward over a whole sequence and its symbolic backward (from {source_name})

{kernels}


N_RESULTS = {n_results}  # {lower}_forward returns the final states and the outputs, then residuals


# The cell masked with Keras semantics (cellc/masking.py), run only when a layer is given a mask:
# its input has the mask as one more feature, its last state is the previous output.

{masked_kernels}


{shapes_source(prog.fwd, prog.bwd)}


{shapes_source(mprog.fwd, mprog.bwd, "masked_result_shapes")}
{other_form}

def kernels(masked, S=None):
    """(forward, backward, number of results before the residuals, result shapes) of the cell,
    or of its masked form; looked up when called, so a test may replace a kernel."""{pick}
    if masked:
        return ({lower}_masked_forward, {lower}_masked_backward, {mprog.n_results},
                masked_result_shapes)
    return {lower}_forward, {lower}_backward, N_RESULTS, result_shapes


def {lower}_sequence(S, batch_sizes, xs, *states_and_params, masked=False):
    """One direction over a whole sequence as plain differentiable torch: (ys, *final states)."""
    forward, _, n_results, _ = kernels(masked, S)
    T, B = xs.shape[0], xs.shape[1]
    outs = forward(S, T, B, batch_sizes, xs.reshape(T * B, xs.shape[2]), *states_and_params)
    *final, ys = outs[:n_results]
    return (ys.reshape(T, B, ys.shape[1]), *final)


class {name}Sequence(torch.autograd.Function):
    """One direction of one layer over a whole sequence, with the generated backward. When
    autograd records the backward itself (create_graph=True), the backward differentiates
    {lower}_sequence instead, so second derivatives are right."""

    @staticmethod
    def forward(ctx, S, batch_sizes, masked, xs, *states_and_params):
        forward, _, n_results, _ = kernels(masked, S)
        T, B = xs.shape[0], xs.shape[1]
        outs = forward(S, T, B, batch_sizes, xs.reshape(T * B, xs.shape[2]), *states_and_params)
        results, residuals = outs[:n_results], outs[n_results:]
        ctx.S, ctx.T, ctx.B, ctx.batch_sizes, ctx.masked = S, T, B, batch_sizes, masked
        ctx.is_tensor = [isinstance(r, torch.Tensor) for r in residuals]
        ctx.others = [r for r in residuals if not isinstance(r, torch.Tensor)]
        ctx.n_inputs = 1 + len(states_and_params)
        tensors = [r for r in residuals if isinstance(r, torch.Tensor)]
        ctx.save_for_backward(xs, *states_and_params, *tensors)  # inputs, then the residuals
        *final, ys = results
        return (ys.reshape(T, B, ys.shape[1]), *final)

    @staticmethod
    def backward(ctx, d_ys, *d_final):
        inputs, saved = ctx.saved_tensors[: ctx.n_inputs], iter(ctx.saved_tensors[ctx.n_inputs :])
        if torch.is_grad_enabled():  # create_graph=True: {lower}_backward is not differentiable
            run = functools.partial({lower}_sequence, ctx.S, ctx.batch_sizes, masked=ctx.masked)
            grads = differentiable_backward(run, inputs, ctx.needs_input_grad[3:], (d_ys, *d_final))
            return (None, None, None, *grads)
        others = iter(ctx.others)
        residuals = [next(saved) if t else next(others) for t in ctx.is_tensor]
        T, B = ctx.T, ctx.B
        d_ys = d_ys.reshape(T * B, d_ys.shape[2])
        backward = kernels(ctx.masked, ctx.S)[1]
        d_xs, *rest = backward(ctx.S, T, B, ctx.batch_sizes, *residuals, *d_final, d_ys)
        # None where no gradient is wanted: a constant's or hyper-parameter's slot is zeros.
        rest = [g if need else None for g, need in zip(rest, ctx.needs_input_grad[4:])]
        return (None, None, None, d_xs.reshape(T, B, d_xs.shape[1]), *rest)


def run_direction(xs, states, params, batch_sizes, S, masked=False):
    """The time loop of one layer direction, as torch_layers' make_layer expects it: the eager
    loop, or the custom op while torch.compile or torch.export traces the layer; masked=True
    runs the masked cell (see kernels)."""
    if torch.compiler.is_compiling():
        return run_traced(xs, states, params, batch_sizes, S, masked)
    return run_direction_eager(xs, states, params, batch_sizes, S, masked)


@compiler_disabled
def run_direction_eager(xs, states, params, batch_sizes, S, masked=False):
    """The Python loop, and {name}Sequence's generated backward (eager mode)."""
    B = xs.shape[1]
    batch_sizes = [B] * xs.shape[0] if batch_sizes is None else list(batch_sizes)
    if SYMBOLIC_BACKWARD:
        ys, *final = {name}Sequence.apply(S, batch_sizes, masked, xs, *states, *params)
    else:
        ys, *final = {lower}_sequence(S, batch_sizes, xs, *states, *params, masked=masked)
    return ys, tuple(final)


# --------------------------------------------------------------------------------------------
# torch.compile and torch.export: one direction over a whole sequence as one custom op

# The cell's name and a hash of this module's text: two different cells never share the ops,
# and this module loaded again (here, or in another process to run an exported program) finds
# the ones it defined.
OP_NAME = {_OP_MARK}


def define_ops(qualname, masked=False):
    """The op `qualname`: {lower}_forward (or the masked cell's forward) over a whole sequence
    as a torch.library custom op, with a fake implementation (result_shapes) and an autograd
    formula calling its backward as the op `qualname`_backward. Defined once per process: a
    second load of this module finds the op the first defined (the same text, so the same code).

    Op arguments are tensors, ints and lists of them: the sizes dict S travels as its values in
    SPEC's order, batch sizes as a list of ints, or None when every row runs every step."""
    namespace, name = qualname.split("::")
    ops = getattr(torch.ops, namespace)
    if hasattr(ops, name):
        return getattr(ops, name)
    n_results = kernels(masked)[2]

    def shapes_of(S, T, B):
        return kernels(masked, S)[3](S, T, B)

    def sizes_dict(sizes):
        return {{sym: n for (_, sym), n in zip(SPEC["sizes"], sizes)}}

    def rows(batch_sizes, T, B):
        return [B] * T if batch_sizes is None else list(batch_sizes)

    def forward(sizes, batch_sizes, xs, args):
        T, B = xs.shape[0], xs.shape[1]
        flat = xs.reshape(T * B, xs.shape[2])
        S = sizes_dict(sizes)
        kernel_forward = kernels(masked, S)[0]
        outs = kernel_forward(S, T, B, rows(batch_sizes, T, B), flat, *args)
        return op_results(outs, [xs, *args], xs)

    def forward_fake(sizes, batch_sizes, xs, args):
        shapes = shapes_of(sizes_dict(sizes), xs.shape[0], xs.shape[1])[0]
        return [xs.new_empty(s) for s in shapes]

    def backward(sizes, batch_sizes, T, B, args):
        S = sizes_dict(sizes)
        kernel_backward = kernels(masked, S)[1]
        grads = kernel_backward(S, T, B, rows(batch_sizes, T, B), *args)
        return op_results(grads, args, args[-1])

    def backward_fake(sizes, batch_sizes, T, B, args):
        return [args[-1].new_empty(s) for s in shapes_of(sizes_dict(sizes), T, B)[1]]

    def setup_context(ctx, inputs, output):
        sizes, batch_sizes, xs, args = inputs
        ctx.sizes, ctx.batch_sizes, ctx.n_args = sizes, batch_sizes, len(args)
        ctx.needs = [t.requires_grad for t in (xs, *args)]
        ctx.save_for_backward(xs, *args, *output[n_results:])  # inputs, then the residuals

    def differentiate(ctx, grads):
        xs, *saved = ctx.saved_tensors
        inputs, residuals = [xs, *saved[: ctx.n_args]], saved[ctx.n_args :]
        T, B = xs.shape[0], xs.shape[1]
        S = sizes_dict(ctx.sizes)
        # An output nobody used may have no gradient: zeros of its shape.
        seeds = [g if g is not None else xs.new_zeros(s)
                 for g, s in zip(grads[:n_results], shapes_of(S, T, B)[0])]
        *d_final, d_ys = seeds
        if torch.is_grad_enabled():  # create_graph=True: the backward is not differentiable
            run = functools.partial({lower}_sequence, S, rows(ctx.batch_sizes, T, B),
                                    masked=masked)
            d = differentiable_backward(run, inputs, ctx.needs, (d_ys.reshape(T, B, -1), *d_final))
        else:
            d = backward_op(ctx.sizes, ctx.batch_sizes, T, B, [*residuals, *d_final, d_ys])
            d = [g if need else None for g, need in zip(d, ctx.needs)]
        d_xs = None if d[0] is None else d[0].reshape(xs.shape)
        return None, None, d_xs, list(d[1:])

    forward_op = torch.library.custom_op(
        qualname, forward, mutates_args=(),
        schema="(int[] sizes, int[]? batch_sizes, Tensor xs, Tensor[] args) -> Tensor[]")
    backward_op = torch.library.custom_op(
        qualname + "_backward", backward, mutates_args=(),
        schema="(int[] sizes, int[]? batch_sizes, SymInt T, SymInt B, Tensor[] args) -> Tensor[]")
    forward_op.register_fake(forward_fake)
    backward_op.register_fake(backward_fake)
    forward_op.register_autograd(differentiate, setup_context=setup_context)
    return getattr(ops, name)


sequence_op = define_ops(OP_NAME)
masked_sequence_op = define_ops(OP_NAME + "_masked", masked=True)


def run_traced(xs, states, params, batch_sizes, S, masked=False):
    """run_direction while torch.compile or torch.export traces it: one call of the op."""
    sizes = [S[sym] for _, sym in SPEC["sizes"]]
    batch_sizes = None if batch_sizes is None else list(batch_sizes)
    op = masked_sequence_op if masked else sequence_op
    outs = op(sizes, batch_sizes, xs, [*states, *params])
    *final, ys = outs[:kernels(masked)[2]]
    return ys.reshape(xs.shape[0], xs.shape[1], ys.shape[1]), tuple(final)


{spec_source(layer_spec(cell))}

{name}, {name}Cell = make_layer(SPEC, lambda S: functools.partial(run_direction, S=dict(S)))
Layer, Cell = {name}, {name}Cell
'''
