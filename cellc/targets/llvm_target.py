"""The llvm target: native CPU kernels through llvmlite, forward and backward over whole sequences.

`cellc.load(path, target="llvm")` gives a `NativeModule` (torch.nn-compatible layer classes over
JIT-compiled kernels, backends/llvm_layers.py, and a NumPy-level `native(...)`), `cellc compile
--target llvm` writes a shared library, its C header and a loader (backends/aot.py), and `cellc
show --emit llvm` prints the LLVM IR. torch and llvmlite are imported on first use only.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .. import frontend  # frontend.load_file looked up per call, so a patch of it applies
from ..lower import CellIR
from ..variants import variant
from ._common import UsageError, make_dirs, parse_sizes, remove_dirs, writing
from ._spec import Stage, Table, Target


class NativeModule:
    """What `load(path, target="llvm")` returns: the cell's torch.nn-compatible classes (built
    on first use, so that the NumPy-level API works without torch) and `native(...)`."""

    def __init__(self, cell):
        self.cell = cell
        self.__name__ = f"cellc_llvm_{cell.name}"
        self._classes = None

    def native(self, dtype="float32", threads: int | None = None, **size_args):
        """A NativeCell: forward/backward/step over NumPy arrays (see cellc.native)."""
        from ..native import NativeCell

        return NativeCell(self.cell, dtype=dtype, threads=threads, **size_args)

    def _layer_classes(self):
        if self._classes is None:
            from ..backends.llvm_layers import make_llvm_layers

            self._classes = make_llvm_layers(self.cell)
        return self._classes

    def __getattr__(self, name):
        cell_name = self.__dict__["cell"].name
        if name in ("Layer", cell_name):
            return self._layer_classes()[0]
        if name in ("Cell", cell_name + "Cell"):
            return self._layer_classes()[1]
        raise AttributeError(name)

    def __repr__(self):
        return f"<cellc llvm module for {self.cell.name} ({self.cell.source.name})>"


def _load_native(path) -> CellIR:
    """The checked cell (a located error for a malformed file)."""
    return frontend.load_file(path)


def load(path: str | Path, key: str) -> NativeModule:
    return NativeModule(_load_native(path))


def _form_and_sizes(args, cell, required=False):
    """(the cell's form, --sizes as its size symbols), with 16 for any size not given unless
    `required`; or (cell, None) without --sizes: the generic kernels. The form is the one the
    sizes ask for (cellc/variants.py: proj_size=2 is the other form of lstm.cell)."""
    if args.sizes is None or (not required and not args.sizes):
        return cell, None
    sizes = parse_sizes(args.sizes, cell, required=required)
    return variant(cell, sizes), sizes


def show_llvm(args) -> str:
    """`cellc show FILE --emit llvm [--sizes ...] [--dtype ...]`: the kernels' LLVM IR,
    specialized to --sizes, or without them the generic kernels (sizes given at run time)."""
    from ..backends.llvm_jit import render

    cell = _load_native(args.file)
    cell, sizes = _form_and_sizes(args, cell)
    module, _, _ = render(cell, sizes, args.dtype)  # OpenBLAS calls (no torch here)
    if sizes is None:
        symbols = ", ".join(cell.symbols)
        return f"; generic (sizes {symbols} at run time), {args.dtype}\n{module}"
    return f"; sizes {sizes}, {args.dtype}\n{module}"


def show_plan(args) -> str:
    """`cellc show FILE --emit plan [--sizes ...]`: the lowering plan of the native kernels, with
    the capabilities of this machine's kernels (inline products when it has vector units);
    without --sizes the generic plan (every product a library GEMM)."""
    from .. import pipeline
    from ..backends.llvm_gemm import panel_width
    from ..backends.llvm_jit import kernel_features
    from ..lowering import Caps, format_plan, plan, verify_plan

    cell = _load_native(args.file)
    for w in cell.warnings:
        print(w, file=sys.stderr)
    cell, sizes = _form_and_sizes(args, cell)
    prog = pipeline.compile_program(cell)
    funcs = [(prog.fwd, "cellc_forward"), (prog.bwd, "cellc_backward")]
    # The plan of the JIT's kernels: products it does not inline go to the library, one
    # thread per call on the team (see blas.team).
    features = kernel_features()
    caps = Caps(inline_products=bool(features), library_in_team=True,
                panel=panel_width(args.dtype, features) if features else 0)
    symbols = cell.symbols
    return format_plan(verify_plan(plan(funcs, sizes, caps, symbols)))


def compile_to_disk(args) -> int:
    """`cellc compile FILE --target llvm [--sizes ...] [-o DIR]`: library, header and loader,
    with the BLAS the library links beside them. Without --sizes the kernels are size-generic
    (the sizes are run-time arguments); with it, specialized to those sizes."""
    from ..backends import aot

    cell = _load_native(args.file)
    cell, sizes = _form_and_sizes(args, cell, required=True)
    # The path as given, even '-evil': aot.build keeps it from reading as a flag to cc.
    out = Path(args.output or (Path(args.file).stem + "_llvm"))
    with writing(out):
        if out.exists() and not out.is_dir():
            raise UsageError(f"-o {out}: exists and is not a directory")
        created = make_dirs(out)
        try:
            written = aot.build(cell, sizes, out)
        except BaseException as e:
            remove_dirs(created)  # leave nothing behind, not even the empty folders
            if isinstance(e, aot.LinkError):
                print(f"cellc: error: {e}", file=sys.stderr)
                return 1
            raise
    for f in written:
        print(f"wrote {f}")
    header = next(f for f in written if f.suffix == ".h")
    print("\n".join(aot.summary(cell, sizes, header)))
    return 0


TARGET = Target(
    name="llvm",
    order=1,
    load=load,
    compile=compile_to_disk,
    compile_help="a shared library, its C header and a numpy/ctypes loader, in a directory"
                 " with the BLAS library they link (a folder that runs anywhere)",
    output_help="output directory (default: FILE's name with _llvm)",
    sizes_help="specialize the kernels to these size arguments, e.g."
               " input_size=8,hidden_size=16 (default: generic kernels, sizes given at run time)",
    stages=(
        Stage("plan", "the lowering plan of the native kernels: fused kernels, product"
              " strategies, buffers, the time loop", show_plan, sized=True),
        Stage("llvm", "the LLVM IR of the native kernels", show_llvm, sized=True),
    ),
    tables=(
        # Elementwise ops only: products, reductions, views, concat, const and the time loop are
        # decided and emitted by the code generator itself (backends/llvm_ir.py).
        Table("cellc.backends.llvm_ir", "TABLE", kinds=frozenset({"elementwise"})),
        # The layers' double backward (create_graph=True) reruns a direction through the eager
        # torch interpreter, which loops over time in Python (no "scan" row).
        Table("cellc.backends.torch_eager", "TORCH_EAGER", outside=frozenset({"scan"})),
    ),
)
