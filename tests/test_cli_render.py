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
