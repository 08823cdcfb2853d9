"""Benchmark the llvm target of cellc (native kernels) against torch.nn and the usual alternatives.

    python benchmarks/llvm_target.py                  # full run: 1 and 2 threads, all cells/shapes
    python benchmarks/llvm_target.py --quick          # smoke run: tiny T, 1 repeat, 1 thread
    python benchmarks/llvm_target.py --cells lstm --shapes 0,1 --threads 2 --markdown
    python benchmarks/llvm_target.py --no-compile --json results.json

For each cell (cells/lstm.cell, gru.cell, rnn.cell), shape (T, B, I, H) and thread count it
times, as the median of --repeat runs after warm-up, float32:
  fwd      the forward pass under torch.no_grad()
  fwd+bwd  forward, output.sum(), backward w.r.t. the input and every parameter
for five implementations holding the same weights:
  (a) llvm       cellc.load(cell, target="llvm").Layer: the time loop in native code
  (b) torch-tgt  cellc.load(cell, target="torch").Layer: the generated PyTorch module
  (c) torch.nn   torch.nn.LSTM / GRU / RNN: the reference, printed in ms
  (d) eager      the usual hand-written cell: torch ops per step in a Python loop over time
  (e) compiled   (d) with its step function under torch.compile (the step, not the loop:
                 compiling the loop unrolls T); its compile time (first call minus a normal
                 call) is reported separately. Slow to compile: --no-compile skips it.
Every time is printed as a speedup over torch.nn measured in the same run (torch.nn time /
candidate time: 2.0x = twice as fast, 0.5x = twice as slow). For (a) it also prints the achieved
GFLOP/s (forward FLOPs = 2*T*B*G*H*(I+H), G = 4 LSTM, 3 GRU, 1 RNN; forward+backward counted as
3x) and that as a fraction of this machine's sgemm peak, measured at the start of the run
(torch.mm, 2048x2048 float32, best of a few) at each thread count.

Each implementation is timed in a block of its own, after a pause of PAUSE_S (so that threads
another block left spinning have gone to sleep), with the process's peak resident memory during
the block (peak RSS MB, llvm / torch.nn) and, for fwd+bwd, the MB that one forward saves for the
backward (saved MB: the tensors autograd keeps, inputs and weights included). A last measurement
times torch.nn.LSTM's forward alone, right after a forward of the llvm layer and PAUSE_S after
one: a cellc call must not slow the torch ops that follow it.

It also measures the JIT compile time of lstm.cell (forward+backward kernels) for the llvm target
at T=10 and T=1000, each in a fresh process with an empty temporary CELLC_CACHE_DIR (so neither
the in-memory nor the disk cache hides it): the first call of a layer minus a warm call. The
kernels are compiled per (I, H), not per T, so the two should agree.

Before timing, every implementation's output is checked against torch.nn (max abs difference
< 1e-4; the llvm layer's input gradient too), so the benchmark also guards correctness. The
machine's load average is printed at the start and the end: results taken above a 1-minute load
of 0.5 are not reliable (other processes take the cores; 2-thread runs suffer most).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
# Time the specialized kernels (as before the size-generic ones existed): by default a layer's
# first calls at new sizes run unoptimized generic stand-ins while the specialized kernels compile
# in the background (cellc/backends/cache.py), which would mix the two into the medians.
os.environ.setdefault("CELLC_SPECIALIZE", "now")

import cellc

SHAPES = [  # (T, B, I, H); --shapes picks by index
    (100, 64, 256, 256),
    (100, 1, 256, 256),
    (50, 16, 512, 1024),
    (1000, 8, 32, 64),
    (20, 4, 64, 128),  # a training-size step: small batch, short window
    (20, 32, 1, 32),  # the README's sunspot forecaster (its first layer, a batch of windows)
]
# The "torch op after a cellc call" measurement: torch.nn.LSTM forward at this shape alone,
# right after the llvm layer's forward at the same shape, and PAUSE_S after one.
AFTER_SHAPE = (100, 64, 256, 256)
PAUSE_S = 0.2  # between one implementation's block of runs and the next: idle threads sleep
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
TORCH_NN = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}
CANDIDATES = ["llvm", "torch-tgt", "torch.nn", "eager", "compiled"]
TOLERANCE = 1e-4  # max abs difference of outputs vs torch.nn
GRAD_TOLERANCE = 1e-3  # llvm input gradient vs torch.nn, relative to the gradient's magnitude
JIT_PROBE_TS = (10, 1000)
JIT_PROBE_SHAPE = (4, 256, 256)  # (B, I, H) of the JIT compile-time probe (lstm.cell)
LOAD_WARN = 0.5


# ---------------------------------------------------------------------------------------------
# (d) and (e): the usual hand-written cells. Step functions take everything as arguments, so
# torch.compile sees a pure function of tensors.


def lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    gates = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def gru_step(x, h, w_ih, w_hh, b_ih, b_hh):
    xr, xz, xn = (x @ w_ih.T + b_ih).chunk(3, 1)
    hr, hz, hn = (h @ w_hh.T + b_hh).chunk(3, 1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    h = (1 - z) * n + z * h
    return (h,)


def rnn_step(x, h, w_ih, w_hh, b_ih, b_hh):
    return (torch.tanh(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh),)


STEPS = {"lstm": lstm_step, "gru": gru_step, "rnn": rnn_step}


class LoopLayer(torch.nn.Module):
    """One-layer recurrent net: `step` called in a Python loop over time. Parameter names follow
    torch.nn, so a torch.nn state dict loads into it. Returns (outputs, final states) like
    torch.nn (final states without the layer axis; the benchmark only uses the outputs)."""

    def __init__(self, kind: str, I: int, H: int, step):
        super().__init__()
        G = GATES[kind]
        self.n_states, self.H, self.step = (2 if kind == "lstm" else 1), H, step
        self.weight_ih_l0 = torch.nn.Parameter(torch.empty(G * H, I))
        self.weight_hh_l0 = torch.nn.Parameter(torch.empty(G * H, H))
        self.bias_ih_l0 = torch.nn.Parameter(torch.empty(G * H))
        self.bias_hh_l0 = torch.nn.Parameter(torch.empty(G * H))

    def forward(self, xs):
        params = (self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0)
        state = tuple(xs.new_zeros(xs.shape[1], self.H) for _ in range(self.n_states))
        ys = []
        for x in xs:
            state = self.step(x, *state, *params)
            ys.append(state[0])
        return torch.stack(ys), state


# ---------------------------------------------------------------------------------------------
# Candidate builders: each returns a module with torch.nn's weights, called as m(x) -> (ys, ...)


def build_torch_nn(kind, I, H):
    torch.manual_seed(0)
    return TORCH_NN[kind](I, H)


def build_llvm(kind, I, H, ref):
    layer = cellc.load(ROOT / "cells" / f"{kind}.cell", target="llvm").Layer(I, H)
    layer.load_state_dict(ref.state_dict())
    return layer


def build_torch_target(kind, I, H, ref):
    layer = cellc.load(ROOT / "cells" / f"{kind}.cell", target="torch").Layer(I, H)
    layer.load_state_dict(ref.state_dict())
    return layer


def build_eager(kind, I, H, ref):
    layer = LoopLayer(kind, I, H, STEPS[kind])
    layer.load_state_dict(ref.state_dict())
    return layer


def build_compiled(kind, I, H, ref):
    # A fresh dynamo state per build: its first call then pays the whole compile (which is what
    # we report), and the recompile limit is never hit across shapes (which would fall back to
    # eager without a word).
    torch._dynamo.reset()
    layer = LoopLayer(kind, I, H, torch.compile(STEPS[kind], dynamic=False))
    layer.load_state_dict(ref.state_dict())
    return layer


# ---------------------------------------------------------------------------------------------
# Timing


@dataclass
class Timing:
    first: float  # seconds of the very first call (includes any compile)
    times: list[float]  # seconds of the timed calls, after warm-up
    peak_mb: float = float("nan")  # the process's peak resident memory during the block

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def _status_kb(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(fn, repeat: int, warmup: int) -> Timing:
    """Time fn() in a block of its own: after a pause (the threads an earlier block left
    spinning go to sleep), its first call, `warmup` untimed calls, then `repeat` timed calls;
    with the peak RSS the block reached above the RSS it started at."""
    gc.collect()
    time.sleep(PAUSE_S)
    start_kb = _status_kb("VmRSS") if _reset_peak_rss() else None
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    peak_kb = _status_kb("VmHWM")
    peak = peak_kb / 1024 if start_kb is not None and peak_kb else float("nan")
    return Timing(first, times, peak)


def saved_mb(m, x) -> float:
    """MB of the tensors autograd saves for the backward in one forward of m (what a training
    step holds between its forward and backward; xs and the weights included)."""
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(x)[0].sum().backward()
    m.zero_grad(set_to_none=True)
    return total / 2**20


def after_cellc(threads: int, repeat: int, warmup: int) -> dict:
    """torch.nn.LSTM's forward at AFTER_SHAPE: alone (back to back), right after the llvm
    layer's forward at the same shape, and PAUSE_S after one. Medians in seconds."""
    T, B, I, H = AFTER_SHAPE
    ref = build_torch_nn("lstm", I, H)
    layer = build_llvm("lstm", I, H, ref)
    x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(1))
    op, cellc_call = forward_fn(ref, x), forward_fn(layer, x)
    alone = measure(op, repeat, warmup).median
    out = {"alone": alone}
    for name, pause in (("right after", 0.0), (f"{PAUSE_S:g} s after", PAUSE_S)):
        for _ in range(warmup):
            cellc_call()
            op()
        times = []
        for _ in range(repeat):
            cellc_call()
            if pause:
                time.sleep(pause)
            t0 = time.perf_counter()
            op()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return {"threads": threads, "shape": AFTER_SHAPE, **out}


