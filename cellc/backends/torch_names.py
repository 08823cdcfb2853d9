"""What the torch.nn-compatible layer classes (both torch-based targets) require of a cell,
checked without importing torch (the CLI works without it):

- parameter names must not hide torch.nn.Module's attributes, the layer classes' own attributes
  or constructor arguments (a parameter named `forward` or `training` would break them);
  tests/test_coverage.py checks MODULE_ATTRIBUTES against the installed torch;
- the input's size must be one size symbol, so that stacked layers can rebind it.
"""

from __future__ import annotations

from ..lower import CellIR
from ..shapes import Dim
from ..source import CellNameError, CellShapeError

# dir(torch.nn.Module) without dunders, torch 2.13.
MODULE_ATTRIBUTES = frozenset({
    'T_destination', '_apply', '_call_impl', '_compiled_call_impl', '_get_backward_hooks',
    '_get_backward_pre_hooks', '_get_name', '_load_from_state_dict',
    '_maybe_warn_non_full_backward_hook', '_named_members',
    '_register_load_state_dict_pre_hook', '_register_state_dict_hook',
    '_replicate_for_data_parallel', '_save_to_state_dict', '_slow_forward', '_version',
    '_wrapped_call_impl', 'add_module', 'apply', 'bfloat16', 'buffers', 'call_super_init',
    'children', 'compile', 'cpu', 'cuda', 'double', 'dump_patches', 'eval', 'extra_repr',
    'float', 'forward', 'get_buffer', 'get_extra_state', 'get_parameter', 'get_submodule',
    'half', 'ipu', 'load_state_dict', 'modules', 'mtia', 'named_buffers', 'named_children',
    'named_modules', 'named_parameters', 'parameters', 'register_backward_hook',
    'register_buffer', 'register_forward_hook', 'register_forward_pre_hook',
    'register_full_backward_hook', 'register_full_backward_pre_hook',
    'register_load_state_dict_post_hook', 'register_load_state_dict_pre_hook',
    'register_module', 'register_parameter', 'register_state_dict_post_hook',
    'register_state_dict_pre_hook', 'requires_grad_', 'set_extra_state', 'set_submodule',
    'share_memory', 'state_dict', 'to', 'to_empty', 'train', 'type', 'xpu', 'zero_grad'
})
# Instance attributes every torch.nn.Module sets in __init__ (torch 2.13), then the layer API's.
LAYER_ATTRIBUTES = frozenset({
    "training", "_backward_hooks", "_backward_pre_hooks", "_buffers", "_forward_hooks",
    "_forward_hooks_always_called", "_forward_hooks_with_kwargs", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_is_full_backward_hook", "_load_state_dict_post_hooks",
    "_load_state_dict_pre_hooks", "_modules", "_non_persistent_buffers_set", "_parameters",
    "_state_dict_hooks", "_state_dict_pre_hooks",
    "num_layers", "batch_first", "dropout", "bidirectional", "device", "dtype", "all_weights",
    "reset_parameters", "extra_repr", "flatten_parameters", "input_size", "hidden_size",
    "proj_size", "mode", "nonlinearity",
})


def check_layer_cell(cell: CellIR) -> str:
    """Raise a located CellError if the cell cannot make a layer; return the size symbol of its
    input (e.g. "I"), which a stacked layer binds to the previous layer's output size."""
    check_parameter_names(cell)
    (dim,) = cell.input.type.shape
    symbol = next((s.symbol for s in cell.sizes if dim == Dim.of(s.symbol)), None)
    if symbol is None:
        raise CellShapeError(
            f"the input's size must be one size symbol, as in {cell.input.name}[I], for layers to"
            f" stack; it is {dim}", cell.input_span, cell.source.name)
    return symbol


def check_parameter_names(cell: CellIR) -> None:
    """Raise a located CellNameError for a parameter whose name the layer classes need."""
    sizes = {s.arg for s in cell.sizes}
    for p in cell.params:
        if p.name.startswith("_"):
            raise CellNameError(
                f"parameter '{p.name}': names starting with '_' are kept for the layer classes'"
                " own state; rename the parameter", p.span)
        if p.name in MODULE_ATTRIBUTES or p.name in LAYER_ATTRIBUTES or p.name in sizes:
            raise CellNameError(
                f"parameter '{p.name}' would hide the layer's attribute of that name"
                " (torch.nn.Module and the layer API use it); rename the parameter", p.span)
