"""torch.nn-compatible recurrent layers and cells for any cell, written once for every backend.

HARD RULE: this module imports only torch, math and the Python standard library, and has no
`from __future__` line, because backends paste its source verbatim into the single-file PyTorch
modules they generate. It knows nothing of cellc: a backend describes a cell with a *spec* (plain
data and small lambdas, so it can be written out as Python source) and supplies the time loop.

    LSTM, LSTMCell = make_layer(spec, run_direction_for)

gives two torch.nn.Module classes that mirror torch.nn.LSTM and torch.nn.LSTMCell: the same
constructor, parameter names (`weight_ih_l0`, `bias_hh_l1_reverse`, so `load_state_dict` works
both ways with torch's modules), input forms (time-major, batch_first, unbatched, PackedSequence),
hidden-state forms, shapes, inter-layer dropout and argument errors.

The spec
--------
A dict. Every function in it takes `s`, the sizes of one layer as a dict from size symbol to int
(`{"I": 8, "H": 16}`), and returns whole numbers (int, or a Fraction or float with a whole value):

    {
        "name": "LSTM",                                       # classes LSTM and LSTMCell
        "sizes": [("input_size", "I"), ("hidden_size", "H")], # header order: (argument, symbol)
        "input_size": "input_size",                           # the argument sizing the input x
        "states": ["h", "c"],                                 # state names, in order
        "state_sizes": lambda s: (s["H"], s["H"]),            # feature size of each state
        "state_init": lambda s: (0.0, 0.0),                   # optional: each state's start
        "output_size": lambda s: s["H"],                      # feature size of the output
        "params": [                                           # in the order run_direction takes
            {"name": "weight_ih", "kind": "param", "shape": lambda s: (4 * s["H"], s["I"]),
             "init": "uniform",
             "init_args": lambda s: (-1 / math.sqrt(s["H"]), 1 / math.sqrt(s["H"]))},
            {"name": "bias_ih", "kind": "bias", "shape": lambda s: (4 * s["H"],),
             "init": "zeros"},                                # "init_args" may be left out
            ...
        ],
    }

`kind` is "param" or "bias"; a layer built with bias=False has no bias-kind parameters (as in
torch). `init` names a row of `_INITIALIZERS` below (uniform, normal, zeros, ones, constant,
orthogonal), called with the arguments `init_args` returns, in the order cellc/initializers.py
documents (uniform(low, high), ...); for "values" (an initializer expression) the one argument
is the value itself, an array or tensor that broadcasts to the shape. Two kinds get no
gradient: "const", a persistent buffer named as a parameter would be (`P_l0`), drawn from its
initializer once when the module is built (reset_parameters leaves it), and "hyper", a float
with a "default" entry, taken as a keyword-only constructor argument of its name (after the
others), kept as that attribute and passed to run_direction as a [1] tensor; a hyper with
"choices" (a list of function names, "default" the first) takes one of those names, and passes
the chosen one's index, which also joins the sizes `run_direction_for` gets, under its name.
"state_init" (optional, zeros) gives the states' values when forward gets no hx, per layer sizes.

Constructor arguments: the input-size argument, then the first other size argument (normally
hidden_size), then torch's (num_layers, bias, batch_first, dropout, bidirectional, device, dtype;
the cell class takes bias, device, dtype); any further size arguments are keyword-only. Layer
l > 0 reads the outputs of layer l-1 of both directions, so its input-size symbol is bound to
output_size * num_directions; its initializer arguments are evaluated with those sizes.

The run_direction contract
--------------------------
`run_direction_for(sizes)` returns the time loop for one set of layer sizes (a backend may compile
per size); it is called once per distinct set and cached on the class. Calls happen in the
constructor, so a backend may reject sizes there (ValueError).

    run_direction(xs, states, params, batch_sizes) -> (ys, final_states)

- xs: (T, B, I) tensor. The loop always runs forward in time: the layer reverses the sequences
  itself for the reverse direction (each within its own length for packed input).
- states: tuple of (B, H_k) tensors, one per spec state.
- params: list of tensors in spec order. A bias-kind parameter that a bias=False layer lacks is
  passed as zeros of its shape (same dtype and device as xs, not requiring grad), so the list is
  always complete.
- batch_sizes: None (every row runs every step), or a Python list of T non-increasing ints: rows
  are sorted by decreasing length and step t updates only rows b < batch_sizes[t]; the other rows
  keep their state and output zeros. The layer passes None whenever every row is active.
- Returns ys (T, B, H_out) and the tuple of final (B, H_k) states.
- masked=True (a keyword the layer passes only when it is given a mask, so a backend compiles
  that loop on first use): run the cell's masked form instead (cellc/masking.py): xs then has
  one more feature, the mask as 1.0 (run the step) or 0.0 (keep every state and repeat the
  previous output), states one more, the previous output (B, H_out), zeros at the start, and
  the final states include it. The layer builds those and drops it; batch_sizes is then None.

Reverse time (the reverse direction of bidirectional=True, or reverse=True, which runs only it):
each sequence is reversed within its own length before the loop and its outputs after it, so
outputs are in input time order and the final state is the one after x[0], as in the reverse
half of torch.nn.LSTM(bidirectional=True) and ONNX's direction="reverse" (Keras' go_backwards
instead returns the outputs in reversed order). A reverse=True layer names its parameters
without the `_reverse` suffix, so it loads a bidirectional torch layer's `*_reverse` weights
after renaming.

The layer never differentiates anything: run_direction must be autograd-aware, as a plain torch
loop or a torch.autograd.Function is, and differentiable twice (create_graph=True: gradient
penalties, Hessian-vector products). A Function whose backward is a fast kernel that is not
itself differentiable gets that from `differentiable_backward` below.

torch.compile(fullgraph=True) and torch.export trace the layer and run_direction: a backend's
loop must then be traceable (a torch.library custom op: see the backends), and the
layer itself stays free of graph breaks except for PackedSequence input, whose batch sizes it
reads as Python ints.
"""

import functools
import inspect
import math
import numbers
import sys
import warnings

import torch
from torch.nn.utils.rnn import PackedSequence

__all__ = ["compiler_disabled", "differentiable_backward", "make_layer", "op_results"]


def compiler_disabled(fn):
    """fn, hidden from torch.compile: a time loop of Python calls is unrolled by tracing.
    torch.compiler.disable imports dynamo (about a second), so it is applied on the first call
    made while dynamo is loaded, that is, only when torch.compile is in use."""
    disabled = None

    @functools.wraps(fn)
    def call(*args, **kwargs):
        nonlocal disabled
        if "torch._dynamo" not in sys.modules:
            return fn(*args, **kwargs)
        if disabled is None:
            disabled = torch.compiler.disable(fn)
        return disabled(*args, **kwargs)

    return call


