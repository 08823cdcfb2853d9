"""Source text, spans, and the user-facing error family.

Every user mistake becomes a `CellError` carrying a `Span`; `str(error)` renders it the way
compilers do:

    cells/lstm.cell:9:9: error: cannot multiply [B,4*H] by [B,H]
        c' = f * c + i * g
             ^^^^^
    note: 'f' is [B,4*H], defined at cells/lstm.cell:6:5

Nothing else in cellc formats user errors, so every stage points at the `.cell` text the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Source:
    """The text of one `.cell` file and the name it is reported under."""

    name: str
    text: str

    @staticmethod
    def read(path: str | Path) -> Source:
        """Read a file as UTF-8; unreadable, missing, non-UTF-8 and empty files are user errors."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CellError(f"no such file: {path}", None, filename=str(path)) from None
        except IsADirectoryError:
            raise CellError(f"is a directory, not a .cell file: {path}", None, str(path)) from None
        except OSError as e:
            raise CellError(f"cannot read {path}: {e.strerror}", None, filename=str(path)) from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            raise CellError(
                f"file is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start},"
                f" line {line})",
                None,
                filename=str(path),
            ) from None
        # Some editors start UTF-8 files with a byte-order mark; it is not part of the text.
        text = text.removeprefix("\ufeff")
        if not text.strip():
            raise CellError("file is empty; expected a cell definition", None, str(path))
        return Source(str(path), text)

    def line(self, lineno: int) -> str:
        # Split on "\n" only, as the lexer counts lines (str.splitlines also splits on \f).
        lines = self.text.split("\n")
        return lines[lineno - 1].rstrip("\r") if 0 < lineno <= len(lines) else ""


@dataclass(frozen=True)
class Span:
    """A range of source text: 1-based line and column of the start, and the end (exclusive)."""

    source: Source = field(repr=False, compare=False)
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.source.name}:{self.line}:{self.col}"

    def context(self) -> str:
        """The source line followed by a caret line under the span (first line only)."""
        raw = self.source.line(self.line)
        text = raw.expandtabs(4)
        # Columns count a tab as one character; the caret goes under the expanded text.
        start = len(raw[: self.col - 1].expandtabs(4))
        end = len(text)
        if self.end_line == self.line:
            end = len(raw[: self.end_col - 1].expandtabs(4))
        width = max(1, min(end, len(text)) - start)
        return f"    {text}\n    {' ' * start}{'^' * width}"

    def to(self, other: Span) -> Span:
        """The span from the start of self to the end of other."""
        return Span(self.source, self.line, self.col, other.end_line, other.end_col)


class CellError(Exception):
    """A mistake in user input, reported against a span of the `.cell` source."""

    kind = "error"

    def __init__(self, message: str, span: Span | None, filename: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.filename = filename if filename is not None else (span.source.name if span else None)
        self.notes: list[tuple[str, Span | None]] = []

    def note(self, message: str, span: Span | None = None) -> CellError:
        self.notes.append((message, span))
        return self

    def __str__(self) -> str:
        where = str(self.span) if self.span else (self.filename or "cellc")
        out = [f"{where}: {self.kind}: {self.message}"]
        if self.span:
            out.append(self.span.context())
        for message, span in self.notes:
            out.append(f"note: {message}" + (f" at {span}" if span else ""))
        return "\n".join(out)


class CellSyntaxError(CellError):
    """The text does not follow the grammar."""


class CellNameError(CellError):
    """An unknown, redefined or misused name."""


class CellShapeError(CellError):
    """Operands whose shapes do not fit the operation."""


class CellWarning(CellError):
    """Not fatal: reported, and compilation goes on (e.g. an unused parameter)."""

    kind = "warning"


class InternalError(Exception):
    """A broken invariant inside cellc itself (e.g. an op missing from a backend table)."""