def forward_fn(m, x):
    def run():
        with torch.no_grad():
            m(x)
    return run


def forward_backward_fn(m, x):
    def run():
        m.zero_grad(set_to_none=True)
        x.grad = None
        m(x)[0].sum().backward()
    return run


def sgemm_peak(quick: bool) -> float:
    """GFLOP/s of torch.mm on 2048x2048 float32 at the current thread count, best of a few."""
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(measure(lambda: torch.mm(a, b), 3 if quick else 7, 0).times)
    return 2 * n**3 / best / 1e9


def forward_flops(kind, T, B, I, H) -> float:
    return 2.0 * T * B * GATES[kind] * H * (I + H)


# ---------------------------------------------------------------------------------------------
# Correctness guard


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def check_output(name, m, ref_out, x, where):
    with torch.no_grad():
        err = max_diff(m(x)[0], ref_out)
    if not err < TOLERANCE:
        raise SystemExit(f"{where}: {name} output differs from torch.nn by {err:.3g}"
                         f" (tolerance {TOLERANCE})")


def check_input_grad(name, m, ref, x, where):
    grads = []
    for mod in (ref, m):
        xg = x.detach().clone().requires_grad_(True)
        mod(xg)[0].sum().backward()
        mod.zero_grad(set_to_none=True)
        grads.append(xg.grad)
    err = max_diff(grads[1], grads[0]) / max(1.0, grads[0].abs().max().item())
    if not err < GRAD_TOLERANCE:
        raise SystemExit(f"{where}: {name} input gradient differs from torch.nn by {err:.3g}"
                         f" (relative; tolerance {GRAD_TOLERANCE})")


