"""An optimized BLAS for generated native code: OpenBLAS from the PyPI wheel scipy-openblas32.

The LLVM backend calls CBLAS `?gemm`/`?gemv` from two kinds of code:
- JIT (MCJIT) code declares e.g. `cellc_sgemm` and binds it to an address from `blas_symbols()`
  with `llvmlite.binding.add_symbol('cellc_sgemm', addr)`;
- AOT objects call the library's own names, `prefix() + 'cblas_sgemm'` (`scipy_cblas_sgemm`),
  and are linked with `cc -shared obj.o $(link_args())`; the rpath lets the .so load in a fresh
  process without LD_LIBRARY_PATH. `cellc compile` links with `link_args(beside=True)` and
  copies `bundle_files()` into its output folder, which then needs nothing of this venv.

scipy-openblas32 is LP64 (32-bit integers) and made for linking against: a stable directory
(`get_lib_dir()`), a plain file name with a matching SONAME (`libscipy_openblas.so`), and every
symbol prefixed `scipy_` so it never clashes with another BLAS in the process. NumPy's wheels
bundle their own copy (ILP64, symbols `scipy_cblas_sgemm64_`, in `numpy.libs/` under a hashed
file name that changes with every NumPy release, and absent from NumPy builds that use another
BLAS), which is fine to dlopen but not to link against.

OpenBLAS keeps its own thread pool (2 threads by default on a 2-core machine); NumPy's copy and
torch's OpenMP pool are separate pools, so together they can oversubscribe the cores.
`set_blas_threads` sets only this library's pool; `team` keeps it at one thread once torch is
loaded, when the kernels run their parallel work on torch's OpenMP team instead.

CBLAS prototypes (row-major callers pass order = CBLAS_ROW_MAJOR; enums are C ints, i.e. i32):

    void cblas_sgemm(int order, int transA, int transB, int M, int N, int K,
                     float alpha, const float *A, int lda, const float *B, int ldb,
                     float beta, float *C, int ldc);            /* dgemm: double */
    void cblas_sgemv(int order, int trans, int M, int N,
                     float alpha, const float *A, int lda, const float *X, int incX,
                     float beta, float *Y, int incY);           /* dgemv: double */
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

CBLAS_ROW_MAJOR = 101
CBLAS_COL_MAJOR = 102
CBLAS_NO_TRANS = 111
CBLAS_TRANS = 112

# Argument kinds in order; "T" is float for s*, double for d*; "i" is a C int (i32), "p" a pointer.
GEMM_ARGS = ("i", "i", "i", "i", "i", "i", "T", "p", "i", "p", "i", "T", "p", "i")
GEMV_ARGS = ("i", "i", "i", "i", "T", "p", "i", "p", "i", "T", "p", "i")
SIGNATURES = {
    "cblas_sgemm": ("float", GEMM_ARGS),
    "cblas_dgemm": ("double", GEMM_ARGS),
    "cblas_sgemv": ("float", GEMV_ARGS),
    "cblas_dgemv": ("double", GEMV_ARGS),
}

_PREFIX = "scipy_"
_INSTALL_HINT = (
    "the LLVM backend needs an optimized BLAS from the scipy-openblas32 package: "
    "pip install scipy-openblas32"
)


def _package():
    try:
        import scipy_openblas32
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    return scipy_openblas32


def lib_dir() -> str:
    return _package().get_lib_dir()


def library_path() -> str:
    """Absolute path of the shared library (…/scipy_openblas32/lib/libscipy_openblas.so)."""
    pkg = _package()
    return os.path.join(pkg.get_lib_dir(), pkg.get_library(fullname=True))


@functools.cache
def _lib() -> ctypes.CDLL:
    # RTLD_GLOBAL: the symbols become visible to later dlopen()s and to MCJIT's lookup too.
    return ctypes.CDLL(library_path(), mode=ctypes.RTLD_GLOBAL)


def prefix() -> str:
    """The library's symbol prefix: the AOT name of cblas_sgemm is prefix() + 'cblas_sgemm'."""
    return _PREFIX


def blas_symbols() -> dict[str, int]:
    """Unprefixed CBLAS names ('cblas_sgemm', ...) -> their addresses in this process.

    Loads the library (once). Names the library lacks are left out; gemm is always there.
    """
    lib = _lib()
    out = {}
    for name in SIGNATURES:
        try:
            fn = getattr(lib, _PREFIX + name)
        except AttributeError:
            continue
        out[name] = ctypes.cast(fn, ctypes.c_void_p).value
    return out


def ctypes_prototype(name: str) -> type:
    """A ctypes CFUNCTYPE for a name of SIGNATURES, e.g. to call an address from blas_symbols()."""
    elem, args = SIGNATURES[name]
    t = ctypes.c_float if elem == "float" else ctypes.c_double
    kinds = {"i": ctypes.c_int, "T": t, "p": ctypes.c_void_p}
    return ctypes.CFUNCTYPE(None, *(kinds[a] for a in args))


def llvm_function_type(name: str):
    """The llvmlite `ir.FunctionType` of a name of SIGNATURES (opaque pointers, i32 ints)."""
    from llvmlite import ir

    elem, args = SIGNATURES[name]
    t = ir.FloatType() if elem == "float" else ir.DoubleType()
    kinds = {"i": ir.IntType(32), "T": t, "p": ir.PointerType()}
    return ir.FunctionType(ir.VoidType(), [kinds[a] for a in args])


