"""Hostile input to the native outputs: the AOT library, header and loader (`aot.py`) and the
NumPy-level `NativeCell` (`native.py`).

- Untrusted text (the .cell file's path, the cell's name, size names) enters the C header only
  as an escaped string literal or a harmless comment, and the loader only as repr() strings:
  a header from a hostile path compiles and runs nothing, hostile names still import.
- A cell name of any length gives bounded file names.
- Arrays returned by forward, backward and step share no memory with the tape or each other.
- The loader checks its arguments as NativeCell does (same messages), and takes T=0 and B=0;
  its kernel calls are checked as Kernel.run's, because both run cellc/runtime/native_calls.py,
  which the loader holds verbatim.
- T*B at or over 2**31 is refused before anything is allocated (BLAS sizes are 32-bit).
- `-o -evil` is not a flag to cc; a killed build leaves nothing beside the output; files follow
  the umask.
"""

from __future__ import annotations

import ast
import ctypes
import dataclasses
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import cellc
from cellc.backends import aot, blas, numpy_ref
from cellc.backends.llvm_jit import MAX_ROWS, check_rows
from cellc.native import NativeCell
from cellc.runtime import pasteable_source

ROOT = Path(__file__).resolve().parent.parent
CELLS_DIR = ROOT / "cells"
I, H = 3, 4
CC = shutil.which(os.environ.get("CC", "cc"))
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler")
BLAS_FILES = [name for _, name in blas.bundle_files()]  # copied beside every library

# Text that has broken generated C and Python elsewhere.
HOSTILE = ['"', "'", '"""', "\\", "\\\n", "\n", "\r", "\t", "\u2028", "\u2029", "\x85", "\x00",
           "*/", "/*", "//", "??/", "??=", "$(touch pwned)", "`touch pwned`", "%s%n", "#define",
           "é", "λ", "\ufeff", "\udcff", "\ud800"]


