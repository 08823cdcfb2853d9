"""A corpus of malformed and hostile `.cell` texts, built deterministically from the zoo.

Each entry is `(id, bytes)`. The corpus mixes
- every zoo cell cut short at each line and in the middle of lines,
- seeded character-level mutations (deletions, insertions of hostile characters, swaps),
- hand-written cases: deep nesting, huge literals, keyword and shadowing names, very long names,
  bad encodings, control characters, domain errors in initializers, shape and name errors.

`tests/test_hostile_corpus.py` runs the command line over all of it and checks that every case
ends in a located error or a success, never in a traceback.
"""

from __future__ import annotations

import random
from pathlib import Path

CELLS_DIR = Path(__file__).resolve().parent.parent / "cells"

# Characters that have broken parsers, printers and code generators elsewhere.
HOSTILE = [
    "'", '"', '"""', "\\", "\n", "\r", "\t", "\x00", "\x0c", "\u2028", "\u2029", "\x85",
    "*/", "/*", "$(", "`", "#", "@", "^", "**", "(", ")", "[", "]", ",", "=", "~", ":",
    "-", "+", "*", "/", "1e400", "9" * 40, ".", "..", "'", "\ufeff", "é", "λ",
]

RNN = (CELLS_DIR / "rnn.cell").read_text()

HEADER = "cell C(input_size I, hidden_size H):\n    input x[I]\n    state h[H]\n"
PARAMS = "    param W[H, I], U[H, H] ~ uniform(-0.1, 0.1)\n"


def _body(eq: str, params: str = PARAMS) -> str:
    return HEADER + params + f"    h' = {eq}\n    output h'\n"


