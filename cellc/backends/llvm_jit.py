"""Compile native kernels with llvmlite, JIT them, and call them safely from Python.

    render (llvm_ir.build_module) -> parse + verify -> optimize (O3, loop and SLP vectorizers,
    no loop unroller, host CPU) -> MCJIT -> function pointers -> ctypes calls with checked buffers

`NativeProgram(cell, sizes, dtype)` is one cell specialized to concrete sizes and a float type,
with a forward (saving residuals) and a backward over whole sequences, in separate modules: the
backward is compiled only when used or announced (`prefetch_backward`). `Kernel.run` checks every
array handed to native code first (dtype, shape, contiguity) and allocates the buffers the
kernels write with the shapes they assume, so no input can make them read or write out of
bounds; the checks are cellc/runtime/native_calls.py's, shared with the AOT loader.
"""

from __future__ import annotations

import functools
import os
import threading
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..ir import Func
from ..lower import CellIR
from ..pipeline import Program, compile_program
from ..runtime import native_calls
from ..shapes import Batch, Dim
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


def target_machine(reloc: str = "default", opt: int = 3):
    llvm = _llvm()
    cpu, features = host_cpu()
    if "+avx512f" in features:
        # LLVM tunes Intel's server CPUs to prefer 256-bit vectors (against the clock drop of
        # 2017's cores): the vectorized elementwise loops then ran half width here.
        features += ",-prefer-256-bit"
    target = llvm.Target.from_default_triple()
    return target.create_target_machine(cpu=cpu, features=features, opt=opt, reloc=reloc,
                                        codemodel="jitdefault" if reloc == "default" else "default")


def optimize(module_ref, tm, unroll: bool = True) -> None:
    """O3 with the loop and SLP vectorizers. `unroll=False` (the JIT's choice) skips the loop
    unroller: it was about half of the compile time (opt and codegen of the unrolled
    elementwise loops and inlined products) for no run time measured here, since the
    vectorizer still interleaves and the inlined GEMM is register-blocked by hand. AOT builds,
    compiled once, keep it."""
    llvm = _llvm()
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = unroll
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(module_ref, pb)


def blas_choice() -> str:
    """The BLAS for the products the kernels do not inline: "mkl" (torch's MKL, once torch is
    loaded) on Intel CPUs, "openblas" (scipy-openblas32) elsewhere, where MKL takes a generic
    code path (2-core AMD Zen 4, one thread: OpenBLAS 78-98 GFLOP/s, MKL 60-87, on the
    products of the LSTM benchmark shapes). CELLC_BLAS=openblas or =mkl (with torch loaded)
    chooses. Either one runs one thread per call on torch's OpenMP team (see blas.team)."""
    choice = os.environ.get("CELLC_BLAS")
    intel = choice == "mkl" or (choice != "openblas" and blas.cpu_vendor() == "GenuineIntel")
    return "mkl" if intel and blas.torch_mkl_symbols() else "openblas"


def gemm_names(dtype: str, kind: str) -> dict[str, str]:
    """The gemm the kernels call. Both libraries may run inside the team: MKL runs one thread
    per call there, and OpenBLAS's pool is kept at one thread while a team exists."""
    g = "s" if dtype == "float32" else "d"
    if kind == "mkl":
        return {"gemm": f"cellc_{g}gemm_", "abi": "fortran", "in_team": "yes"}
    return {"gemm": f"cellc_cblas_{g}gemm", "in_team": "yes"}


# The kernels of a program: kind -> (Program attribute, native name). The JIT renders each kind
# in a module of its own, so that a forward never waits for (nor an inference call compiles)
# the backward.
KERNELS = {"forward": ("fwd", "cellc_forward"), "backward": ("bwd", "cellc_backward"),
           "inference": ("infer", "cellc_inference")}


def render(cell: CellIR, sizes: dict[str, int], dtype: str, prog: Program | None = None,
           blas_kind: str = "openblas", kinds=("forward", "backward")):
    """(llvmlite.ir module, layouts, program) for a cell at given sizes: one module with the
    kernels of `kinds` (KERNELS' keys), layouts in that order."""
    prog = prog or compile_program(cell)
    module, layouts = llvm_ir.build_module(
        [(getattr(prog, KERNELS[k][0]), KERNELS[k][1]) for k in kinds], sizes, dtype,
        gemm_names(dtype, blas_kind), features=kernel_features(),
        symbols=cell.symbols, team=True)
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


