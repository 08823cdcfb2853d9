"""The `cellc` command: exit codes, one line per checked file, located errors, no tracebacks."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import CELL_FILES

from cellc import cli

BROKEN = (
    "cell C(input_size I, hidden_size H):\n    input x[I]\n    state h[H]\n"
    "    h' = tanh(h + y)\n    output h'\n"
)
BROKEN_ERROR = (
    ": error: unknown name 'y'\n"
    "        h' = tanh(h + y)\n"
    "                      ^\n"
)


@pytest.fixture
def broken(tmp_path):
    path = tmp_path / "broken.cell"
    path.write_text(BROKEN)
    return path


def test_check_all_cells(capsys):
    assert cli.main(["check", *map(str, CELL_FILES)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split(": ok: ")[0] for line in lines] == [str(p) for p in CELL_FILES]
    assert err == ""


def test_check_summary_line(capsys):
    lstm = next(p for p in CELL_FILES if p.name == "lstm.cell")
    assert cli.main(["check", str(lstm)]) == 0
    assert capsys.readouterr().out == (
        f"{lstm}: ok: LSTM(input_size I, hidden_size H) states h[H], c[H];"
        " 4*H^2 + 4*H*I + 8*H parameters\n"
    )


def test_check_broken_file(broken, capsys):
    assert cli.main(["check", str(broken)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"{broken}:4:19{BROKEN_ERROR}"


def test_check_goes_on_after_a_broken_file(broken, capsys):
    good = str(CELL_FILES[0])
    assert cli.main(["check", str(broken), good]) == 1
    out, err = capsys.readouterr()
    assert out.startswith(f"{good}: ok: ") and out.count("\n") == 1
    assert err.startswith(f"{broken}:4:19: error: ")


def test_check_missing_file(tmp_path, capsys):
    path = tmp_path / "nope.cell"
    assert cli.main(["check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == f"{path}: error: no such file: {path}\n"


def test_check_prints_warnings_but_succeeds(tmp_path, capsys):
    path = tmp_path / "unused.cell"
    path.write_text(
        "cell C(input_size I, hidden_size H):\n    input x[I]\n    state h[H]\n    param W[H, I]\n"
        "    h' = tanh(h + sum(x))\n    output h'\n"
    )
    assert cli.main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{path}: ok: C(input_size I, hidden_size H)")
    assert err == (
        f"{path}:4:11: warning: param 'W' is never used\n"
        "        param W[H, I]\n"
        "              ^^^^^^^\n"
    )


def test_show_missing_file(tmp_path, capsys):
    path = tmp_path / "nope.cell"
    assert cli.main(["show", str(path), "--emit", "ast"]) == 1
    assert capsys.readouterr().err == f"{path}: error: no such file: {path}\n"


def test_show_broken_file(broken, capsys):
    assert cli.main(["show", str(broken)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == f"{broken}:4:19{BROKEN_ERROR}"


RNN = next(p for p in CELL_FILES if p.name == "rnn.cell")


def test_show_ast(capsys):
    assert cli.main(["show", str(RNN), "--emit", "ast"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Cell RNN(input_size I, hidden_size H)\n  Decl input x[I]    # line ")
    assert "  Assign h' = tanh(((((weight_ih @ x) + bias_ih) + (weight_hh @ h)) + bias_hh))" in out
    assert out.rstrip().splitlines()[-1].startswith("  Output h'")


def test_show_ir_is_the_default(capsys):
    assert cli.main(["show", str(RNN), "--emit", "ir"]) == 0
    out = capsys.readouterr().out
    assert cli.main(["show", str(RNN)]) == 0
    assert capsys.readouterr().out == out
    lines = out.splitlines()
    assert lines[0].startswith("func RNN(%h : [B,H], %x : [B,I], %weight_ih : [H,I]")
    assert lines[-2:] == ["  return %h', %h'", "}"]
    assert sum(" = matmul " in line for line in lines) == 2
    assert all(line.endswith("rnn.cell:9") for line in lines[1:-2])  # every instruction located


def test_show_seq(capsys):
    assert cli.main(["show", str(RNN), "--emit", "seq"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("func RNN(%xs : [T*B,I], %h0 : [B,H],")
    assert "%h_n : [B,H], %ys : [T*B,H] = scan %h0, %xs," in out
    assert "    func RNN(%h : [B,H], %x : [B,I]" in out  # the step, nested
    assert out.rstrip().endswith("return %h_n, %ys\n}")


def test_show_rejects_unknown_stage(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["show", str(RNN), "--emit", "bogus"])
    assert info.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["check", "--help"], ["show", "--help"],
                                  ["grad", "--help"]], ids=lambda a: " ".join(a))
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: cellc")
    if argv[0] == "--help":
        assert all(cmd in out for cmd in ("check", "show", "grad"))
    if argv[0] == "show":
        stages = re.search(r"--emit \{([a-z,]+)\}", out).group(1).split(",")
        assert {"ast", "ir", "seq"} <= set(stages)


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    assert "usage: cellc" in capsys.readouterr().err


def test_exit_codes_in_a_real_process(broken):
    def cellc(*args):
        return subprocess.run([sys.executable, "-m", "cellc", *map(str, args)],
                              capture_output=True, text=True, timeout=60)

    ok = cellc("check", *CELL_FILES)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count(": ok: ") == len(CELL_FILES) == len(ok.stdout.splitlines())

    bad = cellc("check", broken)
    assert bad.returncode == 1
    assert bad.stderr == f"{broken}:4:19{BROKEN_ERROR}"
    assert "Traceback" not in bad.stdout + bad.stderr

    missing = cellc("check", broken.parent / "nope.cell")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.endswith(f"error: no such file: {broken.parent / 'nope.cell'}\n")

    version = cellc("--version")
    assert version.returncode == 0 and version.stdout.startswith("cellc ")
