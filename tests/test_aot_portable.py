"""The output of `cellc compile FILE --target llvm` is a self-contained folder.

- The headline command, exactly as the README writes it (`cellc compile cells/lstm.cell --target
  llvm`, no flags), builds size-generic kernels into lstm_llvm/: the library, header, loader, the
  BLAS library the library links (copied beside it, with its license) and an `$ORIGIN` RUNPATH.
- Copied to another place, the folder runs in an interpreter from which every package but numpy
  is out of reach (`python -I -S`, sys.path: the standard library and numpy alone; cellc,
  llvmlite, scipy_openblas32 and torch fail to import) with LD_LIBRARY_PATH unset, and the BLAS
  it maps is the folder's copy. A generic build at two sizes and a specialized build give
  forward and backward results (uneven `lengths`, in any order) equal to cellc's JIT
  (`cellc.native.NativeCell`) in this process.
- A C program (no Python) includes the header, sizes its buffers and workspace from it, calls a
  generic build's forward and backward, and prints numbers equal to NativeCell's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cellc.backends import numpy_ref
from cellc.native import NativeCell
from cellc.runtime import native_calls

ROOT = Path(__file__).resolve().parent.parent
LSTM = ROOT / "cells" / "lstm.cell"
GENERIC_SIZES = [(3, 5), (6, 2)]  # (input_size, hidden_size): one generic build serves both
SPECIALIZED = (4, 3)
T, B = 5, 3
LENGTHS = [3, 5, 1]  # not sorted: the loader sorts them
TOL = {"float64": 1e-10, "float32": 1e-4}  # relative to the reference's largest magnitude
CC = shutil.which(os.environ.get("CC", "cc"))


@pytest.fixture(scope="module", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """Nothing here (children included) touches the user's compile cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CELLC_CACHE_DIR", str(tmp_path_factory.mktemp("cellc-cache-portable")))
        yield