# ---------------------------------------------------------------------------------------------
# One (cell, shape, thread count)


@dataclass
class Row:
    cell: str
    T: int
    B: int
    I: int
    H: int
    threads: int
    pass_: str  # "fwd" or "fwd+bwd"
    seconds: dict[str, list[float]] = field(default_factory=dict)  # candidate -> timed runs
    median_s: dict[str, float] = field(default_factory=dict)
    speedup: dict[str, float] = field(default_factory=dict)  # torch.nn median / candidate median
    llvm_gflops: float = float("nan")
    llvm_peak_fraction: float = float("nan")
    peak_mb: dict[str, float] = field(default_factory=dict)  # candidate -> the block's peak RSS
    saved_mb: dict[str, float] = field(default_factory=dict)  # fwd+bwd: saved for backward
    compile_s: float | None = None  # (e): first call minus the median call


def bench_case(kind, T, B, I, H, threads, peak, repeat, warmup, with_compile) -> list[Row]:
    where = f"{kind.upper()} T={T} B={B} I={I} H={H} {threads}T"
    ref = build_torch_nn(kind, I, H)
    models = {
        "llvm": build_llvm(kind, I, H, ref),
        "torch-tgt": build_torch_target(kind, I, H, ref),
        "torch.nn": ref,
        "eager": build_eager(kind, I, H, ref),
    }
    x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(1))

    with torch.no_grad():
        ref_out = ref(x)[0]
    for name in ("llvm", "torch-tgt", "eager"):
        check_output(name, models[name], ref_out, x, where)
    check_input_grad("llvm", models["llvm"], ref, x, where)

    rows = []
    x_grad = x.clone().requires_grad_(True)
    timings = {}
    for pass_, make, inp in (("fwd", forward_fn, x), ("fwd+bwd", forward_backward_fn, x_grad)):
        timings[pass_] = {name: measure(make(m, inp), repeat, warmup) for name, m in models.items()}
    if with_compile:
        # Built and timed last and checked after timing: a check first would compile it, and
        # its first timed call would no longer show the compile time.
        compiled = build_compiled(kind, I, H, ref)
        for pass_, make, inp in (("fwd", forward_fn, x), ("fwd+bwd", forward_backward_fn, x_grad)):
            timings[pass_]["compiled"] = measure(make(compiled, inp), repeat, warmup)
        check_output("compiled", compiled, ref_out, x, where)

    saved = {name: saved_mb(models[name], x_grad) for name in ("llvm", "torch.nn")}
    for pass_, ts in timings.items():
        base = ts["torch.nn"].median
        row = Row(kind, T, B, I, H, threads, pass_)
        if pass_ == "fwd+bwd":
            row.saved_mb = dict(saved)
        for name, t in ts.items():
            row.seconds[name] = t.times
            row.median_s[name] = t.median
            row.speedup[name] = base / t.median
            row.peak_mb[name] = t.peak_mb
        flops = forward_flops(kind, T, B, I, H) * (1 if pass_ == "fwd" else 3)
        row.llvm_gflops = flops / ts["llvm"].median / 1e9
        row.llvm_peak_fraction = row.llvm_gflops / peak
        if "compiled" in ts:
            row.compile_s = ts["compiled"].first - ts["compiled"].median
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# JIT compile time of the llvm target, in a fresh process with an empty disk cache


