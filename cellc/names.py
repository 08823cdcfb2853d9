"""Which names a `.cell` file may give its cell and its sizes: the one list of reserved names.

A cell's name is written unmangled into generated code: it names Python classes (`NAME`,
`NAMECell`, `NAMESequence`) and functions (`name_forward`) in the torch module and the class of
the AOT loader. (The loader's file name and C symbols come from `aot.file_prefix`, which makes
a safe stem of any name, so `cell Def` gives def_<hash>.py rather than def.py.) Size arguments
(`input_size`) become constructor parameters and attributes of the torch layers; size symbols
(`I`) are keys of size dicts. `lower.py` checks these names with `why_unusable` and reports a bad
one at its span, so `cellc check` rejects what would otherwise break only at import time.

Inputs, states, parameters and values need none of this: the torch emitter renames them
(`torch_src.Names`) and the loader and C header carry them only inside strings and comments. All
names are length-checked by the parser's pre-scan (`syntax.py`), against MAX_NAME_LENGTH.
"""

from __future__ import annotations

import builtins
import keyword

MAX_NAME_LENGTH = 64  # file names (liblstm.so) and C symbols must stay well below OS limits

# C11 keywords and the C23 and C++ ones a header (with its extern "C" block) may meet.
C_KEYWORDS = frozenset({
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else",
    "enum", "extern", "float", "for", "goto", "if", "inline", "int", "long", "register",
    "restrict", "return", "short", "signed", "sizeof", "static", "struct", "switch", "typedef",
    "union", "unsigned", "void", "volatile", "while", "_Alignas", "_Alignof", "_Atomic", "_Bool",
    "_Complex", "_Generic", "_Imaginary", "_Noreturn", "_Static_assert", "_Thread_local",
    "alignas", "alignof", "bool", "constexpr", "false", "nullptr", "static_assert",
    "thread_local", "true", "typeof",
    "asm", "class", "delete", "namespace", "new", "operator", "private", "protected", "public",
    "template", "this", "throw", "virtual",
})

# Names the generated files bind at module level, and the modules they import: a cell or size
# with one of these names would hide it. From backends/aot.py `_loader` (the AOT loader) and
# backends/torch_src.py `emit_module` with cellc/runtime/torch_layers.py (the torch module);
# names starting with '_' are rejected wholesale. tests/test_hostile_frontend.py parses both
# generated files and fails when one binds a name missing here.
GENERATED_NAMES = frozenset({
    # the AOT loader
    "ctypes", "os", "np", "numpy", "SIZES", "STATES", "PARAMS", "KERNELS",
    # the torch module
    "torch", "math", "functools", "inspect", "numbers", "sys", "warnings", "PackedSequence",
    "SYMBOLIC_BACKWARD", "N_RESULTS", "SPEC", "Layer", "Cell", "make_layer", "compiler_disabled",
    "run_direction", "stack_steps", "differentiable_backward", "run_direction_eager",
    "OP_NAME", "result_shapes", "op_results", "define_ops", "sequence_op", "run_traced",
    "masked_result_shapes", "masked_sequence_op", "kernels", "input_row",
    # the layers' constructors: parameters besides the sizes, and the instance itself
    "self", "num_layers", "bias", "batch_first", "dropout", "bidirectional", "device", "dtype",
})


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
    "proj_size", "mode", "nonlinearity", "reverse",
})


# Size arguments the layer classes set as attributes on purpose (torch.nn.LSTM has them too).
LAYER_SIZE_ARGUMENTS = frozenset({"input_size", "hidden_size", "proj_size"})
# And the hyper-parameters (torch.nn.RNN's nonlinearity, a choice of function).
LAYER_HYPER_ARGUMENTS = frozenset({"nonlinearity"})


def why_unusable(name: str, what: str) -> str | None:
    """Why `name` cannot be a cell or size name, or None if it can. `what` is "cell" for a cell
    name (a Python class and module too), anything else for a size argument or symbol."""
    if len(name) > MAX_NAME_LENGTH:
        return f"it is {len(name)} characters long; names are at most {MAX_NAME_LENGTH}"
    if name.endswith("'"):
        return "a prime (') marks a state's next value, as in h'"
    if keyword.iskeyword(name):
        return "it is a Python keyword"
    if name in C_KEYWORDS:
        return "it is a C keyword"
    if name.startswith("_"):
        return "names starting with '_' are kept for the generated code"
    if name in GENERATED_NAMES:
        return "the generated code uses that name"
    on_purpose = LAYER_SIZE_ARGUMENTS
    if what == "hyper-parameter":
        on_purpose = on_purpose | LAYER_HYPER_ARGUMENTS
    if what in ("size argument", "hyper-parameter") and name not in on_purpose and (
            name in MODULE_ATTRIBUTES or name in LAYER_ATTRIBUTES):
        return "the layer classes keep an attribute of that name (torch.nn.Module's or their own)"
    if what != "cell":
        return None
    if hasattr(builtins, name):
        return "it is a Python built-in"
    for derived in (name + "Cell", name + "Sequence"):
        if derived in GENERATED_NAMES:
            return f"the generated class {derived} would hide the name the generated code uses"
    return None
