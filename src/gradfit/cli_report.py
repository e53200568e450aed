"""What the ``report`` command (and ``fit --report-html``) does, kept apart from argument declarations.

The result file and the data file are read and checked before anything imports torch (drawing the
confidence bands does), so mistakes are answered at once.
"""

from __future__ import annotations

import platform
import shlex
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from rich.console import Console

    from gradfit.data import Dataset
    from gradfit.result import FitResult

__all__ = ["command_line", "record_run", "default_report_path", "run_report"]


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command line as one shell-quoted string (default: ``sys.argv``)."""
    return shlex.join(list(sys.argv if argv is None else argv))


def record_run(result: FitResult, train: Dataset, val: Dataset | None, command: str | None = None) -> FitResult:
    """``result`` with what a later report needs added to its settings.

    Adds ``data_summary`` (points and column ranges, see :func:`gradfit.report_html.data_summary`),
    ``command`` (the command line that ran the fit) and ``python`` (its version).
    """
    from gradfit.report_html import data_summary

    extra = {"data_summary": data_summary(train, val), "command": command or command_line(), "python": platform.python_version()}
    return replace(result, settings={**result.settings, **extra})


def default_report_path(result_path: Path) -> Path:
    """``result.json`` -> ``result.html``, next to it."""
    return result_path.with_suffix(".html")


def run_report(result_path: Path, out: Path | None, data: Path | None, console: Console, quiet: bool = False) -> Path:
    """``gradfit report``: write the HTML report of a saved result.

    Parameters
    ----------
    result_path
        Result JSON written by ``gradfit fit --out``.
    out
        HTML file to write (default: the result's name with ``.html``).
    data
        The fitted data file, to draw the points and residuals (optional).
    console
        Where to say what was written.
    quiet
        Say nothing.

    Returns
    -------
    pathlib.Path
        The report's path.
    """
    from gradfit.cli_fit import check_suffix
    from gradfit.io import check_distinct, ensure_writable
    from gradfit.report_html import resolve_data, write_report
    from gradfit.result import FitResult

    target = out if out is not None else default_report_path(result_path)
    check_distinct({"the result file": result_path, "the data file": data}, {"the report": target})
    check_suffix(target, "the report", (".html", ".htm"))
    ensure_writable(target)
    result = FitResult.load(result_path)
    points: Any = None
    if data is not None:
        from gradfit.cli_fit import naming_file
        from gradfit.data import read_table

        table = read_table(data)
        with naming_file("the data file", data):
            points = resolve_data(result, table)
    write_report(result, target, points, command=command_line())
    if not quiet:
        console.print(f"report written: {target}", highlight=False, soft_wrap=True, markup=False)
    return target
