"""cellc: a compiler for recurrent neural-network cells.

Write a cell's equations in a `.cell` file; cellc parses and checks them into a typed IR, runs
them with a NumPy reference interpreter, and (see the README) differentiates them symbolically.

    import cellc
    cell = cellc.load_cell("cells/lstm.cell")          # CellIR, or a located CellError
    sizes = cell.bind(input_size=8, hidden_size=16)
    params = cellc.reference.init_params(cell, sizes, rng=0)
    ys, final_states = cellc.reference.forward(cell, sizes, xs, params)   # xs: (T, B, 8)

    mod = cellc.load("cells/lstm.cell", target="torch")   # drop-in for torch.nn.LSTM
    layer = mod.LSTM(8, 16, num_layers=2, batch_first=True)
"""

from . import interop  # Keras and ONNX weights into zoo cells (NumPy only; torch on use)
from ._version import __version__ as __version__  # kept in a leaf module: no import cycle
from .api import grad_equations, load, torch_source
from .backends import numpy_ref as reference
from .frontend import load_file as load_cell
from .frontend import load_source
from .source import CellError, InternalError, Source

__all__ = [
    "CellError",
    "InternalError",
    "Source",
    "grad_equations",
    "interop",
    "load",
    "load_cell",
    "load_source",
    "reference",
    "torch_source",
]


def __getattr__(name):
    # cellc.native (NumPy-level native kernels) imports llvmlite and BLAS: only on first use.
    if name == "native":
        import importlib

        return importlib.import_module(".native", __name__)
    raise AttributeError(f"module 'cellc' has no attribute {name!r}")
