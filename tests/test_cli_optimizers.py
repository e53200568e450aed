"""Every torch.optim optimizer that takes a plain parameter list runs from the command line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gradfit.cli import app
from gradfit.solvers.gradient import optimizer_names


@pytest.mark.parametrize("name", optimizer_names())
def test_optimizer_runs_from_the_cli(name, thermometer_csv, tmp_path):
    out = tmp_path / "result.json"
    command = ["fit", str(thermometer_csv), "--model", "w*t_u + b", "--y", "t_c", "--optimizer", name, "--epochs", "60", "--out", str(out), "-q"]
    run = CliRunner().invoke(app, command)
    assert run.exit_code == 0, run.output
    result = json.loads(out.read_text())
    assert result["solver"] == "gradient" and result["settings"]["optimizer"] == name
    assert result["train_loss"] < result["history"]["train"][0]
