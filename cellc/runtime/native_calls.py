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
     "args": [(name, shape spec), ...],          # in call order
     "results": [(kind, k, shape spec), ...],    # ("arg", k): args[k] itself; ("buf", k): buffer k
     "buffers": n,                               # result buffers, allocated here
     "workspace": [a, b, c]}                     # a*T*B + b*B + c (+1) scratch elements

A shape spec is a list whose first entry may be "TB" (T*B rows: a whole sequence, ordered
(t, b)) or "B" (one row per sequence), followed by fixed feature sizes. Buffers the kernel
writes are allocated here from these shapes, so no argument can make it read or write out of
bounds.
"""

import ctypes
import os

import numpy as np

# BLAS takes 32-bit sizes (scipy-openblas32, MKL's LP64 interface), and the products over whole
# sequences have T*B rows: more would wrap around.
_MAX_ROWS = 2**31 - 1

# Every kernel: (T, B, batch_sizes, args[], results[], workspace).
_SIGNATURE = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                              ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)


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


def _states(given, B, state_sizes, dtype, label, order=None):
    """One (B, size) array per (name, size) of state_sizes, in that order: given ones checked,
    missing ones zero; rows reordered by `order` when given. `label` names a state in errors
    ("state {name}", "d_states[{name}]")."""
    given = dict(given or {})
    out = []
    for name, size in state_sizes:
        v = given.pop(name, None)
        v = (np.zeros((B, size), dtype) if v is None
             else _array(v, label.format(name=repr(name)), (B, size), dtype))
        out.append(v if order is None else np.ascontiguousarray(v[order]))
    if given:
        raise ValueError(f"unknown states {sorted(given)};"
                         f" the cell has {[name for name, _ in state_sizes]}")
    return out


def _params(params, param_shapes, dtype):
    """The parameter arrays in the order of param_shapes ((name, shape) pairs), checked."""
    out = []
    for name, shape in param_shapes:
        if name not in params:
            raise ValueError(f"missing parameter {name!r}")
        out.append(_array(params[name], f"parameter {name!r}", tuple(shape), dtype))
    return out


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
    """The concrete shape of a shape spec (see the module docstring)."""
    return tuple(T * B if d == "TB" else B if d == "B" else d for d in spec)


def _kernel_batch_sizes(batch_sizes, T, B):
    """batch_sizes as the kernels read them: T int64s, non-increasing, each in [0, B]."""
    bs = np.ascontiguousarray(batch_sizes, dtype=np.int64)
    if bs.shape != (T,) or (T and (bs.min() < 0 or bs.max() > B or np.any(np.diff(bs) > 0))):
        raise ValueError(f"batch_sizes must be {T} non-increasing ints in [0, {B}]")
    return bs


def _run_kernel(fn, kernel, T, B, batch_sizes, args, arrays=_NUMPY, workspace=None):
    """Call fn (a `_SIGNATURE` function) as `kernel` (its data) on checked arrays; return its
    results, arguments handed back as they are. `workspace(n, arrays, like)` gives a scratch
    buffer of at least n elements (a fresh one when None)."""
    _check_rows(T, B)
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
    fn(T, B, bs.ctypes.data, ctypes.addressof(argv), ctypes.addressof(bufv), arrays.ptr(ws))
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

    def call(self, name, T, B, batch_sizes, args):
        """Run kernel `name` over T steps of B rows (checks as for Kernel.run)."""
        _check_rows(T, B)  # first, as in _run_kernel: T*B is refused whatever else is wrong
        kernel = self._kernels[name]
        fn = self._functions.get(name)
        if fn is None:  # resolved once per kernel
            address = ctypes.cast(getattr(self._lib, name), ctypes.c_void_p).value
            fn = self._functions[name] = _SIGNATURE(address)
        return _run_kernel(fn, kernel, T, B, batch_sizes, args)


class _LoadedCell:
    """The cell class of an AOT loader, which subclasses it with the cell's data as class
    attributes: `_library` (a `_Library`), `_kernel_prefix` (kernel names are
    <prefix>forward_f32 etc.), `_state_sizes` and `_param_shapes` ((name, size or shape)
    pairs), `_input_size` and `_output_size`.

    It takes what cellc's NativeCell takes, with the same checks and messages, except that
    sequences of different lengths are given as `batch_sizes` (sorted longest first)."""

    def __init__(self, dtype="float32"):
        self.dtype = _float_dtype(dtype)
        tag = "f32" if self.dtype == np.float32 else "f64"
        self._forward = self._kernel_prefix + "forward_" + tag
        self._backward = self._kernel_prefix + "backward_" + tag
        self._step = self._kernel_prefix + "step_" + tag

    def forward(self, xs, params, states=None, batch_sizes=None):
        """xs (T, B, I) -> (ys (T, B, out), {state: (B, H)}, tape)."""
        T, B = _sequence_shape(xs)
        xs = _array(xs, "xs", (T, B, self._input_size), self.dtype)
        bs = _batch_sizes(batch_sizes, T, B)
        args = [xs.reshape(T * B, self._input_size),
                *_states(states, B, self._state_sizes, self.dtype, "state {name}"),
                *_params(params, self._param_shapes, self.dtype)]
        out = self._library.call(self._forward, T, B, bs, args)
        n = len(self._state_sizes)
        outputs = _unshared(out[: n + 1])
        residuals = _unshared(out[n + 1 :], outputs)  # the tape's own
        ys = outputs[n].reshape(T, B, self._output_size)
        names = [name for name, _ in self._state_sizes]
        return ys, dict(zip(names, outputs[:n])), (residuals, T, B, bs)

    def backward(self, tape, d_ys=None, d_states=None):
        """Gradients of "xs", each initial state and each parameter."""
        residuals, T, B, bs = tape
        ys_shape = (T, B, self._output_size)
        d_ys = (np.zeros(ys_shape, self.dtype) if d_ys is None
                else _array(d_ys, "d_ys", ys_shape, self.dtype))
        seeds = _states(d_states, B, self._state_sizes, self.dtype, "d_states[{name}]")
        seeds.append(d_ys.reshape(T * B, self._output_size))
        grads = _unshared(self._library.call(self._backward, T, B, bs, list(residuals) + seeds))
        names = ["xs"] + [name for name, _ in self._state_sizes]
        out = dict(zip(names + [name for name, _ in self._param_shapes], grads))
        out["xs"] = out["xs"].reshape(T, B, self._input_size)
        return out

    def step(self, x, states, params):
        """One time step for a batch x (B, I): (y (B, out), {state: next value})."""
        B = _step_batch(x)
        args = [*_states(states, B, self._state_sizes, self.dtype, "state {name}"),
                _array(x, "x", (B, self._input_size), self.dtype),
                *_params(params, self._param_shapes, self.dtype)]
        out = _unshared(self._library.call(self._step, 1, B, np.array([B], np.int64), args))
        n = len(self._state_sizes)
        return out[n], dict(zip((name for name, _ in self._state_sizes), out[:n]))
