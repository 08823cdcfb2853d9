"""Every script in examples/ runs in --quick mode: exit status 0, a real PNG, a sane final line.

Each example runs as a subprocess, as a user would run it, writing into a temporary --out folder.
Its last line of output is `label: name=value name=value ...`; the checks below bound the values
generously (quick runs train for seconds, so they test plumbing, not learning). Examples whose
optional dependencies (the `examples` extra: matplotlib, scikit-learn, statsmodels) are missing
are skipped.
"""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs each example program end to end (minutes); CI runs them

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_example(script, out, *args):
    """Run examples/<script> --quick; return (stdout, {name: value} from its last line)."""
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "examples" / script), "--quick", "--out", str(out), *args]
    proc = subprocess.run(
        cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    last = proc.stdout.strip().splitlines()[-1]
    metrics = {k: float(v) for k, v in re.findall(r"(\w+)=(\S+)", last)}
    assert metrics, f"no name=value pairs in the last line of {script}: {last!r}"
    for k, v in metrics.items():
        assert math.isfinite(v), f"{script}: {k}={v} in {last!r}"
    return proc.stdout, metrics


def check_png(path):
    assert path.exists(), f"{path} was not written"
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) > 1024, f"{path} is only {len(data)} bytes"


@pytest.mark.parametrize("target", ["llvm", "torch"])
def test_forecast_sunspots(tmp_path, target):
    pytest.importorskip("matplotlib")
    pytest.importorskip("statsmodels")
    _, m = run_example("forecast_sunspots.py", tmp_path, "--target", target)
    check_png(tmp_path / "forecast_sunspots.png")
    assert set(m) == {"lstm", "naive", "ar20", "ratio"}
    assert 900 < m["naive"] < 1300  # fixed data: last-value MSE over 1951-2008 is 1075.1
    assert 0 < m["lstm"] < 5 * m["naive"]
    assert m["ratio"] == pytest.approx(m["lstm"] / m["naive"], abs=2e-3)


def test_digits_classification(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    _, m = run_example("digits_classification.py", tmp_path)
    check_png(tmp_path / "digits_classification.png")
    assert set(m) == {"rnn", "lstm", "gru", "mingru"}
    assert all(0 <= a <= 1 for a in m.values())
    assert max(m.values()) > 0.2  # ten classes: chance is 0.1


def test_char_lm(tmp_path):
    pytest.importorskip("matplotlib")
    out, m = run_example("char_lm.py", tmp_path)
    check_png(tmp_path / "char_lm.png")
    assert set(m) == {"lstm", "mlstm", "bigram", "trigram"}
    vocab = int(re.search(r"(\d+) distinct", out).group(1))
    assert all(0 < v < math.log(vocab) + 1 for v in m.values())  # nats/char near or below uniform
    assert m["trigram"] < m["bigram"]
    assert "sample:" in out


def test_custom_cell(tmp_path):
    pytest.importorskip("matplotlib")
    out, m = run_example("custom_cell/run.py", tmp_path)
    check_png(tmp_path / "custom_cell.png")
    assert "# Backward of JANET" in out and "dh' +=" in out
    assert "target torch: passed" in out and "target llvm: passed" in out
    assert set(m) == {"first10", "test", "baseline"}
    assert 0 <= m["test"] < 1 and m["baseline"] == pytest.approx(1 / 3, abs=1e-3)


def test_adding_problem(tmp_path):
    pytest.importorskip("matplotlib")
    _, m = run_example("adding_problem.py", tmp_path)
    check_png(tmp_path / "adding_problem.png")
    assert set(m) == {"lstm", "gru", "rnn", "baseline"}
    assert m["baseline"] == pytest.approx(1 / 6, abs=1e-3)
    assert all(0 <= m[k] < 2 for k in ("lstm", "gru", "rnn"))


def test_zoneout_regularization(tmp_path):
    pytest.importorskip("matplotlib")
    out, m = run_example("zoneout_regularization.py", tmp_path)
    check_png(tmp_path / "zoneout_regularization.png")
    assert set(m) == {"none", "zoneout", "variational"}
    assert all(0 < v < 6 for v in m.values())  # nats/char: a short run stays near uniform
    assert "zoneout      step" in out and "variational  step" in out
