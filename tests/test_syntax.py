"""Parsing: snippets -> AST, and bad snippets -> the exact error a user sees, caret line included.

The error texts are the product here, so they are compared whole: a caret one column off, or a
Lark token name leaking into a message, fails a test.
"""

from __future__ import annotations

import os
import textwrap

import pytest

from cellc import ast_nodes as A
from cellc.source import CellError, CellSyntaxError, CellValueError, Source, Span
from cellc.syntax import parse


def ast(text: str) -> A.Cell:
    return parse(Source("x.cell", text))


def expr(text: str) -> str:
    """The formatted AST of one expression, parsed as the right side of an assignment."""
    (st,) = ast(f"cell C():\n    y = {text}\n").body
    assert isinstance(st, A.Assign)
    return A.format_expr(st.value)


def syntax_error(text: str) -> str:
    with pytest.raises(CellSyntaxError) as info:
        ast(text)
    return str(info.value)


# -------------------------------------------------------------------------------------------
# Good snippets


LSTM = """\
# A comment before the header.
cell LSTM(input_size I, hidden_size H):
    input  x[I]
    state  h[H], c[H]            # two states in one declaration
    param  weight_ih[4*H, I], weight_hh[4*H, H] ~ uniform(-1/sqrt(H), 1/sqrt(H))
    bias   bias[4*H]

    i, f, g, o = split(weight_ih @ x + weight_hh @ h + bias, 4)
    c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
    h' = sigmoid(o) * tanh(c')
    output h'
"""


def test_whole_cell_formats_as_expected():
    assert A.format_cell(ast(LSTM)) == textwrap.dedent("""\
        Cell LSTM(input_size I, hidden_size H)
          Decl input x[I]    # line 3
          Decl state h[H], c[H]    # line 4
          Decl param weight_ih[(4 * H), I], weight_hh[(4 * H), H] ~ uniform((-1 / sqrt(H)), (1 / sqrt(H)))    # line 5
          Decl bias bias[(4 * H)]    # line 6
          Assign i, f, g, o = split((((weight_ih @ x) + (weight_hh @ h)) + bias), 4)    # line 8
          Assign c' = ((sigmoid(f) * c) + (sigmoid(i) * tanh(g)))    # line 9
          Assign h' = (sigmoid(o) * tanh(c'))    # line 10
          Output h'    # line 11""")  # noqa: E501  (the expected text has a line this long)


def test_nodes_and_spans():
    cell = ast(LSTM)
    assert cell.name == A.Name("LSTM", cell.name.span)
    assert (cell.name.span.line, cell.name.span.col, cell.name.span.end_col) == (2, 6, 10)
    assert [(s.arg.id, s.symbol.id) for s in cell.sizes] == [("input_size", "I"),
                                                              ("hidden_size", "H")]

    _, decl_hc, decl_w, decl_b = cell.body[:4]
    assert isinstance(decl_hc, A.Decl) and decl_hc.kind == "state" and decl_hc.init is None
    assert [d.name.id for d in decl_hc.names] == ["h", "c"]
    c = decl_hc.names[1]
    assert (c.span.line, c.span.col, c.span.end_col) == (4, 18, 22)  # "c[H]"
    assert c.dims == (A.Name("H", c.dims[0].span),)

    assert decl_w.kind == "param" and decl_w.init.fn.id == "uniform"
    low = decl_w.init.args[0]
    # -1/sqrt(H) is (-1) / sqrt(H): unary minus binds tighter than division.
    assert isinstance(low, A.BinOp) and low.op == "div" and isinstance(low.lhs, A.Neg)
    assert low.lhs.operand.value == 1.0
    assert decl_b.kind == "bias" and decl_b.init is None

    split = cell.body[4]
    assert [t.id for t in split.targets] == ["i", "f", "g", "o"]
    count = split.value.args[1]
    assert split.value.fn.id == "split" and count == A.Num(4.0, count.span)

    h_next = cell.body[6]
    assert h_next.targets[0].id == "h'"
    span = h_next.value.span  # the whole right side, "sigmoid(o) * tanh(c')"
    assert (span.line, span.col, span.end_line, span.end_col) == (10, 10, 10, 31)
    out = cell.body[7]
    assert isinstance(out, A.Output) and [n.id for n in out.names] == ["h'"]


