"""Forecast yearly sunspot numbers with an LSTM compiled by cellc.

The series is the yearly mean sunspot number 1700-2008 (309 values) that ships inside statsmodels
(statsmodels.datasets.sunspots; no download). From the previous WINDOW years the model predicts the
next year; it trains on the years up to 1950 and is scored on 1951-2008, one step ahead, against the
naive forecast "next year = this year". The LSTM is cells/lstm.cell compiled by cellc, by default
to native kernels (--target llvm), and used like torch.nn.LSTM.

Full run (600 epochs; 21 s wall on this machine, 2 shared cores, --threads 1, torch 2.13 CPU):
test MSE 345 (RMSE 18.6 sunspots) against 1075 (RMSE 32.8) for the naive forecast, a ratio of
0.32, and on par with a least-squares linear AR(20) model on the same window (382).
"""

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from statsmodels.datasets import sunspots

import cellc

CELLS = Path(__file__).resolve().parent.parent / "cells"
WINDOW, SPLIT_YEAR = 20, 1951


def windows(series, start, stop):
    """Inputs series[t-WINDOW:t] and targets series[t] for t in [start, stop)."""
    x = np.stack([series[t - WINDOW : t] for t in range(start, stop)])
    return torch.tensor(x, dtype=torch.float32)[:, :, None], torch.tensor(series[start:stop])[
        :, None
    ]


class Forecaster(torch.nn.Module):
    def __init__(self, layer_cls, hidden):
        super().__init__()
        self.lstm = layer_cls(1, hidden, num_layers=2, batch_first=True)
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x):
        ys, _ = self.lstm(x)
        return x[:, -1] + self.head(ys[:, -1])  # predict the change from the last value


def progress(i, n, text):
    done = 30 * i // n
    print(f"\r  [{'#' * done}{'.' * (30 - done)}] {i}/{n} {text}", end="", flush=True)
    if i == n:
        print()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a few seconds, for tests")
    p.add_argument("--target", choices=["llvm", "torch"], default="llvm")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    p.add_argument("--epochs", type=int, default=600)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="small models run best on one")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.epochs = 20

    data = sunspots.load_pandas().data
    years = data["YEAR"].to_numpy().astype(int)
    raw = data["SUNACTIVITY"].to_numpy()
    split = int(np.searchsorted(years, SPLIT_YEAR))
    scale = raw[:split].std()
    series = (raw / scale).astype(np.float32)  # train-set units
    x_train, y_train = windows(series, WINDOW, split)
    x_test, y_test = windows(series, split, len(series))

    torch.manual_seed(0)
    mod = cellc.load(CELLS / "lstm.cell", target=args.target)
    model = Forecaster(mod.Layer, args.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-5)
    gen = torch.Generator().manual_seed(0)
    start, losses = time.time(), []
    for epoch in range(1, args.epochs + 1):
        for idx in torch.randperm(len(x_train), generator=gen).split(32):
            loss = torch.nn.functional.mse_loss(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses.append(loss.item())
        if epoch % max(1, args.epochs // 100) == 0 or epoch == args.epochs:
            progress(epoch, args.epochs, f"train MSE {loss.item():.4f}")

    with torch.no_grad():
        pred = model(x_test).numpy()[:, 0] * scale
    truth = y_test.numpy()[:, 0] * scale
    naive = raw[split - 1 : -1]  # last year's value
    # A classic for comparison: linear autoregression on the same window, by least squares.
    design = np.c_[x_train[:, :, 0].numpy(), np.ones(len(x_train))]
    coef = np.linalg.lstsq(design, y_train.numpy()[:, 0], rcond=None)[0]
    linear = np.c_[x_test[:, :, 0].numpy(), np.ones(len(x_test))] @ coef * scale
    mse, naive_mse, ar_mse = (np.mean((f - truth) ** 2) for f in (pred, naive, linear))

    args.out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(years, raw, color="lightgray", label="sunspot number")
    ax.plot(years[split:], truth, color="black", label="truth (test years)")
    ax.plot(years[split:], pred, color="C0", label=f"LSTM (MSE {mse:.0f})")
    ax.plot(years[split:], naive, color="C1", ls=":", label=f"last value (MSE {naive_mse:.0f})")
    ax.axvline(SPLIT_YEAR, color="gray", ls="--")
    ax.set(
        xlabel="year",
        ylabel="yearly mean sunspot number",
        title=f"One-year-ahead forecast, cellc LSTM ({args.target} target)",
    )
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(args.out / "forecast_sunspots.png", dpi=120)
    print(f"wrote {args.out / 'forecast_sunspots.png'} ({time.time() - start:.0f} s)")
    print(
        f"test MSE: lstm={mse:.1f} naive={naive_mse:.1f} ar{WINDOW}={ar_mse:.1f}"
        f" ratio={mse / naive_mse:.3f}"
    )


if __name__ == "__main__":
    main()