def _handwritten() -> dict[str, str]:
    deep = 500
    cases = {
        "empty": "",
        "only_comment": "# nothing here\n",
        "nul_bytes": RNN.replace("tanh", "ta\x00nh"),
        "bom": "\ufeff" + RNN,
        "crlf": RNN.replace("\n", "\r\n"),
        "lone_cr": RNN.replace("\n", "\r"),
        "u2028_in_eq": RNN.replace("+ bias_hh", "+\u2028bias_hh"),
        "nested_parens": _body("(" * deep + "W @ x" + ")" * deep + " + U @ h"),
        "nested_calls": _body("tanh(" * deep + "W @ x + U @ h" + ")" * deep),
        "unary_minus_run": _body("-" * deep + "(W @ x + U @ h)"),
        "unary_plus_run": _body("+" * deep + "(W @ x + U @ h)"),
        "power_chain": _body("tanh(W @ x + U @ h)" + " ^ 2" * deep),
        "long_sum": _body(" + ".join(["W @ x"] * 3000) + " + U @ h"),
        "literal_1e400": _body("tanh(W @ x + U @ h) * 1e400"),
        "literal_5000_digits": _body("tanh(W @ x + U @ h) * " + "9" * 5000),
        "literal_tiny": _body("tanh(W @ x + U @ h) * 1e-400"),
        "pow_huge": _body("tanh(W @ x + U @ h) ^ 1e400"),
        "exp_overflow": _body("tanh(W @ x + U @ h) * exp(1000) + log(0) + sqrt(-1)"),
        "init_log_neg": _body("tanh(W @ x + U @ h)",
                              "    param W[H, I], U[H, H] ~ uniform(log(-1), 1)\n"),
        "init_div_zero": _body("tanh(W @ x + U @ h)",
                               "    param W[H, I], U[H, H] ~ uniform(-1/0, 1/0)\n"),
        "init_sqrt_neg": _body("tanh(W @ x + U @ h)",
                               "    param W[H, I], U[H, H] ~ uniform(-sqrt(-H), 1)\n"),
        "init_unknown": _body("tanh(W @ x + U @ h)", "    param W[H, I], U[H, H] ~ magic(1)\n"),
        "init_bad_arity": _body("tanh(W @ x + U @ h)", "    param W[H, I], U[H, H] ~ uniform(1)\n"),
        "shape_mismatch": _body("tanh(W @ h + U @ h)"),
        "undefined_name": _body("tanh(W @ x + U @ nothing)"),
        "unknown_function": _body("frobnicate(W @ x + U @ h)"),
        "wrong_arity": _body("tanh(W @ x, U @ h)"),
        "no_output": HEADER + PARAMS + "    h' = tanh(W @ x + U @ h)\n",
        "no_next_state": HEADER + PARAMS + "    y = tanh(W @ x + U @ h)\n    output y\n",
        "dim_zero": RNN.replace("weight_ih[H, I]", "weight_ih[0, I]"),
        "dim_negative": RNN.replace("weight_ih[H, I]", "weight_ih[-H, I]"),
        "dim_fraction": RNN.replace("weight_ih[H, I]", "weight_ih[H/3, I]"),
        "dim_huge": RNN.replace("weight_ih[H, I]", "weight_ih[" + "9" * 30 + ", I]"),
        "dim_float": RNN.replace("weight_ih[H, I]", "weight_ih[1.5, I]"),
        "long_cell_name": RNN.replace("cell RNN", "cell " + "N" * 100_000),
        "long_param_name": RNN.replace("weight_hh", "w" * 100_000),
        "name_primed_cell": RNN.replace("cell RNN", "cell RNN'"),
        "name_primed_size": RNN.replace("hidden_size H", "hidden_size' H"),
        "name_primed_symbol": RNN.replace("hidden_size H", "hidden_size H'").replace("[H", "[H'"),
        "duplicate_param": RNN.replace("bias_hh[H]", "bias_ih[H]"),
        "duplicate_size": RNN.replace("input_size I", "input_size H"),
        "assign_to_param": RNN.replace("h' = ", "weight_ih = "),
        "assign_twice": RNN.replace("    output", "    h' = h\n    output"),
        "split_uneven": RNN.replace("h' = tanh(", "a, b = split(weight_hh @ h, 3)\n    h' = tanh("),
        "tab_indent": RNN.replace("    ", "\t"),
        "backslash_continuation": RNN.replace("+ weight_hh", "\\\n + weight_hh"),
        "trailing_backslash": RNN + "\\",
        "unclosed_bracket": RNN.replace("tanh(", "tanh(("),
        "stray_close": RNN.replace("bias_hh)", "bias_hh))"),
        "two_cells": RNN + RNN,
        "comment_injection": RNN.replace(
            "output h'", 'output h\'  # \\u000aimport os;os.system("touch pwned")\\u000a'),
        "triple_quotes": RNN.replace("# Elman", '# """ \'\'\' Elman'),
        "c_comment_close": RNN.replace("# Elman", "# */ int system(const char*); /* Elman"),
        "coding_cookie": "# -*- coding: raw_unicode_escape -*-\n" + RNN,
        "coding_cookie_2": "#\n# vim: set fileencoding=utf-16 :\n" + RNN,
        "dollar_paren": RNN.replace("# Elman", "# $(touch pwned) `touch pwned` Elman"),
        # The language of issue 12, malformed: comparisons, defs, hyper-parameters, state
        # values, constants and initializer expressions.
        "compare_chain": _body("tanh(W @ x + U @ h) < h < h"),
        "compare_dangling": _body("tanh(W @ x + U @ h) <"),
        "compare_triple_eq": _body("tanh(W @ x + U @ h) === h"),
        "where_arity": _body("where(h > 0, h)"),
        "def_no_body": _body("h", PARAMS + "    def f(a) =\n"),
        "def_no_parens": _body("h", PARAMS + "    def f = h\n"),
        "def_uses_state": _body("f(h)", PARAMS + "    def f(a) = a * h\n"),
        "def_recursive": _body("f(h)", PARAMS + "    def f(a) = f(a)\n"),
        "def_wrong_arity": _body("f(h, h)", PARAMS + "    def f(a) = a\n"),
        "def_shadows_tanh": _body("tanh(h)", PARAMS + "    def tanh(a) = a\n"),
        "def_as_value": _body("f + h", PARAMS + "    def f(a) = a\n"),
        "def_keyword_name": _body("h", PARAMS + "    def def(a) = a\n"),
        "def_exponential": _body("f24(h)", PARAMS + "".join(
            ["    def f0(a) = a * 2\n"]
            + [f"    def f{k}(a) = f{k - 1}(a) + f{k - 1}(a)\n" for k in range(1, 25)])),
        "def_deep": _body("f5(h)", PARAMS + "".join(
            f"    def f{k}(a) = " + "(" * 60 + (f"f{k - 1}(a)" if k else "a") + " + 1)" * 60
            + "\n" for k in range(6))),
        "hyper_no_default": RNN.replace("hidden_size H", "hidden_size H, forget_bias"),
        "hyper_size_default": RNN.replace("hidden_size H", "hidden_size H, fb=H"),
        "hyper_keyword": RNN.replace("hidden_size H", "hidden_size H, lambda=1.0"),
        "hyper_twice": RNN.replace("hidden_size H", "hidden_size H, a=1.0, a=2.0"),
        "hyper_huge": RNN.replace("hidden_size H", "hidden_size H, a=1e400"),
        "hyper_dangling": RNN.replace("hidden_size H", "hidden_size H, a="),
        "state_value_name": RNN.replace("state  h[H]", "state  h[H] = x"),
        "state_value_log0": RNN.replace("state  h[H]", "state  h[H] = log(0)"),
        "state_value_tilde": RNN.replace("state  h[H]", "state  h[H] ~ ones()"),
        "state_value_size_log": RNN.replace("state  h[H]",
                                                "state  h[H] = log(H - 1)"),
        "input_value": RNN.replace("input  x[I]", "input  x[I] = 1"),
        "const_vector_orthogonal": RNN.replace("bias   bias_ih", "const  bias_ih").replace(
            "uniform(-1/sqrt(H), 1/sqrt(H))\n    h'", "orthogonal()\n    h'"),
        "const_assigned": RNN.replace("param  weight_ih", "const  weight_ih").replace(
            "    h' = ", "    weight_ih = h\n    h' = "),
        "const_frozen_ok": RNN.replace("param  weight_ih", "const  weight_ih"),
        "arange_huge": RNN.replace("uniform(-1/sqrt(H), 1/sqrt(H))", "arange(1e300)", 1),
        "arange_step0": RNN.replace("uniform(-1/sqrt(H), 1/sqrt(H))", "arange(0, 1, 0)", 1),
        "arange_log0": RNN.replace("uniform(-1/sqrt(H), 1/sqrt(H))", "log(arange(H))", 1),
        "arange_mismatch": RNN.replace("uniform(-1/sqrt(H), 1/sqrt(H))", "arange(3)", 1),
        "arange_nested": RNN.replace("uniform(-1/sqrt(H), 1/sqrt(H))", "arange(arange(2))", 1),
        "values_state": RNN.replace("uniform(-1/sqrt(H), 1/sqrt(H))", "h * 2", 1),
    }
    for kw in ("def", "class", "lambda", "None", "True", "return", "self", "np", "ctypes",
               "KERNELS", "torch", "import", "int", "void", "static", "struct", "__init__"):
        cases[f"cell_name_{kw}"] = RNN.replace("cell RNN", f"cell {kw}")
        cases[f"size_arg_{kw}"] = RNN.replace("input_size I", f"{kw} I")
        cases[f"size_symbol_{kw}"] = RNN.replace("input_size I", f"input_size {kw}").replace(
            ", I]", f", {kw}]")
        cases[f"param_name_{kw}"] = RNN.replace("weight_hh", kw)
    return cases