def test_scalar_and_empty_brackets_differ():
    cell = ast("cell C():\n    param a, b[] ~ constant(1.5e-3)\n")
    a, b = cell.body[0].names
    assert a.dims is None  # no brackets: a scalar
    assert b.dims == ()
    assert cell.body[0].init.args[0].value == pytest.approx(1.5e-3, rel=0, abs=1e-18)


@pytest.mark.parametrize(
    "text, want",
    [
        ("a + b * c", "(a + (b * c))"),
        ("a - b - c", "((a - b) - c)"),  # left-associative
        ("a / b / c", "((a / b) / c)"),
        ("W @ x + b", "((W @ x) + b)"),
        ("W @ x * s", "((W @ x) * s)"),  # @ is a product: same level as *, left to right
        ("x ^ 2", "(x ^ 2)"),
        ("x ** 2", "(x ^ 2)"),  # ** and ^ are the same operator
        ("2 ^ 3 ** 2", "(2 ^ (3 ^ 2))"),  # right-associative
        ("-x ^ 2", "-(x ^ 2)"),  # power binds tighter than unary minus
        ("x ^ -0.5", "(x ^ -0.5)"),
        ("-x * -2", "(-x * -2)"),
        ("--x", "-(-x)"),
        ("+x", "x"),  # unary plus is dropped
        ("-(a + b)", "-(a + b)"),
        ("(((a)))", "a"),
        ("f(a, g(b), -c)", "f(a, g(b), -c)"),
        ("f()", "f()"),
        ("h' * c'", "(h' * c')"),
        ("1e-5 + .5 + 3. + 1E+3 + 2", "((((1e-05 + 0.5) + 3) + 1000) + 2)"),
    ],
)
def test_expression_precedence(text, want):
    assert expr(text) == want


def test_unary_minus_nodes():
    assert expr("-x") == "-x"
    (st,) = ast("cell C():\n    y = -x ^ 2\n").body
    assert isinstance(st.value, A.Neg)
    assert isinstance(st.value.operand, A.BinOp) and st.value.operand.op == "pow"


def test_multiline_expressions_and_comments():
    text = (
        "# header comment\n"
        "\n"
        "cell C(input_size I,   # sizes may span lines inside brackets\n"
        "       hidden_size H):\n"
        "    param W[4*H,\n"
        "            I]\n"
        "    y = tanh(a\n"
        "             + b   # a comment inside the brackets\n"
        "\n"
        "             + c)\n"
        "    z = a + \\\n"
        "        b\n"
        "    # a comment on its own line\n"
        "    output y  # trailing comment\n"
        "# final comment, no newline at the end of the file"
    )
    assert A.format_cell(ast(text)) == textwrap.dedent("""\
        Cell C(input_size I, hidden_size H)
          Decl param W[(4 * H), I]    # line 5
          Assign y = tanh(((a + b) + c))    # line 7
          Assign z = (a + b)    # line 11
          Output y    # line 14""")


def test_crlf_line_endings_and_missing_final_newline():
    text = "cell C():\r\n    y = a * b\r\n    output y"
    want = "Cell C()\n  Assign y = (a * b)    # line 2\n  Output y    # line 3"
    assert A.format_cell(ast(text)) == want


def test_keywords_inside_names_are_names():
    # 'cell', 'input' and 'output' are keywords only as whole words.
    want = "(((cellx + inputs) + output_gate) + bias_h)"
    assert expr("cellx + inputs + output_gate + bias_h") == want


# -------------------------------------------------------------------------------------------
# Bad snippets: the exact text


def test_unexpected_character():
    assert syntax_error("cell C(input_size I):\n    input x[I] $\n") == (
        "x.cell:2:16: error: unexpected character '$'\n"
        "        input x[I] $\n"
        "                   ^"
    )


def test_unexpected_non_ascii_character():
    assert syntax_error("cell C():\n    y = x × 2\n") == (
        "x.cell:2:11: error: unexpected character '×'\n"
        "        y = x × 2\n"
        "              ^"
    )


