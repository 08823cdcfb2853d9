"""The public Python API: compile a `.cell` file to a target and load it.

    mod = cellc.load("cells/lstm.cell", target="torch")   # or target="llvm"
    layer = mod.LSTM(input_size=8, hidden_size=16)        # also mod.Layer, mod.Cell

target="torch" builds, in memory, the module `cellc compile --target torch` writes.
target="llvm" gives the same torch.nn-compatible classes running native kernels (CPU), plus
`mod.native(input_size=..., hidden_size=..., dtype=...)`, a NumPy-level `NativeCell` that
needs no torch. The targets themselves are in cellc/targets/ (one module each); this module
only caches what they load.
"""

from __future__ import annotations

import hashlib
import os  # noqa: F401  (unused here; tests patch os.replace as api.os.replace for write_atomic)
import types
from pathlib import Path

from . import targets
from ._version import __version__
from .backends.cache import LRU
from .frontend import load_file
from .source import Source
from .targets._common import write_atomic
from .targets.torch_target import source as torch_source

__all__ = ["TARGETS", "grad_equations", "load", "torch_source", "write_atomic"]

TARGETS = targets.names()
# The last 32 modules load() returned, by content. An LRU, not a dict: a llvm module keeps its
# layer classes and through them compiled code, and a sweep over many generated .cell files must
# run in flat memory. (A torch module also stays in sys.modules, for pickling; see
# targets/torch_target.py.)
_LOADED = LRU(32)


def grad_equations(path: str | Path) -> str:
    """The text `cellc grad FILE` prints: the simplified backward equations and residuals."""
    from .pipeline import grad_equations as equations

    return equations(load_file(path))


def load(path: str | Path, target: str = targets.DEFAULT) -> types.ModuleType:
    """Compile a `.cell` file and return the generated module (classes `Layer` and `Cell`, also
    under the cell's own names, e.g. `LSTM` and `LSTMCell`). Cached by the file's content."""
    found = targets.get(target)  # ValueError naming the targets for any other name
    text = Source.read(path).text
    # A path may hold bytes that are not UTF-8 (os.fsdecode gives surrogates): keep them as bytes.
    ident = f"{__version__}\0{target}\0{path}\0{text}".encode("utf-8", "surrogateescape")
    key = hashlib.sha256(ident).hexdigest()[:16]
    module = _LOADED.get(key)
    if module is None:
        module = _LOADED[key] = found.load(path, key)
    return module
