"""The kernel caches (cellc/backends/cache.py): they can never crash a process, and stay bounded.

- Disk entries carry their full key: rnn's entry copied into lstm's slot, or lstm's forward,
  backward and step entries swapped, are rejected, recompiled and replaced (before, MCJIT
  aborted the process with `munmap_chunk(): invalid pointer` or segfaulted, and so did every
  later process).
- A FIFO in an entry's place is not opened for a blocking read (before, the process hung).
- The key hashes the compiler's own source, so a changed compiler never runs old object code.
- The in-process caches (cache._memory, api._LOADED) are LRUs: evicted engines are freed, a
  kernel or layer still in use stays valid, and a sweep over 60 sizes runs in flat memory.

Every case that crashed or hung before runs in a child process with its own CELLC_CACHE_DIR.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

import cellc
from cellc import api
from cellc.backends import cache

ROOT = Path(__file__).resolve().parent.parent
CELLS_DIR = ROOT / "cells"

# The children pin the compiler hash: other processes may edit the working tree between two
# children, and what these tests check is the rest of the key and the entry format.
PIN = 'from cellc.backends import cache\ncache.compiler_hash = lambda: "pinned by test_cache"\n'

RUN_SCRIPT = PIN + r"""
import json, sys
sys.modules["torch"] = None  # faster start; nothing here needs torch
import numpy as np
import cellc

hits = []
_load = cache.DiskObjectCache.load
def load(self, module):
    code = _load(self, module)
    if self.path.suffix == ".o":  # object code, not the parser's tables
        hits.append(code is not None)
    return code
cache.DiskObjectCache.load = load

path, out = sys.argv[1], sys.argv[2]
nc = cellc.load(path, target="llvm").native(dtype="float64", input_size=3, hidden_size=4)
rng = np.random.default_rng(0)
params = nc.init_params(rng=1)
xs = rng.standard_normal((5, 3, 3))
ys, final, tape = nc.forward(xs, params)
grads = nc.backward(tape, rng.standard_normal(ys.shape))
y1, states1 = nc.step(xs[0], None, params)
np.savez(out, ys=ys, y1=y1, **{"grad_" + k: v for k, v in grads.items()})
print(json.dumps({"hits": hits}))
"""


def child(script: str, *args, cache_dir: Path, timeout: float = 120):
    env = dict(os.environ, CELLC_CACHE_DIR=str(cache_dir), OPENBLAS_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=timeout, check=False)


def run(cache_dir: Path, name: str, out: Path) -> dict:
    res = child(RUN_SCRIPT, CELLS_DIR / f"{name}.cell", out, cache_dir=cache_dir)
    assert res.returncode == 0, f"child exited with status {res.returncode}:\n{res.stderr[-3000:]}"
    with np.load(out) as f:
        results = {k: f[k] for k in f.files}
    return {"results": results, **json.loads(res.stdout.strip().splitlines()[-1])}


# The disk entries of one cell at one size: the forward and the backward are modules (and
# entries) of their own, the backward compiled only when used.
KINDS = ("forward", "backward", "step")


def entry(d: Path, name: str, kind: str) -> Path:
    """The file of lstm's or rnn's kernel of a kind (KINDS) at the sizes RUN_SCRIPT uses."""
    cell = cellc.load_cell(CELLS_DIR / f"{name}.cell")
    sizes = cell.bind(input_size=3, hidden_size=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cache, "compiler_hash", lambda: "pinned by test_cache")
        # The children's BLAS: they block torch, so OpenBLAS (this process may have torch).
        mp.setenv("CELLC_BLAS", "openblas")
        return d / f"{cache.cache_key(cell, sizes, 'float64', kind)}.o"


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """A cache directory holding lstm's and rnn's kernels, and lstm's results from it."""
    d = tmp_path_factory.mktemp("cache-filled")
    out = tmp_path_factory.mktemp("out")
    run(d, "rnn", out / "rnn.npz")
    first = run(d, "lstm", out / "lstm.npz")
    assert not any(first["hits"])
    names = {(n, k): entry(d, n, k) for n in ("lstm", "rnn") for k in KINDS}
    objects = sorted(p.name for p in d.iterdir() if p.suffix == ".o")
    assert objects == sorted(p.name for p in names.values())
    # The parser's tables: from the copy shipped beside the grammar when it was built for this
    # Lark and Python, else built once and cached.
    from cellc import syntax

    tables = [p for p in d.iterdir() if p.suffix == ".lark"]
    assert len(tables) == (0 if syntax.shipped_tables().exists() else 1)
    again = run(d, "lstm", out / "again.npz")
    assert all(again["hits"]), "a valid entry was not used"
    return d, first["results"], {key: p.read_bytes() for key, p in names.items()}


