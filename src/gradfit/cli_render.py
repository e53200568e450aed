"""Rich renderings of library objects for the terminal (the library itself never prints)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from gradfit.report_text import format_number

__all__ = ["render_explanation", "loss_table", "print_table", "NUMBER_COLUMN"]

#: how a column of numbers is laid out: never wrapped or cut (a cut number reads as another number)
NUMBER_COLUMN = {"justify": "right", "no_wrap": True}
#: a cell that is a number as :func:`format_number` writes it (or a missing one)
_NUMBER = re.compile(r"^\s*(?:[-+]?(?:\d[\d,]*\.?\d*|\.\d+)(?:e[-+]?\d+)?%?|[-+]?inf|nan|-|)\s*$", re.IGNORECASE)


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
    if any("xmul(" in row.derivative for row in explanation.rows):
        console.print("  (xmul(u, v) = u*v, and 0 where u = 0)", highlight=False, soft_wrap=True)
    from gradfit.explain import worst_difference

    table = Table(title="gradient of the loss at the starting point", title_justify="left")
    table.add_column("parameter", no_wrap=True)
    for header in ("value", "chain rule (hand)", "autograd", "finite diff.", "rel. diff"):
        table.add_column(header, **NUMBER_COLUMN)
    for row in explanation.rows:
        worst = worst_difference([row.rel_diff_autograd, row.rel_diff_finite_difference])
        table.add_row(
            row.parameter,
            format_number(row.value, 6),
            format_number(row.by_hand, 10),
            format_number(row.autograd, 10),
            format_number(row.finite_difference, 10),
            f"{worst:.1e}",
        )
    print_table(console, table)


def loss_table(title: str, rows: Sequence[tuple[str, ...]], headers: tuple[str, ...]) -> Table:
    """A table with a left-aligned first column; columns whose cells are all numbers are right-aligned
    and never cut, the others wrap."""
    table = Table(title=title, title_justify="left")
    for i, header in enumerate(headers):
        numbers = i > 0 and all(_NUMBER.match(row[i]) for row in rows)
        table.add_column(header, **(NUMBER_COLUMN if numbers else {"justify": "left" if i == 0 else "right", "overflow": "fold"}))
    for row in rows:
        table.add_row(*row)
    return table


def print_table(console: Console, table: Table) -> None:
    """Print ``table`` whole: where its number columns do not fit the terminal, it is printed wider
    (the terminal folds the lines) rather than with numbers cut short."""
    needed = _width_needed(console, table)
    if needed > console.width:
        console = Console(file=console.file, width=needed, force_terminal=console.is_terminal, color_system=console.color_system)  # type: ignore[arg-type]
    console.print(table)


def _width_needed(console: Console, table: Table) -> int:
    """Headers and columns that cannot wrap at their full width, the others at their longest word;
    padding and borders."""
    options = console.options.update_width(10_000)
    total = len(table.columns) + 1
    for column in table.columns:
        cells = [Measurement.get(console, options, cell) for cell in column.cells]
        widest = max((size.maximum if column.no_wrap else size.minimum for size in cells), default=0)
        total += max(widest, Measurement.get(console, options, column.header).maximum) + 2
    return total