def differentiable_backward(run, inputs, needs_grad, grad_outputs):
    """The backward of a whole-sequence torch.autograd.Function while autograd records the
    backward itself (create_graph=True), as a list with one gradient or None per input.

    A fast backward kernel reads the saved residuals as constants, so autograd cannot see how its
    result depends on the inputs, and a second derivative through it would be silently wrong.
    Instead the forward runs again as plain differentiable torch, `run(*inputs)` returning the
    Function's outputs in order, from the saved inputs (which keep their own autograd history),
    and its vector-Jacobian product is taken with create_graph=True: the gradients returned are
    then differentiable in both the inputs and grad_outputs.
    """
    with torch.enable_grad():
        # A fresh alias per input: autograd.grad of a tensor passed in two places would return
        # the sum of both places' gradients for each of them, counting it twice.
        aliases = [x.view_as(x) if need else x for x, need in zip(inputs, needs_grad)]
        outputs = run(*aliases)
    # An output that depends on no input requiring grad contributes nothing (and autograd.grad
    # refuses it).
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad]
    wrt = [a for a, need in zip(aliases, needs_grad) if need]
    if not pairs or not wrt:
        return [None] * len(inputs)
    grads = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs],
                                     create_graph=True, allow_unused=True))
    return [next(grads) if need else None for need in needs_grad]


def op_results(results, inputs, like):
    """Results as a torch.library custom op must return them (both targets' sequence ops):
    contiguous tensors, as fake implementations make them (a Python float becomes a 0-d tensor
    of like's dtype), that alias no input and no other result. A residual can be an input, a
    view of one or of another result (split's parts), a part of an internal buffer, or a buffer
    two results share: those are copied."""
    seen = {t.untyped_storage().data_ptr() for t in inputs}
    out = []
    for r in results:
        if not isinstance(r, torch.Tensor):
            r = torch.full((), r, dtype=like.dtype, device=like.device)
        elif (r.untyped_storage().data_ptr() in seen or not r.is_contiguous()
              or r.storage_offset() != 0):  # a part of a buffer nothing else returns
            r = r.clone(memory_format=torch.contiguous_format)
        seen.add(r.untyped_storage().data_ptr())
        out.append(r)
    return out


# Printed from the one initializer table, cellc/initializers.py (`torch_table_source()`): this file
# must work without cellc, so it keeps a copy, which tests/test_initializers.py checks is current.
_INITIALIZERS = {  # name -> (number of arguments allowed, fill function)
    "uniform": ((2,), lambda w, a: torch.nn.init.uniform_(w, a[0], a[1])),
    "normal": ((2,), lambda w, a: torch.nn.init.normal_(w, a[0], a[1])),
    "zeros": ((0,), lambda w, a: torch.nn.init.zeros_(w)),
    "ones": ((0,), lambda w, a: torch.nn.init.ones_(w)),
    "constant": ((1,), lambda w, a: torch.nn.init.constant_(w, a[0])),
    "orthogonal": ((0, 1), lambda w, a: torch.nn.init.orthogonal_(w, a[0] if a else 1.0)),
    "values": ((1,), lambda w, a: w.copy_(torch.as_tensor(a[0], dtype=w.dtype).expand_as(w))),
}


def make_layer(spec, run_direction_for, rebuild=None):
    """Build (LayerClass, CellClass) for a cell described by `spec` (see the module docstring).

    Pickling (torch.save of a whole model): without `rebuild` the classes pickle by reference,
    as `<module>.<Name>` of the module calling make_layer (a generated module that binds them
    by name, importable where the pickle is loaded). A backend whose classes no module holds
    passes `rebuild = (fn, args)`, picklable, with `fn(*args)` giving the same two classes
    again: an instance then pickles as that recipe plus its state, and nothing the backend
    compiled is pickled."""
    s = _Spec(spec)
    layer_sig = _signature(s, cell=False)
    cell_sig = _signature(s, cell=True)

    def layer_init(self, *args, **kwargs):
        _RNNLayer.__init__(self, *args, **kwargs)

    def cell_init(self, *args, **kwargs):
        _RNNCell.__init__(self, *args, **kwargs)

    layer_init.__signature__ = layer_sig.replace(parameters=[_SELF, *layer_sig.parameters.values()])
    cell_init.__signature__ = cell_sig.replace(parameters=[_SELF, *cell_sig.parameters.values()])
    shared = {"_spec": s, "_run_direction_for": staticmethod(run_direction_for), "_runs": {},
              "_rebuild": rebuild, "_params": property(_present_params)}
    layer = type(s.name, (_RNNLayer,), {
        **shared, "__init__": layer_init, "_ctor_signature": layer_sig,
        "__doc__": f"The {s.name} cell as a layer, with the interface of torch.nn.LSTM.",
    })
    cell = type(s.name + "Cell", (_RNNCell,), {
        **shared, "__init__": cell_init, "_ctor_signature": cell_sig,
        "__doc__": f"One step of the {s.name} cell, with the interface of torch.nn.LSTMCell.",
    })
    return layer, cell


# Parameter kinds: trained ("bias" is left out by bias=False), then the frozen constants
# (persistent buffers) and float hyper-parameters (keyword-only constructor arguments).
_KINDS = ("param", "bias", "const", "hyper")
_TRAINED = ("param", "bias")
# The constructor's own arguments, which no hyper-parameter may take.
_TORCH_ARGUMENTS = {"self", "num_layers", "bias", "batch_first", "dropout", "bidirectional",
                    "device", "dtype", "reverse"}
# Attributes the modules set or torch.nn.Module owns; no parameter may take these names.
_RESERVED = {"num_layers", "batch_first", "dropout", "bidirectional", "device", "dtype",
             "training", "forward", "all_weights", "reset_parameters", "extra_repr", "reverse"}
_SELF = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)