def assert_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert np.array_equal(v, b[k]), k


def copy_of(filled, tmp_path) -> Path:
    d = tmp_path / "cache"
    shutil.copytree(filled[0], d)
    return d


def check_recompiled(d: Path, tmp_path, filled):
    """A child on the broken cache exits 0, computes lstm's results, and leaves good entries."""
    _, want, good = filled
    info = run(d, "lstm", tmp_path / "out.npz")
    assert not any(info["hits"]), f"a foreign or broken entry was used: {info['hits']}"
    assert_identical(info["results"], want)
    for kind in KINDS:
        path = entry(d, "lstm", kind)
        assert path.is_file() and path.read_bytes() == good["lstm", kind], f"{kind} not replaced"
    assert not [p for p in d.iterdir() if p.suffix == ".tmp"]


@pytest.mark.slow
def test_foreign_entry_in_another_key_slot_is_recompiled(filled, tmp_path):
    """rnn's program (a valid entry, checksum and all) in lstm's slot aborted the process."""
    d = copy_of(filled, tmp_path)
    for kind in KINDS:
        shutil.copyfile(entry(d, "rnn", kind), entry(d, "lstm", kind))
    check_recompiled(d, tmp_path, filled)


@pytest.mark.slow
def test_swapped_forward_backward_and_step_entries_are_recompiled(filled, tmp_path):
    """Each of lstm's entries in another of its slots: forward -> backward -> step -> forward."""
    d = copy_of(filled, tmp_path)
    paths = [entry(d, "lstm", kind) for kind in KINDS]
    data = [p.read_bytes() for p in paths]
    for path, other in zip(paths, data[-1:] + data[:-1]):
        path.write_bytes(other)
    check_recompiled(d, tmp_path, filled)


@pytest.mark.slow
@pytest.mark.parametrize("what", ["fifo", "directory"])
def test_non_regular_file_in_entry_place_is_not_read(filled, tmp_path, what):
    """A FIFO where an entry belongs made the child block forever in read()."""
    d = copy_of(filled, tmp_path)
    for kind in KINDS:
        path = entry(d, "lstm", kind)
        path.unlink()
        os.mkfifo(path) if what == "fifo" else path.mkdir()
    if what == "fifo":
        check_recompiled(d, tmp_path, filled)
    else:  # a directory cannot be replaced by a file: the child compiles and runs all the same
        info = run(d, "lstm", tmp_path / "out.npz")
        assert not any(info["hits"])
        assert_identical(info["results"], filled[1])


def test_entry_without_its_key_is_rejected(tmp_path, monkeypatch):
    """The entry format, in-process: only this key's header with a matching digest is a hit."""
    monkeypatch.setenv("CELLC_CACHE_DIR", str(tmp_path))
    a, b = cache.DiskObjectCache("a" * 64), cache.DiskObjectCache("b" * 64)
    a.store(None, b"object code")
    assert cache.DiskObjectCache("a" * 64).load(None) == b"object code"
    shutil.copyfile(a.path, b.path)
    assert b.load(None) is None and not b.path.exists(), "a foreign entry was kept"
    data = a.path.read_bytes()
    a.path.write_bytes(data[:-1] + b"X")  # same length, one byte of code changed
    assert cache.DiskObjectCache("a" * 64).load(None) is None and not a.path.exists()