def child_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD") and not k.startswith("PYTHON")}
    return dict(env, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", **extra)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """{"generic": folder, "specialized": folder}: the headline command run in a fresh working
    directory holding cells/lstm.cell, and a --sizes build, at once."""
    work = tmp_path_factory.mktemp("headline")
    (work / "cells").mkdir()
    shutil.copy(LSTM, work / "cells" / "lstm.cell")
    I, H = SPECIALIZED
    cmds = {
        "generic": ["compile", "cells/lstm.cell", "--target", "llvm"],
        "specialized": ["compile", "cells/lstm.cell", "--target", "llvm", "--sizes",
                        f"input_size={I},hidden_size={H}", "-o", "spec_llvm"],
    }
    procs = {k: subprocess.Popen([sys.executable, "-m", "cellc", *cmd], cwd=work,
                                 env=dict(child_env(), PYTHONPATH=str(ROOT)),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, cmd in cmds.items()}
    out = {}
    for k, p in procs.items():
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, f"{cmds[k]} failed ({p.returncode}):\n{stderr}"
        out[k] = (work / ("lstm_llvm" if k == "generic" else "spec_llvm"), stdout)
    return out


def test_headline_command_writes_a_self_contained_folder(builds):
    folder, stdout = builds["generic"]
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(["liblstm.so", "lstm.h", "lstm.py", "libscipy_openblas.so",
                            "LICENSE.scipy-openblas32.txt"]), names
    wrote = [line.split(" ", 1)[1] for line in stdout.splitlines() if line.startswith("wrote ")]
    assert sorted(Path(w).name for w in wrote) == names
    assert wrote[-1] == "lstm_llvm/lstm.py"  # the loader last: what it needs is there first
    # the C prototypes follow, with the order of sizes[]
    assert "sizes[] = {I, H}" in stdout
    assert "void lstm_{forward,backward,step}_f32(int64_t T, int64_t B," in stdout
    assert "BSD" in (folder / "LICENSE.scipy-openblas32.txt").read_text()
    assert "size-generic" in (folder / "lstm.h").read_text()


@pytest.mark.parametrize("kind", ["generic", "specialized"])
def test_library_finds_its_blas_beside_it(builds, kind):
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("no readelf")
    folder = builds[kind][0]
    lib = next(folder.glob("liblstm.so"))
    dyn = subprocess.run([readelf, "-d", str(lib)], capture_output=True, text=True,
                         check=True).stdout
    runpaths = [line for line in dyn.splitlines() if "RPATH" in line or "RUNPATH" in line]
    assert len(runpaths) == 1 and runpaths[0].rstrip().endswith("[$ORIGIN]"), runpaths
    assert "[libscipy_openblas.so]" in dyn


# ---------------------------------------------------------------------------------------------
# a copy of the folders, run where only numpy can be imported

BARE_SCRIPT = r"""
import json, sys
sys.path[:0] = sys.argv[1:3]  # numpy's folder, then the copied build folders' parent
report = {"importable": []}
for name in ("cellc", "llvmlite", "scipy_openblas32", "torch"):
    try:
        __import__(name)
        report["importable"].append(name)
    except ImportError:
        pass
import importlib.util
import numpy as np

def load(folder):
    spec = importlib.util.spec_from_file_location("lstm_" + folder.rsplit("/", 1)[-1],
                                                  folder + "/lstm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

problems = json.loads(open(sys.argv[3]).read())
data = dict(np.load(sys.argv[4]))
out = {}
for key, p in problems.items():
    mod = load(p["folder"])
    cell = mod.LSTM(dtype=p["dtype"], **p["sizes"]) if p["pass_sizes"] else mod.LSTM(p["dtype"])
    g = lambda name: data[key + "/" + name].astype(p["dtype"])
    params = {n: g("param/" + n) for n in p["params"]}
    states = {n: g("state/" + n) for n in p["states"]}
    d_states = {n: g("dstate/" + n) for n in p["states"]}
    ys, final, tape = cell.forward(g("xs"), params, states, lengths=p["lengths"])
    grads = cell.backward(tape, g("d_ys"), d_states)
    out[key + "/ys"] = ys
    out.update({f"{key}/final/{k}": v for k, v in final.items()})
    out.update({f"{key}/grad/{k}": v for k, v in grads.items()})
maps = open("/proc/self/maps").read().splitlines()
report["blas"] = sorted({line.split()[-1] for line in maps if "openblas" in line})
report["modules"] = sorted(m for m in sys.modules
                           if m.split(".")[0] in ("cellc", "llvmlite", "torch", "scipy_openblas32"))
np.savez(sys.argv[5], **out)
print(json.dumps(report))
"""


def _problem(I, H, dtype, seed):
    from cellc import load_cell

    cell = load_cell(LSTM)
    rng = np.random.default_rng(seed)
    sizes = cell.bind(input_size=I, hidden_size=H)
    params = {k: v + 0.1 * rng.standard_normal(v.shape)
              for k, v in numpy_ref.init_params(cell, sizes, rng, np.float64).items()}
    return cell, {
        "xs": rng.standard_normal((T, B, I)),
        "d_ys": rng.standard_normal((T, B, H)),
        **{f"param/{k}": v for k, v in params.items()},
        **{f"state/{s.name}": 0.5 * rng.standard_normal((B, H)) for s in cell.states},
        **{f"dstate/{s.name}": rng.standard_normal((B, H)) for s in cell.states},
    }


def _jit_reference(cell, data, I, H, dtype):
    """forward + backward by cellc's JIT, on the values the loader sees (cast to dtype)."""
    nc = NativeCell(cell, dtype=dtype, input_size=I, hidden_size=H)
    c = lambda k: data[k].astype(dtype)
    names = [s.name for s in cell.states]
    params = {p.name: c(f"param/{p.name}") for p in cell.params}
    ys, final, tape = nc.forward(c("xs"), params, {n: c(f"state/{n}") for n in names},
                                 lengths=LENGTHS)
    grads = nc.backward(tape, c("d_ys"), {n: c(f"dstate/{n}") for n in names})
    return {"ys": ys, **{f"final/{k}": v for k, v in final.items()},
            **{f"grad/{k}": v for k, v in grads.items()}}


def assert_rel(got, want, tol, what):
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = max(float(np.abs(want).max()), 1e-3)
    err = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} * {scale:.3g}"


@pytest.fixture(scope="module")
def bare_run(builds, tmp_path_factory):
    base = tmp_path_factory.mktemp("bare")
    moved = base / "elsewhere"
    folders = {k: Path(shutil.copytree(f, moved / f"{k}_copy")) for k, (f, _) in builds.items()}
    # numpy, and nothing else of site-packages, by symlinks
    numpy_dir = Path(np.__file__).resolve().parent
    pkgs = base / "pkgs"
    pkgs.mkdir()
    for name in ("numpy", "numpy.libs"):
        src = numpy_dir.parent / name
        if src.exists():
            (pkgs / name).symlink_to(src)
    problems, data, refs = {}, {}, {}
    runs = [("generic", I, H, dtype) for I, H in GENERIC_SIZES for dtype in ("float64",)]
    runs += [("generic", *GENERIC_SIZES[0], "float32"), ("specialized", *SPECIALIZED, "float64")]
    for n, (kind, I, H, dtype) in enumerate(runs):
        key = f"{kind}-{I}-{H}-{dtype}"
        cell, d = _problem(I, H, dtype, seed=n)
        data.update({f"{key}/{k}": v for k, v in d.items()})
        problems[key] = {"folder": str(folders[kind]), "dtype": dtype, "lengths": LENGTHS,
                         "sizes": {"input_size": I, "hidden_size": H},
                         "pass_sizes": kind == "generic",
                         "params": [p.name for p in cell.params],
                         "states": [s.name for s in cell.states]}
        refs[key] = (_jit_reference(cell, d, I, H, dtype), dtype)
    (base / "problems.json").write_text(json.dumps(problems))
    np.savez(base / "in.npz", **data)
    res = subprocess.run(
        [sys.executable, "-I", "-S", "-c", BARE_SCRIPT, str(pkgs), str(moved),
         str(base / "problems.json"), str(base / "in.npz"), str(base / "out.npz")],
        capture_output=True, text=True, cwd=base, env=child_env(), timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    with np.load(base / "out.npz") as f:
        got = {k: f[k] for k in f.files}
    return folders, json.loads(res.stdout.strip().splitlines()[-1]), got, refs


def test_bare_interpreter_reaches_only_numpy(bare_run):
    _, report, _, _ = bare_run
    assert report["importable"] == [], report["importable"]
    assert report["modules"] == [], report["modules"]


def test_blas_loaded_is_the_folders_copy(bare_run):
    """The one scipy-openblas32 mapped is a copied folder's (numpy's own ILP64 copy, under
    another name in numpy.libs, may be mapped too). One process maps it once: the second
    library's dependency is met by the SONAME already loaded."""
    folders, report, _, _ = bare_run
    ours = [p for p in report["blas"] if Path(p).name == "libscipy_openblas.so"]
    assert len(ours) == 1 and Path(ours[0]).parent in folders.values(), report["blas"]
    assert all(Path(p).name == "libscipy_openblas.so" or "numpy" in p for p in report["blas"])


def test_copied_folders_match_the_jit(bare_run):
    _, _, got, refs = bare_run
    assert len(refs) == 4
    for key, (ref, dtype) in refs.items():
        names = {k for k in got if k.startswith(key + "/")}
        assert names == {f"{key}/{k}" for k in ref}, (key, sorted(names))
        for k, want in ref.items():
            assert got[f"{key}/{k}"].dtype == np.dtype(dtype)
            assert_rel(got[f"{key}/{k}"], want, TOL[dtype], f"{key} {k}")
        # past a sequence's end the outputs are zero
        for b, L in enumerate(LENGTHS):
            assert np.all(got[f"{key}/ys"][L:, b] == 0), (key, b)


def test_comparison_can_fail(bare_run):
    """Guard: the two generic sizes' answers differ from each other's reference."""
    _, _, got, refs = bare_run
    a, b = (f"generic-{I}-{H}-float64" for I, H in GENERIC_SIZES)
    with pytest.raises(AssertionError):
        assert_rel(got[f"{a}/grad/h"], refs[b][0]["grad/h"], 1e-4, "h")


def test_generic_loader_checks_sizes_as_nativecell_does(builds):
    """Bad, missing and unknown sizes: the loader's error is NativeCell's (type and message)."""
    folder = builds["generic"][0]
    cases = [{}, {"input_size": 3}, {"input_size": 3, "hidden_size": 0},
             {"input_size": 3, "hidden_size": 4, "depth": 2},
             {"input_size": 3, "hidden_size": 4.0}, {"input_size": True, "hidden_size": 4}]
    script = ("import importlib.util, json, sys\n"
              "spec = importlib.util.spec_from_file_location('lstm_gen', sys.argv[1])\n"
              "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
              "out = []\n"
              "for kw in json.loads(sys.argv[2]):\n"
              "    kw = {k: (True if v == 'True' else v) for k, v in kw.items()}\n"
              "    try:\n"
              "        m.LSTM(**kw); out.append('no error')\n"
              "    except Exception as e:\n"
              "        out.append(type(e).__name__ + ': ' + str(e))\n"
              "print(json.dumps(out))\n")
    wire = [{k: ("True" if v is True else v) for k, v in kw.items()} for kw in cases]
    res = subprocess.run([sys.executable, "-I", "-c", script, str(folder / "lstm.py"),
                          json.dumps(wire)], capture_output=True, text=True, env=child_env(),
                         timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    for kw, message in zip(cases, got):
        try:
            NativeCell(LSTM, **kw)
            want = "no error"
        except Exception as e:
            want = type(e).__name__ + ": " + str(e)
        # NativeCell picks either form of lstm.cell; a build is of one (proj_size 0 here), so
        # its loader does not list proj_size among the sizes it takes
        want = want.replace(", 'proj_size'", "")
        assert message == want, (kw, message, want)
    assert all(m != "no error" for m in got)


def test_non_whole_sizes_are_refused_like_nativecell(tmp_path):
    """A cell with a dim H/2: odd H is refused by the generic loader with NativeCell's message."""
    src = tmp_path / "half.cell"
    src.write_text("cell Half(input_size I, hidden_size H):\n    input  x[I]\n    state  h[H]\n"
                   "    param  w[H/2, I], u[H, H/2]\n"
                   "    h' = tanh(u @ (w @ x) + h)\n    output h'\n")
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "cellc", "compile", str(src), "--target", "llvm",
                          "-o", str(out)], capture_output=True, text=True, cwd=tmp_path,
                         env=dict(child_env(), PYTHONPATH=str(ROOT)), timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import half\n"
              "for h in (4, 5):\n"
              "    try:\n"
              "        c = half.Half(input_size=3, hidden_size=h); print('ok', c._param_shapes)\n"
              "    except ValueError as e:\n"
              "        print('ValueError: ' + str(e))\n")
    res = subprocess.run([sys.executable, "-I", "-c", script, str(out)], capture_output=True,
                         text=True, env=child_env(), timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    ok, refused = res.stdout.splitlines()
    assert ok == "ok [('w', (2, 3)), ('u', (4, 2))]", ok
    with pytest.raises(ValueError) as e:
        NativeCell(src, input_size=3, hidden_size=5)
    assert refused == f"ValueError: {e.value}", refused


# ---------------------------------------------------------------------------------------------
# a C program against the header: no Python


def _c_program(kernels, prefix, I, H, batch_sizes, n_out):
    """C source that reads the forward's arguments and the backward's seeds (float64, in call
    order) from argv[1], calls forward then backward, and prints the outputs and gradients with
    %.17g. Buffer lengths are the specs' shapes at these sizes; the workspace is the header's
    macro, the sizes[] indices the header's."""
    P = prefix.upper()
    fwd, bwd = kernels[f"{prefix}_forward_f64"], kernels[f"{prefix}_backward_f64"]
    sizes = {"I": I, "H": H}

    def count(spec):  # elements of an array of this shape spec
        dims = [d if isinstance(d, str) else native_calls._size_value(d, sizes) for d in spec]
        return int(np.prod(native_calls._shape(dims, T, B)))

    lines = [f'#include "{prefix}.h"', "#include <stdio.h>", "#include <stdlib.h>",
             "static double *take(FILE *f, size_t n) {",
             "    double *p = malloc((n ? n : 1) * sizeof(double));",
             "    if (!p || fread(p, sizeof(double), n, f) != n) exit(3);",
             "    return p;", "}",
             "static void show(const char *what, const double *p, size_t n) {",
             '    printf("%s", what);',
             '    for (size_t i = 0; i < n; i++) printf(" %.17g", p[i]);',
             '    printf("\\n");', "}",
             "int main(int argc, char **argv) {",
             f"    int64_t T = {T}, B = {B};",
             f"    int64_t sizes[{P}_N_SIZES];",
             f"    sizes[{P}_SIZE_I] = {I};", f"    sizes[{P}_SIZE_H] = {H};",
             f"    int64_t batch_sizes[{T}] = {{{', '.join(map(str, batch_sizes))}}};",
             '    FILE *in = fopen(argv[1], "rb");', "    if (!in) return 2;",
             f"    void *fargs[{len(fwd['args'])}];"]
    lines += [f"    fargs[{k}] = take(in, {count(spec)});"
              for k, (_, spec) in enumerate(fwd["args"])]
    lines += [f"    void *fres[{max(1, fwd['buffers'])}];"]
    bufs = {}
    for kind, k, spec in fwd["results"]:
        if kind == "buf" and k not in bufs:
            bufs[k] = count(spec)
            lines.append(f"    fres[{k}] = malloc({bufs[k]} * sizeof(double));")
    lines += [f"    double *ws = malloc({P}_FORWARD_F64_WORKSPACE(T, B, sizes) * sizeof(double));",
              f"    {prefix}_forward_f64(T, B, batch_sizes, fargs, fres, ws, sizes);",
              "    free(ws);"]
    for i, (_, k, spec) in enumerate(fwd["results"][:n_out]):
        lines.append(f'    show("out{i}", fres[{k}], {count(spec)});')
    # the backward: the forward's tape (buffers or its own arguments), then the seeds
    tape = fwd["results"][n_out:]
    lines.append(f"    void *bargs[{len(bwd['args'])}];")
    for i, (kind, k, _) in enumerate(tape):
        lines.append(f"    bargs[{i}] = {'fargs' if kind == 'arg' else 'fres'}[{k}];")
    for i in range(len(tape), len(bwd["args"])):
        lines.append(f"    bargs[{i}] = take(in, {count(bwd['args'][i][1])});")
    lines.append(f"    void *bres[{max(1, bwd['buffers'])}];")
    bbufs = {}
    for kind, k, spec in bwd["results"]:
        if kind == "buf" and k not in bbufs:
            bbufs[k] = count(spec)
            lines.append(f"    bres[{k}] = malloc({bbufs[k]} * sizeof(double));")
    lines += [f"    ws = malloc({P}_BACKWARD_F64_WORKSPACE(T, B, sizes) * sizeof(double));",
              f"    {prefix}_backward_f64(T, B, batch_sizes, bargs, bres, ws, sizes);"]
    for i, (kind, k, spec) in enumerate(bwd["results"]):
        src = "bargs" if kind == "arg" else "bres"
        lines.append(f'    show("grad{i}", {src}[{k}], {count(spec)});')
    lines += ["    return 0;", "}", ""]
    return "\n".join(lines)


@pytest.mark.skipif(CC is None, reason="no C compiler")
def test_c_program_against_the_header(builds, tmp_path):
    folder = builds["generic"][0]
    # the kernel data, read from the loader's text (no import: it would load the library here)
    ns: dict = {}
    text = (folder / "lstm.py").read_text()
    exec(compile(text[text.index("\nKERNELS = "):text.index("\n_LIB = ")], "KERNELS", "exec"),
         ns)
    kernels = ns["KERNELS"]
    I, H = GENERIC_SIZES[0]
    cell, data = _problem(I, H, "float64", seed=11)
    order = np.argsort(-np.array(LENGTHS), kind="stable")  # the C caller sorts, longest first
    lengths = np.array(LENGTHS)[order]
    batch_sizes = [int((lengths > t).sum()) for t in range(T)]
    xs = data["xs"][:, order]
    states = {s.name: data[f"state/{s.name}"][order] for s in cell.states}
    d_states = {s.name: data[f"dstate/{s.name}"][order] for s in cell.states}
    params = {p.name: data[f"param/{p.name}"] for p in cell.params}
    d_ys = data["d_ys"][:, order]
    stream = [xs, *states.values(), *params.values(), *d_states.values(), d_ys]
    (tmp_path / "in.bin").write_bytes(b"".join(np.ascontiguousarray(a, np.float64).tobytes()
                                               for a in stream))
    src = tmp_path / "use.c"
    src.write_text(_c_program(kernels, "lstm", I, H, batch_sizes, len(cell.states) + 1))
    exe = tmp_path / "use"
    res = subprocess.run([CC, "-std=c99", "-Wall", "-Werror", "-O1", "-I", str(folder),
                          "-o", str(exe), str(src), f"-L{folder}", "-l:liblstm.so",
                          f"-Wl,-rpath,{folder}", "-lm"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    run = subprocess.run([str(exe), str(tmp_path / "in.bin")], capture_output=True, text=True,
                         env=child_env(), timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    printed = {line.split()[0]: np.array([float(v) for v in line.split()[1:]])
               for line in run.stdout.splitlines()}
    nc = NativeCell(cell, dtype="float64", input_size=I, hidden_size=H)
    ys, final, tape = nc.forward(xs, params, states, lengths=lengths)
    grads = nc.backward(tape, d_ys, d_states)
    want_out = [*final.values(), ys]
    want_grads = [grads["xs"], *(grads[s.name] for s in cell.states),
                  *(grads[p.name] for p in cell.params)]
    assert len(printed) == len(want_out) + len(want_grads), sorted(printed)
    for i, w in enumerate(want_out):
        assert_rel(printed[f"out{i}"], w.reshape(-1), TOL["float64"], f"out{i}")
    for i, w in enumerate(want_grads):
        assert_rel(printed[f"grad{i}"], w.reshape(-1), TOL["float64"], f"grad{i}")
    assert np.abs(printed["out2"]).max() > 0.05  # the numbers are not trivially zero