def _size_data(d) -> int | list:
    """A size as native_calls' plain data: an int, or for a Dim with symbols its monomials
    [numerator, denominator, symbol, ...], highest degree first (as Dim prints)."""
    if not isinstance(d, Dim):
        return int(d)
    if d.constant is not None:
        return int(d)
    terms = sorted(d.terms, key=lambda mc: (-len(mc[0]), mc[0]))
    return [[c.numerator, c.denominator, *m] for m, c in terms]


def _shape_spec(t, sizes: dict[str, int] | None) -> list:
    """A type's array shape with symbolic rows: "TB" (T*B), "B", then ints (sizes None: the
    feature sizes as size data, see _size_data)."""
    rows = {Batch.SEQ: ["TB"], Batch.STEP: ["B"], Batch.NONE: []}[t.batch]
    if sizes is None:
        return rows + [_size_data(d) for d in t.shape]
    return rows + [int(d.evaluate(sizes)) for d in t.shape]


def _symbolic_dims(func: Func) -> list:
    """Every feature size with symbols of the values of a function and its loops' steps, each
    once: a generic kernel's sizes must make them all positive whole numbers."""
    found: list[Dim] = []

    def walk(f: Func):
        for v in (*f.params, *(o for i in f.body for o in i.outs)):
            for d in v.type.shape:
                if d.constant is None and d not in found:
                    found.append(d)
        for i in f.body:
            if isinstance(i.attrs.get("step"), Func):
                walk(i.attrs["step"])

    walk(func)
    return [_size_data(d) for d in found]


def kernel_spec(func: Func, layout: llvm_ir.Layout, sizes: dict[str, int] | None,
                dtype: str) -> dict:
    """A compiled function as the plain data native_calls checks calls against (the AOT
    loader's KERNELS holds the same, as a literal). sizes None: a generic kernel's spec."""
    assert layout.n_args == len(func.params), (layout.name, layout.n_args, len(func.params))
    spec = {
        "dtype": dtype,
        "sizes": list(layout.symbols),
        "args": [(p.name, _shape_spec(p.type, sizes)) for p in func.params],
        "results": [(kind, k, _shape_spec(r.type, sizes))
                    for (kind, k), r in zip(layout.results, func.results)],
        "buffers": layout.n_buffers,
        "workspace": [_size_data(c) for c in layout.workspace],
    }
    if sizes is None:
        spec["generic"] = True
        spec["dims"] = _symbolic_dims(func)
    return spec


@dataclass
class Kernel:
    layout: llvm_ir.Layout
    func: Func
    address: int
    sizes: dict[str, int] | None  # None: a generic kernel, run at the sizes each call gives
    dtype: np.dtype
    # The ExecutionEngine that owns the code at `address`. Held here so that a kernel in use
    # stays valid after the in-memory cache evicts it: the code is freed with its last user.
    engine: Any = field(default=None, repr=False, compare=False)
    # Whether the code runs parallel work on the team passed in `sizes` (the programs' kernels
    # do; the single-step kernel leaves its products to the library's own threads).
    teams: bool = True

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

    def run(self, T: int, B: int, batch_sizes: np.ndarray, args: list, arrays: Arrays,
            sizes: dict[str, int] | None = None, threads: int = 1) -> list:
        """Call the kernel on checked arrays; return its results (arguments handed back as is).
        A generic kernel needs `sizes` (symbol -> int); a specialized one passes its own. Its
        time loops may split the batch rows across `threads` threads of torch's OpenMP team
        (see blas.team)."""
        threads, team = blas.team(threads, T * B) if self.teams else blas.no_team(threads)
        return native_calls._run_kernel(self._call, self.spec, T, B, batch_sizes, args, arrays,
                                        self.workspace, sizes or self.sizes, threads, team)

    def bind(self, sizes: dict[str, int]) -> BoundKernel:
        return BoundKernel(self, dict(sizes))


@dataclass
class BoundKernel:
    """A generic kernel at concrete sizes, with a Kernel's interface (`run`, `spec`): the spec
    is evaluated once here, and each call passes the sizes."""

    kernel: Kernel
    sizes: dict[str, int]

    def __post_init__(self):
        self.spec = native_calls._bind_kernel(self.kernel.spec, self.sizes)
        self.layout, self.func, self.dtype = self.kernel.layout, self.kernel.func, self.kernel.dtype

    def run(self, T: int, B: int, batch_sizes: np.ndarray, args: list, arrays: Arrays,
            threads: int = 1) -> list:
        threads, team = (blas.team(threads, T * B) if self.kernel.teams
                         else blas.no_team(threads))
        return native_calls._run_kernel(self.kernel._call, self.spec, T, B, batch_sizes, args,
                                        arrays, self.kernel.workspace, self.sizes, threads, team)