class _Spec:
    """A checked, normalised spec with helpers that turn its lambdas into checked ints."""

    def __init__(self, spec):
        def get(key):
            try:
                return spec[key]
            except (KeyError, TypeError):
                raise TypeError(f"spec has no {key!r} entry") from None

        self.name = str(get("name"))
        self.sizes = [(str(a), str(sym)) for a, sym in get("sizes")]
        args = [a for a, _ in self.sizes]
        self.input_arg = str(get("input_size"))
        if self.input_arg not in args:
            raise TypeError(f"spec {self.name}: input_size {self.input_arg!r} is not one of {args}")
        self.input_symbol = dict(self.sizes)[self.input_arg]
        # Optional sizes (`proj_size P = 0`): may be 0 (their default); parameters marked
        # "absent_when_zero" with their symbol exist only where they are not.
        self.optional = [str(a) for a in spec.get("optional_sizes", ())]
        if not set(self.optional) <= set(args) - {self.input_arg}:
            raise TypeError(f"spec {self.name}: optional_sizes {self.optional} must be size"
                            " arguments other than the input's")
        others = [a for a in args if a != self.input_arg and a not in self.optional]
        self.positional = [self.input_arg] + others[:1]
        self.keyword = others[1:]
        self.states = [str(x) for x in get("states")]
        if not self.states:
            raise TypeError(f"spec {self.name}: a cell needs at least one state")
        self._state_sizes = get("state_sizes")
        self._state_init = spec.get("state_init")  # optional: zeros
        self._output_size = get("output_size")
        self._step_sizes = list(spec.get("step_sizes", ()))  # optional: none to check
        self.params = []
        for p in get("params"):
            p = dict(p)
            p.setdefault("init_args", None)
            if p.get("kind") not in _KINDS:
                raise TypeError(f"spec {self.name}: parameter {p.get('name')!r} has kind"
                                f" {p.get('kind')!r}; expected one of {list(_KINDS)}")
            if p.get("name") in args or p.get("name") in _RESERVED:
                raise TypeError(f"spec {self.name}: parameter name {p.get('name')!r} clashes with"
                                " a constructor argument or module attribute")
            if p["kind"] == "hyper":
                self._check_hyper(p)
            if p.get("init") not in _INITIALIZERS:
                raise TypeError(f"spec {self.name}: parameter {p['name']!r} has unknown"
                                f" initializer {p.get('init')!r}; known: {sorted(_INITIALIZERS)}")
            self.params.append(p)

        self.hypers = [p for p in self.params if p["kind"] == "hyper"]
        # The step's input row (cellc/inputs.py): x, x[t-1], noise masks; [] for a plain cell.
        self.input_parts = [dict(p) for p in spec.get("input_parts", ())]

    def _check_hyper(self, p):
        """A hyper-parameter is a keyword-only constructor argument named as the parameter."""
        name = p["name"]
        if not isinstance(name, str) or not name.isidentifier() or name in _TORCH_ARGUMENTS:
            raise TypeError(f"spec {self.name}: hyper-parameter {name!r} cannot name a"
                            " constructor argument")
        default, choices = p.get("default"), p.get("choices")
        if choices is not None:  # a choice among functions: the default is the first
            if (not isinstance(choices, (list, tuple)) or not choices
                    or not all(isinstance(c, str) for c in choices) or default != choices[0]):
                raise TypeError(f"spec {self.name}: choice hyper-parameter {name!r} needs a"
                                f" list of names with the first as its default, not {choices!r}")
            return
        if isinstance(default, bool) or not isinstance(default, numbers.Real):
            raise TypeError(f"spec {self.name}: hyper-parameter {name!r} needs a real number as"
                            f" its default, not {default!r}")

    def _whole(self, value, what, sizes) -> int:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not ok or value != int(value) or value <= 0:
            args = ", ".join(f"{a}={sizes[sym]}" for a, sym in self.sizes)
            raise ValueError(f"{self.name}: with {args}, {what} would be {value}; choose sizes that"
                             " make it a positive whole number")
        return int(value)

    def state_sizes(self, sizes) -> list[int]:
        got = list(self._state_sizes(sizes))
        assert len(got) == len(self.states), "spec: state_sizes gives one size per state"
        return [self._whole(v, f"the size of state {n!r}", sizes) for n, v in zip(self.states, got)]

    def output_size(self, sizes) -> int:
        return self._whole(self._output_size(sizes), "the output size", sizes)

    def check_step_sizes(self, sizes) -> None:
        """The step's own sizes (heads(v, 3) of [H] needs H/3 whole) for one layer's sizes."""
        for name, size in self._step_sizes:
            self._whole(size(sizes), f"the size of {name!r}", sizes)

    def state_init(self, sizes) -> list[float]:
        """Each state's value before the first step when no hx is given (0.0 unless the cell
        says, as in `state m[H] = -1e30`), for one layer's sizes."""
        if self._state_init is None:
            return [0.0] * len(self.states)
        try:
            got = [float(v) for v in self._state_init(sizes)]
        except (ArithmeticError, ValueError) as e:  # math domain errors, 1/0: a generated module
            if type(e) not in (ValueError, ZeroDivisionError, OverflowError):
                raise  # already a located error (the eager and llvm layers evaluate with cellc)
            got = [math.nan]
        assert len(got) == len(self.states), "spec: state_init gives one value per state"
        if not all(math.isfinite(v) for v in got):
            shown = ", ".join(f"{a}={sizes[sym]}" for a, sym in self.sizes)
            raise ValueError(f"{self.name}: with {shown}, a state's initial value is not a finite"
                             " real number")
        return got

    def present(self, sizes) -> list:
        """The parameters a layer with these sizes has: not those sized by an optional size
        that is 0 (`weight_hr` of an LSTM built with proj_size=0)."""
        return [p for p in self.params
                if not (p.get("absent_when_zero") and sizes.get(p["absent_when_zero"]) == 0)]

    def param_shape(self, p, sizes) -> tuple[int, ...]:
        what = f"a dimension of {p['name']!r}"
        return tuple(self._whole(v, what, sizes) for v in p["shape"](sizes))

    def init(self, p, weight, sizes):
        try:
            args = tuple(p["init_args"](sizes)) if p["init_args"] is not None else ()
        except (ArithmeticError, ValueError) as e:
            if type(e) not in (ValueError, ZeroDivisionError, OverflowError):
                raise  # already a located error (the eager and llvm layers evaluate with cellc)
            args = (e,)
        shown = ", ".join(f"{a}={sizes[sym]}" for a, sym in self.sizes)
        if p["init"] == "values" and not isinstance(args[0], Exception):
            # An initializer expression's value: an array (or a number) that must broadcast to
            # the weight's shape; log(0) or sqrt(-1) in a generated module's torch code is
            # inf or nan, not an exception.
            value = torch.as_tensor(args[0], dtype=torch.float64)
            try:
                fits = torch.broadcast_shapes(value.shape, weight.shape) == weight.shape
            except RuntimeError:
                fits = False
            if not fits:
                raise ValueError(f"{self.name}: with {shown}, the initializer of {p['name']!r} has"
                                 f" shape {list(value.shape)}, which does not broadcast to its"
                                 f" shape {list(weight.shape)}") from None
            bad = [] if bool(torch.isfinite(value).all()) else ["inf or nan"]
        else:
            bad = [a for a in args if not isinstance(a, numbers.Real) or not math.isfinite(a)]
        if bad:  # math domain errors and 1/0 in a generated module's formulas
            raise ValueError(f"{self.name}: with {shown}, the initializer of {p['name']!r} has an"
                             f" argument that is not a finite real number ({bad[0]})")
        counts, fill = _INITIALIZERS[p["init"]]
        assert len(args) in counts, f"spec: {p['init']} of {p['name']!r} takes {counts} arguments"
        fill(weight, args)


