"""Ahead-of-time artifacts: a shared library, its C header, and a NumPy/ctypes loader.

    cellc compile cells/lstm.cell --target llvm            # size-generic, into lstm_llvm/
    cellc compile cells/lstm.cell --target llvm --sizes input_size=8,hidden_size=16 -o out/

writes liblstm.so (object code from LLVM linked with the system C compiler against the BLAS of
`blas.py`), lstm.h and lstm.py, and copies that BLAS library (libscipy_openblas.so, with its
license) beside them: the .so finds it through an `$ORIGIN` RUNPATH, so the folder is the whole
artifact and may be moved or copied to a machine without cellc, llvmlite or scipy-openblas32.
Without --sizes the kernels are size-generic (the sizes are run-time arguments: one build
serves every size, e.g. `lstm.LSTM(input_size=8, hidden_size=16)`); with it they are
specialized to those sizes. Either way they are tuned for this machine's CPU.

The loader needs only numpy and ctypes: it is cellc/runtime/native_calls.py verbatim (the
argument checks NativeCell and Kernel.run use, and the cell class) followed by this cell's data
as literals (names, shapes or shape polynomials, kernel layouts, sizes) and a subclass that
holds them, so it stays one file that runs wherever it is copied. The header documents each
kernel's arguments and results with their shapes, its workspace (a macro) and the order of the
sizes. Files appear whole or not at all: everything is built in a temporary folder under the
system's temp dir (so a killed build leaves nothing beside the output) and then renamed (or
copied, then renamed) into place, the loader last.

Generated files are a boundary. The cell's name, its size and array names and its file's path
are untrusted text: in C they appear only inside escaped string literals (`_c_string`) or as
comments reduced to harmless characters (`_plain`); in the loader only as `repr()` strings or
plain-text docstrings. The file stem and the C symbol prefix (`file_prefix`) is the cell's name
only when that is a short plain identifier; otherwise a bounded, hashed form of it.
"""

from __future__ import annotations

import ast
import builtins
import errno
import hashlib
import keyword
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .._version import __version__
from ..ir import Func
from ..lower import CellIR
from ..runtime import pasteable_source
from ..shapes import Batch, Dim
from . import blas, llvm_ir, numpy_ref
from .llvm_jit import (
    _llvm,
    _size_data,
    kernel_features,
    kernel_spec,
    optimize,
    step_function,
    target_machine,
)

DTYPES = {"f32": "float32", "f64": "float64"}
MAX_PREFIX = 48  # characters of the cell's name kept in a file stem; file names stay far below 255

# File stems that would shadow a module when the output folder is on sys.path: a loader named
# ctypes.py or numpy.py would import itself instead of the module it needs.
_MODULES = frozenset(sys.stdlib_module_names) | {"numpy", "cellc", "torch", "llvmlite"}


class LinkError(Exception):
    pass


def _kernel_sizes(cell: CellIR) -> list:
    """The sizes a build takes: not an optional size its form has at 0 (cellc/variants.py;
    `compile --sizes ...,proj_size=2` builds the other form, which takes it)."""
    return [s for s in cell.sizes if s.symbol in cell.symbols]


def file_prefix(name: str) -> str:
    """The stem of the three files and the prefix of every C symbol and macro in them.

    The cell's name in lower case when that is a plain ASCII identifier (starting with a
    letter, so no reserved `_X` or `__x` C names) of at most MAX_PREFIX characters that is no
    Python keyword or module name. Otherwise a readable part of it plus a hash of the whole name,
    so the result is always such an identifier, bounded, and different cells stay apart:
    `def` -> `def_cb8379ac2098`, `RNN'` -> `rnn_926e43e126bf`, 100000 N's -> 48 n's and a hash.
    """
    low = name.lower()
    if (re.fullmatch(r"[a-z][a-z0-9_]*", low) and len(low) <= MAX_PREFIX
            and not keyword.iskeyword(low) and low not in _MODULES):
        return low
    stem = re.sub(r"[^a-z0-9_]+", "_", low).strip("_")[:MAX_PREFIX] or "cell"
    if not stem[0].isalpha():
        stem = "cell_" + stem
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{stem}_{digest}"


