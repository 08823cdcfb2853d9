"""Cold start of the llvm target: the first forward and backward of a layer in a fresh process.

    python benchmarks/cold_start.py                       # every zoo cell at I=H=8 and 256
    python benchmarks/cold_start.py --cells lstm,gru --sizes 8,1024 --repeat 3
    python benchmarks/cold_start.py --json cold.json

For each cell (cells/*.cell) and size (I = H), each number from a fresh Python process (the
median of --repeat processes), `import torch, cellc` excluded:
  load      cellc.load(cell, target="llvm") and Layer(I, H)
  fwd       the first forward of a (T, B, I) input with grad enabled (the forward's compile,
            and the start of the backward's in the background)
  bwd       the first backward (waits for the backward's compile)
  total     load + fwd + bwd: the cold-start target is under 0.5 s for every cell and size
  llvm      the seconds spent compiling kernels (render, optimize, codegen), summed over the
            main thread and the background one that compiles the backward during the forward
            (so it can exceed fwd + bwd; only what the forward did not hide shows up in bwd)
  infer     load + the first forward under torch.no_grad(), and whether that compiled a backward
            (it must not: "no bwd")
`--preimport-dynamo` imports torch._dynamo before the timing: torch imports it on the first call
of any torch.library custom op (the layers' native ops), which took seconds here on its own.
Each with an empty CELLC_CACHE_DIR ("cold") and again with the disk cache those runs filled
("warm": object code and parser tables loaded, nothing compiled). The 1-minute load average is
printed at the start and the end: above 0.5 other processes share the cores and the numbers
are not reliable.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
import torch
import cellc
from cellc.backends import cache, llvm_jit

compile_s = [0.0]
_compile = llvm_jit._compile_kernel
def timed(*args):
    t = time.perf_counter()
    try:
        return _compile(*args)
    finally:
        compile_s[0] += time.perf_counter() - t
llvm_jit._compile_kernel = timed

path, I, H, T, B, mode = sys.argv[1], *map(int, sys.argv[2:6]), sys.argv[6]
if sys.argv[7] == "1":  # what torch's first custom-op call imports, outside the timing
    import torch._dynamo  # noqa: F401
torch.manual_seed(0)
t0 = time.perf_counter()
layer = cellc.load(path, target="llvm").Layer(I, H)
x = torch.randn(T, B, I)
t1 = time.perf_counter()
out = {}
if mode == "infer":
    with torch.no_grad():
        layer(x)
    t2 = time.perf_counter()
    out.update(load=t1 - t0, fwd=t2 - t1, total=t2 - t0)
else:
    ys = layer(x)[0]
    t2 = time.perf_counter()
    ys.sum().backward()
    t3 = time.perf_counter()
    out.update(load=t1 - t0, fwd=t2 - t1, bwd=t3 - t2, total=t3 - t0)
out["llvm"] = compile_s[0]
out["backward"] = sorted({p.backward_state for p in cache._memory._items.values()
                          if hasattr(p, "backward_state")})
print(json.dumps(out))
"""


PREIMPORT = ["0"]  # "1": --preimport-dynamo


def child(cell: Path, size: int, T: int, B: int, mode: str, cache_dir: str) -> dict:
    env = dict(os.environ, CELLC_CACHE_DIR=cache_dir, OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1")
    argv = [str(cell), str(size), str(size), str(T), str(B), mode, PREIMPORT[0]]
    res = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=600, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{cell.stem} {size} {mode}: child failed\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def median(runs: list[dict]) -> dict:
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "backward"}
    out["backward"] = sorted({s for r in runs for s in r["backward"]})
    return out


def measure(cell: Path, size: int, T: int, B: int, repeat: int) -> dict:
    """{(cache, mode): numbers}: cold runs each in an empty cache directory, then warm runs in
    the directory the cold training run filled."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="cellc-cold-") as tmp:
        cold = {"train": [], "infer": []}
        for k in range(repeat):
            for mode in cold:
                d = Path(tmp) / f"{mode}{k}"
                cold[mode].append(child(cell, size, T, B, mode, str(d)))
        warm_dir = str(Path(tmp) / "train0")
        for mode, runs in cold.items():
            results["cold", mode] = median(runs)
            results["warm", mode] = median([child(cell, size, T, B, mode, warm_dir)
                                            for _ in range(repeat)])
    return results


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def row(name: str, size: int, kind: str, r: dict) -> str:
    train, infer = r[kind, "train"], r[kind, "infer"]
    bwd = "no bwd" if infer["backward"] == ["not compiled"] else "BWD: " + ",".join(
        infer["backward"])
    return (f"{name:15s} {size:5d}  {kind:4s}  {train['load']:6.3f} {train['fwd']:6.3f} "
            f"{train['bwd']:6.3f} {train['total']:6.3f} {train['llvm']:6.3f}   "
            f"{infer['total']:6.3f}  {bwd}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", help="comma-separated cell names (default: every cells/*.cell)")
    ap.add_argument("--sizes", default="8,256", help="comma-separated I=H sizes (default 8,256)")
    ap.add_argument("--T", type=int, default=20, help="sequence length (default 20)")
    ap.add_argument("--B", type=int, default=4, help="batch size (default 4)")
    ap.add_argument("--repeat", type=int, default=1, help="processes per number (median)")
    ap.add_argument("--json", metavar="PATH", help="save the raw numbers as JSON")
    ap.add_argument("--preimport-dynamo", action="store_true",
                    help="import torch._dynamo before timing (a torch.library custom op's first "
                         "call imports it: seconds, outside cellc's own cold start)")
    args = ap.parse_args(argv)
    PREIMPORT[0] = "1" if args.preimport_dynamo else "0"
    names = args.cells.split(",") if args.cells else sorted(
        p.stem for p in (ROOT / "cells").glob("*.cell"))
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"cold start, llvm target: T={args.T} B={args.B}, float32, 1 thread, "
          f"median of {args.repeat} process(es); seconds"
          + ("; torch._dynamo imported before timing" if args.preimport_dynamo else ""))
    print(f"load average at start: {load_average()} (1, 5, 15 min; {os.cpu_count()} CPUs)")
    print(f"{'cell':15s} {'I=H':>5s}  cache  load    fwd    bwd  total   llvm    infer  "
          "inference compiled")
    print("-" * 96)
    raw, worst = [], 0.0
    for name in names:
        for size in sizes:
            r = measure(ROOT / "cells" / f"{name}.cell", size, args.T, args.B, args.repeat)
            for kind in ("cold", "warm"):
                print(row(name, size, kind, r), flush=True)
            worst = max(worst, r["cold", "train"]["total"])
            raw.append({"cell": name, "size": size,
                        **{f"{c}_{m}": v for (c, m), v in r.items()}})
    print(f"\nworst cold total (load + first forward + first backward): {worst:.3f} s "
          f"(target < 0.5 s)")
    print(f"load average at end: {load_average()}")
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