def _present_params(module) -> list:
    """The spec's parameters that the module has (see `_Spec.present`)."""
    return [p for p in module._spec.params if p["name"] in module._present]


def _signature(spec: _Spec, cell: bool) -> inspect.Signature:
    P = inspect.Parameter
    params = [P(a, P.POSITIONAL_OR_KEYWORD) for a in spec.positional]
    if not cell:
        params += [P("num_layers", P.POSITIONAL_OR_KEYWORD, default=1)]
    params += [P("bias", P.POSITIONAL_OR_KEYWORD, default=True)]
    if not cell:
        params += [P("batch_first", P.POSITIONAL_OR_KEYWORD, default=False),
                   P("dropout", P.POSITIONAL_OR_KEYWORD, default=0.0),
                   P("bidirectional", P.POSITIONAL_OR_KEYWORD, default=False)]
        params += [P(a, P.POSITIONAL_OR_KEYWORD, default=0) for a in spec.optional]  # proj_size
    params += [P("device", P.POSITIONAL_OR_KEYWORD, default=None),
               P("dtype", P.POSITIONAL_OR_KEYWORD, default=None)]
    params += [P(a, P.KEYWORD_ONLY) for a in spec.keyword]
    if cell:
        params += [P(a, P.KEYWORD_ONLY, default=0) for a in spec.optional]
    if not cell:
        params += [P("reverse", P.KEYWORD_ONLY, default=False)]
    params += [P(h["name"], P.KEYWORD_ONLY, default=h["default"]) for h in spec.hypers]
    return inspect.Signature(params)


def _bind(module, args, kwargs) -> dict:
    try:
        bound = module._ctor_signature.bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"{type(module).__name__}(): {e}") from None
    bound.apply_defaults()
    return bound.arguments


def _bind_sizes(module, a) -> dict:
    """Check each size argument as torch does, keep it as an attribute, and map symbol -> int."""
    sizes = {}
    for arg, sym in module._spec.sizes:
        v = a[arg]
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{arg} should be of type int, got: {type(v).__name__}")
        if arg in module._spec.optional:
            if v < 0:  # torch.nn.LSTM's message for proj_size
                raise ValueError(f"{arg} should be a positive integer or zero to disable"
                                 f" {'projections' if arg == 'proj_size' else 'it'}")
        elif v <= 0:
            raise ValueError(f"{arg} must be greater than zero")
        setattr(module, arg, v)
        sizes[sym] = v
    if "proj_size" in module._spec.optional and "hidden_size" in a and (
            a["proj_size"] > 0 and a["proj_size"] >= a["hidden_size"]):
        raise ValueError("proj_size has to be smaller than hidden_size")  # torch.nn's rule
    return sizes


def _bind_hypers(module, a) -> None:
    """Check each hyper-parameter (a real number, not a bool) and keep it as an attribute of
    its name, as a float; forward passes it to the loop as a [1] tensor of the input's dtype,
    so changing the attribute later changes the next forward and compiles nothing."""
    for h in module._spec.hypers:
        v = a[h["name"]]
        if h.get("choices") is not None:
            _check_choice(h, v)
            setattr(module, h["name"], v)
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{type(module).__name__}(): {h['name']} should be a real number,"
                            f" got: {type(v).__name__}")
        setattr(module, h["name"], float(v))


def _check_choice(h, v):
    """A choice hyper-parameter (`nonlinearity in (tanh, relu)`) is one of its names; the
    message is torch.nn.RNN's for its nonlinearity."""
    choices = h["choices"]
    if v not in choices:
        names = " or ".join(f"'{c}'" for c in choices) if len(choices) == 2 else ", ".join(
            f"'{c}'" for c in choices)
        raise ValueError(f"Unknown {h['name']} '{v}'. Select from {names}.")


def _choice_index(module, h) -> int:
    """The index of a choice hyper-parameter's value, read now: setting the attribute later
    changes the next forward, as a float hyper-parameter's does."""
    v = getattr(module, h["name"])
    _check_choice(h, v)
    return h["choices"].index(v)


def _frozen_tensor(module, p, name, like, shape):
    """The loop's argument for a parameter of kind const (its buffer, detached: a constant
    gets no gradient even if someone set requires_grad on it) or hyper (a [1] tensor; a
    choice's holds the chosen function's index)."""
    if p["kind"] == "hyper":
        if p.get("choices") is not None:
            return like.new_full((1,), float(_choice_index(module, p)))
        return like.new_full((1,), getattr(module, p["name"]))
    return getattr(module, name).detach()


def _hyper_repr(module) -> str:
    """The hyper-parameters that differ from their defaults, as torch prints its arguments."""
    return "".join(f", {h['name']}={getattr(module, h['name'])}" for h in module._spec.hypers
                   if getattr(module, h["name"]) != h["default"])


def _initial_values(like, shape, values):
    """A tensor of `shape` whose slice k along the first axis is values[k]: the states' start
    when no hx is given, per layer (an initial value may read the layer's sizes)."""
    if all(v == values[0] for v in values):
        return like.new_full(shape, values[0]) if values[0] else like.new_zeros(shape)
    return torch.stack([like.new_full(shape[1:], v) for v in values])


def _check_bool(name, v):
    if not isinstance(v, bool):
        raise TypeError(f"{name} should be of type bool, got: {type(v).__name__}")


_RUNS_KEPT = 32  # run_directions a layer class keeps: a sweep over many sizes stays bounded


def _run_for(module, sizes):
    """The (cached) run_direction for one set of layer sizes; the class keeps the most recently
    used few (what a run_direction holds, e.g. compiled native code, is freed with it)."""
    # A choice hyper-parameter's index joins the sizes: a backend may compile the chosen
    # function alone (the llvm target does; the others select among all at run time).
    sizes = {**sizes, **{h["name"]: _choice_index(module, h) for h in module._spec.hypers
                         if h.get("choices") is not None}}
    key = tuple(sorted(sizes.items()))
    cache = type(module)._runs
    run = cache.pop(key, None)
    if run is None:
        run = type(module)._run_direction_for(dict(sizes))
    cache[key] = run  # dicts keep insertion order: the oldest entry comes first
    while len(cache) > _RUNS_KEPT:
        del cache[next(iter(cache))]
    return run


