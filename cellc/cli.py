"""The `cellc` command: check, show, grad, compile.

    cellc check FILE...                 one summary line per cell, or its errors
    cellc show FILE --emit STAGE        print one stage (ast, ir, seq, opt, grad, plan, torch, llvm)
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
import sys
import traceback

from . import targets
from ._version import __version__
from .source import CellError, InternalError, Source

# Re-exported: the targets raise these and use parse_sizes; they live in targets/_common.py so
# that no target module imports this one (which imports the registry: a cycle).
from .targets._common import MAX_SIZE, OutputError, UsageError, parse_sizes  # noqa: F401

# The compiler's own stages, then those the targets add (`torch`, `llvm`: targets/*.py).
STAGES = ("ast", "ir", "seq", "opt", "grad") + tuple(targets.stages())


def _summary(path: str) -> str:
    from .frontend import load_file

    cell = load_file(path)
    # An optional size shows its default; the states and the count are of that form.
    sizes = ", ".join(f"{s.arg} {s.symbol}" + (" = 0" if s.optional else "") for s in cell.sizes)
    states = ", ".join(f"{s.name}{s.type}".replace("[B,", "[") for s in cell.states)
    for w in cell.warnings:
        print(w, file=sys.stderr)
    return (f"{path}: ok: {cell.name}({sizes}) states {states};"
            f" {cell.param_count_formula} parameters")


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
    stage = targets.stages().get(args.emit)
    if stage is not None:  # a target's output: torch source, the native plan, LLVM IR
        print(stage.show(args))
        return 0
    cell = load_file(args.file)
    for w in cell.warnings:
        print(w, file=sys.stderr)
    print(pipeline.emit(cell, args.emit))
    return 0


def cmd_compile(args) -> int:
    return targets.get(args.target).compile(args)


def cmd_grad(args) -> int:
    from . import pipeline
    from .frontend import load_file

    cell = load_file(args.file)
    print(pipeline.grad_equations(cell))
    return 0


def _each_target(describe) -> str:
    """A help text in the targets' own words, `torch: ...; llvm: ...`; a target for which
    describe() gives None is left out."""
    said = ((t.name, describe(t)) for t in targets.registry().values())
    return "; ".join(f"{name}: {text}" for name, text in said if text is not None)


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
    sized = ", ".join(t.name for t in targets.registry().values()
                      if any(st.sized for st in t.stages))
    s.add_argument("--sizes", metavar="ARG=N,...",
                   help=f"{sized}: sizes to specialize for (default: 16 for each)")
    s.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help=f"{sized}: the float type (default: float32)")
    s.add_argument(
        "--emit", choices=STAGES, default="ir",
        help="ast: syntax tree; ir: the step function; seq: the time loop; opt: after the forward"
        " passes; grad: the forward saving residuals and the optimized backward"
        + "".join(f"; {st.name}: {st.help}" for st in targets.stages().values())
        + " (default: ir)",
    )
    s.set_defaults(fn=cmd_show)

    k = sub.add_parser("compile", help="compile a .cell file for a target")
    k.add_argument("file", metavar="FILE")
    k.add_argument("--target", choices=targets.names(), default=targets.DEFAULT,
                   help=_each_target(lambda t: t.compile_help
                                     + (" (default)" if t.name == targets.DEFAULT else "")))
    k.add_argument("--sizes", metavar="ARG=N,...", help=_each_target(lambda t: t.sizes_help))
    k.add_argument("-o", "--output", metavar="OUT", help=_each_target(lambda t: t.output_help))
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
    except Exception as e:  # InternalError, or anything unexpected: a bug
        if os.environ.get("CELLC_DEBUG") == "1":
            traceback.print_exc()
        what = str(e) if isinstance(e, InternalError) else ": ".join(
            x for x in (type(e).__name__, str(e)) if x)  # MemoryError() has no message
        print(f"cellc: internal error: {what}\n(this is a bug in cellc; please report it;"
              " CELLC_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
