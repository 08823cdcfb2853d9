"""Vector-Jacobian products: one rule per op, written with the IR Builder.

A rule gets the builder, the forward instruction and the cotangents of its outputs (None where an
output has none) and returns one cotangent per argument (None: no contribution). Rules read the
forward *results* where the math allows (sigmoid' = y(1 - y), tanh' = 1 - y^2, exp' = y), so the
backward pass reads saved activations instead of recomputing transcendental functions.

A cotangent may come back broader than its argument (a bias broadcast over the batch, a [1]
statistic broadcast over features); `grad.py` sums it back down to the argument's type.
"""

from __future__ import annotations

from collections.abc import Callable

from .ir import Builder, Instr, Value
from .shapes import ONE, Batch

VjpRule = Callable[[Builder, Instr, list[Value | None]], list[Value | None]]
VJP: dict[str, VjpRule] = {}

# Ops whose derivative is zero almost everywhere: their arguments get no cotangent.
# stop_gradient is the identity forward and, by definition, passes no cotangent back.
NOT_DIFFERENTIABLE = ("heaviside", "sign", "ge", "lt", "le", "gt", "eq", "ne", "stop_gradient",
                      "const")

_SQRT1_2 = 0.7071067811865476  # 1/sqrt(2)
_INV_SQRT_2PI = 0.3989422804014327  # 1/sqrt(2 pi)
_TWO_OVER_SQRT_PI = 1.1283791670955126  # 2/sqrt(pi)


def vjp_rule(*ops: str):
    def register(fn: VjpRule) -> VjpRule:
        for op in ops:
            VJP[op] = fn
        return fn

    return register


def _one(b: Builder, dys):
    return dys[0]


@vjp_rule(*NOT_DIFFERENTIABLE)
def _no_cotangent(b, instr, dys):
    return [None] * len(instr.args)


@vjp_rule("neg")
def _neg(b, instr, dys):
    return [b.neg(dys[0])]


@vjp_rule("sigmoid")
def _sigmoid(b, instr, dys):
    y = instr.out
    return [b.mul(dys[0], b.mul(y, b.sub(b.const(1.0), y)))]


@vjp_rule("tanh")
def _tanh(b, instr, dys):
    y = instr.out
    return [b.mul(dys[0], b.sub(b.const(1.0), b.op("pow", y, exponent=2.0)))]


@vjp_rule("relu")
def _relu(b, instr, dys):
    return [b.mul(dys[0], b.op("heaviside", instr.out))]


@vjp_rule("exp")
def _exp(b, instr, dys):
    return [b.mul(dys[0], instr.out)]


@vjp_rule("log")
def _log(b, instr, dys):
    return [b.div(dys[0], instr.args[0])]


@vjp_rule("softplus")
def _softplus(b, instr, dys):
    return [b.mul(dys[0], b.op("sigmoid", instr.args[0]))]


@vjp_rule("sqrt")
def _sqrt(b, instr, dys):
    return [b.div(dys[0], b.mul(b.const(2.0), instr.out))]


@vjp_rule("abs")
def _abs(b, instr, dys):
    return [b.mul(dys[0], b.op("sign", instr.args[0]))]


@vjp_rule("pow")
def _pow(b, instr, dys):
    p = instr.attrs["exponent"]
    (x,) = instr.args
    slope = x if p == 2.0 else b.op("pow", x, exponent=p - 1.0)
    return [b.mul(dys[0], b.mul(b.const(p), slope))]


@vjp_rule("elu")
def _elu(b, instr, dys):
    # elu' = 1 for x > 0, else e^x = y + 1; y > 0 exactly where x > 0, so only y is read.
    y = instr.out
    one = b.const(1.0)
    return [b.mul(dys[0], b.op("where", b.op("gt", y, b.const(0.0)), one, b.add(y, one)))]


@vjp_rule("silu")
def _silu(b, instr, dys):
    # (x s)' = s + x s (1 - s) = s (1 + x (1 - s)), s = sigmoid(x)
    (x,) = instr.args
    s = b.op("sigmoid", x)
    one = b.const(1.0)
    return [b.mul(dys[0], b.mul(s, b.add(one, b.mul(x, b.sub(one, s)))))]


