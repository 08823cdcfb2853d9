"""Every op in every table (UFL test/test_classcoverage.py), and a missing rule names its op.

`ops.OPS` is the one list of ops. Each table keyed by op name must cover it, except where an op is
handled outside the table: `scan` is differentiated by `grad.py` itself. The targets' tables are
read from the target registry (cellc/targets/): each `Table` says which op kinds it must cover
and which ops its target handles outside it (the LLVM table covers the elementwise ops; the code
generator emits the others). A table must not carry rows for ops that do not exist either. A
table that cannot be found is a failure, not a skip: only a missing torch skips. The registry is
also what api and cli read (the last tests here), so these tables are every target's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cellc
from cellc import api, cli, grad, ir, pipeline, targets, vjp
from cellc.backends import numpy_ref
from cellc.backends.cache import LRU
from cellc.ops import OPS
from cellc.shapes import Batch, Dim, TensorType
from cellc.source import InternalError
from cellc.targets._spec import Stage, Table, Target

CELLS_DIR = Path(__file__).resolve().parent.parent / "cells"
CELLC_DIR = Path(cellc.__file__).resolve().parent
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


TARGET_TABLES = [(t, table) for t in targets.registry().values() for table in t.tables]


def table_rows(target, table):
    """The table's rows; a table that is gone fails naming it, and only a missing torch (an
    optional dependency: the README's `pytest.importorskip`) skips."""
    try:
        return table.rows()
    except ModuleNotFoundError as e:
        if e.name == "torch":
            pytest.skip(f"{table} needs torch")
        pytest.fail(f"target {target.name!r}: the module of table {table} is missing: {e}")
    except AttributeError as e:
        pytest.fail(f"target {target.name!r}: table {table} is missing: {e}")


def table_gaps(target, table, rows) -> list[str]:
    """One line per op the table lacks or names without it existing."""
    need = {op for op, d in OPS.items() if d.kind in table.kinds} - table.outside
    lacks = [f"target {target.name!r}: {table} has no row for {OPS[op].kind} op {op!r}"
             for op in sorted(need - set(rows))]
    unknown = [f"target {target.name!r}: {table} has a row for {op!r}, which is not an op"
               f" of cellc/ops.py" for op in sorted(set(rows) - set(OPS))]
    return lacks + unknown


def test_every_target_module_is_registered_with_tables():
    # Discovery (pkgutil) against the files themselves: one target per module, none lost.
    files = sorted(p.stem for p in (CELLC_DIR / "targets").glob("*.py")
                   if not p.stem.startswith("_"))
    assert [m.rsplit(".", 1)[1] for m in targets.module_names()] == files
    assert len(targets.registry()) == len(files) and targets.DEFAULT in targets.registry()
    for t in targets.registry().values():
        assert t.tables, f"target {t.name!r} registers no op table"
        for table in t.tables:
            assert table.kinds <= {d.kind for d in OPS.values()}, (t.name, str(table))
            assert table.outside <= set(OPS), (t.name, str(table))


@pytest.mark.parametrize(
    "target,table", TARGET_TABLES, ids=[f"{t.name}-{table.name}" for t, table in TARGET_TABLES]
)
def test_target_table_covers_every_op(target, table):
    rows = table_rows(target, table)
    gaps = table_gaps(target, table, rows)
    assert not gaps, "\n".join(gaps)
    assert all(callable(rule) or isinstance(rule, str) for rule in rows.values())


def test_llvm_table_covers_every_elementwise_op():
    # The row the registry must not lose: the native target's scalar code, every elementwise op.
    (table,) = [t for t in targets.get("llvm").tables if t.name == "TABLE"]
    assert table.kinds == {"elementwise"} and not table.outside
    elementwise = {op for op, d in OPS.items() if d.kind == "elementwise"}
    assert elementwise <= set(table.rows())


def test_a_missing_row_fails_naming_target_and_op(monkeypatch):
    """What test_target_table_covers_every_op reports when a row goes (here: llvm's tanh) and
    when a row names an op that does not exist."""
    target = targets.get("llvm")
    (table,) = [t for t in target.tables if t.name == "TABLE"]
    rows = dict(table.rows())
    assert table_gaps(target, table, rows) == []
    del rows["tanh"]
    rows["tanhh"] = rows["neg"]
    assert table_gaps(target, table, rows) == [
        "target 'llvm': cellc.backends.llvm_ir.TABLE has no row for elementwise op 'tanh'",
        ("target 'llvm': cellc.backends.llvm_ir.TABLE has a row for 'tanhh', which is not an op"
         " of cellc/ops.py"),
    ]


def test_a_missing_table_fails_instead_of_skipping():
    target = targets.get("llvm")
    for gone in (Table("cellc.backends.no_such_module", "TABLE"),
                 Table("cellc.backends.llvm_ir", "NO_SUCH_TABLE")):
        with pytest.raises(pytest.fail.Exception, match=f"target 'llvm': .*{gone}"):
            table_rows(target, gone)


def fake_target(calls: list) -> Target:
    def load(path, key):
        calls.append(("load", Path(path).name, len(key)))
        return "the fake module"

    def compile_to_disk(args):
        calls.append(("compile", Path(args.file).name, args.sizes, args.output))
        return 0

    return Target(name="fake", order=99, load=load, compile=compile_to_disk,
                  compile_help="a fake target", output_help="where the fake goes",
                  sizes_help="fake sizes", stages=(Stage("fakeir", "fake text", str),))


def test_a_registered_target_reaches_load_compile_and_help(monkeypatch, capsys):
    """Adding a target is registering it: api.load, `cellc compile` and its --help take it from
    the registry with no change of their own."""
    calls = []
    registry = {**targets.registry(), "fake": fake_target(calls)}
    monkeypatch.setattr(targets, "registry", lambda: registry)
    monkeypatch.setattr(api, "_LOADED", LRU(32))  # the fake module stays out of the real cache
    lstm = CELLS_DIR / "lstm.cell"
    assert cellc.load(lstm, target="fake") == "the fake module"
    assert cellc.load(lstm, target="fake") == "the fake module"  # cached by content
    assert calls == [("load", "lstm.cell", 16)]
    assert cli.main(["compile", str(lstm), "--target", "fake", "--sizes", "x=1", "-o", "d"]) == 0
    assert calls[1:] == [("compile", "lstm.cell", "x=1", "d")]
    with pytest.raises(SystemExit):
        cli.main(["compile", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--target {torch,llvm,fake}" in help_text
    assert "llvm: a shared library, its C header and a numpy/ctypes loader, in a directory" \
        " with the BLAS library they link (a folder that runs anywhere); fake: a fake target" \
        in help_text
    assert "llvm: specialize the kernels to these size arguments, e.g." \
        " input_size=8,hidden_size=16 (default: generic kernels, sizes given at run time);" \
        " fake: fake sizes" \
        in help_text
    assert "; fake: where the fake goes" in help_text
    with pytest.raises(ValueError, match="must be one of 'torch', 'llvm', 'fake', not 'numpy'"):
        cellc.load(lstm, target="numpy")


def test_show_offers_every_target_stage():
    assert cli.STAGES[-len(targets.stages()):] == tuple(targets.stages())
    assert {"torch", "llvm"} <= set(targets.stages())
    for name, stage in targets.stages().items():
        owner = [t for t in targets.registry().values() if stage in t.stages]
        assert len(owner) == 1 and name not in cli.STAGES[:-len(targets.stages())], name


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
    from cellc.backends import torch_eager as eager  # a missing module fails, it does not skip
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
