"""Symbolic sizes, broadcasting, each op's shape rule, and the located errors of lowering."""

from __future__ import annotations

from fractions import Fraction

import pytest

from cellc.ops import OPS
from cellc.shapes import Batch, Dim, ShapeMismatch, TensorType, broadcast
from cellc.source import CellNameError, CellShapeError, CellValueError, CellWarning

from conftest import compile_text, error_text

H, I = Dim.of("H"), Dim.of("I")


def T(*dims, batch=Batch.STEP) -> TensorType:
    return TensorType(tuple(Dim.of(d) for d in dims), batch)


def P(*dims) -> TensorType:  # a parameter: no batch
    return T(*dims, batch=Batch.NONE)


def S(*dims) -> TensorType:  # a whole sequence
    return T(*dims, batch=Batch.SEQ)


# -------------------------------------------------------------------------------------------
# Dim


@pytest.mark.parametrize(
    "dim, text",
    [
        (H * H * 4 + H * I * 4 + H * 8, "4*H^2 + 4*H*I + 8*H"),
        (H * 8 + I * H * 4 + H * H * 4, "4*H^2 + 4*H*I + 8*H"),  # any order
        (H.divide(2), "H/2"),
        ((H * 3).divide(2), "3*H/2"),
        (H - 1, "H - 1"),
        (Dim.of(0) - H, "-H"),
        (H * 2 - I * 3, "2*H - 3*I"),
        (H + I + 1, "H + I + 1"),
        (H * H * H, "H^3"),
        (H - H, "0"),
        (Dim.of(7), "7"),
        (Dim.of(3).divide(2), "3/2"),
    ],
)
def test_dim_printing(dim, text):
    assert str(dim) == text


def test_dim_arithmetic_is_polynomial_equality():
    assert H + H == H * 2 == Dim.of(2) * H
    assert (H + I) * (H - I) == H * H - I * I
    assert H.divide(2) + H.divide(2) == H
    assert Dim.of(0) == H - H
    assert H != I and H * 2 != H and H + 1 != H
    assert Dim.of(1) - H == -(H - 1)


def test_dim_constant_symbols_evaluate():
    assert Dim.of(5).constant == 5 and (H - H).constant == 0 and H.constant is None
    assert (H * I + 3).symbols == {"H", "I"} and Dim.of(2).symbols == set()
    assert (H * H * 4 + H * I * 4 + H * 8).evaluate({"H": 3, "I": 2}) == 36 + 24 + 24
    assert H.divide(2).evaluate({"H": 3}) == Fraction(3, 2)
    assert int(Dim.of(6)) == 6
    with pytest.raises(AssertionError):
        int(H)


def test_tensor_type_printing_and_concrete_shape():
    assert str(T("H")) == "[B,H]"
    assert str(P(H * 4, "I")) == "[4*H,I]"
    assert str(S("H")) == "[T*B,H]"
    assert str(P()) == "[]"
    sizes = {"H": 3, "I": 2}
    assert T("H").concrete(sizes, steps=5, batch=4) == (4, 3)
    assert S("H").concrete(sizes, steps=5, batch=4) == (20, 3)
    assert P(H * 4, "I").concrete(sizes, steps=5, batch=4) == (12, 2)


# -------------------------------------------------------------------------------------------
# Broadcasting


@pytest.mark.parametrize(
    "a, b, want",
    [
        (T("H"), T("H"), T("H")),
        (T("H"), P("H"), T("H")),  # per-example vector + bias
        (P("H"), T("H"), T("H")),
        (T("H"), P(), T("H")),  # + scalar constant
        (T("H"), T(1), T("H")),  # + per-example scalar (e.g. mean(x))
        (T(1), T("H"), T("H")),
        (S("H"), P("H"), S("H")),
        (P("H", "I"), P("I"), P("H", "I")),  # parameters broadcast like numpy
        (P("H", 1), P("I"), P("H", "I")),
        (P("H"), P("H"), P("H")),
        (P(), P(), P()),
    ],
)
def test_broadcast_ok(a, b, want):
    assert broadcast(a, b) == want


