"""Optimization passes: each a pure Func -> Func that returns its input when nothing applies.

The order they run in is `cellc/pipeline.py`'s business; each module's docstring shows what it does
on a small fragment of IR.
"""

from .cse import cse
from .dce import dce, prune_residuals
from .fuse_matmul import fuse_matmul
from .hoist import hoist
from .simplify import simplify
from .sink import sink

__all__ = ["cse", "dce", "fuse_matmul", "hoist", "prune_residuals", "simplify", "sink"]
