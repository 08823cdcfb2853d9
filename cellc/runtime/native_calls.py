"""Calling cellc's native kernels from NumPy: every argument check, written once.

HARD RULES: this module imports only ctypes, os, numpy and the Python standard library, and has
no `from __future__` line, because `cellc compile --target llvm` pastes its source (less this
docstring) into the loader it writes beside the library, and a fresh interpreter without cellc
or llvmlite imports that loader. Every name it binds starts with `_`: in a loader the names
without one belong to the generated data (SIZES, STATES, PARAMS, KERNELS) and to the cell's own
class name, and the front end refuses cell and size names that start with `_`
(cellc/names.py), so nothing here can be shadowed or shadow them.

Three callers share it, so a check and its message live here and nowhere else:
- `llvm_jit.Kernel.run` (JIT kernels, numpy arrays or torch tensors through an `_Arrays`),
- `native.NativeCell` (the NumPy API over JIT kernels),
- the AOT loader (`_Library` for the shared library, `_LoadedCell` for its cell class).

A kernel is described by plain data, the same in all three (a loader's KERNELS holds them):

    {"dtype": "float32",
     "sizes": [symbol, ...],                     # the order of the kernel's `sizes` argument
     "args": [(name, shape spec), ...],          # in call order
     "results": [(kind, k, shape spec), ...],    # ("arg", k): args[k] itself; ("buf", k): buffer k
     "buffers": n,                               # result buffers, allocated here
     "workspace": [a, b, c],                     # a*T*B + b*B + c (+1) scratch elements
     "generic": False}                           # optional; True: see below

A shape spec is a list whose first entry may be "TB" (T*B rows: a whole sequence, ordered
(t, b)) or "B" (one row per sequence), followed by the feature sizes. Buffers the kernel
writes are allocated here from these shapes, so no argument can make it read or write out of
bounds.

A specialized kernel (no "generic", or False) has every feature size and workspace coefficient
a plain int, and ignores its `sizes` argument. A generic kernel ("generic": True) serves every
size: a feature size or a workspace coefficient may be a size polynomial, a list of monomials
[numerator, denominator, symbol, symbol, ...] (value: the sum of numerator/denominator times
the product of the symbols' values; [[4, 1, "H"]] is 4*H, [[1, 1, "I"], [1, 1, "H"]] is I + H,
[[1, 2, "H"]] is H/2), and "dims" lists every symbolic feature size the kernel works with. A
call gives the sizes (symbol -> int); `_bind_kernel` evaluates the spec with them, refusing
sizes that leave any of "dims" not a positive whole number (the kernel's loops assume it).
"""

import ctypes
import os

import numpy as np

# BLAS takes 32-bit sizes (scipy-openblas32, MKL's LP64 interface), and the products over whole
# sequences have T*B rows: more would wrap around.
_MAX_ROWS = 2**31 - 1

# Every kernel: (T, B, batch_sizes, args[], results[], workspace, sizes).
_SIGNATURE = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                              ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)


# ---------------------------------------------------------------------------------------------
# Checks at the cell level: what NativeCell and a loader's cell take from their callers


def _check_rows(T, B):
    """Refuse T*B rows that 32-bit BLAS sizes cannot hold; called before anything is allocated
    or copied (a zero-stride xs of 2**31 rows costs no memory until then)."""
    if T * B > _MAX_ROWS:
        raise ValueError(f"T*B = {T}*{B} = {T * B} rows is more than the native kernels take"
                         f" ({_MAX_ROWS}: BLAS sizes are 32-bit); split the batch or the sequence")


def _float_dtype(dtype):
    """The numpy dtype, which must be float32 or float64 (the kernels come in those two)."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, not {dtype}")
    return dtype


def _sequence_shape(xs):
    """(T, B) of a whole-sequence input xs (T, B, features), checked before xs is copied."""
    if not isinstance(xs, np.ndarray) or xs.ndim != 3:
        raise ValueError("xs must be a 3-d numpy array (T, B, features),"
                         f" got {getattr(xs, 'shape', type(xs))}")
    T, B = xs.shape[:2]
    _check_rows(T, B)
    return T, B


def _step_batch(x):
    """B of a one-step input x (B, features), checked before x is copied."""
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise ValueError("x must be a 2-d numpy array (B, features),"
                         f" got {getattr(x, 'shape', type(x))}")
    B = x.shape[0]
    _check_rows(1, B)
    return B


def _array(a, name, shape, dtype):
    """a, checked (a numpy array of exactly this dtype and shape) and made contiguous. Nothing
    is converted: a wrong dtype would silently round, and complex input drop its imaginary part."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, not {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} must be {dtype}, not {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    return np.ascontiguousarray(a)