@pytest.mark.parametrize(
    "a, b, why",
    [
        (T("H"), T(H * 2), "feature sizes differ"),
        (T("H"), P("I"), "feature sizes differ"),
        (P("H", "I"), P("H"), "feature sizes differ"),
        (T("H"), S("H"), "per-step and whole-sequence values cannot be mixed"),
        (T("I"), T("H", "I"), "values of ranks 1 and 2 are not aligned"),
        (T("I"), P("H", "I"), "values of ranks 1 and 2 are not aligned"),  # Builder aligns
    ],
)
def test_broadcast_errors(a, b, why):
    with pytest.raises(ShapeMismatch) as info:
        broadcast(a, b)
    assert str(info.value) == why


# -------------------------------------------------------------------------------------------
# Shape rules, one or more rows per op. Every op in OPS must have a row here.

UNARY = ("neg", "sigmoid", "tanh", "relu", "exp", "log", "softplus", "sqrt", "abs", "pow",
         "heaviside", "sign", "elu", "silu", "gelu", "logsigmoid", "stop_gradient", "erf")
BINARY = ("add", "mul", "min", "max", "sub", "div", "ge", "lt", "le", "gt", "eq", "ne", "power")

RULES = [
    # (op, args, attrs, expected output types)
    ("const", [], {"value": 1.0, "type": P()}, [P()]),
    ("const", [], {"value": H, "type": T("H")}, [T("H")]),
    *[(op, [T(H * 4)], {"exponent": 2.0}, [T(H * 4)]) for op in UNARY],
    *[(op, [P("H", "I")], {}, [P("H", "I")]) for op in UNARY],
    *[(op, [T("H"), P("H")], {}, [T("H")]) for op in BINARY],
    ("matmul", [P(H * 4, "I"), T("I")], {}, [T(H * 4)]),
    ("matmul", [P("H", "I"), S("I")], {}, [S("H")]),
    ("matmul_t", [P(H * 4, "I"), T(H * 4)], {}, [T("I")]),
    ("outer", [T("H"), T("I")], {}, [P("H", "I")]),
    ("outer", [S("H"), S("I")], {}, [P("H", "I")]),
    ("sum", [T("H")], {}, [T(1)]),
    ("mean", [S(H * 4)], {}, [S(1)]),
    ("broadcast", [T(1)], {"size": H * 4}, [T(H * 4)]),
    ("sum_batch", [T("H")], {}, [P("H")]),
    ("sum_batch", [S("H")], {}, [P("H")]),
    ("split", [T(H * 4)], {"parts": 4}, [T("H")] * 4),
    ("split", [T("H")], {"parts": 2}, [T(H.divide(2))] * 2),
    ("split", [P(H * 3, "I")], {"parts": 3}, [P("H", "I")] * 3),
    ("concat", [T("H"), T("I"), T("H")], {}, [T(H * 2 + I)]),
    ("concat", [P("H", "I"), P("H", "I")], {}, [P(H * 2, "I")]),
    ("concat", [T("H")], {}, [T("H")]),
    ("scan", [T("H"), S("I")], {"out_types": (T("H"), S("H"))}, [T("H"), S("H")]),
    ("where", [T(1), T("H"), P()], {}, [T("H")]),
    ("reshape", [T(H * 4)], {"shape": (Dim.of(4), H)}, [T(4, "H")]),
    ("reshape", [P(H * 4, "I")], {"shape": (Dim.of(4), H * Dim.of("I"))}, [P(4, H * I)]),
    ("sum_axis", [T("H", "I")], {"axis": 1}, [T("H", 1)]),
    ("max_axis", [T("H", "I")], {"axis": 0}, [T(1, "I")]),
    ("expand", [T(1, "I")], {"axis": 0, "size": H}, [T("H", "I")]),
    ("transpose", [T(4, "H", "I")], {}, [T(4, "I", "H")]),
    ("matvec", [T(4, "H", "I"), T(4, "I")], {}, [T(4, "H")]),
    ("matvec", [P(4, "H", "I"), T(1, "I")], {}, [T(4, "H")]),
]


