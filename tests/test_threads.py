"""The time loops on a thread team: blocks of batch rows, each thread running the whole loop on
its own rows (see llvm_ir.FunctionRenderer.team_loop). A block's rows see exactly the
operations the whole batch's rows see, so the results must equal the one-thread ones bit for
bit, with packed (variable-length) batches, reversed loops and batches the threads do not
divide; and in the AVX2 code too (its inlined products block rows and columns otherwise). The
large library products outside the loops split their output rows across the same team."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch  # the team is libgomp's, which torch loads

from cellc.backends import blas
from cellc.native import NativeCell

ROOT = Path(__file__).resolve().parent.parent


def run(cell, threads, monkeypatch, *, B=13, T=11, reverse=False, dtype="float32", seed=0):
    """Forward and backward of a NativeCell whose loops use `threads` (1: no team at all;
    more than the cores too: the team is then larger than the machine)."""
    if threads == 1:
        monkeypatch.setattr(blas, "team", lambda threads, rows: (1, 0))
    else:
        monkeypatch.undo()
        monkeypatch.setattr(blas, "default_threads", lambda: 8)
    monkeypatch.setenv("CELLC_SPECIALIZE", "now")  # the specialized kernels from the start
    nc = NativeCell(f"cells/{cell}.cell", dtype=dtype, threads=threads, reverse=reverse,
                    input_size=7, hidden_size=24)
    rng = np.random.default_rng(seed)
    params = nc.init_params(rng)
    xs = rng.normal(size=(T, B, 7)).astype(dtype)
    lengths = rng.integers(1, T + 1, size=B)
    lengths[0] = T
    ys, final, tape = nc.forward(xs, params, lengths=lengths)
    grads = nc.backward(tape, rng.normal(size=ys.shape).astype(dtype),
                        {k: rng.normal(size=v.shape).astype(dtype) for k, v in final.items()})
    return {"ys": ys, **{f"final {k}": v for k, v in final.items()},
            **{f"d {k}": v for k, v in grads.items()}}


def test_the_team_is_torchs_libgomp():
    threads, address = blas.team(2, 1000)
    assert threads == 2 and address != 0  # else the tests below would test nothing
    assert blas.team(2, 10) == (1, 0)  # too small a call to fork for
    assert blas.team(1, 10_000) == (1, 0)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "layernorm_lstm", "peephole_lstm"])
@pytest.mark.parametrize("reverse", [False, True])
def test_two_threads_give_the_one_thread_results_bit_for_bit(cell, reverse, monkeypatch):
    one = run(cell, 1, monkeypatch, reverse=reverse)
    two = run(cell, 2, monkeypatch, reverse=reverse)
    assert one.keys() == two.keys()
    for k in one:
        assert np.array_equal(one[k], two[k]), k


@pytest.mark.parametrize("B", [1, 5, 8, 9, 64])
def test_every_batch_size_splits_exactly(B, monkeypatch):
    """The loops' results bit for bit; the weights' gradients, library products over T*B rows
    that the team splits from B = 8 on (TEAM_GEMM_MIN), to rounding."""
    one = run("lstm", 1, monkeypatch, B=B, T=70, dtype="float64")  # T*B >= 64: a team call
    for threads in (2, 3):
        many = run("lstm", threads, monkeypatch, B=B, T=70, dtype="float64")
        for k in one:
            if k in ("d weight_ih", "d weight_hh"):
                np.testing.assert_allclose(one[k], many[k], rtol=1e-12, atol=1e-12)
            else:
                assert np.array_equal(one[k], many[k]), (threads, k)


@pytest.mark.parametrize(("cell", "B"), [("lstm", 1), ("lstm", 2), ("lstm", 3), ("lstm", 4),
                                         ("gru", 1), ("gru", 3), ("peephole_lstm", 2),
                                         ("cifg_lstm", 1), ("rnn", 3)])
def test_small_batches_split_each_steps_columns_exactly(cell, B, monkeypatch):
    """A batch of one block (B <= 4 on 2 threads) splits each step's columns across the team:
    every thread runs every step on every row, each op on its share of the columns, with a
    barrier after each op. The products' columns come from the same kernels, so the results
    equal the one-thread ones bit for bit: forward (B = 1 takes the GEMV, split by W's rows)
    and backward (from B = 2: its product has no GEMV), with a packed batch, 2 and 3
    threads."""
    monkeypatch.setenv("CELLC_SPECIALIZE", "now")

    def run(threads):
        if threads == 1:
            monkeypatch.setattr(blas, "team", lambda threads, rows: (1, 0))
        else:
            monkeypatch.undo()
            monkeypatch.setenv("CELLC_SPECIALIZE", "now")
            monkeypatch.setattr(blas, "default_threads", lambda: 8)  # 3 threads on 2 cores too
        nc = NativeCell(f"cells/{cell}.cell", threads=threads, input_size=9, hidden_size=H)
        rng = np.random.default_rng(0)
        params = nc.init_params(rng)
        xs = rng.normal(size=(70, B, 9)).astype("float32")
        lengths = np.array([70, 41, 70, 3][:B])
        ys, final, tape = nc.forward(xs, params, lengths=lengths)
        grads = nc.backward(tape, rng.normal(size=ys.shape).astype("float32"))
        # Not the library products after the loops (d xs, d weights): see the test below.
        return [ys, *final.values()] + [grads[k] for k in sorted(grads)
                                        if k != "xs" and not k.startswith("weight")]

    H = 512 if cell == "rnn" else 256  # enough work per step (COLUMN_MIN_WORK)
    plan = _plan(cell, {"I": 9, "H": H})
    assert plan.count("each step's columns across the team") == 2  # forward, backward
    if cell == "lstm":
        assert plan.count("3 barriers per step") == 2
    one = run(1)
    for threads in (2, 3):
        for a, b in zip(one, run(threads)):
            assert np.array_equal(a, b), threads


def _plan(cell, sizes):
    from cellc import frontend, pipeline
    from cellc.backends.llvm_gemm import panel_width
    from cellc.backends.llvm_jit import kernel_features
    from cellc.lowering import Caps, format_plan, plan

    cell = frontend.load_file(f"cells/{cell}.cell")
    prog = pipeline.compile_program(cell)
    caps = Caps(library_in_team=True, panel=panel_width("float32", kernel_features()))
    return format_plan(plan([(prog.fwd, "f"), (prog.bwd, "b")], sizes, caps, cell.symbols))


def test_only_loops_with_enough_work_split_columns():
    assert "columns across the team" not in _plan("lstm", {"I": 9, "H": 64})  # 64 x 256 a step
    assert "columns across the team" not in _plan("layernorm_lstm", {"I": 9, "H": 256})


@pytest.mark.parametrize("library", ["openblas", "mkl"])
def test_large_library_products_split_across_the_team_exactly(library, monkeypatch):
    """The products outside the loops (T*B x 64 x 256, 256 x T*B x 64, ...: past
    TEAM_GEMM_MIN) run as blocks of output rows, one library call per thread of the team: the
    same sums as one call, to rounding (not bit for bit: a library may take another kernel for
    fewer rows, e.g. OpenBLAS's small-matrix one). And OpenBLAS's own pool stays at one
    thread: the team is the parallelism."""
    from cellc.lowering import TEAM_GEMM_MIN

    monkeypatch.setenv("CELLC_BLAS", library)
    monkeypatch.setenv("CELLC_SPECIALIZE", "now")
    assert TEAM_GEMM_MIN <= (40 * 16) * 64 * 256  # else the test would split nothing
    results = []
    for threads in (1, 2):
        nc = NativeCell("cells/lstm.cell", threads=threads, input_size=64, hidden_size=64)
        rng = np.random.default_rng(0)
        params = nc.init_params(rng)
        xs = rng.normal(size=(40, 16, 64)).astype("float32")
        ys, _, tape = nc.forward(xs, params)
        grads = nc.backward(tape, rng.normal(size=ys.shape).astype("float32"))
        results.append([ys] + [grads[k] for k in sorted(grads)])
        assert blas.get_blas_threads() == 1
    for one, two in zip(*results):
        np.testing.assert_allclose(one, two, rtol=1e-5, atol=1e-6)


def test_the_plan_says_how_the_loops_use_threads():
    from cellc import frontend, pipeline
    from cellc.lowering import Caps, format_plan, plan

    cell = frontend.load_file("cells/lstm.cell")
    prog = pipeline.compile_program(cell)
    funcs = [(prog.fwd, "f"), (prog.bwd, "b")]
    sized = format_plan(plan(funcs, {"I": 8, "H": 16}, Caps(), cell.symbols))
    assert sized.count("threads: blocks of batch rows, one per thread of the team") == 2
    assert sized.count("row blocks on the team") == 0  # Caps(): the library has its own pool
    in_team = format_plan(plan(funcs, {"I": 8, "H": 16}, Caps(library_in_team=True),
                               cell.symbols))
    assert in_team.count("library gemm (") == in_team.count("row blocks on the team") == 4
    generic = format_plan(plan(funcs, None, Caps(), cell.symbols))
    assert generic.count("threads: one (a generic plan)") == 2


SCRIPT = r"""
import json
import numpy as np
import torch
import cellc
from cellc.native import NativeCell
from cellc.backends import blas
from cellc.backends.llvm_jit import host_cpu

out = {"features": host_cpu()[1], "team": blas.team(2, 1000)[1] != 0}
rng = np.random.default_rng(0)
for threads in (1, 2):
    nc = NativeCell("cells/lstm.cell", threads=threads, input_size=5, hidden_size=37)
    p = nc.init_params(0)
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(9, 19, 5)).astype("float32")
    lengths = rng.integers(1, 10, size=19)
    ys, _, tape = nc.forward(xs, p, lengths=lengths)
    g = nc.backward(tape, np.ones_like(ys))
    out[threads] = [ys.tolist()] + [g[k].tolist() for k in sorted(g)]
    # A batch of one block at H = 256: each step's columns split across the team.
    nc = NativeCell("cells/lstm.cell", threads=threads, input_size=5, hidden_size=256)
    p = nc.init_params(0)
    for B in (1, 3):
        xs = rng.normal(size=(70, B, 5)).astype("float32")  # T*B >= 64: a team call
        ys, final, tape = nc.forward(xs, p)
        g = nc.backward(tape, np.ones_like(ys))
        out[threads] += [ys.tolist(), final["h"].tolist(), g["bias_hh"].tolist()]
print(json.dumps(out))
"""


@pytest.mark.slow  # compiles the kernels again for AVX2
def test_avx2_team_loops_match_one_thread(tmp_path):
    with open("/proc/cpuinfo") as f:
        if " avx2 " not in f.read():
            pytest.skip("this CPU cannot run AVX2 code")
    env = {**os.environ, "CELLC_TARGET_CPU": "znver3", "CELLC_CACHE_DIR": str(tmp_path),
           "CELLC_SPECIALIZE": "now"}
    res = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert "+avx512f" not in out["features"] and out["team"]
    assert out["1"] == out["2"]


@pytest.mark.parametrize(("H", "lengths"), [(20, [40, 37, 33, 20, 12, 9, 5, 1]),
                                            (256, [40, 33]), (256, [40])])
def test_torch_layers_on_two_threads_match_one(H, lengths, monkeypatch):
    """The llvm layers pass torch.get_num_threads() to the loops: packed sequences, forward and
    backward, at 2 threads equal 1 thread's results (to float32 rounding: the products outside
    the loops are split across the team, each block possibly by another library kernel).
    Batches of 8 rows split their rows; of 2 and 1 rows at H=256, each step's columns."""
    import cellc

    monkeypatch.setenv("CELLC_SPECIALIZE", "now")
    torch.manual_seed(0)
    layer = cellc.load("cells/lstm.cell", target="llvm").Layer(6, H, bidirectional=True)
    lengths = torch.tensor(lengths)
    x = torch.randn(40, len(lengths), 6)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            xg = x.clone().requires_grad_(True)
            packed = torch.nn.utils.rnn.pack_padded_sequence(xg, lengths)
            out, (h, c) = layer(packed)
            ys, _ = torch.nn.utils.rnn.pad_packed_sequence(out)
            (ys.square().sum() + h.sum() + c.sum()).backward()
            results.append([ys.detach(), h.detach(), c.detach(), xg.grad]
                           + [p.grad.clone() for p in layer.parameters()])
            layer.zero_grad(set_to_none=True)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_forward_mode_tangents_are_refused_not_dropped():
    """A call carrying forward-mode AD tangents must not take the inference kernel (which
    would return outputs without them): it goes to the autograd Function, which has no jvp."""
    import torch.autograd.forward_ad as fwAD

    import cellc

    layer = cellc.load("cells/lstm.cell", target="llvm").Layer(3, 5)
    for p in layer.parameters():
        p.requires_grad_(False)
    x = torch.randn(4, 2, 3)
    with fwAD.dual_level(), pytest.raises(RuntimeError, match="jvp"):
        layer(fwAD.make_dual(x, torch.ones_like(x)))