def _states(given, B, state_sizes, dtype, label, order=None, initial=None):
    """One (B, size) array per (name, size) of state_sizes, in that order: given ones checked,
    missing ones filled with their `initial` value (one float per state; zeros when None, as
    for cotangents); rows reordered by `order` when given. `label` names a state in errors
    ("state {name}", "d_states[{name}]")."""
    given = dict(given or {})
    initial = [0.0] * len(state_sizes) if initial is None else initial
    out = []
    for (name, size), start in zip(state_sizes, initial):
        v = given.pop(name, None)
        v = (np.full((B, size), start, dtype) if v is None
             else _array(v, label.format(name=repr(name)), (B, size), dtype))
        out.append(v if order is None else np.ascontiguousarray(v[order]))
    if given:
        raise ValueError(f"unknown states {sorted(given)};"
                         f" the cell has {[name for name, _ in state_sizes]}")
    return out


def _params(params, param_shapes, dtype, defaults=None):
    """The parameter arrays in the order of param_shapes ((name, shape) pairs), checked; a
    hyper-parameter left out (a name in `defaults`, name -> float) is its default."""
    defaults = defaults or {}
    out = []
    for name, shape in param_shapes:
        if name not in params and name in defaults:
            out.append(np.full(tuple(shape), defaults[name], dtype))
            continue
        if name not in params:
            raise ValueError(f"missing parameter {name!r}")
        out.append(_array(params[name], f"parameter {name!r}", tuple(shape), dtype))
    return out


def _number(e, sizes):
    """The value of a number written as data (a state's initial value in a loader, which may
    read the sizes: `state m[H] = -1/sqrt(H)`): a float, a size symbol (str), or a list
    [op, operands...] with op one of _NUMBER_OPS. None if it is not a finite real number for
    these sizes (log(H - 2) with H = 1), which cellc refuses as CellIR.bind does."""
    with np.errstate(all="ignore"):  # a domain error is nan or inf here, refused below
        value = _evaluate_number(e, sizes)
    return float(value) if np.isfinite(value) else None


def _evaluate_number(e, sizes):
    """As float64 NumPy scalars, whose errors (log(0), 1/0, (-8)^0.5) are inf or nan."""
    if isinstance(e, (int, float)):
        return np.float64(e)
    if isinstance(e, str):
        return np.float64(sizes[e])
    op, *args = e
    return _NUMBER_OPS[op](*(_evaluate_number(a, sizes) for a in args))


_NUMBER_OPS = {"neg": np.negative, "sqrt": np.sqrt, "exp": np.exp, "log": np.log,
               "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
               "pow": np.power}


def _ints(values, n, name):
    """values as n integers (an array): 2.9 or True is refused, never truncated."""
    v = np.asarray(values)
    if v.size == 0:  # np.asarray([]) is float64
        v = v.astype(np.int64)
    if v.shape != (n,) or not np.issubdtype(v.dtype, np.integer):
        raise ValueError(f"{name} must be {n} ints, got {v.dtype} {v.shape}")
    return v


def _batch_sizes(batch_sizes, T, B):
    """The running batch per step: B at every step when None, else T checked ints."""
    if batch_sizes is None:
        return np.full(T, B, np.int64)
    return _ints(batch_sizes, T, "batch_sizes")


def _unshared(arrays, returned=()):
    """The arrays, each copied when it shares memory with one of `returned` or an earlier one.
    Kernels hand back one buffer for results that are equal (rnn's ys and its saved h', its
    step's y and h', dbias_ih and dbias_hh), so changing one in place would change the other."""
    out = []
    for a in arrays:
        out.append(a.copy() if any(np.may_share_memory(a, b) for b in (*returned, *out)) else a)
    return out


# ---------------------------------------------------------------------------------------------
# Checks at the kernel level: the arrays handed to native code