def _truncations(name: str, text: str) -> dict[str, str]:
    out = {}
    lines = text.splitlines(keepends=True)
    for n in range(len(lines)):
        cut = "".join(lines[:n])
        if n:  # the first cut is the empty file, a case of its own
            out[f"{name}_lines{n}"] = cut
        line = lines[n]
        out[f"{name}_mid{n}"] = cut + line[: max(1, len(line) // 2)]
    return out


def _mutations(name: str, text: str, rng: random.Random, count: int) -> dict[str, str]:
    out = {}
    for k in range(count):
        s = text
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(s) + 1)
            what = rng.random()
            if what < 0.35:
                s = s[:i] + s[i + rng.randint(1, 4):]
            elif what < 0.8:
                s = s[:i] + rng.choice(HOSTILE) + s[i:]
            else:
                j = rng.randrange(len(s) + 1)
                i, j = min(i, j), max(i, j)
                s = s[:i] + s[j:j + (j - i)] + s[i:]
        out[f"{name}_mut{k}"] = s
    return out


def corpus() -> list[tuple[str, bytes]]:
    """Every case as (id, file bytes). Deterministic: the same list on every machine."""
    rng = random.Random(20261202)
    cases: dict[str, bytes] = {}
    for key, text in _handwritten().items():
        cases[key] = text.encode("utf-8")
    cases["invalid_utf8"] = RNN.encode() + b"\xff\xfe\x80"
    cases["latin1"] = RNN.replace("Elman", "Elm\u00e4n").encode("latin-1")
    cases["utf16"] = RNN.encode("utf-16")
    for path in sorted(CELLS_DIR.glob("*.cell")):
        text = path.read_text()
        for key, t in _truncations(path.stem, text).items():
            cases[key] = t.encode("utf-8")
        for key, t in _mutations(path.stem, text, rng, 12).items():
            cases[key] = t.encode("utf-8", "surrogatepass")
    return sorted(cases.items())