def _plain(text: str) -> str:
    """Text for a C comment or a Python docstring: letters, digits and a few harmless marks;
    anything else becomes `_`. Nothing can end the comment (`*/`), splice a line (a backslash,
    the trigraph `??/`), end the docstring (a quote), or be a newline or an encoding cookie."""
    return re.sub(r"[^A-Za-z0-9 _,.:;=()\[\]{}'+<>-]", "_", text)


_C_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _.,:;=+-/@%~")


def _c_string(text: str) -> str:
    """A C string literal holding text's UTF-8 bytes (a file name's undecodable bytes restored):
    plain characters as they are and every other byte as a three-digit octal escape, which
    cannot run into the next character, so no quote, backslash, newline or `?` (trigraphs)
    reaches the compiler as such."""
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that did not come from a file name
        data = text.encode("utf-8", "surrogatepass")
    return '"' + "".join(chr(c) if c in _C_PLAIN else f"\\{c:03o}" for c in data) + '"'


def build(cell: CellIR, sizes: dict | None, out_dir: Path, prog=None) -> list[Path]:
    """Build lib<prefix>.so, <prefix>.h and <prefix>.py into out_dir (which must exist), with
    the BLAS library the .so links (and its license) copied beside it.

    sizes None builds size-generic kernels (the sizes are run-time arguments: one build serves
    every size); a dict (symbol -> int) builds kernels specialized to those sizes. prog is the
    cell's compiled program (`pipeline.compile_program(cell)`); given None, it is compiled here,
    for callers that hold only the cell."""
    from ..inputs import refuse_parts

    refuse_parts(cell, "the native library")
    llvm = _llvm()
    prefix = file_prefix(cell.name)
    if prog is None:
        from ..pipeline import compile_program  # lazily: backends take the program as an argument

        prog = compile_program(cell)
    step = step_function(cell)
    tm = target_machine(reloc="pic")
    kernels, docs = {}, {}
    objects = []
    # Absolute, under the system temp dir: no argument of cc can read as a flag (an output
    # folder named -evil), and a killed build leaves no half-built folder beside the output.
    tmp = Path(os.path.abspath(tempfile.mkdtemp(prefix="cellc-aot-")))
    try:
        for short, dtype in DTYPES.items():
            g = "d" if dtype == "float64" else "s"
            funcs = [(prog.fwd, f"{prefix}_forward_{short}"),
                     (prog.bwd, f"{prefix}_backward_{short}"),
                     (step, f"{prefix}_step_{short}")]
            module, layouts = llvm_ir.build_module(funcs, sizes, dtype,
                                                   {"gemm": f"{blas.prefix()}cblas_{g}gemm"},
                                                   features=kernel_features(),
                                                   symbols=cell.symbols)
            mod = llvm.parse_assembly(str(module))
            mod.verify()
            optimize(mod, tm)
            obj = tmp / f"{prefix}_{short}.o"
            obj.write_bytes(tm.emit_object(mod))
            objects.append(obj)
            for (f, name), layout in zip(funcs, layouts):
                kernels[name] = kernel_spec(f, layout, sizes, dtype)
                docs[name] = _KernelDoc(f, layout, _result_names(f, prog),
                                        prog.n_results if f is prog.fwd else None)
        lib = tmp / f"lib{prefix}.so"
        cc = os.environ.get("CC", "cc")
        cmd = [cc, "-shared", "-o", str(lib), *map(str, objects), *blas.link_args(beside=True),
               "-lm"]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise LinkError(f"no C compiler found ({cc}); install gcc or set CC") from None
        if res.returncode != 0:
            raise LinkError(f"linking failed: {' '.join(cmd)}\n{res.stderr.strip()}")
        header = tmp / f"{prefix}.h"
        header.write_text(_header(cell, sizes, docs, prefix))
        loader = tmp / f"{prefix}.py"
        loader.write_text(_loader(cell, sizes, kernels, prefix))
        # What the library links first, the loader last: a folder that has a loader works.
        written = [_install(Path(src), Path(out_dir), name=name, move=False)
                   for src, name in blas.bundle_files()]
        return written + [_install(f, Path(out_dir)) for f in (lib, header, loader)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _install(src: Path, out_dir: Path, name: str | None = None, move: bool = True) -> Path:
    """Put a finished file into out_dir whole, as `name` (default: its own). A rename where the
    temp dir and out_dir share a file system (only when `move`: a file of another package is
    copied, never taken); else a copy to a hidden name beside the destination, then a rename.
    The copy gets the permission bits src has (cc -o: 0o777 less the umask, write_text: 0o666
    less it), never mkstemp's fixed 0o600."""
    dest = out_dir / (name or src.name)
    if move:
        try:
            os.replace(src, dest)
            return dest
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
    part = out_dir / f".{dest.name}.{secrets.token_hex(4)}.part"
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, src.stat().st_mode & 0o777)
    try:
        with os.fdopen(fd, "wb") as f, open(src, "rb") as s:
            shutil.copyfileobj(s, f)
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return dest