class _Arrays:
    """How kernels see numpy arrays (torch has its own subclass in llvm_layers)."""

    def check(self, a, shape, dtype, name):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}: expected a numpy array, got {type(a).__name__}")
        if a.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype}, got {a.dtype}")
        if a.shape != tuple(shape):
            raise ValueError(f"{name}: expected shape {tuple(shape)}, got {a.shape}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name}: must be C-contiguous")

    def empty(self, shape, dtype, like=None):
        return np.empty(shape, dtype)

    def ptr(self, a):
        return a.ctypes.data

    def size(self, a):
        return a.size


_NUMPY = _Arrays()


def _shape(spec, T, B):
    """The concrete shape of a shape spec (see the module docstring), its sizes bound."""
    return tuple(T * B if d == "TB" else B if d == "B" else d for d in spec)


def _size_value(size, sizes):
    """The value of a size polynomial (or int) for sizes (symbol -> int), exactly: the terms
    over a common denominator, divided last. None when it is not whole."""
    if isinstance(size, int):
        return size
    den = 1
    for term in size:
        den = den * term[1] // _gcd(den, term[1])
    total = 0
    for term in size:
        value = term[0] * (den // term[1])
        for name in term[2:]:
            value *= sizes[name]
        total += value
    return total // den if total % den == 0 else None


def _gcd(a, b):  # math.gcd, without a fourth import (see the module docstring)
    while b:
        a, b = b, a % b
    return a


def _format_size(size):
    """A size polynomial (or int) as text for people and C comments: 4*H, I + H, H/2."""
    if isinstance(size, int):
        return str(size)
    text = ""
    for term in size:
        num, den, names = term[0], term[1], [str(n) for n in term[2:]]
        factors = ([str(abs(num))] if abs(num) != 1 or not names else []) + names
        part = "*".join(factors) + (f"/{den}" if den != 1 else "")
        if not text:
            text = ("-" if num < 0 else "") + part
        else:
            text += (" - " if num < 0 else " + ") + part
    return text or "0"


def _size_array(kernel, sizes, threads=1, team=0):
    """The kernel's `sizes` argument: the values in the order of kernel["sizes"], checked
    positive ints (a specialized kernel called without sizes gets zeros, which it ignores),
    then the threads its time loops may use and the addresses of the thread team's entries
    (libgomp's GOMP_parallel, omp_get_thread_num, omp_get_num_threads; `team` 0 for none: the
    loops run on the calling thread)."""
    symbols = kernel["sizes"]
    tail = [threads, *(team or (0, 0, 0))]
    if sizes is None:
        return np.array([0] * len(symbols) + tail, np.int64)
    if not isinstance(sizes, dict) or set(sizes) != set(symbols):
        raise ValueError(f"sizes must give exactly {symbols}, got {sizes!r}")
    for name in symbols:
        v = sizes[name]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"size {name} must be a positive int, got {v!r}")
    return np.array([int(sizes[name]) for name in symbols] + tail, np.int64)


def _bind_kernel(kernel, sizes):
    """A generic kernel's spec evaluated for sizes (symbol -> int): every size an int, as in a
    specialized spec (a specialized spec is returned as it is)."""
    if not kernel.get("generic"):
        return kernel
    _size_array(kernel, sizes)  # the sizes themselves: exactly the symbols, positive ints
    sizes = {name: int(v) for name, v in sizes.items()}
    for d in kernel["dims"]:
        v = _size_value(d, sizes)
        if v is None or v <= 0:
            raise ValueError(f"with sizes {sizes}, the kernel's size {_format_size(d)} would be"
                             f" {v if v is not None else 'not whole'}: it must be a positive"
                             " whole number")

    def shape(spec):
        return [d if isinstance(d, str) else _size_value(d, sizes) for d in spec]

    bound = dict(kernel, generic=False)
    bound["args"] = [(name, shape(spec)) for name, spec in kernel["args"]]
    bound["results"] = [(kind, k, shape(spec)) for kind, k, spec in kernel["results"]]
    bound["workspace"] = [_size_value(c, sizes) for c in kernel["workspace"]]
    if any(c is None or c < 0 for c in bound["workspace"]):
        raise ValueError(f"with sizes {sizes}, the kernel's workspace is not a whole number")
    del bound["dims"]
    return bound


def _full_batch_sizes(T, B):
    """batch_sizes of T steps of B rows each, as the kernels read them: one read-only array
    per (T, B) (the last few), checked once."""
    bs = _FULL.get((T, B))
    if bs is None:
        if len(_FULL) > 16:
            _FULL.clear()
        bs = _FULL[(T, B)] = np.full(T, B, np.int64)
        bs.flags.writeable = False
    return bs


