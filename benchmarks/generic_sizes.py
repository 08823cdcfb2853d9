"""Generic (size-independent) native kernels against the kernels specialized to one size.

    python benchmarks/generic_sizes.py                 # lstm and gru, the shapes below
    python benchmarks/generic_sizes.py --quick         # smoke run: short sequences, 1 repeat
    python benchmarks/generic_sizes.py --cells lstm --shapes 0,3 --repeat 5

For each cell and shape (T, B, I, H), float32, through the NumPy API (cellc.native.NativeCell;
the generic program bound to the shape's sizes stands in for the specialized one in a copy):
  fwd      NativeCell.forward
  fwd+bwd  forward, then backward with cotangents for the outputs
as the median of --repeat runs after one warm-up, printed as generic time / specialized time
measured in the same run (1.00x: as fast; 1.25x: the generic kernels take 25% longer). The
generic kernels send every product to the library GEMM (the inlined, register-blocked kernel
of the specialized ones is specialized on K and N), and their elementwise loops have run-time
trip counts.

It also prints the compile time (forward and backward kernels, no disk cache) of each: the
generic one is paid once per cell and dtype, the specialized one per size. The machine's load
average is printed: numbers taken under load (other processes on the cores) are not reliable.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

import numpy as np

# Specialized kernels from the first call (the default runs generic stand-ins first, see
# cellc/backends/cache.py): the numbers compare settled kernels.
os.environ.setdefault("CELLC_SPECIALIZE", "now")

from cellc.backends import llvm_jit
from cellc.frontend import load_file
from cellc.native import NativeCell

ROOT = Path(__file__).resolve().parent.parent
SHAPES = [  # (T, B, I, H), as in benchmarks/llvm_target.py; --shapes picks by index
    (100, 64, 256, 256),
    (100, 1, 256, 256),
    (50, 16, 512, 1024),
    (1000, 8, 32, 64),
]
CELLS = ["lstm", "gru"]


def compile_seconds(cell, sizes) -> tuple[float, llvm_jit.NativeProgram]:
    start = time.perf_counter()
    program = llvm_jit.NativeProgram(cell, sizes, "float32")
    program.backward_kernel  # noqa: B018 -- compiled on first use
    return time.perf_counter() - start, program


def median_seconds(fn, repeat: int) -> float:
    fn()  # warm-up: page faults of the buffers, BLAS threads
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def workloads(nc, T: int, B: int, rng):
    params = nc.init_params(rng)
    xs = rng.standard_normal((T, B, nc._input_size)).astype(np.float32)
    d_ys = rng.standard_normal((T, B, nc._output_size)).astype(np.float32)

    def fwd():
        nc.forward(xs, params)

    def fwd_bwd():
        _, _, tape = nc.forward(xs, params)
        nc.backward(tape, d_ys)

    return fwd, fwd_bwd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--shapes", default=",".join(str(i) for i in range(len(SHAPES))))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="T at most 20, 1 repeat")
    args = ap.parse_args()
    repeat = 1 if args.quick else args.repeat
    print(f"load average {os.getloadavg()[0]:.2f}; float32; ratios are generic / specialized")
    for name in args.cells.split(","):
        cell = load_file(str(ROOT / "cells" / f"{name}.cell"))
        generic_compile, generic = compile_seconds(cell, None)
        print(f"\n{name}: generic compile (fwd+bwd) {generic_compile:.2f} s, once for every size")
        print(f"  {'T':>5} {'B':>4} {'I':>5} {'H':>5}   {'spec compile':>12}   "
              f"{'fwd spec ms':>11} {'ratio':>6}   {'fwd+bwd spec ms':>15} {'ratio':>6}")
        for k in (int(i) for i in args.shapes.split(",")):
            T, B, I, H = SHAPES[k]
            T = min(T, 20) if args.quick else T
            spec_nc = NativeCell(cell, dtype="float32", input_size=I, hidden_size=H)
            spec_compile, spec_nc._program = compile_seconds(cell, spec_nc.sizes)
            gen_nc = copy.copy(spec_nc)
            gen_nc._program = generic.bind(spec_nc.sizes)
            rng = np.random.default_rng(0)
            s_fwd, s_both = workloads(spec_nc, T, B, rng)
            rng = np.random.default_rng(0)
            g_fwd, g_both = workloads(gen_nc, T, B, rng)
            sf, gf = median_seconds(s_fwd, repeat), median_seconds(g_fwd, repeat)
            sb, gb = median_seconds(s_both, repeat), median_seconds(g_both, repeat)
            print(f"  {T:>5} {B:>4} {I:>5} {H:>5}   {spec_compile:>10.2f} s   "
                  f"{sf * 1e3:>11.2f} {gf / sf:>5.2f}x   {sb * 1e3:>15.2f} {gb / sb:>5.2f}x")
    print(f"\nload average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