def _check_dtype(module, x, what):
    """x's dtype and device against the weights'. The dtype message is torch.nn.RNNBase's text,
    which says RNN for every layer class; a cell, for which torch has none, names its class."""
    w = next(module.parameters(), None)
    if w is not None and x.dtype != w.dtype:
        who = "RNN" if isinstance(module, _RNNLayer) else type(module).__name__
        raise ValueError(
            f"{who} {what} dtype ({x.dtype}) does not match weight dtype ({w.dtype})."
            f" Convert {what}: {what}.to({w.dtype}), or convert model: model.to({x.dtype})")
    if w is not None and x.device != w.device:
        raise RuntimeError(f"{type(module).__name__}: {what} is on {x.device} but the weights are"
                           f" on {w.device}")


def _rebuilt(rebuild, is_cell):
    """An empty instance of the class `rebuild` names, for pickle to fill with its state."""
    fn, args = rebuild
    cls = fn(*args)[1 if is_cell else 0]
    return cls.__new__(cls)


class _Picklable:
    """Pickles through the class's `_rebuild` recipe when it has one (see make_layer)."""

    def __reduce_ex__(self, protocol):
        rebuild = type(self)._rebuild
        if rebuild is None:
            return super().__reduce_ex__(protocol)
        return _rebuilt, (rebuild, isinstance(self, _RNNCell)), self.__dict__


