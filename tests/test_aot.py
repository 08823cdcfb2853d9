"""Ahead-of-time artifacts: `cellc compile FILE --target llvm --sizes ... -o DIR` and
`cellc show FILE --emit llvm` (tests/test_aot_portable.py has the build without --sizes, the
folder run where only numpy is installed, and a C program against the header).

- lstm.cell and gru.cell compile to exactly lib<name>.so, <name>.h and <name>.py, with the BLAS
  library they link and its license beside them; `compile` prints the C prototypes.
- The header declares every kernel (forward/backward/step in f32 and f64) and its WORKSPACE
  macro, and is valid C (cc -fsyntax-only; skipped without a C compiler).
- The loader, run in a fresh interpreter that imports neither cellc nor llvmlite nor torch, gives
  forward, backward, step and variable-length (batch_sizes, or lengths in any order) results
  that match the NumPy
  reference (float64 1e-10, float32 1e-4, relative to the reference's largest magnitude), and
  rejects bad arrays with errors (a wrong dtype, complex input or fractional batch_sizes too:
  nothing is converted). tests/test_hostile_native.py has the hostile cases.
- The folder is the whole artifact: a copy of it runs elsewhere, under `python -I`.
- Usage errors: incomplete or bad --sizes and -o naming a regular file exit with status 2 and write
  nothing; a broken .cell file exits with status 1 and a located error; a failing link exits
  with status 1 and leaves no files behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cellc
from cellc.backends import numpy_ref

ROOT = Path(__file__).resolve().parent.parent
CELLS_DIR = ROOT / "cells"
I, H, T, B = 3, 4, 5, 3
SIZES = f"input_size={I},hidden_size={H}"
TOL = {"float64": 1e-10, "float32": 1e-4}  # relative to the reference's largest magnitude
NAMES = ["lstm", "gru"]
KERNELS = [f"{k}_{t}" for k in ("forward", "backward", "step") for t in ("f32", "f64")]
BLAS = ["libscipy_openblas.so", "LICENSE.scipy-openblas32.txt"]  # copied beside the library


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """Nothing in this session (children included) touches the user's compile cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CELLC_CACHE_DIR", str(tmp_path_factory.mktemp("cellc-cache-aot")))
        yield


def child_env(**extra) -> dict:
    return dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", **extra)


def cellc_cmd(*args, env=None, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "cellc", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env or child_env(), timeout=300, check=False)


