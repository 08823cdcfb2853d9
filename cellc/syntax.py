"""Parse `.cell` text into the AST (`ast_nodes.py`).

Lark (LALR, grammar in `cell.lark`) does the parsing; this module owns every Lark exception and
turns each into a located `CellSyntaxError`, so no Lark type escapes it.

Before Lark, a pre-scan (`_prescan`) rejects what would parse but break a later stage: names
too long for file names and C symbols, number literals that are not finite floats (1e400), and
expressions nested so deeply that the recursive stages after parsing (lowering, printing) would
exhaust Python's stack. The scan is one regex pass that stops at the first problem, so hostile
input (500 nested calls, a 10 MB line) fails in milliseconds, located where the limit is crossed.
"""

from __future__ import annotations

import math
import re
from functools import cache
from pathlib import Path

import lark
from lark import Lark, Token, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.visitors import Transformer_NonRecursive

from . import ast_nodes as A
from . import names
from .source import CellSyntaxError, CellValueError, Source, Span

# Limits of the pre-scan. A statement's expression tree is at most MAX_DEPTH deep; lowering
# recurses about three Python frames per level, which keeps it well inside the default
# recursion limit of 1000 (tests/test_hostile_frontend.py lowers trees at these limits).
MAX_NESTING = 100  # brackets open at once, or signs in a row (- - - x)
MAX_DEPTH = 200  # a bound on the tree depth: operators and brackets, see _prescan

# Words the user knows, for tokens Lark names (e.g. "expected ')'" rather than "expected RPAR").
TOKEN_WORDS = {
    "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "COMMA": "','", "COLON": "':'",
    "EQUAL": "'='", "TILDE": "'~'", "PLUS": "'+'", "MINUS": "'-'", "STAR": "'*'", "SLASH": "'/'",
    "AT": "'@'", "CIRCUMFLEX": "'^'", "__ANON_0": "'**'", "NAME": "a name", "NUMBER": "a number",
    "_NL": "end of line", "$END": "end of file", "DECL_KIND": "a declaration",
    "CELL": "'cell'", "OUTPUT": "'output'", "DEF": "'def'", "CMP": "a comparison",
    # The declaration keywords: Lark names each literal of `!decl_kind` after its text.
    "INPUT": "'input'", "STATE": "'state'", "PARAM": "'param'", "BIAS": "'bias'",
    "CONST": "'const'",
}
# The comparison operators' text -> the op each lowers to.
COMPARE_OPS = {text: op for op, text in A.COMPARISONS.items()}
CLOSERS = {"(": ")", "[": "]"}
_COMPARISON = re.compile(r"[<>]|[<>=!]=")


class _BracketNewlines(lark.lark.PostLex):
    """Drop newlines inside (...) and [...], so long expressions may span lines."""

    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0
        for tok in stream:
            if tok.type in ("LPAR", "LSQB"):
                depth += 1
            elif tok.type in ("RPAR", "RSQB"):
                depth = max(0, depth - 1)
            elif tok.type == "_NL" and depth > 0:
                continue
            yield tok


_GRAMMAR = Path(__file__).with_name("cell.lark")
_OPTIONS = {"parser": "lalr", "propagate_positions": True, "maybe_placeholders": True}


