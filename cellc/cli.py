"""The `cellc` command: check, show, grad.

    cellc check FILE...                 one summary line per cell, or its errors
    cellc show FILE --emit STAGE        print one pipeline stage (ast, ir, seq, opt, grad, torch)
    cellc grad FILE                     the backward pass as readable equations
    cellc compile FILE --target torch   write a standalone PyTorch module

User mistakes print as located errors and exit with status 1; no traceback is shown.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .source import CellError, InternalError, Source

STAGES = ("ast", "ir", "seq", "opt", "grad", "torch")


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
    cell = load_file(args.file)
    for w in cell.warnings:
        print(w, file=sys.stderr)
    print(pipeline.emit(cell, args.emit))
    return 0


def cmd_compile(args) -> int:
    from pathlib import Path

    from .api import torch_source, write_atomic

    text = torch_source(args.file)  # every error is raised before anything is written
    out = Path(args.output) if args.output else Path(Path(args.file).stem + ".py")
    if out.is_dir():
        print(f"cellc: error: -o {out} is a directory; give a file name", file=sys.stderr)
        return 1
    if not out.parent.exists():
        print(f"cellc: error: -o {out}: directory {out.parent} does not exist", file=sys.stderr)
        return 1
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
    s.add_argument(
        "--emit", choices=STAGES, default="ir",
        help="ast: syntax tree; ir: the step function; seq: the time loop; opt: after the forward"
        " passes; grad: the forward saving residuals and the optimized backward; torch: the"
        " generated PyTorch module (default: ir)",
    )
    s.set_defaults(fn=cmd_show)

    k = sub.add_parser("compile", help="compile a .cell file to a standalone PyTorch module")
    k.add_argument("file", metavar="FILE")
    k.add_argument("--target", choices=("torch",), default="torch",
                   help="torch: one readable .py file that needs only torch (default)")
    k.add_argument("-o", "--output", metavar="OUT",
                   help="output file (default: the cell file's name with .py, here)")
    k.set_defaults(fn=cmd_compile)

    g = sub.add_parser("grad", help="print the backward pass as simplified equations")
    g.add_argument("file", metavar="FILE")
    g.set_defaults(fn=cmd_grad)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except CellError as e:
        print(e, file=sys.stderr)
        return 1
    except InternalError as e:
        print(f"cellc: internal error: {e}\n(this is a bug in cellc; please report it)",
              file=sys.stderr)
        return 3
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