_FULL = {}


def _kernel_batch_sizes(batch_sizes, T, B):
    """batch_sizes as the kernels read them: T int64s, non-increasing, each in [0, B]."""
    if batch_sizes is _FULL.get((T, B)) and batch_sizes is not None:
        return batch_sizes  # made by _full_batch_sizes: valid as it stands
    bs = np.ascontiguousarray(batch_sizes, dtype=np.int64)
    if bs.shape != (T,) or (T and (bs.min() < 0 or bs.max() > B or np.any(np.diff(bs) > 0))):
        raise ValueError(f"batch_sizes must be {T} non-increasing ints in [0, {B}]")
    return bs


def _run_kernel(fn, kernel, T, B, batch_sizes, args, arrays=_NUMPY, workspace=None, sizes=None,
                threads=1, team=0):
    """Call fn (a `_SIGNATURE` function) as `kernel` (its data) on checked arrays; return its
    results, arguments handed back as they are. `workspace(n, arrays, like)` gives a scratch
    buffer of at least n elements (a fresh one when None). `sizes` (symbol -> int) are the
    sizes to run a generic kernel at (required for one; a specialized kernel ignores them).
    `threads` and `team`: see _size_array (the kernel uses fewer threads on small batches)."""
    _check_rows(T, B)
    if kernel.get("generic"):
        if sizes is None:
            raise ValueError("a generic kernel needs the sizes to run at")
        kernel = _bind_kernel(kernel, sizes)
    size_values = _size_array(kernel, sizes, threads, team)
    dtype = np.dtype(kernel["dtype"])
    if len(args) != len(kernel["args"]):
        raise ValueError(f"expected {len(kernel['args'])} arrays, got {len(args)}")
    for a, (name, spec) in zip(args, kernel["args"]):
        arrays.check(a, _shape(spec, T, B), dtype, name)
    bs = _kernel_batch_sizes(batch_sizes, T, B)
    buffers = [None] * kernel["buffers"]
    results = []
    for kind, k, spec in kernel["results"]:
        if kind == "arg":
            results.append(args[k])
        else:
            if buffers[k] is None:
                buffers[k] = arrays.empty(_shape(spec, T, B), dtype, like=args[0])
            results.append(buffers[k])
    a, b, c = kernel["workspace"]
    n = a * T * B + b * B + c + 1
    if workspace is None:
        ws = arrays.empty((n,), dtype, like=args[0])
    else:
        ws = workspace(n, arrays, args[0])
    argv = (ctypes.c_void_p * max(1, len(args)))(*[arrays.ptr(x) for x in args])
    bufv = (ctypes.c_void_p * max(1, len(buffers)))(*[arrays.ptr(x) for x in buffers])
    fn(T, B, bs.ctypes.data, ctypes.addressof(argv), ctypes.addressof(bufv), arrays.ptr(ws),
       size_values.ctypes.data)
    return results


# ---------------------------------------------------------------------------------------------
# The AOT loader: a shared library beside the loader, and the cell class over it


class _Library:
    """The kernels of a shared library that lies beside `loader_file` (`KERNELS`: name -> data)."""

    def __init__(self, loader_file, library, kernels):
        folder = os.path.dirname(os.path.abspath(loader_file))
        self._lib = ctypes.CDLL(os.path.join(folder, library))
        self._kernels = kernels
        self._functions = {}

    def call(self, name, T, B, batch_sizes, args, sizes=None):
        """Run kernel `name` over T steps of B rows (checks as for Kernel.run); `sizes`
        (symbol -> int) for a generic kernel."""
        _check_rows(T, B)  # first, as in _run_kernel: T*B is refused whatever else is wrong
        kernel = self._kernels[name]
        fn = self._functions.get(name)
        if fn is None:  # resolved once per kernel
            address = ctypes.cast(getattr(self._lib, name), ctypes.c_void_p).value
            fn = self._functions[name] = _SIGNATURE(address)
        return _run_kernel(fn, kernel, T, B, batch_sizes, args, sizes=sizes)


