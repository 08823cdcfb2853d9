"""Every op in every table (UFL test/test_classcoverage.py), and a missing rule names its op.

`ops.OPS` is the one list of ops. Each table keyed by op name must cover it, except where an op is
handled outside the table: `scan` is differentiated by `grad.py` itself, and backends that loop
over time in Python (torch eager) or emit it specially (torch source: also `const`) have no row
for it. A table must not carry rows for ops that do not exist either.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

import cellc
from cellc import cli, grad, ir, pipeline, vjp
from cellc.backends import numpy_ref
from cellc.ops import OPS
from cellc.shapes import Batch, Dim, TensorType
from cellc.source import InternalError

CELLS_DIR = Path(__file__).resolve().parent.parent / "cells"
VEC = TensorType((Dim.of("H"),), Batch.STEP)


def tanh_func() -> ir.Func:
    x = ir.Value("x", VEC)
    b = ir.Builder(names=["x"])
    y = b.op("tanh", x)
    return ir.verify(ir.Func("f", (x,), tuple(b.body), (y,)))


def test_vjp_table_covers_every_op():
    assert set(OPS) - set(vjp.VJP) == {"scan"}
    assert set(vjp.VJP) <= set(OPS)
    assert set(vjp.NOT_DIFFERENTIABLE) <= set(OPS)


def test_numpy_table_covers_every_op():
    assert set(numpy_ref.NUMPY) == set(OPS)
    assert all(callable(fn) for fn in numpy_ref.NUMPY.values())


# (module, table, ops it handles outside the table)
OPTIONAL_TABLES = [
    ("cellc.backends.torch_eager", "TORCH_EAGER", {"scan"}),
    ("cellc.backends.torch_src", "TORCH", {"scan", "const"}),
]


@pytest.mark.parametrize(
    "module,table,outside", OPTIONAL_TABLES, ids=[t[1] for t in OPTIONAL_TABLES]
)
def test_optional_backend_table_covers_every_op(module, table, outside):
    pytest.importorskip("torch")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        pytest.skip(f"{module} does not exist")
    if not hasattr(mod, table):
        pytest.skip(f"{module} has no {table}")
    rules = getattr(mod, table)
    assert set(OPS) - outside <= set(rules), (
        f"{table} lacks {sorted(set(OPS) - outside - set(rules))}"
    )
    assert set(rules) <= set(OPS), f"{table} has rows for unknown ops"


def test_missing_vjp_rule_names_the_op(monkeypatch):
    f = tanh_func()
    grad.vjp(f)  # fine with the rule
    monkeypatch.delitem(vjp.VJP, "tanh")
    with pytest.raises(InternalError, match="no VJP rule for op 'tanh'"):
        grad.vjp(f)


def test_missing_vjp_rule_inside_a_loop_names_the_op(monkeypatch):
    cell = cellc.load_cell(CELLS_DIR / "lstm.cell")
    monkeypatch.delitem(vjp.VJP, "sigmoid")
    with pytest.raises(InternalError, match="'sigmoid'"):
        pipeline.compile_program(cell)


def test_missing_vjp_rule_is_an_internal_error_on_the_command_line(monkeypatch, capsys):
    monkeypatch.delitem(vjp.VJP, "sigmoid")
    assert cli.main(["grad", str(CELLS_DIR / "lstm.cell")]) == 3
    err = capsys.readouterr().err
    assert "internal error" in err and "'sigmoid'" in err


def test_missing_numpy_rule_names_the_op(monkeypatch):
    f = tanh_func()
    ctx = numpy_ref.Context({"H": 2}, 1, 1, np.dtype(np.float64))
    x = np.ones((1, 2))
    np.testing.assert_allclose(numpy_ref.run(f, [x], ctx)[0], np.tanh(x), rtol=1e-15)
    monkeypatch.delitem(numpy_ref.NUMPY, "tanh")
    with pytest.raises(InternalError, match="'tanh'"):
        numpy_ref.run(f, [x], ctx)


def test_missing_torch_eager_rule_names_the_op(monkeypatch):
    torch = pytest.importorskip("torch")
    eager = pytest.importorskip("cellc.backends.torch_eager")
    f = tanh_func()
    ctx = eager.Context({"H": 2}, 1, 1, torch.float64, torch.device("cpu"))
    x = torch.ones(1, 2, dtype=torch.float64)
    assert torch.allclose(eager.run(f, [x], ctx)[0], torch.tanh(x))
    monkeypatch.delitem(eager.TORCH_EAGER, "tanh")
    with pytest.raises(InternalError, match="'tanh'"):
        eager.run(f, [x], ctx)


def test_torch_reserved_names_match_the_installed_torch():
    # The CLI checks parameter names without importing torch, from a list written for torch
    # 2.13: it must still cover every attribute of the torch.nn.Module installed here.
    torch = pytest.importorskip("torch")
    from cellc.backends.torch_names import LAYER_ATTRIBUTES, MODULE_ATTRIBUTES

    public = {n for n in dir(torch.nn.Module) if not n.startswith("__")}
    assert public <= MODULE_ATTRIBUTES
    assert set(torch.nn.Module().__dict__) <= LAYER_ATTRIBUTES