class _RNNLayer(_Picklable, torch.nn.Module):
    """Base of every generated layer class (see make_layer)."""

    _spec: _Spec
    _ctor_signature: inspect.Signature

    def __init__(self, *args, **kwargs):
        a = _bind(self, args, kwargs)
        super().__init__()
        spec, name = self._spec, type(self).__name__
        sizes = _bind_sizes(self, a)
        num_layers, dropout = a["num_layers"], a["dropout"]
        if isinstance(num_layers, bool) or not isinstance(num_layers, int):
            raise TypeError(f"num_layers should be of type int, got: {type(num_layers).__name__}")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        number = isinstance(dropout, numbers.Number) and not isinstance(dropout, bool)
        if not number or not 0 <= dropout <= 1:
            raise ValueError("dropout should be a number in range [0, 1] representing the"
                             " probability of an element being zeroed")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so"
                          " non-zero dropout expects num_layers greater than 1, but got"
                          f" dropout={dropout} and num_layers={num_layers}", stacklevel=3)
        for flag in ("bias", "batch_first", "bidirectional", "reverse"):
            _check_bool(flag, a[flag])
        if a["reverse"] and a["bidirectional"]:
            raise ValueError("reverse=True runs only the reverse direction; it cannot be combined"
                             " with bidirectional=True")
        self.reverse = a["reverse"]
        self.num_layers = num_layers
        self.bias = a["bias"]
        self.batch_first = a["batch_first"]
        self.dropout = float(dropout)
        self.bidirectional = a["bidirectional"]
        _bind_hypers(self, a)
        directions = 2 if self.bidirectional else 1

        # Layer l > 0 reads the concatenated outputs of layer l-1's directions.
        self._layer_sizes = [sizes]
        for _ in range(1, num_layers):
            prev = self._layer_sizes[-1]
            width = spec.output_size(prev) * directions
            self._layer_sizes.append({**sizes, spec.input_symbol: width})
        self._state_sizes = spec.state_sizes(sizes)
        for ls in self._layer_sizes[1:]:
            if spec.state_sizes(ls) != self._state_sizes:
                raise ValueError(f"{name}: state sizes depend on {spec.input_arg}, so layers"
                                 " cannot be stacked (num_layers must be 1)")
        for ls in self._layer_sizes:
            spec.check_step_sizes(ls)
        self._output_sizes = [spec.output_size(ls) for ls in self._layer_sizes]
        self._row_widths = [_part_widths(spec, ls) for ls in self._layer_sizes]
        _check_rates(self)  # a dropout or zoneout rate out of [0, 1): refused now
        self._state_inits = [spec.state_init(ls) for ls in self._layer_sizes]
        # The parameters it has (not those an optional size of 0 leaves out), by name: the
        # spec's dicts hold functions, and a module's attributes must pickle.
        self._present = [p["name"] for p in spec.present(sizes)]
        self._param_shapes = [[spec.param_shape(p, ls) for p in self._params]
                              for ls in self._layer_sizes]
        for ls in self._layer_sizes:
            _run_for(self, ls)  # let the backend reject sizes now, not at the first forward

        factory = {"device": a["device"], "dtype": a["dtype"]}
        self._flat_weights_names = []
        self._all_weights = []
        for layer in range(num_layers):
            for direction in range(directions):
                names = []
                for p, shape in zip(self._params, self._param_shapes[layer]):
                    pname = f"{p['name']}_l{layer}{'_reverse' if direction else ''}"
                    if p["kind"] == "const":  # in state_dict, moved by .to(), never trained
                        self.register_buffer(pname, torch.empty(shape, **factory))
                    if p["kind"] not in _TRAINED or (p["kind"] == "bias" and not self.bias):
                        continue
                    weight = torch.nn.Parameter(torch.empty(shape, **factory))
                    self.register_parameter(pname, weight)
                    names.append(pname)
                self._flat_weights_names += names
                self._all_weights.append(names)
        self.reset_parameters()
        self._init_constants()

    def _layer_tensors(self, kinds):
        """(spec parameter, its tensor on this module, its layer's sizes) for every layer and
        direction, of the given kinds (a bias=False layer has no bias tensors)."""
        for layer, sizes in enumerate(self._layer_sizes):
            for suffix in ("", "_reverse") if self.bidirectional else ("",):
                for p in self._params:
                    w = getattr(self, f"{p['name']}_l{layer}{suffix}", None)
                    if p["kind"] in kinds and w is not None:
                        yield p, w, sizes

    def reset_parameters(self) -> None:
        """Draw every trained parameter from its spec initializer, evaluated with its layer's
        sizes. Constants (`const`) are not drawn again: they are part of the cell, drawn once
        when the layer is built (after the parameters, so a cell's parameters draw the same
        numbers with or without constants), and only load_state_dict replaces them."""
        with torch.no_grad():
            for p, w, sizes in self._layer_tensors(_TRAINED):
                self._spec.init(p, w, sizes)

    def _init_constants(self) -> None:
        with torch.no_grad():
            for p, w, sizes in self._layer_tensors(("const",)):
                self._spec.init(p, w, sizes)

    def flatten_parameters(self) -> None:
        """No-op, for code written against torch.nn.LSTM."""

    @property
    def all_weights(self) -> list[list[torch.nn.Parameter]]:
        return [[getattr(self, n) for n in names] for names in self._all_weights]

    def extra_repr(self) -> str:
        s = ", ".join(str(getattr(self, a)) for a in self._spec.positional)
        s += "".join(f", {a}={getattr(self, a)}" for a in self._spec.keyword)
        s += "".join(f", {a}={getattr(self, a)}" for a in self._spec.optional
                     if getattr(self, a) != 0)  # as torch.nn.LSTM prints proj_size
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        if self.reverse is not False:
            s += f", reverse={self.reverse}"
        return s + _hyper_repr(self)

    # -- forward ------------------------------------------------------------------------------

    def forward(self, input, hx=None, mask=None):
        """input, hx and the results as torch.nn.LSTM has them. mask (optional): a bool tensor
        (B, T) whatever batch_first is ((T,) for unbatched input), with Keras semantics: at a
        step where it is False every state keeps its value and the output repeats the previous
        output (zeros before the first True step); it may have holes. The reverse direction
        (bidirectional=True or reverse=True) reverses the mask with the input, as Keras'
        Bidirectional does. With a PackedSequence only when every sequence has full length."""
        name = type(self).__name__
        packed = isinstance(input, PackedSequence)
        sorted_indices = unsorted_indices = rev = None
        if packed:
            data, batch_sizes_t, sorted_indices, unsorted_indices = input
            if data.dim() != 2:
                raise RuntimeError(f"input must have 2 dimensions, got {data.dim()}")
            # Python ints: the loop's shapes depend on them. Under torch.compile this reading
            # of a tensor's values is a graph break (an error with fullgraph=True).
            batch_sizes = [int(n) for n in batch_sizes_t]
            T, B = len(batch_sizes), batch_sizes[0]
            is_batched = True
        elif isinstance(input, torch.Tensor):
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            x = input if is_batched else input.unsqueeze(batch_dim)
            x = x.transpose(0, 1) if self.batch_first else x
            T, B = x.shape[:2]
            batch_sizes = None
            data = x
        else:
            raise TypeError(f"{name}: input must be a Tensor or a PackedSequence, got"
                            f" {type(input).__name__}")
        _check_dtype(self, data, "input")
        features = getattr(self, self._spec.input_arg)
        if data.size(-1) != features:
            raise RuntimeError(f"input.size(-1) must be equal to {self._spec.input_arg}."
                               f" Expected {features}, got {data.size(-1)}")
        if packed:
            index = _packed_index(batch_sizes, B, data.device)
            x = data.new_zeros(T * B, data.size(1)).index_copy(0, index, data).view(T, B, -1)
        h0 = self._initial_states(hx, is_batched, B, data, sorted_indices)
        if batch_sizes is not None and all(n == B for n in batch_sizes):
            batch_sizes = None  # every row runs every step
        if batch_sizes is not None:
            rev = _reverse_index(batch_sizes, B, data.device)
        if mask is not None:
            mask = _time_mask(name, mask, is_batched, T, B, data, sorted_indices)
            if batch_sizes is not None:
                raise ValueError(f"{name}: a mask and a PackedSequence of different lengths"
                                 " cannot be combined; pass one or the other")

        directions = 2 if self.bidirectional else 1
        finals = [[] for _ in self._spec.states]
        layer_input = x
        for layer in range(self.num_layers):
            run = _run_for(self, self._layer_sizes[layer])
            outs = []
            for direction in range(directions):
                k = layer * directions + direction
                states = tuple(h[k] for h in h0)
                params = self._direction_params(layer, direction, layer_input)
                backwards = direction == 1 or self.reverse
                ys, fin = _run_time(run, layer_input, states, params, batch_sizes,
                                    rev if backwards else None, backwards, mask,
                                    self._output_sizes[layer],
                                    _row_builder(self, self._row_widths[layer]))
                outs.append(ys)
                for f, h in zip(finals, fin):
                    f.append(h)
            layer_input = outs[0] if directions == 1 else torch.cat(outs, dim=2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = torch.nn.functional.dropout(layer_input, self.dropout, True)
        h_n = [torch.stack(f, 0) for f in finals]

        if packed:
            output = PackedSequence(layer_input.reshape(T * B, -1).index_select(0, index),
                                    batch_sizes_t, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                h_n = [h.index_select(1, unsorted_indices) for h in h_n]
        else:
            output = layer_input.transpose(0, 1) if self.batch_first else layer_input
            if not is_batched:
                output = output.squeeze(0 if self.batch_first else 1)
                h_n = [h.squeeze(1) for h in h_n]
        return output, (h_n[0] if len(h_n) == 1 else tuple(h_n))

    def _direction_params(self, layer, direction, like):
        """The loop's parameter list: trained weights, zeros for a missing bias, constants
        (buffers) and hyper-parameters ([1] tensors of like's dtype and device)."""
        suffix = "_reverse" if direction else ""
        out = []
        for p, shape in zip(self._params, self._param_shapes[layer]):
            name = f"{p['name']}_l{layer}{suffix}"
            if p["kind"] not in _TRAINED:
                out.append(_frozen_tensor(self, p, name, like, shape))
                continue
            w = getattr(self, name, None)
            out.append(w if w is not None else like.new_zeros(shape))
        return out

    def _initial_states(self, hx, is_batched, B, like, sorted_indices):
        """hx in torch's form -> one (num_layers*num_directions, B, H_k) tensor per state."""
        name, states = type(self).__name__, self._spec.states
        LD = self.num_layers * (2 if self.bidirectional else 1)
        expected = [(LD, B, h) for h in self._state_sizes]
        if hx is None:  # each state's initial value (0.0 unless the cell gives one), per layer
            D = LD // self.num_layers
            return [_initial_values(like, e, [v[k] for v in self._state_inits for _ in range(D)])
                    for k, e in enumerate(expected)]
        hxs = _hx_list(name, states, hx)
        want = 3 if is_batched else 2
        dims = [h.dim() for h in hxs]
        if any(d != want for d in dims):  # torch.nn's texts: "hx" for RNN/GRU, "hx and cx" LSTM
            kind = "batched 3-D" if is_batched else "unbatched 2-D"
            if len(dims) == 1:
                raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got"
                                   f" {dims[0]}-D tensor")
            names = [f"{s}x" for s in states]
            raise RuntimeError(
                f"For {kind} input, {', '.join(names[:-1])} and {names[-1]} should also be"
                f" {want}-D but got ({', '.join(f'{d}-D' for d in dims)}) tensors")
        out = []
        for k, h in enumerate(hxs):
            single = len(states) == 1
            h = h if is_batched else h.unsqueeze(1)
            if tuple(h.shape) != expected[k]:
                e = expected[k] if is_batched else (expected[k][0], expected[k][2])
                got = list(h.shape) if is_batched else [h.shape[0], h.shape[2]]
                label = "hidden" if single else f"hidden[{k}]"
                raise RuntimeError(f"Expected {label} size {e}, got {got}")
            _check_dtype(self, h, "hx" if single else f"hx[{k}]")
            out.append(h if sorted_indices is None else h.index_select(1, sorted_indices))
        return out


def _hx_list(name, states, hx) -> list:
    if len(states) == 1:
        if not isinstance(hx, torch.Tensor):
            raise TypeError(f"{name}: hx must be a Tensor (the initial state {states[0]}_0), got"
                            f" {type(hx).__name__}")
        return [hx]
    want = f"a tuple of {len(states)} tensors ({', '.join(s + '_0' for s in states)})"
    if not isinstance(hx, (tuple, list)):
        raise TypeError(f"{name}: hx must be {want}, got {type(hx).__name__}")
    if len(hx) != len(states):
        raise ValueError(f"{name}: hx must be {want}, got {len(hx)} items")
    for k, h in enumerate(hx):
        if not isinstance(h, torch.Tensor):
            raise TypeError(f"{name}: hx[{k}] must be a Tensor, got {type(h).__name__}")
    return list(hx)


def _run_time(run, xs, states, params, batch_sizes, rev, backwards, mask, out_size,
              row=None):
    """One layer direction: run_direction over xs (T, B, I), backwards in time if asked (each
    sequence reversed within its own length by `rev`, the outputs put back in input time
    order), and through the masked cell's loop (`masked=True`) when a mask (T, B) is given: its
    input has the mask as one more feature, its last state is the previous output. `row` (see
    `_row_builder`) turns the (reversed) xs into the step's input row: x[t-1] is then the
    previous input in processing order."""
    if backwards:
        xs, mask = _flip(xs, rev), None if mask is None else _flip(mask, rev)
    if row is not None:
        xs = row(xs)
    if mask is None:
        ys, fin = run(xs, states, params, batch_sizes)
    else:
        xin = torch.cat([xs, mask.unsqueeze(2)], dim=2)
        y0 = xs.new_zeros(xs.shape[1], out_size)
        ys, fin = run(xin, (*states, y0), params, batch_sizes, masked=True)
        fin = fin[:-1]  # the previous output: not a state of the layer
    return (_flip(ys, rev) if backwards else ys), fin


def _part_widths(spec, sizes) -> list[int]:
    """The feature size of each part of the step's input row at these sizes (made when a
    module is built: forward reads plain ints, which torch.compile traces)."""
    return [int(p["size"](sizes)) for p in spec.input_parts]


def _check_rates(module) -> list[float]:
    """Each part's rate: a number, or the hyper-parameter attribute it names, in [0, 1)."""
    rates = []
    for p in module._spec.input_parts:
        rate = p.get("rate")
        r = float(getattr(module, rate)) if isinstance(rate, str) else float(rate or 0.0)
        if p["kind"] in ("dropout", "zoneout") and not 0.0 <= r < 1.0:
            what = rate if isinstance(rate, str) else f"the rate of {p['kind']}"
            raise ValueError(f"{type(module).__name__}: {what} must be in [0, 1), got {r}")
        rates.append(r)
    return rates


def _row_builder(module, widths):
    """For a cell that reads x[t-1] or noise masks: xs (T, B, I) -> the step's row (x, x_prev,
    masks; cellc/inputs.py), masks drawn from torch's default generator while the module is
    training, rates read from its hyper-parameter attributes. None for a plain cell."""
    parts = module._spec.input_parts
    if len(parts) <= 1:
        return None
    rates = _check_rates(module)
    return lambda xs: input_row(parts, xs, widths, rates, module.training)


def input_row(parts, xs, widths, rates, training):
    """The step's row (T, B, sum of widths) from xs (T, B, I), differentiable in xs: the input,
    x[t-1] (xs shifted one step, zero at t = 0), and one noise mask per dropout/zoneout use.
    While training, a dropout mask is in {0, 1/(1-p)} (fresh each step, or one per sequence and
    feature with per="sequence"), a zoneout mask ~ Bernoulli(p), both drawn from torch's default
    generator; in eval a dropout mask is 1 and a zoneout mask p (the expectation)."""
    T, B = xs.shape[:2]
    cols = []
    for p, n, rate in zip(parts, widths, rates):
        kind = p["kind"]
        if kind == "input":
            cols.append(xs)
        elif kind == "previous":
            cols.append(torch.cat([torch.zeros_like(xs[:1]), xs[:-1]], dim=0))
        elif not training or rate == 0.0:
            cols.append(xs.new_full((T, B, n), rate if kind == "zoneout" else 1.0))
        elif kind == "zoneout":
            cols.append(torch.bernoulli(xs.new_full((T, B, n), rate)))
        else:
            shape = (1, B, n) if p.get("per") == "sequence" else (T, B, n)
            keep = torch.bernoulli(xs.new_full(shape, 1.0 - rate)) / (1.0 - rate)
            cols.append(keep.expand(T, B, n))
    return torch.cat(cols, dim=2)


def _flip(x, rev):
    """x (T, B, ...) reversed in time: whole columns (rev None), or each column within its own
    length by the index of `_reverse_index` (its own inverse)."""
    if rev is None:
        return x.flip(0)
    return x[rev, torch.arange(x.shape[1], device=x.device)]


def _time_mask(name, mask, is_batched, T, B, like, sorted_indices):
    """The layer's mask (B, T) bool ((T,) unbatched) as the loops take it: (T, B), 0.0 or 1.0
    in like's dtype, rows in the order of the sorted batch."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"{name}: mask must be a bool tensor, got"
                        f" {getattr(mask, 'dtype', type(mask).__name__)}")
    want = (B, T) if is_batched else (T,)
    if tuple(mask.shape) != want:
        raise ValueError(f"{name}: mask must have shape {list(want)} (batch, time), got"
                         f" {list(mask.shape)}")
    m = mask if is_batched else mask.unsqueeze(0)
    if sorted_indices is not None:
        m = m.index_select(0, sorted_indices.to(m.device))
    return m.t().to(dtype=like.dtype, device=like.device)


def _packed_index(batch_sizes, B, device) -> torch.Tensor:
    """Row of each packed element in the padded (T*B, F) layout, in packed order."""
    rows = [t * B + b for t, n in enumerate(batch_sizes) for b in range(n)]
    return torch.tensor(rows, dtype=torch.long, device=device)


def _reverse_index(batch_sizes, B, device) -> torch.Tensor:
    """(T, B) time index that reverses each column within its length and leaves padding alone."""
    lengths = [sum(1 for n in batch_sizes if n > b) for b in range(B)]
    rows = [[lengths[b] - 1 - t if t < lengths[b] else t for b in range(B)]
            for t in range(len(batch_sizes))]
    return torch.tensor(rows, dtype=torch.long, device=device)


class _RNNCell(_Picklable, torch.nn.Module):
    """Base of every generated cell class: one step, like torch.nn.LSTMCell."""

    _spec: _Spec
    _ctor_signature: inspect.Signature

    def __init__(self, *args, **kwargs):
        a = _bind(self, args, kwargs)
        super().__init__()
        spec = self._spec
        sizes = _bind_sizes(self, a)
        # bias is not checked: torch.nn's cells (unlike its layers) take any value for its truth,
        # and torch's module_db builds RNNCell(10, 20, "relu") (bias="relu") expecting no error.
        # A cell may name a parameter `bias` (unsuffixed here, unlike in the layer): then the
        # parameter owns the attribute and the flag lives only in `_bias`.
        self._bias = a["bias"]
        if all(p["name"] != "bias" for p in spec.params):
            self.bias = self._bias
        _bind_hypers(self, a)
        if any(p["kind"] == "previous" for p in spec.input_parts):
            raise TypeError(f"{type(self).__name__}: the cell reads the previous input x[t-1],"
                            " which a single step does not see; run whole sequences with the"
                            " layer class")
        self._sizes = sizes
        spec.check_step_sizes(sizes)
        self._state_sizes = spec.state_sizes(sizes)
        self._state_init = spec.state_init(sizes)
        self._row_widths = _part_widths(spec, sizes)
        _check_rates(self)
        self._present = [p["name"] for p in spec.present(sizes)]
        self._param_shapes = [spec.param_shape(p, sizes) for p in self._params]
        _run_for(self, sizes)
        factory = {"device": a["device"], "dtype": a["dtype"]}
        for p, shape in zip(self._params, self._param_shapes):
            if p["kind"] == "const":  # in state_dict, moved by .to(), never trained
                self.register_buffer(p["name"], torch.empty(shape, **factory))
            elif p["kind"] == "bias" and not self._bias:
                self.register_parameter(p["name"], None)  # as torch.nn.LSTMCell(bias=False)
            elif p["kind"] != "hyper":
                weight = torch.nn.Parameter(torch.empty(shape, **factory))
                self.register_parameter(p["name"], weight)
        self.reset_parameters()
        with torch.no_grad():  # constants: drawn once, after the parameters (as in the layer)
            for p in self._params:
                if p["kind"] == "const":
                    spec.init(p, getattr(self, p["name"]), sizes)

    def reset_parameters(self) -> None:
        """Draw every trained parameter again; constants are kept (see the layer's)."""
        with torch.no_grad():
            for p in self._params:
                w = getattr(self, p["name"]) if p["kind"] in _TRAINED else None
                if w is not None:
                    self._spec.init(p, w, self._sizes)

    def extra_repr(self) -> str:
        s = ", ".join(str(getattr(self, a)) for a in self._spec.positional)
        s += "".join(f", {a}={getattr(self, a)}" for a in self._spec.keyword)
        s += "".join(f", {a}={getattr(self, a)}" for a in self._spec.optional
                     if getattr(self, a) != 0)
        if self._bias is not True:
            s += f", bias={self._bias}"
        return s + _hyper_repr(self)

    def forward(self, input, hx=None):
        """input (B, I) or (I,); hx in the layer's form without the layer axis. Returns the next
        state, or the tuple of next states (for an LSTM, (h', c')), as torch's cells do."""
        name, spec = type(self).__name__, self._spec
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        is_batched = input.dim() == 2
        x = input if is_batched else input.unsqueeze(0)
        _check_dtype(self, x, "input")
        I = self._sizes[spec.input_symbol]
        if x.size(1) != I:
            raise RuntimeError(f"input has inconsistent {spec.input_arg}: got {x.size(1)}"
                               f" expected {I}")
        B = x.size(0)
        if hx is None:  # each state's initial value (0.0 unless the cell gives one)
            states = tuple(_initial_values(x, (B, h), [v])
                           for h, v in zip(self._state_sizes, self._state_init))
        else:
            hxs = _hx_list(name, spec.states, hx)
            states = []
            for k, h in enumerate(hxs):
                # torch.nn's texts: hx is "hidden" in RNNCell and GRUCell, "hx[k]" in LSTMCell,
                # and "hidden{k}" in the size checks of all three.
                label = "hx" if len(hxs) == 1 else f"hx[{k}]"
                if h.dim() not in (1, 2):
                    raise ValueError(f"{name}: Expected {'hidden' if len(hxs) == 1 else label} to"
                                     f" be 1D or 2D, got {h.dim()}D instead")
                if h.dim() != input.dim():  # torch.nn fails later, with a confusing size message
                    raise ValueError(f"{name}: Expected {label} to be {input.dim()}D like the"
                                     f" input, got {h.dim()}D instead")
                h = h if is_batched else h.unsqueeze(0)
                if h.size(0) != B:
                    raise RuntimeError(f"Input batch size {B} doesn't match hidden{k} batch"
                                       f" size {h.size(0)}")
                if h.size(1) != self._state_sizes[k]:
                    raise RuntimeError(f"hidden{k} has inconsistent hidden_size: got {h.size(1)},"
                                       f" expected {self._state_sizes[k]}")
                _check_dtype(self, h, label)
                states.append(h)
            states = tuple(states)
        params = [_frozen_tensor(self, p, p["name"], x, shape) if p["kind"] not in _TRAINED
                  else getattr(self, p["name"])
                  for p, shape in zip(self._params, self._param_shapes)]
        params = [w if w is not None else x.new_zeros(shape)
                  for w, shape in zip(params, self._param_shapes)]
        xs, row = x.unsqueeze(0), _row_builder(self, self._row_widths)
        xs = xs if row is None else row(xs)  # one step's noise masks (cellc/inputs.py)
        _, final = _run_for(self, self._sizes)(xs, states, params, None)
        final = [h if is_batched else h.squeeze(0) for h in final]
        return final[0] if len(final) == 1 else tuple(final)
