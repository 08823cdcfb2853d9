"""Benchmark the PyTorch target of cellc against torch.nn and a hand-written Python-loop cell.

    python benchmarks/torch_target.py                 # full sizes, 1 thread
    python benchmarks/torch_target.py --quick         # shorter sequences, fewer runs
    python benchmarks/torch_target.py --threads 4 --cells lstm,gru

For each cell (LSTM, GRU, RNN) and size it times, as the median of N runs after warm-up:
  fwd      the forward pass under torch.no_grad()
  fwd+bwd  forward, a scalar loss over the outputs and final states, and backward
for four implementations holding the same weights:
  torch.nn      torch.nn.LSTM / GRU / RNN (the reference; its time in ms is printed)
  cellc         the module cellc generates from cells/<cell>.cell (symbolic backward)
  cellc-ad      the same module with SYMBOLIC_BACKWARD = False (torch autograd of its loop)
  eager-loop    the usual hand-written cell: a Python loop over time of torch ops
and prints the other three as speedups over torch.nn measured in the same run: torch.nn time /
candidate time, so 2.00x is twice as fast and 0.50x twice as slow (as benchmarks/llvm_target.py).
Before timing, each implementation's outputs are checked against torch.nn.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import cellc

SIZES = [  # (T, B, I, H)
    (100, 64, 256, 256),
    (100, 1, 256, 256),
    (1000, 8, 32, 64),
]
TORCH_NN = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}


# ---------------------------------------------------------------------------------------------
# The usual hand-written cells, looped in Python


class EagerLoop(torch.nn.Module):
    """One-layer recurrent net as people write it by hand: a cell function called per step.
    Parameter names follow torch.nn, so a torch.nn state dict loads into it."""

    def __init__(self, kind: str, I: int, H: int):
        super().__init__()
        gates = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
        self.kind, self.H = kind, H
        self.weight_ih_l0 = torch.nn.Parameter(torch.empty(gates * H, I))
        self.weight_hh_l0 = torch.nn.Parameter(torch.empty(gates * H, H))
        self.bias_ih_l0 = torch.nn.Parameter(torch.empty(gates * H))
        self.bias_hh_l0 = torch.nn.Parameter(torch.empty(gates * H))

    def cell(self, x, state):
        w_ih, w_hh, b_ih, b_hh = (self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0,
                                  self.bias_hh_l0)
        if self.kind == "lstm":
            h, c = state
            i, f, g, o = (x @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * torch.tanh(c), (torch.sigmoid(o) * torch.tanh(c), c)
        (h,) = state
        if self.kind == "gru":
            xr, xz, xn = (x @ w_ih.T + b_ih).chunk(3, 1)
            hr, hz, hn = (h @ w_hh.T + b_hh).chunk(3, 1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            h = (1 - z) * n + z * h
            return h, (h,)
        h = torch.tanh(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh)
        return h, (h,)

    def forward(self, xs):
        B = xs.shape[1]
        state = tuple(xs.new_zeros(B, self.H) for _ in range(2 if self.kind == "lstm" else 1))
        ys = []
        for x in xs:
            y, state = self.cell(x, state)
            ys.append(y)
        final = tuple(s[None] for s in state)
        return torch.stack(ys), (final if self.kind == "lstm" else final[0])


# ---------------------------------------------------------------------------------------------


def as_list(h):
    return [h] if isinstance(h, torch.Tensor) else list(h)


def loss_of(module, x):
    out, h = module(x)
    return out.sum() + sum(t.sum() for t in as_list(h))


def median_ms(fn, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def bench_one(kind, T, B, I, H, runs, warmup, gen_mod):
    torch.manual_seed(0)
    ref = TORCH_NN[kind](I, H)
    ours = gen_mod.Layer(I, H)
    ours.load_state_dict(ref.state_dict())
    loop = EagerLoop(kind, I, H)
    loop.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I)

    with torch.no_grad():  # the same numbers first
        want = ref(x)[0]
        for name, m in (("cellc", ours), ("eager-loop", loop)):
            got = m(x)[0]
            err = (got - want).abs().max().item()
            if not err < 1e-4:
                raise SystemExit(f"{kind} T={T} B={B}: {name} differs from torch.nn by {err}")

    def fwd(m):
        def run():
            with torch.no_grad():
                m(x)
        return run

    def fwd_bwd(m):
        def run():
            m.zero_grad(set_to_none=True)
            loss_of(m, x).backward()
        return run

    def with_autograd(fn):
        def run():
            old = gen_mod.SYMBOLIC_BACKWARD
            gen_mod.SYMBOLIC_BACKWARD = False
            try:
                fn()
            finally:
                gen_mod.SYMBOLIC_BACKWARD = old
        return run

    rows = []
    for label, make in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
        base = median_ms(make(ref), runs, warmup)
        cols = {
            "cellc": median_ms(make(ours), runs, warmup),
            "cellc-ad": median_ms(with_autograd(make(ours)), runs, warmup),
            "eager-loop": median_ms(make(loop), runs, warmup),
        }
        rows.append((label, base, cols))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--quick", action="store_true",
                   help="sequences 10x shorter, 3 runs, 1 warm-up: checks the script works")
    p.add_argument("--runs", type=int, default=None, help="timed runs per number (default 11)")
    p.add_argument("--cells", default="lstm,gru,rnn", help="comma-separated: lstm,gru,rnn")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be at least 1")
    kinds = [k.strip() for k in args.cells.split(",") if k.strip()]
    for k in kinds:
        if k not in TORCH_NN:
            p.error(f"unknown cell {k!r}; choose from {', '.join(TORCH_NN)}")
    torch.set_num_threads(args.threads)
    runs = args.runs or (3 if args.quick else 11)
    warmup = 1 if args.quick else 2
    sizes = [(max(1, T // 10) if args.quick else T, B, I, H) for T, B, I, H in SIZES]

    print(f"cellc {cellc.__version__} torch target vs torch.nn; torch {torch.__version__},"
          f" {torch.get_num_threads()} thread(s), median of {runs} runs after {warmup} warm-up"
          f"{' (--quick: T/10)' if args.quick else ''}")
    print("times: torch.nn in ms; the others as speedups over torch.nn (higher is faster)")
    header = (f"{'cell':<5} {'T':>5} {'B':>3} {'I':>4} {'H':>4}  {'pass':<8}"
              f" {'torch.nn ms':>11} {'cellc':>8} {'cellc-ad':>9} {'eager-loop':>10}")
    print(header)
    print("-" * len(header))
    ratios = {"cellc": [], "cellc-ad": [], "eager-loop": []}
    for kind in kinds:
        gen_mod = cellc.load(ROOT / "cells" / f"{kind}.cell", target="torch")
        for T, B, I, H in sizes:
            for label, base, cols in bench_one(kind, T, B, I, H, runs, warmup, gen_mod):
                r = {k: base / v for k, v in cols.items()}
                for k in ratios:
                    ratios[k].append(r[k])
                print(f"{kind.upper():<5} {T:>5} {B:>3} {I:>4} {H:>4}  {label:<8} {base:>11.2f}"
                      f" {r['cellc']:>7.2f}x {r['cellc-ad']:>8.2f}x {r['eager-loop']:>9.2f}x",
                      flush=True)
    geo = {k: math.exp(statistics.fmean(math.log(v) for v in vs)) for k, vs in ratios.items()}
    print("-" * len(header))
    print(f"{'geometric mean of the speedups':<44} {geo['cellc']:>7.2f}x {geo['cellc-ad']:>8.2f}x"
          f" {geo['eager-loop']:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