def _jit(module_ir, object_cache=None, quick: bool = False):
    """parse, verify, optimize (unless the object cache has the code) and JIT a module.
    `quick`: no optimization at all and LLVM's fast instruction selection (a tenth of the
    compile time; kernels that run slower, for the first calls only: see NativeProgram)."""
    llvm = _llvm()
    for name, address in blas.blas_symbols().items():
        llvm.add_symbol("cellc_" + name, address)
    if blas.sched_yield_address():  # for the split steps' barrier
        llvm.add_symbol("cellc_sched_yield", blas.sched_yield_address())
    if blas_choice() == "mkl":
        for name, address in blas.torch_mkl_symbols().items():
            llvm.add_symbol("cellc_" + name, address)
    raw = str(module_ir)
    mod = llvm.parse_assembly(raw)
    mod.verify()
    tm = target_machine(opt=0 if quick else 3)
    # The entry is read and checked once: MCJIT's own load() call gets the same answer.
    cached = object_cache is not None and object_cache.load(None) is not None
    if not cached and not quick:
        optimize(mod, tm, unroll=False)
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
    optimize(mod, tm, unroll=False)
    optimized = str(mod)
    stem = Path(folder) / hashlib.sha256(raw.encode()).hexdigest()[:16]
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".raw.ll").write_text(raw)
        stem.with_suffix(".opt.ll").write_text(optimized)
        stem.with_suffix(".s").write_text(tm.emit_assembly(mod))
    except OSError as e:
        warnings.warn(f"CELLC_DUMP_LLVM={folder}: {e.strerror or e}", stacklevel=2)


def _compile_kernel(kind: str, cell: CellIR, sizes, dtype: np.dtype, prog: Program,
                    blas_kind: str, object_cache, quick: bool = False):
    """(Kernel, optimized module) of one kind (KERNELS) of a program, in a module of its own."""
    module, (layout,), _ = render(cell, sizes, dtype.name, prog=prog, blas_kind=blas_kind,
                                  kinds=(kind,))
    engine, mod = _jit(module, object_cache, quick)
    kernel = Kernel(layout, getattr(prog, KERNELS[kind][0]),
                    engine.get_function_address(layout.name), sizes, dtype, engine=engine)
    return kernel, mod


def _fill(future: Future, compile_kernel) -> None:
    """Run a compile for a future: its kernel, or the exception for every waiter."""
    try:
        future.set_result(compile_kernel()[0])
    except BaseException as e:
        future.set_exception(e)


