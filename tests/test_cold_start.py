"""Cold start: what a first call compiles, and the parser's disk cache.

- The forward and the backward are LLVM modules of their own (llvm_jit.NativeProgram): an
  inference call (a layer under torch.no_grad() or with nothing requiring grad, a NativeCell
  forward) compiles no backward; a layer forward that autograd records starts compiling it in
  the background; either way the backward, once used, is right.
- The parser's LALR tables are cached on disk (syntax._parser): a missing, corrupt or foreign
  entry, or a cache directory that cannot be written, only means building them again, with the
  same parses and the same error messages.

How long any of this takes is benchmarks/cold_start.py's business, not these tests'.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cellc
from cellc import api, syntax
from cellc.backends import cache, llvm_jit, numpy_ref
from cellc.source import CellSyntaxError, Source

CELLS = "cells"


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty disk cache and empty in-memory caches (kernels, and the loaded modules whose
    layer classes keep their programs): every program is compiled here."""
    monkeypatch.setenv("CELLC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_memory", cache.LRU(32))
    monkeypatch.setattr(api, "_LOADED", cache.LRU(32))
    return tmp_path / "cache"


def programs() -> list:
    return list(cache._memory._items.values())


# -- what a call compiles ---------------------------------------------------------------------

def test_native_cell_forward_compiles_no_backward_until_backward(fresh):
    nc = cellc.native.NativeCell(f"{CELLS}/lstm.cell", dtype="float64", input_size=3,
                                 hidden_size=4)
    params = nc.init_params(rng=0)
    rng = np.random.default_rng(1)
    xs, d_ys = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 4))
    ys, _, tape = nc.forward(xs, params)
    assert nc.program.backward_state == "not compiled"
    assert len(list(fresh.glob("*.o"))) == 1  # the forward's entry only
    grads = nc.backward(tape, d_ys)
    assert nc.program.backward_state == "compiled"
    want_ys, _, want = numpy_ref.backward(nc.cell, nc.sizes, xs, params, d_ys=d_ys)
    assert np.abs(ys - want_ys).max() < 1e-10
    for k, v in want.items():
        assert np.abs(grads[k] - v).max() < 1e-10, k


def test_backward_entry_is_its_own(fresh):
    """A forward cached on disk with no backward beside it: a later process (here: an emptied
    memory cache) loads the forward and compiles only the backward, and both are right."""
    nc = cellc.native.NativeCell(f"{CELLS}/gru.cell", dtype="float64", input_size=3,
                                 hidden_size=4)
    params = nc.init_params(rng=0)
    xs = np.random.default_rng(1).standard_normal((4, 3, 3))
    ys, _, _ = nc.forward(xs, params)
    assert len(list(fresh.glob("*.o"))) == 1  # the forward only
    cache._memory = cache.LRU(32)
    again = cellc.native.NativeCell(f"{CELLS}/gru.cell", dtype="float64", input_size=3,
                                    hidden_size=4)
    assert again.program is not nc.program
    ys2, _, tape = again.forward(xs, params)
    assert np.array_equal(ys, ys2)
    d_ys = np.ones_like(ys)
    grads = again.backward(tape, d_ys)
    assert len(list(fresh.glob("*.o"))) == 2
    _, _, want = numpy_ref.backward(again.cell, again.sizes, xs, params, d_ys=d_ys)
    for k, v in want.items():
        assert np.abs(grads[k] - v).max() < 1e-10, k


def torch_pair(torch, hidden=4):
    """An llvm LSTM layer and torch.nn.LSTM holding the same float64 weights."""
    ref = torch.nn.LSTM(3, hidden, dtype=torch.float64)
    ours = cellc.load(f"{CELLS}/lstm.cell", target="llvm").Layer(3, hidden, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def test_inference_layer_call_compiles_no_backward(fresh):
    torch = pytest.importorskip("torch")
    ours, ref = torch_pair(torch)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        ys = ours(x)[0]
    (program,) = programs()
    assert program.backward_state == "not compiled"
    for p in ours.parameters():  # grad mode on, but nothing to differentiate
        p.requires_grad_(False)
    assert torch.equal(ours(x)[0], ys)
    assert program.backward_state == "not compiled"
    torch.testing.assert_close(ys, ref(x)[0].detach(), atol=1e-10, rtol=1e-10)


def test_training_layer_call_prefetches_a_correct_backward(fresh):
    torch = pytest.importorskip("torch")
    ours, ref = torch_pair(torch)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    ys = ours(x)[0]
    (program,) = programs()
    assert program.backward_state in ("compiling", "compiled")  # started by the forward
    ys.sum().backward()
    assert program.backward_state == "compiled"
    x_ours, x.grad = x.grad, None
    ref(x)[0].sum().backward()
    torch.testing.assert_close(x_ours, x.grad, atol=1e-10, rtol=1e-10)
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-10, rtol=1e-10, msg=name)