@pytest.mark.parametrize("op, args, attrs, want", RULES, ids=[r[0] for r in RULES])
def test_shape_rule(op, args, attrs, want):
    assert OPS[op].shape(args, attrs) == want


def test_every_op_has_a_shape_row():
    assert set(OPS) == {r[0] for r in RULES}, "add rows for new ops to RULES"


def test_op_table_metadata():
    assert all(OPS[op].arity == 1 and OPS[op].kind == "elementwise" for op in UNARY)
    assert all(OPS[op].arity == 2 for op in BINARY)
    assert {op for op in BINARY if OPS[op].commutative} == {"add", "mul", "min", "max", "eq",
                                                           "ne"}
    assert OPS["concat"].arity is None and OPS["const"].arity == 0


@pytest.mark.parametrize(
    "op, args, attrs, why",
    [
        ("matmul", [T("H"), T("H")], {},
         "the left side of @ must be a parameter matrix, not [B,H]"),
        ("matmul", [P("H"), T("H")], {}, "the left side of @ must be a parameter matrix, not [H]"),
        ("matmul", [P("H", "I"), P("I", "H")], {},
         "the right side of @ must be a vector, not [I,H]"),
        ("matmul", [P("H", "I"), T("H")], {}, "cannot multiply [H,I] by [B,H]: I != H"),
        ("sum", [P("H", "I")], {}, "can only reduce a vector over its features, not [H,I]; give"
         " the axis, as in sum(v, axis=-1)"),
        ("mean", [P()], {}, "can only reduce a vector over its features, not []"),
        ("split", [P()], {"parts": 2}, "cannot split a scalar"),
        ("concat", [], {}, "concat needs at least one operand"),
        ("concat", [T("H"), P("H", "I")], {}, "cannot concatenate [B,H] and [H,I]"),
        ("concat", [P("H", "I"), P("H", "H")], {}, "cannot concatenate [H,I] and [H,H]"),
        ("concat", [T("H"), S("H")], {}, "per-step and whole-sequence values cannot be mixed"),
        ("concat", [T("H"), P("H")], {},
         "concat mixes per-example values and parameters; add them first"),
        ("add", [T("H"), T("I")], {}, "feature sizes differ"),
    ],
)
def test_shape_rule_errors(op, args, attrs, why):
    with pytest.raises(ShapeMismatch) as info:
        OPS[op].shape(args, attrs)
    assert str(info.value) == why


# -------------------------------------------------------------------------------------------
# Lowering: whole snippets, exact error text

HEAD = """\
cell C(input_size I, hidden_size H):
    input x[I]
    state h[H]
    param W[H, I], U[H, H]
"""  # statements below start on line 5


def cell(*lines: str, head: str = HEAD) -> str:
    return head + "".join(f"    {line}\n" for line in lines)


def test_good_snippet_lowers():
    c = compile_text(cell("h' = tanh(W @ x + U @ h)", "output h'"))
    assert c.name == "C" and c.output == "h'" and [s.name for s in c.states] == ["h"]
    assert [p.name for p in c.params] == ["W", "U"] and c.warnings == ()
    assert str(c.param_count_formula) == "H^2 + H*I"
    assert [i.op for i in c.step.body] == ["matmul", "matmul", "add", "tanh"]
    assert c.step.results[0].type == T("H")


def test_shape_mismatch_in_add():
    text = cell("param V[2*H, I]", "v = V @ x", "h' = v + h", "output h'")
    assert error_text(text, kind=CellShapeError) == (
        "x.cell:7:10: error: cannot add [B,2*H] and [B,H]: feature sizes differ\n"
        "        h' = v + h\n"
        "             ^^^^^\n"
        "note: 'v' is [B,2*H], defined at x.cell:6:5\n"
        "note: 'h' is [B,H], defined at x.cell:3:11"
    )