@dataclass
class _KernelDoc:
    """What the header says about one kernel: its function (argument and result types), its
    layout (which results are arguments, the workspace), a name for each result, and for a
    forward how many results are outputs (the rest are its tape)."""

    func: Func
    layout: llvm_ir.Layout
    result_names: list[str]
    n_outputs: int | None = None


def _result_names(func: Func, prog) -> list[str]:
    """Names for a kernel's results: the backward's are the gradients of the forward's
    arguments (its own names are internal temporaries), the others' their IR names."""
    if func is prog.bwd:
        names = [f"d_{p.name}" for p in prog.fwd.params]
        assert len(names) == len(func.results), (names, len(func.results))
        return names
    return [r.name for r in func.results]


_ROWS = {Batch.SEQ: "[T*B]", Batch.STEP: "[B]", Batch.NONE: ""}
KERNEL_ARGS = ("int64_t T, int64_t B, const int64_t *batch_sizes, void *const *args,"
               " void *const *results, {ctype} *workspace, const int64_t *sizes")


def _size(d, sizes):
    """A dim of the header: an int in a specialized build, else the Dim (or a literal int)."""
    if sizes is not None or not isinstance(d, Dim):
        return int(d.evaluate(sizes)) if isinstance(d, Dim) else int(d)
    return int(d) if d.constant is not None and d.constant.denominator == 1 else d


def _formula(d, factor: bool = False) -> str:
    """A dim for a C comment: an int, or a Dim's text (`4*H`, `H/2`: digits, size symbols, which
    the front end checks are plain identifiers, and `*/+-^`). `_plain` the rest, and keep `*`
    and `/` apart, so nothing can end the comment."""
    text = re.sub(r"[^A-Za-z0-9 _*/+^-]", "_", str(d))
    if factor and isinstance(d, Dim) and len(d.terms) > 1:  # a factor of a product: (I + H)
        text = f"({text})"
    return text.replace("*/", "*_/").replace("/*", "/_*")


def _c_size(d, P: str) -> str:
    """A dim as a C integer expression of `sizes[]` (int64_t), exact for rational coefficients:
    the terms over their common denominator, divided last (cellc refuses sizes that make a
    declared dim non-whole, and the kernels compute it the same way)."""
    if not isinstance(d, Dim):
        return str(int(d))
    den = math.lcm(*(c.denominator for _, c in d.terms)) if d.terms else 1
    parts = [" * ".join([f"({int(c * den)})", *(f"(sizes)[{P}_SIZE_{s}]" for s in m)])
             for m, c in d.terms]
    text = " + ".join(parts) or "0"
    return f"(({text}) / {den})" if den != 1 else f"({text})"


def c_declaration(name: str, dtype: str) -> str:
    """The C prototype of a kernel, as the header declares it."""
    ctype = "float" if dtype == "float32" else "double"
    return f"void {name}({KERNEL_ARGS.format(ctype=ctype)});"


