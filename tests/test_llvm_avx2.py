"""The native kernels compiled for an AVX2-only CPU (CELLC_TARGET_CPU=znver3), whatever this
machine has: 8-wide vectors and the AVX2 register blocking of the inlined products are then
the code that runs, and must match the reference like the host's code does. Skipped where this
CPU cannot run AVX2 code."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # compiles every kernel again for AVX2; CI runs it

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import json, sys
import numpy as np
import cellc
from cellc.backends import cache, numpy_ref
from cellc.backends.llvm_jit import host_cpu

out = {"features": host_cpu()[1]}
for name in ("lstm", "gru", "layernorm_lstm"):
    for dtype in ("float32", "float64"):
        nc = cellc.native.NativeCell(f"cells/{name}.cell", dtype=dtype, input_size=5,
                                     hidden_size=37)
        p = nc.init_params(0)
        rng = np.random.default_rng(1)
        xs = rng.normal(size=(9, 6, 5)).astype(dtype)
        dys = rng.normal(size=(9, 6, 37)).astype(dtype)
        ys, _, tape = nc.forward(xs, p)
        g = nc.backward(tape, dys)
        p64 = {k: v.astype(np.float64) for k, v in p.items()}
        ys_ref, _, g_ref = numpy_ref.backward(nc.cell, nc.sizes, xs.astype(np.float64), p64,
                                              d_ys=dys.astype(np.float64))
        err = max([float(np.abs(ys - ys_ref).max())]
                  + [float(np.abs(g[k] - g_ref[k]).max() / max(1.0, np.abs(g_ref[k]).max()))
                     for k in g_ref])
        ir = str(cache.native_program(nc.cell, nc.sizes, dtype)._module)
        out[f"{name}/{dtype}"] = {"err": err, "wide16": ir.count("<16 x float>"),
                                  "wide8": ir.count("<8 x float>") + ir.count("<4 x double>")}
print(json.dumps(out))
"""


def test_avx2_code_matches_the_reference(tmp_path):
    with open("/proc/cpuinfo") as f:
        if " avx2 " not in f.read():
            pytest.skip("this CPU cannot run AVX2 code")
    env = {**os.environ, "CELLC_TARGET_CPU": "znver3", "CELLC_CACHE_DIR": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert "+avx512f" not in out.pop("features")
    for key, r in out.items():
        tol = 1e-4 if key.endswith("float32") else 1e-10
        assert r["err"] < tol, (key, r["err"])
        assert r["wide16"] == 0 and r["wide8"] > 0, (key, r)