@pytest.fixture(scope="module", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """Nothing here (children included) touches the user's compile cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CELLC_CACHE_DIR", str(tmp_path_factory.mktemp("cellc-cache-native")))
        yield


def child_env(**extra) -> dict:
    return dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT),
                **extra)


def load_cell(name: str):
    cell = cellc.load_cell(CELLS_DIR / f"{name}.cell")
    return cell, cell.bind(input_size=I, hidden_size=H)


def import_loader(path: Path):
    """The generated loader as a module (under a name of its own, so builds never collide)."""
    spec = importlib.util.spec_from_file_location(f"h2_loader_{abs(hash(str(path)))}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build(cell, sizes, out: Path):
    """Build into out; returns (written paths, loader module, the loader's cell class)."""
    out.mkdir(parents=True, exist_ok=True)
    written = aot.build(cell, sizes, out)
    mod = import_loader(next(p for p in written if p.suffix == ".py"))
    return written, mod, getattr(mod, "_Cell", None) or getattr(mod, cell.name)


def problem(cell, sizes, dtype, T=5, B=3, seed=0):
    rng = np.random.default_rng(seed)
    params = numpy_ref.init_params(cell, sizes, rng, np.dtype(dtype))
    states = {s.name: rng.standard_normal((B, H)).astype(dtype) for s in cell.states}
    xs = rng.standard_normal((T, B, I)).astype(dtype)
    d_ys = rng.standard_normal((T, B, H)).astype(dtype)
    return xs, params, states, d_ys


@pytest.fixture(scope="module")
def loaders(tmp_path_factory):
    """name -> (cell, sizes, the loader's cell class, the loader's path) for rnn and indrnn."""
    base = tmp_path_factory.mktemp("loaders")
    out = {}
    for name in ("rnn", "indrnn"):
        cell, sizes = load_cell(name)
        _, _, cls = build(cell, sizes, base / name)
        out[name] = (cell, sizes, cls, base / name / f"{name}.py")
    return out


@pytest.fixture(scope="module")
def natives():
    cache = {}

    def get(name, dtype="float64"):
        if (name, dtype) not in cache:
            cache[name, dtype] = NativeCell(CELLS_DIR / f"{name}.cell", dtype=dtype,
                                            input_size=I, hidden_size=H)
        return cache[name, dtype]

    return get


# ---------------------------------------------------------------------------------------------
# C: the header


@needs_cc
def test_header_from_a_hostile_path_compiles_and_runs_nothing(tmp_path):
    """A folder `p*` then one holding C code: a raw path in a comment closed it with `*/` and
    ran the code in every program that included the header."""
    code = ('\nint system(const char *); __attribute__((constructor)) static void pwn(void)'
            ' { system("touch pwned"); }\n')
    folder = tmp_path / "p*" / code / "*\"'\\ \u2028 $(touch pwned) ??/ %s é"
    folder.mkdir(parents=True)
    src = folder / "x\r\t.cell"
    shutil.copy(CELLS_DIR / "rnn.cell", src)
    cell = cellc.load_cell(src)
    out = tmp_path / "out"
    build(cell, cell.bind(input_size=I, hidden_size=H), out)
    header = out / "rnn.h"
    # Including it is harmless: it compiles warning-free and the program runs nothing.
    prog = tmp_path / "use.c"
    prog.write_text(f'#include "{header}"\nint main(void) {{ return 0; }}\n')
    res = subprocess.run([CC, "-Wall", "-Werror", "-o", str(tmp_path / "use"), str(prog)],
                         capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    subprocess.run([str(tmp_path / "use")], cwd=tmp_path, timeout=60, check=True)
    assert not (tmp_path / "pwned").exists()
    # The path is there, exactly, as a string literal.
    prog.write_text(f'#include <stdio.h>\n#include "{header}"\nint main(void) {{\n'
                    "  fwrite(RNN_SOURCE_FILE, 1, sizeof RNN_SOURCE_FILE - 1, stdout);\n"
                    "  return 0;\n}\n")
    res = subprocess.run([CC, "-Wall", "-Werror", "-o", str(tmp_path / "use"), str(prog)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    shown = subprocess.run([str(tmp_path / "use")], capture_output=True, timeout=60, check=True)
    assert shown.stdout == os.fsencode(cell.source.name)
    assert not (tmp_path / "pwned").exists()


@needs_cc
def test_c_strings_and_comments_hold_any_text(tmp_path):
    """Every hostile string (NUL and lone surrogates included) round-trips through _c_string
    byte for byte, and _plain makes it a comment that ends where it should (strict C99 with
    trigraphs on, so `??/` would be a backslash)."""
    texts = HOSTILE + ["".join(HOSTILE), "a" + "\\" * 3 + "0" * 5]
    lines = ["#include <stdio.h>"]
    lines += [f"/* {aot._plain(t)} */ static const char s{i}[] = {aot._c_string(t)};"
              for i, t in enumerate(texts)]
    lines.append("static void show(const char *s, size_t n) {")
    lines.append('  size_t i; for (i = 0; i < n; i++) printf("%02x", (unsigned char)s[i]);')
    lines.append('  printf("\\n");\n}\nint main(void) {')
    lines += [f"  show(s{i}, sizeof s{i} - 1);" for i in range(len(texts))]
    lines.append("  return 0;\n}\n")
    src = tmp_path / "strings.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "strings"
    res = subprocess.run([CC, "-std=c99", "-pedantic", "-trigraphs", "-Wall", "-Werror",
                          "-o", str(exe), str(src)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    got = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60,
                         check=True).stdout.split("\n")
    for i, t in enumerate(texts):
        try:
            want = t.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            want = t.encode("utf-8", "surrogatepass")
        assert got[i] == want.hex(), (t, got[i])


# ---------------------------------------------------------------------------------------------
# Python: the loader under hostile names


@pytest.mark.parametrize("name", ["def", "None", "lambda", "self", "np", "ctypes", "os",
                                  "KERNELS", "SIZES", "len", "_Cell", "RNN'"])
def test_loader_imports_and_runs_under_hostile_cell_names(name, tmp_path):
    """A cell named like a keyword or one of the loader's own names (np, ctypes, KERNELS, a
    builtin it calls) once gave a SyntaxError or a shadowed module. The lower.py checks may
    reject these names at the front end; the loader must not depend on that."""
    rnn, sizes = load_cell("rnn")
    cell = dataclasses.replace(rnn, name=name)
    written, mod, cls = build(cell, sizes, tmp_path / "out")
    assert mod.np is np and mod.ctypes is ctypes and mod.os is os
    assert isinstance(mod.KERNELS, dict) and sizes == mod.SIZES
    if name not in ("np", "ctypes", "os", "KERNELS", "SIZES"):  # those keep their meaning
        assert getattr(mod, name, cls) is cls
    xs, params, states, d_ys = problem(rnn, sizes, "float64")
    ys, _, tape = cls("float64").forward(xs, params, states)
    want, _ = numpy_ref.forward(rnn, sizes, xs, params, states)
    np.testing.assert_allclose(ys, want, rtol=1e-10, atol=1e-12)
    trained = {k for k in params if k != "nonlinearity"}  # a hyper-parameter: no gradient
    assert set(cls("float64").backward(tape, d_ys)) == {"xs", "h", *trained}
    # the header stays valid C with any name
    if CC is not None:
        header = next(p for p in written if p.suffix == ".h")
        res = subprocess.run([CC, "-fsyntax-only", "-Wall", "-Werror", "-x", "c", str(header)],
                             capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode == 0, res.stderr


def test_loader_named_like_a_module_does_not_shadow_it(tmp_path):
    """A cell named ctypes once wrote ctypes.py: with the output folder on sys.path, the
    loader's own `import ctypes` imported itself."""
    rnn, sizes = load_cell("rnn")
    written, _, _ = build(dataclasses.replace(rnn, name="ctypes"), sizes, tmp_path / "out")
    assert all(p.stem not in sys.stdlib_module_names for p in written)
    stem = next(p for p in written if p.suffix == ".py").stem
    script = (f"import sys; sys.path.insert(0, {str(tmp_path / 'out')!r})\n"
              f"import ctypes, numpy as np, {stem} as mod\n"
              "assert ctypes.CDLL is not None\n"
              "cell = mod._Cell('float64')\n"
              "print(cell.forward(np.zeros((2, 1, 3)),"
              " {k: np.zeros(s) for k, s in mod.PARAMS})[0].shape)\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, env=child_env(), timeout=120, check=False)
    assert res.returncode == 0 and res.stdout.strip() == "(2, 1, 4)", res.stderr


def test_loader_text_survives_hostile_size_names():
    """Size names and values reach the loader's SIZES and its docstring: as repr() and as plain
    text, so no quote, newline or encoding cookie can end a string or start code."""
    rnn, sizes = load_cell("rnn")
    hostile = dict(sizes, **{f"n{i}{t}": i for i, t in enumerate(HOSTILE)}, self=1)
    hostile["input_size'"] = 2
    text = aot._loader(rnn, hostile, {}, "rnn")
    tree = ast.parse(text)  # no SyntaxError
    (value,) = [n.value for n in tree.body if isinstance(n, ast.Assign)
                and [t.id for t in n.targets if isinstance(t, ast.Name)] == ["SIZES"]]
    assert ast.literal_eval(value) == hostile
    doc = ast.get_docstring(tree, clean=False)
    assert doc.startswith("Loader for") and doc.isascii() and "\\" not in doc
    assert "coding" not in "\n".join(text.splitlines()[:2])


def test_a_100000_character_cell_name_gives_short_file_names(tmp_path):
    """--target llvm once failed with OSError (file name too long)."""
    rnn, sizes = load_cell("rnn")
    cell = dataclasses.replace(rnn, name="N" * 100_000)
    written, mod, cls = build(cell, sizes, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in written)
    assert all(len(p.name) <= 80 for p in written), [len(p.name) for p in written]
    assert cls is getattr(mod, "N" * 100_000)
    xs, params, states, _ = problem(rnn, sizes, "float32")
    assert cls("float32").forward(xs, params, states)[0].shape == (5, 3, H)
    # distinct long names stay distinct
    assert aot.file_prefix("N" * 100_000) != aot.file_prefix("N" * 99_999)


# ---------------------------------------------------------------------------------------------
# Outputs are independent arrays


def _edit_outputs(ys, final):
    ys *= 0.5
    for v in final.values():
        v += 1.0


@pytest.mark.parametrize("kind", ["native", "loader"])
@pytest.mark.parametrize("name", ["rnn", "indrnn"])
def test_outputs_do_not_alias_the_tape(natives, loaders, name, kind):
    """rnn's ys and its saved h' were one buffer: `ys *= 0.5` changed the gradient. Checked for
    the NumPy-level NativeCell and for the AOT loader's cell class."""
    cell, sizes = load_cell(name)
    c = natives(name) if kind == "native" else loaders[name][2]("float64")
    xs, params, states, d_ys = problem(cell, sizes, "float64")
    ys, final, tape = c.forward(xs, params, states)
    want = c.backward(tape, d_ys)
    ys, final, tape = c.forward(xs, params, states)
    _edit_outputs(ys, final)
    got = c.backward(tape, d_ys)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # gradients are independent of each other (rnn's dbias_ih and dbias_hh were one buffer)
    for k in got:
        got[k] *= 0.0
        for j in want:
            if j != k:
                assert np.array_equal(got[j], want[j]), (k, j)
        got[k] = want[k].copy()
    # a step's y is not its next state
    y, st = c.step(xs[0], states, params)
    h = {k: v.copy() for k, v in st.items()}
    y *= 0.0
    for k in st:
        np.testing.assert_array_equal(st[k], h[k])


# ---------------------------------------------------------------------------------------------
# The loader checks arguments as NativeCell does


def _bad_calls(xs, params, states, d_ys):
    """case -> function(cell) making one bad call (forward, backward or step)."""
    T, B = xs.shape[:2]
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    return {
        "xs float64": lambda c: c.forward(xs.astype(np.float64), params, states),
        "xs complex": lambda c: c.forward(xs + 1j, params, states),
        "xs list": lambda c: c.forward(xs.tolist(), params, states),
        "xs 2-d": lambda c: c.forward(xs[0], params, states),
        "xs features": lambda c: c.forward(xs[:, :, :-1], params, states),
        "param dtype": lambda c: c.forward(xs, dict(params, weight_ih=p64["weight_ih"]), states),
        "param shape": lambda c: c.forward(
            xs, dict(params, weight_ih=params["weight_ih"].T), states),
        "param missing": lambda c: c.forward(
            xs, {k: v for k, v in params.items() if k != "bias_hh"}),
        "param list": lambda c: c.forward(xs, dict(params, bias_ih=params["bias_ih"].tolist())),
        "state shape": lambda c: c.forward(xs, params, {"h": states["h"][:-1]}),
        "state dtype": lambda c: c.forward(xs, params, {"h": states["h"].astype(np.float64)}),
        "unknown state": lambda c: c.forward(xs, params, {"c": states["h"]}),
        "d_ys shape": lambda c: c.backward(c.forward(xs, params)[2], d_ys.reshape(T * B, -1)),
        "d_ys dtype": lambda c: c.backward(c.forward(xs, params)[2], d_ys.astype(np.float64)),
        "d_states shape": lambda c: c.backward(c.forward(xs, params)[2], d_ys, {"h": d_ys[0, :1]}),
        "step x dtype": lambda c: c.step(xs[0].astype(np.float64), states, params),
        "step x 1-d": lambda c: c.step(xs[0, 0], states, params),
    }


def test_loader_rejects_what_native_cell_rejects_with_the_same_message(loaders, natives):
    """The loader converted wrong dtypes silently and dropped imaginary parts."""
    cell, sizes, cls, _ = loaders["rnn"]
    loader, nc = cls("float32"), natives("rnn", "float32")
    cases = _bad_calls(*problem(cell, sizes, "float32"))
    got = {}
    for case, call in cases.items():
        for who, c in (("native", nc), ("loader", loader)):
            try:
                call(c)
                got[who, case] = "no error"
            except (TypeError, ValueError) as e:
                got[who, case] = f"{type(e).__name__}: {e}"
    for case in cases:
        assert got["native", case] != "no error", case
        assert got["loader", case] == got["native", case], case


@pytest.mark.parametrize("bad,words", [
    ([2.9, 2, 1, 1, 1], "ints, got float64"),
    ([3, 2, 1, 1], "5 ints"),
    ([True, True, True, True, True], "ints, got bool"),
    ([4, 3, 3, 2, 1], "non-increasing ints in [0, 3]"),
])
def test_loader_batch_sizes_must_be_ints(loaders, bad, words):
    """batch_sizes 2.9 was truncated to 2."""
    cell, sizes, cls, _ = loaders["rnn"]
    xs, params, states, _ = problem(cell, sizes, "float64")
    with pytest.raises(ValueError, match="batch_sizes must be") as e:
        cls("float64").forward(xs, params, states, batch_sizes=bad)
    assert words in str(e.value)


@pytest.mark.parametrize("T,B", [(0, 3), (5, 0), (0, 0)])
def test_loader_takes_empty_sequences_and_batches(loaders, natives, T, B):
    """T=0 or B=0 once failed with a reshape error; now the shapes match NativeCell's."""
    cell, sizes, cls, _ = loaders["rnn"]
    nc = natives("rnn")
    xs, params, _, _ = problem(cell, sizes, "float64")
    xs, d_ys = np.zeros((T, B, I)), np.zeros((T, B, H))
    got, want = cls("float64").forward(xs, params), nc.forward(xs, params)
    assert got[0].shape == want[0].shape == (T, B, H)
    assert {k: v.shape for k, v in got[1].items()} == {k: v.shape for k, v in want[1].items()}
    g, w = cls("float64").backward(got[2], d_ys), nc.backward(want[2], d_ys)
    assert {k: v.shape for k, v in g.items()} == {k: v.shape for k, v in w.items()}
    for k in w:
        np.testing.assert_array_equal(g[k], w[k], err_msg=k)
    y, _ = cls("float64").step(np.zeros((B, I)), None, params)
    assert y.shape == (B, H)


def _kernel_args(cell, sizes, T, B):
    """Valid float64 arguments of the forward kernel: xs rows, initial states, parameters."""
    params = numpy_ref.init_params(cell, sizes, np.random.default_rng(1), np.float64)
    return [np.zeros((T * B, I)), *[np.zeros((B, H)) for _ in cell.states],
            *[params[p.name] for p in cell.params]]


def test_loader_and_kernel_run_refuse_bad_kernel_calls_alike(loaders, natives):
    """The loader's _call once had checks and messages of its own, apart from Kernel.run's; both
    now run cellc/runtime/native_calls.py's. Same bad call, same error, for each check."""
    from cellc.native import _ARRAYS

    cell, sizes, _, path = loaders["rnn"]
    mod, kernel = import_loader(path), natives("rnn").program.forward_kernel
    T, B = 4, 2
    full = np.full(T, B)

    def with_arg(k, value):
        args = _kernel_args(cell, sizes, T, B)
        args[k] = value
        return args

    cases = {
        "too few arrays": (full, _kernel_args(cell, sizes, T, B)[:-1]),
        "float32 xs": (full, with_arg(0, np.zeros((T * B, I), np.float32))),
        "list xs": (full, with_arg(0, np.zeros((T * B, I)).tolist())),
        "short xs": (full, with_arg(0, np.zeros((T * B - 1, I)))),
        "strided xs": (full, with_arg(0, np.zeros((T * B, 2 * I))[:, ::2])),
        "batch_sizes increase": ([1, 2, 2, 2], _kernel_args(cell, sizes, T, B)),
        "batch_sizes exceed B": ([B + 1] * T, _kernel_args(cell, sizes, T, B)),
        "batch_sizes short": ([B], _kernel_args(cell, sizes, T, B)),
    }
    callers = {"loader": lambda bs, args: mod._call("rnn_forward_f64", T, B, bs, args),
               "Kernel.run": lambda bs, args: kernel.run(T, B, bs, args, _ARRAYS)}
    for case, (bs, args) in cases.items():
        got = {}
        for who, call in callers.items():
            with pytest.raises((TypeError, ValueError)) as e:
                call(bs, args)
            got[who] = f"{e.type.__name__}: {e.value}"
        assert got["loader"] == got["Kernel.run"], (case, got)
    # and a valid call gives the same numbers
    args = _kernel_args(cell, sizes, T, B)
    args[0] = np.random.default_rng(2).standard_normal((T * B, I))
    for a, b in zip(callers["loader"](full, args), callers["Kernel.run"](full, args)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_loader_kernels_are_described_as_jit_kernels_are(loaders, natives):
    """A loader's KERNELS entry is the same data that the JIT Kernel checks calls against
    (llvm_jit.kernel_spec): argument names and shapes, results, buffers, workspace."""
    _, _, _, path = loaders["rnn"]
    mod = import_loader(path)
    program = natives("rnn").program
    assert mod.KERNELS["rnn_forward_f64"] == program.forward_kernel.spec
    assert mod.KERNELS["rnn_backward_f64"] == program.backward_kernel.spec


def test_the_loader_is_the_runtime_module_plus_data(loaders):
    """The runtime module obeys the rules that let it be pasted into a loader: no `from
    __future__`, imports of ctypes, os and numpy only, every name it binds private (a public one
    could be taken by the cell's class alias, and names.GENERATED_NAMES would not know it), ASCII
    only. The loader holds its code verbatim; after it come only data and the cell class."""
    from cellc.runtime import native_calls

    text = Path(native_calls.__file__).read_text(encoding="utf-8")
    assert text.isascii()
    tree = ast.parse(text)
    imported, bound = set(), set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
            bound |= {a.asname or a.name for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bound |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    assert imported == {"ctypes", "os", "numpy"}, imported
    assert {n for n in bound if not n.startswith("_")} == {"ctypes", "os", "np"}, bound
    loader = loaders["rnn"][3].read_text()
    assert pasteable_source("native_calls") in loader
    after = loader.split(pasteable_source("native_calls"), 1)[1]
    defined = {n.name for n in ast.parse(after).body
               if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert defined == {"_Cell"}, defined  # no second copy of a check


# ---------------------------------------------------------------------------------------------
# T*B below 2**31


def test_check_rows_bounds():
    check_rows(1, MAX_ROWS)
    check_rows(2**16, 2**15 - 1)
    for T, B in [(1, MAX_ROWS + 1), (2**16, 2**15), (MAX_ROWS, 2)]:
        with pytest.raises(ValueError, match=r"T\*B = .* rows is more than the native kernels"):
            check_rows(T, B)


ROWS_SCRIPT = r"""
import json, resource, sys
import numpy as np
from numpy.lib.stride_tricks import as_strided
loader_path = sys.argv[1]
import importlib.util
spec = importlib.util.spec_from_file_location("rows_loader", loader_path)
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
from cellc.native import NativeCell, _ARRAYS
nc = NativeCell("cells/rnn.cell", dtype="float32", input_size=3, hidden_size=4)
params = nc.init_params(0)
loader = (getattr(mod, "_Cell", None) or mod.RNN)("float32")
# From here on, copying any of these inputs fails: 2 GiB more address space at most.
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
with open("/proc/self/statm") as f:
    used = int(f.read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + (2 << 30), hard))
zero = np.zeros(1, np.float32)
seq = as_strided(zero, shape=(2**16, 2**15, 3), strides=(0, 0, 0))  # T*B = 2**31, no memory
batch = as_strided(zero, shape=(2**31, 3), strides=(0, 0))
cases = {
    "NativeCell.forward": lambda: nc.forward(seq, params),
    "NativeCell.step": lambda: nc.step(batch, None, params),
    "Kernel.run": lambda: nc.program.forward_kernel.run(2**16, 2**15, np.zeros(0), [], _ARRAYS),
    "loader forward": lambda: loader.forward(seq, params),
    "loader step": lambda: loader.step(batch, None, params),
    "loader _call": lambda: mod._call("rnn_forward_f32", 2**16, 2**15, [], []),
}
out = {}
for case, fn in cases.items():
    try:
        fn()
        out[case] = "no error"
    except BaseException as e:
        out[case] = type(e).__name__ + ": " + str(e)
print(json.dumps(out))
"""


def test_t_times_b_over_2_31_is_refused_before_allocating(loaders, tmp_path):
    """Runs in a child whose address space cannot hold a copy of the (zero-stride) inputs:
    a check after the copy would show up as a MemoryError, not as the T*B error."""
    res = subprocess.run([sys.executable, "-c", ROWS_SCRIPT, str(loaders["rnn"][3])],
                         capture_output=True, text=True, cwd=ROOT, env=child_env(), timeout=300,
                         check=False)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    for case, msg in got.items():
        assert msg.startswith("ValueError: T*B = ") and "32-bit" in msg, (case, msg)


# ---------------------------------------------------------------------------------------------
# The output folder: flags, kills, modes


def cellc_cmd(*args, cwd, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "cellc", *map(str, args)], cwd=cwd,
                            env=env or child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_output_folder_named_like_a_flag(tmp_path):
    """--output=-evil once reached cc as flags (-evil/.cellc-x/rnn_f32.o): exit 0 and a library
    without kernels."""
    p = cellc_cmd("compile", CELLS_DIR / "rnn.cell", "--target", "llvm", "--sizes",
                  f"input_size={I},hidden_size={H}", "--output=-evil", cwd=tmp_path)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    lib = tmp_path / "-evil" / "librnn.so"
    so = ctypes.CDLL(str(lib))
    for k in ("forward", "backward", "step"):
        for t in ("f32", "f64"):
            assert hasattr(so, f"rnn_{k}_{t}"), f"rnn_{k}_{t}"
    assert sorted(os.listdir(tmp_path / "-evil")) == sorted(["librnn.so", "rnn.h", "rnn.py",
                                                             *BLAS_FILES])


def test_a_killed_build_leaves_nothing_beside_the_output(tmp_path):
    """SIGKILL during `compile --target llvm` once left a .cellc-* folder of object files in
    the output folder; the build now happens under the system temp dir."""
    out, tmp = tmp_path / "out", tmp_path / "systemp"
    out.mkdir()
    tmp.mkdir()
    p = cellc_cmd("compile", CELLS_DIR / "lstm.cell", "--target", "llvm", "--sizes",
                  f"input_size={I},hidden_size={H}", "-o", out, cwd=tmp_path,
                  env=child_env(TMPDIR=str(tmp)))
    deadline = time.monotonic() + 240
    try:
        while not any(out.rglob("*.o")) and not any(tmp.rglob("*.o")):  # mid-build
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "no object file appeared"
            time.sleep(0.01)
    finally:
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("where", ["same file system", "another file system"])
@pytest.mark.parametrize("umask", [0o027, 0o002])
def test_files_follow_the_umask(tmp_path, monkeypatch, request, umask, where):
    """Modes as cc -o and open() give them: 0o777 (the library) or 0o666 less the umask, also
    when the files are copied in from another file system (no mkstemp 0o600); the BLAS library
    and its license, copied from their package, as cp gives them: their mode less the umask."""
    if where == "another file system":
        shm = Path("/dev/shm")
        if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
            pytest.skip("no second file system for the temp dir")
        d = Path(tempfile.mkdtemp(dir=shm))
        request.addfinalizer(lambda: shutil.rmtree(d, ignore_errors=True))
        monkeypatch.setattr(tempfile, "tempdir", str(d))
    else:
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    cell, sizes = load_cell("rnn")
    out = tmp_path / "out"
    out.mkdir()
    old = os.umask(umask)
    try:
        written = aot.build(cell, sizes, out)
    finally:
        os.umask(old)
    assert sorted(os.listdir(out)) == sorted(["librnn.so", "rnn.h", "rnn.py", *BLAS_FILES])
    copied = {name: os.stat(src).st_mode & 0o777 for src, name in blas.bundle_files()}
    for p in written:
        want = copied.get(p.name, 0o777 if p.suffix == ".so" else 0o666) & ~umask
        assert oct(p.stat().st_mode & 0o777) == oct(want), p.name
    assert list(Path(tempfile.tempdir).glob("cellc-*")) == []