def test_unexpected_token_lists_what_was_expected():
    assert syntax_error("cell C(input_size I):\n    h' = x + * x\n") == (
        "x.cell:2:14: error: unexpected '*'; expected '(', '+', '-', a name or a number\n"
        "        h' = x + * x\n"
        "                 ^"
    )


def test_two_names_in_a_row_suggest_a_missing_operator():
    assert syntax_error("cell C():\n    h' = x y\n") == (
        "x.cell:2:12: error: unexpected name 'y'; expected end of line (missing operator?)\n"
        "        h' = x y\n"
        "               ^"
    )


def test_missing_close_paren_at_end_of_file():
    assert syntax_error("cell C(input_size I):\n    input x[I]\n    h' = tanh(x\n") == (
        "x.cell:3:16: error: unexpected end of file; expected ')'\n"
        "        h' = tanh(x\n"
        "                   ^\n"
        "note: unclosed '(' at x.cell:3:14"
    )


def test_missing_close_paren_before_next_statement():
    # The newline is swallowed inside the brackets, so the parser stops a line later; the note
    # points back at the bracket that was left open.
    assert syntax_error("cell C():\n    h' = tanh((x + 1)\n    output h'\n") == (
        "x.cell:3:5: error: unexpected 'output'\n"
        "        output h'\n"
        "        ^^^^^^\n"
        "note: unclosed '(' at x.cell:2:14"
    )


def test_missing_close_bracket_in_declaration():
    assert syntax_error("cell C():\n    param a[H  # a [comment] with brackets\n"
                        "    output a\n") == (
        "x.cell:3:5: error: unexpected 'output'\n"
        "        output a\n"
        "        ^^^^^^\n"
        "note: unclosed '[' at x.cell:2:12"
    )


def test_end_of_file_in_header():
    assert syntax_error("cell C(input_size I") == (
        "x.cell:1:20: error: unexpected end of file; expected ')', ',' or '='\n"
        "    cell C(input_size I\n"
        "                       ^\n"
        "note: unclosed '(' at x.cell:1:7"
    )


def test_missing_colon_in_header():
    assert syntax_error("cell C(input_size I)\n    input x[I]\n") == (
        "x.cell:1:21: error: unexpected end of line; expected ':'\n"
        "    cell C(input_size I)\n"
        "                        ^"
    )


def test_missing_colon_caret_ignores_trailing_comment():
    assert syntax_error("cell C()   # no colon\n    input x[I]\n") == (
        "x.cell:1:9: error: unexpected end of line; expected ':'\n"
        "    cell C()   # no colon\n"
        "            ^"
    )


def test_header_without_body():
    assert syntax_error("cell C(input_size I):\n") == (
        "x.cell:1:22: error: unexpected end of file;"
        " expected 'bias', 'const', 'def', 'input', 'output', 'param', 'state' or a name\n"
        "    cell C(input_size I):\n"
        "                         ^"
    )


def test_assignment_without_right_side():
    assert syntax_error("cell C():\n    h' =\n    output h'\n") == (
        "x.cell:2:9: error: unexpected end of line; expected '(', '+', '-', a name or a number\n"
        "        h' =\n"
        "            ^"
    )


@pytest.mark.parametrize(
    "line, col",
    [
        ("h ' = x", 7),  # space before the prime
        ("'h = x", 5),  # prime before the name
        ("h'' = x", 7),  # two primes
        ("y = (h)'", 12),  # a prime on an expression
    ],
)
def test_prime_placement(line, col):
    caret = " " * (4 + col - 1) + "^"
    assert syntax_error(f"cell C():\n    {line}\n") == (
        f"x.cell:2:{col}: error: a prime (') must directly follow a name, as in h'\n"
        f"        {line}\n"
        f"{caret}"
    )


def test_file_must_start_with_cell():
    assert syntax_error("input x[I]\n") == (
        "x.cell:1:1: error: unexpected 'input'; a file starts with 'cell NAME(...):'\n"
        "    input x[I]\n"
        "    ^^^^^"
    )


