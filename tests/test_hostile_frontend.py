"""Hostile input to the front end: every one is a located error (or, for a file that is not a
.cell file at all, an error naming it), quickly, from `cellc check`, and never a traceback.

Each case here once passed `cellc check` and broke later (generated code that does not import,
an OSError, a RecursionError, a hang), or hung or ate memory in the check itself.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cellc
from cellc import cli, names, syntax
from cellc.source import CellError, CellSyntaxError, CellValueError, Source
from cellc.syntax import parse

REPO = Path(__file__).resolve().parent.parent

BODY = """\
    input  x[I]
    state  h[H]
    param  w[H, I], u[H, H] ~ uniform(-1/sqrt(H), 1/sqrt(H))
    h' = tanh(w @ x + u @ h)
    output h'
"""


def write(tmp_path, text: str, name: str = "bad.cell") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def check(path, capsys) -> tuple[int, str, str]:
    status = cli.main(["check", str(path)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


def check_fails_at(path, capsys, line: int, col: int, message: str) -> str:
    """`cellc check` exits 1 with one error located at line:col whose message contains message."""
    status, out, err = check(path, capsys)
    assert status == 1 and out == "", (status, out, err)
    assert err.startswith(f"{path}:{line}:{col}: error: "), err
    assert message in err.splitlines()[0], err
    return err


def cellc_subprocess(*args, timeout: float = 60, memory: int | None = None):
    """Run `python -m cellc ARGS` in a child, optionally with an address-space limit (bytes)."""
    def limit():
        if memory is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return subprocess.run([sys.executable, "-m", "cellc", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, preexec_fn=limit, check=False)


# -------------------------------------------------------------------------------------------
# Names that generated code cannot take


@pytest.mark.parametrize("name", [
    "def", "class", "lambda", "None", "True", "return", "self", "np", "ctypes", "os", "KERNELS",
    "SIZES", "int", "static", "void", "_Bool", "restrict", "len", "_hidden", "SPEC", "Packed",
    "differentiable_backward",
])
def test_cell_names_that_break_generated_code(name, tmp_path, capsys):
    path = write(tmp_path, f"cell {name}(input_size I, hidden_size H):\n{BODY}")
    err = check_fails_at(path, capsys, 1, 6, f"the cell name '{name}' cannot")
    assert err.splitlines()[2] == "         " + "^" * len(name)


@pytest.mark.parametrize("arg, symbol, col, bad", [
    ("def", "I", 8, "def"), ("lambda", "I", 8, "lambda"), ("self", "I", 8, "self"),
    ("None", "I", 8, "None"), ("dtype", "I", 8, "dtype"), ("num_layers", "I", 8, "num_layers"),
    ("input_size'", "I", 8, "input_size'"), ("_x", "I", 8, "_x"),
    ("input_size", "None", 19, "None"), ("input_size", "I'", 19, "I'"),
    ("input_size", "np", 19, "np"), ("input_size", "int", 19, "int"),
    # the layer classes set each size argument as an attribute: these would replace a method
    ("forward", "I", 8, "forward"), ("training", "I", 8, "training"),
    ("state_dict", "I", 8, "state_dict"), ("to", "I", 8, "to"),
])
def test_size_names_that_break_generated_code(arg, symbol, col, bad, tmp_path, capsys):
    body = BODY.replace("[I]", f"[{symbol}]").replace(", I]", f", {symbol}]")
    path = write(tmp_path, f"cell C({arg} {symbol}, hidden_size H):\n{body}")
    check_fails_at(path, capsys, 1, col, f"'{bad}' cannot")


@pytest.mark.parametrize("name", ["Np", "Torch", "Lstm", "Print", "Selfish", "KERNEL", "Int", "Def",
                                  "CTYPES"])
def test_names_close_to_reserved_ones_are_fine(name, tmp_path, capsys):
    path = write(tmp_path, f"cell {name}(input_size I, hidden_size H):\n{BODY}")
    status, out, err = check(path, capsys)
    assert status == 0 and out.startswith(f"{path}: ok: {name}("), err


@pytest.mark.parametrize("pname", ["__init__", "_private", "forward", "training", "hidden_size"])
def test_parameter_names_the_layers_need_are_refused_by_check(pname, tmp_path, capsys):
    """Every target agrees: `cellc check` refuses what the torch layer classes cannot take."""
    path = write(tmp_path, f"cell C(input_size I, hidden_size H):\n{BODY.replace('w', pname)}")
    check_fails_at(path, capsys, 4, 12, f"parameter '{pname}'")


def test_a_huge_cell_name_is_a_short_located_error(tmp_path, capsys):
    path = write(tmp_path, f"cell {'C' * 100_000}(input_size I, hidden_size H):\n{BODY}")
    err = check_fails_at(path, capsys, 1, 6, "a name of 100000 characters")
    assert len(err) < 1000, len(err)  # neither the name nor the line is echoed whole


def test_name_length_limit(tmp_path, capsys):
    ok = "w" * names.MAX_NAME_LENGTH
    path = write(tmp_path, f"cell C(input_size I, hidden_size H):\n{BODY.replace('w', ok)}")
    assert check(path, capsys)[0] == 0
    path = write(tmp_path, f"cell C(input_size I, hidden_size H):\n{BODY.replace('w', ok + 'w')}")
    check_fails_at(path, capsys, 4, 12, "names are at most 64")


def test_huge_name_with_the_llvm_target_is_a_located_error(tmp_path, capsys):
    path = write(tmp_path, f"cell {'C' * 100_000}(input_size I, hidden_size H):\n{BODY}")
    out = tmp_path / "out"
    status = cli.main(["compile", str(path), "--target", "llvm", "--sizes",
                       "input_size=2,hidden_size=2", "-o", str(out)])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith(f"{path}:1:6: error: ") and "Traceback" not in err
    assert not out.exists()


def _module_level_names(text: str) -> set[str]:
    """Names a generated file binds at module level (imports, assignments, defs, classes)."""
    bound = set()
    for node in ast.parse(text).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                bound |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
    return bound


def test_reserved_list_covers_what_the_generated_files_define(tmp_path):
    """names.GENERATED_NAMES must hold every module-level name of the torch module and of the
    AOT loader (other than the cell's own names and _private ones); this fails when a backend
    starts defining a new one."""
    from cellc.api import torch_source
    from cellc.backends import aot

    path = write(tmp_path, f"cell Zq(input_size I, hidden_size H):\n{BODY}", "zq.cell")
    cell = cellc.load_cell(path)
    own = {"Zq", "ZqCell", "ZqSequence", "zq_forward", "zq_backward", "zq_sequence",
           "zq_masked_forward", "zq_masked_backward"}
    for text in (torch_source(path), aot._loader(cell, {"I": 2, "H": 2}, {}, "zq")):
        defined = {n for n in _module_level_names(text) - own if not n.startswith("_")}
        assert defined <= names.GENERATED_NAMES, defined - names.GENERATED_NAMES


# -------------------------------------------------------------------------------------------
# Files that are not .cell files


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "pipe.cell"
    os.mkfifo(fifo)
    r = cellc_subprocess("check", fifo, timeout=30)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == f"{fifo}: error: not a regular file: {fifo}\n"


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_dev_zero_is_refused_without_reading_it():
    r = cellc_subprocess("check", "/dev/zero", timeout=30, memory=2 << 30)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == "/dev/zero: error: not a regular file: /dev/zero\n"


def test_file_size_cap(tmp_path, capsys):
    cap = Source.MAX_BYTES
    text = f"cell C(input_size I, hidden_size H):\n{BODY}"
    path = write(tmp_path, text + "#" * (cap - len(text)))  # exactly at the cap: read
    status, out, err = check(path, capsys)
    assert status == 0, err
    path = write(tmp_path, text + "#" * (cap + 1 - len(text)))
    status, out, err = check(path, capsys)
    assert status == 1 and out == ""
    assert err == (f"{path}: error: file is too large for a .cell file ({cap + 1} bytes;"
                   f" the limit is {cap})\n")


# -------------------------------------------------------------------------------------------
# Deep nesting and huge expressions


HEAD = "cell C(input_size I, hidden_size H):\n    input x[I]\n    state h[H]\n"


# The expression starts at column 10 (after "    h' = "); each error points at the token that
# crosses a limit: the 101st sign or bracket, the 201st operator.
@pytest.mark.parametrize("expr, col, message", [
    ("-" * 500 + "h", 10 + syntax.MAX_NESTING, "nested too deeply: more than 100 signs"),
    ("+" * 500 + "h", 10 + syntax.MAX_NESTING, "nested too deeply: more than 100 signs"),
    ("-(" * 500 + "h" + ")" * 500, 10 + 2 * syntax.MAX_NESTING, "nested too deeply"),
    ("tanh(" * 500 + "h" + ")" * 500, 10 + 5 * syntax.MAX_NESTING + 4,
     "nested too deeply: more than 100 brackets"),
    ("(" * 500 + "h" + ")" * 500, 10 + syntax.MAX_NESTING, "nested too deeply"),
    ("+".join(["h"] * 2000), 10 + 2 * syntax.MAX_DEPTH + 1, "expression too long"),
    ("h" + "^2" * 600, 10 + 2 * syntax.MAX_DEPTH + 1, "expression too long"),
    ("h" + "*(h" * 150 + ")" * 150, 10 + 3 * (syntax.MAX_DEPTH // 2) + 1, "expression too long"),
])
def test_deep_or_long_expressions_are_located_errors(expr, col, message, tmp_path, capsys):
    path = write(tmp_path, HEAD + f"    h' = {expr}\n    output h'\n")
    err = check_fails_at(path, capsys, 4, col, message)
    assert len(err) < 1000  # the line is shown as a window around the caret


def test_deep_nesting_in_a_declaration(tmp_path, capsys):
    path = write(tmp_path, HEAD + f"    param w[{'(' * 200}H{')' * 200}]\n    h' = h\n"
                 "    output h'\n")
    check_fails_at(path, capsys, 4, 13 + 99, "nested too deeply")  # '[' is the first level


def test_expressions_at_the_limits_still_compile(tmp_path, capsys):
    """The limits leave room for the recursion of lowering: the deepest accepted trees lower."""
    n, d = syntax.MAX_NESTING, syntax.MAX_DEPTH
    for expr in ("-" * n + "h", "tanh(" * n + "h" + ")" * n,
                 "-tanh(" * (d // 2) + "h" + ")" * (d // 2),
                 "+".join(["h"] * (d + 1)), "concat(" + ", ".join(["-" * n + "h"] * 50) + ")"):
        path = write(tmp_path, HEAD + f"    y = {expr}\n    h' = h\n    output h'\n")
        status, _, err = check(path, capsys)
        assert status == 0, err


def test_a_one_megabyte_line_fails_fast(tmp_path, capsys):
    body = "+".join(["h"] * 400_000)  # under the file size cap
    path = write(tmp_path, HEAD + f"    h' = {body}\n    output h'\n")
    start = time.perf_counter()
    check_fails_at(path, capsys, 4, 10 + 2 * syntax.MAX_DEPTH + 1, "too long")
    assert time.perf_counter() - start < 5


def test_a_deep_megabyte_expression_through_the_api_fails_fast():
    text = HEAD + "    h' = " + "-(" * 250_000 + "h" + ")" * 250_000 + "\n    output h'\n"
    start = time.perf_counter()
    with pytest.raises(CellSyntaxError, match="nested too deeply"):
        parse(Source("x.cell", text))
    assert time.perf_counter() - start < 5


def test_ten_megabytes_of_text_through_the_api_fail_fast():
    """Text that does not come from a file has the file's cap too, so the pre-scan never reads
    more than a megabyte (here it would find no limit crossed and read it all)."""
    text = HEAD + "    h' = " + "h " * 5_000_000 + "\n    output h'\n"
    start = time.perf_counter()
    with pytest.raises(CellSyntaxError, match="text is too large for a .cell file"):
        parse(Source("x.cell", text))
    assert time.perf_counter() - start < 2


def test_recursion_is_a_located_error_even_past_the_limits(tmp_path, capsys, monkeypatch):
    """The last resort: with the pre-scan's limits lifted, a tree too deep for Python's stack
    is still a located error, not a RecursionError."""
    monkeypatch.setattr(syntax, "MAX_DEPTH", 10**9, raising=False)
    monkeypatch.setattr(syntax, "MAX_NESTING", 10**9, raising=False)
    for expr in ("-" * 5000 + "h", "+".join(["h"] * 5000), "tanh(" * 5000 + "h" + ")" * 5000):
        path = write(tmp_path, HEAD + f"    h' = {expr}\n    output h'\n")
        err = check_fails_at(path, capsys, 4, 5, "nested too deeply")
        assert len(err) < 1000


# -------------------------------------------------------------------------------------------
# Numbers and initializers


@pytest.mark.parametrize("line, col, literal", [
    ("    h' = tanh(h * 1e400)", 19, "1e400"),
    ("    h' = tanh(h * " + "9" * 400 + ")", 19, "9" * 400),
    ("    h' = tanh(h) ^ 1e999", 20, "1e999"),
])
def test_out_of_range_literals(line, col, literal, tmp_path, capsys):
    path = write(tmp_path, HEAD + line + "\n    output h'\n")
    err = check_fails_at(path, capsys, 4, col, "out of range")
    assert len(err) < 1000


def test_out_of_range_literal_in_an_initializer(tmp_path, capsys):
    path = write(tmp_path, HEAD + "    param b[H] ~ constant(2e308)\n    h' = h + b\n"
                 "    output h'\n")
    check_fails_at(path, capsys, 4, 27, "out of range")


@pytest.mark.parametrize("init, col, message", [
    ("uniform(log(-1), 1)", 26, "log of -1 is not a finite real number"),
    ("uniform(-1, 1/0)", 30, "division by zero"),
    ("constant(sqrt(-2))", 27, "sqrt of -2 is not a finite real number"),
    ("constant(exp(1000))", 27, "exp(1000) is not a finite number"),
    ("constant(1e300 * 1e300)", 27, "not a finite number"),
    ("constant((-1)^0.5)", 27, "(-1)^0.5 is not a real number"),
    ("constant(0^-1)", 27, "division by zero"),
    ("normal(0, H * 1/(2 - 2))", 28, "division by zero"),  # in a size-dependent argument
])
def test_initializer_domain_errors_are_reported_by_check(init, col, message, tmp_path, capsys):
    path = write(tmp_path, HEAD + f"    param b[H] ~ {init}\n    h' = h + b\n    output h'\n")
    check_fails_at(path, capsys, 4, col, message)


def test_size_dependent_initializer_errors_are_located_when_sizes_are_bound(tmp_path):
    path = write(tmp_path, HEAD + "    param b[H] ~ uniform(-1/(H - 2), log(H - 3))\n"
                 "    h' = h + b\n    output h'\n")
    cell = cellc.load_cell(path)  # fine for some sizes, so check accepts it
    (b,) = cell.params
    assert b.init.values({"I": 1, "H": 4}) == [-0.5, 0.0]
    with pytest.raises(CellValueError) as info:
        b.init.values({"I": 1, "H": 2})
    assert isinstance(info.value, ValueError)  # what a layer's constructor raises for sizes
    assert str(info.value).startswith(f"{path}:4:26: error: division by zero with H=2, I=1\n")
    with pytest.raises(CellValueError) as info:
        b.init.values({"I": 1, "H": 3})
    assert str(info.value).startswith(
        f"{path}:4:38: error: log of 0 is not a finite real number with H=3, I=1\n")


def test_errors_are_cell_errors_for_the_api(tmp_path):
    path = write(tmp_path, f"cell lambda(input_size I, hidden_size H):\n{BODY}")
    with pytest.raises(CellError):
        cellc.load_cell(path)