def test_shape_mismatch_in_mul():
    text = cell("param V[2*H, I]", "h' = h * (V @ x)", "output h'")
    # Only named operands get a note; the parenthesized product has no definition to point at.
    assert error_text(text, kind=CellShapeError) == (
        "x.cell:6:10: error: cannot multiply [B,H] by [B,2*H]: feature sizes differ\n"
        "        h' = h * (V @ x)\n"
        "             ^^^^^^^^^^^\n"
        "note: 'h' is [B,H], defined at x.cell:3:11"
    )


def test_mixing_matrix_and_vector():
    # Elementwise ops broadcast as NumPy's (tensor-valued cells): U * h is a per-example matrix.
    assert error_text(cell("h' = U * h", "output h'"), kind=CellShapeError) == (
        "x.cell:5:10: error: the next value of state 'h' must be [B,H], not [B,H,H]\n"
        "        h' = U * h\n"
        "             ^^^^^\n"
        "note: 'h' is declared at x.cell:3:11\n"
        "note: * + - / broadcast as NumPy's do (a matrix times a vector is a matrix); the"
        " matrix-vector product is W @ h"
    )


def test_bad_matmul_sizes():
    assert error_text(cell("h' = W @ h", "output h'"), kind=CellShapeError) == (
        "x.cell:5:10: error: cannot multiply [H,I] by [B,H]: I != H\n"
        "        h' = W @ h\n"
        "             ^^^^^\n"
        "note: 'W' is [H,I], defined at x.cell:4:11\n"
        "note: 'h' is [B,H], defined at x.cell:3:11"
    )


def test_bad_matmul_order():
    assert error_text(cell("h' = tanh(h @ U)", "output h'"), kind=CellShapeError) == (
        "x.cell:5:15: error: the left side of @ must be a parameter matrix, not [B,H]\n"
        "        h' = tanh(h @ U)\n"
        "                  ^^^^^\n"
        "note: 'h' is [B,H], defined at x.cell:3:11\n"
        "note: 'U' is [H,H], defined at x.cell:4:20"
    )


def test_unknown_name_with_suggestion():
    assert error_text(cell("h' = tanh(W @ xx + U @ h)", "output h'"), kind=CellNameError) == (
        "x.cell:5:19: error: unknown name 'xx'\n"
        "        h' = tanh(W @ xx + U @ h)\n"
        "                      ^^\n"
        "note: did you mean 'x'?"
    )


def test_unknown_name_without_suggestion():
    assert error_text(cell("h' = U @ zzzz", "output h'"), kind=CellNameError) == (
        "x.cell:5:14: error: unknown name 'zzzz'\n"
        "        h' = U @ zzzz\n"
        "                 ^^^^"
    )


def test_state_next_value_used_before_assignment():
    assert error_text(cell("a = h' + h", "h' = U @ a", "output h'"), kind=CellNameError) == (
        "x.cell:5:9: error: 'h'' is used before it is assigned\n"
        "        a = h' + h\n"
        "            ^^"
    )


def test_unknown_function_with_suggestion():
    assert error_text(cell("h' = tanhh(U @ h)", "output h'"), kind=CellNameError) == (
        "x.cell:5:10: error: unknown function 'tanhh'\n"
        "        h' = tanhh(U @ h)\n"
        "             ^^^^^\n"
        "note: did you mean 'tanh'?"
    )


def test_unknown_function_lists_functions():
    assert error_text(cell("h' = foo(U @ h)", "output h'"), kind=CellNameError) == (
        "x.cell:5:10: error: unknown function 'foo'\n"
        "        h' = foo(U @ h)\n"
        "             ^^^\n"
        "note: functions: abs, clamp, concat, dot, elu, exp, gelu, heads, log, logsigmoid, max,"
        " mean, merge, min, outer, relu, reshape, sigmoid, silu, softplus, split, sqrt,"
        " stop_gradient, sum, tanh, transpose, var, where"
    )