def link_args(beside: bool = False) -> list[str]:
    """Arguments for `cc -shared -o lib.so obj.o ...` to link against this BLAS.

    -l: names the exact file (there is no libscipy_openblas.so -> versioned symlink chain to rely
    on), and the rpath makes the .so find it at load time without LD_LIBRARY_PATH: this venv's
    copy, or with `beside` a copy in the .so's own folder (`$ORIGIN`, expanded by the dynamic
    loader, so the folder can move; see `bundle_files`). The wheel ships only the shared
    library (no libscipy_openblas.a), so a static link is not an option.
    """
    pkg = _package()
    d = pkg.get_lib_dir()
    rpath = "$ORIGIN" if beside else d
    return [f"-L{d}", f"-l:{pkg.get_library(fullname=True)}", f"-Wl,-rpath,{rpath}"]


def bundle_files() -> list[tuple[str, str]]:
    """(source path, file name) of what a library linked with `link_args(beside=True)` needs in
    its folder: the BLAS shared library (its dependencies are libc's own) and, when the wheel
    ships one, its license file (OpenBLAS and the wheel are BSD-licensed: a copy must carry the
    notice), named so that it says whose license it is."""
    from importlib import metadata

    files = [(library_path(), _package().get_library(fullname=True))]
    try:
        dist = metadata.distribution("scipy-openblas32")
        for f in dist.files or ():
            if f.name.upper().startswith(("LICENSE", "COPYING")):
                files.append((str(f.locate()), f"{f.name.rsplit('.', 1)[0]}.scipy-openblas32.txt"))
    except metadata.PackageNotFoundError:  # installed without metadata: the library still works
        pass
    return files


def set_blas_threads(n: int) -> None:
    """Size this OpenBLAS's thread pool (not NumPy's or torch's)."""
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    global _threads_set
    fn = _lib()[_PREFIX + "openblas_set_num_threads"]
    fn.argtypes, fn.restype = [ctypes.c_int], None
    fn(int(n))
    _threads_set = int(n)


def get_blas_threads() -> int:
    fn = _lib()[_PREFIX + "openblas_get_num_threads"]
    fn.argtypes, fn.restype = [], ctypes.c_int
    return fn()


_MKL: dict[str, int] | None = None


_threads_set: int | None = None


def ensure_threads(n: int) -> None:
    """set_blas_threads(n), skipped when n is already in force (the call is not free)."""
    global _threads_set
    if n != _threads_set:
        set_blas_threads(n)
        _threads_set = n


def default_threads() -> int:
    """The cores this process may run on."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def torch_mkl_symbols() -> dict[str, int] | None:
    global _MKL
    if _MKL is None:
        _MKL = _find_torch_mkl() or {}
    return _MKL or None


def _find_torch_mkl() -> dict[str, int] | None:
    """Addresses of MKL's Fortran sgemm_/dgemm_ inside an already imported torch, or None.

    torch's CPU build links MKL statically and exports its Fortran BLAS. MKL is much faster
    than OpenBLAS for the thin products of small batches (one row: ~15 us vs ~80 us for
    (1x256)(256x1024)), and its threads follow torch.set_num_threads, so the two libraries'
    thread pools never compete. Only used when torch is already loaded.
    """
    import os
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return None
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        lib = ctypes.CDLL(path)
        return {name: ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
                for name in ("sgemm_", "dgemm_")}
    except (OSError, AttributeError):
        return None


_TEAM: tuple[int, int, int] | int | None = None


def team(threads: int, rows: int) -> tuple[int, tuple[int, int, int] | int]:
    """(threads, the team's entries or 0) for a kernel call over `rows` rows
    (T*B): the kernels' time loops split their batch rows, and their large library products
    their output rows, across the threads of the OpenMP team that torch's intra-op pool and
    MKL use (the one libgomp team of the calling thread). One thread, and no team, without
    torch loaded or when the call is too small to pay for a fork and join (~5-10 us). The
    entries are the addresses of libgomp's GOMP_parallel, omp_get_thread_num and
    omp_get_num_threads (a loop that splits each step's columns asks its team's size).

    Sizes OpenBLAS's pool too: one thread for a call on the team (the team is the parallelism;
    a second pool would spin on the same cores after each call), else `threads`. A team has
    no more threads than the cores this process may use (a split step's barrier spins)."""
    global _TEAM
    if _TEAM is None and "torch" in sys.modules:  # looked up once torch is there
        _TEAM = _find_gomp() or 0
    gomp = _TEAM or 0
    if threads <= 1 or rows < 64 or not gomp:
        return no_team(threads)
    ensure_threads(1)
    return min(threads, default_threads()), gomp


def no_team(threads: int) -> tuple[int, int]:
    """team()'s answer for code built without a team: OpenBLAS's pool gets the threads."""
    ensure_threads(max(threads, 1))
    return 1, 0


@functools.cache
def sched_yield_address() -> int:
    """libc's sched_yield, for the JIT's spinning barriers (0 where there is none)."""
    try:
        return ctypes.cast(ctypes.CDLL(None).sched_yield, ctypes.c_void_p).value or 0
    except (OSError, AttributeError, TypeError):
        return 0


@functools.cache
def cpu_vendor() -> str:
    """This CPU's vendor id ("GenuineIntel", "AuthenticAMD", ...), or "" where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _find_gomp() -> tuple[int, int, int] | None:
    """The addresses of GOMP_parallel, omp_get_thread_num and omp_get_num_threads (torch
    loads libgomp globally), or None."""
    try:
        lib = ctypes.CDLL(None)
        return tuple(ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
                     for name in ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads"))
    except AttributeError:
        return None
