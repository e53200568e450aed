"""Rich renderings of library objects for the terminal (the library itself never prints)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gradfit.report_text import format_number

__all__ = ["render_explanation", "loss_table"]


def render_explanation(explanation: Any, console: Console) -> None:
    """Print the backward pass: model, loss, and each gradient three ways."""
    console.print(f"[bold]model[/]  {escape(explanation.model)}", highlight=False, soft_wrap=True)
    console.print(
        f"[bold]loss[/]   {explanation.loss_text} = {format_number(explanation.loss, 8)} "
        f"on {explanation.n_points} points",
        highlight=False,
        soft_wrap=True,
    )
    for row in explanation.rows:
        console.print(f"  df/d{row.parameter} = {escape(row.derivative)}", highlight=False, soft_wrap=True)
        console.print(f"  {escape(row.chain_rule)}", highlight=False, soft_wrap=True)
    if any("xlogy(" in row.derivative for row in explanation.rows):
        console.print("  (xlogy(u, v) = u*log(v), and 0 where u = 0)", highlight=False, soft_wrap=True)
    table = Table(title="gradient of the loss at the starting point", title_justify="left")
    for header in ("parameter", "value", "chain rule (hand)", "autograd", "finite diff.", "rel. diff"):
        table.add_column(header, justify="left" if header == "parameter" else "right")
    for row in explanation.rows:
        worst = max(row.rel_diff_autograd, row.rel_diff_finite_difference)
        table.add_row(
            row.parameter,
            format_number(row.value, 6),
            format_number(row.by_hand, 10),
            format_number(row.autograd, 10),
            format_number(row.finite_difference, 10),
            f"{worst:.1e}",
        )
    console.print(table)


def loss_table(title: str, rows: list[tuple[str, ...]], headers: tuple[str, ...]) -> Table:
    """A simple right-aligned table with a left-aligned first column."""
    table = Table(title=title, title_justify="left")
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table