class _LoadedCell:
    """The cell class of an AOT loader, which subclasses it with the cell's data as class
    attributes: `_library` (a `_Library`), `_kernel_prefix` (kernel names are
    <prefix>forward_f32 etc.), `_cell_name`, `_size_args` ((argument, symbol) pairs in the
    kernels' `sizes` order), `_fixed_sizes` (symbol -> int of a specialized build, None for a
    generic one), `_dims` ((value, dim text, dim) for each feature dim of the step),
    `_state_dims` and `_param_dims` ((name, dim or dims) pairs), `_input_dim` and `_output_dim`.
    A dim is an int or a size polynomial (see `_size_value`). `_state_init`: each state's
    initial value as `_number` data (0.0 for most), `_hyper_defaults` (name -> default of each
    hyper-parameter, used when params leaves it out) and `_frozen` (the constants' and
    hyper-parameters' names: no gradient, so backward returns none for them).

    It takes what cellc's NativeCell takes, with the same checks and messages: the sizes as
    keywords (`input_size=8, ...`; a specialized build's own sizes may be left out), and
    sequences of different lengths as `lengths` or as `batch_sizes` (sorted longest first);
    reverse=True runs the cell backwards in time (see `_reverse_time`)."""

    _state_init = None
    _hyper_defaults = None
    _frozen = ()

    def __init__(self, dtype="float32", *, reverse=False, **size_args):
        self.dtype = _float_dtype(dtype)
        self.reverse = _check_reverse(reverse)
        self.sizes = self._bind(size_args)
        tag = "f32" if self.dtype == np.float32 else "f64"
        self._forward = self._kernel_prefix + "forward_" + tag
        self._backward = self._kernel_prefix + "backward_" + tag
        self._step = self._kernel_prefix + "step_" + tag
        S = self.sizes
        self._state_sizes = [(name, _size_value(d, S)) for name, d in self._state_dims]
        self._param_shapes = [(name, tuple(_size_value(d, S) for d in dims))
                              for name, dims in self._param_dims]
        self._input_size = _size_value(self._input_dim, S)
        self._output_size = _size_value(self._output_dim, S)
        self._initial = [0.0] * len(self._state_dims)
        for k, e in enumerate(self._state_init or ()):
            self._initial[k] = _number(e, S)
            if self._initial[k] is None:
                raise ValueError(f"{self._cell_name}: with {size_args}, the initial value of state"
                                 f" {self._state_dims[k][0]!r} is not a finite real number")

    def _bind(self, args):
        """The sizes (symbol -> int) for the keyword arguments, checked as `CellIR.bind` checks
        them (same errors, same messages). A specialized build takes its own sizes or none."""
        fixed = self._fixed_sizes
        if fixed is not None and not args:
            return dict(fixed)
        name = self._cell_name
        known = {arg for arg, _ in self._size_args}
        for k in args:
            if k not in known:
                raise TypeError(f"{name}: unexpected size argument {k!r}; expects {sorted(known)}")
        sizes = {}
        for arg, symbol in self._size_args:
            if arg not in args:
                raise TypeError(f"{name}: missing size argument {arg!r}")
            v = args[arg]
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name}: {arg} must be an int, got {type(v).__name__} {v!r}")
            if v <= 0:
                raise ValueError(f"{name}: {arg} must be positive, got {v}")
            sizes[symbol] = v
        for value, text, d in self._dims:
            n = _size_value(d, sizes)
            if n is None or n <= 0:
                raise ValueError(
                    f"{name}: with {args}, '{value}' would have {text} = {_fraction_text(d, sizes)}"
                    " features; choose sizes that make it a positive whole number")
        if fixed is not None and sizes != fixed:
            given = ", ".join(f"{arg}={fixed[symbol]}" for arg, symbol in self._size_args)
            raise ValueError(f"{name}: this library is compiled for {given}, not {args};"
                             " a library built without --sizes takes any sizes")
        return sizes

    def forward(self, xs, params, states=None, lengths=None, batch_sizes=None):
        """xs (T, B, I) -> (ys (T, B, out), {state: (B, H)}, tape)."""
        T, B = _sequence_shape(xs)
        xs = _array(xs, "xs", (T, B, self._input_size), self.dtype)
        bs, order = _sequence_layout(T, B, lengths, batch_sizes)
        x = xs if order is None else xs[:, order]
        x = _reverse_time(x, bs) if self.reverse else x
        args = [np.ascontiguousarray(x).reshape(T * B, self._input_size),
                *_states(states, B, self._state_sizes, self.dtype, "state {name}", order,
                         self._initial),
                *_params(params, self._param_shapes, self.dtype, self._hyper_defaults)]
        out = self._library.call(self._forward, T, B, bs, args, self.sizes)
        n = len(self._state_sizes)
        outputs = _unshared(out[: n + 1])
        residuals = _unshared(out[n + 1 :], outputs)  # the tape's own
        ys = outputs[n].reshape(T, B, self._output_size)
        ys = _reverse_time(ys, bs) if self.reverse else ys
        final = outputs[:n]
        if order is not None:  # back to the caller's order
            inv = np.argsort(order)
            ys, final = ys[:, inv], [v[inv] for v in final]
        names = [name for name, _ in self._state_sizes]
        return ys, dict(zip(names, final)), (residuals, T, B, bs, order)

    def backward(self, tape, d_ys=None, d_states=None):
        """Gradients of "xs", each initial state and each trained parameter."""
        residuals, T, B, bs, order = tape
        ys_shape = (T, B, self._output_size)
        d_ys = (np.zeros(ys_shape, self.dtype) if d_ys is None
                else _array(d_ys, "d_ys", ys_shape, self.dtype))
        seeds = _states(d_states, B, self._state_sizes, self.dtype, "d_states[{name}]", order)
        dy = d_ys if order is None else d_ys[:, order]
        dy = _reverse_time(dy, bs) if self.reverse else dy
        seeds.append(_seed_rows(dy, bs, T, B, self._output_size))
        grads = _unshared(self._library.call(self._backward, T, B, bs, list(residuals) + seeds,
                                             self.sizes))
        names = ["xs"] + [name for name, _ in self._state_sizes]
        out = dict(zip(names + [name for name, _ in self._param_shapes], grads))
        for name in self._frozen:  # their slots are zeros, not derivatives
            del out[name]
        out["xs"] = out["xs"].reshape(T, B, self._input_size)
        if self.reverse:
            out["xs"] = _reverse_time(out["xs"], bs)
        if order is not None:
            inv = np.argsort(order)
            for k in names:
                out[k] = out[k][:, inv] if k == "xs" else out[k][inv]
        return out

    def step(self, x, states, params):
        """One time step for a batch x (B, I): (y (B, out), {state: next value})."""
        B = _step_batch(x)
        args = [*_states(states, B, self._state_sizes, self.dtype, "state {name}", None,
                         self._initial),
                _array(x, "x", (B, self._input_size), self.dtype),
                *_params(params, self._param_shapes, self.dtype, self._hyper_defaults)]
        out = _unshared(self._library.call(self._step, 1, B, np.array([B], np.int64), args,
                                           self.sizes))
        n = len(self._state_sizes)
        return out[n], dict(zip((name for name, _ in self._state_sizes), out[:n]))


