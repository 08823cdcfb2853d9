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
