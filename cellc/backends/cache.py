"""Compile caches for native kernels: in memory per process, and object code on disk.

The disk cache holds the machine code MCJIT produced, keyed by everything that determines it:
the cellc version, the cell's source text, the sizes, the dtype, the kernel kind and the host
CPU (name and features: host-tuned code must not run on another CPU). Entries are written to a
temporary file and renamed into place, so a concurrent process sees a whole entry or none.
Set CELLC_CACHE_DIR to move it, or to an empty string to disable it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path

from .. import __version__
from ..lower import CellIR

_memory: dict[str, object] = {}
_lock = threading.Lock()


def cache_dir() -> Path | None:
    env = os.environ.get("CELLC_CACHE_DIR")
    if env == "":
        return None
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cellc"


def cache_key(cell: CellIR, sizes: dict, dtype: str, kind: str) -> str:
    from .llvm_jit import blas_choice, host_cpu

    cpu, features = host_cpu()
    text = "\0".join([__version__, kind, blas_choice(), os.environ.get("CELLC_LOOP_GEMM", ""), dtype, repr(sorted(sizes.items())), cpu,
                      features, cell.source.text])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class DiskObjectCache:
    """The two callbacks of llvmlite's ExecutionEngine.set_object_cache, for one key.

    An entry is the SHA-256 of the object code followed by the code: a truncated, empty or
    foreign file fails the check and is recompiled and replaced (handing MCJIT a broken object
    would abort the process).
    """

    def __init__(self, key: str):
        d = cache_dir()
        self.path = d / f"{key}.o" if d else None
        self.hit = False

    def load(self, module) -> bytes | None:
        if self.path is None:
            return None
        try:
            data = self.path.read_bytes()
        except OSError:
            return None
        digest, code = data[:32], data[32:]
        if not code or hashlib.sha256(code).digest() != digest:
            return None
        self.hit = True
        return code

    def store(self, module, data: bytes) -> None:
        if self.path is None or self.hit:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(hashlib.sha256(data).digest() + data)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            pass  # a cache that cannot be written is only slower


def _cached(key: str, make):
    with _lock:
        if key not in _memory:
            _memory[key] = make()
        return _memory[key]


def native_program(cell: CellIR, sizes: dict, dtype: str):
    """The forward and backward kernels of a cell (llvm_jit.NativeProgram), cached."""
    from .llvm_jit import NativeProgram

    key = cache_key(cell, sizes, dtype, "program")
    return _cached(key, lambda: NativeProgram(cell, sizes, dtype, object_cache=DiskObjectCache(key)))


def native_step(cell: CellIR, sizes: dict, dtype: str):
    """The single-step kernel of a cell (llvm_jit.Kernel), cached."""
    from .llvm_jit import compile_step

    key = cache_key(cell, sizes, dtype, "step")
    return _cached(key, lambda: compile_step(cell, sizes, dtype, object_cache=DiskObjectCache(key)))
