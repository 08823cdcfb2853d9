"""Zoneout and variational dropout against no regularizer, on a character LM that overfits.

torch.nn never shipped either regularizer (zoneout was declined in pytorch/pytorch#561,
variational dropout left open in #37731); in cellc each is one line of the cell file:
cells/zoneout_lstm.cell (Krueger et al. 2017: c' = zoneout(c_new, c, 0.5), h' = zoneout(h_new,
h, 0.05)) and cells/variational_lstm.cell (Gal & Ghahramani 2016: one dropout mask per sequence
on x and on h, p = 0.25). Both have torch.nn.LSTM's weights, so the baseline is cells/lstm.cell
with the same initial weights. The layers draw their masks from torch's generator while training
(`torch.manual_seed` repeats a run) and use the expectation in `.eval()`.

The data is Tiny Shakespeare (../shared/data/tinyshakespeare.txt beside the repository) when it
is there, else the help topics that ship with Python (pydoc_data.topics). Only the first
--train-chars characters train (a small set, so that an unregularized LSTM of 256 units
overfits); validation is the last 10% of the text, in nats per character. The plot shows the
three validation curves.

Full run (`python examples/zoneout_regularization.py`: 1500 steps of 32 x 100 characters from
50,000 training characters, hidden 256, llvm target, 2 threads; 2 shared cores, torch 2.13 CPU,
about 11 minutes) on Tiny Shakespeare, validation nats/char, best over the run and final:
none 2.156 and 2.646 (it overfits from step 300 on), zoneout 2.131 and 2.138, variational
dropout 2.131 and 2.140. With 200,000 training characters (--train-chars 200000) the
unregularized LSTM has not overfitted by step 1500 and stays best (final 1.926, zoneout 1.938,
variational 1.965): the regularizers pay off only once a model starts to overfit.
"""

import argparse
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from char_lm import load_text  # examples/char_lm.py, beside this file: the same text

import cellc

ROOT = Path(__file__).resolve().parent.parent

# name -> (cell file, class, keyword arguments): the regularizers' rates are the cells' defaults
MODELS = {
    "none": ("lstm.cell", "LSTM", {}),
    "zoneout": ("zoneout_lstm.cell", "ZoneoutLSTM", {}),
    "variational": ("variational_lstm.cell", "VariationalLSTM", {}),
}


class CharLM(torch.nn.Module):
    def __init__(self, layer, vocab, hidden):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, 32)
        self.rnn = layer
        self.head = torch.nn.Linear(hidden, vocab)

    def forward(self, ids):
        ys, _ = self.rnn(self.embed(ids))
        return self.head(ys)


@torch.no_grad()
def valid_loss(model, valid, streams=50, chunk=200):
    """Nats per character over the validation text (chunks read from a zero state), in eval
    mode: zoneout at its expectation, no dropout."""
    model.eval()
    n = (len(valid) - 1) // streams
    x = valid[: n * streams].view(streams, n)
    y = valid[1 : n * streams + 1].view(streams, n)
    total = 0.0
    for t in range(0, n, chunk):
        logits = model(x[:, t : t + chunk])
        total += torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), y[:, t : t + chunk].flatten(), reduction="sum").item()
    model.train()
    return total / (n * streams)


def train(name, model, train_ids, valid_ids, args):
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    gen = torch.Generator().manual_seed(0)  # the same batches for every model
    torch.manual_seed(1)  # and the masks repeat from run to run
    curve, start = [], time.time()
    for step in range(1, args.steps + 1):
        starts = torch.randint(0, len(train_ids) - args.seq - 1, (32, 1), generator=gen)
        batch = train_ids[starts + torch.arange(args.seq + 1)]
        loss = torch.nn.functional.cross_entropy(model(batch[:, :-1]).flatten(0, 1),
                                                 batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % max(1, args.steps // 15) == 0 or step == args.steps:
            curve.append((step, loss.item(), valid_loss(model, valid_ids)))
            print(f"  {name:12s} step {step:5d}: train {curve[-1][1]:.3f}, valid"
                  f" {curve[-1][2]:.3f}", flush=True)
    print(f"  {name}: {time.time() - start:.0f} s")
    return curve


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a few seconds, for tests")
    p.add_argument("--target", choices=["llvm", "torch"], default="llvm")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--seq", type=int, default=100)
    p.add_argument("--train-chars", type=int, default=50_000)
    p.add_argument("--text", choices=["auto", "shakespeare", "pydoc"], default="auto")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    name, text = load_text(args.text)
    if args.quick:
        args.steps, args.seq, args.hidden, text = 15, 30, 32, text[:60_000]
        args.train_chars = 20_000
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text])
    split = len(ids) * 9 // 10
    train_ids, valid_ids = ids[: min(args.train_chars, split)], ids[split:]
    print(f"{name}: training on {len(train_ids):,} characters, validating on"
          f" {len(valid_ids):,}; {len(chars)} distinct (uniform: {math.log(len(chars)):.3f}"
          " nats/char)")

    curves = {}
    for label, (file, cls, kwargs) in MODELS.items():
        mod = cellc.load(ROOT / "cells" / file, target=args.target)
        torch.manual_seed(0)  # the same initial weights: the three have torch.nn.LSTM's layout
        model = CharLM(getattr(mod, cls)(32, args.hidden, batch_first=True, **kwargs),
                       len(chars), args.hidden)
        curves[label] = train(label, model, train_ids, valid_ids, args)

    args.out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for (label, curve), color in zip(curves.items(), ("C0", "C1", "C2")):
        steps, train_loss, valid = zip(*curve)
        ax.plot(steps, valid, "o-", color=color, label=f"{label}, validation")
        ax.plot(steps, train_loss, ":", color=color, label=f"{label}, training batch")
    ax.set(xlabel="training step", ylabel="nats per character",
           title=f"LSTM on {len(train_ids) // 1000}k characters of {name}: regularizers")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "zoneout_regularization.png", dpi=120)
    print(f"wrote {args.out / 'zoneout_regularization.png'}")
    best = {label: min(v for _, _, v in curve) for label, curve in curves.items()}
    final = {label: curve[-1][2] for label, curve in curves.items()}
    print("best valid nats/char: " + " ".join(f"{k}={v:.3f}" for k, v in best.items()))
    print("final valid nats/char: " + " ".join(f"{k}={v:.3f}" for k, v in final.items()))


if __name__ == "__main__":
    main()
