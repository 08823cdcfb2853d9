"""Elementwise transcendentals written as straight-line LLVM IR, so loops of them vectorize.

A call to `expf` or `tanhf` inside a loop stops LLVM's loop vectorizer (or makes it scalarize
into eight libm calls per vector), and llvmlite 0.50 has no vector math library. So each function
here emits, with an `ir.IRBuilder`, plain IR for one element: `fmul`/`fadd`/`fdiv`, `llvm.fma`
for every polynomial step, `select` instead of branches, integer ops on the float's bits for
exponent tricks, and only intrinsics that have vector forms (`fma`, `fabs`, `copysign`,
`roundeven`, `sqrt`). A loop of them becomes 8-wide AVX2+FMA code (4-wide for double; 16/8 with
AVX-512).

Every function takes the builder and a `float` or `double` value (or a vector of them) and
dispatches on `x.type`. No fast-math flags are used: the code relies on the exact rounding of each
operation (range reductions with a split ln2, exact `w - 1` in log1p, the magic-number exponent
trick), which `reassoc`/`contract` would break.

    exp       Cephes: n = roundeven(x*log2e), r = x - n*ln2 (hi+lo, fma), e^r by a degree-7
              polynomial (f32) or the Cephes Pade form 1 + 2rP(r^2)/(Q(r^2) - rP(r^2)) (f64),
              times 2^n applied as two factors 2^n1 * 2^n2 so that results near overflow and
              subnormal results are rounded once, correctly.
    sigmoid   e = exp(-|x|); 1/(1+e) for x >= 0, e/(1+e) for x < 0. No overflow, no cancellation,
              full relative accuracy for very negative x (down into the subnormals).
    tanh      Cephes: |x| < 0.625: x + x^3 P(x^2) (f32) or x + x^3 P(x^2)/Q(x^2) (f64), accurate
              near 0; else (1-e)/(1+e) with e = exp(-2|x|); copysign restores the sign.
    log       frexp by bit tricks into m in [sqrt(1/2), sqrt(2)), f = m - 1; Cephes logf
              polynomial (f32), fdlibm s = f/(2+f) form (f64). Subnormals are prescaled;
              log(0) = -inf, log(inf) = inf, log(x<0) = NaN.
    softplus  max(x, 0) + log1p(exp(-|x|)), log1p(u) = log(w) - ((w-1)-u)/w with w = 1+u.
    sqrt      llvm.sqrt.
    power     x**p for a constant p (`power`, not in UNARY: it takes p). Integer p: unrolled
              binary powering on hi+lo pairs (double-double products by fma), exact in sign,
              correctly rounded nearly always, for any |p| up to 2^24 (f32) / 2^53 (f64);
              x**0 = 1. Other p: exp(p*log|x|), NaN for finite x < 0, in double for float32.
    pow_values  x**y of two values (the `power` op): exp(y*log|x|) with C pow's signs and
              special values, in double for float32.
    expm1     Kahan's (u - 1) * x / log(u), u = exp(x): full relative accuracy near 0.
    erf       fdlibm's four ranges (rational approximations, erfc via two exps), each computed
              and one selected; float32 computes in double. gelu = x (1 + erf(x/sqrt 2))/2 in
              torch's order (so it cancels for x << 0 as torch's does), float32 in double.
    elu, silu, logsigmoid   expm1 (x <= 0), x*sigmoid(x), -softplus(-x).

Special values: NaN propagates through every function; exp(-inf) = 0, exp(+inf) = inf,
sigmoid(+-inf) = 1/0, tanh(+-inf) = +-1, softplus(-inf) = 0, softplus(inf) = inf.

Measured max relative error. float32: against float64 NumPy on the same float32 inputs, over the
grid of tests/test_llvm_math.py (x in [-100, 100] dense, +-1e-30..1, log over 1e-45..1e38 and
0.25..4). float64: against mpmath at 50 digits on 25K random points of the same ranges (1e-320..
1e300 for log), and against float64 NumPy on the test grid (NumPy's own error included). For
subnormal results the error is divided by the smallest normal number instead of |reference|.
"ulp" is the relative error in units of eps (2^-23 resp. 2^-52).

    op        float32 vs NumPy    float64 vs mpmath   float64 vs NumPy
    exp       8.9e-08 (0.74 ulp)  2.2e-16 (0.99 ulp)  3.1e-16 (1.41 ulp)
    sigmoid   1.7e-07 (1.44 ulp)  3.6e-16 (1.63 ulp)  4.6e-16 (2.06 ulp)
    tanh      1.5e-07 (1.23 ulp)  2.2e-16 (1.00 ulp)  4.0e-16 (1.78 ulp)
    log       8.7e-08 (0.73 ulp)  2.2e-16 (1.00 ulp)  2.2e-16 (1.00 ulp)
    softplus  1.7e-07 (1.40 ulp)  3.6e-16 (1.63 ulp)  4.4e-16 (1.98 ulp)
    erf       exact (via double)  --                  2.2e-16 (1.00 ulp) vs math.erf
    expm1     1.7e-07 (1.41 ulp)  --                  3.8e-16 (1.73 ulp)
    sqrt      correctly rounded (llvm.sqrt)

Speed, ns/element over 64K float32 elements in cache, one core of an AMD EPYC (Zen 5), code for
`cpu="znver3"` (AVX2 + FMA, 8-wide) / for the host (AVX-512, 16-wide); NumPy without / with its
AVX-512 kernels:

    op        llvm znver3   llvm host   NumPy (AVX2)   NumPy (AVX-512)
    exp       0.32          0.17        0.55           0.34
    sigmoid   0.43          0.22        0.79           0.54   (1/(1+np.exp(-x)))
    tanh      0.60          0.31        0.93           0.17
    log       0.52          0.28        0.78           0.25
    softplus  1.17          0.59        11.9           11.8   (np.logaddexp(0, x))

float64 costs about 2.5x float32 (half the lanes, and the Pade/rational forms divide).

This module only emits IR; it imports nothing else of cellc's backends (tests/test_llvm_math.py
JIT-compiles a loop over one function with llvm_jit to measure it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from llvmlite import ir

F32 = ir.FloatType()
F64 = ir.DoubleType()

Emit = Callable[[ir.IRBuilder, ir.Value], ir.Value]


# --- types, constants and intrinsics ---------------------------------------------------------


def _elem(ty: ir.Type) -> ir.Type:
    """The scalar type of a scalar or vector type; only float and double are accepted."""
    el = ty.element if isinstance(ty, ir.VectorType) else ty
    if not isinstance(el, (ir.FloatType, ir.DoubleType)):
        raise TypeError(f"llvm_math works on float or double (or vectors of them), not {ty}")
    return el


def _is64(ty: ir.Type) -> bool:
    return isinstance(_elem(ty), ir.DoubleType)


def _int_type(ty: ir.Type) -> ir.Type:
    """The same-width integer type: float -> i32, <8 x double> -> <8 x i64>."""
    it = ir.IntType(64 if _is64(ty) else 32)
    return ir.VectorType(it, ty.count) if isinstance(ty, ir.VectorType) else it


def _const(ty: ir.Type, value: float) -> ir.Constant:
    """A scalar constant, or a splat when ty is a vector type."""
    if isinstance(ty, ir.VectorType):
        return ir.Constant(ty, [ir.Constant(ty.element, value)] * ty.count)
    return ir.Constant(ty, value)


def _mangle(ty: ir.Type) -> str:
    if isinstance(ty, ir.VectorType):
        return f"v{ty.count}{_mangle(ty.element)}"
    return {"float": "f32", "double": "f64"}[str(ty)]


def _intrinsic(b: ir.IRBuilder, name: str, ty: ir.Type, nargs: int) -> ir.Function:
    """Declare (once per module) an overloaded float intrinsic of type ty(ty, ..., ty).

    The function type is always given explicitly: llvmlite's declare_intrinsic derives a wrong
    one for llvm.fma/minnum/maxnum/copysign from a single overload type.
    """
    module = b.module
    full = f"{name}.{_mangle(ty)}"
    fnty = ir.FunctionType(ty, [ty] * nargs)
    fn = module.globals.get(full)
    if fn is None:
        fn = ir.Function(module, fnty, name=full)
    elif fn.function_type != fnty:
        raise TypeError(f"{full} is already declared as {fn.function_type}, expected {fnty}")
    return fn


def fma(b: ir.IRBuilder, x: ir.Value, y: ir.Value, z: ir.Value) -> ir.Value:
    """x*y + z with one rounding (llvm.fma; a vfmadd instruction on this target)."""
    return b.call(_intrinsic(b, "llvm.fma", x.type, 3), [x, y, z])


def fabs(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    return b.call(_intrinsic(b, "llvm.fabs", x.type, 1), [x])


def copysign(b: ir.IRBuilder, mag: ir.Value, sign: ir.Value) -> ir.Value:
    return b.call(_intrinsic(b, "llvm.copysign", mag.type, 2), [mag, sign])


def sqrt(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """Correctly rounded square root (llvm.sqrt; vsqrtps/vsqrtpd), NaN for x < 0."""
    return b.call(_intrinsic(b, "llvm.sqrt", x.type, 1), [x])


def _roundeven(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    return b.call(_intrinsic(b, "llvm.roundeven", x.type, 1), [x])


def _horner(b: ir.IRBuilder, x: ir.Value, coeffs: list[float]) -> ir.Value:
    """coeffs[0]*x^d + ... + coeffs[d], one fma per degree."""
    acc = _const(x.type, coeffs[0])
    for c in coeffs[1:]:
        acc = fma(b, acc, x, _const(x.type, c))
    return acc


def _select_lt(b, x, bound, value):
    """x < bound ? value : x. An ordered compare, so a NaN x is kept (minnum would drop it)."""
    return b.select(b.fcmp_ordered("<", x, bound), value, x)


def _select_gt(b, x, bound, value):
    return b.select(b.fcmp_ordered(">", x, bound), value, x)


# --- exp -------------------------------------------------------------------------------------

LOG2E = 1.4426950408889634

# float32 (Cephes expf). ln2 = C1 + C2 with C1 exact in 9 bits, so n*C1 is exact for |n| < 2^15.
_EXP32_LN2_HI = 0.693359375
_EXP32_LN2_LO = -2.12194440e-4
_EXP32_P = [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
            1.6666665459e-1, 5.0000001201e-1]  # fmt: skip
# Beyond these bounds exp is inf resp. 0 after rounding; they keep n and n1, n2 in range.
_EXP32_HI, _EXP32_LO = 89.0, -104.0

# float64 (Cephes exp; fdlibm's ln2 split: ln2_hi has 32 trailing zero bits).
_EXP64_LN2_HI = 6.93147180369123816490e-01
_EXP64_LN2_LO = 1.90821492927058770002e-10
_EXP64_P = [1.26177193074810590878e-4, 3.02994407707441961300e-2, 9.99999999999999999910e-1]
_EXP64_Q = [3.00198505138664455042e-6, 2.52448340349684104192e-3, 2.27265548208155028766e-1,
            2.00000000000000000009e0]  # fmt: skip
_EXP64_HI, _EXP64_LO = 710.0, -746.0


def _pow2(b: ir.IRBuilder, k: ir.Value) -> ir.Value:
    """2**k for an integral float k with a normal result, by building the exponent bits.

    k + (2^23 + 127) is exact and has k + 127 in its low mantissa bits; shifting left by the
    mantissa width moves them into the exponent field and pushes everything else out. The same
    with 2^52 + 1023 for double. This avoids fptosi, which AVX2 lacks for double -> i64.
    """
    ty = k.type
    mbits, bias = (52, 1023) if _is64(ty) else (23, 127)
    j = b.fadd(k, _const(ty, float(2**mbits + bias)))
    bits = b.shl(b.bitcast(j, _int_type(ty)), _const(_int_type(ty), mbits))
    return b.bitcast(bits, ty)


def _exp_reduced(b: ir.IRBuilder, r: ir.Value) -> ir.Value:
    """e^r for |r| <= ln2/2 (a little more is fine)."""
    ty = r.type
    if _is64(ty):
        rr = b.fmul(r, r)
        px = b.fmul(r, _horner(b, rr, _EXP64_P))
        q = _horner(b, rr, _EXP64_Q)
        t = b.fdiv(px, b.fsub(q, px))
        return fma(b, _const(ty, 2.0), t, _const(ty, 1.0))
    rr = b.fmul(r, r)
    p = _horner(b, r, _EXP32_P)
    return b.fadd(fma(b, p, rr, r), _const(ty, 1.0))


def exp(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """e**x for float/double x; inf above ~88.7 (709.8), 0 below ~-103.9 (-745.1)."""
    ty = x.type
    hi, lo, ln2_hi, ln2_lo = (
        (_EXP64_HI, _EXP64_LO, _EXP64_LN2_HI, _EXP64_LN2_LO)
        if _is64(ty)
        else (_EXP32_HI, _EXP32_LO, _EXP32_LN2_HI, _EXP32_LN2_LO)
    )
    x = _select_gt(b, x, _const(ty, hi), _const(ty, hi))
    x = _select_lt(b, x, _const(ty, lo), _const(ty, lo))
    n = _roundeven(b, b.fmul(x, _const(ty, LOG2E)))
    r = fma(b, n, _const(ty, -ln2_hi), x)
    r = fma(b, n, _const(ty, -ln2_lo), r)
    p = _exp_reduced(b, r)
    # 2^n as 2^n1 * 2^n2: n itself may leave the normal exponent range at both ends. p * 2^n1 is
    # exact, so the one rounding happens in the last product (to inf or to a subnormal).
    n1 = _roundeven(b, b.fmul(n, _const(ty, 0.5)))
    n2 = b.fsub(n, n1)
    return b.fmul(b.fmul(p, _pow2(b, n1)), _pow2(b, n2))


def _exp_nonpositive_normal(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """e**x for x <= 0 (or NaN), with x below -87 (-708 for double) taken as -87: the result
    is always normal, so 2^n is one exact factor (exp's two are for results near overflow
    and in the subnormals). For callers that do not need e**x below that."""
    ty = x.type
    lo, ln2_hi, ln2_lo = ((-708.0, _EXP64_LN2_HI, _EXP64_LN2_LO) if _is64(ty)
                          else (-87.0, _EXP32_LN2_HI, _EXP32_LN2_LO))
    x = _select_lt(b, x, _const(ty, lo), _const(ty, lo))
    n = _roundeven(b, b.fmul(x, _const(ty, LOG2E)))
    r = fma(b, n, _const(ty, -ln2_hi), x)
    r = fma(b, n, _const(ty, -ln2_lo), r)
    return b.fmul(_exp_reduced(b, r), _pow2(b, n))


# --- sigmoid, tanh ---------------------------------------------------------------------------


def sigmoid(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """1/(1+e^-x), from e = exp(-|x|) in (0, 1]: 1/(1+e) for x >= 0, e/(1+e) for x < 0."""
    ty = x.type
    e = exp(b, b.fneg(fabs(b, x)))
    num = b.select(b.fcmp_ordered("<", x, _const(ty, 0.0)), e, _const(ty, 1.0))
    return b.fdiv(num, b.fadd(e, _const(ty, 1.0)))


# Cephes tanhf / tanh, the branch for |x| < 0.625.
_TANH32_P = [-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1,
             -3.33332819422e-1]  # fmt: skip
_TANH64_P = [-9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3]
_TANH64_Q = [1.0, 1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3]


def tanh(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """tanh(x): a small-|x| polynomial/rational (no cancellation near 0), else via exp.

    Both halves are computed and one is selected, to stay branch-free.
    """
    ty = x.type
    ax = fabs(b, x)
    z = b.fmul(ax, ax)
    if _is64(ty):
        pq = b.fdiv(_horner(b, z, _TANH64_P), _horner(b, z, _TANH64_Q))
        small = fma(b, b.fmul(ax, z), pq, ax)
    else:
        small = fma(b, b.fmul(ax, z), _horner(b, z, _TANH32_P), ax)
    # |x| >= 0.625: tanh = (1-e)/(1+e), e = e^(-2|x|) <= 0.29, so 1 - e does not cancel.
    # Below e^-87 (resp. e^-708) tanh rounds to 1 anyway: e stays normal, one scaling.
    e = _exp_nonpositive_normal(b, b.fmul(ax, _const(ty, -2.0)))
    one = _const(ty, 1.0)
    large = b.fdiv(b.fsub(one, e), b.fadd(one, e))
    # An unordered compare sends NaN to `large`, where it propagates through exp.
    t = b.select(b.fcmp_ordered("<", ax, _const(ty, 0.625)), small, large)
    return copysign(b, t, x)


# --- log, softplus ---------------------------------------------------------------------------

_SQRT_HALF_BITS32 = 0x3F3504F3  # bits of sqrt(1/2) rounded
_SQRT_HALF_BITS64 = 0x3FE6A09E00000000  # fdlibm: the high word of sqrt(1/2)
# Cephes logf: log(1+f) = f - f^2/2 + f^3 P(f) on [sqrt(1/2)-1, sqrt(2)-1].
_LOG32_P = [7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
            1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
            3.3333331174e-1]  # fmt: skip
# fdlibm e_log.c: log(1+f) = 2s + s*R(s^2), s = f/(2+f).
_LG = [6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01,
       2.222219843214978396e-01, 1.818357216161805012e-01, 1.531383769920937332e-01,
       1.479819860511658591e-01]  # fmt: skip


def _frexp(b: ir.IRBuilder, x: ir.Value) -> tuple[ir.Value, ir.Value]:
    """(k, f) with x = 2^k (1+f), 1+f in [sqrt(1/2), sqrt(2)), k as an integral float.

    For positive, normal, finite x. Adding (one - sqrt(1/2)) bits carries into the exponent
    exactly when the mantissa is >= sqrt(1/2)'s, as in musl's logf/log.
    """
    ty = x.type
    it = _int_type(ty)
    if _is64(ty):
        one_bits, half_bits, mbits, mmask = 0x3FF0000000000000, _SQRT_HALF_BITS64, 52, 2**52 - 1
    else:
        one_bits, half_bits, mbits, mmask = 0x3F800000, _SQRT_HALF_BITS32, 23, 2**23 - 1
    ix = b.add(b.bitcast(x, it), _const(it, one_bits - half_bits))
    ebits = b.lshr(ix, _const(it, mbits))  # biased exponent, in [0, 2047]
    if _is64(ty):
        # i64 -> double without fptosi (no AVX2 instruction): 2^52 + e is exact, then subtract.
        big = b.bitcast(b.or_(ebits, _const(it, 0x4330000000000000)), ty)
        k = b.fsub(big, _const(ty, float(2**52 + 1023)))
    else:
        k = b.fsub(b.sitofp(ebits, ty), _const(ty, 127.0))
    m = b.bitcast(b.add(b.and_(ix, _const(it, mmask)), _const(it, half_bits)), ty)
    return k, b.fsub(m, _const(ty, 1.0))


def _log_finite(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """log(x) for positive normal finite x."""
    ty = x.type
    k, f = _frexp(b, x)
    if _is64(ty):
        s = b.fdiv(f, b.fadd(f, _const(ty, 2.0)))
        z = b.fmul(s, s)
        w = b.fmul(z, z)
        t1 = b.fmul(w, _horner(b, w, [_LG[5], _LG[3], _LG[1]]))
        t2 = b.fmul(z, _horner(b, w, [_LG[6], _LG[4], _LG[2], _LG[0]]))
        r = b.fadd(t2, t1)
        hfsq = b.fmul(b.fmul(f, f), _const(ty, 0.5))
        # k*ln2_hi - ((hfsq - (s*(hfsq+R) + k*ln2_lo)) - f), fdlibm's order of operations.
        inner = fma(b, s, b.fadd(hfsq, r), b.fmul(k, _const(ty, _EXP64_LN2_LO)))
        return b.fsub(b.fmul(k, _const(ty, _EXP64_LN2_HI)), b.fsub(b.fsub(hfsq, inner), f))
    z = b.fmul(f, f)
    y = b.fmul(b.fmul(_horner(b, f, _LOG32_P), f), z)
    y = fma(b, k, _const(ty, _EXP32_LN2_LO), y)
    y = fma(b, z, _const(ty, -0.5), y)
    return fma(b, k, _const(ty, _EXP32_LN2_HI), b.fadd(f, y))


def log(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """Natural log; subnormal x is prescaled; log(0) = -inf, log(inf) = inf, log(x<0) = NaN."""
    ty = x.type
    tiny, scale, shift = (2.0**-1022, 2.0**54, 54.0) if _is64(ty) else (2.0**-126, 2.0**24, 24.0)
    is_sub = b.fcmp_ordered("<", x, _const(ty, tiny))
    xs = b.select(is_sub, b.fmul(x, _const(ty, scale)), x)
    y = _log_finite(b, xs)
    y = b.fsub(y, b.select(is_sub, _const(ty, shift * 0.6931471805599453), _const(ty, 0.0)))
    y = b.select(b.fcmp_ordered("==", x, _const(ty, float("inf"))), x, y)
    y = b.select(b.fcmp_ordered("==", x, _const(ty, 0.0)), _const(ty, float("-inf")), y)
    # Unordered: true for NaN as well as for x < 0.
    return b.select(b.fcmp_unordered("<", x, _const(ty, 0.0)), _const(ty, float("nan")), y)


def _log1p_unit(b: ir.IRBuilder, u: ir.Value) -> ir.Value:
    """log(1+u) for u in [0, 1] (or NaN), to full relative accuracy as u -> 0.

    w = 1 + u rounds; c = (w - 1) - u is exactly that rounding error, and
    log(1+u) = log(w - c) ~ log(w) - c/w. When w == 1, this is u.
    """
    one = _const(u.type, 1.0)
    w = b.fadd(u, one)
    c = b.fsub(b.fsub(w, one), u)
    return b.fsub(_log_finite(b, w), b.fdiv(c, w))


def softplus(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|): no overflow, exact e^x tail for x -> -inf."""
    ty = x.type
    e = exp(b, b.fneg(fabs(b, x)))
    zero = _const(ty, 0.0)
    pos = b.select(b.fcmp_ordered(">", x, zero), x, zero)
    return b.fadd(pos, _log1p_unit(b, e))


