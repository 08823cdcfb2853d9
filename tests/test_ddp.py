"""The generated LSTM under torch.nn.parallel.DistributedDataParallel: 2 CPU processes (gloo,
torch.multiprocessing.spawn), each with half of a batch. The loss is the mean over the batch, so
DDP's average of the two ranks' gradients is the gradient of the whole batch in one process.

The generated module is written to a file and imported by path in each worker: classes that
cellc.load builds in memory cannot be pickled into another process.
"""

import importlib.util
import os
import socket
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

CELLS_DIR = Path(__file__).resolve().parent.parent / "cells"
WORLD = 2
T, B, I, H = 6, 8, 3, 5  # B splits evenly over the ranks
TIMEOUT_S = 120


def _import_by_path(path, name="cellc_ddp_generated_lstm"):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


class Model(torch.nn.Module):
    def __init__(self, Layer):
        super().__init__()
        self.rnn = Layer(I, H, num_layers=2, bidirectional=True, batch_first=True,
                         dtype=torch.float64)
        self.head = torch.nn.Linear(2 * H, 1, dtype=torch.float64)

    def forward(self, x):
        y, (h, c) = self.rnn(x)
        return self.head(y).squeeze(-1).mean(1) + h[-1].sum(-1) * c[0].mean(-1)


def _loss(model, x, y):
    return (model(x) - y).square().mean()  # mean over the batch


def _worker(rank, world, port, gen_path, data_path, out_dir):
    try:
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(port)
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                timeout=timedelta(seconds=TIMEOUT_S))
        try:
            mod = _import_by_path(gen_path)
            data = torch.load(data_path)
            model = Model(mod.LSTM)
            model.load_state_dict(data["state"])
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            part = slice(rank * B // world, (rank + 1) * B // world)
            loss = _loss(ddp, data["x"][part], data["y"][part])
            loss.backward()
            grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
            graph = sorted({fn.name() for fn in _graph(loss)})
            torch.save({"grads": grads, "loss": loss.item(), "graph": graph,
                        "symbolic": mod.SYMBOLIC_BACKWARD}, Path(out_dir) / f"rank{rank}.pt")
        finally:
            # Both ranks reach teardown together: destroying a gloo group while the peer is
            # still using it can abort a worker ("terminate called without an active exception").
            dist.barrier()
            dist.destroy_process_group()
    except BaseException:
        (Path(out_dir) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise


def _graph(t):
    seen, todo = set(), [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None and fn not in seen:
            seen.add(fn)
            todo += [f for f, _ in fn.next_functions]
    return seen


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(args, out_dir):
    """torch.multiprocessing.spawn with a deadline: a hung worker is killed, not waited for."""
    ctx = torch.multiprocessing.spawn(_worker, args=(WORLD, _free_port(), *args), nprocs=WORLD,
                                      join=False)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                raise TimeoutError(f"DDP workers still running after {TIMEOUT_S} s")
    except Exception as e:
        errors = "".join(p.read_text() for p in sorted(Path(out_dir).glob("rank*.err")))
        raise AssertionError(f"DDP workers failed: {e}\n{errors}") from e
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)


@pytest.mark.slow
def test_ddp_gradients_equal_single_process(tmp_path):
    import cellc

    gen_path = tmp_path / "gen_lstm.py"
    gen_path.write_text(cellc.torch_source(CELLS_DIR / "lstm.cell"))
    mod = _import_by_path(gen_path)
    torch.manual_seed(0)
    model = Model(mod.LSTM)
    x = torch.randn(B, T, I, dtype=torch.float64)
    y = torch.randn(B, dtype=torch.float64)
    data_path = tmp_path / "data.pt"
    torch.save({"state": model.state_dict(), "x": x, "y": y}, data_path)

    # single process, whole batch
    _loss(model, x, y).backward()
    want = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    # the gradient of half the batch differs: the comparison below can fail
    model.zero_grad()
    _loss(model, x[: B // 2], y[: B // 2]).backward()
    half = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    assert max((half[n] - want[n]).abs().max().item() for n in want) > 1e-3

    _spawn((str(gen_path), str(data_path), str(tmp_path)), tmp_path)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for rank, res in enumerate(results):
        assert res["symbolic"] is True
        assert any("LSTMSequence" in n for n in res["graph"]), res["graph"]
        assert res["grads"].keys() == want.keys()
        for n, w in want.items():
            what = f"rank {rank} grad {n}"
            torch.testing.assert_close(res["grads"][n], w, atol=1e-6, rtol=1e-6,
                                       msg=lambda m, what=what: f"{what}: {m}")
    # the local losses are different halves; their mean is the whole batch's loss
    mean_loss = sum(r["loss"] for r in results) / WORLD
    assert abs(mean_loss - _loss(model, x, y).item()) < 1e-12
    assert results[0]["loss"] != results[1]["loss"]
