"""What the targets' `cellc compile` and `cellc show` share: the command-line error types,
--sizes parsing, and writing output files whole (or leaving nothing behind).

cli.py reports the errors (UsageError: `cellc: error: ...`, exit 2; OutputError: exit 1) and
re-exports them; they live here so that a target module never imports cli.py (which imports the
registry, which imports the target modules: a cycle).
"""

from __future__ import annotations

import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path

from ..variants import variant_for_args


class UsageError(Exception):
    """A bad command-line argument: reported as `cellc: error: ...` with exit status 2."""


class OutputError(Exception):
    """The output could not be written: reported as `cellc: error: -o PATH: reason`, status 1."""


# A size is a count of features; one past 2**31-1 is a typo, not a model. Checking the number of
# digits first keeps int() away from huge strings (it refuses more than 4300 digits).
MAX_SIZE = 2**31 - 1


def parse_sizes(text: str | None, cell, required: bool) -> dict[str, int]:
    """--sizes input_size=8,hidden_size=16 -> the cell's size symbols; errors name the argument."""
    given: dict[str, int] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, eq, value = (x.strip() for x in part.partition("="))
        # ASCII digits only: str.isdigit() also accepts '²' (which int() then refuses) and other
        # scripts' digits.
        if not eq or not re.fullmatch(r"-?[0-9]+", value):
            raise UsageError(f"--sizes: expected NAME=INT, got {part.strip()[:40]!r}")
        if len(value.lstrip("-").lstrip("0")) > len(str(MAX_SIZE)) or abs(int(value)) > MAX_SIZE:
            shown = value if len(value) <= 20 else value[:12] + "..."
            raise UsageError(f"--sizes: {name}={shown} is out of range (at most {MAX_SIZE})")
        given[name] = int(value)
    if not required:
        for s in cell.sizes:
            given.setdefault(s.arg, 0 if s.optional else 16)
    args = {s.arg for s in cell.sizes if not s.optional}  # an optional size may be left out: 0
    missing = [a for a in args if a not in given]
    if missing:
        example = ",".join(f"{s.arg}=16" for s in cell.sizes if not s.optional)
        raise UsageError(f"--sizes: missing {', '.join(sorted(missing))} (e.g. --sizes {example})")
    try:
        # the form these sizes ask for (cellc/variants.py); callers take it with variant()
        return variant_for_args(cell, given).bind(**given)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--sizes: {e}") from None


@contextmanager
def writing(out: Path):
    """Checking and writing the output: an OSError (a path under a regular file, in /proc, too
    long, a full disk) names the -o path, not a temporary file, and becomes one line."""
    try:
        yield
    except OSError as e:
        raise OutputError(f"-o {out}: {e.strerror or e}") from None


def make_dirs(out: Path) -> list[Path]:
    """`mkdir -p out`; returns the folders it created, innermost first, for remove_dirs."""
    missing = []
    for d in (out, *out.parents):
        if d.exists():
            break
        missing.append(d)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except BaseException:
        remove_dirs(missing)
        raise
    return missing


def remove_dirs(dirs: list[Path]) -> None:
    """Remove the folders a failed build created (innermost first) so it leaves nothing behind;
    a folder that is not empty is not ours to remove."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            pass


def write_atomic(path: str | Path, text: str) -> None:
    """Write a file so that readers see the old content or the new, never a part.

    The file gets mode 0o666 less the umask, as `cc -o` and open() give it, not mkstemp's 0o600:
    the temporary file is created by os.open(..., 0o666) and the kernel applies the umask (and
    any default ACL). Nothing reads or changes the process-wide umask, which other threads share.
    """
    path = Path(path)
    # 64 random bits never clash in practice; O_EXCL makes a clash (or a planted symlink) an
    # error instead of a write through it. The name is cut so a long output name still fits.
    tmp = path.parent / f".{path.name[:64]}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