def _tables_key() -> str:
    """What the built parser depends on: the grammar, the options, Lark's and Python's
    versions (Lark.save pickles Lark's own objects)."""
    import hashlib
    import sys

    parts = ["cellc parser 1", lark.__version__, repr(sys.version_info[:2]),
             repr(sorted(_OPTIONS.items())), _GRAMMAR.read_text()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def shipped_tables() -> Path:
    """The built parser shipped beside the grammar, for the Lark and Python versions in its
    name. After a change to the grammar, `python -c "import cellc.syntax as s;
    s.write_shipped_tables()"` rewrites it (tests/test_cold_start.py checks it is current)."""
    import sys

    py = "".join(map(str, sys.version_info[:2]))
    return _GRAMMAR.with_name(f"cell.lark-{lark.__version__}-py{py}.tables")


def _build_parser() -> Lark:
    return Lark(_GRAMMAR.read_text(), postlex=_BracketNewlines(), **_OPTIONS)


def _saved(parser: Lark) -> bytes:
    import io

    out = io.BytesIO()
    parser.save(out)
    return out.getvalue()


@cache
def _parser() -> Lark:
    """The LALR parser, built once per process. Building its tables took 0.07-0.3 s of a
    cold start (of a 0.5 s budget), loading them 5 ms, so the built parser (Lark.save) is
    shipped beside the grammar (`shipped_tables`) and kept in cellc's cache directory, both as
    checked entries (backends/cache.py) keyed by the grammar, the options and the Lark and
    Python versions. An entry that is missing, foreign, corrupt or unloadable, or a directory
    that cannot be written, only means building it here as before."""
    import io

    from .backends.cache import DiskObjectCache

    key = _tables_key()
    shipped, cached = shipped_tables(), DiskObjectCache(key, suffix=".lark")
    for entry in (DiskObjectCache(key, path=shipped), cached):
        data = entry.load(None)
        if data is None:
            continue
        try:
            parser = Lark.load(io.BytesIO(data))
            if isinstance(parser.options.postlex, _BracketNewlines):
                return parser
        except Exception:  # any failure to load is a miss (the entry is unpickled: the
            pass  # cache directory is trusted as it is for the object code it holds)
    parser = _build_parser()
    # A fresh handle: `cached` may have read a valid entry that did not load, and replaces it.
    DiskObjectCache(key, suffix=".lark").store(None, _saved(parser))
    return parser


def write_shipped_tables() -> Path:
    """Write the built parser beside the grammar for the Lark and Python installed."""
    from .backends.cache import DiskObjectCache

    entry = DiskObjectCache(_tables_key(), path=shipped_tables())
    data = _saved(_build_parser())
    entry.path.write_bytes(entry._header(data) + data)
    return entry.path


def parse(source: Source) -> A.Cell:
    """Parse one `.cell` file; raise CellSyntaxError with a span on any mistake."""
    _prescan(source)
    text = source.text if source.text.endswith("\n") else source.text + "\n"
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as e:
        raise _syntax_error(source, e) from None
    except lark.exceptions.LarkError as e:  # anything else Lark may raise is still a syntax error
        raise CellSyntaxError(f"cannot parse: {e}", None, source.name) from None
    return _ToAst(source).transform(tree)


# One token per match, with the lexical rules of cell.lark (NAME, NUMBER, comments, line
# continuations); anything else is one character, left for Lark to judge.
_TOKEN = re.compile(
    r"""(?P<skip>[ \t\f\r]+|\#[^\n]*|\\[ \t\f]*\r?\n)
      | (?P<newline>\n)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*'?)
      | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
      | (?P<open>[(\[])
      | (?P<close>[)\]])
      | (?P<sign>[-+])
      | (?P<op>\*\*|[*/@^]|[<>=!]=|[<>])
      | (?P<comma>,)
      | (?P<other>.)""",
    re.VERBOSE,
)


def _prescan(source: Source) -> None:
    """Reject overlong names, non-finite numbers and too deeply nested expressions, located.

    The depth bound: a statement's tree is no deeper than the count of operators and brackets on
    any path through it. The scan keeps, per open bracket, the operators seen since its last
    comma (call arguments are siblings, not nested) plus the depth of groups closed inside it,
    and `depth` is the sum over all open brackets plus their number."""
    text = source.text
    if len(text) > Source.MAX_BYTES:  # text that did not come from Source.read has the same cap
        raise CellSyntaxError(f"text is too large for a .cell file ({len(text)} characters; the"
                              f" limit is {Source.MAX_BYTES})", None, source.name)
    levels = [[0, 0]]  # per open bracket (and the statement): [count since last comma, max]
    depth = signs = 0
    prev = "newline"  # kind of the previous token; a sign after an operand is binary
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "skip" or (kind == "newline" and len(levels) > 1):
            continue  # newlines inside brackets do not end a statement (see _BracketNewlines)
        if kind == "newline":
            levels, depth, signs = [[0, 0]], 0, 0
        elif kind == "name" and m.end() - m.start() > names.MAX_NAME_LENGTH:
            n = m.end() - m.start()
            raise CellSyntaxError(
                f"a name of {n} characters; names are at most {names.MAX_NAME_LENGTH}",
                _span(source, m.start(), m.end()))
        elif kind == "number" and not math.isfinite(float(m.group())):
            raise CellValueError(
                f"number {_abbreviate(m.group())} is out of range for a float",
                _span(source, m.start(), m.end()))
        elif kind == "open":
            levels.append([0, 0])
            depth += 1
            if len(levels) - 1 > MAX_NESTING:
                raise CellSyntaxError(
                    f"nested too deeply: more than {MAX_NESTING} brackets open at once",
                    _span(source, m.start(), m.end()))
        elif kind == "close" and len(levels) > 1:
            count, widest = levels.pop()
            group = max(count, widest) + 1  # the bracket's own level and its deepest argument
            depth += group - count - 1
            levels[-1][0] += group
        elif kind == "comma":
            level = levels[-1]
            depth -= level[0]
            level[1], level[0] = max(level), 0
        elif kind in ("sign", "op"):
            levels[-1][0] += 1
            depth += 1
        unary = kind == "sign" and prev not in ("name", "number", "close")
        signs = signs + 1 if unary else signs if kind == "open" else 0
        if signs > MAX_NESTING:
            raise CellSyntaxError(f"nested too deeply: more than {MAX_NESTING} signs in a row",
                                  _span(source, m.start(), m.end()))
        if depth > MAX_DEPTH:
            raise CellSyntaxError(
                f"expression too long: more than {MAX_DEPTH} operators and brackets deep;"
                " split it into several assignments", _span(source, m.start(), m.end()))
        prev = kind


def _span(source: Source, start: int, end: int) -> Span:
    """The span of text[start:end], which lies on one line."""
    line = source.text.count("\n", 0, start) + 1
    col = start - source.text.rfind("\n", 0, start)
    return Span(source, line, col, line, col + end - start)


def _abbreviate(text: str, keep: int = 24) -> str:
    return text if len(text) <= keep else f"{text[: keep // 2]}...{text[-keep // 2 :]}"


def _syntax_error(source: Source, e: UnexpectedInput) -> CellSyntaxError:
    line, col = max(1, e.line), max(1, e.column)
    if isinstance(e, UnexpectedCharacters):
        char = source.text[e.pos_in_stream] if e.pos_in_stream < len(source.text) else "?"
        span = Span(source, line, col, line, col + 1)
        if char == "'":
            return CellSyntaxError("a prime (') must directly follow a name, as in h'", span)
        return CellSyntaxError(f"unexpected character {char!r}", span)
    if isinstance(e, UnexpectedEOF) or (isinstance(e, UnexpectedToken) and e.token.type == "$END"):
        last = source.text.rstrip().splitlines() or [""]
        n = len(source.text.rstrip().splitlines())
        span = Span(source, n, len(last[-1]) + 1, n, len(last[-1]) + 2)
        unclosed = _unclosed(source, len(source.text))
        if unclosed is None:
            return CellSyntaxError("unexpected end of file" + _expected(e), span)
        expected = _expected(e) or f"; expected '{CLOSERS[unclosed[0]]}'"
        err = CellSyntaxError("unexpected end of file" + expected, span)
        return err.note(f"unclosed '{unclosed[0]}'", unclosed[1])
    assert isinstance(e, UnexpectedToken)
    tok = e.token
    if tok.type == "_NL":
        # Point just past the end of the line's text, where something is missing.
        text = source.line(line).split("#", 1)[0].rstrip()
        span = Span(source, line, len(text) + 1, line, len(text) + 2)
        return CellSyntaxError("unexpected end of line" + _expected(e), span)
    width = max(1, len(str(tok)))
    span = Span(source, line, col, line, col + width)
    accepts = e.accepts or e.expected
    if "CELL" in accepts:
        return CellSyntaxError(
            f"unexpected {_describe(tok)}; a file starts with 'cell NAME(...):'", span)
    if tok.type == "CMP" and _COMPARISON.search(source.line(line)[: col - 1].split("#")[0]):
        return CellSyntaxError(
            f"comparisons do not chain: '{tok}' follows a comparison; compare two values at a"
            " time, as in (a < b) * (b < c)", span)
    if tok.type == "NAME" and "_NL" in accepts:
        return CellSyntaxError(
            f"unexpected name '{tok}'; expected end of line (missing operator?)", span)
    err = CellSyntaxError(f"unexpected {_describe(tok)}" + _expected(e), span)
    unclosed = _unclosed(source, tok.start_pos)
    if unclosed is not None and unclosed[1].line < tok.line:
        # Newlines inside brackets are dropped, so a missing ')' shows up lines later.
        err.note(f"unclosed '{unclosed[0]}'", unclosed[1])
    return err


def _unclosed(source: Source, pos: int) -> tuple[str, Span] | None:
    """The innermost bracket still open at offset pos of the text, with its span."""
    stack: list[tuple[str, Span]] = []
    line, col, comment = 1, 1, False
    for ch in source.text[:pos]:
        if ch == "\n":
            line, col, comment = line + 1, 1, False
            continue
        if ch == "#":
            comment = True
        elif not comment and ch in "([":
            stack.append((ch, Span(source, line, col, line, col + 1)))
        elif not comment and ch in ")]" and stack:
            stack.pop()
        col += 1
    return stack[-1] if stack else None


def _describe(tok: Token) -> str:
    if tok.type == "NAME":
        return f"name '{tok}'"
    if tok.type == "NUMBER":
        return f"number {tok}"
    if tok.type == "DECL_KIND":
        return f"'{tok}'"
    return f"'{tok}'"


def _expected(e) -> str:
    # `accepts` is exact; `expected` also lists the newline the post-lexer always lets through.
    names = getattr(e, "accepts", None) or getattr(e, "expected", None) or ()
    expected = sorted({TOKEN_WORDS.get(t, t) for t in names})
    expected = [x for x in expected if not x.startswith("__")]
    if not expected or len(expected) > 8:
        return ""
    if len(expected) == 1:
        return f"; expected {expected[0]}"
    return "; expected " + ", ".join(expected[:-1]) + " or " + expected[-1]


@v_args(meta=True)
class _ToAst(Transformer_NonRecursive):
    """Lark tree -> AST. Raises nothing: all checks happen in lowering. Non-recursive, so the
    depth of a tree is never a problem here (the pre-scan bounds it for lowering)."""

    def __init__(self, source: Source):
        super().__init__()
        self.source = source

    def _span(self, meta) -> Span:
        return Span(self.source, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tok(self, tok: Token) -> A.Name:
        return A.Name(str(tok),
                      Span(self.source, tok.line, tok.column, tok.end_line, tok.end_column))

    def start(self, meta, children):
        return children[-1]

    def cell(self, meta, children):
        name, *rest = children
        sizes = tuple(c for c in rest if isinstance(c, A.SizeArg))
        hypers = tuple(c for c in rest if isinstance(c, A.HyperArg))
        body = tuple(c for c in rest
                     if c is not None and not isinstance(c, (A.SizeArg, A.HyperArg)))
        return A.Cell(self._tok(name), sizes, body, self._span(meta), hypers)

    def size_arg(self, meta, children):
        default = None
        if children[3] is not None:
            default = A.Num(float(children[3]), self._tok(children[3]).span)
        return A.SizeArg(self._tok(children[0]), self._tok(children[1]), default)

    def either(self, meta, children):
        return A.Either(children[0], children[1], self._span(meta))

    def cond(self, meta, children):
        return A.Cond(children[0], children[1], children[2], self._span(meta))

    def hyper_arg(self, meta, children):
        return A.HyperArg(self._tok(children[0]), children[1], self._span(meta))

    def choice_arg(self, meta, children):
        name, *choices = (self._tok(c) for c in children)
        return A.HyperArg(name, None, self._span(meta), tuple(choices))

    def decl(self, meta, children):
        kind, *rest = children
        kind = kind.children[0]
        init = value = None
        how = rest.pop()  # the optional (TILDE|EQUAL, expr) of decl_init, or None
        if how is not None:
            sign, expr = how
            init, value = (expr, None) if sign.type == "TILDE" else (None, expr)
        return A.Decl(str(kind), tuple(rest), init, self._span(meta), value)

    def decl_init(self, meta, children):
        return tuple(children)

    def funcdef(self, meta, children):
        name, *rest = children
        body = rest.pop()
        params = tuple(self._tok(p) for p in rest if p is not None)
        return A.Def(self._tok(name), params, body, self._span(meta))

    def compare(self, meta, children):
        lhs, op, rhs = children
        return A.BinOp(COMPARE_OPS[str(op)], lhs, rhs, self._span(meta))

    def declared(self, meta, children):
        name, lsqb, *dims = children
        dims = [d for d in dims if d is not None and not isinstance(d, Token)]
        return A.Declared(self._tok(name), tuple(dims) if lsqb is not None else None,
                          self._span(meta))

    def assign(self, meta, children):
        *targets, value = children
        return A.Assign(tuple(targets), value, self._span(meta))

    def target(self, meta, children):
        return self._tok(children[0])

    def output(self, meta, children):
        return A.Output(tuple(children), self._span(meta))

    def number(self, meta, children):
        return A.Num(float(children[0]), self._span(meta))

    def name(self, meta, children):
        return self._tok(children[0])

    def call(self, meta, children):
        fn, *args = children
        args = [a for a in args if a is not None]
        positional = tuple(a for a in args if not isinstance(a, tuple))
        keywords = tuple(a for a in args if isinstance(a, tuple))
        return A.Call(self._tok(fn), positional, self._span(meta), keywords)

    def keyword(self, meta, children):
        return (self._tok(children[0]), children[1])

    def shifted(self, meta, children):
        name, _, index, _ = children
        return A.Shifted(self._tok(name), index, self._span(meta))

    def neg(self, meta, children):
        return A.Neg(children[0], self._span(meta))

    def _binop(op):
        def rule(self, meta, children):
            return A.BinOp(op, children[0], children[-1], self._span(meta))

        return rule

    add = _binop("add")
    sub = _binop("sub")
    mul = _binop("mul")
    div = _binop("div")
    matmul = _binop("matmul")
    pow = _binop("pow")
