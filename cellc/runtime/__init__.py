"""Runtime support that generated code and backends share.

`torch_layers` holds the torch.nn-compatible layer machinery (LSTM-style layers and cells for any
cell). It imports only torch, math and the standard library, because backends paste its source
verbatim into the single-file modules they generate; nothing here may import the rest of cellc.

`native_calls` holds the argument checks for native kernels (used by llvm_jit.Kernel.run and
native.NativeCell) and the AOT loader's cell class. It imports only ctypes, os and numpy, because
backends/aot.py pastes it into the loader written beside each compiled library.
"""

import ast
from pathlib import Path


def pasteable_source(module: str) -> str:
    """The source of runtime module `module` (e.g. "torch_layers") without its module docstring,
    as the backends paste it into generated files (which have docstrings of their own)."""
    text = (Path(__file__).parent / f"{module}.py").read_text(encoding="utf-8")
    first = ast.parse(text).body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        text = "\n".join(text.splitlines()[first.end_lineno :])
    return text.strip()
