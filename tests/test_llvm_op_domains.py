"""Every elementwise op of the llvm target against the NumPy reference, over whole domains.

One generated cell holds every op (and `x ^ p` for many exponents), each reading its own block
of the input, so one compile per dtype covers them all and the backward's input cotangent holds
each op's derivative in that op's block. That reaches the ops only the backward uses: `sign`
(from abs), `heaviside` (relu) and `ge` (min, max). Binary ops see every pair of grid values.

The grid: negative, zero (both signs), tiny, subnormal, large, near the overflow and underflow
thresholds of exp, the largest finite number, +-inf and NaN. The reference runs in float64 and is
rounded to the kernel's dtype. Results must agree NaN for NaN and inf for inf (with its sign);
finite results within `TOL` relative to max(|reference|, smallest normal). The backward is
compared relative to max(|reference|, 1), since its float32 formulas (1 - sigmoid(x), ...)
cancel where the float64 ones do not.

The same comparison runs in a child process with CELLC_TARGET_CPU=znver3 (AVX2 code).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llvmlite")

from cellc.backends import numpy_ref
from cellc.native import NativeCell

ROOT = Path(__file__).resolve().parent.parent
INF, NAN = math.inf, math.nan

_COMMON = [-INF, -1e4, -110.0, -104.0, -89.0, -88.0, -30.0, -2.0, -1.001, -1.0, -0.5, -1e-30,
           -0.0, 0.0, 1e-30, 0.5, 0.999, 1.0, 1.001, 2.0, 30.0, 88.0, 88.7, 89.0, 1e4, INF, NAN]
GRID = {
    "float32": _COMMON + [1e-45, 1e-40, 1.17549435e-38, 1e38, 3.4028235e38],
    "float64": _COMMON + [-750.0, -745.0, 709.7, 710.0, 5e-324, 1e-310, 2.2250738585072014e-308,
                          1e300, 1.7976931348623157e308],
}
UNARY = ["-{}", "sigmoid({})", "tanh({})", "relu({})", "exp({})", "log({})", "softplus({})",
         "sqrt({})", "abs({})"]
EXPONENTS = ["0", "2", "3", "7", "-1", "-2", "-3", "-7", "33", "1000", "-1000", "1001", "-1001",
             "1e9", "1e20", "0.5", "-0.5", "1.5", "-1.5", "2.5", "0.25"]
BINARY = ["{} + {}", "{} - {}", "{} * {}", "{} / {}", "min({}, {})", "max({}, {})"]
OPS = UNARY + ["{}^" + e for e in EXPONENTS] + BINARY
TOL = {"float32": 5e-7, "float64": 1e-15}
GRAD_TOL = {"float32": 1e-5, "float64": 1e-13}


def cell_text() -> tuple[str, list[list[int]]]:
    """The cell, and for each op the input blocks it reads (one or two)."""
    blocks, exprs = [], []
    for op in OPS:
        k = op.count("{}")
        blocks.append(list(range(sum(map(len, blocks)), sum(map(len, blocks)) + k)))
        exprs.append(op.format(*(f"v{j}" for j in blocks[-1])))
    m = sum(map(len, blocks))
    names = ", ".join(f"v{j}" for j in range(m))
    text = (f"cell Domains(block_size N):\n    input x[{m}*N]\n    state s[N]\n"
            f"    {names} = split(x, {m})\n    y = concat({', '.join(exprs)})\n"
            "    s' = s\n    output y\n")
    return text, blocks


def pow_tolerance(op: str, x: np.ndarray, dtype: str) -> np.ndarray | float:
    """float64 x^p for non-integral p is exp(p*log x): about (1 + |p log x|) ulp."""
    p = float(op[3:]) if op.startswith("{}^") else 0.0
    if dtype == "float32" or p.is_integer() or p in (0.5, -0.5):
        return TOL[dtype]
    with np.errstate(all="ignore"):
        return TOL[dtype] + np.finfo(np.float64).eps * np.nan_to_num(np.abs(p * np.log(np.abs(x))))


def disagreements(got, want, tol, floor) -> list[int]:
    """Flat indices where got and want differ in NaN-ness, infinity, or beyond tol."""
    tol = np.broadcast_to(tol, want.shape).ravel()
    got, want = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    with np.errstate(all="ignore"):
        finite = np.isfinite(got) & np.isfinite(want)
        err = np.abs(got - want) / np.maximum(np.abs(want), floor)
        bad = (np.isnan(got) != np.isnan(want)) | (np.isinf(got) != np.isinf(want))
        bad |= np.isinf(want) & (got != want)
        bad |= finite & (err > tol)
    return list(np.flatnonzero(bad))


def check(dtype: str, cache_dir: str) -> list[str]:
    """Compile the cell for dtype, run forward and backward, and describe every disagreement."""
    os.environ["CELLC_CACHE_DIR"] = cache_dir
    text, blocks = cell_text()
    path = Path(cache_dir) / "domains.cell"
    path.write_text(text)
    grid = np.array(GRID[dtype], dtype)
    n = len(grid)
    nc = NativeCell(path, dtype=dtype, block_size=n)
    # Row r of a block of the first operand is grid[r]; column c of the second's is grid[c].
    x = np.empty((n, sum(map(len, blocks)), n), dtype)
    for bl in blocks:
        x[:, bl[0], :] = grid[:, None]
        if len(bl) == 2:
            x[:, bl[1], :] = grid[None, :]
    xs = x.reshape(1, n, -1)
    ys, _, tape = nc.forward(xs, {})
    dxs = nc.backward(tape, np.ones_like(ys))["xs"]
    refs = {}
    for ref_dtype in dict.fromkeys([np.dtype(np.float64), np.dtype(dtype)]):
        with np.errstate(all="ignore"):
            ys_ref, _, grads = numpy_ref.backward(nc.cell, nc.sizes, xs.astype(ref_dtype), {},
                                                  d_ys=np.ones(ys.shape), dtype=ref_dtype)
            refs[ref_dtype] = (ys_ref.astype(dtype), grads["xs"].astype(dtype).reshape(x.shape))
    ys_ref = refs[np.dtype(np.float64)][0]
    tiny = np.finfo(dtype).tiny
    out = []
    dx = dxs.reshape(x.shape)
    for k, (op, bl) in enumerate(zip(OPS, blocks)):
        a = x[:, bl[0], :]
        got, want = ys[0, :, k * n : (k + 1) * n], ys_ref[0, :, k * n : (k + 1) * n]
        cases = [("", got, [want], pow_tolerance(op, a, dtype), tiny)]
        for j, blk in enumerate(bl):
            wants = [dxs_ref[:, blk, :] for _, dxs_ref in refs.values()]
            cases.append((f" d/d{'ab'[j]}", dx[:, blk, :], wants, GRAD_TOL[dtype], 1.0))
        for what, g, wants, tol, floor in cases:
            # The backward may match either reference: its formulas differ between precisions
            # (in float32, d(a/b)/db = -(1/b)(a/b) is inf * 0 for b = 1e-45).
            bad = sorted(set.intersection(*(set(disagreements(g, w, tol, floor)) for w in wants)))
            w = wants[0]
            seen = {}  # one line per distinct argument value (unary ops repeat along a row)
            for i in bad:
                r, c = divmod(int(i), n)
                args = (grid[r],) if len(bl) == 1 else (grid[r], grid[c])
                line = (f"{dtype} {op.format(*map(repr, map(float, args)))}{what}: "
                        f"{float(g.ravel()[i])!r}, reference {float(w.ravel()[i])!r}")
                seen.setdefault(line, None)
            out += list(seen)[:4] + ([f"{dtype} {op}{what}: ..."] if len(seen) > 4 else [])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_op_matches_numpy_over_its_domain(dtype, tmp_path, monkeypatch):
    monkeypatch.setenv("CELLC_CACHE_DIR", str(tmp_path))
    assert check(dtype, str(tmp_path)) == []


def test_integer_powers_keep_their_sign(tmp_path, monkeypatch):
    """The cases of the issue, spelled out: exact-sign integer powers, x^0 == 1 everywhere."""
    monkeypatch.setenv("CELLC_CACHE_DIR", str(tmp_path))
    path = tmp_path / "p.cell"
    path.write_text("cell P(input_size I):\n    input x[I]\n    state s[I]\n"
                    "    y = concat(x^-2, x^0, x^-3, x^1000, x^1001)\n    s' = s\n    output y\n")
    x = np.array([-0.5, -0.0, 0.0, -2.0, NAN, -INF])
    want = np.array([[4.0, INF, INF, 0.25, NAN, 0.0],
                     [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
                     [-8.0, -INF, INF, -0.125, NAN, -0.0],
                     [2.0**-1000, 0.0, 0.0, 2.0**1000, NAN, INF],
                     [-(2.0**-1001), -0.0, 0.0, -(2.0**1001), NAN, -INF]])
    for dtype in ("float32", "float64"):
        ys, _, _ = NativeCell(path, dtype=dtype, input_size=6).forward(
            x.astype(dtype).reshape(1, 1, 6), {})
        with np.errstate(over="ignore"):
            expected = want.astype(dtype)
        got = ys.reshape(5, 6)
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(expected))


CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from cellc.backends.llvm_jit import host_cpu
import test_llvm_op_domains as t
print(json.dumps({"features": host_cpu()[1],
                  "bad": t.check("float32", sys.argv[2]) + t.check("float64", sys.argv[2])}))
"""


@pytest.mark.slow
def test_avx2_code_matches_too(tmp_path):
    with open("/proc/cpuinfo") as f:
        if " avx2 " not in f.read():
            pytest.skip("this CPU cannot run AVX2 code")
    env = {**os.environ, "CELLC_TARGET_CPU": "znver3"}
    res = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / "tests"), str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                         check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert "+avx512f" not in out["features"]
    assert out["bad"] == []