class NativeProgram:
    """A cell compiled to native code for concrete sizes and one dtype: forward and backward
    over whole sequences, each kernel in an LLVM module and MCJIT engine of its own.

    The forward is compiled here. The backward is compiled on first use of `backward_kernel`,
    or earlier in a background thread once `prefetch_backward()` says one will follow (the
    layers call it when autograd records the forward). So an inference call compiles no
    backward, and a training step's backward compiles while its forward runs. (llvmlite runs
    one LLVM call at a time, process-wide, so the two compiles never overlap each other, only
    the forward's run and the Python around it.) `object_cache`: kind ("forward",
    "backward") -> DiskObjectCache or None, one entry per module."""

    provisional = False  # the final program for its sizes (see BoundProgram)

    def __init__(self, cell: CellIR, sizes: dict[str, int], dtype="float32", prog=None,
                 object_cache=None, blas_kind: str | None = None, quick: bool = False):
        self.cell = cell
        self.sizes = None if sizes is None else dict(sizes)  # None: generic (see bind)
        self.quick = quick  # unoptimized code (see _jit): a stand-in until optimized code is made
        self.dtype = native_calls._float_dtype(dtype)
        self.blas_kind = blas_kind or blas_choice()
        self.program = prog or compile_program(cell)
        self._object_cache = object_cache or (lambda kind: None)
        self._backward: Future | None = None  # of the backward Kernel, once asked for
        self._backward_lock = threading.Lock()
        self._inference: Kernel | None = None
        # _module: the forward's LLVM module, optimized (tests read the vector code from it).
        self.forward_kernel, self._module = self._compile("forward")()

    @property
    def n_results(self) -> int:
        return self.program.n_results

    def _compile(self, kind: str):
        """A call that compiles one kernel: (Kernel, its module). It holds no reference to
        this program, so a program evicted during a background compile is still freed."""
        return functools.partial(_compile_kernel, kind, self.cell, self.sizes, self.dtype,
                                 self.program, self.blas_kind, self._object_cache(kind),
                                 self.quick)

    @property
    def backward_kernel(self) -> Kernel:
        """The backward kernel: compiled now on first use, or the prefetch's (waited for)."""
        return self._backward_future(background=False).result()

    @property
    def inference_kernel(self) -> Kernel:
        """The forward that saves nothing (calls without gradients): compiled on first use.
        Its results are the forward's first n_results."""
        with self._backward_lock:
            if self._inference is None:
                self._inference = self._compile("inference")()[0]
            return self._inference

    @property
    def inference_used(self) -> bool:
        return self._inference is not None

    def prefetch_backward(self) -> None:
        """Start compiling the backward in a background thread, unless it is compiled or under
        way: for callers that know a backward will follow."""
        self._backward_future(background=True)

    def wait_for_backward(self) -> None:
        """Return once no compile of the backward is under way (whatever its outcome)."""
        future = self._backward
        if future is not None:
            futures.wait([future])

    @property
    def backward_state(self) -> str:
        """"not compiled", "compiling" or "compiled" (what tests and benchmarks observe)."""
        future = self._backward
        return "not compiled" if future is None else "compiled" if future.done() else "compiling"

    def _backward_future(self, background: bool) -> Future:
        with self._backward_lock:
            future = self._backward
            start = future is None or (future.done() and future.exception() is not None)
            if start:  # first use, or the last attempt failed: (re)compile
                future = self._backward = Future()
        if start:
            job = functools.partial(_fill, future, self._compile("backward"))
            if background:
                # Not a daemon: interpreter exit waits for it rather than tearing LLVM down
                # under a compile in progress.
                threading.Thread(target=job, name="cellc-backward-compile").start()
            else:
                job()
        return future

    def bind(self, sizes: dict[str, int]):
        """This program at concrete sizes (symbol -> int), with the interface the layers and
        NativeCell use (forward_kernel, backward_kernel, n_results, program, sizes): for generic
        kernels a `BoundProgram` (sizes checked as cell.bind checks them), for specialized
        ones the program itself, after checking the sizes are its own."""
        sizes = dict(sizes)
        if self.sizes is not None:
            if sizes != self.sizes:
                raise ValueError(f"this program is specialized to {self.sizes}, not {sizes}")
            return self
        known = {s.symbol: s.arg for s in self.cell.sizes if s.symbol in self.cell.symbols}
        if set(sizes) != set(known):
            raise ValueError(f"sizes must give exactly {sorted(known)}, got {sorted(sizes)}")
        sizes = self.cell.bind(**{known[k]: v for k, v in sizes.items()})
        return BoundProgram(self, sizes)


class BoundProgram:
    """A generic NativeProgram at concrete sizes (NativeProgram.bind). The backward is bound
    on first use, so it is compiled (or prefetched) when the generic program's would be.
    `provisional`: a specialized program is on its way (cache.native_program), ask again."""

    provisional = False

    def __init__(self, generic: NativeProgram, sizes: dict[str, int]):
        self.generic, self.sizes = generic, dict(sizes)
        self.cell, self.dtype, self.program = generic.cell, generic.dtype, generic.program
        self.forward_kernel = generic.forward_kernel.bind(self.sizes)
        self._backward: BoundKernel | None = None
        self._inference: BoundKernel | None = None

    @property
    def n_results(self) -> int:
        return self.program.n_results

    @property
    def backward_kernel(self) -> BoundKernel:
        if self._backward is None:
            self._backward = self.generic.backward_kernel.bind(self.sizes)
        return self._backward

    @property
    def inference_kernel(self) -> BoundKernel:
        if self._inference is None:
            self._inference = self.generic.inference_kernel.bind(self.sizes)
        return self._inference

    @property
    def inference_used(self) -> bool:
        return self.generic.inference_used

    def prefetch_backward(self) -> None:
        self.generic.prefetch_backward()

    @property
    def backward_state(self) -> str:
        return self.generic.backward_state

    def bind(self, sizes: dict[str, int]):
        return self.generic.bind(sizes)


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
                  np.dtype(dtype), engine=engine, teams=False)
