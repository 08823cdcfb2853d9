"""The `cellc` command: check, show, grad.

    cellc check FILE...                 one summary line per cell, or its errors
    cellc show FILE --emit STAGE        print one pipeline stage (ast, ir, seq, opt, grad, torch)
    cellc grad FILE                     the backward pass as readable equations
    cellc compile FILE --target torch   write a standalone PyTorch module
    cellc compile FILE --target llvm    write a shared library, its C header and a loader

Whatever the input, the command prints its errors and never a Python traceback. Exit status:

    0    success
    1    an error in a .cell file (printed located, file:line:col), or the system refused:
         a file that cannot be read (`cellc: error: PATH: reason`), an output that cannot be
         written (`cellc: error: -o PATH: reason`; nothing is left half-written), a failed link
    2    a bad command-line argument: `cellc: error: ...` (argparse's own errors exit 2 too)
    3    a bug in cellc: `cellc: internal error: ...`; CELLC_DEBUG=1 also prints the traceback
    130  interrupted (Ctrl-C): `cellc: interrupted`
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

from . import __version__
from .source import CellError, InternalError, Source

STAGES = ("ast", "ir", "seq", "opt", "grad", "torch", "llvm")


def _summary(path: str) -> str:
    from .frontend import load_file

    cell = load_file(path)
    sizes = ", ".join(f"{s.arg} {s.symbol}" for s in cell.sizes)
    states = ", ".join(f"{s.name}{s.type}".replace("[B,", "[") for s in cell.states)
    for w in cell.warnings:
        print(w, file=sys.stderr)
    return f"{path}: ok: {cell.name}({sizes}) states {states}; {cell.param_count_formula} parameters"


def cmd_check(args) -> int:
    status = 0
    for path in args.files:
        try:
            print(_summary(path))
        except CellError as e:
            print(e, file=sys.stderr)
            status = 1
    return status


def cmd_show(args) -> int:
    from . import pipeline
    from .ast_nodes import format_cell
    from .frontend import load_file
    from .syntax import parse

    if args.emit == "ast":
        print(format_cell(parse(Source.read(args.file))))
        return 0
    if args.emit == "torch":
        from .api import torch_source

        print(torch_source(args.file))
        return 0
    if args.emit == "llvm":
        from .backends.llvm_jit import render

        cell = load_file(args.file)
        sizes = parse_sizes(args.sizes, cell, required=False)
        module, _, _ = render(cell, sizes, args.dtype)  # OpenBLAS calls (no torch here)
        print(f"; sizes {sizes}, {args.dtype}\n{module}")
        return 0
    cell = load_file(args.file)
    for w in cell.warnings:
        print(w, file=sys.stderr)
    print(pipeline.emit(cell, args.emit))
    return 0


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
            given.setdefault(s.arg, 16)
    args = {s.arg for s in cell.sizes}
    missing = [a for a in args if a not in given]
    if missing:
        example = ",".join(f"{s.arg}=16" for s in cell.sizes)
        raise UsageError(f"--sizes: missing {', '.join(sorted(missing))} (e.g. --sizes {example})")
    try:
        return cell.bind(**given)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--sizes: {e}") from None


class UsageError(Exception):
    """A bad command-line argument: reported as `cellc: error: ...` with exit status 2."""


class OutputError(Exception):
    """The output could not be written: reported as `cellc: error: -o PATH: reason`, status 1."""


@contextmanager
def _writing(out: Path):
    """Checking and writing the output: an OSError (a path under a regular file, in /proc, too
    long, a full disk) names the -o path, not a temporary file, and becomes one line."""
    try:
        yield
    except OSError as e:
        raise OutputError(f"-o {out}: {e.strerror or e}") from None


def _make_dirs(out: Path) -> list[Path]:
    """`mkdir -p out`; returns the folders it created, innermost first, for _remove_dirs."""
    missing = []
    for d in (out, *out.parents):
        if d.exists():
            break
        missing.append(d)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except BaseException:
        _remove_dirs(missing)
        raise
    return missing


def _remove_dirs(dirs: list[Path]) -> None:
    """Remove the folders a failed build created (innermost first) so it leaves nothing behind;
    a folder that is not empty is not ours to remove."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            pass


