"""Command-line options and paths: what each option applies to, and who reports a file that cannot be used."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import gradfit
from gradfit.cli import app
from tests.conftest import T_C, T_U

LINE = "w*t_u + b"


def _fit(*args: str) -> Any:
    return CliRunner().invoke(app, ["fit", *args, "--model", LINE, "--y", "t_c", "-q"])


def _values(path: Path) -> list[float]:
    return [p["value"] for p in json.loads(path.read_text())["parameters"]]


def test_loss_scale_is_used_by_a_robust_loss(thermometer_csv, tmp_path):
    out = tmp_path / "r.json"
    run = _fit(str(thermometer_csv), "--loss", "huber", "--loss-scale", "0.5", "--out", str(out))
    assert run.exit_code == 0, run.output
    expected = gradfit.fit(LINE, {"t_u": T_U}, T_C, loss="huber", loss_scale=0.5)
    assert _values(out) == pytest.approx(list(expected.values), rel=1e-9)
    assert _values(out) != pytest.approx(list(gradfit.fit(LINE, {"t_u": T_U}, T_C, loss="huber").values), rel=1e-6)


def test_a_single_fit_keeps_the_least_squares_iteration_cap(thermometer_csv, tmp_path):
    run = _fit(str(thermometer_csv), "--solver", "lm", "--max-iter", "3", "--out", str(tmp_path / "r.json"))
    assert run.exit_code == 0, run.output
    assert json.loads((tmp_path / "r.json").read_text())["iterations"] <= 3


def test_help_of_out_names_the_formats_of_single_and_group_fits():
    fit = typer.main.get_command(app).commands["fit"]  # type: ignore[attr-defined]
    (out,) = [param for param in fit.params if param.name == "out"]
    for suffix in (".json", "--group-by", ".parquet", ".pq", ".csv", ".ndjson", ".jsonl"):
        assert suffix in out.help, (suffix, out.help)


# -- a file the user may not read: gradfit's own one line, not click's -----------------------------
def _as_unprivileged() -> list[str]:
    """A command prefix under which file permissions apply (root reads any file)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: every file is readable")
    dropped = "-dac_override,-dac_read_search"
    return [setpriv, f"--bounding-set={dropped}", f"--inh-caps={dropped}"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fit", "locked.csv", "--model", LINE, "--y", "t_c"], "DataError: cannot read locked.csv: permission denied — check the file's permissions"),
        (["fit", "data.csv", "--val-data", "locked.csv", "--model", LINE, "--y", "t_c"], "DataError: cannot read locked.csv: permission denied"),
        (["predict", "locked.csv", "data.csv"], "DataError: cannot read result file 'locked.csv': permission denied — check the file's permissions"),
        (["report", "locked.csv"], "cannot read result file 'locked.csv': permission denied"),
    ],
)
def test_an_unreadable_file_is_reported_by_gradfit(thermometer_csv, tmp_path, args, message):
    prefix = _as_unprivileged()
    shutil.copy(thermometer_csv, tmp_path / "data.csv")
    locked = tmp_path / "locked.csv"
    shutil.copy(thermometer_csv, locked)
    locked.chmod(0)
    env = {**os.environ, "COLUMNS": "80"}
    run = subprocess.run([*prefix, sys.executable, "-m", "gradfit.cli", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run
    assert run.stderr.splitlines() == [run.stderr.strip()] and message in run.stderr, run.stderr


def test_repeated_init_bounds_and_fix_options_add_up(tmp_path):
    (tmp_path / "data.csv").write_text("y,x\n" + "\n".join(f"{2.0 * x + 1.0 + 0.01 * (-1) ** x},{x}" for x in range(8)) + "\n")
    base = [sys.executable, "-m", "gradfit.cli", "fit", "data.csv", "--model", "w*x + b + c*x**2", "--y", "y", "-q", "--out"]
    run = subprocess.run([*base, "r.json", "--init", "w=1", "--init", "b=0", "--fix", "c=0", "--bounds", "w>0", "--bounds", "b<5"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    record = json.loads((tmp_path / "r.json").read_text())
    by_name = {p["name"]: p for p in record["parameters"]}
    assert by_name["c"]["fixed"] and by_name["w"]["lower"] == 0 and by_name["b"]["upper"] == 5
    twice = subprocess.run([*base, "s.json", "--init", "w=1", "--init", "w=2"], cwd=tmp_path, capture_output=True, text=True)
    assert twice.returncode == 2 and "--init gives 'w' twice" in twice.stderr


def test_confidence_sets_the_intervals_as_from_python_and_is_refused_for_group_fits(thermometer_csv, tmp_path):
    out = tmp_path / "r.json"
    run = _fit(str(thermometer_csv), "--confidence", "0.99", "--out", str(out))
    assert run.exit_code == 0, run.output
    expected = gradfit.fit(LINE, {"t_u": T_U}, T_C, confidence=0.99)
    saved = json.loads(out.read_text())["parameters"]
    assert [p[k] for p in saved for k in ("ci_low", "ci_high")] == pytest.approx([v for p in expected.parameters for v in (p.ci_low, p.ci_high)], rel=1e-12)
    grouped = _fit(str(thermometer_csv), "--confidence", "0.99", "--group-by", "t_u")
    assert grouped.exit_code == 2 and "--confidence sets a single fit's intervals" in grouped.output
