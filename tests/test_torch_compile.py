"""torch.compile(fullgraph=True), torch.export and torch.save of models with cellc layers, on
both torch-based targets (issue 13, "torch integration").

- llvm: each layer direction is one cellc::NativeSequence custom op (backends/torch_ops.py), so
  a compiled model has no graph break and the op appears in the exported graph.
- torch: the generated module defines its own custom op (OP_NAME, `cellc_gen::<cell>_<hash>`)
  for one direction over a whole sequence, with the generated backward as its autograd formula,
  so the graph holds one op per direction whatever T (not T unrolled steps). Its fake
  implementation must give exactly the real results' shapes (checked for every cell), and the
  same module loaded twice, or in another process running an exported program, finds the op.
- Outputs and gradients match eager; PackedSequence input is a documented graph break (an error
  under fullgraph=True, and correct results without it).
- A whole model round-trips through torch.save / torch.load, and its state_dict.

torch.compile costs seconds per graph: the torch target compiles with inductor (the default
backend), the llvm target with aot_eager (AOTAutograd traces forward and backward with fake
tensors, as inductor does, without generating code); compiles are marked slow. Compile time
against T is in the benchmark (benchmarks/torch_compile.py).
"""

import functools
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from torch.nn.utils.rnn import pack_padded_sequence

import cellc

from conftest import layer_size_args

CELLS = Path(__file__).resolve().parent.parent / "cells"
TARGETS = ["llvm", "torch"]
T, B, I, H = 5, 3, 4, 6


@functools.cache
def module(target, name="lstm"):
    return cellc.load(CELLS / f"{name}.cell", target=target)


class Model(torch.nn.Module):
    """A cellc layer and a torch Linear head."""

    def __init__(self, target, **kwargs):
        super().__init__()
        self.rnn = module(target).LSTM(I, H, **kwargs)
        self.head = torch.nn.Linear(H * (2 if self.rnn.bidirectional else 1), 2)

    def forward(self, x):
        y, (h, c) = self.rnn(x)
        return self.head(y), h, c


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """A fresh dynamo after each test."""
    yield
    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()


def outputs_and_grads(model, fn, x):
    model.zero_grad()
    x = x.detach().requires_grad_()
    outs = fn(x)
    sum(o.square().sum() for o in outs).backward()
    return [o.detach() for o in outs] + [x.grad] + [p.grad for p in model.parameters()]


def assert_all_close(got, want, dtype=torch.float32):
    assert len(got) == len(want)
    tol = {torch.float32: (1e-5, 1e-6), torch.float64: (1e-12, 1e-12)}[dtype]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=tol[0], atol=tol[1])


def graph_ops(gm) -> set[str]:
    return {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}


# The torch target under inductor in both dtypes; the llvm target under aot_eager.
COMPILES = [("torch", torch.float32, "inductor"), ("torch", torch.float64, "inductor"),
            ("llvm", torch.float32, "aot_eager")]


def op_nodes(gm, target) -> list:
    op = "cellc::NativeSequence" if target == "llvm" else module("torch").OP_NAME
    want = op.replace("::", ".")  # str() of the op's overload, torch.ops.<namespace>.<name>
    return [n for n in gm.graph.nodes if n.op == "call_function" and want in str(n.target)]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inductor's own use of torch.jit
