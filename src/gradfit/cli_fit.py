"""What the ``fit``, ``predict`` and ``explain`` commands do, kept apart from argument declarations.

Everything that can be wrong with the user's input is checked before :func:`gradfit.fitting.fit_dataset`
imports torch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gradfit.errors import OptionError

__all__ = ["FitCommand", "run_predict", "run_explain", "result_table"]

#: runs with at least this many epochs show a progress bar on a terminal
PROGRESS_MIN_EPOCHS = 200


@dataclass
class FitCommand:
    """The ``gradfit fit`` command's arguments and its run."""

    data: Path
    model: str
    y: str
    sigma: str | None
    init: str
    params: str
    solver: str
    optimizer: str | None
    opt: str
    loss: str
    epochs: int
    batch_size: int | None
    val: float
    val_data: Path | None
    seed: int
    target: float | None
    patience: int | None
    plateau: int | None
    scale: bool
    dtype: str
    nan: str
    absolute_sigma: bool
    out: Path | None
    plot: Path | None
    plot_history: Path | None
    quiet: bool

    def options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~gradfit.config.FitOptions`."""
        from gradfit.options import parse_options

        if self.opt and not self.optimizer:
            raise OptionError("--opt needs --optimizer — e.g. --optimizer sgd --opt lr=1e-2")
        return dict(
            solver=self.solver,
            optimizer=self.optimizer,
            optimizer_options=parse_options(self.opt),
            loss=self.loss,
            epochs=self.epochs,
            batch_size=self.batch_size,
            val=0.0 if self.val_data else self.val,
            seed=self.seed,
            target=self.target,
            patience=self.patience,
            plateau=self.plateau,
            scale=self.scale,
            dtype=self.dtype,
            absolute_sigma=self.absolute_sigma,
            nan_policy=self.nan,
        )

    def run(self) -> None:
        """Check everything, fit, print and write the outputs."""
        from gradfit.config import FitOptions
        from gradfit.data import read_table
        from gradfit.fitting import fit_dataset, prepare, split_dataset
        from gradfit.io import ensure_writable
        from gradfit.model import parse_assignments

        outputs = [p for p in (self.out, self.plot, self.plot_history) if p is not None]
        for path in outputs:
            ensure_writable(path)
        settings = FitOptions(**self.options())
        names = [n.strip() for n in self.params.split(",") if n.strip()]
        model, dataset = prepare(
            self.model,
            read_table(self.data),
            self.y,
            sigma=self.sigma,
            params=parse_assignments(self.init),
            as_parameters=names,
            nan_policy=settings.nan_policy,
        )
        explicit_val = None
        if self.val_data is not None:
            _, explicit_val = prepare(model, read_table(self.val_data), self.y, sigma=self.sigma, nan_policy=settings.nan_policy)
        train, val = split_dataset(dataset, settings, explicit_val)
        with _progress(settings, self.quiet) as callback:
            result = fit_dataset(model, train, settings.__class__(**{**self.options(), "callback": callback}), val)
        if not self.quiet:
            _print_result(result)
        self._write(result, train, val)

    def _write(self, result: Any, train: Any, val: Any) -> None:
        from gradfit.io import atomic_write_text

        if self.out is not None:
            atomic_write_text(self.out, result.to_json() + "\n")
        if self.plot is not None or self.plot_history is not None:
            from gradfit import plot

            if self.plot is not None:
                plot.plot_fit(result, train, self.plot, val)
            if self.plot_history is not None:
                plot.plot_history(result, self.plot_history)


class _progress:
    """Context manager yielding an epoch callback that drives a rich progress bar on a terminal."""

    def __init__(self, settings: Any, quiet: bool) -> None:
        self.enabled = (
            not quiet and sys.stderr.isatty() and settings.uses_optimizer and settings.epochs >= PROGRESS_MIN_EPOCHS
        )
        self.epochs = settings.epochs
        self.bar: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("epoch {task.completed}/{task.total}"), BarColumn(), TextColumn("{task.fields[loss]}"), TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self.bar.start()
        task = self.bar.add_task("fit", total=self.epochs, loss="")

        def callback(epoch: int, train: float, val: float | None) -> None:
            if epoch % 10 == 0 or epoch == self.epochs:
                text = f"train {train:.4g}" + ("" if val is None else f"  val {val:.4g}")
                self.bar.update(task, completed=epoch, loss=text)

        return callback

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def result_table(result: Any) -> Table:
    """The parameters of a result as a rich table."""
    from gradfit.report_text import format_number

    table = Table(title=f"{result.y_name} = {result.model}", title_justify="left")
    for header in ("parameter", "value", "std. error", "95% CI" if result.settings.get("confidence", 0.95) == 0.95 else "CI"):
        table.add_column(header, justify="right" if header != "parameter" else "left")
    for p in result.parameters:
        ci = "" if p.ci_low is None else f"[{format_number(p.ci_low, 6)}, {format_number(p.ci_high, 6)}]"
        value = format_number(p.value, 8) + (" (fixed)" if p.fixed else "") + (" (at bound)" if p.at_bound else "")
        table.add_row(p.name, value, format_number(p.stderr, 4), ci)
    return table


def _print_result(result: Any) -> None:
    from rich.console import Console

    from gradfit.report_text import format_number

    console = Console()
    if result.parameters:
        console.print(result_table(result))
    lines = [
        ("train loss", f"{format_number(result.train_loss)} ({result.loss}, {result.n_train} points)"),
        ("validation loss", "-" if result.val_loss is None else f"{format_number(result.val_loss)} ({result.n_val} points)"),
        ("R²", format_number(result.statistics.get("r2"), 6)),
        ("iterations" if not result.history.train else "epochs", str(result.iterations)),
        ("stop reason", result.message),
        ("solver", f"{result.solver} — {result.solver_reason}"),
    ]
    for label, text in lines:
        console.print(f"[bold]{label:>16}[/]  {text}", highlight=False)
    for warning in result.warnings:
        console.print(f"[yellow]warning[/]: {warning}", highlight=False)


def run_predict(result_path: Path, data: Path, out: Path | None, column: str, console: Console) -> None:
    """``gradfit predict``: apply a saved formula fit to a data file."""
    from gradfit.data import read_table
    from gradfit.io import atomic_path, ensure_writable
    from gradfit.result import FitResult

    if out is not None:
        ensure_writable(out)
    result = FitResult.load(result_path)
    table = read_table(data)
    values = result.predict(table)
    import polars as pl

    table = table.with_columns(pl.Series(column, values))
    if out is None:
        console.print(str(table), highlight=False)
        return
    with atomic_path(out) as temporary:
        if out.suffix.lower() in (".parquet", ".pq"):
            table.write_parquet(temporary)
        else:
            table.write_csv(temporary)


def run_explain(data: Path, model_text: str, y: str, init: str, console: Console) -> None:
    """``gradfit explain``: the backward pass, by hand and by autograd, at the starting point."""
    from gradfit.data import make_dataset, read_table
    from gradfit.model import make_model, parse_assignments

    table = read_table(data)
    columns = [c for c in table.columns if c != y]
    model = make_model(model_text, columns, parse_assignments(init))
    dataset = make_dataset(table, inputs=list(model.input_names), y=y)
    from gradfit.explain import explain

    from gradfit.cli_render import render_explanation

    explanation = explain(model.formula, dataset.inputs, dataset.y, {p.name: p.start for p in model.parameters})
    render_explanation(explanation, console)
