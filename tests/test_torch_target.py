"""The PyTorch target: the standalone module `cellc.load(path)` / `cellc compile --target torch`
generates (layer machinery + generated forward/backward kernels + an autograd.Function that runs
the symbolic backward).

- lstm/gru/rnn match torch.nn.LSTM/GRU/RNN after load_state_dict both ways: outputs, final states
  and the gradients of every parameter, the input and the initial states (float32 1e-5, float64
  1e-10), for stacked, bidirectional, batch_first, unbatched, bias=False and packed input.
- The backward really is the generated one (a `<Name>Sequence` node in the graph, the generated
  `<name>_backward` is called), and it agrees with torch's autograd of the forward loop
  (SYMBOLIC_BACKWARD = False) for every cell; gradients in eval mode; bitwise determinism.
- torch.autograd.gradcheck for every cell in cells/ (tests taking `cell_path` run once per
  cells/*.cell file: see conftest.py).
- torch.compile(fullgraph=True) of a model around the generated layer (the layer's time loop
  is one custom op: tests/test_torch_compile.py has the rest).
- Every cell compiles with the CLI into a file that imports only torch and the standard library
  and trains in a fresh interpreter without cellc.
- Names from the .cell file (values, parameters, the cell's name, the file's name) cannot break
  or inject code; `cellc compile` writes atomically and writes nothing on errors.
"""

import ast
import functools
import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import cellc
from cellc import api
from cellc.backends import numpy_ref

from layer_parity import (
    CONFIGS,
    SIZES,
    TORCH_LAYERS,
    as_list,
    check_parity,
    close,
    compare,
    graph_names,
    make_inputs,
    run_layer,
)

CELLS_DIR = Path(__file__).resolve().parent.parent / "cells"
T, B, I, H = SIZES


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread. (With two, every small matmul can wait milliseconds for
    a descheduled OpenMP worker on a busy machine.) Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def gen(name: str):
    """The generated module for cells/<name>.cell (cellc.load caches it too)."""
    return cellc.load(CELLS_DIR / f"{name}.cell", target="torch")


def size_args(cell, input_size, other):
    """Constructor size arguments: the input's size symbol gets input_size, the others `other`."""
    dim = cell.input_size
    return {s.arg: input_size if dim.symbols == {s.symbol} else other for s in cell.sizes
            if not s.optional}


# ---------------------------------------------------------------------------------------------
# Parity with torch.nn.LSTM / GRU / RNN

@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("name", list(TORCH_LAYERS))
def test_layer_matches_torch(name, config, dtype):
    check_parity(gen(name).Layer, name, config, dtype, node="Sequence")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(TORCH_LAYERS))
def test_cell_class_matches_torch(name, dtype):
    Cell = gen(name).Cell
    ref = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn": torch.nn.RNNCell}[name]
    ref = ref(I, H, dtype=dtype)
    ours = Cell(I, H, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, I, generator=g, dtype=dtype)
    hx = [torch.randn(B, H, generator=g, dtype=dtype) for _ in range(2 if name == "lstm" else 1)]
    results = []
    for m in (ours, ref):
        xl, hl = x.clone().requires_grad_(), [h.clone().requires_grad_() for h in hx]
        outs = as_list(m(xl, hl[0] if len(hl) == 1 else tuple(hl)))
        sum((o * (k + 1.5)).sum() for k, o in enumerate(outs)).backward()
        results.append([*outs, xl.grad, *(h.grad for h in hl), *(p.grad for p in m.parameters())])
    for k, (a, b) in enumerate(zip(*results, strict=True)):
        close(a, b, dtype, f"{name}Cell item {k}")


# ---------------------------------------------------------------------------------------------
# The backward is the generated symbolic one, and agrees with autograd of the forward loop


