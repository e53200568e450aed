"""What the ``compare`` command does, kept apart from its argument declaration in :mod:`gradfit.cli`.

Output paths, the data file, the target column, every model (formulas are parsed, built-in names
checked) and the optimizer are checked before the first fit imports torch; the figures are written
only after every model has been fitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from gradfit.errors import DataError, FitError, OptionError

__all__ = ["CompareCommand"]


@dataclass
class CompareCommand:
    """The ``gradfit compare`` command's arguments and its run."""

    data: Path
    y: str
    model: list[str]
    val: float
    seed: int
    cv: int | None
    inputs: str
    sigma: str | None
    loss: str
    epochs: int
    optimizer: str | None
    opt: str
    nan: str
    plot: Path | None
    plot_val: Path | None
    quiet: bool

    def run(self) -> None:
        """Check everything, compare the models, print the table and verdict, write the figures."""
        from gradfit.compare import compare
        from gradfit.data import read_table

        options = self._options()
        self._check_outputs()
        table = read_table(self.data)
        columns = self._columns(list(table.columns))
        for spec in self.model:
            _check_model(spec, columns)
        comparison = compare(
            self.model,
            table,
            self.y,
            val=self.val,
            seed=self.seed,
            cv=self.cv,
            sigma=self.sigma,
            inputs=columns,
            nan_policy=self.nan,
            **options,
        )
        if not self.quiet:
            _print(comparison)
        if comparison.best is None:
            reasons = "the reasons are above" if not self.quiet else comparison.verdict
            raise FitError(f"no model could be fitted ({reasons}) — no figure was written")
        if self.plot is not None:
            comparison.plot(self.plot)
        if self.plot_val is not None:
            comparison.plot_validation(self.plot_val)

    def _options(self) -> dict[str, Any]:
        from gradfit.cli_fit import check_optimizer
        from gradfit.config import FitOptions
        from gradfit.options import parse_options

        if not self.model:
            raise OptionError("give at least one --model, e.g. --model linear --model poly:2")
        if self.opt and not self.optimizer:
            raise OptionError("--opt needs --optimizer — e.g. --optimizer adam --opt lr=1e-2")
        if self.cv is None and not self.val > 0:
            raise OptionError("compare needs validation data: give --val above 0 (e.g. 0.2) or --cv K")
        options: dict[str, Any] = {"loss": self.loss, "epochs": self.epochs}
        if self.optimizer is not None:
            options.update(optimizer=self.optimizer, optimizer_options=parse_options(self.opt))
            check_optimizer(self.optimizer, options["optimizer_options"])
        FitOptions(**options, nan_policy=self.nan)  # every option checked before any work
        return options

    def _check_outputs(self) -> None:
        from gradfit.cli_fit import check_image_path
        from gradfit.io import check_distinct, ensure_writable

        check_distinct({"the data file": self.data}, {"--plot": self.plot, "--plot-val": self.plot_val})
        for path, option in ((self.plot, "--plot"), (self.plot_val, "--plot-val")):
            if path is not None:
                ensure_writable(path)
                check_image_path(path, option)

    def _columns(self, available: list[str]) -> list[str]:
        """The candidate input columns: ``--inputs``, else every column but the target and sigma."""
        for name, option in ((self.y, "--y"), (self.sigma, "--sigma")):
            if name is not None and name not in available:
                raise DataError(f"{option}: no column '{name}' in {self.data} — columns are {', '.join(available)}")
        chosen = [c.strip() for c in self.inputs.split(",") if c.strip()]
        for name in chosen:
            if name not in available:
                raise DataError(f"--inputs: no column '{name}' in {self.data} — columns are {', '.join(available)}")
        return chosen or [c for c in available if c not in (self.y, self.sigma)]


def _check_model(spec: str, columns: list[str]) -> None:
    """Parse a formula or check a built-in name against the columns, without importing torch."""
    from gradfit.builtin_models import check_builtin, is_builtin
    from gradfit.model import make_model

    if is_builtin(spec):
        check_builtin(spec, columns)
    else:
        make_model(spec, columns)


def _print(comparison: Any) -> None:
    from gradfit.cli_render import loss_table, print_table

    console = Console()
    split = f"validation {comparison.val:.0%} of rows, seed {comparison.seed}" if comparison.val > 0 else "no holdout"
    folds = f"; {comparison.cv}-fold cross-validation" if comparison.cv is not None else ""
    title = f"{comparison.loss_title} ({split}{folds})"
    print_table(console, loss_table(escape(title), [tuple(escape(c) for c in row) for row in comparison.rows()], comparison.headers()))
    console.print(escape(comparison.verdict), highlight=False, soft_wrap=True)
