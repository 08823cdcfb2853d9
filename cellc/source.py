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

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

CONTEXT_WIDTH = 100  # longer source lines are shown as a window around the caret


@dataclass(frozen=True)
class Source:
    """The text of one `.cell` file and the name it is reported under."""

    name: str
    text: str

    MAX_BYTES = 1 << 20  # a .cell file is a few hundred bytes; anything near this is not one

    @staticmethod
    def read(path: str | Path) -> Source:
        """Read a file as UTF-8; unreadable, missing, non-UTF-8 and empty files are user errors.

        Only regular files of at most MAX_BYTES are read: a FIFO would block forever and a
        device such as /dev/zero never ends. The file is stat'ed before it is opened, opened
        non-blocking (so a FIFO swapped in meanwhile cannot hang the open), checked again on
        the open descriptor, and read for at most MAX_BYTES + 1 bytes."""
        path = Path(path)
        name = str(path)
        try:
            st = os.stat(path)
            if stat.S_ISDIR(st.st_mode):
                raise CellError(f"is a directory, not a .cell file: {path}", None, name)
            _check_regular(st, path)
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            try:
                _check_regular(os.fstat(fd), path)
                data = _read_at_most(fd, Source.MAX_BYTES + 1)
            finally:
                os.close(fd)
        except FileNotFoundError:
            raise CellError(f"no such file: {path}", None, filename=name) from None
        except OSError as e:
            raise CellError(f"cannot read {path}: {e.strerror}", None, filename=name) from None
        except ValueError as e:  # a path with a NUL byte in it
            raise CellError(f"cannot read {path!r}: {e}", None, filename=name) from None
        if len(data) > Source.MAX_BYTES:
            size = max(len(data), st.st_size)
            raise CellError(f"file is too large for a .cell file ({size} bytes; the limit is"
                            f" {Source.MAX_BYTES})", None, name)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            raise CellError(
                f"file is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start},"
                f" line {line})",
                None,
                filename=name,
            ) from None
        # Some editors start UTF-8 files with a byte-order mark; it is not part of the text.
        text = text.removeprefix("\ufeff")
        if not text.strip():
            raise CellError("file is empty; expected a cell definition", None, name)
        return Source(name, text)

    def line(self, lineno: int) -> str:
        # Split on "\n" only, as the lexer counts lines (str.splitlines also splits on \f).
        lines = self.text.split("\n")
        return lines[lineno - 1].rstrip("\r") if 0 < lineno <= len(lines) else ""


def _check_regular(st: os.stat_result, path: Path) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise CellError(f"not a regular file: {path}", None, str(path))


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks, n = [], 0
    while n < limit:
        chunk = os.read(fd, min(limit - n, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        n += len(chunk)
    return b"".join(chunks)


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
        """The source line followed by a caret line under the span (first line only). A line
        longer than CONTEXT_WIDTH is cut to a window around the start of the span."""
        raw = self.source.line(self.line)
        text = raw.expandtabs(4)
        # Columns count a tab as one character; the caret goes under the expanded text.
        start = len(raw[: self.col - 1].expandtabs(4))
        end = len(text)
        if self.end_line == self.line:
            end = len(raw[: self.end_col - 1].expandtabs(4))
        end = min(end, len(text))
        if len(text) > CONTEXT_WIDTH:
            left = 0 if start < CONTEXT_WIDTH // 2 else start - CONTEXT_WIDTH // 4
            left = min(left, len(text) - CONTEXT_WIDTH)  # near the end: a full window too
            right = left + CONTEXT_WIDTH
            head, tail = ("..." if left else ""), ("..." if right < len(text) else "")
            text = head + text[left:right] + tail
            start, end = start - left + len(head), min(end, right) - left + len(head)
        width = max(1, end - start)
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


class CellValueError(CellError, ValueError):
    """A number that is not a finite real: a literal out of float range (1e400), or an
    initializer argument such as log(-1) or 1/0. Also a ValueError, as layer constructors
    raise for sizes that do not work (an initializer may fail only for some sizes)."""


class CellTargetError(CellError):
    """A valid cell that the chosen target cannot compile (yet), with what it lacks."""


class CellWarning(CellError):
    """Not fatal: reported, and compilation goes on (e.g. an unused parameter)."""

    kind = "warning"


class InternalError(Exception):
    """A broken invariant inside cellc itself (e.g. an op missing from a backend table)."""