def test_wrong_number_of_function_arguments():
    assert error_text(cell("h' = tanh(h, h)", "output h'"), kind=CellShapeError) == (
        "x.cell:5:10: error: tanh takes 1 argument, not 2\n"
        "        h' = tanh(h, h)\n"
        "             ^^^^^^^^^^"
    )


def test_redefinition():
    text = cell("a = W @ x", "a = U @ h", "h' = a", "output h'")
    assert error_text(text, kind=CellNameError) == (
        "x.cell:6:5: error: 'a' is already defined\n"
        "        a = U @ h\n"
        "        ^\n"
        "note: previous definition of name 'a' at x.cell:5:5"
    )


def test_redefinition_of_a_size_symbol():
    assert error_text(cell("H = W @ x", "h' = H", "output h'"), kind=CellNameError) == (
        "x.cell:5:5: error: 'H' is already defined\n"
        "        H = W @ x\n"
        "        ^\n"
        "note: previous definition of size symbol 'H' at x.cell:1:34"
    )


def test_redeclaration():
    assert error_text(cell("param h[H]", "h' = h", "output h'"), kind=CellNameError) == (
        "x.cell:5:11: error: 'h' is already defined\n"
        "        param h[H]\n"
        "              ^\n"
        "note: previous definition of state 'h' at x.cell:3:11"
    )


@pytest.mark.parametrize(
    "stmt, message, note",
    [
        ("x = W @ x", "cannot assign to input 'x'", "declared at x.cell:2:11"),
        ("h = U @ h", "cannot assign to state 'h'; its next value is h'",
         "declared at x.cell:3:11"),
        ("W = U", "cannot assign to param 'W'", "declared at x.cell:4:11"),
    ],
)
def test_assigning_to_a_declared_name(stmt, message, note):
    text = cell(stmt, "h' = tanh(W @ x + U @ h)", "output h'")
    assert error_text(text, kind=CellNameError) == (
        f"x.cell:5:5: error: {message}\n"
        f"        {stmt}\n"
        f"        ^\n"
        f"note: {note}"
    )


def test_primed_input():
    text = cell("x' = W @ x", "h' = U @ h", "output h'")
    assert error_text(text, kind=CellNameError) == (
        "x.cell:5:5: error: x' names the next value of a state, but 'x' is an input\n"
        "        x' = W @ x\n"
        "        ^^\n"
        "note: declared at x.cell:2:11"
    )


def test_primed_computed_value():
    text = cell("a = W @ x", "a' = a", "h' = U @ h", "output h'")
    assert error_text(text, kind=CellNameError) == (
        "x.cell:6:5: error: a' names the next value of a state, but 'a' is a computed value\n"
        "        a' = a\n"
        "        ^^\n"
        "note: defined at x.cell:5:5"
    )


def test_primed_unknown_name():
    text = cell("q' = W @ x", "h' = U @ h", "output h'")
    assert error_text(text, kind=CellNameError) == (
        "x.cell:5:5: error: q' names the next value of a state, but there is no state 'q'\n"
        "        q' = W @ x\n"
        "        ^^"
    )


def test_primed_declaration():
    assert error_text(cell("state g'[H]", "h' = h", "output h'"), kind=CellNameError) == (
        "x.cell:5:11: error: a primed name is a state's next value; declare it unprimed\n"
        "        state g'[H]\n"
        "              ^^"
    )


def test_next_value_of_the_wrong_shape():
    assert error_text(cell("h' = sum(h)", "output h'"), kind=CellShapeError) == (
        "x.cell:5:10: error: the next value of state 'h' must be [B,H], not [B,1]\n"
        "        h' = sum(h)\n"
        "             ^^^^^^\n"
        "note: 'h' is declared at x.cell:3:11"
    )