def summary(cell: CellIR, sizes: dict | None, header: Path) -> list[str]:
    """What `cellc compile` prints after its `wrote` lines: the kernels' C prototypes, in brief
    (the header has each one with its arguments' shapes)."""
    prefix = file_prefix(cell.name)
    symbols = ", ".join(s.symbol for s in _kernel_sizes(cell))
    fixed = ", ".join(f"{k}={v}" for k, v in (sizes or {}).items())
    order = (f"sizes[] = {{{_plain(symbols)}}}" if sizes is None
             else f"compiled for {_plain(fixed)}, sizes[] not read")
    lines = [f"C kernels, declared in {header} ({order}):"]
    for short, dtype in DTYPES.items():
        lines.append("  " + c_declaration(f"{prefix}_{{forward,backward,step}}_{short}", dtype))
    return lines


def _header(cell, sizes, docs, prefix) -> str:
    P = prefix.upper()
    guard = f"CELLC_{P}_H"
    generic = sizes is None
    what = ("size-generic (the sizes are run-time arguments: sizes[] below)" if generic
            else f"specialized to sizes {_plain(str(sizes))}")
    ws_args = "T, B, sizes" if generic else "T, B"
    lines = [
        f"/* {prefix}.h: native kernels for the {_plain(cell.name)} cell,",
        f" * generated by cellc {_plain(__version__)} from the file named in {P}_SOURCE_FILE,",
        f" * {what},",
        " * tuned for this machine's CPU.",
        f" * Link with -L<this folder> -l:lib{prefix}.so -Wl,-rpath,<this folder>; the library",
        " * finds the BLAS it uses beside it (libscipy_openblas.so, RUNPATH $ORIGIN).",
        " *",
        " * Every kernel has the same signature. Arrays are row-major and contiguous (the last",
        " * index varies fastest, no padding); T is the number of time steps, B the batch; a",
        " * [T*B]-row array holds a whole sequence, row t*B + b for step t of sequence b, and T*B",
        " * must be below 2^31 (BLAS sizes are 32-bit).",
        " * batch_sizes[t] (T values, non-increasing, at most B) is how many sequences are still",
        " * running at step t, sorted longest first: pass B for every step when all have length",
        " * T. Rows of finished sequences come out zero in ys, and a final state is the one at",
        " * the sequence's last step.",
        " * args[] and results[] are arrays of data pointers in the order listed for each",
        " * kernel; a result marked '= args[k]' is args[k] itself and needs no buffer; each other",
        " * results[] entry is a buffer the kernel writes, of the shape listed (two results listed",
        " * with one index are the same buffer). A forward's results marked 'tape' are what its",
        " * backward reads back, with the forward's arguments the backward lists.",
        f" * workspace must hold <KERNEL>_WORKSPACE({ws_args}) elements of the kernel's float",
        f" * type, e.g. {P}_FORWARD_F32_WORKSPACE({ws_args}).",
    ]
    if generic:
        lines += [
            " * sizes[] holds the cell's sizes in this order (int64_t values, the size indices",
            f" * {P}_SIZE_<symbol> below); they must be positive and make every dim listed a",
            " * positive whole number.",
        ]
    else:
        lines += [" * sizes is not read (the sizes are fixed): pass NULL or the compiled sizes."]
    lines += [
        " */",
        f"#ifndef {guard}",
        f"#define {guard}",
        "#include <stdint.h>",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        "",
        f"#define {P}_SOURCE_FILE {_c_string(cell.source.name)}",
        f"#define {P}_N_SIZES {len(_kernel_sizes(cell))}",
    ]
    for k, s in enumerate(_kernel_sizes(cell)):
        # the front end allows only plain identifiers as size symbols (cellc/names.py)
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", s.symbol), s.symbol
        value = "" if generic else f" = {sizes[s.symbol]}"
        lines.append(f"#define {P}_SIZE_{s.symbol} {k}  /* {_plain(s.arg)}{value} */")
    lines.append("")
    for name, doc in docs.items():
        lines += _kernel_lines(name, doc, sizes, P)
    lines += ["#ifdef __cplusplus", "}", "#endif", f"#endif /* {guard} */", ""]
    return "\n".join(lines)