def jit_probe(T: int) -> dict:
    """Run in the child process: first call minus a warm call of lstm.cell forward+backward."""
    B, I, H = JIT_PROBE_SHAPE
    t0 = time.perf_counter()
    layer = cellc.load(ROOT / "cells" / "lstm.cell", target="llvm").Layer(I, H)
    load_s = time.perf_counter() - t0
    x = torch.randn(T, B, I)
    t = measure(forward_backward_fn(layer, x.requires_grad_(True)), repeat=3, warmup=1)
    cache = Path(os.environ["CELLC_CACHE_DIR"])
    return {"T": T, "B": B, "I": I, "H": H, "load_s": load_s, "first_s": t.first,
            "warm_s": t.median, "compile_s": t.first - t.median,
            "cache_entries": len(list(cache.glob("*.o"))) if cache.is_dir() else 0}


def run_jit_probes(threads: int) -> list[dict]:
    results = []
    for T in JIT_PROBE_TS:
        tmp = tempfile.mkdtemp(prefix="cellc-bench-cache-")
        try:
            env = dict(os.environ, CELLC_CACHE_DIR=tmp)  # set before the child imports cellc
            cmd = [sys.executable, __file__, "--jit-probe", str(T), "--threads", str(threads)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise SystemExit(f"JIT probe T={T} failed:\n{out.stderr}")
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return results


# ---------------------------------------------------------------------------------------------
# Output


def set_threads(n: int) -> None:
    torch.set_num_threads(n)  # cellc's loops and products follow it (and size OpenBLAS's pool)


def fmt_speedup(row: Row, name: str) -> str:
    return f"{row.speedup[name]:.2f}x" if name in row.speedup else "-"


def print_table(rows: list[Row], markdown: bool = False) -> None:
    """The results, plain (aligned columns) or as a markdown table."""
    header = ["cell", "T", "B", "I", "H", "thr", "pass", "torch.nn ms", "llvm", "torch-tgt",
              "eager", "compiled", "llvm GFLOP/s", "of peak", "compile s", "peak RSS MB",
              "saved MB"]
    lines = [[r.cell.upper(), str(r.T), str(r.B), str(r.I), str(r.H), str(r.threads), r.pass_,
              f"{r.median_s['torch.nn'] * 1e3:.2f}", fmt_speedup(r, "llvm"),
              fmt_speedup(r, "torch-tgt"), fmt_speedup(r, "eager"), fmt_speedup(r, "compiled"),
              f"{r.llvm_gflops:.1f}", f"{r.llvm_peak_fraction:.0%}",
              "-" if r.compile_s is None else f"{r.compile_s:.1f}",
              f"{r.peak_mb.get('llvm', math.nan):.0f}/{r.peak_mb.get('torch.nn', math.nan):.0f}",
              (f"{r.saved_mb['llvm']:.1f}/{r.saved_mb['torch.nn']:.1f}" if r.saved_mb else "-")]
             for r in rows]
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for line in lines:
            print("| " + " | ".join(line) + " |")
        return
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i < 7 and i != 1 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    print(fmt(header))
    print("-" * len(fmt(header)))
    for line in lines:
        print(fmt(line))


def print_summary(rows: list[Row]) -> None:
    """Geometric mean of each candidate's speedup, per thread count and pass."""
    for threads in sorted({r.threads for r in rows}):
        for pass_ in ("fwd", "fwd+bwd"):
            sel = [r for r in rows if r.threads == threads and r.pass_ == pass_]
            parts = []
            for name in ("llvm", "torch-tgt", "eager", "compiled"):
                vals = [r.speedup[name] for r in sel if name in r.speedup]
                if vals:
                    parts.append(f"{name} {math.exp(statistics.fmean(map(math.log, vals))):.2f}x")
            print(f"  geometric mean speedup over torch.nn, {threads}T {pass_:<7}: "
                  + ", ".join(parts))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def report_load(when: str) -> tuple[float, float, float]:
    load = os.getloadavg()
    print(f"load average at {when}: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
          f" (1, 5, 15 min; {os.cpu_count()} CPUs)")
    if load[0] > LOAD_WARN:
        print(f"WARNING: 1-minute load {load[0]:.2f} > {LOAD_WARN}: other processes are running;"
              " these timings are not reliable.")
    return load


# ---------------------------------------------------------------------------------------------


def parse_list(text: str, convert, what: str, p) -> list:
    try:
        return [convert(s.strip()) for s in text.split(",") if s.strip()]
    except ValueError:
        p.error(f"bad {what}: {text!r}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--quick", action="store_true",
                   help="smoke run: T/20 (at least 2), 1 repeat, 1 warm-up, 1 thread,"
                        " no torch.compile")
    p.add_argument("--cells", default="lstm,gru,rnn", help="comma-separated: lstm,gru,rnn")
    p.add_argument("--shapes", default=None,
                   help="comma-separated indices into " + ", ".join(
                       f"{i}: {s}" for i, s in enumerate(SHAPES)) + " (default all)")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per number (default 5)")
    p.add_argument("--no-compile", action="store_true", help="skip (e), torch.compile of the step")
    p.add_argument("--compile", action="store_true", help="keep (e) in --quick mode")
    p.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    p.add_argument("--json", metavar="PATH", help="save the raw numbers as JSON")
    p.add_argument("--jit-probe", type=int, metavar="T", help=argparse.SUPPRESS)  # child process
    args = p.parse_args(argv)

    threads = parse_list(args.threads, int, "--threads", p)
    if not threads or min(threads) < 1:
        p.error("--threads must be positive integers")
    if args.jit_probe is not None:  # the child of run_jit_probes
        set_threads(threads[0])
        print(json.dumps(jit_probe(args.jit_probe)))
        return 0

    kinds = parse_list(args.cells, str, "--cells", p)
    for k in kinds:
        if k not in GATES:
            p.error(f"unknown cell {k!r}; choose from {', '.join(GATES)}")
    indices = parse_list(args.shapes, int, "--shapes", p) if args.shapes else range(len(SHAPES))
    for i in indices:
        if not 0 <= i < len(SHAPES):
            p.error(f"--shapes: index {i} out of range 0..{len(SHAPES) - 1}")
    shapes = [SHAPES[i] for i in indices]
    repeat, warmup = args.repeat, 2
    with_compile = not args.no_compile
    if args.quick:
        shapes = [(max(2, T // 20), B, I, H) for T, B, I, H in shapes]
        repeat, warmup, threads = 1, 1, threads[:1]
        with_compile = args.compile and not args.no_compile
    if repeat < 1:
        p.error("--repeat must be at least 1")

    print(f"cellc {cellc.__version__} (git {git_revision()}) llvm target benchmark;"
          f" torch {torch.__version__}, Python {platform.python_version()}")
    print(f"CPU: {cpu_model()}; {os.cpu_count()} CPUs; float32; median of {repeat} run(s)"
          f" after {warmup} warm-up(s){'; --quick (T/20)' if args.quick else ''}")
    load_start = report_load("start")

    peaks = {}
    for n in threads:
        set_threads(n)
        peaks[n] = sgemm_peak(args.quick)
        print(f"sgemm peak, {n} thread(s): {peaks[n]:.1f} GFLOP/s (torch.mm 2048x2048 float32)")

    print(f"\nJIT compile time of lstm.cell forward+backward, llvm target (fresh process, empty"
          f" CELLC_CACHE_DIR, B,I,H = {JIT_PROBE_SHAPE}, {threads[0]} thread(s)):")
    probes = run_jit_probes(threads[0])
    for r in probes:
        print(f"  T={r['T']:<5} compile {r['compile_s']:.3f} s  (first call {r['first_s']:.3f} s"
              f" - warm call {r['warm_s']:.4f} s; load {r['load_s']:.3f} s;"
              f" {r['cache_entries']} disk-cache entry written)")

    print("\ntorch.nn: median ms. Others: speedup = torch.nn time / their time (>1x = faster than"
          " torch.nn).\nllvm GFLOP/s as a fraction of the sgemm peak at that thread count;"
          " compile s: (e)'s torch.compile time.\n", flush=True)
    rows = []
    for n in threads:
        set_threads(n)
        for kind in kinds:
            for T, B, I, H in shapes:
                rows += bench_case(kind, T, B, I, H, n, peaks[n], repeat, warmup, with_compile)
                print(f"  done: {kind} T={T} B={B} I={I} H={H} {n}T", file=sys.stderr, flush=True)
    print("peak RSS MB: the process's peak resident memory during a block of runs (llvm /"
          " torch.nn; everything resident counts).\nsaved MB: what one forward saves for the"
          " backward (llvm / torch.nn; inputs and weights included).\n")
    print_table(rows)
    print()
    print_summary(rows)
    afters = []
    if not args.quick:
        T, B, I, H = AFTER_SHAPE
        print(f"\ntorch.nn.LSTM forward (T={T}, B={B}, I={I}, H={H}) alone and after the llvm"
              " layer's forward at the same shape (median ms):")
        for n in threads:
            set_threads(n)
            a = after_cellc(n, repeat, warmup)
            afters.append(a)
            parts = [f"{k} {a[k] * 1e3:.2f}" + ("" if k == "alone" else
                                                 f" ({a[k] / a['alone']:.2f}x alone)")
                     for k in a if k not in ("threads", "shape")]
            print(f"  {n}T: " + ", ".join(parts))
    if args.markdown:
        print()
        print_table(rows, markdown=True)
    print()
    load_end = report_load("end")

    if args.json:
        data = {
            "cellc": cellc.__version__, "git": git_revision(), "torch": torch.__version__,
            "cpu": cpu_model(), "cpus": os.cpu_count(), "args": vars(args), "repeat": repeat,
            "warmup": warmup, "load_start": load_start, "load_end": load_end,
            "sgemm_peak_gflops": peaks, "jit_compile": probes, "torch_op_after_cellc": afters,
            "rows": [{("pass" if k == "pass_" else k): v for k, v in asdict(r).items()}
                     for r in rows],
        }
        Path(args.json).write_text(json.dumps(data, indent=1))
        print(f"raw numbers saved to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
