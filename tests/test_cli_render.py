"""Terminal renderings (:mod:`gradfit.cli_render`): numbers are never cut short."""

from __future__ import annotations

import io

from rich.console import Console

from gradfit.cli_render import loss_table, print_table


def _printed(table, width: int) -> str:
    out = io.StringIO()
    print_table(Console(file=out, width=width), table)
    return out.getvalue()


def test_numbers_that_do_not_fit_the_terminal_are_printed_whole_not_cut():
    rows = [("k", "2.613744366e-10", "-1.925457992e-10", "validation loss rose while training loss kept falling")]
    text = _printed(loss_table("gradients", rows, ("parameter", "value", "autograd", "note")), 40)
    assert "2.613744366e-10" in text and "-1.925457992e-10" in text
    assert "…" not in text


def test_a_table_that_fits_is_printed_at_the_terminal_width():
    rows = [("a", "1.5"), ("b", "-")]
    text = _printed(loss_table("t", rows, ("name", "value")), 80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "1.5" in text


def test_text_columns_wrap_and_number_columns_do_not():
    table = loss_table("t", [("linear", "0.5 ± 0.1", "12"), ("poly:2", "no", "3")], ("model", "loss", "params"))
    assert [column.no_wrap for column in table.columns] == [False, False, True]


def test_explain_takes_sigma_for_the_weighted_loss(tmp_path):
    from typer.testing import CliRunner

    from gradfit.cli import app

    (tmp_path / "data.csv").write_text("t_u,t_c,s\n35.7,0.5,0.5\n55.9,14,1\n58.2,15,2\n81.9,28,0.5\n")
    run = CliRunner().invoke(app, ["explain", str(tmp_path / "data.csv"), "-m", "w*t_u + b", "-y", "t_c", "--sigma", "s", "--init", "w=1,b=0"])
    assert run.exit_code == 0, run.output
    assert "L = mean(((f - y)/σ)**2)" in run.output and "dL/db = mean(2*(f - y)/σ**2)" in run.output
    assert "204.55" in run.output  # mean(2 (t_u - t_c) / σ²) at w = 1, b = 0
