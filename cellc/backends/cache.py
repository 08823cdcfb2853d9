"""Compile caches for native kernels: a small LRU in memory per process, object code on disk.

The disk cache holds the machine code MCJIT produced, keyed by everything that determines it: a
hash of the compiler's own source files (so a changed compiler never runs code an older one
made; the version number alone did not change for dozens of commits), the LLVM version, the
cell's source text, the sizes, the dtype, the kernel kind, the BLAS choice and the host CPU
(name and features: host-tuned code must not run on another CPU).

Handing MCJIT a wrong object aborts or corrupts the process, so an entry is trusted only when it
is a regular file of sane size that starts with the magic line, its own full key (a file copied
into another key's slot is foreign) and the SHA-256 of the code that follows. Anything else is
removed and recompiled. Entries are written to a temporary file and renamed into place, so a
concurrent process sees a whole entry or none.
Set CELLC_CACHE_DIR to move it, or to an empty string to disable it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from ..ir import print_func
from ..lower import CellIR

_MAGIC = b"cellc object cache 1\n"
_MAX_ENTRY = 256 << 20  # bytes; real entries are KBs to a few MB, anything larger is not ours


class LRU:
    """A thread-safe map that keeps only the `size` most recently used entries.

    The in-process caches are LRUs so that a sweep over many sizes or files runs in flat
    memory: each native program holds an MCJIT engine (~1-2 MB) that is freed once nothing
    references it. Eviction only drops the cache's reference: a kernel or program still in
    use keeps its engine, and with it its code, alive."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key]

    def __setitem__(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


# 32 programs or step kernels: more than one model's layer sizes, dtypes and kinds; a sweep past
# that reloads from the disk cache in milliseconds.
_memory = LRU(32)
_compile_lock = threading.Lock()  # one compile at a time: two threads never build the same key


def cache_dir() -> Path | None:
    env = os.environ.get("CELLC_CACHE_DIR")
    if env == "":
        return None
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cellc"


@functools.cache
def compiler_hash() -> str:
    """SHA-256 over the compiler's own source (every cellc/**/*.py and *.lark, by relative path
    and bytes), computed once per process: any change to the compiler changes every key."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".lark") and path.is_file():
            name, data = path.relative_to(root).as_posix().encode(), path.read_bytes()
            h.update(b"%d:%s%d:" % (len(name), name, len(data)) + data)  # lengths: unambiguous
    return h.hexdigest()


def cache_key(cell: CellIR, sizes: dict, dtype: str, kind: str) -> str:
    """The full key (64 hex digits) of a cell's kernel: also the entry's file name."""
    import llvmlite
    import llvmlite.binding as llvm

    from .llvm_jit import blas_choice, host_cpu

    cpu, features = host_cpu()
    llvm_version = f"llvmlite {llvmlite.__version__}, LLVM {llvm.llvm_version_info}"
    shape = repr(None if sizes is None else sorted(sizes.items()))  # None: generic kernels
    # The step's IR as well as the file's text: a cell's forms (masked, a choice fixed, an
    # optional size 0 or not) share most of the text, and their marks could be written in it.
    parts = [compiler_hash(), llvm_version, kind, blas_choice(),
             os.environ.get("CELLC_LOOP_GEMM", ""), dtype, shape, cpu, features,
             cell.source.text, print_func(cell.step), repr(sorted(cell.zero))]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class DiskObjectCache:
    """The two callbacks of llvmlite's ExecutionEngine.set_object_cache, for one key.

    An entry is `_MAGIC`, the full key and a newline, the SHA-256 of the object code, then the
    code. The file is read at most once (the same answer for `_jit`'s look and MCJIT's), and a
    file that is not a valid entry for this key is removed: it is recompiled and replaced.
    The same checked entries hold other compile products (`suffix`): the parser's tables."""

    def __init__(self, key: str, suffix: str = ".o", path: Path | None = None):
        d = cache_dir()
        self.key = key
        self.path = path or (d / f"{key}{suffix}" if d else None)  # path: an entry elsewhere
        self.hit = False
        self._read = False
        self._code: bytes | None = None

    def _header(self, code: bytes) -> bytes:
        return _MAGIC + self.key.encode() + b"\n" + hashlib.sha256(code).digest()

    def _read_entry(self) -> bytes | None:
        """The bytes of the entry if it is a regular file of sane size (a FIFO or a device in
        its place would block or never end), else None."""
        try:
            # O_NONBLOCK: opening a FIFO does not wait for a writer (then fstat rejects it).
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_ENTRY:
                self._discard()
                return None
            return f.read(st.st_size)

    def _discard(self) -> None:
        """Remove a foreign or broken entry, so that no later process trusts or trips on it."""
        try:
            os.unlink(self.path)
        except OSError:
            pass  # gone already, or a directory: the store that follows fails, we still run

    def load(self, module) -> bytes | None:
        if self.path is None:
            return None
        if not self._read:
            self._read = True
            try:
                data = self._read_entry()
            except OSError:
                data = None
            if data is not None:
                code = self._check(data)
                if code is None:
                    self._discard()
                else:
                    self._code, self.hit = code, True
        return self._code

    def _check(self, data: bytes) -> bytes | None:
        """The code of a valid entry for this key, else None."""
        n = len(self._header(b""))
        code = data[n:]
        if not code or data[:n] != self._header(code):
            return None
        return code

    def store(self, module, data: bytes) -> None:
        if self.path is None or self.hit:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(self._header(data) + data)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            pass  # a cache that cannot be written is only slower


def _cached(key: str, make):
    value = _memory.get(key)
    if value is None:
        with _compile_lock:
            value = _memory.get(key)  # another thread may have compiled it meanwhile
            if value is None:
                value = make()
                _memory[key] = value
    return value


# How the JIT gets kernels for sizes it has no specialized code for yet (CELLC_SPECIALIZE):
SPECIALIZE = {
    "background": "the cell's size-generic kernels at once (compiled once per cell and dtype,"
                  " unoptimized); specialized ones compile in a background thread from the"
                  " second call at a size on, and serve the calls after that",
    "now": "compile the specialized kernels before the first call",
    "never": "the size-generic kernels only",
}


def specialize_policy() -> str:
    value = os.environ.get("CELLC_SPECIALIZE", "background")
    if value not in SPECIALIZE:
        raise ValueError(f"CELLC_SPECIALIZE={value!r}: expected one of {', '.join(SPECIALIZE)}")
    return value


def native_program(cell: CellIR, sizes: dict, dtype: str):
    """The forward and backward kernels of a cell at these sizes (symbol -> int): a specialized
    llvm_jit.NativeProgram when one is in memory or on disk (or CELLC_SPECIALIZE=now), else the
    cell's generic program bound to the sizes (`provisional` while a specialized one is being
    compiled in the background: callers ask again on their next call)."""
    key = cache_key(cell, sizes, dtype, "program")
    program = _memory.get(key)
    if program is not None:
        return program
    policy = specialize_policy()
    if policy == "now" or _on_disk(cell, sizes, dtype):
        return _cached(key, _maker(cell, sizes, dtype))
    # While specialized code is coming, the generic stand-in is compiled unoptimized: a tenth
    # of the compile time, for kernels that run up to ~3x slower (their large products are
    # BLAS calls either way) and only for the first calls.
    quick = policy == "background"
    kind = "program-quick" if quick else "program"
    generic = _cached(cache_key(cell, None, dtype, kind), _maker(cell, None, dtype, quick))
    bound = generic.bind(sizes)
    if policy == "background" and key not in _failed:
        bound.provisional = True
        # From the second call at these sizes on: a one-off call never pays for it, and the
        # first call's own compiles (its backward, prefetched) have the compiler to themselves.
        if key in _asked:
            _specialize_later(key, _maker(cell, sizes, dtype), generic)
        _asked[key] = True
    return bound


def _maker(cell: CellIR, sizes: dict | None, dtype: str, quick: bool = False):
    """A call that compiles the program (its forward; see NativeProgram for the backward)."""
    from .llvm_jit import NativeProgram

    def entry(kind: str) -> DiskObjectCache:
        return DiskObjectCache(cache_key(cell, sizes, dtype, kind + ("-quick" if quick else "")))

    return lambda: NativeProgram(cell, sizes, dtype, object_cache=entry, quick=quick)


def _on_disk(cell: CellIR, sizes: dict, dtype: str) -> bool:
    """Whether the specialized forward is in the disk cache (loading it takes milliseconds)."""
    path = DiskObjectCache(cache_key(cell, sizes, dtype, "forward")).path
    return path is not None and path.is_file()


_pending: dict[str, threading.Thread] = {}  # key -> its background specialization
_pending_lock = threading.Lock()
_failed: set[str] = set()  # keys whose specialization raised
_asked = LRU(256)  # keys that native_program has handed out generic kernels for


def _specialize_later(key: str, make, generic) -> None:
    """Compile a specialized program in a background thread (once per key) and publish it in
    the memory cache when it is whole: its backward too when the generic program's backward
    has been needed (training), so a training step never waits for it, and its inference
    kernel when the generic one's has."""

    def job():
        try:
            generic.wait_for_backward()  # one compile at a time: llvmlite serializes them anyway
            with _compile_lock:
                program = make()
            if generic.backward_state != "not compiled":
                program.backward_kernel  # noqa: B018  (compiles it here, in the background)
            if generic.inference_used:
                program.inference_kernel  # noqa: B018
            _memory[key] = program
        except Exception as e:  # the generic kernels keep serving; no retry
            import warnings

            _failed.add(key)
            warnings.warn(f"cellc: specialized kernels did not compile ({e}); the size-generic"
                          " ones keep serving", RuntimeWarning, stacklevel=1)
        finally:
            with _pending_lock:
                _pending.pop(key, None)

    with _pending_lock:
        if key in _pending or key in _failed:
            return
        # Not a daemon: interpreter exit waits rather than tearing LLVM down mid-compile.
        thread = _pending[key] = threading.Thread(target=job, name="cellc-specialize")
    thread.start()


def wait_for_specializations() -> None:
    """Wait until every background specialization has finished (tests, benchmarks)."""
    while True:
        with _pending_lock:
            threads = list(_pending.values())
        if not threads:
            return
        for t in threads:
            t.join()


def native_step(cell: CellIR, sizes: dict, dtype: str):
    """The single-step kernel of a cell (llvm_jit.Kernel), cached."""
    from .llvm_jit import compile_step

    key = cache_key(cell, sizes, dtype, "step")
    return _cached(key, lambda: compile_step(cell, sizes, dtype, object_cache=DiskObjectCache(key)))
