"""blas: CBLAS through addresses (the JIT route) and through a linked .so (the AOT route)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("scipy_openblas32")

from cellc.backends import blas

RNG = np.random.default_rng(0)


def call(name: str, *args):
    return blas.ctypes_prototype(name)(blas.blas_symbols()[name])(*args)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["s", "d"])
@pytest.mark.parametrize("trans_a", [False, True], ids=["N", "T"])
def test_gemm_matches_numpy(dtype, trans_a):
    m, n, k = 37, 53, 129
    a = RNG.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = RNG.standard_normal((k, n)).astype(dtype)
    c = RNG.standard_normal((m, n)).astype(dtype)
    expected = 0.5 * ((a.T if trans_a else a) @ b) + 2.0 * c
    name = "cblas_sgemm" if dtype == np.float32 else "cblas_dgemm"
    ta = blas.CBLAS_TRANS if trans_a else blas.CBLAS_NO_TRANS
    lda = a.shape[1]
    call(name, blas.CBLAS_ROW_MAJOR, ta, blas.CBLAS_NO_TRANS, m, n, k,
         0.5, a.ctypes.data, lda, b.ctypes.data, n, 2.0, c.ctypes.data, n)  # fmt: skip
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(c, expected, rtol=tol, atol=tol * np.abs(expected).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["s", "d"])
def test_gemv_matches_numpy(dtype):
    name = "cblas_sgemv" if dtype == np.float32 else "cblas_dgemv"
    if name not in blas.blas_symbols():
        pytest.skip(f"{name} not exported")
    a = RNG.standard_normal((40, 70)).astype(dtype)
    x = RNG.standard_normal(70).astype(dtype)
    y = np.zeros(40, dtype)
    call(name, blas.CBLAS_ROW_MAJOR, blas.CBLAS_NO_TRANS, 40, 70,
         1.0, a.ctypes.data, 70, x.ctypes.data, 1, 0.0, y.ctypes.data, 1)  # fmt: skip
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(y, a @ x, rtol=tol, atol=tol * np.abs(a @ x).max())


def test_symbols_and_signatures():
    syms = blas.blas_symbols()
    assert {"cblas_sgemm", "cblas_dgemm"} <= set(syms)
    assert all(isinstance(v, int) and v for v in syms.values())
    assert blas.prefix() == "scipy_"
    fnty = blas.llvm_function_type("cblas_sgemm")
    assert (
        str(fnty)
        == "void (i32, i32, i32, i32, i32, i32, float, ptr, i32, ptr, i32, float, ptr, i32)"
    )


def test_threads_round_trip():
    before = blas.get_blas_threads()
    try:
        blas.set_blas_threads(1)
        assert blas.get_blas_threads() == 1
    finally:
        blas.set_blas_threads(before)
    assert blas.get_blas_threads() == before
    with pytest.raises(ValueError):
        blas.set_blas_threads(0)


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy_openblas32", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install scipy-openblas32"):
        blas.link_args()


def _sgemm_object(path: str) -> None:
    """An object file defining `void mm(float* A, float* B, float* C, i32 M, i32 N, i32 K)`,
    C = A @ B (row-major), calling the library's prefixed sgemm by name."""
    import llvmlite.binding as llvm
    from llvmlite import ir

    from cellc.backends.llvm_jit import target_machine

    mod = ir.Module(name="aot_sgemm")
    sgemm = ir.Function(mod, blas.llvm_function_type("cblas_sgemm"), blas.prefix() + "cblas_sgemm")
    ptr, i32, f32 = ir.PointerType(), ir.IntType(32), ir.FloatType()
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [ptr, ptr, ptr, i32, i32, i32]), "mm")
    a, b_, c, m, n, k = fn.args
    b = ir.IRBuilder(fn.append_basic_block())
    order, no = i32(blas.CBLAS_ROW_MAJOR), i32(blas.CBLAS_NO_TRANS)
    b.call(sgemm, [order, no, no, m, n, k, f32(1.0), a, k, b_, n, f32(0.0), c, n])
    b.ret_void()

    tm = target_machine(reloc="pic")
    llmod = llvm.parse_assembly(str(mod))
    llmod.triple = tm.triple
    llmod.data_layout = str(tm.target_data)
    llmod.verify()
    with open(path, "wb") as f:
        f.write(tm.emit_object(llmod))


CHILD = textwrap.dedent(
    """
    import ctypes, sys
    import numpy as np
    lib = ctypes.CDLL(sys.argv[1])
    rng = np.random.default_rng(1)
    a = rng.standard_normal((33, 65)).astype(np.float32)
    b = rng.standard_normal((65, 17)).astype(np.float32)
    c = np.empty((33, 17), np.float32)
    lib.mm.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 3
    lib.mm(a.ctypes.data, b.ctypes.data, c.ctypes.data, 33, 17, 65)
    np.testing.assert_allclose(c, a @ b, rtol=1e-5, atol=1e-4)
    assert "llvmlite" not in sys.modules and "scipy_openblas32" not in sys.modules
    print("ok")
    """
)


def test_linked_shared_library_loads_in_fresh_process(tmp_path):
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler driver (cc) to link with")
    obj, so = tmp_path / "mm.o", tmp_path / "libmm.so"
    _sgemm_object(str(obj))
    subprocess.run([cc, "-shared", "-o", str(so), str(obj), *blas.link_args()], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD")}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(so)], env=env, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
