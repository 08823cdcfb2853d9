"""`cellc grad` and `cellc show --emit opt|grad` as text.

The LSTM's backward equations below were checked by hand against the forward
(c' = sigmoid(f) * c + sigmoid(i) * tanh(g), h' = sigmoid(o) * tanh(c'), y = h'):

    dh' += dy                   the output is h': its cotangent adds to the one from step t+1
    dc' += dh' * so * (1 - tanh(c')^2)                 through h' = so * tanh(c')
    do  = dh' * tanh(c') * so * (1 - so)               sigmoid' = s (1 - s)
    dg  = dc' * si * (1 - tanh(g)^2),  di = dc' * tanh(g) * si * (1 - si)
    dc  = dc' * sf,                    df = dc' * c * sf * (1 - sf)
    dh  = W_hh^T @ concat(di, df, dg, do)              (gate order i, f, g, o)

and after the loop the weight gradients sum outer products over all T*B rows; both biases get
the same row sum. If the printer changes on purpose, refresh the text from `cellc grad`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cellc import cli

ROOT = Path(__file__).resolve().parent.parent
CELL_FILES = sorted((ROOT / "cells").glob("*.cell"))
LSTM = ROOT / "cells" / "lstm.cell"

LSTM_STEP = """\
dh' += dy
dc' += dh' * sigmoid(o) * (1 - tanh(c')^2)
do = dh' * tanh(c') * sigmoid(o) * (1 - sigmoid(o))
dg = dc' * sigmoid(i) * (1 - tanh(g)^2)
di = dc' * tanh(g) * sigmoid(i) * (1 - sigmoid(i))
dc = dc' * sigmoid(f)
df = dc' * c * sigmoid(f) * (1 - sigmoid(f))
d6 = concat(di, df, dg, do)    # d(weight_ih @ x + bias_ih + weight_hh @ h + bias_hh)
dh = weight_hh^T @ d6
"""
LSTM_AFTER_LOOP = """\
dbias_hh = sum_rows(d6)
dweight_hh = outer(d6, h)
dweight_ih = outer(d6, x)
dx = weight_ih^T @ d6
dbias_ih = dbias_hh
"""
LSTM_SUMMARY = (
    "# Saved per time step for the backward (7 values, 7*H numbers per batch row,"
    " 28*H bytes in float32):"
)
LSTM_SAVED = {"tanh(c')", "sigmoid(o)", "tanh(g)", "sigmoid(i)", "sigmoid(f)", "c", "h"}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def equation_blocks(out: str) -> list[list[str]]:
    """The runs of non-comment lines: the step's equations, then those after the loop."""
    blocks, current = [], []
    for line in out.splitlines():
        if line.startswith("#"):
            if current:
                blocks.append(current)
            current = []
        else:
            current.append(line)
    if current:
        blocks.append(current)
    return blocks


@pytest.fixture(scope="module")
def lstm_grad() -> str:
    # The real entry point, once: `python -m cellc grad cells/lstm.cell`.
    proc = subprocess.run(
        [sys.executable, "-m", "cellc", "grad", str(LSTM)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc.stdout


def test_lstm_step_equations(lstm_grad):
    step, _ = equation_blocks(lstm_grad)
    assert step == LSTM_STEP.splitlines()


def test_lstm_after_loop_equations(lstm_grad):
    _, after = equation_blocks(lstm_grad)
    assert after == LSTM_AFTER_LOOP.splitlines()


def test_lstm_residual_summary(lstm_grad):
    lines = lstm_grad.splitlines()
    k = lines.index(LSTM_SUMMARY)
    saved = [line.removeprefix("#   ") for line in lines[k + 1 : k + 8]]
    assert all(line.startswith("#   ") for line in lines[k + 1 : k + 8])
    assert sorted(saved) == sorted(LSTM_SAVED)
    (also,) = [line for line in lines[k + 8 :] if line.startswith("# Also read, not copied: ")]
    assert set(also.removeprefix("# Also read, not copied: ").split(", ")) == {
        "weight_hh",
        "weight_ih",
        "x",
    }


def test_lstm_header(lstm_grad):
    assert lstm_grad.splitlines()[0] == (
        f"# Backward of LSTM ({LSTM}), derived symbolically and simplified."
    )


def test_in_process_matches_subprocess(capsys, lstm_grad):
    status, out, err = run_cli(capsys, "grad", str(LSTM))
    assert (status, out, err) == (0, lstm_grad, "")


@pytest.mark.parametrize("path", CELL_FILES, ids=[p.name for p in CELL_FILES])
def test_grad_runs_on_every_cell(capsys, path):
    status, out, _ = run_cli(capsys, "grad", str(path))
    assert status == 0
    step, after = equation_blocks(out)
    assert step and after
    assert any(
        line.startswith("# Saved per time step for the backward (") for line in out.splitlines()
    )


@pytest.mark.parametrize("stage", ["opt", "grad"])
@pytest.mark.parametrize("path", CELL_FILES, ids=[p.name for p in CELL_FILES])
def test_show_runs_on_every_cell(capsys, path, stage):
    status, out, _ = run_cli(capsys, "show", str(path), "--emit", stage)
    assert status == 0
    funcs = [line for line in out.splitlines() if line.startswith("func ")]
    if stage == "opt":
        assert len(funcs) == 1 and "= scan " in out
    else:  # the forward that saves residuals, then the backward with its reverse loop
        assert len(funcs) == 2 and funcs[1].split("(")[0].endswith("_bwd")
        assert "reverse=True" in out


# ---------------------------------------------------------------------------------------------
# Every name the printed equations use is defined in them or comes from the .cell file.

GRU_SEPARATE = ROOT / "tests" / "data" / "gru_separate.cell"
NAMED_CELLS = [*CELL_FILES, GRU_SEPARATE]

# A number (so that the `e` of `1e-05` is no name), or a name with an optional prime and, when a
# call follows, the `(` that marks it as a function.
_TOKEN = re.compile(r"\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|([A-Za-z_]\w*'?)(\s*\()?")
_EQUATION = re.compile(r"(.+?) (\+?=) (.+)")
_GIVEN = re.compile(r"# Each step, t = T-1 down to 0: (.+) arrives? from step t\+1")
_DY = re.compile(r"; (\S+) is the cotangent of this step's output")
_ROW = re.compile(r"^# The step's input row also holds: (.+); masks are constants")


def identifiers(text: str) -> list[str]:
    """The names an expression reads: not numbers, not functions, not the `T` of `W^T`."""
    text = text.replace("^T", "")
    return [m[1] for m in _TOKEN.finditer(text) if m[1] and not m[2]]


def cell_file_names(path: Path) -> set[str]:
    """Every name in the .cell file outside comments: sizes, input, states (primed where the file
    writes them so), params and named values (and keywords, which no equation uses)."""
    code = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
    return set(identifiers(code))


def undefined_names(out: str, cell_names: set[str]) -> list[str]:
    """Problems with the names in `cellc grad` output: a name read before any line defines it
    (and not from the .cell file), or a line that defines a .cell name or a name again. The
    carried cotangents and dy come from the header, which says that they arrive each step."""
    lines = out.splitlines()
    given = set()
    for line in lines:
        if m := _GIVEN.search(line):
            given |= set(m[1].split(", "))
        if m := _DY.search(line):
            given.add(m[1])
        if m := _ROW.search(line):  # x[t-1] and noise masks (cellc/inputs.py)
            given |= {part.split(" (")[0] for part in m[1].split("), ")}
    assert given, "the header names the carried cotangents and dy"
    defined, problems = set(given), []
    for line in lines:
        if line.startswith("#"):
            continue
        m = _EQUATION.fullmatch(line.split("    #", 1)[0])
        assert m, f"not an equation: {line!r}"
        lhs, op, rhs = m[1].split(", "), m[2], m[3]
        reads = identifiers(rhs) + (lhs if op == "+=" else [])
        problems += [f"{line!r} reads {n!r}" for n in reads if n not in defined | cell_names]
        for n in lhs:
            if op == "=" and n in cell_names:
                problems.append(f"{line!r} redefines {n!r} from the .cell file")
            if op == "=" and n in defined - given:
                problems.append(f"{line!r} defines {n!r} a second time")
        defined |= set(lhs)
    return problems


@pytest.mark.parametrize("path", NAMED_CELLS, ids=[p.name for p in NAMED_CELLS])
def test_printed_names_are_defined(capsys, path):
    status, out, _ = run_cli(capsys, "grad", str(path))
    assert status == 0
    assert undefined_names(out, cell_file_names(path)) == []


def test_names_check_catches_undefined_names():
    # The check itself: a temporary, a shadowed .cell name and a split part named twice.
    out = (
        "# Each step, t = T-1 down to 0: dh' arrives from step t+1 (zero at t = T-1\n"
        "# unless the final states have cotangents); dy is the cotangent of this step's output;\n"
        "dh' += dy\n"
        "dz = dh' * mm5 * 1e-05\n"
        "z = sigmoid(dz) * W^T @ dh'\n"
        "s0, s1 = split(dz, 2)\n"
        "s0, s1 = split(dh', 2)\n"
    )
    assert undefined_names(out, {"z", "h", "h'", "W"}) == [
        "\"dz = dh' * mm5 * 1e-05\" reads 'mm5'",
        "\"z = sigmoid(dz) * W^T @ dh'\" redefines 'z' from the .cell file",
        "\"s0, s1 = split(dh', 2)\" defines 's0' a second time",
        "\"s0, s1 = split(dh', 2)\" defines 's1' a second time",
    ]


def test_split_parts_carry_source_names(capsys):
    # Six gate matrices fuse into two products (over x and over h); their gradients are split
    # back straight into the source names, in the source order.
    status, out, _ = run_cli(capsys, "grad", str(GRU_SEPARATE))
    assert status == 0
    _, after = equation_blocks(out)
    splits = [line.split(" = ")[0] for line in after if " = split(" in line]
    assert sorted(splits) == ["dU_z, dU_r", "dW_z, dW_r, dW_h"]
    parts = {"dU_z", "dU_r", "dW_z", "dW_r", "dW_h"}
    assert not any(line.split(" ")[0] in parts for line in after)  # no `dW_z = s0` afterwards


UNEVEN = """\
cell Uneven(input_size I, hidden_size H):
    input  x[I]
    state  h[H]
    param  W_a[H, I], W_b[2*H, I], K[H, H + I]
    a = W_a @ x
    b, c = split(W_b @ x, 2)
    h' = tanh(a * b + c + K @ concat(h, x))
    output h'
"""


def test_unequal_split_prints_its_sizes(capsys, tmp_path):
    # W_a and W_b fuse into one product whose parts are H and 2*H rows; concat(h, x) is H + I.
    path = tmp_path / "uneven.cell"
    path.write_text(UNEVEN)
    status, out, _ = run_cli(capsys, "grad", str(path))
    assert status == 0
    assert undefined_names(out, cell_file_names(path)) == []
    # the fused part W_a @ x inside a product: `d1 * W_a @ x` would read (d1 * W_a) @ x
    assert "d1 * (W_a @ x)" in out
    splits = [line for line in out.splitlines() if " = split(" in line]
    assert any(line.startswith("dh, dx = split(") and line.endswith(", [H, I])") for line in splits)
    assert any(
        line.startswith("dW_a, dW_b = split(") and line.endswith(", [H, 2*H])") for line in splits
    )
