"""Compile native kernels with llvmlite, JIT them, and call them safely from Python.

    render (llvm_ir.build_module) -> parse + verify -> optimize (O3, loop and SLP vectorizers,
    host CPU) -> MCJIT -> function pointers -> ctypes calls with checked buffers

`NativeProgram(cell, sizes, dtype)` is one cell specialized to concrete sizes and a float type,
with a forward (saving residuals) and a backward over whole sequences. `Kernel.run` checks every
array handed to native code first (dtype, shape, contiguity) and allocates the buffers the
kernels write with the shapes they assume, so no input can make them read or write out of
bounds; the checks are cellc/runtime/native_calls.py's, shared with the AOT loader.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..ir import Func
from ..lower import CellIR
from ..pipeline import Program, compile_program
from ..runtime import native_calls
from ..shapes import Batch
from . import blas, llvm_ir

_lock = threading.Lock()
_initialized = False


def _llvm():
    import llvmlite.binding as llvm

    global _initialized
    with _lock:
        if not _initialized:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            llvm.initialize_native_asmparser()
            _initialized = True
    return llvm


@functools.cache
def host_cpu() -> tuple[str, str]:
    """(cpu name, features) to compile for: this machine's, or CELLC_TARGET_CPU's (e.g.
    "znver3": AVX2 code on an AVX-512 machine, to test the narrower code paths)."""
    llvm = _llvm()
    cpu = os.environ.get("CELLC_TARGET_CPU")
    if cpu:
        # This machine's features, less AVX-512 unless the named CPU has it.
        features = dict(llvm.get_host_cpu_features().items())
        if not any(z in cpu for z in ("znver4", "znver5", "skylake-avx512", "sapphirerapids",
                                      "icelake", "cascadelake", "cooperlake", "tigerlake")):
            features = {k: v and not k.startswith("avx512") for k, v in features.items()}
        return cpu, ",".join(("+" if v else "-") + k for k, v in sorted(features.items()))
    return llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()


def target_machine(reloc: str = "default"):
    llvm = _llvm()
    cpu, features = host_cpu()
    target = llvm.Target.from_default_triple()
    return target.create_target_machine(cpu=cpu, features=features, opt=3, reloc=reloc,
                                        codemodel="jitdefault" if reloc == "default" else "default")


def optimize(module_ref, tm) -> None:
    llvm = _llvm()
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = True
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(module_ref, pb)


def blas_choice() -> str:
    """The BLAS for the products outside time loops: "openblas" (scipy-openblas32), or with
    CELLC_BLAS=mkl torch's MKL when torch is loaded. Products inside loops are inlined
    (llvm_gemm), so BLAS only sees large products, where OpenBLAS measured faster here."""
    if os.environ.get("CELLC_BLAS") == "mkl" and blas.torch_mkl_symbols():
        return "mkl"
    return "openblas"


def gemm_names(dtype: str, kind: str) -> dict[str, str]:
    g = "s" if dtype == "float32" else "d"
    if kind == "mkl":
        return {"gemm": f"cellc_{g}gemm_", "abi": "fortran"}
    return {"gemm": f"cellc_cblas_{g}gemm"}


def render(cell: CellIR, sizes: dict[str, int], dtype: str, prog: Program | None = None,
           blas_kind: str = "openblas"):
    """(llvmlite.ir module, layouts, program) for a cell at given sizes."""
    prog = prog or compile_program(cell)
    module, layouts = llvm_ir.build_module(
        [(prog.fwd, "cellc_forward"), (prog.bwd, "cellc_backward")], sizes, dtype,
        gemm_names(dtype, blas_kind), features=kernel_features())
    return module, layouts, prog


def kernel_features() -> str:
    """CPU features for the inlined loop products ("" sends every product to BLAS:
    CELLC_LOOP_GEMM=blas)."""
    if os.environ.get("CELLC_LOOP_GEMM", "inline") == "blas":
        return ""
    return host_cpu()[1]


# The argument checks live in cellc/runtime/native_calls.py, shared with NativeCell and the AOT
# loader; these are their names for cellc's own code (llvm_layers subclasses Arrays for torch).
MAX_ROWS = native_calls._MAX_ROWS
check_rows = native_calls._check_rows
Arrays = native_calls._Arrays


def _shape_spec(t, sizes: dict[str, int]) -> list:
    """A type's array shape with symbolic rows: "TB" (T*B), "B", or ints."""
    rows = {Batch.SEQ: ["TB"], Batch.STEP: ["B"], Batch.NONE: []}[t.batch]
    return rows + [int(d.evaluate(sizes)) for d in t.shape]


def kernel_spec(func: Func, layout: llvm_ir.Layout, sizes: dict[str, int], dtype: str) -> dict:
    """A compiled function as the plain data native_calls checks calls against (the AOT
    loader's KERNELS holds the same, as a literal)."""
    assert layout.n_args == len(func.params), (layout.name, layout.n_args, len(func.params))
    return {
        "dtype": dtype,
        "args": [(p.name, _shape_spec(p.type, sizes)) for p in func.params],
        "results": [(kind, k, _shape_spec(r.type, sizes))
                    for (kind, k), r in zip(layout.results, func.results)],
        "buffers": layout.n_buffers,
        "workspace": list(layout.workspace),
    }


