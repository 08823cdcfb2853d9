"""Ahead-of-time artifacts: a shared library, its C header, and a NumPy/ctypes loader.

    cellc compile cells/lstm.cell --target llvm --sizes input_size=8,hidden_size=16 -o out/

writes out/liblstm.so (object code from LLVM linked with the system C compiler against the BLAS
of `blas.py`), out/lstm.h and out/lstm.py. The loader needs only numpy and ctypes: it is
cellc/runtime/native_calls.py verbatim (the argument checks NativeCell and Kernel.run use, and
the cell class) followed by this cell's data as literals (names, shapes, kernel layouts, sizes)
and a subclass that holds them, so it stays one file that runs wherever it is copied. Kernels are
specialized to the given sizes and tuned for this machine's CPU. Files appear whole or not at
all: everything is built in a temporary folder under the system's temp dir (so a killed build
leaves nothing beside the output) and then renamed (or copied, then renamed) into place.

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
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .._version import __version__
from ..lower import CellIR
from ..runtime import pasteable_source
from . import blas, llvm_ir
from .llvm_jit import _llvm, kernel_features, kernel_spec, optimize, step_function, target_machine

DTYPES = {"f32": "float32", "f64": "float64"}
MAX_PREFIX = 48  # characters of the cell's name kept in a file stem; file names stay far below 255

# File stems that would shadow a module when the output folder is on sys.path: a loader named
# ctypes.py or numpy.py would import itself instead of the module it needs.
_MODULES = frozenset(sys.stdlib_module_names) | {"numpy", "cellc", "torch", "llvmlite"}


class LinkError(Exception):
    pass


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


def build(cell: CellIR, sizes: dict, out_dir: Path, prog=None) -> list[Path]:
    """Build lib<prefix>.so, <prefix>.h and <prefix>.py into out_dir (which must exist).

    prog is the cell's compiled program (`pipeline.compile_program(cell)`); given None, it is
    compiled here, for callers that hold only the cell."""
    llvm = _llvm()
    prefix = file_prefix(cell.name)
    if prog is None:
        from ..pipeline import compile_program  # lazily: backends take the program as an argument

        prog = compile_program(cell)
    step = step_function(cell)
    tm = target_machine(reloc="pic")
    kernels = {}
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
                                                   features=kernel_features())
            mod = llvm.parse_assembly(str(module))
            mod.verify()
            optimize(mod, tm)
            obj = tmp / f"{prefix}_{short}.o"
            obj.write_bytes(tm.emit_object(mod))
            objects.append(obj)
            for (f, name), layout in zip(funcs, layouts):
                kernels[name] = kernel_spec(f, layout, sizes, dtype)
        lib = tmp / f"lib{prefix}.so"
        cc = os.environ.get("CC", "cc")
        cmd = [cc, "-shared", "-o", str(lib), *map(str, objects), *blas.link_args(), "-lm"]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise LinkError(f"no C compiler found ({cc}); install gcc or set CC") from None
        if res.returncode != 0:
            raise LinkError(f"linking failed: {' '.join(cmd)}\n{res.stderr.strip()}")
        header = tmp / f"{prefix}.h"
        header.write_text(_header(cell, sizes, kernels, prefix))
        loader = tmp / f"{prefix}.py"
        loader.write_text(_loader(cell, sizes, kernels, prefix))
        return [_install(f, Path(out_dir)) for f in (lib, header, loader)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _install(src: Path, out_dir: Path) -> Path:
    """Move a finished file into out_dir whole. A rename where the temp dir and out_dir share a
    file system; else a copy to a hidden name beside the destination, then a rename. The copy
    gets the permission bits src got from the umask (cc -o: 0o777 less the umask, write_text:
    0o666 less it), never mkstemp's fixed 0o600."""
    dest = out_dir / src.name
    try:
        os.replace(src, dest)
        return dest
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    part = out_dir / f".{src.name}.{secrets.token_hex(4)}.part"
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, src.stat().st_mode & 0o777)
    try:
        with os.fdopen(fd, "wb") as f, open(src, "rb") as s:
            shutil.copyfileobj(s, f)
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return dest


