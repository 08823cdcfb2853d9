"""The registry of compile targets: every module in this package defines one `TARGET`.

    from cellc import targets
    targets.get("llvm").load(path, key)       # what cellc.load(path, target="llvm") builds
    targets.names()                           # ("torch", "llvm"): --target's choices, in order

A target is one module here that defines `TARGET = Target(...)` (targets/_spec.py): its name,
what `cellc show --emit` prints for it, how `cellc.load` loads it, how `cellc compile` writes
it, and the op tables its code reads (tests/test_coverage.py checks each). api.py, cli.py and
the tests read this registry, so adding a target touches its own module and nothing else.
Modules whose names start with '_' are helpers, not targets.

Discovery imports the target modules only, and they import torch and llvmlite only inside their
functions: `import cellc` and `cellc check` work without either.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from ._spec import Stage, Target

# cellc.load's and `cellc compile`'s target when none is given.
DEFAULT = "torch"


def module_names() -> list[str]:
    """The target modules, as dotted names (tests/test_imports.py adds them to the import graph:
    the registry imports them by name, which `ast` cannot see)."""
    return sorted(f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__)
                  if not m.name.startswith("_"))


@functools.cache
def registry() -> dict[str, Target]:
    """Every target by name, in listing order."""
    found = [importlib.import_module(m).TARGET for m in module_names()]
    by_name = {t.name: t for t in sorted(found, key=lambda t: (t.order, t.name))}
    # Internal invariants: two modules claiming a name, or one stage name twice, is a bug here.
    assert len(by_name) == len(found), [t.name for t in found]
    stages = [s.name for t in found for s in t.stages]
    assert len(set(stages)) == len(stages), stages
    assert DEFAULT in by_name, DEFAULT
    return by_name


def names() -> tuple[str, ...]:
    return tuple(registry())


def get(name: str) -> Target:
    """The target called `name`; ValueError (cellc.load's message) for any other name."""
    found = registry().get(name) if isinstance(name, str) else None
    if found is None:
        raise ValueError(f"target must be one of {', '.join(map(repr, names()))}, not {name!r}")
    return found


def stages() -> dict[str, Stage]:
    """The stages the targets add to `cellc show --emit`, by name, in target order."""
    return {s.name: s for t in registry().values() for s in t.stages}