def test_state_with_no_next_value():
    head = HEAD.replace("state h[H]", "state h[H], c[H]")
    assert error_text(cell("h' = U @ h + c", "output h'", head=head), kind=CellNameError) == (
        "x.cell:3:17: error: state 'c' has no next value; assign c' = ...\n"
        "        state h[H], c[H]\n"
        "                    ^"
    )


def test_undefined_size_symbol():
    head = HEAD.replace("param W[H, I]", "param W[K, I]")
    assert error_text(cell("h' = U @ h", "output h'", head=head), kind=CellNameError) == (
        "x.cell:4:13: error: undefined size 'K'; the header binds I, H\n"
        "        param W[K, I], U[H, H]\n"
        "                ^"
    )


def test_fractional_and_non_positive_sizes():
    head = HEAD.replace("param W[H, I]", "param W[H, 1.5]")
    assert error_text(cell("h' = U @ h", "output h'", head=head), kind=CellShapeError) == (
        "x.cell:4:16: error: a size must be a whole number, not 1.5\n"
        "        param W[H, 1.5], U[H, H]\n"
        "                   ^^^"
    )
    head = HEAD.replace("param W[H, I]", "param W[H, 0]")
    assert error_text(cell("h' = U @ h", "output h'", head=head), kind=CellShapeError) == (
        "x.cell:4:16: error: a size must be positive, not 0\n"
        "        param W[H, 0], U[H, H]\n"
        "                   ^"
    )


def test_split_count_mismatch():
    text = cell("param V[2*H, I]", "a, b, c = split(V @ x, 2)", "h' = a", "output h'")
    assert error_text(text, kind=CellShapeError) == (
        "x.cell:6:5: error: split into 2 parts, but 3 names are assigned\n"
        "        a, b, c = split(V @ x, 2)\n"
        "        ^^^^^^^^^^^^^^^^^^^^^^^^^"
    )


def test_split_used_as_a_value():
    assert error_text(cell("h' = tanh(split(h, 2))", "output h'"), kind=CellShapeError) == (
        "x.cell:5:15: error: split gives several values; assign them to names,"
        " as in a, b = split(x, 2)\n"
        "        h' = tanh(split(h, 2))\n"
        "                  ^^^^^^^^^^^"
    )


def test_split_lowers_to_equal_parts():
    c = compile_text(cell("param V[2*H, I]", "a, b = split(V @ x, 2)", "h' = a * b + U @ h",
                          "output h'"))
    (split,) = [i for i in c.step.body if i.op == "split"]
    assert [o.name for o in split.outs] == ["a", "b"]
    assert [o.type for o in split.outs] == [T("H"), T("H")]


def test_a_value_exponent_is_the_power_op():
    """A number exponent stays an attribute of pow; a value one is the two-operand power."""
    c = compile_text(cell("h' = tanh(U @ h) ^ h + h ^ -2", "output h'"))
    assert [(i.op, dict(i.attrs).get("exponent")) for i in c.step.body
            if i.op in ("pow", "power")] == [("power", None), ("pow", -2.0)]


def test_negative_exponent_is_a_number():
    c = compile_text(cell("h' = (U @ h) ^ -0.5", "output h'"))
    (pow_,) = [i for i in c.step.body if i.op == "pow"]
    assert pow_.attrs["exponent"] == -0.5


def test_missing_output():
    assert error_text(cell("h' = U @ h"), kind=CellNameError) == (
        "x.cell:1:6: error: the cell has no 'output' statement\n"
        "    cell C(input_size I, hidden_size H):\n"
        "         ^"
    )


def test_two_outputs():
    assert error_text(cell("h' = U @ h", "output h', h"), kind=CellNameError) == (
        "x.cell:6:16: error: a cell has exactly one output\n"
        "        output h', h\n"
        "                   ^"
    )