@vjp_rule("gelu")
def _gelu(b, instr, dys):
    # (x Phi(x))' = Phi(x) + x phi(x), Phi(x) = (1 + erf(x/sqrt 2))/2, phi = e^(-x^2/2)/sqrt(2 pi);
    # torch's formula, written the same way.
    (x,) = instr.args
    cdf = b.mul(b.const(0.5), b.add(b.const(1.0), b.op("erf", b.mul(x, b.const(_SQRT1_2)))))
    pdf = b.mul(b.op("exp", b.mul(b.const(-0.5), b.op("pow", x, exponent=2.0))),
                b.const(_INV_SQRT_2PI))
    return [b.mul(dys[0], b.add(cdf, b.mul(x, pdf)))]


@vjp_rule("erf")
def _erf(b, instr, dys):
    (x,) = instr.args
    slope = b.op("exp", b.neg(b.op("pow", x, exponent=2.0)))
    return [b.mul(dys[0], b.mul(b.const(_TWO_OVER_SQRT_PI), slope))]


@vjp_rule("logsigmoid")
def _logsigmoid(b, instr, dys):
    # log(sigmoid(x))' = 1 - sigmoid(x) = sigmoid(-x); as 1 - e^y it would cancel for large x.
    return [b.mul(dys[0], b.op("sigmoid", b.neg(instr.args[0])))]


@vjp_rule("power")
def _power(b, instr, dys):
    # z = x^y. dz/dx = y x^(y-1), finite at x = 0 for y >= 1 (y z / x would be 0/0), and 0 for
    # y = 0; dz/dy = z log(x), 0 at x = 0 for y >= 0 (not 0 * -inf). As torch.pow's backward.
    # grad.py adds a cotangent only for an argument that depends on a parameter, and the
    # unused one is pruned with the residuals it reads.
    x, y = instr.args
    zero, one = b.const(0.0), b.const(1.0)
    dx = b.op("where", b.op("eq", y, zero), zero,
              b.mul(y, b.op("power", x, b.sub(y, one))))
    x_zero = b.mul(b.op("eq", x, zero), b.op("ge", y, zero))
    dy = b.op("where", x_zero, zero, b.mul(instr.out, b.op("log", x)))
    return [b.mul(dys[0], dx), b.mul(dys[0], dy)]


@vjp_rule("where")
def _where(b, instr, dys):
    # Selects, not products with c: an inf or nan in the unselected branch stays out.
    c = instr.args[0]
    zero = b.const(0.0)
    return [None, b.op("where", c, dys[0], zero), b.op("where", c, zero, dys[0])]


@vjp_rule("add")
def _add(b, instr, dys):
    return [dys[0], dys[0]]


@vjp_rule("sub")
def _sub(b, instr, dys):
    return [dys[0], b.neg(dys[0])]


@vjp_rule("mul")
def _mul(b, instr, dys):
    x, y = instr.args
    return [b.mul(dys[0], y), b.mul(dys[0], x)]


@vjp_rule("div")
def _div(b, instr, dys):
    _, y = instr.args
    dx = b.div(dys[0], y)
    return [dx, b.neg(b.mul(dx, instr.out))]  # d(x/y)/dy = -(x/y)/y


@vjp_rule("max", "min")
def _minmax(b, instr, dys):
    # Ties send the whole cotangent to the first argument.
    x, y = instr.args
    first = b.op("ge", x, y) if instr.op == "max" else b.op("ge", y, x)
    dx = b.mul(dys[0], first)
    return [dx, b.sub(dys[0], dx)]


@vjp_rule("matmul")
def _matmul(b, instr, dys):
    w, x = instr.args  # y = W x
    return [b.op("outer", dys[0], x), b.op("matmul_t", w, dys[0])]


@vjp_rule("matmul_t")
def _matmul_t(b, instr, dys):
    w, y = instr.args  # z = W^T y
    return [b.op("outer", y, dys[0]), b.op("matmul", w, dys[0])]


