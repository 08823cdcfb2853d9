"""CELLC_DUMP_LLVM=DIR writes what each JIT-compiled module became: the rendered IR, the
optimized IR and the assembly."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("llvmlite")

import cellc
from cellc.backends import cache


def test_dump_writes_raw_optimized_and_assembly(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLC_CACHE_DIR", "")  # compile afresh, whatever an earlier test cached
    monkeypatch.setattr(cache, "_memory", cache.LRU(32))  # on disk or in this process
    monkeypatch.setenv("CELLC_DUMP_LLVM", str(tmp_path / "dump"))
    native = cellc.load("cells/rnn.cell", target="llvm").native(input_size=3, hidden_size=5)
    native.forward(np.zeros((2, 1, 3), np.float32), native.init_params(np.random.default_rng(0)))
    files = sorted(p.name for p in (tmp_path / "dump").iterdir())
    stems = {f.split(".")[0] for f in files}
    assert len(stems) == 1 and files == [f"{s}{e}" for s in stems
                                         for e in (".opt.ll", ".raw.ll", ".s")]
    (stem,) = stems
    raw = (tmp_path / "dump" / f"{stem}.raw.ll").read_text()
    opt = (tmp_path / "dump" / f"{stem}.opt.ll").read_text()
    asm = (tmp_path / "dump" / f"{stem}.s").read_text()
    assert "define" in raw and "phi" in raw  # the time loop as rendered
    assert opt != raw and "cellc_forward" in opt
    assert "cellc_forward" in asm and "ret" in asm


def test_dump_leaves_the_compiled_code_alone(tmp_path, monkeypatch):
    """emit_assembly rewrites the module it is given: the dump works on a copy, so the kernels
    (and what the disk cache stores) are the same with and without it."""
    monkeypatch.setenv("CELLC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CELLC_DUMP_LLVM", str(tmp_path / "dump"))
    native = cellc.load("cells/rnn.cell", target="llvm").native(input_size=3, hidden_size=6)
    xs = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    params = native.init_params(np.random.default_rng(1))
    with_dump = native.forward(xs, params)[0]
    (entry,) = (tmp_path / "cache").glob("*.o")  # the forward's object code
    dumped_entry = entry.read_bytes()
    entry.unlink()
    monkeypatch.delenv("CELLC_DUMP_LLVM")
    monkeypatch.setattr(cache, "_memory", cache.LRU(32))
    native = cellc.load("cells/rnn.cell", target="llvm").native(input_size=3, hidden_size=6)
    np.testing.assert_array_equal(native.forward(xs, params)[0], with_dump)
    (entry,) = (tmp_path / "cache").glob("*.o")  # the forward's object code
    assert entry.read_bytes() == dumped_entry


def test_an_unwritable_dump_folder_is_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLC_CACHE_DIR", "")
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("CELLC_DUMP_LLVM", str(tmp_path / "file"))
    with pytest.warns(UserWarning, match="CELLC_DUMP_LLVM="):
        native = cellc.load("cells/rnn.cell", target="llvm").native(input_size=3, hidden_size=7)
    assert native.forward(np.zeros((1, 1, 3), np.float32),
                          native.init_params(np.random.default_rng(0)))[0].shape == (1, 1, 7)