def test_key_depends_on_the_compiler_source(monkeypatch):
    cell = cellc.load_cell(CELLS_DIR / "rnn.cell")
    sizes = cell.bind(input_size=3, hidden_size=4)
    monkeypatch.setattr(cache, "compiler_hash", lambda: "compiler A")
    k1 = cache.cache_key(cell, sizes, "float64", "program")
    assert cache.cache_key(cell, sizes, "float64", "program") == k1
    monkeypatch.setattr(cache, "compiler_hash", lambda: "compiler B")
    assert cache.cache_key(cell, sizes, "float64", "program") != k1


def test_compiler_hash_reads_every_source_file(monkeypatch):
    """The hash covers the .py and .lark files under cellc/, not the version number."""
    cache.compiler_hash.cache_clear()
    try:
        before = cache.compiler_hash()
        read = []
        real = Path.read_bytes
        monkeypatch.setattr(Path, "read_bytes", lambda p: read.append(p.name) or real(p))
        cache.compiler_hash.cache_clear()
        assert cache.compiler_hash() == before
        assert {"cell.lark", "cache.py", "llvm_ir.py", "__init__.py"} <= set(read)
        monkeypatch.setattr(cellc, "__version__", "9.9.9")
        cache.compiler_hash.cache_clear()
        assert cache.compiler_hash() == before
    finally:
        cache.compiler_hash.cache_clear()


TINY = """\
cell Tiny(hidden_size H):
    input  x[H]
    state  h[H]
    param  w[H] ~ uniform(-1, 1)
    h' = w * h + x
    output h'
"""