def test_symbolic_backward_is_used(cell_path, monkeypatch):
    cell = cellc.load_cell(cell_path)
    mod = cellc.load(cell_path)
    name, lower = cell.name, cell.name.lower()
    assert mod.SYMBOLIC_BACKWARD is True
    assert issubclass(getattr(mod, f"{name}Sequence"), torch.autograd.Function)
    calls = []
    original = getattr(mod, f"{lower}_backward")

    def counting(*args):
        calls.append(args[1:3])  # T, B
        return original(*args)

    monkeypatch.setattr(mod, f"{lower}_backward", counting)
    m = mod.Layer(**size_args(cell, I, H), num_layers=2, bidirectional=True,
                  dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    out, h_n = m(x)
    names = graph_names(out)
    assert f"{name}SequenceBackward" in names, names
    # nothing else but the layer's own plumbing: no per-op graph of the time loop
    others = names - {f"{name}SequenceBackward"}
    # (Slice: the x[t-1] part of the step's input row of a cell that reads it, cellc/inputs.py)
    plumbing = ("Cat", "Flip", "Slice", "torch::autograd::AccumulateGrad")
    assert all(n.startswith(plumbing) for n in others), names
    (out.sum() + sum(h.sum() for h in as_list(h_n))).backward()
    assert calls == [(T, B)] * 4  # 2 layers x 2 directions, once each
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_plain_autograd_when_symbolic_backward_is_off(monkeypatch):
    mod = gen("lstm")
    m = mod.LSTM(I, H, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    monkeypatch.setattr(mod, "SYMBOLIC_BACKWARD", False)
    out, _ = m(x)
    names = graph_names(out)
    assert not any("LSTMSequence" in n for n in names), names
    assert any(n.startswith("Sigmoid") for n in names) and any(n.startswith("Tanh") for n in names)
    monkeypatch.undo()
    assert mod.SYMBOLIC_BACKWARD is True


def test_symbolic_backward_matches_autograd(cell_path, monkeypatch):
    """Every cell: the generated backward against torch's autograd of the same forward loop,
    float64, 2 layers, both directions, packed variable-length input (so rows drop out)."""
    cell = cellc.load_cell(cell_path)
    mod = cellc.load(cell_path)
    torch.manual_seed(0)
    m = mod.Layer(**size_args(cell, I, H), num_layers=2, bidirectional=True,
                  dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    hx = [torch.randn(4, B, n, generator=g, dtype=torch.float64) for n in m._state_sizes]
    kwargs = {"num_layers": 2, "bidirectional": True}
    torch.manual_seed(1)  # the same noise masks in both runs (cells with dropout, zoneout)
    _, symbolic = run_layer(m, x, hx, "packed_unsorted", kwargs)
    assert mod.SYMBOLIC_BACKWARD is True
    monkeypatch.setattr(mod, "SYMBOLIC_BACKWARD", False)
    torch.manual_seed(1)
    _, plain = run_layer(m, x, hx, "packed_unsorted", kwargs)
    monkeypatch.undo()
    assert mod.SYMBOLIC_BACKWARD is True
    assert symbolic.keys() == plain.keys()
    for key in plain:
        assert torch.isfinite(symbolic[key]).all(), key
        close(symbolic[key], plain[key], torch.float64, f"{cell.name} {key}")
    # and the gradients are not trivially zero
    assert all(symbolic[k].abs().sum() > 0 for k in symbolic if k.startswith("grad weight"))


@pytest.mark.parametrize("name", list(TORCH_LAYERS))
def test_gradients_in_eval_mode(name):
    """eval() turns inter-layer dropout off; gradients still flow and match torch in eval."""
    torch.manual_seed(0)
    kwargs = {"num_layers": 2, "dropout": 0.5, "bidirectional": True}
    ref = TORCH_LAYERS[name](I, H, dtype=torch.float64, **kwargs)
    ours = gen(name).Layer(I, H, dtype=torch.float64, **kwargs)
    ours.load_state_dict(ref.state_dict())
    ours.eval(), ref.eval()
    assert not ours.training
    compare(ours, ref, name, kwargs, "packed_sorted", True, torch.float64)


@pytest.mark.parametrize("form", ["time_major", "packed_unsorted"])
@pytest.mark.parametrize("name", list(TORCH_LAYERS))
def test_backward_is_deterministic(name, form):
    torch.manual_seed(0)
    kwargs = {"num_layers": 2, "bidirectional": True}
    m = gen(name).Layer(I, H, **kwargs)
    x, hx = make_inputs(name, kwargs, form, True, torch.float32)
    (_, first), (_, second) = run_layer(m, x, hx, form, kwargs), run_layer(m, x, hx, form, kwargs)
    for key in first:
        assert torch.equal(first[key], second[key]), key
    # and a different seed for the loss really changes the gradients (the check can fail)
    _, third = run_layer(m, x, hx, form, kwargs, seed=7)
    assert not torch.equal(first["grad input"], third["grad input"])


# ---------------------------------------------------------------------------------------------
# gradcheck, every cell


@pytest.mark.slow_cells
def test_gradcheck(cell_path):
    cell = cellc.load_cell(cell_path)
    mod = cellc.load(cell_path)
    i, h, t, b = 2, 3, 3, 3
    torch.manual_seed(0)
    m = mod.Layer(**size_args(cell, i, h), bidirectional=True, dtype=torch.float64)
    names = [n for n, _ in m.named_parameters()]
    chosen = sorted({names[0], names[1], names[-1]})  # forward weights, a reverse parameter
    g = torch.Generator().manual_seed(1)
    x = torch.randn(t, b, i, generator=g, dtype=torch.float64, requires_grad=True)
    hs = [torch.randn(2, b, n, generator=g, dtype=torch.float64, requires_grad=True)
          for n in m._state_sizes]
    ws = [getattr(m, n).detach().clone().requires_grad_() for n in chosen]
    ns = len(hs)

    def f(x, *rest):
        states, weights = rest[:ns], rest[ns:]
        packed = pack_padded_sequence(x, [2, 3, 1], enforce_sorted=False)
        hx = states[0] if ns == 1 else tuple(states)
        with torch.random.fork_rng():  # dropout/zoneout masks: the same at every evaluation
            torch.manual_seed(2)
            out, h_n = torch.func.functional_call(m, dict(zip(chosen, weights)), (packed, hx))
        return (out.data, *as_list(h_n))

    assert torch.autograd.gradcheck(f, (x, *hs, *ws), eps=1e-6, atol=1e-6, rtol=1e-5)

    # the one-step Cell class as well (none for a cell that reads x[t-1])
    if any(p.kind == "previous" for p in cell.input_parts):
        return
    c = mod.Cell(**size_args(cell, i, h), dtype=torch.float64)
    cnames = [n for n, _ in c.named_parameters()][:2]
    cws = [getattr(c, n).detach().clone().requires_grad_() for n in cnames]
    cx = torch.randn(b, i, generator=g, dtype=torch.float64, requires_grad=True)
    chs = [torch.randn(b, n, generator=g, dtype=torch.float64, requires_grad=True)
           for n in c._state_sizes]

    def fc(x, *rest):
        states, weights = rest[:ns], rest[ns:]
        hx = states[0] if ns == 1 else tuple(states)
        with torch.random.fork_rng():
            torch.manual_seed(2)
            return tuple(as_list(torch.func.functional_call(c, dict(zip(cnames, weights)),
                                                            (x, hx))))

    assert torch.autograd.gradcheck(fc, (cx, *chs, *cws), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_can_fail(monkeypatch):
    """A wrong generated backward is caught by the gradcheck above (the check is live)."""
    mod = gen("rnn")
    original = mod.rnn_backward

    def wrong(*args):
        d_xs, *rest = original(*args)
        return (d_xs * 1.01, *rest)

    monkeypatch.setattr(mod, "rnn_backward", wrong)
    m = mod.Layer(2, 3, dtype=torch.float64)
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert not torch.autograd.gradcheck(lambda x: m(x)[0], (x,), raise_exception=False)


# ---------------------------------------------------------------------------------------------
# torch.compile


class _Model(torch.nn.Module):
    def __init__(self, Layer):
        super().__init__()
        self.rnn = Layer(I, H, num_layers=2, batch_first=True)
        self.head = torch.nn.Linear(H, 2)

    def forward(self, x):
        y, (h, c) = self.rnn(x)
        return self.head(torch.relu(y)).mean(1) + h[-1].sum(-1, keepdim=True) * c[-1].mean()


def _compile_andcompare(backend):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = _Model(gen("lstm").LSTM)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x = torch.randn(B, T, I)
    results = []
    for m in (model, compiled, compiled):  # twice compiled: the second call reuses the graph
        m.zero_grad(set_to_none=True)
        xl = x.clone().requires_grad_()
        out = m(xl)
        out.square().sum().backward()
        results.append([out.detach(), xl.grad, *(p.grad for p in model.parameters())])
    for k, (a, b, c) in enumerate(zip(*results, strict=True)):
        close(b, a, torch.float32, f"torch.compile({backend}) item {k}")
        close(c, a, torch.float32, f"torch.compile({backend}) second call item {k}")
    # one graph for the model, the layer inside it (fullgraph=True: no break)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


@pytest.mark.slow
def test_torch_compile_eager_backend():
    _compile_andcompare("eager")


@pytest.mark.slow  # compiling C++ kernels: ~30 s on a cold cache, 2 cores
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inductor's own use of torch.jit
def test_torch_compile_inductor():
    _compile_andcompare("inductor")


# ---------------------------------------------------------------------------------------------
# The CLI output for every cell: standalone, imports only torch + stdlib, trains without cellc

ALLOWED_IMPORTS = {"torch", "math", "functools", "inspect", "numbers", "warnings"}

TRAIN = textwrap.dedent("""
    # argv: the output directory, then module names. One fresh interpreter trains each module.
    import importlib, json, sys
    out_dir, names = sys.argv[1], sys.argv[2:]

    def leaked():
        return sorted(m for m in sys.modules if m == "cellc" or m.startswith("cellc."))

    import torch
    torch.set_num_threads(1)
    results = {}
    for name in names:
        before = leaked()
        gen = importlib.import_module(name)
        assert gen.__file__.startswith(out_dir), gen.__file__
        new = sorted(set(leaked()) - set(before))  # what importing this module pulled in
        torch.manual_seed(0)
        optional = gen.SPEC.get("optional_sizes", ())
        layer = gen.Layer(**{a: 4 if a == gen.SPEC["input_size"] else 8
                             for a, _ in gen.SPEC["sizes"] if a not in optional})
        T, B = 8, 16
        x = torch.randn(T, B, 4)
        target = torch.tanh(x @ torch.randn(4, 2))  # a tiny regression of the current input
        head = torch.nn.Linear(layer(x)[0].shape[-1], 2)
        opt = torch.optim.Adam([*layer.parameters(), *head.parameters()], lr=0.02)
        losses = []
        for step in range(30):
            opt.zero_grad()
            loss = (head(layer(x)[0]) - target).square().mean()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        new += sorted(set(leaked()) - set(before) - set(new))  # or running it
        results[name] = {"losses": losses, "leaked": new, "symbolic": gen.SYMBOLIC_BACKWARD,
                         "cell": gen.SPEC["name"]}
    print(json.dumps(results))
""")


def _cellc(*args, cwd=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "cellc", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)


def _cli(capture, *args):
    """cellc's main() in this process (what `python -m cellc` runs): (status, stdout, stderr),
    with capsys or capfd. Anything but a handled error would raise here (a traceback)."""
    from cellc import cli

    capture.readouterr()
    status = cli.main([str(a) for a in args])
    out = capture.readouterr()
    return status, out.out, out.err


def _clean_env(pythonpath):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(pythonpath)
    env["PYTHONNOUSERSITE"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    return env


def _train_fresh(out_dir, names, env=None):
    """Run TRAIN in a fresh interpreter that sees only out_dir (and site-packages)."""
    return subprocess.run([sys.executable, "-c", TRAIN, str(out_dir), *names],
                          capture_output=True, text=True, cwd=out_dir,
                          env=env or _clean_env(out_dir), timeout=300)


def _imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, ast.unparse(node)
            yield node, node.module
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield node, a.name


@pytest.fixture(scope="module")
def cli_outputs(tmp_path_factory):
    """`python -m cellc compile FILE --target torch -o gen_<stem>.py` for every cells/*.cell (in
    parallel), then one fresh interpreter that imports and trains each output."""
    out_dir = tmp_path_factory.mktemp("gen")
    paths = sorted(CELLS_DIR.glob("*.cell"))
    procs = {}
    for path in paths:
        out = out_dir / f"gen_{path.stem}.py"
        procs[path.name] = (out, subprocess.Popen(
            [sys.executable, "-m", "cellc", "compile", str(path), "--target", "torch", "-o",
             str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    compiled = {}
    for key, (out, proc) in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        compiled[key] = (out, proc.returncode, stdout, stderr)
    listing = sorted(os.listdir(out_dir))
    ok = [out.stem for out, rc, _, _ in compiled.values() if rc == 0]
    # a control that does import cellc, last: the check below must see it
    bad = cellc.torch_source(CELLS_DIR / "rnn.cell") + "\nimport cellc\n"
    (out_dir / "zz_imports_cellc.py").write_text(bad)
    r = _train_fresh(out_dir, ok + ["zz_imports_cellc"])
    trained = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {}
    return {"compiled": compiled, "listing": listing, "train": r, "trained": trained}


@pytest.mark.slow
def test_cli_output_is_standalone_and_trains(cell_path, cli_outputs):
    out, rc, stdout, stderr = cli_outputs["compiled"][cell_path.name]
    assert rc == 0, stderr
    assert stdout.strip() == f"wrote {out}" and stderr == ""
    assert cli_outputs["listing"] == sorted(f"gen_{p.stem}.py" for p in CELLS_DIR.glob("*.cell"))

    text = out.read_text()
    tree = ast.parse(text)
    found = set()
    for node, name in _imports(tree):
        top = name.split(".")[0]
        found.add(top)
        assert top != "cellc", ast.unparse(node)
        assert top in ALLOWED_IMPORTS or top in sys.stdlib_module_names, ast.unparse(node)
    assert {"torch", "math", "functools"} <= found
    assert "__import__" not in text and "importlib" not in text
    # the same module cellc.load builds (modulo the file name it names in comments)
    assert text.replace(str(cell_path), "X") == cellc.torch_source(cell_path).replace(
        str(cell_path), "X")

    r = cli_outputs["train"]
    assert r.returncode == 0, r.stderr[-3000:]
    result = cli_outputs["trained"][out.stem]
    assert result["leaked"] == [], "the generated module imported cellc"
    assert result["symbolic"] is True and result["cell"] == cellc.load_cell(cell_path).name
    losses = result["losses"]
    assert all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.slow
def test_standalone_check_can_fail(cli_outputs):
    """The fresh-interpreter check above does see a module that pulls in cellc (the editable
    install makes it importable), and only that one."""
    r = cli_outputs["train"]
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cellc" in cli_outputs["trained"]["zz_imports_cellc"]["leaked"]
    assert all(not v["leaked"] for k, v in cli_outputs["trained"].items()
               if k != "zz_imports_cellc")


# ---------------------------------------------------------------------------------------------
# Names from the .cell file cannot break or inject code

WEIRD = """\
# Every name here is something the generated Python uses itself, a builtin or a dunder
cell Weird(input_size I, hidden_size H):
    input  xs[I]
    state  torch[H], print[H]
    param  S[H, I], T[H, H] ~ uniform(-1/sqrt(H), 1/sqrt(H))
    param  ctx[H], class_[H], None_[H], len[H] ~ uniform(-1, 1)
    bias   B[H], saved[H] ~ uniform(-0.5, 0.5)
    math = S @ xs + T @ torch + B
    dtype = tanh(math) * ctx + saved
    stack_steps = sigmoid(class_) * print
    print' = stack_steps + dtype * len
    batch_sizes, device = split(concat(tanh(print'), None_ * torch), 2)
    F = batch_sizes + device
    t, r = split(concat(F, sigmoid(F)), 2)
    n = t * r
    self, __init__ = split(concat(n, t), 2)
    torch' = self + __init__
    output torch'
"""


def _numpy_check(cell, mod, size_kwargs, dtype=torch.float64):
    """One layer, one direction: outputs, final states and every gradient of the generated layer
    against cellc.reference (the NumPy interpreter of the cell and of its symbolic backward)."""
    sizes = cell.bind(**size_kwargs)
    torch.manual_seed(0)
    m = mod.Layer(**size_kwargs, dtype=dtype)
    rng = np.random.default_rng(0)
    i = size_kwargs["input_size"]
    xs = rng.normal(size=(T, B, i))
    states = {s.name: rng.normal(size=s.type.concrete(sizes, 1, B)) for s in cell.states}
    params = {p.name: getattr(m, f"{p.name}_l0").detach().numpy() for p in cell.params}
    d_ys = rng.normal(size=(T, B, m._output_sizes[0]))
    d_states = {s.name: rng.normal(size=states[s.name].shape) for s in cell.states}
    ys, final, grads = numpy_ref.backward(cell, sizes, xs, params, states, d_ys, d_states)

    x = torch.from_numpy(xs).requires_grad_()
    hx = [torch.from_numpy(states[s.name])[None].requires_grad_() for s in cell.states]
    out, h_n = m(x, hx[0] if len(hx) == 1 else tuple(hx))
    h_n = as_list(h_n)
    loss = (out * torch.from_numpy(d_ys)).sum()
    loss = loss + sum((h[0] * torch.from_numpy(d_states[s.name])).sum()
                      for s, h in zip(cell.states, h_n))
    loss.backward()
    np.testing.assert_allclose(out.detach().numpy(), ys, atol=1e-10, rtol=1e-10)
    for s, h in zip(cell.states, h_n):
        np.testing.assert_allclose(h[0].detach().numpy(), final[s.name], atol=1e-10, rtol=1e-10)
    np.testing.assert_allclose(x.grad.numpy(), grads["xs"], atol=1e-10, rtol=1e-10)
    for s, h in zip(cell.states, hx):
        np.testing.assert_allclose(h.grad[0].numpy(), grads[s.name], atol=1e-10, rtol=1e-10)
    for p in cell.params:
        np.testing.assert_allclose(getattr(m, f"{p.name}_l0").grad.numpy(), grads[p.name],
                                   atol=1e-10, rtol=1e-10, err_msg=p.name)


def test_cell_names_cannot_break_generated_code(tmp_path, capsys):
    path = tmp_path / "weird.cell"
    path.write_text(WEIRD)
    cell = cellc.load_cell(path)
    mod = cellc.load(path)
    # the generated kernels are valid Python whose locals never shadow what the code uses
    _numpy_check(cell, mod, {"input_size": I, "hidden_size": H})
    # names the generated layer exposes are the .cell names
    m = mod.Weird(I, H, bidirectional=True)
    assert {"torch_l0", "print_l0"}.isdisjoint(dict(m.named_parameters()))
    assert {"S_l0", "T_l0", "ctx_l0", "class__l0", "None__l0", "len_l0", "B_l0",
            "saved_l0"} <= set(dict(m.named_parameters()))
    assert mod.SPEC["states"] == ["torch", "print"]
    # the CLI's file imports and runs too, and is the same text
    out = tmp_path / "weird.py"
    assert _cli(capsys, "compile", path, "-o", out)[0] == 0
    ns = {"__name__": "weird_gen"}
    exec(compile(out.read_text(), str(out), "exec"), ns)
    y, (_, h2) = ns["Weird"](I, H)(torch.randn(T, B, I))
    assert y.shape == (T, B, H) and h2.shape == (1, B, H)


def test_cell_names_check_can_fail(tmp_path, monkeypatch):
    """With the renaming of reserved names switched off, the weird cell does break."""
    from cellc.backends import torch_src

    monkeypatch.setattr(torch_src, "RESERVED", set())
    monkeypatch.setattr(api, "_LOADED", {})
    path = tmp_path / "weird.cell"
    path.write_text(WEIRD)
    with pytest.raises((SyntaxError, AttributeError, TypeError, NameError)):
        _numpy_check(cellc.load_cell(path), cellc.load(path), {"input_size": I, "hidden_size": H})


RNN_BODY = """\
    input  x[I]
    state  h[H]
    param  w[H, I], u[H, H] ~ uniform(-1/sqrt(H), 1/sqrt(H))
    h' = tanh(w @ x + u @ h)
    output h'
"""


@pytest.mark.parametrize("name", [
    "SPEC", "torch", "math", "functools", "Layer", "Cell", "SYMBOLIC_BACKWARD", "N_RESULTS",
    "make_layer", "run_direction", "stack_steps", "PackedSequence", "warnings",
    "len", "type", "range", "print", "object", "isinstance", "super", "staticmethod",
    "Packed",  # would define PackedSequence and hide torch's
    "_private",
])
def test_bad_cell_names_are_clean_errors(name, tmp_path, capsys):
    path = tmp_path / "bad.cell"
    path.write_text(f"cell {name}(input_size I, hidden_size H):\n{RNN_BODY}")
    with pytest.raises(cellc.CellError, match="cannot name a Python class"):
        cellc.load(path)
    out = tmp_path / "bad.py"
    status, stdout, stderr = _cli(capsys, "compile", path, "-o", out)
    assert status == 1 and stdout == ""
    assert stderr.startswith(f"{path}:") and "cannot name a Python class" in stderr, stderr
    assert not out.exists() and os.listdir(tmp_path) == ["bad.cell"]


def test_bad_cell_name_from_the_command_line(tmp_path):
    path = tmp_path / "bad.cell"
    path.write_text(f"cell SPEC(input_size I, hidden_size H):\n{RNN_BODY}")
    r = _cellc("compile", path, "-o", tmp_path / "bad.py")
    assert r.returncode == 1 and r.stdout == ""
    assert "Traceback" not in r.stderr and "cannot name a Python class" in r.stderr
    assert os.listdir(tmp_path) == ["bad.cell"]


@pytest.mark.parametrize("name", ["Make", "Lstm", "Torch", "Print", "Sequence", "LayerX"])
def test_harmless_cell_names_work(name, tmp_path):
    path = tmp_path / "ok.cell"
    path.write_text(f"cell {name}(input_size I, hidden_size H):\n{RNN_BODY}")
    mod = cellc.load(path)
    layer = getattr(mod, name)
    assert layer is mod.Layer and getattr(mod, name + "Cell") is mod.Cell
    x = torch.randn(T, B, I)
    out, h = layer(I, H, num_layers=2, bidirectional=True)(
        pack_padded_sequence(x, [5, 2, 3, 1], enforce_sorted=False))
    assert isinstance(out, PackedSequence) and h.shape == (4, B, H)


def _exec_generated(out, capfd):
    """Run a generated file as a module (its bytes, as Python would read it); nothing it runs
    may print (os.system output included: capfd captures the file descriptors)."""
    capfd.readouterr()
    ns = {"__name__": "generated_under_test"}
    exec(compile(out.read_bytes(), str(out), "exec"), ns)
    captured = capfd.readouterr()
    assert "INJECTED" not in captured.out + captured.err, captured
    assert isinstance(ns["Layer"], type)


@pytest.mark.slow
@pytest.mark.parametrize("filename", [
    'a"""+str(__import__("os").system("echo INJECTED"))+""".cell',
    'b\nprint("INJECTED")\n.cell',
    'c\\x.cell',
    'd\\N.cell',
    "e\u2028print('INJECTED').cell",
    "f\rprint('INJECTED').cell",
])
def test_file_names_cannot_inject_code(filename, tmp_path, capfd):
    path = tmp_path / filename
    path.write_text(f"cell Fine(input_size I, hidden_size H):\n{RNN_BODY}")
    out = tmp_path / "out.py"
    status, _, stderr = _cli(capfd, "compile", path, "-o", out)
    assert status == 0, stderr
    text = out.read_text()
    _exec_generated(out, capfd)
    tree = ast.parse(text)
    assert not any(isinstance(n, ast.Call) and ast.unparse(n.func) in ("print", "__import__")
                   for n in ast.walk(tree))
    mod = cellc.load(path)  # in memory too
    assert mod.Fine(I, H)(torch.randn(T, B, I))[0].shape == (T, B, H)


def test_odd_characters_in_comments(tmp_path, capfd):
    """A source line goes into a comment in the generated code: no character may end it or
    make the file unloadable (NUL, \\r, form feed, U+2028, U+0085)."""
    body = RNN_BODY.replace("h' = tanh(w @ x + u @ h)",
                            "h' = tanh(w @ x + u @ h)  # a\0b\rprint('INJECTED')\x0c\u2028\x85z")
    path = tmp_path / "odd.cell"
    path.write_bytes(f"cell Odd(input_size I, hidden_size H):\n{body}".encode())
    out = tmp_path / "odd.py"
    status, _, stderr = _cli(capfd, "compile", path, "-o", out)
    assert status == 0, stderr
    _exec_generated(out, capfd)
    cellc.load(path).Odd(I, H)(torch.randn(T, B, I))


@pytest.mark.parametrize("pname", [
    "forward", "input_size", "hidden_size", "num_layers", "dtype", "device",
    "eval", "to", "state_dict", "float", "cuda", "all_weights",
    "training", "_parameters", "_spec",
])
def test_reserved_parameter_names_are_clean_errors(pname, tmp_path, capsys):
    """A parameter that would hide an attribute of the layer or cell class (torch.nn.Module's,
    the layer API's, a size argument) is a located error at compile time, not a module that
    fails on import or a Cell class that fails when built."""
    path = tmp_path / "p.cell"
    path.write_text(f"cell P(input_size I, hidden_size H):\n{RNN_BODY.replace('w', pname)}")
    with pytest.raises(cellc.CellError, match=f"parameter '{pname}'"):
        cellc.load(path)
    status, stdout, stderr = _cli(capsys, "compile", path, "-o", tmp_path / "p.py")
    assert status == 1 and stdout == "" and f"parameter '{pname}'" in stderr, stderr
    assert stderr.startswith(f"{path}:4:"), stderr  # located at the declaration
    assert os.listdir(tmp_path) == ["p.cell"]


def test_reserved_parameter_names_cover_installed_torch():
    """cellc knows torch.nn.Module's attributes without importing torch: the list must hold every
    attribute of the installed torch."""
    from cellc.backends.torch_names import MODULE_ATTRIBUTES

    installed = {n for n in dir(torch.nn.Module) if not n.startswith("__")}
    assert installed - MODULE_ATTRIBUTES == set()


def test_every_attribute_of_the_classes_is_refused_as_a_parameter_name(tmp_path):
    """Every attribute a built Cell or Layer object has (class or instance, private ones
    included; `bias` is handled by the classes) must be refused as a parameter name: the Cell
    class registers parameters under their bare names."""
    mod = gen("lstm")
    hazards = set()
    for obj in (mod.Cell(I, H), mod.Layer(I, H)):
        hazards |= {n for n in dir(obj) if not n.startswith("__")} - set(
            dict(obj.named_parameters()))
    hazards -= {"bias"}
    accepted = []
    for name in sorted(hazards):
        path = tmp_path / f"{name}.cell"
        path.write_text(f"cell P(input_size I, hidden_size H):\n{RNN_BODY.replace('w', name)}")
        try:
            cellc.torch_source(path)
        except cellc.CellError:
            continue
        accepted.append(name)
    assert accepted == [], f"parameter names that break the generated classes: {accepted}"


@pytest.mark.parametrize("pname", ["bias", "weight", "len", "T_", "cell", "Layer"])
def test_ordinary_parameter_names_work(pname, tmp_path):
    path = tmp_path / "p.cell"
    path.write_text(f"cell P(input_size I, hidden_size H):\n{RNN_BODY.replace('w', pname)}")
    mod = cellc.load(path)
    layer, cell = mod.Layer(I, H, bidirectional=True), mod.Cell(I, H)
    assert f"{pname}_l0_reverse" in dict(layer.named_parameters())
    assert isinstance(getattr(cell, pname), torch.nn.Parameter)
    layer(torch.randn(T, B, I))[0].sum().backward()
    cell(torch.randn(B, I)).sum().backward()
    assert getattr(cell, pname).grad is not None


# ---------------------------------------------------------------------------------------------
# cellc compile: atomic, and nothing written on errors


@pytest.mark.slow
def test_compile_errors_write_nothing(tmp_path):
    broken = tmp_path / "broken.cell"
    broken.write_text("cell Broken(input_size I, hidden_size H):\n    input x[I]\n    state h[H]\n"
                      "    h' = tanh(q @ x)\n    output h'\n")
    out = tmp_path / "broken.py"
    r = _cellc("compile", broken, "-o", out)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "error" in r.stderr
    assert not out.exists()
    # default output name (the cell file's stem, in the current directory): nothing either
    r = _cellc("compile", broken, cwd=tmp_path)
    assert r.returncode == 1 and not out.exists()
    # an existing output is left alone
    out.write_text("OLD")
    r = _cellc("compile", broken, "-o", out)
    assert r.returncode == 1 and out.read_text() == "OLD"
    # -o into a missing directory, or onto a directory
    good = CELLS_DIR / "rnn.cell"
    # (a usage error: cellc exits with 2 for these, as argparse does; 1 would do too)
    r = _cellc("compile", good, "-o", tmp_path / "missing" / "x.py")
    assert r.returncode in (1, 2) and "does not exist" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "missing").exists()
    r = _cellc("compile", good, "-o", tmp_path)
    assert r.returncode in (1, 2) and "directory" in r.stderr and "Traceback" not in r.stderr
    # a missing input file
    r = _cellc("compile", tmp_path / "nope.cell", "-o", tmp_path / "nope.py")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["broken.cell", "broken.py"]
    assert out.read_text() == "OLD"


def test_compile_replaces_and_default_name(tmp_path):
    out = tmp_path / "gru.py"
    out.write_text("OLD")
    r = _cellc("compile", CELLS_DIR / "gru.cell", cwd=tmp_path)  # default: ./gru.py
    assert r.returncode == 0 and r.stdout.strip() == "wrote gru.py"
    assert out.read_text().startswith("# Generated by cellc")
    assert os.listdir(tmp_path) == ["gru.py"]


def test_write_atomic_keeps_old_content_on_failure(tmp_path, monkeypatch):
    out = tmp_path / "x.py"
    out.write_text("OLD")

    def boom(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(api.os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        api.write_atomic(out, "NEW")
    monkeypatch.undo()
    assert out.read_text() == "OLD" and os.listdir(tmp_path) == ["x.py"]
    api.write_atomic(out, "NEW")
    assert out.read_text() == "NEW" and os.listdir(tmp_path) == ["x.py"]


def test_load_is_cached_by_content(tmp_path):
    path = tmp_path / "c.cell"
    path.write_text(f"cell C1(input_size I, hidden_size H):\n{RNN_BODY}")
    a = cellc.load(path)
    assert cellc.load(path) is a
    time.sleep(0.01)
    path.write_text(f"cell C2(input_size I, hidden_size H):\n{RNN_BODY}")
    b = cellc.load(path)
    assert b is not a and b.SPEC["name"] == "C2" and a.SPEC["name"] == "C1"
    with pytest.raises(ValueError, match="target"):
        cellc.load(path, target="jax")


def test_input_size_must_be_one_symbol_for_layers(tmp_path, capsys):
    # Stacked layers rebind the input's size symbol, so x[2*I] cannot make a layer: a located
    # error from `cellc compile --target torch` and from the llvm target's layer classes alike.
    path = tmp_path / "wide.cell"
    path.write_text("cell Wide(input_size I, hidden_size H):\n    input  x[2*I]\n    state  h[H]\n"
                    "    param  w[H, 2*I], u[H, H]\n    h' = tanh(w @ x + u @ h)\n    output h'\n")
    message = (f"{path}:2:12: error: the input's size must be one size symbol, as in x[I], for"
               " layers to stack; it is 2*I\n        input  x[2*I]\n               ^^^^^^")
    status, _, stderr = _cli(capsys, "compile", path, "-o", tmp_path / "wide.py")
    assert status == 1 and stderr.strip() == message
    assert not (tmp_path / "wide.py").exists()
    with pytest.raises(cellc.CellError) as err:
        _ = cellc.load(path, target="llvm").Layer  # the first access builds the classes
    assert str(err.value) == message


MIN_MAX_WITH_NUMBERS = """\
cell Clip(input_size I, hidden_size H):
    input x[I]
    state h[H]
    param W[H, I], U[H, H] ~ uniform(-1, 1)
    param alpha ~ constant(0.5)
    h' = min(tanh(W @ x + U @ h), 0.5) + max(0.25, h) - min(-0.5, max(h, -0.75)) * min(0.5, alpha)
    output h'
"""


def test_min_max_with_a_number(tmp_path):
    """min/max with a number or a scalar parameter: torch.minimum takes only tensors (TypeError
    at the first forward before), so scalars are made tensors; results and every gradient equal
    the NumPy reference's."""
    path = tmp_path / "clip.cell"
    path.write_text(MIN_MAX_WITH_NUMBERS)
    _numpy_check(cellc.load_cell(path), cellc.load(path), {"input_size": I, "hidden_size": H})


SIZE_DEPENDENT_INIT = """\
cell R(input_size I, hidden_size H):
    input x[I]
    state h[H]
    param W[H, I], U[H, H] ~ uniform(-1/log(H - 2), 1)
    h' = tanh(W @ x + U @ h)
    output h'
"""


@pytest.mark.parametrize("H, why", [(2, "math domain error"), (3, "division by zero")])
def test_initializer_domain_errors_at_build_name_the_parameter(H, why, tmp_path):
    """An initializer that fails only for some sizes: the generated module's math formula raised
    a bare 'math domain error' or ZeroDivisionError; it is a ValueError naming the layer, the
    sizes and the parameter, as torch.nn's own size errors are."""
    path = tmp_path / "r.cell"
    path.write_text(SIZE_DEPENDENT_INIT)
    mod = cellc.load(path)
    with pytest.raises(ValueError, match=rf"R: with input_size=3, hidden_size={H}, the initializer"
                       rf" of 'W' has an argument that is not a finite real number \(.*{why}"):
        mod.Layer(3, H)
    assert mod.Layer(3, 4).W_l0.shape == (4, 3)
