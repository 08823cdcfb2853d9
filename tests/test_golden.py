"""Golden tests: the printed text of every compiler stage, for every cell in the zoo.

`tests/golden/<stage>/<cell>.txt` holds what cellc printed for one cell at one stage: `cellc show
FILE --emit <stage>`, or for `equations`, `cellc grad FILE`. A change in any printed stage is then a
diff in these files that someone reviews, not a silent change. After a change you meant, refresh
them all with one command and review `git diff tests/golden`:

    python -m pytest tests/test_golden.py --update-golden

cellc runs from the repository root with a relative path (`cells/lstm.cell`), so the paths it
prints, and so the goldens, do not depend on where the checkout lives.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from cellc import cli

REPO = Path(__file__).resolve().parent.parent
GOLDEN_DIR = REPO / "tests" / "golden"
ZOO = sorted(REPO.glob("cells/*.cell")) + sorted(REPO.glob("examples/custom_cell/*.cell"))
PLAN_SIZES = {"input_size": 16, "hidden_size": 16, "heads": 2, "head_size": 8}
UPDATE_COMMAND = "python -m pytest tests/test_golden.py --update-golden"

# The one list of golden stages: folder name under tests/golden -> the cellc command line, with
# FILE standing for the cell's path.
GOLDEN_STAGES: dict[str, tuple[str, ...]] = {
    "ast": ("show", "FILE", "--emit", "ast"),
    "ir": ("show", "FILE", "--emit", "ir"),
    "seq": ("show", "FILE", "--emit", "seq"),
    "opt": ("show", "FILE", "--emit", "opt"),
    "grad": ("show", "FILE", "--emit", "grad"),
    # The lowering plan at sizes 16 (SIZES: input_size=16 and hidden_size=16, or heads=2 and
    # head_size=8, those the cell takes) and target capabilities, which do not depend on this
    # machine's CPU; without --sizes, the generic plan (sizes given at run time).
    "plan": ("show", "FILE", "--emit", "plan", "--sizes", "SIZES"),
    "plan_generic": ("show", "FILE", "--emit", "plan"),
    "equations": ("grad", "FILE"),
}

# `show` stages that have no golden, and why; test_every_show_stage_is_golden_or_excused fails
# when cellc gains a stage that is in neither list.
NOT_GOLDEN = {
    "torch": "generated code (~800 lines a cell, with the cellc version); tests import and run it",
    "llvm": "generated code (~2000 lines a cell, per sizes and dtype); tests JIT and run it",
}


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def golden_path(stage: str, cell: Path, root: Path = GOLDEN_DIR) -> Path:
    return root / stage / f"{cell.stem}.txt"


def check_golden(path: Path, actual: str, update: bool) -> None:
    """Compare `actual` with the golden file at `path` (or, when updating, write it there).

    Fails with a unified diff (golden first) and the command that refreshes the goldens.
    """
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(actual)
        return
    shown = rel(path) if path.is_relative_to(REPO) else str(path)
    if not path.exists():
        pytest.fail(f"no golden file {shown}; create it with: {UPDATE_COMMAND}", pytrace=False)
    with open(path, encoding="utf-8", newline="") as f:
        expected = f.read()
    if actual != expected:
        diff = "".join(difflib.unified_diff(
            expected.splitlines(keepends=True), actual.splitlines(keepends=True),
            fromfile=f"{shown} (golden)", tofile="cellc output now"))
        pytest.fail(f"output differs from {shown}:\n{diff}\nIf the change is intended, run"
                    f" {UPDATE_COMMAND} and review git diff tests/golden", pytrace=False)


def cellc_output(argv: tuple[str, ...], cell: Path, capsys, monkeypatch) -> str:
    """Run cellc in-process from the repository root on the cell's relative path; its stdout.
    The plans are printed for an AVX2 CPU (its panel widths) whatever this machine has, and
    for the default BLAS choice."""
    from cellc.backends import llvm_jit

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(llvm_jit, "kernel_features", lambda: "+avx,+avx2,+fma")
    monkeypatch.delenv("CELLC_BLAS", raising=False)
    monkeypatch.delenv("CELLC_LOOP_GEMM", raising=False)
    capsys.readouterr()  # drop anything printed before
    from cellc.frontend import load_file

    args = {s.arg for s in load_file(str(cell)).sizes if not s.optional}
    sizes = ",".join(f"{k}={v}" for k, v in PLAN_SIZES.items() if k in args)
    status = cli.main([rel(cell) if a == "FILE" else sizes if a == "SIZES" else a
                       for a in argv])
    out, err = capsys.readouterr()
    assert status == 0, f"cellc {' '.join(argv)} on {rel(cell)} exited {status}:\n{err}"
    return out


@pytest.mark.parametrize("stage", list(GOLDEN_STAGES))
@pytest.mark.parametrize("cell", ZOO, ids=[p.stem for p in ZOO])
def test_golden(stage, cell, update_golden, capsys, monkeypatch):
    out = cellc_output(GOLDEN_STAGES[stage], cell, capsys, monkeypatch)
    check_golden(golden_path(stage, cell), out, update_golden)


def test_golden_files_all_belong_to_a_cell_and_stage(update_golden):
    """A golden left behind by a renamed cell or a dropped stage is an error (removed when
    updating), so the folder always mirrors what is tested."""
    wanted = {golden_path(s, c) for s in GOLDEN_STAGES for c in ZOO}
    stale = sorted(p for p in GOLDEN_DIR.rglob("*") if p.is_file() and p not in wanted)
    if update_golden:
        for p in stale:
            p.unlink()
        return
    assert not stale, f"golden files for no cell or stage: {[rel(p) for p in stale]}; " \
        f"remove them with: {UPDATE_COMMAND}"


def test_zoo_cell_names_are_unique():
    # Goldens are named by the cell's file stem, across cells/ and examples/.
    stems = [p.stem for p in ZOO]
    assert len(ZOO) >= 10 and len(set(stems)) == len(stems), stems


def test_every_show_stage_is_golden_or_excused():
    golden = {argv[argv.index("--emit") + 1] for argv in GOLDEN_STAGES.values() if "--emit" in argv}
    missing = set(cli.STAGES) - golden - set(NOT_GOLDEN)
    assert not missing, (f"cellc show --emit {sorted(missing)} has no golden: add it to"
                         f" GOLDEN_STAGES in {rel(Path(__file__))} and run {UPDATE_COMMAND}")
    assert golden | set(NOT_GOLDEN) <= set(cli.STAGES)


# The mechanism itself, on scratch copies of one golden: an edited golden fails with a diff, a
# missing one fails naming the refresh command, and updating writes what cellc prints.

LSTM = REPO / "cells" / "lstm.cell"


def test_an_edited_golden_fails_with_a_diff(tmp_path, capsys, monkeypatch):
    out = cellc_output(GOLDEN_STAGES["ir"], LSTM, capsys, monkeypatch)
    scratch = golden_path("ir", LSTM, tmp_path)
    check_golden(scratch, out, update=True)
    check_golden(scratch, out, update=False)  # the copy matches as written
    lines = out.splitlines(keepends=True)
    edited = next(i for i, line in enumerate(lines) if " = sigmoid " in line)
    lines[edited] = lines[edited].replace(" = sigmoid ", " = tanh ")
    scratch.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(pytest.fail.Exception) as info:
        check_golden(scratch, out, update=False)
    message = str(info.value)
    assert f"-{lines[edited]}" in message and f"+{out.splitlines(keepends=True)[edited]}" in message
    assert UPDATE_COMMAND in message


def test_a_missing_golden_fails_naming_the_command(tmp_path):
    with pytest.raises(pytest.fail.Exception) as info:
        check_golden(tmp_path / "ir" / "nothing.txt", "text\n", update=False)
    assert "no golden file" in str(info.value) and UPDATE_COMMAND in str(info.value)


def test_update_writes_the_output_exactly(tmp_path):
    path = tmp_path / "equations" / "x.txt"
    check_golden(path, "a\r\nb\n", update=True)  # written byte for byte, no newline translation
    assert path.read_bytes() == b"a\r\nb\n"
    check_golden(path, "a\r\nb\n", update=False)
