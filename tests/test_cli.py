"""The `cellc` command: exit codes, one line per checked file, located errors, no tracebacks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cellc import cli

from conftest import CELL_FILES

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
        f"{lstm}: ok: LSTM(input_size I, hidden_size H, proj_size P = 0) states h[H], c[H];"
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
    assert out.startswith("Cell RNN(input_size I, hidden_size H, nonlinearity in (tanh, relu))\n"
                          "  Decl input x[I]    # line ")
    assert ("  Assign h' = nonlinearity(((((weight_ih @ x) + bias_ih) + (weight_hh @ h)) +"
            " bias_hh))") in out
    assert out.rstrip().splitlines()[-1].startswith("  Output h'")


def test_show_ir_is_the_default(capsys):
    assert cli.main(["show", str(RNN), "--emit", "ir"]) == 0
    out = capsys.readouterr().out
    assert cli.main(["show", str(RNN)]) == 0
    assert capsys.readouterr().out == out
    lines = out.splitlines()
    assert lines[0].startswith(
        "func RNN(%h : [B,H], %x : [B,I], %nonlinearity : [1], %weight_ih : [H,I]")
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


# ---------------------------------------------------------------------------------------------
# Hardening: whatever the arguments or the file system do, one line on stderr, never a traceback.

LSTM = next(p for p in CELL_FILES if p.name == "lstm.cell")
CHILD = """
import os, signal, sys, time
from cellc import cli, frontend

def interrupted(args):  # a real SIGINT through Python's own handler, mid-command
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)

def broken(path):
    raise RuntimeError("boom")

if sys.argv[1] == "interrupt":
    cli.cmd_check = interrupted
else:
    frontend.load_file = broken