@pytest.mark.parametrize(("target", "dtype", "backend"), COMPILES)
def test_compile_fullgraph_matches_eager(target, dtype, backend):
    """Two layers, bidirectional: outputs, final states, input and parameter gradients; a
    second call with another T recompiles (with a symbolic T) without a graph break. The graphs
    hold one op per layer direction, and no loop."""
    torch.manual_seed(0)
    model = Model(target, num_layers=2, bidirectional=True).to(dtype)
    graphs = []

    def backend_keeping_graphs(gm, example_inputs):  # what torch.compile(model) would run
        graphs.append(gm)
        return torch._dynamo.lookup_backend(backend)(gm, example_inputs)

    compiled = torch.compile(model, fullgraph=True, backend=backend_keeping_graphs)
    for steps in (T, T + 3):
        x = torch.randn(steps, B, I, dtype=dtype)
        assert_all_close(outputs_and_grads(model, compiled, x), outputs_and_grads(model, model, x),
                         dtype)
    assert len(graphs) == 2
    for g in graphs:
        assert len(op_nodes(g, target)) == 4, graph_ops(g)
        assert "aten.mm.default" not in graph_ops(g) or target == "llvm"


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_export_runs_and_matches(target):
    """One op per direction in the exported graph; its module gives eager's outputs, and for
    the torch target its gradients too (the op's autograd formula runs in eager mode here)."""
    torch.manual_seed(1)
    model = Model(target, bidirectional=True)
    x = torch.randn(T, B, I)
    exported = torch.export.export(model, (x,))
    assert len(op_nodes(exported.graph_module, target)) == 2, graph_ops(exported.graph_module)
    for got, want in zip(exported.module()(x), model(x)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    if target == "torch":
        run = exported.module()
        got = outputs_and_grads(model, lambda x: run(x), x)
        want = outputs_and_grads(model, model, x)
        # the exported module holds its own copies of the parameters: compare input gradients
        assert_all_close(got[:4], want[:4])


@pytest.mark.slow
def test_exported_program_runs_in_a_fresh_process(tmp_path):
    """The op's name is the same whenever the module is loaded (from another path too): a
    fresh interpreter that loads the cell can torch.export.load the program and run it."""
    torch.manual_seed(6)
    model = Model("torch")
    x = torch.randn(T, B, I)
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "m.pt2")
    torch.save({"x": x, "y": [t.detach() for t in model(x)]}, tmp_path / "io.pt")
    (tmp_path / "lstm.cell").write_text((CELLS / "lstm.cell").read_text())
    code = ("import torch, cellc; cellc.load('lstm.cell', target='torch');"
            "p = torch.export.load('m.pt2'); d = torch.load('io.pt');"
            "print(all(torch.equal(a, b) for a, b in zip(p.module()(d['x']), d['y'])))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True"]


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_packed_sequence_is_a_graph_break(target):
    """The layer reads a PackedSequence's batch sizes as Python ints: fullgraph=True refuses it
    (dynamo's Unsupported naming Tensor.item, or its data-dependent UserError), and without
    fullgraph the compiled model matches eager, variable lengths and reverse direction
    included."""
    torch.manual_seed(2)
    layer = module(target).LSTM(I, H, bidirectional=True)
    x = torch.randn(T, B, I)
    packed = pack_padded_sequence(x, [5, 3, 2])

    def f(p):
        y, (h, c) = layer(p)
        return y.data, h, c

    refused = (torch._dynamo.exc.Unsupported, torch._dynamo.exc.UserError)
    with pytest.raises(refused, match="item|data-dependent"):
        torch.compile(f, fullgraph=True, backend="eager")(packed)
    torch._dynamo.reset()
    for got, want in zip(torch.compile(f, backend="aot_eager")(packed), f(packed)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------------------
# The torch target's custom op, called directly (eager mode)


def op_inputs(mod, dtype=torch.float64, steps=T, rows=B):
    """A layer's sizes and leaf inputs (xs, states and parameters) for the op, requiring grad."""
    layer = mod.Layer(**layer_size_args(mod.SPEC, I, H)).to(dtype)
    S = dict(layer._layer_sizes[0])
    # the step's input row: x, then x[t-1] and noise masks for a cell that reads them
    width = sum(p["size"](S) for p in mod.SPEC.get("input_parts", ())) or I
    xs = torch.randn(steps, rows, width, dtype=dtype)
    states = [torch.randn(rows, n, dtype=dtype) for n in layer._state_sizes]
    # every parameter the loop takes: trained ones, constants (buffers), hyper-parameters ([1],
    # a choice's index)
    params = [torch.full((1,), 0.0 if "choices" in p else p["default"], dtype=dtype)
              if p["kind"] == "hyper" else getattr(layer, p["name"] + "_l0").detach().clone()
              for p in layer._params]  # not weight_hr of an LSTM with proj_size 0
    return S, [t.requires_grad_() for t in (xs, *states, *params)]


@pytest.mark.slow_cells
def test_op_fake_results_match_real_ones(cell_path):
    """torch.library.opcheck of both ops for every cell: the fake implementations (result_shapes)
    give the real results' shapes, strides and dtypes, with and without batch sizes; the
    forward op's schema, autograd registration and AOT tracing too, on the fast cell."""
    mod = cellc.load(cell_path, target="torch")
    torch.manual_seed(7)
    S, (xs, *args) = op_inputs(mod)
    sizes = [S[sym] for _, sym in mod.SPEC["sizes"]]
    full = cell_path.name == "lstm.cell"
    for batch_sizes in (None, [3, 3, 2, 1, 1]):
        utils = "ALL" if full else ("test_faketensor",)
        torch.library.opcheck(mod.sequence_op.default, (sizes, batch_sizes, xs, args),
                              test_utils=utils)
        with torch.no_grad():
            outs = mod.sequence_op(sizes, batch_sizes, xs, args)
        seeds = [torch.randn_like(o) for o in outs[: mod.N_RESULTS]]
        backward = getattr(torch.ops.cellc_gen, mod.OP_NAME.split("::")[1] + "_backward")
        residuals = outs[mod.N_RESULTS :]
        torch.library.opcheck(backward.default, (sizes, batch_sizes, T, B, [*residuals, *seeds]),
                              test_utils=("test_faketensor",))


@pytest.mark.parametrize("batch_sizes", [None, [3, 3, 2, 1, 1]])
def test_op_matches_torch_autograd_of_the_loop(batch_sizes):
    """run_traced (the op, what tracing records) against torch's autograd of the generated
    forward loop: the same outputs, first derivatives (the generated backward op) and Hessian-
    vector products (the formula's create_graph branch)."""
    mod = module("torch")
    torch.manual_seed(3)
    S, inputs = op_inputs(mod, rows=3)
    vs = [torch.randn_like(t) for t in inputs]

    def op(xs, *rest):
        ys, final = mod.run_traced(xs, rest[:2], rest[2:], batch_sizes, S)
        return ys, *final

    def loop(xs, *rest):  # the generated loop wants every step's batch size
        return mod.lstm_sequence(S, batch_sizes or [xs.shape[1]] * xs.shape[0], xs, *rest)

    results = []
    for run in (op, loop):
        outs = run(*inputs)
        loss = sum((o * o.detach().cos()).sum() for o in outs)
        grads = torch.autograd.grad(loss, inputs, create_graph=True)
        hvp = torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vs)), inputs)
        results.append([o.detach() for o in outs] + [g.detach() for g in grads] + list(hvp))
    assert_all_close(*results, dtype=torch.float64)