@vjp_rule("outer")
def _outer(b, instr, dys):
    x, y = instr.args  # Z = sum over rows of x y^T
    return [b.op("matmul", dys[0], y), b.op("matmul_t", dys[0], x)]


@vjp_rule("sum")
def _sum(b, instr, dys):
    return [b.op("broadcast", dys[0], size=instr.args[0].type.shape[0])]


@vjp_rule("mean")
def _mean(b, instr, dys):
    n = instr.args[0].type.shape[0]
    return [b.div(b.op("broadcast", dys[0], size=n), b.const(n))]


@vjp_rule("broadcast")
def _broadcast(b, instr, dys):
    return [b.op("sum", dys[0])]


@vjp_rule("sum_batch")
def _sum_batch(b, instr, dys):
    ones = b.const(1.0, like=instr.args[0].type)
    return [b.mul(ones, dys[0])]


@vjp_rule("split")
def _split(b, instr, dys):
    parts = [d if d is not None else b.const(0.0, like=o.type) for d, o in zip(dys, instr.outs)]
    return [b.op("concat", *parts)]


@vjp_rule("concat")
def _concat(b, instr, dys):
    sizes = tuple(a.type.shape[0] for a in instr.args)
    return b.emit("split", [dys[0]], {"sizes": sizes})


@vjp_rule("reshape")
def _reshape(b, instr, dys):
    return [b.op("reshape", dys[0], shape=instr.args[0].type.shape)]


@vjp_rule("sum_axis")
def _sum_axis(b, instr, dys):
    k = instr.attrs["axis"]
    return [b.op("expand", dys[0], axis=k, size=instr.args[0].type.shape[k])]


@vjp_rule("max_axis")
def _max_axis(b, instr, dys):
    # As torch.amax: the cotangent is shared evenly among the entries that equal the maximum.
    (x,) = instr.args
    k, n = instr.attrs["axis"], x.type.shape[instr.attrs["axis"]]
    hit = b.op("eq", x, b.op("expand", instr.out, axis=k, size=n))
    share = b.div(dys[0], b.op("sum_axis", hit, axis=k))
    return [b.mul(hit, b.op("expand", share, axis=k, size=n))]


@vjp_rule("expand")
def _expand(b, instr, dys):
    return [b.op("sum_axis", dys[0], axis=instr.attrs["axis"])]


@vjp_rule("matvec")
def _matvec(b, instr, dys):
    # y = A v per stack element: dA = dy v^T (summed down to A's type by grad.py), dv = A^T dy.
    a, v = instr.args
    dy = dys[0]
    col = b.op("reshape", dy, shape=dy.type.shape + (ONE,))
    row = b.op("reshape", v, shape=v.type.shape[:-1] + (ONE,) + v.type.shape[-1:])
    return [b.mul(col, row), b.op("matvec", b.op("transpose", a), dy)]


@vjp_rule("transpose")
def _transpose(b, instr, dys):
    return [b.op("transpose", dys[0])]


def unbroadcast(b: Builder, g: Value, like: Value) -> Value:
    """Sum a cotangent down to the type of the value it belongs to."""
    t = like.type
    if g.type.rank == 1 and t.rank == 1 and g.type.shape != t.shape:
        g = b.op("sum", g)  # [n] -> [1]
    if g.type.batch is not Batch.NONE and t.batch is Batch.NONE:
        g = b.op("sum_batch", g)
    if g.type.rank > 1 and g.type.shape != t.shape:  # tensor-valued: NumPy's broadcasting undone
        lead = g.type.rank - t.rank
        for k, d in enumerate(g.type.shape):
            if d != ONE and (k < lead or t.shape[k - lead] == ONE):
                g = b.op("sum_axis", g, axis=k)
        if lead > 0 or g.type.rank != t.rank:
            g = b.op("reshape", g, shape=t.shape if t.rank else (ONE,))
    if g.type != t:  # a narrower cotangent (e.g. scalar) for a broader value
        g = b.mul(b.const(1.0, like=t), g)
    return g