sys.exit(cli.main(["check" if sys.argv[1] == "interrupt" else "grad", "x.cell"]))
"""


def _child(case, **env):
    """A real `cellc` process whose command is interrupted or crashes: (status, stderr)."""
    r = subprocess.run([sys.executable, "-c", CHILD, case], check=False, capture_output=True,
                       text=True, timeout=60, env={**os.environ, **env})
    return r.returncode, r.stderr


@pytest.mark.parametrize("value", ["9" * 5000, str(2**31), "99999999999", "0" * 30 + "1" * 12],
                         ids=["5000-digits", "2**31", "11-digits", "leading-zeros"])
@pytest.mark.parametrize("command", ["show", "compile"])
def test_huge_size_is_a_usage_error(value, command, tmp_path, capsys):
    out = tmp_path / "out"
    argv = (["show", str(LSTM), "--emit", "llvm"] if command == "show"
            else ["compile", str(LSTM), "--target", "llvm", "-o", str(out)])
    assert cli.main([*argv, "--sizes", f"input_size={value},hidden_size=4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cellc: error: --sizes: input_size=") and err.count("\n") == 1, err
    assert "2147483647" in err and len(err) < 200  # names the limit, does not echo 5000 digits
    assert not out.exists()


@pytest.mark.parametrize("value", ["\u00b2", "\u0661\u0662", "1_000", "+-3", " "])
def test_size_must_be_ascii_digits(value, capsys):
    # str.isdigit() accepts '²' (then int() raises ValueError) and Arabic-Indic digits
    status = cli.main(["show", str(LSTM), "--emit", "llvm",
                       "--sizes", f"input_size={value},hidden_size=4"])
    assert status == 2
    assert capsys.readouterr().err.startswith("cellc: error: --sizes: expected NAME=INT")


def test_largest_size_is_accepted():
    from cellc.frontend import load_file

    cell = load_file(LSTM)
    sizes = cli.parse_sizes(f"input_size={2**31 - 1}, hidden_size=0004", cell, required=True)
    assert sizes == {"I": 2**31 - 1, "H": 4}


def test_interrupt_is_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_compile", interrupted)
    assert cli.main(["compile", str(LSTM)]) == 130
    assert capsys.readouterr() == ("", "cellc: interrupted\n")


def test_sigint_in_a_real_process():
    status, err = _child("interrupt")
    assert (status, err) == (130, "cellc: interrupted\n")


def _unwritable(tmp_path, where):
    """An output path that even root cannot create: under a regular file, in /proc, too long."""
    (tmp_path / "file.txt").write_text("a file, not a folder\n")
    if where == "proc":
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc")
        return Path("/proc/cellc_out")
    return {"under-a-file": tmp_path / "file.txt" / "x", "too-long": tmp_path / ("a" * 300)}[where]


WHERE = ["under-a-file", "proc", "too-long"]


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("target", ["torch", "llvm"])
def test_unwritable_output_is_one_line(target, where, tmp_path, capsys):
    out = _unwritable(tmp_path, where)
    argv = ["compile", str(LSTM), "--target", target]
    if target == "llvm":
        argv += ["--sizes", "input_size=4,hidden_size=4"]
    else:
        out = out.with_name(out.name + ".py")
    assert cli.main([*argv, "-o", str(out)]) == 1
    out_text, err = capsys.readouterr()
    assert out_text == ""
    assert err.startswith(f"cellc: error: -o {out}: ") and err.count("\n") == 1, err
    assert ".tmp" not in err  # names the output, not write_atomic's temporary file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]  # nothing half-written


def test_unwritable_output_in_a_real_process(tmp_path):
    out = _unwritable(tmp_path, "under-a-file")
    r = subprocess.run([sys.executable, "-m", "cellc", "compile", str(LSTM), "-o", str(out)],
                       check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr == f"cellc: error: -o {out}: Not a directory\n"


def test_failed_native_build_removes_every_folder_it_made(tmp_path, monkeypatch, capsys):
    import errno

    from cellc.backends import aot

    def full_disk(cell, sizes, out_dir):
        (out_dir / ".partial").mkdir()  # what a build might leave: a temporary folder
        (out_dir / ".partial").rmdir()
        raise OSError(errno.ENOSPC, "No space left on device", str(out_dir / ".partial" / "x.o"))

    monkeypatch.setattr(aot, "build", full_disk)
    out = tmp_path / "a" / "b" / "out"
    argv = ["compile", str(LSTM), "--target", "llvm", "--sizes", "input_size=4,hidden_size=4"]
    assert cli.main([*argv, "-o", str(out)]) == 1
    assert capsys.readouterr().err == f"cellc: error: -o {out}: No space left on device\n"
    assert list(tmp_path.iterdir()) == []  # not out, not a/b, not a
    (tmp_path / "a").mkdir()  # a folder that was there before stays
    assert cli.main([*argv, "-o", str(out)]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a"] and list((tmp_path / "a").iterdir()) == []


def test_output_may_start_with_a_dash(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["compile", str(LSTM), "--output=-evil.py"]) == 0
    assert capsys.readouterr().out == "wrote -evil.py\n"
    assert (tmp_path / "-evil.py").read_text().startswith("# Generated by cellc")


def test_native_output_may_start_with_a_dash(tmp_path, monkeypatch, capsys):
    """`--output=-evil` is a folder named -evil holding a library with the kernels, not a flag
    for the C compiler (the AOT build makes such paths safe; the CLI passes the path as given)."""
    import ctypes

    pytest.importorskip("llvmlite")
    monkeypatch.chdir(tmp_path)
    rnn = next(p for p in CELL_FILES if p.name == "rnn.cell")
    argv = ["compile", str(rnn), "--target", "llvm", "--sizes", "input_size=3,hidden_size=4"]
    assert cli.main([*argv, "--output=-evil"]) == 0, capsys.readouterr().err
    lib = ctypes.CDLL(str(tmp_path / "-evil" / "librnn.so"))
    assert all(hasattr(lib, f"rnn_{k}_f32") for k in ("forward", "backward", "step"))


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_generated_file_mode_follows_the_umask(umask, mode, tmp_path, monkeypatch, capsys):
    import os

    from cellc.api import write_atomic

    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "direct.py", "x = 1\n")
        monkeypatch.chdir(tmp_path)
        assert cli.main(["compile", str(LSTM), "-o", "lstm.py"]) == 0
    finally:
        os.umask(old)
    for name in ("direct.py", "lstm.py"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["direct.py", "lstm.py"]


def test_oserror_reading_is_one_line(monkeypatch, capsys):
    from cellc import frontend

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(frontend, "load_file", denied)
    assert cli.main(["grad", "x.cell"]) == 1
    assert capsys.readouterr().err == "cellc: error: x.cell: Permission denied\n"


def test_unexpected_exception_is_an_internal_error(monkeypatch, capsys):
    from cellc import frontend

    def broken(path):
        raise RuntimeError("boom")

    monkeypatch.setattr(frontend, "load_file", broken)
    monkeypatch.delenv("CELLC_DEBUG", raising=False)
    assert cli.main(["grad", "x.cell"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("cellc: internal error: RuntimeError: boom\n"), err
    assert "Traceback" not in err and "CELLC_DEBUG=1" in err


def test_internal_error_traceback_only_with_cellc_debug():
    status, err = _child("crash")
    assert status == 3 and "Traceback" not in err
    assert err.startswith("cellc: internal error: RuntimeError: boom\n"), err
    status, err = _child("crash", CELLC_DEBUG="1")
    assert status == 3 and "Traceback (most recent call last)" in err and "boom" in err