def test_op_name_is_per_cell_and_a_second_load_reuses_it(tmp_path):
    """The same module text run twice in one process (as cellc.load and an import of the file
    both do) defines the op once and reuses it; different cells, even of the same name, get
    different ops; the name holds nothing but the namespace, the cell's name and a hash."""
    from cellc.api import torch_source

    text = torch_source(CELLS / "lstm.cell")
    spaces = [{}, {}]
    for space in spaces:
        exec(compile(text, "generated_lstm.py", "exec"), space)
    assert spaces[0]["OP_NAME"] == spaces[1]["OP_NAME"] == module("torch").OP_NAME
    assert spaces[0]["sequence_op"] is spaces[1]["sequence_op"]
    moved = tmp_path / "elsewhere.cell"
    moved.write_text((CELLS / "lstm.cell").read_text())
    assert cellc.load(moved, target="torch").OP_NAME == module("torch").OP_NAME
    gru = module("torch", "gru").OP_NAME
    other = tmp_path / "lstm2.cell"
    other.write_text((CELLS / "lstm.cell").read_text().replace("tanh(c')", "tanh(c') * 0.5"))
    changed = cellc.load(other, target="torch").OP_NAME
    assert len({module("torch").OP_NAME, gru, changed}) == 3
    for name in (gru, changed):
        namespace, op = name.split("::")
        assert namespace == "cellc_gen"
        assert re.fullmatch(r"[a-z0-9_]+_[0-9a-f]{16}", op), op


@pytest.mark.parametrize("target", TARGETS)
def test_torch_save_load_whole_model(target):
    torch.manual_seed(4)
    model = Model(target, num_layers=2)
    x = torch.randn(T, B, I)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(loaded.rnn) is type(model.rnn)  # same process: the same class, not a copy
    for got, want in zip(loaded(x), model(x)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    again = Model(target, num_layers=2)
    again.load_state_dict(loaded.state_dict())
    for got, want in zip(again(x), model(x)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_llvm_layer_unpickles_in_a_fresh_interpreter(tmp_path):
    """The pickle holds the cell's source text, not native code: another process rebuilds the
    class from it."""
    torch.manual_seed(5)
    layer = module("llvm", "gru").Layer(I, H)
    x = torch.randn(T, B, I)
    torch.save({"layer": layer, "x": x, "y": layer(x)[0].detach()}, tmp_path / "m.pt")
    code = ("import torch; d = torch.load('m.pt', weights_only=False);"
            "print(type(d['layer']).__name__, torch.equal(d['layer'](d['x'])[0], d['y']))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["GRU", "True"]

