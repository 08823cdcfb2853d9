"""The public Python API: compile a `.cell` file to a target and load it.

    mod = cellc.load("cells/lstm.cell", target="torch")   # or target="llvm"
    layer = mod.LSTM(input_size=8, hidden_size=16)        # also mod.Layer, mod.Cell

target="torch" builds, in memory, the module `cellc compile --target torch` writes.
target="llvm" gives the same torch.nn-compatible classes running native kernels (CPU), plus
`mod.native(input_size=..., hidden_size=..., dtype=...)`, a NumPy-level `NativeCell` that
needs no torch.
"""

from __future__ import annotations

import hashlib
import linecache
import os
import secrets
import sys
import types
from pathlib import Path

from . import __version__
from .backends.cache import LRU
from .frontend import load_file
from .source import Source

TARGETS = ("torch", "llvm")
# The last 32 modules load() returned, by content. An LRU, not a dict: a llvm module keeps its
# layer classes and through them compiled code, and a sweep over many generated .cell files must
# run in flat memory. (A torch module also stays in sys.modules, for pickling; see load().)
_LOADED = LRU(32)


def grad_equations(path: str | Path) -> str:
    """The text `cellc grad FILE` prints: the simplified backward equations and residuals."""
    from .pipeline import grad_equations as equations

    return equations(load_file(path))


def torch_source(path: str | Path) -> str:
    """The generated single-file PyTorch module for a `.cell` file, as text."""
    from .backends.torch_src import emit_module
    from .pipeline import compile_program

    cell = load_file(path)
    return emit_module(cell, compile_program(cell), str(path), __version__)


def load(path: str | Path, target: str = "torch") -> types.ModuleType:
    """Compile a `.cell` file and return the generated module (classes `Layer` and `Cell`, also
    under the cell's own names, e.g. `LSTM` and `LSTMCell`). Cached by the file's content."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(map(repr, TARGETS))}, not {target!r}")
    text = Source.read(path).text
    # A path may hold bytes that are not UTF-8 (os.fsdecode gives surrogates): keep them as bytes.
    ident = f"{__version__}\0{target}\0{path}\0{text}".encode("utf-8", "surrogateescape")
    key = hashlib.sha256(ident).hexdigest()[:16]
    module = _LOADED.get(key)
    if module is not None:
        return module
    if target == "llvm":
        module = NativeModule(load_file(path))
        _LOADED[key] = module
        return module
    name = f"cellc_generated_{key}"
    if name in sys.modules:  # evicted from _LOADED only: the same classes, so pickles still match
        module = _LOADED[key] = sys.modules[name]
        return module
    source = torch_source(path)
    filename = f"<cellc {os.fsencode(path).decode('utf-8', 'replace')}>"
    module = types.ModuleType(name)
    module.__file__ = filename
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    sys.modules[name] = module  # so classes pickle by reference within this process
    try:
        exec(compile(source, filename, "exec"), module.__dict__)
    except BaseException:
        del sys.modules[name]  # no half-built module left behind
        raise
    _LOADED[key] = module
    return module


class NativeModule:
    """What `load(path, target="llvm")` returns: the cell's torch.nn-compatible classes (built
    on first use, so that the NumPy-level API works without torch) and `native(...)`."""

    def __init__(self, cell):
        self.cell = cell
        self.__name__ = f"cellc_llvm_{cell.name}"
        self._classes = None

    def native(self, dtype="float32", threads: int | None = None, **size_args):
        """A NativeCell: forward/backward/step over NumPy arrays (see cellc.native)."""
        from .native import NativeCell

        return NativeCell(self.cell, dtype=dtype, threads=threads, **size_args)

    def _layer_classes(self):
        if self._classes is None:
            from .backends.llvm_layers import make_llvm_layers

            self._classes = make_llvm_layers(self.cell)
        return self._classes

    def __getattr__(self, name):
        cell_name = self.__dict__["cell"].name
        if name in ("Layer", cell_name):
            return self._layer_classes()[0]
        if name in ("Cell", cell_name + "Cell"):
            return self._layer_classes()[1]
        raise AttributeError(name)

    def __repr__(self):
        return f"<cellc llvm module for {self.cell.name} ({self.cell.source.name})>"


def write_atomic(path: str | Path, text: str) -> None:
    """Write a file so that readers see the old content or the new, never a part.

    The file gets mode 0o666 less the umask, as `cc -o` and open() give it, not mkstemp's 0o600:
    the temporary file is created by os.open(..., 0o666) and the kernel applies the umask (and
    any default ACL). Nothing reads or changes the process-wide umask, which other threads share.
    """
    path = Path(path)
    # 64 random bits never clash in practice; O_EXCL makes a clash (or a planted symlink) an
    # error instead of a write through it. The name is cut so a long output name still fits.
    tmp = path.parent / f".{path.name[:64]}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
