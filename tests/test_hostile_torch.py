"""Hostile .cell files and file names against the generated PyTorch module (issue 9, H1).

The rule (../shared/STYLE.md, "Generated code is a boundary"): text from a .cell file or its path
enters generated Python only as repr() of a string or as a comment of printable ASCII without
backslashes, and never on the first two lines, where Python reads an encoding declaration
(PEP 263). The reproduction from the issue: a file name holding `coding=raw_unicode_escape` made
line 1 such a declaration, and a `\\u000a` in a .cell comment then decoded to a real newline, so
the text after it ran as Python on import. `coding=utf-7` does the same with `+AAo-`, which has
no backslash: keeping the first two lines fixed is what closes it, not filtering characters.

Every case is compiled with `cellc compile --target torch` (cellc.cli.main), its first two lines
must equal those of an unrelated cell's module, every comment must obey the rule, and the module
must import (one subprocess imports all of them, each with its own folder as the working
directory) without creating a file or printing anything. `cellc.load` must load it too.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

import cellc
from cellc import cli
from cellc.backends.torch_src import Names, emit_module
from cellc.ir import Value
from cellc.pipeline import compile_program
from cellc.shapes import Batch, Dim, TensorType

CELLS_DIR = Path(__file__).resolve().parent.parent / "cells"
EQUATION = "    h' = nonlinearity(weight_ih @ x + bias_ih + weight_hh @ h + bias_hh)\n"

PWN = 'import os;os.system("touch pwned")'
# The issue's text: decoded, the injected line also breaks the indentation (the module fails).
ISSUE_PAYLOAD = "\\u000a" + PWN + "\\u000a"
# The same made valid Python: `def _f():` adopts the rest of the function, so os.system runs.
RUE_PAYLOAD = "\\u000a" + PWN + "\\u000adef _f():#"
UTF7_PAYLOAD = "+AAo-" + PWN + "+AAo-def _f():#"
RUE_NAME = "rnn coding=raw_unicode_escape .cell"
COOKIE_LINES = "# -*- coding: raw_unicode_escape -*-\n# vim: set fileencoding=utf-7 :\n"


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    filename: str = "rnn.cell"
    comment: str = "plain"
    prefix: str = ""  # lines before the .cell file's own text


NAME_CASES = [
    Case("issue-reproduction", RUE_NAME, ISSUE_PAYLOAD),
    Case("raw-unicode-escape", RUE_NAME, RUE_PAYLOAD),
    Case("utf-7", "rnn coding=utf-7 .cell", UTF7_PAYLOAD),
    Case("emacs-cookie", "-*- coding: raw_unicode_escape -*- .cell", RUE_PAYLOAD),
    Case("cookie-on-line-2", "x\n# coding=raw_unicode_escape\n.cell", RUE_PAYLOAD),
    Case("escapes-in-name", "coding=raw_unicode_escape \\u000a" + PWN + "\\u000a.cell"),
    Case("backslash-N", "c\\N{LINE FEED}" + PWN + ".cell"),
    Case("triple-quotes", 'a"""+str(__import__("os").system("touch pwned"))+""".cell'),
    Case("single-triple-quotes", "b'''+str(__import__('os').system('touch pwned'))+'''.cell"),
    Case("quotes", "q\"uo'te\".cell"),
    Case("newline", "d\n" + PWN + "\n.cell"),
    Case("carriage-return", "e\r" + PWN + "\r.cell"),
    Case("u2028", "f\u2028" + PWN + "\u2028.cell"),
    Case("u2029", "g\u2029" + PWN + "\u2029.cell"),
    Case("u0085", "h\x85" + PWN + "\x85.cell"),
    Case("form-feed", "i\x0c" + PWN + ".cell"),
    Case("shell", "$(touch pwned)`touch pwned`.cell"),  # ('*/' needs '/': only in comments)
    Case("non-ascii", "ünïcødé 名前.cell"),
    Case("undecodable-bytes", os.fsdecode(b"k\xff\xfe.cell")),
]
# Comments on a .cell line; the file name is the cookie, in case one ever reached line 1.
COMMENT_CASES = [
    Case("comment-triple-quotes", RUE_NAME,
         '""" + str(__import__("os").system("touch pwned")) + """'),
    Case("comment-single-triple-quotes", RUE_NAME,
         "''' + str(__import__('os').system('touch pwned')) + '''"),
    Case("comment-backslash-at-end", RUE_NAME, "a line that ends in a backslash \\"),
    Case("comment-escapes", RUE_NAME, "\\\\ \\x0a \\N{LINE FEED} \\u2028 \\U0000000a"),
    Case("comment-nul", RUE_NAME, "a\0" + PWN),
    Case("comment-carriage-return", RUE_NAME, "\r" + PWN),
    Case("comment-form-feed", RUE_NAME, "\x0c" + PWN),
    Case("comment-u2028", RUE_NAME, "\u2028" + PWN),
    Case("comment-u2029", RUE_NAME, "\u2029" + PWN),
    Case("comment-u0085", RUE_NAME, "\x85" + PWN),
    Case("comment-c-comment-end", RUE_NAME, '*/ system("touch pwned"); /*'),
    Case("comment-shell", RUE_NAME, "$(touch pwned) `touch pwned`"),
    Case("comment-utf-7", "rnn coding=utf-7 .cell", UTF7_PAYLOAD),
    Case("cookie-lines-in-cell", RUE_NAME, RUE_PAYLOAD, prefix=COOKIE_LINES),
]
CASES = NAME_CASES + COMMENT_CASES


def cell_text(comment: str, prefix: str = "", name: str = "RNN") -> str:
    """cells/rnn.cell with its equation split in two. The input projection gets its own line,
    carrying the comment: the generated code writes that line only at one indentation (before
    and after the time loop), so an injected `def _f():` keeps the module valid Python."""
    rnn = (CELLS_DIR / "rnn.cell").read_text()
    assert EQUATION in rnn
    split = (f"    a = weight_ih @ x + bias_ih  # {comment}\n"
             "    h' = nonlinearity(a + weight_hh @ h + bias_hh)\n")
    return prefix + rnn.replace(EQUATION, split).replace("cell RNN(", f"cell {name}(")


def compile_case(folder: Path, case: Case) -> tuple[int, Path, Path]:
    """Write the case's .cell into its own folder and compile it with the CLI."""
    folder.mkdir()
    path = folder / case.filename
    path.write_bytes(cell_text(case.comment, case.prefix).encode())
    out = folder / "gen.py"
    status = cli.main(["compile", str(path), "--target", "torch", "-o", str(out)])
    return status, path, out