def cmd_compile(args) -> int:
    from .api import torch_source, write_atomic
    from .frontend import load_file

    if args.target == "llvm":
        from .backends import aot

        cell = load_file(args.file)
        sizes = parse_sizes(args.sizes, cell, required=True)
        # The path as given, even '-evil': aot.build keeps it from reading as a flag to cc.
        out = Path(args.output or (Path(args.file).stem + "_llvm"))
        with _writing(out):
            if out.exists() and not out.is_dir():
                raise UsageError(f"-o {out}: exists and is not a directory")
            created = _make_dirs(out)
            try:
                written = aot.build(cell, sizes, out)
            except BaseException as e:
                _remove_dirs(created)  # leave nothing behind, not even the empty folders
                if isinstance(e, aot.LinkError):
                    print(f"cellc: error: {e}", file=sys.stderr)
                    return 1
                raise
        for f in written:
            print(f"wrote {f}")
        return 0
    if args.sizes:
        raise UsageError("--sizes is for --target llvm; a torch module takes sizes when built")
    text = torch_source(args.file)  # every error is raised before anything is written
    out = Path(args.output) if args.output else Path(Path(args.file).stem + ".py")
    with _writing(out):
        if out.is_dir():
            raise UsageError(f"-o {out} is a directory; give a file name")
        if not out.parent.exists():
            raise UsageError(f"-o {out}: directory {out.parent} does not exist")
        write_atomic(out, text)
    print(f"wrote {out}")
    return 0


def cmd_grad(args) -> int:
    from . import pipeline
    from .frontend import load_file

    cell = load_file(args.file)
    print(pipeline.grad_equations(cell))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cellc",
        description="A compiler for recurrent neural-network cells written as equations.",
    )
    p.add_argument("--version", action="version", version=f"cellc {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("check", help="parse and check .cell files; print a summary of each")
    c.add_argument("files", nargs="+", metavar="FILE", help=".cell files")
    c.set_defaults(fn=cmd_check)

    s = sub.add_parser("show", help="print one stage of the compiler pipeline")
    s.add_argument("file", metavar="FILE")
    s.add_argument("--sizes", metavar="ARG=N,...",
                   help="llvm: sizes to specialize for (default: 16 for each)")
    s.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="llvm: the float type (default: float32)")
    s.add_argument(
        "--emit", choices=STAGES, default="ir",
        help="ast: syntax tree; ir: the step function; seq: the time loop; opt: after the forward"
        " passes; grad: the forward saving residuals and the optimized backward; torch: the"
        " generated PyTorch module; llvm: the LLVM IR of the native kernels (default: ir)",
    )
    s.set_defaults(fn=cmd_show)

    k = sub.add_parser("compile", help="compile a .cell file for a target")
    k.add_argument("file", metavar="FILE")
    k.add_argument("--target", choices=("torch", "llvm"), default="torch",
                   help="torch: one readable .py file that needs only torch (default); llvm: a"
                   " shared library, its C header and a numpy/ctypes loader, in a directory")
    k.add_argument("--sizes", metavar="ARG=N,...",
                   help="llvm: the size arguments to compile for, e.g. input_size=8,hidden_size=16")
    k.add_argument("-o", "--output", metavar="OUT",
                   help="torch: output file (default: FILE's name with .py, here); llvm: output"
                   " directory (default: FILE's name with _llvm)")
    k.set_defaults(fn=cmd_compile)

    g = sub.add_parser("grad", help="print the backward pass as simplified equations")
    g.add_argument("file", metavar="FILE")
    g.set_defaults(fn=cmd_grad)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (see the module docstring), never raises except
    SystemExit from argparse (--help, --version, its own usage errors)."""
    try:
        args = build_parser().parse_args(argv)
        return args.fn(args)
    except CellError as e:
        print(e, file=sys.stderr)
        return 1
    except UsageError as e:
        print(f"cellc: error: {e}", file=sys.stderr)
        return 2
    except OutputError as e:
        print(f"cellc: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `cellc show ... | head`: the reader has all it wanted
        return 0
    except OSError as e:  # last resort; reading and writing paths report their own errors
        where = f"{e.filename}: " if e.filename else ""
        print(f"cellc: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cellc: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C
    except Exception as e:  # noqa: BLE001  InternalError, or anything unexpected: a bug
        if os.environ.get("CELLC_DEBUG") == "1":
            traceback.print_exc()
        what = str(e) if isinstance(e, InternalError) else ": ".join(
            x for x in (type(e).__name__, str(e)) if x)  # MemoryError() has no message
        print(f"cellc: internal error: {what}\n(this is a bug in cellc; please report it;"
              " CELLC_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
