"""The command line over the hostile corpus: a located error or a success, never a traceback.

For each case (tests/hostile_corpus.py) the file is written as `case.cell` and run through
`check`, `grad`, `show --emit` for every front-end stage and `compile --target torch`. A
command must return an exit status (0 ok, 1 error in the file, 2 bad argument), never raise;
stderr must never hold a traceback, and an error must name the file. A generated module that
was written is imported, from a working folder that must stay free of marker files.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest

from cellc import cli

from hostile_corpus import corpus

pytestmark = pytest.mark.slow  # 521 texts through the CLI; CI runs them

CASES = corpus()
# `show --emit ast` only parses, so it may succeed where the checks fail; the rest agree.
PARSE_ONLY = ["show", "--emit", "ast"]
COMMANDS = [
    ["check"],
    ["grad"],
    ["show", "--emit", "ir"],
    ["show", "--emit", "opt"],
    ["show", "--emit", "grad"],
    ["show", "--emit", "torch"],
]


def _run(argv, capsys):
    capsys.readouterr()
    try:
        status = cli.main(argv)
    except SystemExit as e:  # argparse's own usage errors
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def test_corpus_is_large_and_varied():
    assert len(CASES) >= 300
    assert len({data for _, data in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[key for key, _ in CASES])
def test_no_traceback(case, tmp_path, monkeypatch, capsys):
    key, data = case
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "case.cell"
    path.write_bytes(data)
    statuses = []
    for command in [PARSE_ONLY, *COMMANDS]:
        status, out, err = _run([command[0], str(path), *command[1:]], capsys)
        assert status in (0, 1), (command, status, err)
        assert "Traceback" not in err and "Traceback" not in out, (command, err)
        if status == 1:
            assert "case.cell" in err, (command, err)
            assert len(err.strip().splitlines()) < 40, (command, err)
        statuses.append(status)
    parsed, statuses = statuses[0], statuses[1:]
    # The front end decides once: every checked stage agrees on whether the file is valid.
    assert len(set(statuses)) == 1, list(zip(COMMANDS, statuses))
    assert parsed == 0 or statuses[0] == 1

    out_py = tmp_path / "out.py"
    status, _, err = _run(["compile", str(path), "--target", "torch", "-o", str(out_py)], capsys)
    assert status == statuses[0], err
    assert "Traceback" not in err
    if status == 0:
        spec = importlib.util.spec_from_file_location(f"hostile_{abs(hash(key))}", out_py)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        finally:
            sys.modules.pop(spec.name, None)
        assert hasattr(module, "Layer")
    else:
        assert not out_py.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) in (["case.cell"], ["case.cell", "out.py"])