def _kernel_lines(name, doc: _KernelDoc, sizes, P) -> list[str]:
    """A kernel's comment block (each argument and result with its shape), its workspace macro
    and its prototype."""
    func, layout = doc.func, doc.layout
    dtype = "float32" if name.endswith("_f32") else "float64"
    ctype = "float" if dtype == "float32" else "double"

    def shape(t):
        dims = "".join(f"[{_formula(_size(d, sizes))}]" for d in t.shape)
        return f"{ctype}{_ROWS[t.batch]}{dims}"

    role = {"forward": "a whole sequence", "backward": "the gradients of a forward",
            "step": "one time step"}[name.rsplit("_", 2)[-2]]
    lines = [f"/* {name}: {role}, {dtype}."]
    for k, p in enumerate(func.params):
        lines.append(f" *   {f'args[{k}]':<12} {_plain(p.name):<12} {shape(p.type)}")
    n_out = doc.n_outputs
    for i, ((kind, k), r, label) in enumerate(zip(layout.results, func.results,
                                                  doc.result_names)):
        where = f"= args[{k}]" if kind == "arg" else f"results[{k}]"
        tape = " (tape)" if n_out is not None and i >= n_out else ""
        lines.append(f" *   {where:<12} {_plain(label):<12} {shape(r.type)}{tape}")
    a, b, c = (_size(x, sizes) for x in layout.workspace)
    terms = [f"{_formula(x, factor=True)}*{rows}" for x, rows in ((a, "T*B"), (b, "B"))
             if x != 0]
    terms += [_formula(c)] if c != 0 else []
    lines.append(f" *   workspace: {' + '.join(terms + ['1'])} elements */")
    if sizes is None:
        lines.append(f"#define {name.upper()}_WORKSPACE(T, B, sizes) ({_c_size(a, P)}"
                     f" * (int64_t)(T) * (B) + {_c_size(b, P)} * (int64_t)(B)"
                     f" + {_c_size(c, P)} + 1)")
    else:
        lines.append(f"#define {name.upper()}_WORKSPACE(T, B)"
                     f" ({a} * (int64_t)(T) * (B) + {b} * (int64_t)(B) + {c} + 1)")
    lines += [c_declaration(name, dtype), ""]
    return lines


def class_alias(name: str, loader_text: str) -> str | None:
    """The name the loader also gives its class `_Cell`: the cell's own name, when that is a
    plain ASCII identifier that no keyword, builtin, or module-level name of the loader has
    (a class called np, ctypes or KERNELS would break the loader's own code). None otherwise."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name) or keyword.iskeyword(name):
        return None
    taken = set(dir(builtins))
    for node in ast.parse(loader_text).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            taken |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            taken.add(node.name)
        elif isinstance(node, ast.Assign):
            taken |= {n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return None if name in taken else name


def _dims(cell: CellIR) -> list:
    """(value name, dim text, dim data) for each distinct feature dim of the cell's step, the
    first value that has it named: what `CellIR.bind` checks, for a loader's size check."""
    out, seen = [], set()
    for v in (*cell.step.params, *(o for ins in cell.step.body for o in ins.outs)):
        for d in v.type.shape:
            if d not in seen:
                seen.add(d)
                out.append((v.name, str(d), _size_data(d)))
    return out


def _number_data(e):
    """A checked number expression (a state's initial value) as the data native_calls._number
    evaluates in a loader: floats, size symbols as strings, [op, operands...] lists."""
    from .. import ast_nodes as A

    if isinstance(e, A.Num):
        return float(e.value)
    if isinstance(e, A.Name):
        return e.id
    if isinstance(e, A.Neg):
        return ["neg", _number_data(e.operand)]
    if isinstance(e, A.Call):
        return [e.fn.id, _number_data(e.args[0])]
    return [e.op, _number_data(e.lhs), _number_data(e.rhs)]


def _state_init(cell, sizes) -> list:
    """Each state's initial value: a float in a specialized build, else `_number_data`."""
    if sizes is not None:
        return [cell.initial_value(k, sizes) for k in range(len(cell.states))]
    inits = cell.state_init or (None,) * len(cell.states)
    return [0.0 if e is None else _number_data(e) for e in inits]