def _header(cell, sizes, kernels, prefix) -> str:
    P = prefix.upper()
    guard = f"CELLC_{P}_H"
    lines = [
        f"/* {prefix}.h: native kernels for the {_plain(cell.name)} cell,",
        f" * generated by cellc {_plain(__version__)} from the file named in {P}_SOURCE_FILE,",
        f" * for sizes {_plain(str(sizes))} and this machine's CPU.",
        " *",
        " * Every kernel has the same signature. Arrays are row-major and contiguous; T is the",
        " * number of time steps, B the batch; a whole-sequence array has T*B rows ordered (t, b),",
        " * and T*B must be below 2^31 (BLAS sizes are 32-bit).",
        " * batch_sizes[t] (non-increasing, at most B) is how many sequences are still running at",
        " * step t (sorted longest first); pass B for every step when all have length T.",
        " * args[] and results[] are arrays of data pointers in the order listed for each kernel;",
        " * a result marked 'arg k' is args[k] itself and needs no buffer. workspace must hold",
        f" * <KERNEL>_WORKSPACE(T, B) elements of its float type, e.g. {P}_FORWARD_F32_WORKSPACE.",
        " */",
        f"#ifndef {guard}",
        f"#define {guard}",
        "#include <stdint.h>",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        "",
        f"#define {P}_SOURCE_FILE {_c_string(cell.source.name)}",
        "",
    ]
    for name, k in kernels.items():
        ctype = "float" if k["dtype"] == "float32" else "double"
        a, b, c = k["workspace"]
        args = ", ".join(f"{n}{s}" for n, s in k["args"])
        lines.append(f"/* {name}: args: {_plain(args)} */")
        res = []
        for kind, idx, shape in k["results"]:
            res.append(f"arg {idx}" if kind == "arg" else f"results[{idx}]{shape}")
        lines.append(f"/*   results: {_plain(', '.join(res))} */")
        lines.append(f"#define {name.upper()}_WORKSPACE(T, B)"
                     f" ({a} * (T) * (B) + {b} * (B) + {c} + 1)")
        lines.append(f"void {name}(int64_t T, int64_t B, const int64_t *batch_sizes,"
                     f" void *const *args, void *const *results, {ctype} *workspace);")
        lines.append("")
    lines += ["#ifdef __cplusplus", "}", "#endif", f"#endif /* {guard} */", ""]
    return "\n".join(lines)


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


def _loader(cell, sizes, kernels, prefix) -> str:
    """The loader's text: native_calls' code, then this cell's data as literals and a subclass of
    its `_LoadedCell` that holds them."""
    states = [(s.name, int(s.type.shape[0].evaluate(sizes))) for s in cell.states]
    params = [(p.name, [int(d.evaluate(sizes)) for d in p.type.shape]) for p in cell.params]
    input_size = int(cell.input.type.shape[0].evaluate(sizes))
    output_size = int(cell.step.results[len(states)].type.shape[0].evaluate(sizes))
    # User text enters below only as repr() (and _plain() in docstrings); every name the code
    # binds at module level is fixed, and the cell's own name is bound last, only if it is free.
    body = f'''
# ---------------------------------------------------------------------------------------------
# Argument checks and the cell class: cellc/runtime/native_calls.py, as cellc itself uses them

{pasteable_source('native_calls')}


# ---------------------------------------------------------------------------------------------
# This cell, at its compiled sizes

SIZES = {sizes!r}
STATES = {[name for name, _ in states]!r}
PARAMS = {params!r}  # name, shape
KERNELS = {kernels!r}

_LIB = _Library(__file__, {f"lib{prefix}.so"!r}, KERNELS)
_call = _LIB.call


class _Cell(_LoadedCell):
    """The cell at sizes {_plain(str(sizes))}, in float32 or float64. Arrays are checked, not
    converted: they must have the cell's dtype and exact shapes."""

    _library = _LIB
    _kernel_prefix = {prefix + "_"!r}
    _state_sizes = {states!r}
    _param_shapes = PARAMS
    _input_size = {input_size!r}
    _output_size = {output_size!r}
'''
    alias = class_alias(cell.name, body)
    usage = alias or "_Cell"
    doc = f'''"""Loader for lib{prefix}.so, compiled by cellc {__version__}.

Cell {_plain(cell.name)}. Needs only numpy and ctypes. Sizes are fixed at compile time:
{_plain(str(sizes))}.

    import {prefix}
    cell = {prefix}.{usage}("float32")
    ys, final, tape = cell.forward(xs, params)        # xs (T, B, I); params: name -> array
    grads = cell.backward(tape, d_ys)                 # "xs", each state, each parameter
    y, states = cell.step(x, states, params)          # one step (streaming)

Arrays must have the cell's dtype and shapes (nothing is converted), batch_sizes must be ints,
and T*B must be below 2**31, as for cellc's NativeCell.
"""
'''
    tail = "" if alias is None else f"\n\n{alias} = _Cell  # the class under the cell's own name\n"
    return doc + body + tail