def _check_reverse(reverse):
    if not isinstance(reverse, bool):
        raise TypeError(f"reverse must be a bool, not {type(reverse).__name__}")
    return reverse


def _seed_rows(dy, batch_sizes, T, B, width):
    """The output cotangents as the backward kernel reads them, (T*B, width) in the kernels'
    row order, zero past each sequence's end: the kernels read only the running rows inside the
    time loop, but a product hoisted out of it (mamba_s6's D_skip * u) reads all T*B rows."""
    dy = np.ascontiguousarray(dy).reshape(T * B, width)
    bs = np.asarray(batch_sizes)
    if bs.size and bs.min() < B:  # some sequence ends early: a copy, not the caller's array
        running = (np.arange(B).reshape(1, B) < bs.reshape(T, 1)).reshape(T * B, 1)
        dy = np.where(running, dy, 0).astype(dy.dtype, copy=False)
    return dy


def _reverse_time(a, batch_sizes):
    """a (T, B, ...), rows in the kernels' order (sorted longest first, batch_sizes[t] of them
    running at step t), with each sequence reversed within its own length: its own inverse.
    A cell made with reverse=True runs so, as the reverse half of a bidirectional torch layer
    (ONNX direction="reverse"): outputs in input time order, the final state the one after
    x[0]; Keras' go_backwards instead returns the outputs in reversed order."""
    T, B = a.shape[:2]
    lengths = (np.asarray(batch_sizes).reshape(1, T) > np.arange(B).reshape(B, 1)).sum(1)
    t = np.arange(T).reshape(T, 1)
    index = np.where(t < lengths, lengths - 1 - t, t)
    return np.ascontiguousarray(a[index, np.arange(B)])


