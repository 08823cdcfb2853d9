"""The torch target: one standalone, readable PyTorch module per cell (backends/torch_src.py).

`cellc.load(path, target="torch")` runs the module in memory, `cellc compile --target torch`
writes it to a .py file, `cellc show --emit torch` prints it. Only the generated code imports
torch, when it runs: emitting the text needs no torch.
"""

from __future__ import annotations

import linecache
import os
import sys
import types
from pathlib import Path

from .. import frontend  # frontend.load_file looked up per call, so a patch of it applies
from .._version import __version__
from ._common import UsageError, write_atomic, writing
from ._spec import Stage, Table, Target


def source(path: str | Path) -> str:
    """The generated single-file PyTorch module for a `.cell` file, as text."""
    from ..backends.torch_src import emit_module
    from ..pipeline import compile_program

    cell = frontend.load_file(path)
    return emit_module(cell, compile_program(cell), str(path), __version__)


def load(path: str | Path, key: str) -> types.ModuleType:
    """The generated module, run in memory as `cellc_generated_<key>`."""
    name = f"cellc_generated_{key}"
    if name in sys.modules:  # evicted from api's cache only: the same classes, so pickles match
        return sys.modules[name]
    text = source(path)
    filename = f"<cellc {os.fsencode(path).decode('utf-8', 'replace')}>"
    module = types.ModuleType(name)
    module.__file__ = filename
    # So tracebacks and inspect.getsource show the generated lines.
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    sys.modules[name] = module  # so classes pickle by reference within this process
    try:
        exec(compile(text, filename, "exec"), module.__dict__)  # our own emitted text
    except BaseException:
        del sys.modules[name]  # no half-built module left behind
        raise
    return module


def compile_to_disk(args) -> int:
    """`cellc compile FILE --target torch [-o OUT]`: write the module to OUT (default FILE.py)."""
    if args.sizes:
        raise UsageError("--sizes is for --target llvm; a torch module takes sizes when built")
    text = source(args.file)  # every error is raised before anything is written
    out = Path(args.output) if args.output else Path(Path(args.file).stem + ".py")
    with writing(out):
        if out.is_dir():
            raise UsageError(f"-o {out} is a directory; give a file name")
        if not out.parent.exists():
            raise UsageError(f"-o {out}: directory {out.parent} does not exist")
        write_atomic(out, text)
    print(f"wrote {out}")
    return 0


TARGET = Target(
    name="torch",
    order=0,
    load=load,
    compile=compile_to_disk,
    compile_help="one readable .py file that needs only torch",
    output_help="output file (default: FILE's name with .py, here)",
    stages=(Stage("torch", "the generated PyTorch module", lambda args: source(args.file)),),
    # "const" and "scan" are statements the emitter writes itself (a literal, the step loop).
    tables=(Table("cellc.backends.torch_src", "TORCH", outside=frozenset({"scan", "const"})),),
)
