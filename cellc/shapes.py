"""Symbolic sizes and tensor types.

A `Dim` is a polynomial in the cell's size symbols with rational coefficients (`4*H`, `H + I`,
`H/2`), so shapes are checked once, symbolically, for every size a user may later pick. Two dims
are equal when their polynomials are equal.

A `TensorType` is a feature shape (rank 0 to 3: a per-example value may be a vector, a matrix
per head, ...; a parameter a matrix or a stack of them) plus where the batch is:

    Batch.NONE   parameters and anything computed from them only        [4*H,I]
    Batch.STEP   one time step of a batch of sequences (states, x_t)    [B,H]
    Batch.SEQ    every time step at once, rows ordered (t, b)           [T*B,4*H]

Values carry no dtype: a cell runs in float32 or float64, chosen when it is run.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

Monomial = tuple[str, ...]  # sorted symbol names; () is the constant term


@dataclass(frozen=True)
class Dim:
    terms: tuple[tuple[Monomial, Fraction], ...]  # sorted, no zero coefficients

    @staticmethod
    def of(x: int | str | Fraction | Dim) -> Dim:
        if isinstance(x, Dim):
            return x
        if isinstance(x, str):
            return Dim((((x,), Fraction(1)),))
        return Dim._make({(): Fraction(x)})

    @staticmethod
    def _make(d: Mapping[Monomial, Fraction]) -> Dim:
        return Dim(tuple(sorted((m, c) for m, c in d.items() if c != 0)))

    def __add__(self, other: Dim | int) -> Dim:
        d = dict(self.terms)
        for m, c in Dim.of(other).terms:
            d[m] = d.get(m, Fraction(0)) + c
        return Dim._make(d)

    def __neg__(self) -> Dim:
        return Dim(tuple((m, -c) for m, c in self.terms))

    def __sub__(self, other: Dim | int) -> Dim:
        return self + (-Dim.of(other))

    def __mul__(self, other: Dim | int) -> Dim:
        d: dict[Monomial, Fraction] = {}
        for m1, c1 in self.terms:
            for m2, c2 in Dim.of(other).terms:
                m = tuple(sorted(m1 + m2))
                d[m] = d.get(m, Fraction(0)) + c1 * c2
        return Dim._make(d)

    def divide(self, n: int) -> Dim:
        return Dim(tuple((m, c / n) for m, c in self.terms))

    @property
    def constant(self) -> Fraction | None:
        """The value if the dim has no symbols, else None."""
        if not self.terms:
            return Fraction(0)
        if len(self.terms) == 1 and self.terms[0][0] == ():
            return self.terms[0][1]
        return None

    @property
    def symbols(self) -> set[str]:
        return {s for m, _ in self.terms for s in m}

    def evaluate(self, sizes: Mapping[str, int]) -> Fraction:
        return sum(
            (c * math.prod(sizes[s] for s in m) for m, c in self.terms), start=Fraction(0)
        )

    def __int__(self) -> int:
        v = self.constant
        assert v is not None and v.denominator == 1, f"dim {self} is not a constant integer"
        return int(v)

    def __str__(self) -> str:
        if not self.terms:
            return "0"
        text = ""
        # Highest degree first, then by name: 4*H*I + 4*H^2 + 8*H + 1
        for m, c in sorted(self.terms, key=lambda mc: (-len(mc[0]), mc[0])):
            powers = [s if m.count(s) == 1 else f"{s}^{m.count(s)}" for s in sorted(set(m))]
            mag = abs(c)
            if not m:
                term = str(mag)
            else:
                sym = "*".join(powers)
                num, den = mag.numerator, mag.denominator
                term = (f"{num}*" if num != 1 else "") + sym + (f"/{den}" if den != 1 else "")
            if not text:
                text = ("-" if c < 0 else "") + term
            else:
                text += (" - " if c < 0 else " + ") + term
        return text

    __repr__ = __str__


ONE = Dim.of(1)


def product(dims) -> Dim:
    """The number of entries of a shape: the product of its dims (1 for a scalar)."""
    total = ONE
    for d in dims:
        total = total * d
    return total


class Batch(enum.Enum):
    NONE = ""
    STEP = "B"
    SEQ = "T*B"


@dataclass(frozen=True)
class TensorType:
    shape: tuple[Dim, ...]
    batch: Batch = Batch.STEP

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def batch_axes(self) -> int:
        """1 where an array of this type has a batch axis (its rows) before the features."""
        return 0 if self.batch is Batch.NONE else 1

    def with_batch(self, batch: Batch) -> TensorType:
        return TensorType(self.shape, batch)

    def with_shape(self, shape: tuple[Dim, ...]) -> TensorType:
        return TensorType(shape, self.batch)

    def concrete(self, sizes: Mapping[str, int], steps: int = 1, batch: int = 1) -> tuple[int, ...]:
        """The numpy shape of a value of this type, for bound sizes."""
        return self.bound(sizes)(steps, batch)

    def bound(self, sizes: Mapping[str, int]) -> BoundShape:
        """The shape with the sizes evaluated once; only T and B are left (for hot paths)."""
        return BoundShape(self.batch, tuple(int(d.evaluate(sizes)) for d in self.shape))

    def __str__(self) -> str:
        dims = (([self.batch.value] if self.batch is not Batch.NONE else [])
                + [str(d) for d in self.shape])
        return "[" + ",".join(dims) + "]"


@dataclass(frozen=True)
class BoundShape:
    batch: Batch
    features: tuple[int, ...]

    def __call__(self, steps: int = 1, batch: int = 1) -> tuple[int, ...]:
        if self.batch is Batch.NONE:
            return self.features
        return ((steps * batch) if self.batch is Batch.SEQ else batch,) + self.features


class ShapeMismatch(Exception):
    """Raised by shape rules; lowering turns it into a located CellShapeError."""


def broadcast(a: TensorType, b: TensorType) -> TensorType:
    """Elementwise result type: numpy broadcasting of feature shapes, and of the batch."""
    if Batch.NONE not in (a.batch, b.batch) and a.batch != b.batch:
        raise ShapeMismatch("per-step and whole-sequence values cannot be mixed")
    batch = b.batch if a.batch is Batch.NONE else a.batch
    if any(t.batch is not Batch.NONE and t.rank < max(a.rank, b.rank) for t in (a, b)):
        # Builder.emit aligns them (leading size-1 axes on the per-example value), so that every
        # backend may broadcast its (rows, features...) arrays as NumPy does.
        raise ShapeMismatch(f"values of ranks {a.rank} and {b.rank} are not aligned")
    shape = []
    for i in range(1, max(a.rank, b.rank) + 1):
        da = a.shape[-i] if i <= a.rank else ONE
        db = b.shape[-i] if i <= b.rank else ONE
        if da != db and ONE not in (da, db):
            raise ShapeMismatch("feature sizes differ")
        shape.append(db if da == ONE else da)
    return TensorType(tuple(reversed(shape)), batch)
