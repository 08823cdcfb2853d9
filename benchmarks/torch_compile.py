"""torch.compile(fullgraph=True) of cellc layers: compile time against sequence length.

    python benchmarks/torch_compile.py                      # inductor, both targets
    python benchmarks/torch_compile.py --backend aot_eager --targets llvm

For each target (torch: the generated module, whose custom op cellc_gen::lstm_<hash> runs the
time loop; llvm: one cellc::NativeSequence custom op per direction) and T in 10 and 1000, a
model (LSTM layer + Linear head, B=8, I=H=32, float32) is compiled from scratch
(torch._dynamo.reset()) and timed:
  compile s   the first call (tracing, compiling, one forward and backward) less a later one;
              inductor's FX graph cache and AOTAutograd's cache are off, so every compile traces
              and lowers again (the C++ kernels inductor built before are reused by source hash)
  run ms      the median of later forward+backward calls of the compiled model
  eager ms    the same in eager mode
It prints the ratio compile(T=1000) / compile(T=10) per target: about 1 when the time loop stays
a loop in the graph (compile time independent of T); a loop unrolled by tracing grows with T.
Outputs and gradients of the compiled model are checked against eager first. A first,
untimed compile per target (T=3) takes the one-time costs out of the numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch._functorch.config
import torch._inductor.config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
# Specialized kernels from the first call (the default runs generic stand-ins first, see
# cellc/backends/cache.py): the numbers compare settled kernels.
os.environ.setdefault("CELLC_SPECIALIZE", "now")

import cellc

B, I, H = 8, 32, 32
LENGTHS = (10, 1000)
WARM_UP_T = 3


class Model(torch.nn.Module):
    def __init__(self, layer_class):
        super().__init__()
        self.rnn = layer_class(I, H)
        self.head = torch.nn.Linear(H, 1)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y)


def step(fn, x):
    fn(x).sum().backward()


def median_ms(fn, x, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        step(fn, x)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def measure(target, T, backend, repeat):
    torch.manual_seed(0)
    mod = cellc.load(ROOT / "cells" / "lstm.cell", target=target)
    model = Model(mod.LSTM)
    x = torch.randn(T, B, I)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend, dynamic=False)
    t0 = time.perf_counter()
    step(compiled, x)
    first_s = time.perf_counter() - t0
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)
    # gradients too: a backend that miscompiles the backward must not print numbers
    grads = [torch.autograd.grad(fn(x).sum(), model.parameters()) for fn in (compiled, model)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    run_ms = median_ms(compiled, x, repeat)
    return first_s - run_ms / 1e3, run_ms, median_ms(model, x, repeat)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default="inductor", help="torch.compile's (default: inductor)")
    ap.add_argument("--targets", default="torch,llvm")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch._inductor.config.fx_graph_cache = False  # measure compiling, not loading from disk
    torch._functorch.config.enable_autograd_cache = False
    print(f"backend={args.backend}  B={B} I={I} H={H}  1 thread  load {os.getloadavg()[0]:.2f}")
    print(f"{'target':8} {'T':>5} {'compile s':>10} {'run ms':>9} {'eager ms':>9}")
    for target in args.targets.split(","):
        compile_times = {}
        # Untimed: the first compile in a process also pays one-time costs (imports, inductor's
        # start-up, the llvm target's kernels for these sizes) that are not the graph's.
        measure(target, WARM_UP_T, args.backend, 1)
        for T in LENGTHS:
            c, run, eager = measure(target, T, args.backend, args.repeat)
            compile_times[T] = c
            print(f"{target:8} {T:>5} {c:>10.2f} {run:>9.2f} {eager:>9.2f}", flush=True)
        ratio = compile_times[LENGTHS[-1]] / compile_times[LENGTHS[0]]
        print(f"{target:8} compile time T={LENGTHS[-1]} / T={LENGTHS[0]}: {ratio:.2f}")
    print(f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
