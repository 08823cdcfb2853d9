"""Tensor-valued cells (mLSTM, gated DeltaNet): cellc's torch target against the plain-PyTorch
step loop a user would otherwise write, forward and forward+backward, float32, with each
process's peak RSS.

    python benchmarks/tensor_cells.py            # both cells, both shapes, 3 repeats
    python benchmarks/tensor_cells.py --quick    # T/8, 1 repeat: checks that it runs

Every (cell, shape, implementation) runs in its own process (so one's memory and threads cannot
inflate another's), and the table prints eager-loop time / cellc time from the same run: 2.00x
is twice as fast as the eager loop. The llvm target does not compile these cells yet (issue 11),
so there is no native column; the torch target runs one step of ordinary torch calls at a time
with its symbolic backward.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = [(256, 8, 4, 64), (1024, 1, 4, 64)]  # (T, B, NH, D), input size NH*D
CELLS = ("mlstm", "gated_deltanet")


def eager_mlstm(layer_params, x, NH, D):
    import torch
    import torch.nn.functional as F

    p = layer_params
    B = x.shape[1]
    C = x.new_zeros(B, NH, D, D)
    n, m = x.new_zeros(B, NH, D), x.new_zeros(B, NH)
    ys = []
    for x_t in x:
        def lin(w, x_t=x_t):
            return x_t @ p[f"weight_{w}"].T + p[f"bias_{w}"]
        q, k, v = lin("q").view(B, NH, D), lin("k").view(B, NH, D) / D**0.5, lin("v").view(B, NH, D)
        i_t, log_f = lin("i"), F.logsigmoid(lin("f"))
        m_new = torch.maximum(log_f + m, i_t)
        i, f = torch.exp(i_t - m_new), torch.exp(log_f + m - m_new)
        C = f[..., None, None] * C + i[..., None, None] * (v[..., :, None] * k[..., None, :])
        n = f[..., None] * n + i[..., None] * k
        m = m_new
        den = torch.maximum((n * q).sum(-1).abs(), torch.exp(-m))
        h = (C @ q[..., None])[..., 0] / den[..., None]
        ys.append(torch.sigmoid(lin("o")) * h.reshape(B, -1))
    return torch.stack(ys)


def eager_gated_deltanet(layer_params, x, NH, D):
    import torch
    import torch.nn.functional as F

    p = layer_params
    B = x.shape[1]
    S = x.new_zeros(B, NH, D, D)
    ys = []
    for x_t in x:
        q, k, v = (F.silu(x_t @ p[f"weight_{w}"].T).view(B, NH, D) for w in "qkv")
        q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6)
        k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
        alpha = torch.exp(-torch.exp(p["A_log"]) * F.softplus(x_t @ p["weight_a"].T
                                                               + p["dt_bias"]))
        beta = torch.sigmoid(x_t @ p["weight_b"].T + p["bias_b"])[..., None, None]
        Sk = (S @ k[..., None])
        S = alpha[..., None, None] * (S - beta * Sk * k[..., None, :]) \
            + beta * v[..., :, None] * k[..., None, :]
        ys.append((S @ q[..., None])[..., 0].reshape(B, -1) / D**0.5)
    return torch.stack(ys)


EAGER = {"mlstm": eager_mlstm, "gated_deltanet": eager_gated_deltanet}


def one(cell: str, shape: tuple, impl: str, repeat: int) -> dict:
    """Time one implementation in this process: median forward and forward+backward seconds."""
    import torch

    import cellc

    T, B, NH, D = shape
    torch.manual_seed(0)
    layer = cellc.load(ROOT / "cells" / f"{cell}.cell", target="torch").Layer(
        input_size=NH * D, heads=NH, head_size=D)
    x = torch.randn(T, B, NH * D)
    params = {name[: -len("_l0")]: p for name, p in layer.named_parameters()}

    def forward():
        return layer(x)[0] if impl == "cellc" else EAGER[cell](params, x, NH, D)

    times = {}
    with torch.no_grad():
        forward()
        runs = []
        for _ in range(repeat):
            start = time.perf_counter()
            forward()
            runs.append(time.perf_counter() - start)
    times["fwd"] = statistics.median(runs)
    runs = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        forward().sum().backward()
        runs.append(time.perf_counter() - start)
    times["fwd+bwd"] = statistics.median(runs[1:])
    times["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--one", nargs=3, metavar=("CELL", "SHAPE", "IMPL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        cell, k, impl = args.one
        shape = tuple(json.loads(k))
        print(json.dumps(one(cell, shape, impl, args.repeat)))
        return
    shapes = [(max(8, T // 8), B, NH, D) for T, B, NH, D in SHAPES] if args.quick else SHAPES
    repeat = 1 if args.quick else args.repeat
    print(f"load average {os.getloadavg()[0]:.2f}; torch threads: default; float32")
    print(f"{'cell':<16} {'T,B,NH,D':<16} {'eager fwd ms':>12} {'fwd ratio':>9}"
          f" {'eager f+b ms':>12} {'f+b ratio':>9} {'peak MB eager/cellc':>20}")
    for cell in CELLS:
        for shape in shapes:
            got = {}
            for impl in ("eager", "cellc"):
                run = subprocess.run([sys.executable, __file__, "--one", cell, json.dumps(shape),
                                      impl, "--repeat", str(repeat)], capture_output=True,
                                     text=True, check=True)
                got[impl] = json.loads(run.stdout.strip().splitlines()[-1])
            e, c = got["eager"], got["cellc"]
            print(f"{cell:<16} {','.join(map(str, shape)):<16} {e['fwd'] * 1e3:>12.1f}"
                  f" {e['fwd'] / c['fwd']:>8.2f}x {e['fwd+bwd'] * 1e3:>12.1f}"
                  f" {e['fwd+bwd'] / c['fwd+bwd']:>8.2f}x"
                  f" {e['peak_rss_mb']:>9.0f}/{c['peak_rss_mb']:<9.0f}")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