def test_output_must_be_a_per_example_vector():
    assert error_text(cell("h' = U @ h", "output U"), kind=CellShapeError) == (
        "x.cell:6:12: error: an output must be a per-example vector, not [H,H]\n"
        "        output U\n"
        "               ^"
    )


def test_more_than_one_input():
    head = HEAD.replace("    input x[I]\n", "    input x[I]\n    input y[I]\n")
    assert error_text(cell("h' = W @ x + W @ y", "output h'", head=head), kind=CellNameError) == (
        "x.cell:3:11: error: a cell takes exactly one input, the sequence element\n"
        "        input y[I]\n"
        "              ^^^^"
    )


def test_no_input():
    head = HEAD.replace("    input x[I]\n", "")
    assert error_text(cell("h' = U @ h", "output h'", head=head), kind=CellNameError) == (
        "x.cell:1:6: error: a cell takes exactly one input, the sequence element\n"
        "    cell C(input_size I, hidden_size H):\n"
        "         ^"
    )


def test_initializer_on_an_input():
    head = HEAD.replace("input x[I]", "input x[I] ~ zeros()")
    assert error_text(cell("h' = W @ x + U @ h", "output h'", head=head), kind=CellNameError) == (
        "x.cell:2:18: error: only parameters and constants have initializers (~), not inputs\n"
        "        input x[I] ~ zeros()\n"
        "                     ^^^^^^^"
    )


def test_unknown_initializer():
    head = HEAD.replace("param W[H, I], U[H, H]", "param W[H, I], U[H, H] ~ glorot()")
    assert error_text(cell("h' = W @ x + U @ h", "output h'", head=head), kind=CellNameError) == (
        "x.cell:4:30: error: unknown initializer 'glorot'\n"
        "        param W[H, I], U[H, H] ~ glorot()\n"
        "                                 ^^^^^^\n"
        "note: initializers: uniform(low, high), normal(mean, std), zeros(), ones(),"
        " constant(value), orthogonal() or orthogonal(gain)"
    )


def test_initializer_with_wrong_arguments():
    head = HEAD.replace("param W[H, I], U[H, H]", "param W[H, I], U[H, H] ~ uniform(-1)")
    assert error_text(cell("h' = W @ x + U @ h", "output h'", head=head), kind=CellShapeError) == (
        "x.cell:4:30: error: wrong number of arguments; use uniform(low, high)\n"
        "        param W[H, I], U[H, H] ~ uniform(-1)\n"
        "                                 ^^^^^^^^^^^"
    )
    head = HEAD.replace("param W[H, I], U[H, H]", "param W[H, I], U[H, H] ~ constant(x)")
    assert error_text(cell("h' = W @ x + U @ h", "output h'", head=head), kind=CellNameError) == (
        "x.cell:4:39: error: 'x' is not a size symbol;"
        " initializer arguments may use only sizes and numbers\n"
        "        param W[H, I], U[H, H] ~ constant(x)\n"
        "                                          ^"
    )


def test_unused_parameter_is_a_warning():
    c = compile_text(cell("h' = tanh(W @ x)", "output h'"))
    (w,) = c.warnings
    assert isinstance(w, CellWarning) and w.kind == "warning"
    assert str(w) == (
        "x.cell:4:20: warning: param 'U' is never used\n"
        "        param W[H, I], U[H, H]\n"
        "                       ^^^^^^^"
    )


# -------------------------------------------------------------------------------------------
# CellIR.bind

HALF = """\
cell Half(hidden_size H):
    input x[H/2]
    state h[H]
    param W[H, H/2]
    h' = tanh(W @ x) + h
    output h'
"""


def test_bind_maps_arguments_to_symbols():
    c = compile_text(cell("h' = tanh(W @ x + U @ h)", "output h'"))
    assert c.bind(input_size=3, hidden_size=5) == {"I": 3, "H": 5}
    assert compile_text(HALF).bind(hidden_size=4) == {"H": 4}