IMPORTER = """\
import importlib.util, json, os, sys
results = {}
for i, folder in enumerate(sys.argv[2:]):
    os.chdir(folder)  # an injected `touch pwned` would land here
    try:
        spec = importlib.util.spec_from_file_location(f"gen_{i}", os.path.join(folder, "gen.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)  # reads the bytes and honours PEP 263, as `import` does
        results[folder] = "ok" if isinstance(mod.Layer, type) else "no Layer class"
    except BaseException as e:
        results[folder] = f"{type(e).__name__}: {e}"
with open(sys.argv[1], "w") as f:
    json.dump(results, f)
"""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Every case compiled, then imported in one fresh interpreter (torch loads once).
    Returns {case id: (status, .cell path, generated path, import result, files after)}."""
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("hostile")
    built = {c.id: compile_case(root / c.id, c) for c in CASES}
    report = root / "imports.json"
    folders = [str(p.parent) for status, p, _ in built.values() if status == 0]
    r = subprocess.run([sys.executable, "-c", IMPORTER, str(report), *folders],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r
    imports = json.loads(report.read_text())
    return {cid: (status, path, out, imports.get(str(path.parent)),
                  sorted(os.listdir(path.parent)))
            for cid, (status, path, out) in built.items()}


@pytest.fixture(scope="module")
def plain_header(tmp_path_factory) -> list[str]:
    """The first two lines of the module for an unrelated cell name and file name."""
    folder = tmp_path_factory.mktemp("plain")
    path = folder / "plain.cell"
    path.write_text(cell_text("plain", name="Plain"))
    out = folder / "plain.py"
    assert cli.main(["compile", str(path), "-o", str(out)]) == 0
    text = out.read_text()
    assert "plain.cell" in text  # the file name is still recorded, further down
    return text.splitlines()[:2]


def comments(text: str) -> list[str]:
    return [t.string for t in tokenize.generate_tokens(io.StringIO(text).readline)
            if t.type == tokenize.COMMENT]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_text_cannot_run_on_import(case, compiled, plain_header, capfd):
    status, path, out, imported, files = compiled[case.id]
    assert status == 0, capfd.readouterr().err
    assert imported == "ok"
    assert files == sorted([path.name, "gen.py"])  # no `pwned`, nothing else created
    raw = out.read_bytes()
    assert raw.decode("utf-8").splitlines()[:2] == plain_header
    bad = [c for c in comments(raw.decode("utf-8"))
           if not all(" " <= ch <= "~" and ch != "\\" for ch in c)]
    assert bad == []


IN_MEMORY = [pytest.param(c, id=c.id) for c in CASES]


@pytest.mark.slow
@pytest.mark.parametrize("case", IN_MEMORY)
def test_hostile_text_loads_in_memory(case, compiled, monkeypatch):
    torch = pytest.importorskip("torch")
    _, path, _, _, files = compiled[case.id]
    monkeypatch.chdir(path.parent)
    mod = cellc.load(path, target="torch")
    y, h = mod.Layer(3, 4)(torch.randn(5, 2, 3))
    assert y.shape == (5, 2, 4) and h.shape == (1, 2, 4)
    assert sorted(os.listdir(path.parent)) == files


@pytest.mark.slow
def test_issue_reproduction_with_import(tmp_path):
    """The issue's steps, literally: `import gen` in a fresh interpreter, cwd = the folder.
    (Before the fix this created `pwned`.)"""
    pytest.importorskip("torch")
    path = tmp_path / RUE_NAME
    path.write_text(cell_text(RUE_PAYLOAD))
    assert cli.main(["compile", str(path), "--target", "torch",
                     "-o", str(tmp_path / "gen.py")]) == 0
    r = subprocess.run([sys.executable, "-c", "import gen; print(gen.Layer.__name__)"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert (r.returncode, r.stdout, r.stderr) == (0, "RNN\n", "")
    assert set(os.listdir(tmp_path)) - {"__pycache__"} == {RUE_NAME, "gen.py"}


# ---------------------------------------------------------------------------------------------
# Names and numbers written as Python code


def test_value_names_become_ascii_identifiers():
    """Names() is the only way a value's name reaches the code: whatever the name, the result is
    a plain ASCII identifier, not a keyword, and distinct from the others."""
    t = TensorType((Dim.of("H"),), batch=Batch.STEP)
    hostile = ["a_b", "a-b", "x y", "1st", "é", "a\nimport os", "None", "__import__", "h'", "",
               "a b"]
    names = Names()
    values = [Value(n, t) for n in hostile]  # kept alive: Names keys on id()
    got = [names(v) for v in values]
    assert all(g.isascii() and g.isidentifier() and g not in ("None", "__import__")
               for g in got), got
    assert len(set(got)) == len(got)
    assert got[hostile.index("a_b")] == "a_b" and got[hostile.index("h'")] == "h_next"


@pytest.mark.parametrize("name", ["Bad\nName", "Bad Name", "Bad'''", "Ünï", "1Bad"])
def test_cell_names_that_are_not_identifiers_are_clean_errors(name, tmp_path):
    """The grammar admits only identifiers; emit_module checks again rather than trust it."""
    path = tmp_path / "ok.cell"
    path.write_text(cell_text("plain"))
    cell = dataclasses.replace(cellc.load_cell(path), name=name)
    with pytest.raises(cellc.CellError, match="cannot name a Python class"):
        emit_module(cell, compile_program(cell), str(path), cellc.__version__)


@pytest.mark.parametrize("x", [float("inf"), float("-inf"), float("nan"), 1.5, 1e308])
def test_numbers_are_never_written_as_names(x):
    """repr(float('inf')) is `inf`: written raw, a number would read a variable of that name (a
    .cell value may be called `inf`). The parser now refuses literals like 1e999, but a folded
    constant or an initializer argument could still be infinite."""
    from cellc import ast_nodes as A
    from cellc.backends.torch_src import _float, number_expr

    shadows = {"inf": 0.0, "nan": 0.0}
    for text in (_float(x), number_expr(A.Num(x, None))):
        y = eval(text, shadows)
        assert y == x or (math.isnan(x) and math.isnan(y)), text
