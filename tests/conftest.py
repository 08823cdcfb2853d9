"""Shared test setup: the cell corpus and small helpers for compiling snippets.

Any test that takes a `cell_path` argument runs once per `cells/*.cell` file (ids are the file
names), so a new cell file is tested everywhere with no new test code.

The fast tier, `python -m pytest -q -m "not slow"`, is the edit loop (under a minute on 2 cores);
CI runs everything. A test is in the slow tier by `@pytest.mark.slow`, by
`@pytest.mark.slow_cells` (a `cell_path` test that runs on FAST_CELLS only in the fast tier), or,
for files other helpers were editing when the tiers were made, by SLOW_ELSEWHERE below.

`--update-golden` rewrites tests/golden/ from what cellc prints now (tests/test_golden.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The suite compiles specialized kernels before first use (deterministic: which kernels run does
# not depend on a background thread's timing). The default, generic kernels first with the
# specialized ones compiled in the background, is tested in tests/test_specialize.py, and the
# generic kernels of every cell in tests/test_generic_kernels.py.
os.environ.setdefault("CELLC_SPECIALIZE", "now")

from cellc.frontend import load_source
from cellc.lower import CellIR
from cellc.source import CellError, Source

CELLS_DIR = Path(__file__).resolve().parent.parent / "cells"
CELL_FILES = sorted(CELLS_DIR.glob("*.cell"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden", action="store_true", default=False,
        help="rewrite tests/golden/ from cellc's output now; review the result with git diff",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True under --update-golden: golden tests write their files instead of comparing."""
    return request.config.getoption("--update-golden")


# The cells a `slow_cells` test runs on in the fast tier: lstm has every kind of step work (fused
# gate matmuls, split, sigmoid, tanh, two states).
FAST_CELLS = ("lstm.cell",)

# Slow tests in files that had no marks of their own when the tiers were made (other helpers were
# editing them); each name covers all of that test's parametrizations. Moving these to
# @pytest.mark.slow in the files themselves changes nothing.
SLOW_ELSEWHERE = {
    # each builds shared libraries with cc, or runs the loader in fresh interpreters
    "tests/test_aot.py": (
        "test_compile_writes_three_files", "test_header_declares_every_kernel",
        "test_header_is_valid_c", "test_loader_imports_neither_cellc_nor_llvmlite",
        "test_loader_matches_reference", "test_loader_batch_sizes_match_per_sequence_reference",
        "test_loader_rejects_bad_arguments", "test_loader_check_can_fail",
        "test_failed_link_leaves_nothing", "test_bad_sizes_are_usage_errors",
        "test_a_copied_folder_runs_in_a_bare_interpreter",
    ),
    "tests/test_hostile_native.py": (
        "test_loader_imports_and_runs_under_hostile_cell_names",
        "test_a_killed_build_leaves_nothing_beside_the_output", "test_files_follow_the_umask",
        "test_loader_outputs_do_not_alias_the_tape", "test_output_folder_named_like_a_flag",
        "test_loader_named_like_a_module_does_not_shadow_it",
        "test_a_100000_character_cell_name_gives_short_file_names",
        "test_header_from_a_hostile_path_compiles_and_runs_nothing",
        "test_t_times_b_over_2_31_is_refused_before_allocating",
        "test_loader_rejects_what_native_cell_rejects_with_the_same_message",
    ),
    "tests/test_hostile_frontend.py": (
        "test_recursion_is_a_located_error_even_past_the_limits",
        "test_expressions_at_the_limits_still_compile",
    ),
    "tests/test_cli.py": (
        "test_exit_codes_in_a_real_process", "test_native_output_may_start_with_a_dash",
    ),
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "cell_path" in metafunc.fixturenames:
        fast_only = metafunc.definition.get_closest_marker("slow_cells") is not None
        metafunc.parametrize("cell_path", [
            pytest.param(p, id=p.name, marks=pytest.mark.slow
                         if fast_only and p.name not in FAST_CELLS else ())
            for p in CELL_FILES
        ])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(__file__).resolve().parent.parent
    for item in items:
        rel = item.path.relative_to(root).as_posix() if item.path.is_relative_to(root) else ""
        if item.originalname in SLOW_ELSEWHERE.get(rel, ()):
            item.add_marker(pytest.mark.slow)


def compile_text(text: str, name: str = "x.cell") -> CellIR:
    return load_source(Source(name, text))


def error_text(text: str, name: str = "x.cell", kind: type[CellError] = CellError) -> str:
    """Compile text that must fail; return str() of the error, checking its class."""
    with pytest.raises(kind) as info:
        compile_text(text, name)
    return str(info.value)


def layer_size_args(spec: dict, input_size: int, other: int) -> dict[str, int]:
    """A layer's size arguments from a generated module's SPEC dict (torch target): the
    input's gets input_size, every other required size `other` (hidden_size, or an mLSTM's
    heads and head_size), an optional one its default (none)."""
    optional = spec.get("optional_sizes", ())
    return {arg: input_size if arg == spec["input_size"] else other
            for arg, _ in spec["sizes"] if arg not in optional}


def skip_native_cell_if_row(cell: CellIR) -> None:
    """NativeCell and the native library run cells whose step reads only its input; one that
    reads x[t-1] or noise masks (cellc/inputs.py) runs through its layers, tested elsewhere
    (tests/test_inputs.py)."""
    if len(cell.input_parts) > 1:
        pytest.skip(f"{cell.name} reads x[t-1] or noise masks: NativeCell refuses it")