def test_evicted_engines_are_freed(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_memory", cache.LRU(2))
    (tmp_path / "tiny.cell").write_text(TINY)
    cell = cellc.load_cell(tmp_path / "tiny.cell")
    engines = []
    for h in (1, 2, 3):
        engines.append(
            weakref.ref(cache.native_step(cell, cell.bind(hidden_size=h), "float64").engine))
        gc.collect()
    assert len(cache._memory) == 2
    assert [e() is None for e in engines] == [True, False, False]


EVICT_SCRIPT = PIN + r"""
import gc, sys
sys.modules["torch"] = None
import numpy as np
import cellc
from cellc.backends import numpy_ref

cache._memory = cache.LRU(1)
nc = cellc.load(sys.argv[1], target="llvm").native(dtype="float64", input_size=3, hidden_size=4)
nc.step(np.zeros((2, 3)), None, nc.init_params(rng=0))  # the step kernel evicts the program
program = nc.program
cell = nc.cell
for h in (5, 6):  # evict everything this NativeCell uses
    cache.native_program(cell, cell.bind(input_size=3, hidden_size=h), "float64")
    cache.native_step(cell, cell.bind(input_size=3, hidden_size=h), "float64")
gc.collect()
assert program not in list(cache._memory._items.values()), "still cached: the test tests nothing"
rng = np.random.default_rng(0)
params = nc.init_params(rng=1)
xs = rng.standard_normal((5, 3, 3))
ys, final, tape = nc.forward(xs, params)
want, _ = numpy_ref.forward(cell, nc.sizes, xs, params)
assert np.abs(ys - want).max() < 1e-10, np.abs(ys - want).max()
y1, _ = nc.step(xs[0], None, params)
assert np.abs(y1 - want[0]).max() < 1e-10
print("ok")
"""


@pytest.mark.slow
def test_evicted_kernels_in_use_stay_valid(tmp_path):
    """A NativeCell whose program and step kernel the LRU evicted still runs them correctly
    (their engines live as long as the kernels; freed code would crash or give garbage)."""
    res = child(EVICT_SCRIPT, CELLS_DIR / "lstm.cell", cache_dir=tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]


def test_llvm_layer_does_not_keep_evicted_programs(tmp_path, monkeypatch):
    """A layer class keeps a run function (holding its compiled program) for the most recently
    used sizes only: once both it and the kernel cache let go, the program is freed, and a later
    call fetches it again. A layer in use keeps its program (no recompile per call)."""
    torch = pytest.importorskip("torch")
    from cellc.runtime import torch_layers

    monkeypatch.setenv("CELLC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_memory", cache.LRU(1))
    monkeypatch.setattr(torch_layers, "_RUNS_KEPT", 1)
    path = tmp_path / "tiny.cell"
    path.write_text(TINY)
    mod = cellc.load(path, target="llvm")
    layer = mod.Layer(2, 2, dtype=torch.float64)
    x = torch.randn(4, 3, 2, dtype=torch.float64)
    y = layer(x)[0].detach()  # the graph would hold the program, for the backward
    program = weakref.ref(cache.native_program(mod.cell, mod.cell.bind(hidden_size=2), "float64"))
    other = mod.Layer(3, 3, dtype=torch.float64)
    other(torch.randn(4, 3, 3, dtype=torch.float64))[0].detach()  # evicts the first layer's program
    gc.collect()
    assert program() is None, "the layer class kept an evicted program alive"
    assert torch.equal(layer(x)[0], y)
    # while one size is in use, its program is looked up once, not once per call
    built = []
    monkeypatch.setattr(cache, "native_program", lambda *a, _f=cache.native_program:
                        built.append(a) or _f(*a))
    for _ in range(3):
        layer(x)
    assert built == []


def test_loaded_modules_are_bounded(tmp_path, monkeypatch):
    """load() keeps the last 32 modules; a torch module comes back as the same object even
    after eviction (it stays in sys.modules, so its classes still pickle by reference)."""
    monkeypatch.setattr(api, "_LOADED", cache.LRU(32))
    paths = []
    for k in range(40):
        paths.append(tmp_path / f"tiny{k}.cell")
        paths[-1].write_text(TINY + f"# variant {k}\n")
    first = cellc.load(paths[0], target="llvm")
    assert cellc.load(paths[0], target="llvm") is first
    for p in paths[1:]:
        cellc.load(p, target="llvm")
    assert len(api._LOADED) == 32
    assert cellc.load(paths[0], target="llvm") is not first  # evicted, then loaded afresh
    pytest.importorskip("torch")
    torch_mod = cellc.load(paths[1], target="torch")
    for k in range(32):  # push it out without generating 32 more modules
        api._LOADED[f"filler {k}"] = object()
    assert torch_mod not in api._LOADED._items.values()
    assert cellc.load(paths[1], target="torch") is torch_mod


SWEEP_SCRIPT = PIN + r"""
import ctypes, gc, json, os, sys
sys.modules["torch"] = None
import numpy as np
import cellc
from cellc.backends.llvm_jit import Arrays

def rss_mb():
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)  # measure what is held, not what malloc keeps cached
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

cell = cellc.load_cell(sys.argv[1])
rss = {}
for h in range(1, 101):
    S = cell.bind(input_size=3, hidden_size=h)
    kernel = cache.native_step(cell, S, "float64")
    B = 2
    args = ([np.zeros((B, int(s.type.shape[0].evaluate(S)))) for s in cell.states]
            + [np.zeros((B, int(cell.input.type.shape[0].evaluate(S))))]
            + [np.zeros(p.type.concrete(S)) for p in cell.params])
    kernel.run(1, B, np.array([B], np.int64), args, Arrays())
    del kernel
    if h in (40, 100):
        rss[h] = rss_mb()
print(json.dumps(rss))
"""


@pytest.mark.slow  # ~100 step kernels compiled once (~15 s on 2 cores), then loaded from disk
def test_size_sweep_runs_in_flat_memory(tmp_path):
    """60 distinct kernels loaded and called after the in-memory cache is full: RSS stays flat.
    (Each lstm step kernel kept ~0.17 MB; 60 of them grew RSS by ~10 MB, now ~1 MB.)"""
    path = CELLS_DIR / "lstm.cell"
    cold = child(SWEEP_SCRIPT, path, cache_dir=tmp_path, timeout=300)  # fills the disk cache
    assert cold.returncode == 0, cold.stderr[-3000:]
    # Loading from disk runs no LLVM optimizer (whose own allocations are not all returned).
    warm = child(SWEEP_SCRIPT, path, cache_dir=tmp_path, timeout=300)
    assert warm.returncode == 0, warm.stderr[-3000:]
    rss = json.loads(warm.stdout.strip().splitlines()[-1])
    growth = rss["100"] - rss["40"]
    assert growth < 4.0, f"RSS grew {growth:.1f} MB over 60 distinct kernels"
