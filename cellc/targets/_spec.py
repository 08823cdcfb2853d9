"""What a target is: the `Target` value each module of cellc/targets/ defines, and its parts.

A leaf module (it imports nothing from cellc), so a target module can build its `Target` without
importing the registry that discovers it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# Every op kind of ops.OpDef: a table whose `kinds` is ALL_KINDS must have a row for every op.
ALL_KINDS = frozenset({"elementwise", "rowwise", "reduce_batch", "other"})


@dataclass(frozen=True)
class Table:
    """One op table a target's code reads: `module.name`, a dict keyed by op name.

    It must have a row for every op of `kinds`, except `outside`: ops of those kinds that the
    target's code handles itself (the target module says why). Named by module, not imported:
    the registry stays free of torch and llvmlite, and tests/test_coverage.py imports each table.
    """

    module: str
    name: str
    kinds: frozenset[str] = ALL_KINDS
    outside: frozenset[str] = frozenset()

    def rows(self) -> Mapping[str, Any]:
        return getattr(importlib.import_module(self.module), self.name)

    def __str__(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class Stage:
    """A stage `cellc show FILE --emit NAME` prints for a target: `show(args)` is the text.

    `sized` stages read show's --sizes and --dtype (the others ignore them); the help of those
    options names the targets that have one.
    """

    name: str
    help: str
    show: Callable[[Any], str]
    sized: bool = False


@dataclass(frozen=True)
class Target:
    """One compile target: what `cellc.load`, `cellc compile --target NAME` and
    `cellc show --emit` do for it, and the op tables its code reads.

    - `load(path, key)` returns the module `cellc.load` gives (api caches it under `key`, a hash
      of the file's content, the target and the version).
    - `compile(args)` writes the target's files for `cellc compile` (args: file, sizes, output)
      and returns the exit status; it raises UsageError/OutputError (targets/_common.py) for
      the command line to report.
    - the help strings are the target's part of `cellc compile --help`; `sizes_help` is None
      when the target takes no --sizes.
    - `order` places the target in listings (`--target {torch,llvm}`, error messages).
    """

    name: str
    order: int
    load: Callable[[Any, str], Any]
    compile: Callable[[Any], int]
    compile_help: str
    output_help: str
    sizes_help: str | None = None
    stages: tuple[Stage, ...] = ()
    tables: tuple[Table, ...] = ()