def assert_rel(got, want, tol, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite values"
    if want.size == 0:
        return
    scale = max(float(np.abs(want).max()), 1e-3)
    err = float(np.abs(got.astype(np.float64) - want).max())
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} * {scale:.3g}"


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """name -> (output dir, CompletedProcess-like (rc, stdout, stderr)); both compiles run at
    once."""
    base = tmp_path_factory.mktemp("aot")
    procs = {}
    for name in NAMES:
        out = base / name
        procs[name] = (out, subprocess.Popen(
            [sys.executable, "-m", "cellc", "compile", f"cells/{name}.cell", "--target", "llvm",
             "--sizes", SIZES, "-o", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=child_env()))
    result = {}
    for name, (out, p) in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        result[name] = (out, p.returncode, stdout, stderr)
    return result


def built(builds, name) -> Path:
    out, rc, _, stderr = builds[name]
    assert rc == 0, f"cellc compile failed ({rc}):\n{stderr}"
    return out


@pytest.mark.parametrize("name", NAMES)
def test_compile_writes_three_files(builds, name):
    out = built(builds, name)
    files = [*BLAS, f"lib{name}.so", f"{name}.h", f"{name}.py"]
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    _, _, stdout, _ = builds[name]
    wrote = [line for line in stdout.splitlines() if line.startswith("wrote ")]
    assert wrote == [f"wrote {out / f}" for f in files]  # the loader last
    rest = stdout.splitlines()[len(wrote):]
    assert rest[0] == (f"C kernels, declared in {out / f'{name}.h'} (compiled for I={I},"
                       f" H={H}, sizes[] not read):")
    for line, t in zip(rest[1:], ("float", "double")):
        assert line.startswith(f"  void {name}_{{forward,backward,step}}_f"), line
        assert f" {t} *workspace, const int64_t *sizes);" in line, line
    assert len(rest) == 3, rest
    assert (out / f"lib{name}.so").read_bytes()[:4] == b"\x7fELF"


@pytest.mark.parametrize("name", NAMES)
def test_header_declares_every_kernel(builds, name):
    text = (built(builds, name) / f"{name}.h").read_text()
    declared = re.findall(r"^void (\w+)\(int64_t T, int64_t B, const int64_t \*batch_sizes,"
                          r" void \*const \*args, void \*const \*results,"
                          r" (float|double) \*workspace, const int64_t \*sizes\);$", text,
                          re.MULTILINE)
    assert sorted(declared) == sorted(
        (f"{name}_{k}", "float" if k.endswith("f32") else "double") for k in KERNELS)
    for k in KERNELS:
        assert re.search(rf"^#define {name.upper()}_{k.upper()}_WORKSPACE\(T, B\) \(", text,
                         re.MULTILINE), k
    # every macro the prose names exists (it once documented PREFIX_WORKSPACE_<kernel>)
    defined = set(re.findall(r"^#define (\w+)", text, re.MULTILINE))
    mentioned = set(re.findall(r"\b[A-Z][A-Z0-9_]*WORKSPACE[A-Z0-9_]*\b", text.split("*/")[0]))
    assert mentioned and mentioned <= defined, mentioned - defined
    guard = f"CELLC_{name.upper()}_H"
    assert f"#ifndef {guard}" in text and f"#define {guard}" in text
    assert 'extern "C"' in text


@pytest.mark.parametrize("name", NAMES)
def test_header_is_valid_c(builds, name, tmp_path):
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        pytest.skip("no C compiler")
    header = built(builds, name) / f"{name}.h"
    res = subprocess.run([cc, "-fsyntax-only", "-Wall", "-Werror", "-x", "c", str(header)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    # and usable: the workspace macros are integer expressions of T and B
    src = tmp_path / "use.c"
    src.write_text(f'#include "{header}"\n'
                   f"int main(void) {{ long n = {name.upper()}_FORWARD_F64_WORKSPACE(5, 3);"
                   f" return n > 0 ? 0 : 1; }}\n")
    res = subprocess.run([cc, "-fsyntax-only", "-Wall", "-Werror", str(src)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr


# ---------------------------------------------------------------------------------------------
# the loader in a fresh interpreter

LOADER_SCRIPT = r"""
import importlib.util, json, sys
import numpy as np

loader, cls_name, inputs, outputs = sys.argv[1:5]
spec = importlib.util.spec_from_file_location("cellc_aot_loader_under_test", loader)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
inp = dict(np.load(inputs))
lengths = [int(n) for n in inp["lengths"]]
batch_sizes = [sum(1 for n in lengths if n > t) for t in range(inp["xs"].shape[0])]
out, errors = {}, {}
for dtype in ("float32", "float64"):
    cell = getattr(mod, cls_name)(dtype)
    c = lambda a: a.astype(dtype)
    params = {k[7:]: c(v) for k, v in inp.items() if k.startswith("param__")}
    states = {k[7:]: c(v) for k, v in inp.items() if k.startswith("state__")}
    d_states = {k[8:]: c(v) for k, v in inp.items() if k.startswith("dstate__")}
    xs = c(inp["xs"])
    ys, final, tape = cell.forward(xs, params, states)
    grads = cell.backward(tape, c(inp["d_ys"]), d_states)
    out[f"{dtype}/ys"] = ys
    out.update({f"{dtype}/final/{k}": v for k, v in final.items()})
    out.update({f"{dtype}/grad/{k}": v for k, v in grads.items()})
    st = dict(states)
    steps = []
    for t in range(xs.shape[0]):
        y, st = cell.step(xs[t], st, params)
        steps.append(y)
    out[f"{dtype}/step_ys"] = np.stack(steps)
    out.update({f"{dtype}/step_final/{k}": v for k, v in st.items()})
    ys, final, _ = cell.forward(xs, params, states, batch_sizes=batch_sizes)
    out[f"{dtype}/packed_ys"] = ys
    out.update({f"{dtype}/packed_final/{k}": v for k, v in final.items()})
    ys, final, _ = cell.forward(xs, params, states, lengths=lengths[::-1])  # not sorted
    out[f"{dtype}/lengths_ys"] = ys
    out.update({f"{dtype}/lengths_final/{k}": v for k, v in final.items()})
    bad = {
        "batch_sizes increase": lambda: cell.forward(
            xs, params, states, batch_sizes=batch_sizes[::-1]),
        "batch_sizes exceed B": lambda: cell.forward(
            xs, params, states, batch_sizes=[xs.shape[1] + 1] * xs.shape[0]),
        "wrong-shaped parameter": lambda: cell.forward(
            xs, dict(params, weight_ih=params["weight_ih"][:, :-1].copy()), states),
        "missing parameter": lambda: cell.forward(
            xs, {k: v for k, v in params.items() if k != "bias_hh"}, states),
        "wrong features": lambda: cell.forward(xs[:, :, :-1].copy(), params, states),
        "float16 dtype": lambda: getattr(mod, cls_name)("float16"),
        "xs of the other dtype": lambda: cell.forward(
            xs.astype("float64" if dtype == "float32" else "float32"), params, states),
        "complex xs": lambda: cell.forward(xs + 1j, params, states),
        "fractional batch_sizes": lambda: cell.forward(xs, params, states,
                                                       batch_sizes=[b + 0.9 for b in batch_sizes]),
        "lengths and batch_sizes": lambda: cell.forward(xs, params, states, lengths=lengths,
                                                        batch_sizes=batch_sizes),
        "lengths past T": lambda: cell.forward(xs, params, states,
                                               lengths=[xs.shape[0] + 1] * xs.shape[1]),
        "fractional lengths": lambda: cell.forward(xs, params, states,
                                                   lengths=[n + 0.5 for n in lengths]),
        "other sizes": lambda: getattr(mod, cls_name)(dtype, input_size=1, hidden_size=1),
    }
    for case, fn in bad.items():
        try:
            fn()
            errors[f"{dtype}/{case}"] = "no error"
        except Exception as e:
            errors[f"{dtype}/{case}"] = type(e).__name__ + ": " + str(e)
np.savez(outputs, **out)
print(json.dumps({"errors": errors, "modules": sorted(m for m in sys.modules
                  if m.split(".")[0] in ("cellc", "llvmlite", "torch"))}))
"""


def problem(name):
    cell = cellc.load_cell(CELLS_DIR / f"{name}.cell")
    sizes = cell.bind(input_size=I, hidden_size=H)
    rng = np.random.default_rng(7)
    params = {k: v + 0.1 * rng.standard_normal(v.shape)
              for k, v in numpy_ref.init_params(cell, sizes, rng, np.float64).items()}
    states = {s.name: 0.5 * rng.standard_normal((B, H)) for s in cell.states}
    return cell, sizes, {
        "xs": rng.standard_normal((T, B, I)),
        "params": params,
        "states": states,
        "d_ys": rng.standard_normal((T, B, H)),
        "d_states": {k: rng.standard_normal((B, H)) for k in states},
        "lengths": np.array([5, 3, 1]),  # sorted, as batch_sizes needs
    }


@pytest.fixture(scope="module")
def loader_runs(builds, tmp_path_factory):
    """name -> (problem, report, outputs): the loader run in fresh interpreters (both at once)."""
    base = tmp_path_factory.mktemp("loader")
    procs = {}
    for name in NAMES:
        cell, sizes, p = problem(name)
        inputs = base / f"{name}-in.npz"
        np.savez(inputs, xs=p["xs"], d_ys=p["d_ys"], lengths=p["lengths"],
                 **{f"param__{k}": v for k, v in p["params"].items()},
                 **{f"state__{k}": v for k, v in p["states"].items()},
                 **{f"dstate__{k}": v for k, v in p["d_states"].items()})
        outputs = base / f"{name}-out.npz"
        loader = built(builds, name) / f"{name}.py"
        # a clean interpreter: no PYTHONPATH, started outside the repository (cellc stays
        # importable through site-packages, so the test checks it is not imported)
        env = {k: v for k, v in child_env().items() if not k.startswith("PYTHON")}
        procs[name] = (cell, sizes, p, outputs, subprocess.Popen(
            [sys.executable, "-c", LOADER_SCRIPT, str(loader), cell.name, str(inputs),
             str(outputs)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=base, env=env))
    result = {}
    for name, (cell, sizes, p, outputs, proc) in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, (
            f"loader child for {name} failed ({proc.returncode}):\n{stderr}")
        with np.load(outputs) as f:
            data = {k: f[k] for k in f.files}
        result[name] = (cell, sizes, p, json.loads(stdout.strip().splitlines()[-1]), data)
    return result


@pytest.mark.parametrize("name", NAMES)
def test_loader_imports_neither_cellc_nor_llvmlite(loader_runs, name):
    report = loader_runs[name][3]
    assert report["modules"] == [], report["modules"]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", NAMES)
def test_loader_matches_reference(loader_runs, name, dtype):
    cell, sizes, p, _, got = loader_runs[name]
    c = lambda a: a.astype(dtype).astype(np.float64)  # the values the kernels saw
    ys, final, grads = numpy_ref.backward(
        cell, sizes, c(p["xs"]), {k: c(v) for k, v in p["params"].items()},
        {k: c(v) for k, v in p["states"].items()}, c(p["d_ys"]),
        {k: c(v) for k, v in p["d_states"].items()}, dtype=np.float64)
    tol = TOL[dtype]
    assert got[f"{dtype}/ys"].dtype == np.dtype(dtype)
    assert_rel(got[f"{dtype}/ys"], ys, tol, "ys")
    assert_rel(got[f"{dtype}/step_ys"], ys, tol, "stepped ys")
    for k in final:
        assert_rel(got[f"{dtype}/final/{k}"], final[k], tol, f"final {k}")
        assert_rel(got[f"{dtype}/step_final/{k}"], final[k], tol, f"stepped final {k}")
    assert {k.split("/", 2)[2] for k in got if k.startswith(f"{dtype}/grad/")} == set(grads)
    for k in grads:
        assert_rel(got[f"{dtype}/grad/{k}"], grads[k], tol, f"grad {k}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("how", ["packed", "lengths"])
def test_loader_batch_sizes_match_per_sequence_reference(loader_runs, name, dtype, how):
    """batch_sizes (sequences sorted longest first) and lengths (here in the other order: the
    loader sorts them and puts the results back in the caller's order)."""
    cell, sizes, p, _, got = loader_runs[name]
    c = lambda a: a.astype(dtype).astype(np.float64)
    ys = got[f"{dtype}/{how}_ys"]
    lengths = p["lengths"] if how == "packed" else p["lengths"][::-1]
    for b, L in enumerate(lengths):
        w_ys, w_final = numpy_ref.forward(
            cell, sizes, c(p["xs"][:L, b : b + 1]), {k: c(v) for k, v in p["params"].items()},
            {k: c(v[b : b + 1]) for k, v in p["states"].items()}, dtype=np.float64)
        assert_rel(ys[:L, b], w_ys[:, 0], TOL[dtype], f"ys[:{L}, {b}]")
        assert np.all(ys[L:, b] == 0), f"outputs past length {L} of sequence {b}"
        for k in w_final:
            assert_rel(got[f"{dtype}/{how}_final/{k}"][b], w_final[k][0], TOL[dtype],
                       f"final {k}[{b}]")


LOADER_ERRORS = {
    "batch_sizes increase": "ValueError: batch_sizes",
    "batch_sizes exceed B": "ValueError: batch_sizes",
    "wrong-shaped parameter": "ValueError: parameter 'weight_ih' must have shape",
    "missing parameter": "ValueError: missing parameter 'bias_hh'",
    "wrong features": "ValueError: xs",
    "float16 dtype": "TypeError: dtype must be float32 or float64",
    "xs of the other dtype": "TypeError: xs must be float",
    "complex xs": "TypeError: xs must be float",
    "fractional batch_sizes": f"ValueError: batch_sizes must be {T} ints, got float64",
    "lengths and batch_sizes": "ValueError: give lengths or batch_sizes, not both",
    "lengths past T": f"ValueError: lengths must lie in [0, {T}]",
    "fractional lengths": f"ValueError: lengths must be {B} ints, got float64",
    "other sizes": f"ValueError: {{name}}: this library is compiled for input_size={I},"
                   f" hidden_size={H}, not",
}


@pytest.mark.parametrize("case", list(LOADER_ERRORS))
@pytest.mark.parametrize("name", NAMES)
def test_loader_rejects_bad_arguments(loader_runs, name, case):
    errors = loader_runs[name][3]["errors"]
    want = LOADER_ERRORS[case].replace("{name}", name.upper())
    for dtype in ("float32", "float64"):
        assert errors[f"{dtype}/{case}"].startswith(want), errors[f"{dtype}/{case}"]


def test_loader_check_can_fail(loader_runs):
    """Guard: the gru loader's answer is not the lstm reference's (the comparison discriminates)."""
    _, _, _, _, got = loader_runs["gru"]
    cell, sizes, p, _, _ = loader_runs["lstm"]
    ys, _ = numpy_ref.forward(cell, sizes, p["xs"], p["params"], p["states"])
    with pytest.raises(AssertionError):
        assert_rel(got["float64/ys"], ys, 1e-4, "ys")


COPIED_SCRIPT = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import lstm
cell = lstm.LSTM("float64")
rng = np.random.default_rng(3)
params = {k: rng.standard_normal(s) for k, s in lstm.PARAMS}
ys, final, tape = cell.forward(rng.standard_normal((4, 2, lstm.SIZES["I"])), params)
grads = cell.backward(tape, np.ones_like(ys))
print(json.dumps({"file": lstm.__file__, "ys": ys.tolist(), "grads": sorted(grads),
                  "modules": sorted(m for m in sys.modules
                                    if m.split(".")[0] in ("cellc", "llvmlite", "torch"))}))
"""


def test_a_copied_folder_runs_in_a_bare_interpreter(builds, tmp_path):
    """The three files are the whole artifact: copied elsewhere, they run in an isolated
    interpreter (-I: no PYTHONPATH, no user site, not started in the repository) that imports
    neither cellc nor llvmlite nor torch, and give the same numbers as where they were built."""
    runs = {}
    for where in ("built", "copied"):
        folder = built(builds, "lstm")
        if where == "copied":
            folder = Path(shutil.copytree(folder, tmp_path / "elsewhere" / "lstm_native"))
        res = subprocess.run([sys.executable, "-I", "-c", COPIED_SCRIPT, str(folder)],
                             capture_output=True, text=True, cwd=tmp_path, env=child_env(),
                             timeout=300, check=False)
        assert res.returncode == 0, res.stderr
        runs[where] = json.loads(res.stdout.strip().splitlines()[-1])
        assert Path(runs[where]["file"]).parent == folder
        assert runs[where]["modules"] == [], runs[where]["modules"]
    params = [p.name for p in problem("lstm")[0].params]
    assert runs["copied"]["grads"] == sorted(["xs", "h", "c", *params])
    assert runs["copied"]["ys"] == runs["built"]["ys"]


# ---------------------------------------------------------------------------------------------
# usage errors


def test_incomplete_sizes_are_a_usage_error(tmp_path):
    """No --sizes builds generic kernels (tests/test_aot_portable.py); a --sizes that leaves a
    size out is an error, not a half-specialized build."""
    out = tmp_path / "out"
    res = cellc_cmd("compile", "cells/lstm.cell", "--target", "llvm", "--sizes", "input_size=3",
                    "-o", out)
    assert res.returncode == 2, res.stderr
    assert "missing hidden_size" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()


@pytest.mark.parametrize("sizes,words", [
    ("input_size=3,hidden_size=x", ["hidden_size=x"]),
    ("input_size=3,hidden_size=0", ["hidden_size", "positive"]),
    ("input_size=3,hidden_size=-4", ["hidden_size"]),
    ("input_size=3,hidden_size=4,depth=2", ["depth"]),
    ("input_size=3,hidden_size", ["hidden_size"]),
])
def test_bad_sizes_are_usage_errors(tmp_path, sizes, words):
    out = tmp_path / "out"
    res = cellc_cmd("compile", "cells/lstm.cell", "--target", "llvm", "--sizes", sizes, "-o", out)
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert res.stderr.startswith("cellc: error: --sizes"), res.stderr
    for w in words:
        assert w in res.stderr, res.stderr
    assert not out.exists()


def test_broken_cell_is_located_error(tmp_path):
    bad = tmp_path / "bad.cell"
    bad.write_text("cell Bad(input_size I, hidden_size H):\n    input  x[I]\n    state  h[H]\n"
                   "    h2 = tanh(q)\n    output h2\n")
    out = tmp_path / "out"
    res = cellc_cmd("compile", bad, "--target", "llvm", "--sizes", SIZES, "-o", out)
    assert res.returncode == 1, (res.returncode, res.stderr)
    assert f"{bad}:4:" in res.stderr and "'q'" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.cell"]


def test_output_is_existing_file(tmp_path):
    target = tmp_path / "taken"
    target.write_text("keep me\n")
    res = cellc_cmd("compile", "cells/lstm.cell", "--target", "llvm", "--sizes", SIZES,
                    "-o", target)
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "-o" in res.stderr and "not a directory" in res.stderr, res.stderr
    assert target.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_failed_link_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    res = cellc_cmd("compile", "cells/rnn.cell", "--target", "llvm", "--sizes", SIZES, "-o", out,
                    env=child_env(CC="false"))
    assert res.returncode == 1, (res.returncode, res.stderr)
    assert "linking failed" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not out.exists()  # not even the folder it created
    # a folder that existed before is kept, with no library, header, loader or temporary folder
    out.mkdir()
    res = cellc_cmd("compile", "cells/rnn.cell", "--target", "llvm", "--sizes", SIZES, "-o", out,
                    env=child_env(CC="false"))
    assert res.returncode == 1 and "linking failed" in res.stderr, res.stderr
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# cellc show --emit llvm


def test_show_emits_llvm_ir():
    res = cellc_cmd("show", "cells/lstm.cell", "--emit", "llvm")
    assert res.returncode == 0, res.stderr
    # llvmlite quotes every global name: define void @"cellc_forward"(...)
    assert re.search(r'^define void @"?cellc_forward"?\(', res.stdout, re.MULTILINE), (
        res.stdout[:2000])
    assert re.search(r'^define void @"?cellc_backward"?\(', res.stdout, re.MULTILINE)
    assert "float" in res.stdout and "double" not in res.stdout


def test_show_llvm_sizes_and_dtype():
    res = cellc_cmd("show", "cells/gru.cell", "--emit", "llvm", "--sizes", SIZES,
                    "--dtype", "float64")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"; sizes {{'I': {I}, 'H': {H}}}, float64")
    assert (re.search(r'^define void @"?cellc_forward"?\(', res.stdout, re.MULTILINE)
            and "double" in res.stdout)
    res = cellc_cmd("show", "cells/gru.cell", "--emit", "llvm", "--sizes", "input_size=zero")
    assert res.returncode == 2 and "--sizes" in res.stderr, res.stderr