def test_file_must_start_with_cell_after_comments():
    assert syntax_error("# comment\n\nfoo C():\n") == (
        "x.cell:3:1: error: unexpected name 'foo'; a file starts with 'cell NAME(...):'\n"
        "    foo C():\n"
        "    ^^^"
    )


def test_only_a_comment():
    assert syntax_error("# just a comment") == (
        "x.cell:1:17: error: unexpected end of file; expected 'cell'\n"
        "    # just a comment\n"
        "                    ^"
    )


def test_dangling_power_operator():
    assert syntax_error("cell C():\n    y = x ** ** 2\n") == (
        "x.cell:2:14: error: unexpected '**'; expected '(', '+', '-', a name or a number\n"
        "        y = x ** ** 2\n"
        "                 ^^"
    )


def test_caret_under_the_right_column_after_a_tab():
    # Lark counts a tab as one column; the context line expands it, and the caret must follow.
    assert syntax_error("cell C():\n\ty = x $ 2\n") == (
        "x.cell:2:8: error: unexpected character '$'\n"
        "        y = x $ 2\n"
        "              ^"
    )


def test_line_numbers_are_not_shifted_by_form_feeds():
    # \f is whitespace to the lexer, but str.splitlines() would treat it as a line break.
    assert syntax_error("cell C():\n    y = a +\f b\n    z = $\n") == (
        "x.cell:3:9: error: unexpected character '$'\n"
        "        z = $\n"
        "            ^"
    )


def test_error_class_and_location_attributes():
    with pytest.raises(CellSyntaxError) as info:
        ast("cell C():\n    y = $\n")
    err = info.value
    assert isinstance(err, CellError) and err.kind == "error" and err.filename == "x.cell"
    assert (err.span.line, err.span.col) == (2, 9)


# -------------------------------------------------------------------------------------------
# Reading files


def test_read_good_file(tmp_path):
    path = tmp_path / "ok.cell"
    path.write_text("cell C():\n    output y\n", encoding="utf-8")
    src = Source.read(path)
    assert src.name == str(path) and src.text == "cell C():\n    output y\n"


def test_read_strips_byte_order_mark(tmp_path):
    path = tmp_path / "bom.cell"
    path.write_bytes(b"\xef\xbb\xbfcell C():\n    output y\n")
    assert Source.read(path).text == "cell C():\n    output y\n"


def read_error(path) -> CellError:
    with pytest.raises(CellError) as info:
        Source.read(path)
    assert info.value.span is None and info.value.filename == str(path)
    return info.value


def test_read_missing_file(tmp_path):
    path = tmp_path / "missing.cell"
    assert str(read_error(path)) == f"{path}: error: no such file: {path}"


def test_read_directory(tmp_path):
    path = tmp_path / "dir.cell"
    path.mkdir()
    assert str(read_error(path)) == f"{path}: error: is a directory, not a .cell file: {path}"


@pytest.mark.parametrize(
    "content", [b"", b"  \n\t\n", b"\xef\xbb\xbf\n"], ids=["empty", "blank", "bom-only"]
)
def test_read_empty_file(tmp_path, content):
    path = tmp_path / "empty.cell"
    path.write_bytes(content)
    assert str(read_error(path)) == f"{path}: error: file is empty; expected a cell definition"


def test_read_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.cell"
    path.write_bytes("cell C():\n    y = \u00e9\n".encode("latin-1"))
    assert str(read_error(path)) == (
        f"{path}: error: file is not valid UTF-8 (byte 0xe9 at offset 18, line 2)"
    )


# -------------------------------------------------------------------------------------------
# The pre-scan: limits that keep hostile input from breaking later stages (small limits here,
# so the texts stay readable; tests/test_hostile_frontend.py uses the real ones)


def test_brackets_nested_too_deeply(monkeypatch):
    from cellc import syntax

    monkeypatch.setattr(syntax, "MAX_NESTING", 3)
    assert syntax_error("cell C():\n    y = f(g(h(k(x))))\n") == (
        "x.cell:2:16: error: nested too deeply: more than 3 brackets open at once\n"
        "        y = f(g(h(k(x))))\n"
        "                   ^"
    )