@pytest.mark.parametrize(
    "kwargs, exc, message",
    [
        ({"hidden_size": 4, "input_size": 2}, TypeError,
         "Half: unexpected size argument 'input_size'; expects ['hidden_size']"),
        ({}, TypeError, "Half: missing size argument 'hidden_size'"),
        ({"hidden_size": 0}, ValueError, "Half: hidden_size must be positive, got 0"),
        ({"hidden_size": -2}, ValueError, "Half: hidden_size must be positive, got -2"),
        ({"hidden_size": 4.0}, TypeError, "Half: hidden_size must be an int, got float 4.0"),
        ({"hidden_size": True}, TypeError, "Half: hidden_size must be an int, got bool True"),
        ({"hidden_size": 3}, ValueError,
         "Half: with {'hidden_size': 3}, 'x' would have H/2 = 3/2 features;"
         " choose sizes that make it a positive whole number"),
    ],
)
def test_bind_errors(kwargs, exc, message):
    with pytest.raises(exc) as info:
        compile_text(HALF).bind(**kwargs)
    assert str(info.value) == message


def test_bind_rejects_sizes_that_make_a_dimension_non_positive():
    text = cell("param V[H - I, I]", "h' = U @ h + sum(V @ x)", "output h'")
    c = compile_text(text)
    assert c.bind(input_size=2, hidden_size=3) == {"I": 2, "H": 3}
    with pytest.raises(ValueError, match=r"H - I = 0 features"):
        c.bind(input_size=3, hidden_size=3)


# -------------------------------------------------------------------------------------------
# Names written into generated code, and initializer values


def test_cell_name_that_is_a_python_keyword():
    head = HEAD.replace("cell C(", "cell lambda(")
    assert error_text(cell("h' = U @ h", "output h'", head=head), kind=CellNameError) == (
        "x.cell:1:6: error: the cell name 'lambda' cannot name a Python class in the generated"
        " code: it is a Python keyword; rename the cell\n"
        "    cell lambda(input_size I, hidden_size H):\n"
        "         ^^^^^^"
    )


def test_size_argument_the_generated_code_uses():
    head = HEAD.replace("input_size I", "dtype I")
    assert error_text(cell("h' = U @ h", "output h'", head=head), kind=CellNameError) == (
        "x.cell:1:8: error: the size argument 'dtype' cannot be used: the generated code uses"
        " that name; rename it\n"
        "    cell C(dtype I, hidden_size H):\n"
        "           ^^^^^"
    )


def test_primed_size_symbol():
    head = HEAD.replace("hidden_size H)", "hidden_size H')")
    assert error_text(cell("h' = U @ h", "output h'", head=head), kind=CellNameError) == (
        "x.cell:1:34: error: the size symbol 'H'' cannot be used: a prime (') marks a state's"
        " next value, as in h'; rename it\n"
        "    cell C(input_size I, hidden_size H'):\n"
        "                                     ^^"
    )


def test_initializer_outside_the_domain():
    text = cell("param b[H] ~ uniform(-1/sqrt(H), log(1 - 2))", "h' = U @ h + b", "output h'")
    assert error_text(text, kind=CellValueError) == (
        "x.cell:5:38: error: log of -1 is not a finite real number\n"
        "        param b[H] ~ uniform(-1/sqrt(H), log(1 - 2))\n"
        "                                         ^^^^^^^^^^"
    )


def test_initializer_checked_again_when_sizes_are_bound():
    text = cell("param b[H] ~ constant(1/(H - 4))", "h' = U @ h + b", "output h'")
    (_, _, b) = compile_text(text).params
    assert b.init.values({"H": 5, "I": 1}) == [1.0]
    with pytest.raises(CellValueError) as info:
        b.init.values({"H": 4, "I": 1})
    assert str(info.value) == (
        "x.cell:5:27: error: division by zero with H=4, I=1\n"
        "        param b[H] ~ constant(1/(H - 4))\n"
        "                              ^^^^^^^^^"
    )
