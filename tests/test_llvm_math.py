"""llvm_math: accuracy of each op against float64 NumPy, special values, and that loops vectorize.

The error measure is |y - ref| / max(|ref|, smallest normal): relative for normal results, and
for subnormal results measured against the smallest normal (an absolute error in the subnormal
range, where a float has fewer significant bits). A result equal to the reference rounded to the
dtype counts as exact (this covers overflow to inf and NaN == NaN).
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass, field

import numpy as np
import pytest

pytest.importorskip("llvmlite")

from llvmlite import ir

from cellc.backends import llvm_jit
from cellc.backends import llvm_math as lm
from cellc.backends.llvm_loops import for_range

# --- a JIT-compiled loop over one function, with the native backend's JIT (llvm_jit) ---------


def target_machine(cpu: str | None = None):
    """llvm_jit's target machine for this CPU, or one for `cpu` (e.g. "znver3") with its
    default features, to inspect what another CPU would get."""
    if cpu is None:
        return llvm_jit.target_machine()
    target = llvm_jit._llvm().Target.from_default_triple()
    return target.create_target_machine(cpu=cpu, features="", opt=3, codemodel="jitdefault")


def unary_loop_module(emit, ty: ir.Type, name: str = "f") -> ir.Module:
    """`void name(T* noalias x, T* noalias y, i64 n)`: y[i] = emit(x[i]) for i < n."""
    mod = ir.Module(name="llvm_math_" + name)
    ptr, i64 = ir.PointerType(), ir.IntType(64)
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [ptr, ptr, i64]), name=name)
    x, y, n = fn.args
    x.add_attribute("noalias")
    y.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    # Explicit alignment: a vector type's default (its size) would let LLVM emit aligned vector
    # moves, which fault on numpy's 16-byte-aligned buffers.
    align = 8 if lm._is64(ty) else 4
    with for_range(b, 0, n, head="loop", exit="done") as i:
        v = b.load(b.gep(x, [i], inbounds=True, source_etype=ty), typ=ty, align=align)
        b.store(emit(b, v), b.gep(y, [i], inbounds=True, source_etype=ty), align=align)
    b.ret_void()
    return mod


@dataclass
class UnaryKernel:
    """A JIT-compiled elementwise loop; call it on a contiguous array of its dtype."""

    dtype: np.dtype
    optimized_ir: str
    asm: str
    address: int
    width: int = 1  # elements per emitted value (1: scalar, 8: <8 x float>)
    _keep: list = field(default_factory=list, repr=False)  # engine + target machine

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=self.dtype)
        y = np.empty_like(x)
        if x.size % self.width:
            raise ValueError(f"size {x.size} is not a multiple of the width {self.width}")
        fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(self.address)
        fn(x.ctypes.data, y.ctypes.data, x.size // self.width)
        return y


_TYPES = {np.dtype(np.float32): lm.F32, np.dtype(np.float64): lm.F64}


def _optimized_module(emit, ty: ir.Type, tm):
    mod = llvm_jit._llvm().parse_assembly(str(unary_loop_module(emit, ty)))
    mod.triple = tm.triple
    mod.data_layout = str(tm.target_data)
    mod.verify()
    llvm_jit.optimize(mod, tm)
    return mod


def optimized_unary_ir(emit, dtype=np.float32, cpu: str | None = None) -> str:
    """The O3-optimized IR of the loop over `emit`, for the host or for a named cpu."""
    emit = lm.UNARY[emit] if isinstance(emit, str) else emit
    return str(_optimized_module(emit, _TYPES[np.dtype(dtype)], target_machine(cpu)))


def compile_unary(emit, dtype=np.float32, cpu: str | None = None, width: int = 1) -> UnaryKernel:
    """JIT `emit` (an llvm_math function or its name in UNARY) in a loop, MCJIT at O3.
    `width` > 1 applies `emit` to `<width x T>` values (the size must be a multiple of it)."""
    emit = lm.UNARY[emit] if isinstance(emit, str) else emit
    dtype = np.dtype(dtype)
    ty = _TYPES[dtype] if width == 1 else ir.VectorType(_TYPES[dtype], width)
    tm = target_machine(cpu)
    mod = _optimized_module(emit, ty, tm)
    optimized, asm = str(mod), tm.emit_assembly(mod)
    engine = llvm_jit._llvm().create_mcjit_compiler(mod, tm)
    engine.finalize_object()
    return UnaryKernel(dtype, optimized, asm, engine.get_function_address("f"), width, [engine, tm])


OPS = ["exp", "sigmoid", "tanh", "log", "softplus", "sqrt"]
TOL = {np.float32: 5e-7, np.float64: 1e-14}


def reference(op: str, x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    with np.errstate(all="ignore"):
        return {
            "exp": np.exp,
            "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
            "tanh": np.tanh,
            "log": np.log,
            "softplus": lambda v: np.logaddexp(0.0, v),
            "sqrt": np.sqrt,
        }[op](x)


def rel_error(y: np.ndarray, ref: np.ndarray, dtype) -> np.ndarray:
    y64 = y.astype(np.float64)
    with np.errstate(all="ignore"):
        exact = (y64 == ref.astype(dtype).astype(np.float64)) | (np.isnan(y64) & np.isnan(ref))
        e = np.abs(y64 - ref) / np.maximum(np.abs(ref), np.finfo(dtype).tiny)
    e[exact] = 0.0
    e[np.isnan(e)] = np.inf
    return e


def inputs(op: str, dtype) -> np.ndarray:
    if op in ("log", "sqrt"):
        lo, hi = (-45, 38) if dtype == np.float32 else (-320, 300)
        parts = [np.geomspace(10.0**lo, 10.0**hi, 200_001), np.linspace(0.25, 4.0, 100_001)]
    else:
        tiny = np.geomspace(1e-30, 1.0, 20_001)
        parts = [np.linspace(-100.0, 100.0, 400_001), tiny, -tiny, np.linspace(-1.0, 1.0, 20_001)]
    return np.concatenate(parts).astype(dtype)


@pytest.fixture(scope="module", params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


@pytest.mark.slow
@pytest.mark.parametrize("op", OPS)
def test_accuracy(op, dtype):
    x = inputs(op, dtype)
    y = compile_unary(op, dtype)(x)
    err = rel_error(y, reference(op, x), dtype)
    worst = int(err.argmax())
    assert err[worst] <= TOL[dtype], f"{op}({x[worst]!r}) = {y[worst]!r}, err {err[worst]:.3g}"


def test_sigmoid_very_negative_is_not_zero(dtype):
    # Where exp(-x) overflows, 1/(1+exp(-x)) is 0; the true value is e^x (subnormal at the end).
    x = np.array([-80.0, -87.0, -95.0, -100.0, -700.0, -740.0], dtype)
    y = compile_unary("sigmoid", dtype)(x)
    with np.errstate(under="ignore"):
        expected = np.exp(x.astype(np.float64))  # sigmoid(x) = e^x (1 - e^x + ...) here
    err = rel_error(y, expected, dtype)
    assert err.max() <= TOL[dtype], (y, expected)


INF, NAN = float("inf"), float("nan")
SPECIALS = {
    "exp": [(NAN, NAN), (INF, INF), (-INF, 0.0), (0.0, 1.0), (1000.0, INF), (-1000.0, 0.0)],
    "sigmoid": [(NAN, NAN), (INF, 1.0), (-INF, 0.0), (0.0, 0.5), (1000.0, 1.0), (-1000.0, 0.0)],
    "tanh": [(NAN, NAN), (INF, 1.0), (-INF, -1.0), (0.0, 0.0), (1000.0, 1.0), (-1000.0, -1.0)],
    "log": [(NAN, NAN), (INF, INF), (0.0, -INF), (-0.0, -INF), (-1.0, NAN), (1.0, 0.0)],
    "softplus": [(NAN, NAN), (INF, INF), (-INF, 0.0), (1000.0, 1000.0), (-1000.0, 0.0)],
    "sqrt": [(NAN, NAN), (INF, INF), (0.0, 0.0), (-1.0, NAN), (4.0, 2.0)],
}


@pytest.mark.parametrize("op", OPS)
def test_special_values(op, dtype):
    x, expected = (np.array(v, dtype) for v in zip(*SPECIALS[op]))
    y = compile_unary(op, dtype)(x)
    np.testing.assert_array_equal(y, expected)


def test_signed_zero_and_tiny(dtype):
    tiny = np.array([0.0, -0.0, 1e-30, -1e-30, 1e-40], dtype)
    assert np.array_equal(np.signbit(compile_unary("tanh", dtype)(tiny)), np.signbit(tiny))
    np.testing.assert_array_equal(compile_unary("tanh", dtype)(tiny), tiny)


@pytest.mark.parametrize("op", OPS)
def test_loop_vectorizes_8_wide_with_fma_on_avx2(op):
    """Compiled for Zen 3 (AVX2 + FMA, no AVX-512), the f32 loop runs on <8 x float>.

    Only the optimized IR is inspected, so this holds on any x86 host. (On an AVX-512 host the
    vectorizer may pick <16 x float>.)
    """
    text = optimized_unary_ir(op, np.float32, cpu="znver3")
    assert "<8 x float>" in text
    if op != "sqrt":
        assert "@llvm.fma.v8f32" in text
    called = set(re.findall(r"call [^@]*@([\w.$]+)\(", text))
    assert called and all(name.startswith("llvm.") for name in called), called


def test_host_code_uses_vector_fma():
    asm = compile_unary("sigmoid", np.float32).asm
    assert re.search(r"vfmadd\w*ps\s+.*%[yz]mm", asm), "no 256/512-bit FMA in the host code"
    assert not re.search(r"call\w*\s+\w*(exp|tanh)", asm)


@pytest.mark.parametrize("op", ["exp", "tanh", "log"])
def test_vector_operands_match_scalar(op, dtype):
    """The functions also accept <N x T> values; numpy buffers offset by one element."""
    x = np.linspace(0.01, 30.0, 1 + 64 * 8).astype(dtype)[1:]
    scalar = compile_unary(op, dtype)(x)
    np.testing.assert_array_equal(compile_unary(op, dtype, width=8)(x), scalar)


def test_intrinsic_declarations_are_explicit_and_shared():
    mod = ir.Module()
    fn = ir.Function(mod, ir.FunctionType(lm.F32, [lm.F32]), name="g")
    b = ir.IRBuilder(fn.append_basic_block())
    x = fn.args[0]
    b.ret(lm.fma(b, lm.tanh(b, lm.sigmoid(b, x)), x, x))
    text = str(mod)
    assert 'declare float @"llvm.fma.f32"(float %".1", float %".2", float %".3")' in text
    assert text.count('declare float @"llvm.fma.f32"') == 1  # one declaration, reused
    with pytest.raises(TypeError):
        lm.exp(b, ir.Constant(ir.IntType(32), 1))
    # llvmlite's declare_intrinsic("llvm.fma", [f64]) declares double(double): refuse to reuse it.
    mod.declare_intrinsic("llvm.fma", [lm.F64])
    with pytest.raises(TypeError, match="already declared"):
        lm.fma(b, *[ir.Constant(lm.F64, 1.0)] * 3)


# --- power: x ** p for a constant p ------------------------------------------------------------

POWERS = [0.0, 2.0, 3.0, -2.0, -3.0, 7.0, 33.0, -33.0, 1000.0, -1000.0, 1001.0, 0.5, -0.5, 1.5,
          -2.5, 0.3]


def power_inputs(dtype) -> np.ndarray:
    near_one = np.linspace(0.9, 1.1, 20_001)
    wide = np.geomspace(1e-30, 1e30, 20_001)
    x = np.concatenate([near_one, -near_one, wide, -wide, np.linspace(-100.0, 100.0, 20_001)])
    return x.astype(dtype)


@pytest.mark.slow
@pytest.mark.parametrize("p", POWERS)
def test_power_accuracy_with_negative_bases(p, dtype):
    """Integer p: correctly rounded nearly always, sign exact (compensated binary powering).
    Other p: float32 via double (about 0.5 ulp); double about (1 + |p log x|) ulp."""
    x = power_inputs(dtype)
    y = compile_unary(lambda b, v: lm.power(b, v, p), dtype)(x)
    with np.errstate(all="ignore"):
        ref = np.power(x.astype(np.float64), float(dtype(p)))  # p in x's precision, as NUMPY
    err = rel_error(y, ref, dtype)
    eps = np.finfo(dtype).eps
    tol = 1.5 * eps
    if dtype == np.float64 and not p.is_integer() and abs(p) != 0.5:
        with np.errstate(all="ignore"):
            tol = (2 + np.abs(p * np.log(np.abs(x.astype(np.float64))))) * eps
    worst = int(np.argmax(err / tol))
    assert np.all(err <= tol), f"{x[worst]!r}^{p} = {y[worst]!r}, err {err[worst]:.3g}"


POWER_SPECIALS = [  # (x, p, x ** p as C's pow and NumPy give it)
    (NAN, 0.0, 1.0), (-INF, 0.0, 1.0), (0.0, 0.0, 1.0), (-0.0, 0.0, 1.0),
    (-0.0, 3.0, -0.0), (-0.0, -3.0, -INF), (-0.0, -2.0, INF), (0.0, -1001.0, INF),
    (-INF, 3.0, -INF), (-INF, -3.0, -0.0), (-INF, 2.0, INF), (INF, -2.0, 0.0),
    (-2.0, 1024.0, INF), (-2.0, 1025.0, -INF), (-2.0, -1075.0, -0.0), (-2.0, -1074.0, 5e-324),
    (-0.0, -0.5, INF), (-INF, -0.5, 0.0), (-4.0, -0.5, NAN), (-0.0, 1.5, 0.0),
    (-INF, 1.5, INF), (-INF, -1.5, 0.0), (-1.0, 1.5, NAN), (NAN, 2.0, NAN), (-3.0, 1e20, INF),
]


@pytest.mark.slow
def test_power_special_values(dtype):
    for x, p, want in POWER_SPECIALS:
        y = compile_unary(lambda b, v, p=p: lm.power(b, v, p), dtype)(np.array([x], dtype))
        with np.errstate(all="ignore"):
            expected = np.array([want]).astype(dtype)
        assert np.array_equal(y, expected, equal_nan=True), (x, p, y)
        assert np.isnan(want) or np.signbit(y[0]) == np.signbit(want), (x, p, y)


@pytest.mark.parametrize("p", [3.0, -1000.0, 1.5])
def test_power_loop_vectorizes_on_avx2(p):
    """Integer powers run 8-wide; other float32 powers work in double, 4 lanes per register."""
    text = optimized_unary_ir(lambda b, v: lm.power(b, v, p), np.float32, cpu="znver3")
    assert ("<8 x float>" if p.is_integer() else "<4 x double>") in text
    called = set(re.findall(r"call [^@]*@([\w.$]+)\(", text))
    assert all(name.startswith("llvm.") for name in called), called