def test_signs_in_a_row(monkeypatch):
    from cellc import syntax

    monkeypatch.setattr(syntax, "MAX_NESTING", 3)
    assert ast("cell C():\n    y = a - -(-b) - - -c\n")  # runs of at most 3 signs
    assert syntax_error("cell C():\n    y = a - -(-(-(-b)))\n") == (
        "x.cell:2:19: error: nested too deeply: more than 3 signs in a row\n"
        "        y = a - -(-(-(-b)))\n"
        "                      ^"
    )


def test_depth_bound_counts_nesting_not_siblings(monkeypatch):
    from cellc import syntax

    monkeypatch.setattr(syntax, "MAX_DEPTH", 4)
    # Arguments are siblings and declarations are separate trees: none of these is deep.
    assert ast("cell C():\n    y = concat(a + b + c, d + e + f, g * h * i)\n")
    assert ast("cell C():\n    param a[H+1], b[H+1], c[H+1], d[H+1], e[H+1]\n")
    assert ast("cell C():\n    y = (a + b + c) + d\n")
    # A group closed inside a chain still counts: ((a + b + c) + d) + e is 4 deep.
    assert syntax_error("cell C():\n    y = (a + b + c) + d + e\n") == (
        "x.cell:2:25: error: expression too long: more than 4 operators and brackets deep;"
        " split it into several assignments\n"
        "        y = (a + b + c) + d + e\n"
        "                            ^"
    )


def test_statements_and_brackets_across_lines_reset_as_the_parser_does(monkeypatch):
    from cellc import syntax

    monkeypatch.setattr(syntax, "MAX_DEPTH", 3)
    assert ast("cell C():\n    y = a + b + c\n    z = a + b + c\n")
    assert syntax_error("cell C():\n    y = (a + b +\n         c + d)\n") == (
        "x.cell:3:12: error: expression too long: more than 3 operators and brackets deep;"
        " split it into several assignments\n"
        "             c + d)\n"
        "               ^"
    )


def test_name_too_long():
    name = "n" * 65
    assert syntax_error(f"cell C():\n    y = {name}\n") == (
        "x.cell:2:9: error: a name of 65 characters; names are at most 64\n"
        f"        y = {name}\n"
        f"            {'^' * 65}"
    )
    assert ast(f"cell C():\n    y = {name[1:]}  # {name} in a comment is fine\n")


def test_number_out_of_range():
    with pytest.raises(CellValueError) as info:
        ast("cell C():\n    y = x * 1.5e309\n")
    assert str(info.value) == (
        "x.cell:2:13: error: number 1.5e309 is out of range for a float\n"
        "        y = x * 1.5e309\n"
        "                ^^^^^^^"
    )


def test_a_long_line_is_shown_as_a_window_around_the_caret():
    line = "    y = " + "a + " * 40 + "ZZZ" + " + b" * 40
    text = syntax_error(f"cell C():\n{line} ZZZ\n")
    # Near the end of the line, the window is the last 100 characters.
    assert text == (
        f"x.cell:2:{len(line) + 2}: error: unexpected name 'ZZZ'; expected end of line"
        " (missing operator?)\n"
        f"    ...{(line + ' ZZZ')[-100:]}\n"
        f"    {' ' * 100}^^^"
    )
    src = Source("x.cell", f"cell C():\n{line}\n")
    col = line.index("ZZZ") + 1
    shown, carets = Span(src, 2, col, 2, col + 3).context().split("\n")
    assert shown.startswith("    ...") and shown.endswith("...") and len(shown) == 4 + 106
    assert shown[carets.index("^"):][:3] == "ZZZ" and carets.strip() == "^^^"


def test_read_a_device_file():
    path = "/dev/null"
    if not os.path.exists(path):
        pytest.skip("needs /dev/null")
    assert str(read_error(path)) == f"{path}: error: not a regular file: {path}"


def test_read_too_large_file(tmp_path):
    path = tmp_path / "big.cell"
    path.write_bytes(b"#" * (Source.MAX_BYTES + 10))
    assert str(read_error(path)) == (
        f"{path}: error: file is too large for a .cell file ({Source.MAX_BYTES + 10} bytes;"
        f" the limit is {Source.MAX_BYTES})"
    )