def _sequence_layout(T, B, lengths, batch_sizes):
    """(batch_sizes, order) for a forward: sequences of `lengths` (B ints, any order) sorted
    longest first (order: the rows' permutation), or `batch_sizes` as given (order None), or
    all of length T. The checks and messages of NativeCell's `lengths`."""
    if lengths is None:
        return _batch_sizes(batch_sizes, T, B), None
    if batch_sizes is not None:
        raise ValueError("give lengths or batch_sizes, not both")
    lengths = _ints(lengths, B, "lengths")
    if B and (lengths.min() < 0 or lengths.max() > T):
        raise ValueError(f"lengths must lie in [0, {T}]")
    order = np.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[order]
    return np.array([(sorted_lengths > t).sum() for t in range(T)], np.int64), order


def _fraction_text(size, sizes):
    """The exact value of a size polynomial as text (3/2, -1), for a refusal's message."""
    from fractions import Fraction  # here, not at module level: see the module docstring

    total = Fraction(0)
    for term in size if not isinstance(size, int) else [[size, 1]]:
        value = Fraction(term[0], term[1])
        for name in term[2:]:
            value *= sizes[name]
        total += value
    return str(total)


# -- the step's input row of a cell that reads x[t-1] or noise masks (cellc/inputs.py) --------
# Parts are cellc.inputs.InputPart objects or the runtime spec's dicts of the same fields.


def _is_plain(parts) -> bool:
    """A cell that reads only its input: its row is x itself."""
    return len(parts) <= 1


def _check_rate(p: float, what: str) -> float:
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {p}")
    return p


def _part_rate(part, rates) -> float:
    r = part["rate"] if isinstance(part, dict) else part.rate
    what = r if isinstance(r, str) else f"the rate of {_part_field(part, 'kind')}"
    return _check_rate(rates[r] if isinstance(r, str) else r, what)  # as the layers name it


def _part_name(part) -> str:
    return part["name"] if isinstance(part, dict) else part.name


def _part_field(part, key):
    return part[key] if isinstance(part, dict) else getattr(part, key)


def _eval_mask_value(part, rates) -> float:
    """The mask a part takes with no noise (eval): dropout 1, zoneout p (the expectation)."""
    return _part_rate(part, rates) if _part_field(part, "kind") == "zoneout" else 1.0


def _row_numpy(parts, xs: np.ndarray, sizes: list[int], rates=None, noise=None) -> np.ndarray:
    """The row (T, B, sum of sizes) from xs (T, B, I): sizes gives each part's feature size;
    rates maps hyper-parameter names to values; noise maps a mask's name to an explicit array
    ((T, B, F), or (B, F) for a per=sequence dropout); a mask not given takes its eval value."""
    if _is_plain(parts):
        return xs
    rates, noise = dict(rates or {}), dict(noise or {})
    T, B = xs.shape[:2]
    cols = []
    for part, n in zip(parts, sizes):
        kind = _part_field(part, "kind")
        if kind == "input":
            cols.append(xs)
        elif kind == "previous":
            cols.append(np.concatenate([np.zeros_like(xs[:1]), xs[:-1]], axis=0))
        else:
            m = noise.pop(_part_name(part), None)
            if m is None:
                m = np.full((T, B, n), _eval_mask_value(part, rates), xs.dtype)
            m = np.asarray(m, xs.dtype)
            if m.ndim == 2:
                m = np.broadcast_to(m[None], (T, B, n))
            if m.shape != (T, B, n):
                raise ValueError(f"noise {_part_name(part)!r} must have shape {(T, B, n)}, got"
                                 f" {m.shape}")
            cols.append(m)
    if noise:
        masks = [_part_name(p) for p in parts if _part_field(p, "kind") in ("dropout", "zoneout")]
        raise ValueError(f"unknown noise {sorted(noise)}; the cell's masks are {masks}")
    return np.concatenate(cols, axis=2)


def _row_grad_numpy(parts, d_row: np.ndarray, sizes: list[int]) -> np.ndarray:
    """x's cotangent from the row's: d x = d part0 + shift_back(d x_prev); masks get none."""
    if _is_plain(parts):
        return d_row
    offsets = np.cumsum([0, *sizes])
    dx = d_row[:, :, offsets[0]:offsets[1]].copy()
    for k, part in enumerate(parts):
        if _part_field(part, "kind") == "previous":
            dp = d_row[:, :, offsets[k]:offsets[k + 1]]
            dx[:-1] += dp[1:]
    return dx