# --- pow ------------------------------------------------------------------------------------


def _finite(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """|x| < inf, false for NaN."""
    return b.fcmp_ordered("<", fabs(b, x), _const(x.type, float("inf")))


def _mul2(b: ir.IRBuilder, a: tuple, c: tuple) -> tuple[ir.Value, ir.Value]:
    """(a_hi + a_lo) * (c_hi + c_lo) as a pair hi + lo with |lo| <= ulp(hi)/2.

    The rounding error of a_hi*c_hi is exact as fma(a_hi, c_hi, -p); the cross terms add the
    errors carried in; a_lo*c_lo is below the precision kept. Then hi = p + e, and lo is what
    that sum rounded away (Fast2Sum, valid since |e| << |p|). Double-double multiplication.
    """
    (ah, al), (ch, cl) = a, c
    p = b.fmul(ah, ch)
    e = b.fadd(fma(b, ah, ch, b.fneg(p)), fma(b, ah, cl, b.fmul(al, ch)))
    hi = b.fadd(p, e)
    return hi, b.fsub(e, b.fsub(hi, p))


def powi(b: ir.IRBuilder, x: ir.Value, n: int) -> ir.Value:
    """x**n for a constant integer n: binary powering, unrolled, with every product's rounding
    error carried along, so that the result is the correctly rounded x**n nearly always.

    Plain repeated squaring would be exact in sign but loses about log2|n| bits: the relative
    error doubles with each squaring (x**1000 in float32 would be off by ~1000 ulp). Carried as
    hi + lo pairs the error is about |n|*eps^2, below half an ulp for |n| up to 1/eps. For n < 0
    the base is the pair 1/x (lo from the exact residual fma(-x, 1/x, 1)), so that x**-n is not
    lost where x**n overflows.

    Special values (0, inf, NaN, overflow, underflow) come from the plain product chain, which
    has them right, sign of zero included: the pairs there hold NaN (inf - inf) or lose the sign.
    x**0 is 1 for every x, NaN included, as in NumPy and C's pow.
    """
    ty = x.type
    one, zero = _const(ty, 1.0), _const(ty, 0.0)
    if n == 0:
        return one
    if n == 1:
        return x
    if n == -1:
        return b.fdiv(one, x)
    if n == 2:  # one rounding already
        return b.fmul(x, x)
    if n > 0:
        base = (x, zero)
    else:
        r = b.fdiv(one, x)
        base = (r, b.fdiv(fma(b, b.fneg(x), r, one), x))
    acc, plain = base, base[0]
    for bit in bin(abs(n))[3:]:  # the bits after the leading one, most significant first
        acc, plain = _mul2(b, acc, acc), b.fmul(plain, plain)
        if bit == "1":
            acc, plain = _mul2(b, acc, base), b.fmul(plain, base[0])
    ok = b.and_(_finite(b, acc[0]), b.fcmp_ordered("!=", plain, zero))
    return b.select(ok, acc[0], plain)


def power(b: ir.IRBuilder, x: ir.Value, p: float) -> ir.Value:
    """x**p for a constant p, as NumPy's `x ** dtype(p)` (C's pow) gives it.

    p is first rounded to x's precision, as the NumPy reference does. Integral p up to 2^24
    (float) or 2^53 (double) goes to `powi` (above those bounds every value is an even
    integer); p = 0.5 is sqrt (NumPy's own shortcut: sqrt(-0) = -0); p = -0.5 is 1/sqrt(x + 0)
    (+0 turns -0 into +0: pow(-0, -0.5) = +inf). Other p: exp(p*log|x|), NaN for finite x < 0.
    float32 computes that in double and rounds once, so it is correctly rounded nearly always;
    double keeps about (1 + |p*log x|) ulp (the rounding of p*log x scales by the result).
    """
    ty = x.type
    wide = _is64(ty)
    p = float(p) if wide else float(np.float32(p))
    if p.is_integer() and abs(p) <= 2.0 ** (53 if wide else 24):
        return powi(b, x, int(p))
    if p == 0.5:
        return sqrt(b, x)
    minus_inf = _const(ty, float("-inf"))
    if p == -0.5:
        y = b.fdiv(_const(ty, 1.0), sqrt(b, b.fadd(x, _const(ty, 0.0))))
        return b.select(b.fcmp_ordered("==", x, minus_inf), _const(ty, 0.0), y)
    if wide:
        xw = x
    else:
        wty = ir.VectorType(F64, ty.count) if isinstance(ty, ir.VectorType) else F64
        xw = b.fpext(x, wty)
    y = exp(b, b.fmul(_const(xw.type, p), log(b, fabs(b, xw))))
    y = y if wide else b.fptrunc(y, ty)
    if not p.is_integer():  # a negative base has no real non-integral power; -inf and -0 do
        negative = b.and_(b.fcmp_ordered("<", x, _const(ty, 0.0)),
                          b.fcmp_ordered("!=", x, minus_inf))
        y = b.select(negative, _const(ty, float("nan")), y)
    return y


def _widened(fn: Emit) -> Emit:
    """fn computed in double for float (rounded once at the end), as it is for double."""
    def emit(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
        if _is64(x.type):
            return fn(b, x)
        return b.fptrunc(fn(b, b.fpext(x, _wide_type(x.type))), x.type)

    emit.__doc__ = fn.__doc__
    return emit


def _wide_type(ty: ir.Type) -> ir.Type:
    return ir.VectorType(F64, ty.count) if isinstance(ty, ir.VectorType) else F64


def pow_values(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    """x**y elementwise, both values (the `power` op), with C's pow's special values.

    |x|**y = exp(y*log|x|), in double for float32 (then correctly rounded nearly always; double
    keeps about (1 + |y log x|) ulp, as `power` does for a non-integral constant). The sign is
    x's for an odd integral y (copysign: -0 and -inf too); a finite x < 0 with a non-integral y
    gives NaN. x**0 = 1 and 1**y = 1 for every x, y (NaN included); (-1)**+-inf = 1.
    """
    ty = x.type
    if not _is64(ty):
        wide = _wide_type(ty)
        return b.fptrunc(pow_values(b, b.fpext(x, wide), b.fpext(y, wide)), ty)
    zero, one, inf = _const(ty, 0.0), _const(ty, 1.0), _const(ty, float("inf"))
    ax = fabs(b, x)
    r = exp(b, b.fmul(y, log(b, ax)))
    integral = b.fcmp_ordered("==", _roundeven(b, y), y)  # +-inf count as (even) integers
    half = b.fmul(y, _const(ty, 0.5))
    odd = b.and_(integral, b.fcmp_ordered("!=", _roundeven(b, half), half))
    r = b.select(odd, copysign(b, r, x), r)
    negative = b.and_(b.fcmp_ordered("<", x, zero), b.fcmp_ordered("!=", x, b.fneg(inf)))
    r = b.select(b.and_(negative, b.not_(integral)), _const(ty, float("nan")), r)
    minus_one_inf = b.and_(b.fcmp_ordered("==", ax, one),
                           b.fcmp_ordered("==", fabs(b, y), inf))
    ones = b.or_(b.or_(b.fcmp_ordered("==", y, zero), b.fcmp_ordered("==", x, one)),
                 minus_one_inf)
    return b.select(ones, one, r)


# --- expm1, erf and the activations built on them ----------------------------------------


def expm1(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """e**x - 1 to full relative accuracy near 0, by Kahan's trick: with u = exp(x) rounded,
    (u - 1) * x / log(u) cancels the rounding error of u (u - 1 and log(u) are exact-ish
    functions of the same u). u == 1 gives x, u - 1 == -1 gives -1, u == inf gives inf."""
    ty = x.type
    one = _const(ty, 1.0)
    u = exp(b, x)
    um1 = b.fsub(u, one)
    y = b.fdiv(b.fmul(um1, x), log(b, u))
    y = b.select(b.fcmp_ordered("==", u, one), x, y)
    y = b.select(b.fcmp_ordered("==", um1, _const(ty, -1.0)), _const(ty, -1.0), y)
    return b.select(b.fcmp_ordered("==", u, _const(ty, float("inf"))), u, y)


# fdlibm s_erf.c (as in musl and FreeBSD): erf(x) = x + x R(x^2) on [0, 0.84375];
# erx + P1(s)/Q1(s), s = |x| - 1, on [0.84375, 1.25]; 1 - exp(-x^2 - 0.5625 + R/S)/x with R/S
# rational in 1/x^2 on [1.25, 1/0.35] and [1/0.35, 6]; 1 beyond 6.
_ERX = 8.45062911510467529297e-01
_ERF_PP = [-2.37630166566501626084e-05, -5.77027029648944159157e-03,
           -2.84817495755985104766e-02, -3.25042107247001499370e-01,
           1.28379167095512558561e-01]  # fmt: skip
_ERF_QQ = [-3.96022827877536812320e-06, 1.32494738004321644526e-04, 5.08130628187576562776e-03,
           6.50222499887672944485e-02, 3.97917223959155352819e-01, 1.0]  # fmt: skip
_ERF_PA = [-2.16637559486879084300e-03, 3.54783043256182359371e-02, -1.10894694282396677476e-01,
           3.18346619901161753674e-01, -3.72207876035701323847e-01, 4.14856118683748331666e-01,
           -2.36211856075265944077e-03]  # fmt: skip
_ERF_QA = [1.19844998467991074170e-02, 1.36370839120290507362e-02, 1.26171219808761642112e-01,
           7.18286544141962662868e-02, 5.40397917702171048937e-01, 1.06420880400844228286e-01,
           1.0]  # fmt: skip
_ERF_RA = [-9.81432934416914548592e+00, -8.12874355063065934246e+01,
           -1.84605092906711035994e+02, -1.62396669462573470355e+02,
           -6.23753324503260060396e+01, -1.05586262253232909814e+01,
           -6.93858572707181764372e-01, -9.86494403484714822705e-03]  # fmt: skip
_ERF_SA = [-6.04244152148580987438e-02, 6.57024977031928170135e+00, 1.08635005541779435134e+02,
           4.29008140027567833386e+02, 6.45387271733267880336e+02, 4.34565877475229228821e+02,
           1.37657754143519042600e+02, 1.96512716674392571292e+01, 1.0]  # fmt: skip
_ERF_RB = [-4.83519191608651397019e+02, -1.02509513161107724954e+03,
           -6.37566443368389627722e+02, -1.60636384855821916062e+02,
           -1.77579549177547519889e+01, -7.99283237680523006574e-01,
           -9.86494292470009928597e-03]  # fmt: skip
_ERF_SB = [-2.24409524465858183362e+01, 4.74528541206955367215e+02, 2.55305040643316442583e+03,
           3.19985821950859553908e+03, 1.53672958608443695994e+03, 3.25792512996573918826e+02,
           3.03380607434824582924e+01, 1.0]  # fmt: skip
_ERF_AB = float(np.frombuffer(np.uint64(0x4006DB6E00000000).tobytes(), np.float64)[0])  # ~1/0.35


def _erf64(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """erf for double: the four ranges of fdlibm, each computed, one selected."""
    ty = x.type
    one = _const(ty, 1.0)
    ax = fabs(b, x)
    z = b.fmul(x, x)
    small = fma(b, x, b.fdiv(_horner(b, z, _ERF_PP), _horner(b, z, _ERF_QQ)), x)
    s = b.fsub(ax, one)
    mid = b.fadd(_const(ty, _ERX), b.fdiv(_horner(b, s, _ERF_PA), _horner(b, s, _ERF_QA)))
    # 1.25 <= |x| < 6 (clamped there, so the unused lanes stay finite): erfc(|x|) =
    # exp(-t^2 - 0.5625) exp((t - |x|)(t + |x|) + R/S) / |x|, t = |x| with its low 32 bits
    # cleared, so t^2 is exact.
    a = _select_lt(b, _select_gt(b, ax, _const(ty, 6.0), _const(ty, 6.0)), _const(ty, 1.25),
                   _const(ty, 1.25))
    w = b.fdiv(one, b.fmul(a, a))
    near = b.fcmp_ordered("<", a, _const(ty, _ERF_AB))
    rs = b.select(near, b.fdiv(_horner(b, w, _ERF_RA), _horner(b, w, _ERF_SA)),
                  b.fdiv(_horner(b, w, _ERF_RB), _horner(b, w, _ERF_SB)))
    it = _int_type(ty)
    t = b.bitcast(b.and_(b.bitcast(a, it), _const(it, -(2**32))), ty)
    e1 = exp(b, b.fsub(b.fneg(b.fmul(t, t)), _const(ty, 0.5625)))
    e2 = exp(b, fma(b, b.fsub(t, a), b.fadd(t, a), rs))
    large = b.fsub(one, b.fdiv(b.fmul(e1, e2), a))
    magnitude = b.select(b.fcmp_ordered("<", ax, _const(ty, 1.25)), mid,
                         b.select(b.fcmp_ordered("<", ax, _const(ty, 6.0)), large, one))
    # Unordered: a NaN takes the first branch, where it propagates.
    return b.select(b.fcmp_unordered("<", ax, _const(ty, 0.84375)), small,
                    copysign(b, magnitude, x))


erf = _widened(_erf64)
erf.__doc__ = """erf(x); float computes in double. erf(+-inf) = +-1, erf(-0) = -0."""

_SQRT1_2 = 0.7071067811865476


def _gelu64(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    ty = x.type
    cdf = b.fadd(_const(ty, 1.0), _erf64(b, b.fmul(x, _const(ty, _SQRT1_2))))
    return b.fmul(b.fmul(x, _const(ty, 0.5)), cdf)


gelu = _widened(_gelu64)
gelu.__doc__ = """x (1 + erf(x/sqrt 2))/2, torch's gelu (approximate='none') in its own order of
operations; float computes in double and rounds once."""


def elu(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """x for x > 0, else expm1(x) (alpha 1). expm1 sees min(x, 0); NaN stays NaN."""
    zero = _const(x.type, 0.0)
    neg = expm1(b, _select_gt(b, x, zero, zero))
    return b.select(b.fcmp_ordered(">", x, zero), x, neg)


def silu(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """x * sigmoid(x)."""
    return b.fmul(x, sigmoid(b, x))


def logsigmoid(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """log(sigmoid(x)) = -softplus(-x): no overflow, and -e^-x to full accuracy for large x."""
    return b.fneg(softplus(b, b.fneg(x)))


UNARY: dict[str, Emit] = {
    "exp": exp,
    "sigmoid": sigmoid,
    "tanh": tanh,
    "log": log,
    "softplus": softplus,
    "sqrt": sqrt,
    "expm1": expm1,
    "erf": erf,
    "elu": elu,
    "silu": silu,
    "gelu": gelu,
    "logsigmoid": logsigmoid,
}
