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

__version__ = "0.1.0"

from .frontend import load_file as load_cell, load_source  # noqa: E402
from .source import CellError, InternalError, Source  # noqa: E402
from .backends import numpy_ref as reference  # noqa: E402
from .api import grad_equations, load, torch_source  # noqa: E402

__all__ = ["load", "load_cell", "load_source", "torch_source", "grad_equations", "CellError",
           "InternalError", "Source", "reference"]


def __getattr__(name):
    # cellc.native (NumPy-level native kernels) imports llvmlite and BLAS: only on first use.
    if name == "native":
        import importlib

        return importlib.import_module(".native", __name__)
    raise AttributeError(f"module 'cellc' has no attribute {name!r}")