def test_failed_background_compile_reaches_the_backward_and_is_retried(fresh, monkeypatch):
    nc = cellc.native.NativeCell(f"{CELLS}/rnn.cell", dtype="float64", input_size=2,
                                 hidden_size=3)
    real = llvm_jit._jit
    monkeypatch.setattr(llvm_jit, "_jit", lambda *a: (_ for _ in ()).throw(MemoryError("no")))
    nc.program.prefetch_backward()
    with pytest.raises(MemoryError, match="no"):
        _ = nc.program.backward_kernel
    monkeypatch.setattr(llvm_jit, "_jit", real)
    params = nc.init_params(rng=0)
    xs = np.random.default_rng(1).standard_normal((3, 2, 2))
    ys, _, tape = nc.forward(xs, params)
    grads = nc.backward(tape, np.ones_like(ys))  # compiled again, now successfully
    _, _, want = numpy_ref.backward(nc.cell, nc.sizes, xs, params, d_ys=np.ones_like(ys))
    assert np.abs(grads["xs"] - want["xs"]).max() < 1e-10


# -- the parser's cache -----------------------------------------------------------------------

BAD = "cell Bad(hidden_size H):\n    input x[H]\n    h' = (x +\n"


def parses() -> tuple:
    """The zoo's ASTs and a syntax error's message, with the parser _parser() gives now."""
    syntax._parser.cache_clear()
    files = sorted(Path(CELLS).glob("*.cell"))
    trees = tuple(syntax.parse(Source(str(p), p.read_text())) for p in files)
    with pytest.raises(CellSyntaxError) as e:
        syntax.parse(Source("bad.cell", BAD))
    return trees, str(e.value)


@pytest.fixture
def parser_cache(tmp_path, monkeypatch):
    """An empty cache directory, and no shipped tables (as for a Lark or Python they were not
    built for)."""
    d = tmp_path / "cache"
    monkeypatch.setenv("CELLC_CACHE_DIR", str(d))
    monkeypatch.setattr(syntax, "shipped_tables", lambda: tmp_path / "none.tables")
    yield d
    syntax._parser.cache_clear()  # the next user builds or loads its own


class NoBuild(syntax.Lark):
    """A Lark that can be loaded from a cache entry but not built from the grammar."""

    def __init__(self, *args, **kwargs):
        raise AssertionError("the parser was built, not loaded from the cache")


def test_parser_is_loaded_from_the_cache(parser_cache, monkeypatch):
    want = parses()
    assert len(list(parser_cache.glob("*.lark"))) == 1
    monkeypatch.setattr(syntax, "Lark", NoBuild)
    assert parses() == want


@pytest.mark.parametrize("damage", ["truncated", "not a parser"])
def test_corrupt_parser_entry_is_rebuilt(parser_cache, monkeypatch, damage):
    want = parses()
    (entry,) = parser_cache.glob("*.lark")
    if damage == "truncated":
        entry.write_bytes(entry.read_bytes()[:-100])
    else:  # a well-formed entry (checksum and all) whose payload is no pickled parser
        cache.DiskObjectCache(entry.stem, suffix=".lark").store(None, b"\x80\x04not a pickle")
    assert parses() == want
    monkeypatch.setattr(syntax, "Lark", NoBuild)  # the rebuilt parser replaced the entry
    assert parses() == want


def test_unwritable_parser_cache_still_parses(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("a file where the cache directory's parent should be")
    monkeypatch.setenv("CELLC_CACHE_DIR", str(tmp_path / "file" / "cache"))
    try:
        got = parses()
        monkeypatch.setenv("CELLC_CACHE_DIR", "")  # no cache at all
        assert parses() == got
    finally:
        syntax._parser.cache_clear()
    assert got[0] and "bad.cell" in got[1]


def test_shipped_tables_are_current():
    path = syntax.shipped_tables()
    if not path.exists():
        shipped = sorted(path.parent.glob("*.tables"))
        assert shipped, "no parser tables shipped beside cell.lark"
        pytest.skip(f"tables are shipped for other Lark/Python versions: {shipped[0].name}")
    entry = cache.DiskObjectCache(syntax._tables_key(), path=path)
    assert entry.load(None) is not None, (
        f"{path.name} was built from another grammar: rewrite it with"
        ' python -c "import cellc.syntax as s; s.write_shipped_tables()"')


def test_shipped_tables_are_used_with_an_empty_cache(tmp_path, monkeypatch):
    shipped = tmp_path / "shipped.tables"
    monkeypatch.setattr(syntax, "shipped_tables", lambda: shipped)
    monkeypatch.setenv("CELLC_CACHE_DIR", "")
    want = parses()  # built: nothing shipped yet
    syntax.write_shipped_tables()
    monkeypatch.setattr(syntax, "Lark", NoBuild)
    try:
        assert parses() == want
    finally:
        syntax._parser.cache_clear()


def test_damaged_shipped_tables_are_rebuilt(tmp_path, monkeypatch):
    shipped = tmp_path / "shipped.tables"
    monkeypatch.setattr(syntax, "shipped_tables", lambda: shipped)
    monkeypatch.setenv("CELLC_CACHE_DIR", "")
    syntax.write_shipped_tables()
    want = parses()
    shipped.write_bytes(shipped.read_bytes()[:-50])
    try:
        assert parses() == want  # built again, same parser
    finally:
        syntax._parser.cache_clear()