@dataclass
class Kernel:
    layout: llvm_ir.Layout
    func: Func
    address: int
    sizes: dict[str, int]
    dtype: np.dtype
    # The ExecutionEngine that owns the code at `address`. Held here so that a kernel in use
    # stays valid after the in-memory cache evicts it: the code is freed with its last user.
    engine: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self._call = native_calls._SIGNATURE(self.address)
        self._scratch = threading.local()  # the workspace, reused by calls on the same thread
        # The shapes with the sizes evaluated once: each call only multiplies in T and B.
        self.spec = kernel_spec(self.func, self.layout, self.sizes, self.dtype.name)

    def workspace(self, n: int, arrays: Arrays, like):
        """A scratch buffer of at least n elements: reused (fresh pages cost page faults), one
        per thread so that concurrent calls never share it."""
        ws = getattr(self._scratch, "buffer", None)
        if ws is None or type(ws) is not type(like) or arrays.size(ws) < n:
            ws = arrays.empty((max(n, 1),), self.dtype, like=like)
            self._scratch.buffer = ws
        return ws

    def run(self, T: int, B: int, batch_sizes: np.ndarray, args: list, arrays: Arrays) -> list:
        """Call the kernel on checked arrays; return its results (arguments handed back as is)."""
        return native_calls._run_kernel(self._call, self.spec, T, B, batch_sizes, args, arrays,
                                        self.workspace)


def _jit(module_ir, object_cache=None):
    """parse, verify, optimize (unless the object cache has the code) and JIT a module."""
    llvm = _llvm()
    for name, address in blas.blas_symbols().items():
        llvm.add_symbol("cellc_" + name, address)
    if blas_choice() == "mkl":
        for name, address in blas.torch_mkl_symbols().items():
            llvm.add_symbol("cellc_" + name, address)
    raw = str(module_ir)
    mod = llvm.parse_assembly(raw)
    mod.verify()
    tm = target_machine()
    # The entry is read and checked once: MCJIT's own load() call gets the same answer.
    cached = object_cache is not None and object_cache.load(None) is not None
    if not cached:
        optimize(mod, tm)
    if os.environ.get("CELLC_DUMP_LLVM"):
        _dump(os.environ["CELLC_DUMP_LLVM"], raw, tm)
    engine = llvm.create_mcjit_compiler(mod, tm)  # owns mod; keep the engine alive
    if os.environ.get("CELLC_PERF"):  # name JIT code for `perf report` (perf map files)
        engine.enable_jit_events()
    if object_cache is not None:
        engine.set_object_cache(object_cache.store, object_cache.load)
    engine.finalize_object()
    return engine, mod


def _dump(folder: str, raw: str, tm) -> None:
    """CELLC_DUMP_LLVM=DIR: write each JIT-compiled module as DIR/<hash>.raw.ll (as rendered),
    .opt.ll (after the pass pipeline) and .s (the machine code), to read what the kernels
    became. It works on its own copy (emit_assembly rewrites the module it is given), and a
    folder that cannot be written is a warning: a debug aid never stops the computation."""
    import hashlib
    import warnings
    from pathlib import Path

    llvm = _llvm()
    mod = llvm.parse_assembly(raw)
    optimize(mod, tm)
    optimized = str(mod)
    stem = Path(folder) / hashlib.sha256(raw.encode()).hexdigest()[:16]
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".raw.ll").write_text(raw)
        stem.with_suffix(".opt.ll").write_text(optimized)
        stem.with_suffix(".s").write_text(tm.emit_assembly(mod))
    except OSError as e:
        warnings.warn(f"CELLC_DUMP_LLVM={folder}: {e.strerror or e}", stacklevel=2)


class NativeProgram:
    """A cell compiled to native code for concrete sizes and one dtype: forward and backward
    over whole sequences."""

    def __init__(self, cell: CellIR, sizes: dict[str, int], dtype="float32", prog=None,
                 object_cache=None, blas_kind: str | None = None):
        self.cell = cell
        self.sizes = dict(sizes)
        self.dtype = native_calls._float_dtype(dtype)
        self.blas_kind = blas_kind or blas_choice()
        module, layouts, self.program = render(cell, self.sizes, self.dtype.name, prog=prog,
                                               blas_kind=self.blas_kind)
        self.llvm_ir = str(module)
        self._engine, self._module = _jit(module, object_cache)
        fwd, bwd = layouts
        address = self._engine.get_function_address
        self.forward_kernel = Kernel(fwd, self.program.fwd, address(fwd.name), self.sizes,
                                     self.dtype, engine=self._engine)
        self.backward_kernel = Kernel(bwd, self.program.bwd, address(bwd.name), self.sizes,
                                      self.dtype, engine=self._engine)

    @property
    def n_results(self) -> int:
        return self.program.n_results


def step_function(cell: CellIR) -> Func:
    """The step alone, optimized for one call per time step (nothing hoisted, nothing saved)."""
    from .. import passes
    from ..pipeline import run_passes

    return run_passes(cell.step, [passes.simplify, passes.cse, passes.fuse_matmul, passes.dce])


def compile_step(cell: CellIR, sizes: dict[str, int], dtype="float32", object_cache=None,
                 blas_kind: str | None = None) -> Kernel:
    """A kernel for one time step: (states, x, params) -> (next states, output)."""
    step = step_function(cell)
    names = gemm_names(dtype, blas_kind or blas_choice())
    module, (layout,) = llvm_ir.build_module([(step, "cellc_step")], dict(sizes), dtype, names,
                                             features=kernel_features())
    engine, _ = _jit(module, object_cache)
    return Kernel(layout, step, engine.get_function_address(layout.name), dict(sizes),
                  np.dtype(dtype), engine=engine)