def _loader(cell, sizes, kernels, prefix) -> str:
    """The loader's text: native_calls' code, then this cell's data as literals and a subclass of
    its `_LoadedCell` that holds them. Shapes are ints in a specialized build and size data
    (native_calls' monomial lists) in a generic one; `_LoadedCell` evaluates them when a cell
    is made."""
    def dim(d):
        return _size_data(d) if sizes is None else int(d.evaluate(sizes))

    states = [(s.name, dim(s.type.shape[0])) for s in cell.states]
    params = [(p.name, [dim(d) for d in p.type.shape]) for p in cell.params]
    input_size = dim(cell.input.type.shape[0])
    output_size = dim(cell.step.results[len(states)].type.shape[0])
    size_args = [(s.arg, s.symbol) for s in _kernel_sizes(cell)]
    at = "every size (the sizes are given when a cell is made)" if sizes is None else (
        f"its compiled sizes {_plain(str(sizes))}")
    # User text enters below only as repr() (and _plain() in docstrings); every name the code
    # binds at module level is fixed, and the cell's own name is bound last, only if it is free.
    body = f'''
# ---------------------------------------------------------------------------------------------
# Argument checks and the cell class: cellc/runtime/native_calls.py, as cellc itself uses them

{pasteable_source('native_calls')}


# ---------------------------------------------------------------------------------------------
# This cell, at {"every size" if sizes is None else "its compiled sizes"}

SIZES = {sizes!r}  # symbol -> value of a specialized build; None: a size-generic one
STATES = {[name for name, _ in states]!r}
PARAMS = {params!r}  # name, shape
KERNELS = {kernels!r}

_LIB = _Library(__file__, {f"lib{prefix}.so"!r}, KERNELS)
_call = _LIB.call


class _Cell(_LoadedCell):
    """The cell at {at}, in float32 or float64. Arrays are checked, not converted: they must
    have the cell's dtype and exact shapes."""

    _library = _LIB
    _kernel_prefix = {prefix + "_"!r}
    _cell_name = {cell.name!r}
    _size_args = {size_args!r}  # argument, symbol
    _fixed_sizes = SIZES
    _dims = {_dims(cell)!r}  # value, dim, dim data: what the sizes must make whole
    _state_dims = {states!r}
    _param_dims = PARAMS
    _input_dim = {input_size!r}
    _output_dim = {output_size!r}
    _state_init = {_state_init(cell, sizes)!r}  # each state's value when none is given
    _hyper_defaults = {numpy_ref.hyper_defaults(cell)!r}  # used when params leaves one out
    _frozen = {[p.name for p in numpy_ref.frozen_params(cell)]!r}  # no gradient
'''
    alias = class_alias(cell.name, body)
    usage = alias or "_Cell"
    if sizes is None:
        make = ", ".join(f"{s.arg}=..." for s in _kernel_sizes(cell))
        make = f'{prefix}.{usage}({make}{", " if make else ""}dtype="float32")'
        fixed = "Size-generic: one build serves every size, given when a cell is made."
    else:
        make = f'{prefix}.{usage}("float32")'
        fixed = f"Sizes are fixed at compile time: {_plain(str(sizes))}."
    doc = f'''"""Loader for lib{prefix}.so, compiled by cellc {__version__}.

Cell {_plain(cell.name)}. Needs only numpy and ctypes (and the libraries beside this file).
{_plain(fixed)}

    import {prefix}
    cell = {_plain(make)}
    ys, final, tape = cell.forward(xs, params)        # xs (T, B, I); params: name -> array
    grads = cell.backward(tape, d_ys)                 # "xs", each state, each trained parameter
    y, states = cell.step(x, states, params)          # one step (streaming)

Sequences of different lengths: forward(..., lengths=[...]) (B ints, any order: outputs past a
sequence's end are zero, its final state the one at its last step), or batch_sizes (sorted
longest first). {usage}(..., reverse=True) runs backwards in time, each sequence within its
own length, as the reverse half of a bidirectional torch layer (outputs in input time order,
the final state the one after x[0]). Arrays must have the cell's dtype and shapes (nothing is
converted), and T*B must be below 2**31, as for cellc's NativeCell.
"""
'''
    tail = "" if alias is None else f"\n\n{alias} = _Cell  # the class under the cell's own name\n"
    return doc + body + tail
