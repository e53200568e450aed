"""What the ``fit``, ``predict`` and ``explain`` commands do, kept apart from argument declarations.

Everything that can be wrong with the user's input (options, output paths, data files, formulas,
optimizer names and keywords) is checked before :func:`gradfit.fitting.fit_dataset` imports torch, so
mistakes are answered at once. Outputs are written only after a successful fit, all together, each
atomically: a failed command leaves no file behind.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gradfit.errors import DataError, DivergenceError, FitError, ModelError, OptionError

__all__ = ["FitCommand", "run_predict", "run_explain", "result_table", "check_optimizer"]

#: runs with at least this many epochs show a progress bar on a terminal
PROGRESS_MIN_EPOCHS = 200
#: epochs between checkpoints when ``--checkpoint`` is given without ``--checkpoint-every``
DEFAULT_CHECKPOINT_EVERY = 100
#: options only group fits use
_GROUP_ONLY = (("chunk", "--chunk"), ("tolerance", "--tolerance"), ("refit_failed", "--refit-failed"))


@dataclass
class FitCommand:
    """The ``gradfit fit`` command's arguments and its run."""

    data: Path
    model: str
    y: str
    sigma: str | None
    init: str
    params: str
    bounds: str
    fix: str
    starts: int
    solver: str
    optimizer: str | None
    opt: str
    loss: str
    loss_scale: float | None
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
    checkpoint: Path | None
    checkpoint_every: int | None
    resume: Path | None
    report: bool
    quiet: bool
    group_by: str | None = None
    chunk: int | None = None
    device: str = "cpu"
    max_iter: int | None = None
    tolerance: float | None = None
    refit_failed: bool = False
    report_html: Path | None = None
    confidence: float | None = None

    def settings(self) -> Any:
        """The validated :class:`~gradfit.config.FitOptions` of this command."""
        from gradfit.config import FitOptions
        from gradfit.options import parse_options

        if self.opt and not self.optimizer:
            raise OptionError("--opt needs --optimizer — e.g. --optimizer sgd --opt lr=1e-2")
        if self.val_data is not None and self.val > 0:
            raise OptionError("give either --val or --val-data, not both")
        return FitOptions(
            solver=self.solver,
            optimizer=self.optimizer,
            optimizer_options=parse_options(self.opt),
            loss=self.loss,
            loss_scale=1.0 if self.loss_scale is None else self.loss_scale,
            starts=self.starts,
            max_iter=self.max_iter,
            checkpoint=None if self.checkpoint is None else str(self.checkpoint),
            checkpoint_every=DEFAULT_CHECKPOINT_EVERY if self.checkpoint_every is None else self.checkpoint_every,
            resume=None if self.resume is None else str(self.resume),
            epochs=self.epochs,
            batch_size=self.batch_size,
            val=self.val,
            seed=self.seed,
            target=self.target,
            patience=self.patience,
            plateau=self.plateau,
            scale=self.scale,
            dtype=self.dtype,
            device=self.device,
            absolute_sigma=self.absolute_sigma,
            nan_policy=self.nan,
            **({} if self.confidence is None else {"confidence": self.confidence}),
        )

    def run(self) -> None:
        """Check everything, fit, print and write the outputs."""
        from gradfit.fitting import fit_dataset, split_dataset

        settings = self.settings()
        self._check_applicable()
        self._check_paths()
        if self.group_by is not None:
            from gradfit.cli_groups import run_group_fit

            run_group_fit(self, settings)
            return
        self._check_single_fit()
        model, dataset, explicit_val = self._prepare(settings)
        for path, option in ((self.plot, "--plot"), (self.plot_history, "--plot-history")):
            if path is not None:
                check_image_path(path, option)
        if settings.uses_optimizer:
            check_optimizer(settings.optimizer or "adam", settings.optimizer_options)
        train, val = split_dataset(dataset, settings, explicit_val)
        # the handlers stay until the outputs are written: a signal then still leaves no temporary file
        with interruptible() as signals:
            with _progress(settings, self.quiet) as callback:
                result = fit_dataset(model, train, replace(settings, callback=callback), val)
            self._finish(result, train, val, signals)

    def _check_applicable(self) -> None:
        """Refuse options this fit would ignore: an ignored option reads as one that worked."""
        from gradfit.losses import LEAST_SQUARES_LOSSES

        if self.group_by is None:
            for field, flag in _GROUP_ONLY:
                if getattr(self, field) is not None and getattr(self, field) is not False:
                    raise OptionError(f"{flag} is for group fits (--group-by) — drop it, or add --group-by KEY")
        if self.group_by is not None and self.confidence is not None:
            raise OptionError("--confidence sets a single fit's intervals and bands; a group fit's table has standard errors, not intervals — drop it")
        if self.checkpoint_every is not None and self.checkpoint is None:
            if self.group_by is not None:
                raise OptionError("--checkpoint-every does not apply to --group-by fits — drop it")
            raise OptionError("--checkpoint-every needs --checkpoint FILE (where the run's state is saved) — add it or drop --checkpoint-every")
        robust = [name for name in LEAST_SQUARES_LOSSES if name != "mse"]
        if self.loss_scale is not None and self.loss not in robust:
            raise OptionError(
                f"--loss-scale is the residual scale of the robust losses ({', '.join(robust)}); the {self.loss} loss has "
                "none — drop --loss-scale or choose one of them with --loss"
            )

    def _check_paths(self) -> None:
        """No output may replace an input (the checkpoint to resume from included) or another output.

        ``--checkpoint`` may name the ``--resume`` file: the run continues and keeps saving there.
        """
        from gradfit.io import check_distinct

        outputs = {"--out": self.out, "--plot": self.plot, "--plot-history": self.plot_history,
                   "--report-html": self.report_html}
        check_distinct({"the data file": self.data, "the validation file": self.val_data},
                       {**outputs, "--checkpoint": self.checkpoint})
        check_distinct({"the checkpoint to resume (--resume)": self.resume}, outputs)

    def _check_single_fit(self) -> None:
        """The options and outputs of a single fit, before its data are read."""
        from gradfit.io import ensure_writable

        if self.out is not None:
            check_suffix(self.out, "--out", (".json",))
        if self.report_html is not None:
            check_suffix(self.report_html, "--report-html", (".html", ".htm"))
        for path in (self.out, self.plot, self.plot_history, self.report_html, self.checkpoint):
            if path is not None:
                ensure_writable(path)
        if self.resume is not None and not self.resume.is_file():
            raise OptionError(f"checkpoint '{self.resume}' not found — check the path or drop --resume")

    def _finish(self, result: Any, train: Any, val: Any, signals: interruptible) -> None:
        """Print and write a finished (or interrupted) fit; a signal meanwhile still keeps the result."""
        from gradfit.cli_report import record_run

        if result.status == "diverged":
            raise DivergenceError(self._divergence_message(result))
        if result.status == "non_finite":
            raise FitError(f"{result.message}; nothing was written")
        try:
            result = record_run(result, train, val)  # data ranges and command line, for the reports
            self._write(result, train, val)  # first: a reader that closes the pipe (| head) loses nothing
            self._show(result)
            if not self.quiet and result.status != "interrupted":
                self._say_written(result)
        except KeyboardInterrupt:
            raise InterruptedFit(signals.exit_code, self._keep(result)) from None
        if result.status == "interrupted":
            written = [str(path) for path in (self.out, self.plot, self.plot_history, self.report_html) if path is not None]
            where = f"written to {', '.join(written)}" if written else "shown above (no --out: nothing was written)"
            raise InterruptedFit(signals.exit_code, f"interrupted: the best parameters so far are {where} (status 'interrupted')")

    def _say_written(self, result: Any) -> None:
        """Name the files written, and a loss-history figure not drawn for want of epochs."""
        console = Console(soft_wrap=True)
        no_history = self.plot_history is not None and not result.history.train
        paths = (self.out, self.plot, None if no_history else self.plot_history, self.report_html)
        written = [str(path) for path in paths if path is not None]
        if written:
            console.print(f"written: {', '.join(written)}", highlight=False, markup=False)
        if no_history:
            console.print(
                f"--plot-history {self.plot_history} not written: the {result.solver} solver has no epochs to draw — "
                "add --optimizer to train by gradient descent",
                highlight=False, markup=False,
            )

    def _show(self, result: Any) -> None:
        if self.report and not self.quiet:
            Console(soft_wrap=True).print(result.report(), highlight=False, markup=False)
        elif not self.quiet:
            _print_result(result)

    def _keep(self, result: Any) -> str:
        """After a signal while the outputs were written: write the result alone, say what was kept."""
        from gradfit.io import atomic_write_text

        others = [str(path) for path in (self.plot, self.plot_history, self.report_html) if path is not None]
        lost = f"; {', '.join(others)} not written" if others else ""
        if self.out is None:
            return f"interrupted before the outputs were written: nothing was written (no --out){lost}"
        atomic_write_text(self.out, result.to_json() + "\n")
        return f"interrupted while writing the outputs: the result is written to {self.out} (status '{result.status}'){lost}"

    def _prepare(self, settings: Any) -> tuple[Any, Any, Any]:
        """Read the data files and build the model: every data and formula error surfaces here."""
        from gradfit.data import read_table
        from gradfit.fitting import prepare
        from gradfit.model import parameter_overrides, parse_assignments, parse_bounds

        names = _names(self.params)
        overrides = parameter_overrides(
            parse_assignments(self.init), parse_bounds(self.bounds), parse_assignments(self.fix, "--fix")
        )
        model, dataset = prepare(
            self.model,
            read_table(self.data),
            self.y,
            sigma=self.sigma,
            params=overrides,
            as_parameters=names,
            nan_policy=settings.nan_policy,
        )
        _check_as_parameters(names, model)
        explicit_val = None
        if self.val_data is not None:
            table = read_table(self.val_data)
            with naming_file("the validation file", self.val_data):
                _, explicit_val = prepare(model, table, self.y, sigma=self.sigma, nan_policy=settings.nan_policy)
        return model, dataset, explicit_val

    def _divergence_message(self, result: Any) -> str:
        fixes = "lower the learning rate (--opt lr=...)" + ("" if self.scale else " or drop --no-scale")
        return (
            f"the fit diverged: the loss became non-finite, exploded or ended far above its start within {result.iterations} "
            f"epochs — {fixes}; nothing was written"
        )

    def _write(self, result: Any, train: Any, val: Any) -> None:
        """Write every requested output; each lands atomically, and none if any fails."""
        from gradfit.io import atomic_path

        with ExitStack() as stack:
            if self.out is not None:
                temporary = stack.enter_context(atomic_path(self.out))
                temporary.write_text(result.to_json() + "\n", encoding="utf-8")
            if self.plot is not None or self.plot_history is not None:
                from gradfit import plot

                if self.plot is not None:
                    plot.plot_fit(result, train, stack.enter_context(atomic_path(self.plot)), val)
                if self.plot_history is not None and result.history.train:
                    plot.plot_history(result, stack.enter_context(atomic_path(self.plot_history)))
            if self.report_html is not None:
                from gradfit.report_html import render_report

                html = render_report(result, (train, val))
                stack.enter_context(atomic_path(self.report_html)).write_text(html, encoding="utf-8")


@contextmanager
def naming_file(what: str, path: Path) -> Iterator[None]:
    """Data errors raised inside name the file they are about (``the validation file v.csv: ...``):
    a command that reads several files would otherwise leave the user to guess which."""
    try:
        yield
    except (DataError, ModelError) as exc:
        raise type(exc)(f"{what} {path}: {exc}") from None


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _check_as_parameters(names: list[str], model: Any) -> None:
    from gradfit.formula import constant_name_note

    unknown = [n for n in names if n not in model.param_names]
    if unknown:
        raise OptionError(
            f"--params: '{unknown[0]}' is not a name in the formula '{model.description}'{constant_name_note(unknown[0])} — its "
            f"parameters are {', '.join(model.param_names)}"
        )


def check_image_path(path: Path, option: str) -> None:
    """Raise :class:`OptionError` if matplotlib cannot write an image with ``path``'s extension."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = path.suffix.lower().lstrip(".")
    if not suffix:
        raise OptionError(f"{option}: '{path}' has no extension to choose the image format — e.g. {path}.png")
    if suffix not in formats:
        raise OptionError(
            f"{option}: cannot write a '.{suffix}' image — use .png, .pdf or .svg "
            f"(any of {', '.join(sorted(formats))})"
        )


# -- optimizer names and keywords, read from torch's source without importing torch ---------------
@lru_cache(maxsize=1)
def _static_optimizers() -> dict[str, tuple[str, frozenset[str] | None]] | None:
    """``{lower-case name: (class name, keyword names or None)}`` of ``torch.optim``, or ``None``.

    ``import torch`` takes seconds; reading ``torch/optim/*.py`` with :mod:`ast` takes milliseconds.
    ``None`` (any surprise in torch's layout) means: leave the check to the library.
    """
    try:
        spec = importlib.util.find_spec("torch")
        if spec is None or not spec.submodule_search_locations:
            return None
        optim = Path(list(spec.submodule_search_locations)[0]) / "optim"
        tree = ast.parse((optim / "__init__.py").read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError, ImportError):
        return None
    found: dict[str, tuple[str, frozenset[str] | None]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ImportFrom) or not node.module:
            continue
        module = node.module.removeprefix("torch.optim").lstrip(".")
        for alias in node.names:
            name = alias.asname or alias.name
            if module and name[:1].isupper() and name != "Optimizer":
                found[name.lower()] = (name, _init_keywords(optim / f"{module.replace('.', '/')}.py", alias.name))
    return found or None


def _init_keywords(source: Path, class_name: str) -> frozenset[str] | None:
    """Keyword names of ``class_name.__init__`` in ``source`` (``None`` if unknown or ``**kwargs``)."""
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    args = item.args
                    if args.kwarg is not None:
                        return None
                    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
                    return frozenset(names[1:]) - {"params"}
    return None


def check_optimizer(name: Any, options: dict[str, Any]) -> None:
    """Reject an unknown ``torch.optim`` optimizer name or keyword before torch is imported.

    Names and keywords are read from torch's source; where that is not possible, or the name is
    a class rather than a string, the library checks them when it builds the optimizer.
    """
    table = _static_optimizers() if isinstance(name, str) else None
    if table is None:
        return
    key = name.lower().replace("-", "").replace("_", "")
    if key not in table:
        from gradfit.solvers import gradient

        special = getattr(gradient, "_NEEDS_SPECIAL_PARAMETERS", {})
        choices = sorted(k for k in table if k not in special)
        close = difflib.get_close_matches(key, choices, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise OptionError(f"unknown optimizer '{name}' — {hint}choose one of {', '.join(choices)}")
    class_name, accepted = table[key]
    unknown = sorted(set(options) - accepted) if accepted is not None else []
    if unknown:
        raise OptionError(
            f"{class_name} has no option '{unknown[0]}' — it accepts {', '.join(sorted(accepted))}"
        )
    words = [k for k, v in options.items() if isinstance(v, str) and k not in WORD_OPTIONS]
    if words:
        raise OptionError(f"--opt {words[0]}={options[words[0]]}: '{options[words[0]]}' is not a number — give one, e.g. {words[0]}=0.01")


#: the only torch.optim keyword whose value is a word (LBFGS's ``line_search_fn="strong_wolfe"``)
WORD_OPTIONS = frozenset({"line_search_fn"})


class InterruptedFit(Exception):
    """A fit stopped by SIGINT or SIGTERM after keeping what it could; carries the exit code and
    the line that says what was kept."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(exit_code, message)
        self.exit_code = exit_code
        self.message = message


class interruptible:
    """Context manager: SIGINT and SIGTERM interrupt the fit; remembers which signal came.

    The training loop turns the interruption into status ``interrupted`` with the best parameters
    so far; the command then writes its outputs and exits 130 (SIGINT) or 143 (SIGTERM). An
    interruption that leaves the ``with`` body (torch still loading, no result yet) becomes an
    :class:`InterruptedFit` with the signal's exit code.
    """

    def __init__(self) -> None:
        self.exit_code = 130
        self._previous: Any = None

    def _interrupt(self, signum: int, frame: Any) -> None:
        import signal

        self.exit_code = 143 if signum == signal.SIGTERM else 130
        raise KeyboardInterrupt

    def __enter__(self) -> interruptible:
        import signal

        self._previous = {sig: signal.signal(sig, self._interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            raise InterruptedFit(self.exit_code, "interrupted before a result was written") from None


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

        self.bar = Progress(
            TextColumn("epoch {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("{task.fields[loss]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
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
    from gradfit.cli_render import NUMBER_COLUMN
    from gradfit.report_text import format_number, format_percent

    confidence = result.settings.get("confidence", 0.95)
    table = Table(title=f"{result.y_name} = {result.model}", title_justify="left")
    table.add_column("parameter", no_wrap=True)
    for header in ("value", "std. error", f"{format_percent(confidence)} CI"):
        table.add_column(header, **NUMBER_COLUMN)
    for p in result.parameters:
        ci = "" if p.ci_low is None else f"[{format_number(p.ci_low, 6)}, {format_number(p.ci_high, 6)}]"
        value = format_number(p.value, 8) + (" (fixed)" if p.fixed else "") + (" (at bound)" if p.at_bound else "")
        table.add_row(p.name, value, format_number(p.stderr, 4), ci)
    return table


def _print_result(result: Any) -> None:
    from gradfit.report_text import dropped_note, format_number, loss_label

    from gradfit.cli_render import print_table

    console = Console()
    if result.parameters:
        print_table(console, result_table(result))
    else:  # a network: its weights are no table of estimates
        console.print(f"{_escape(result.y_name)} = {_escape(result.model)}", highlight=False, soft_wrap=True)
    lines = [
        ("train loss", f"{format_number(result.train_loss)} ({loss_label(result)}, {result.n_train} points{dropped_note(result)})"),
        ("validation loss", "-" if result.val_loss is None else f"{format_number(result.val_loss)} ({result.n_val} points)"),
        ("R²", format_number(result.statistics.get("r2"), 6)),
        ("iterations" if not result.history.train else "epochs", str(result.iterations)),
        ("stop reason", result.message),
        ("solver", f"{result.solver} — {result.solver_reason}"),
    ]
    for label, text in lines:
        console.print(f"[bold]{label:>16}[/]  {_escape(text)}", highlight=False, soft_wrap=True)
    unsettled = () if result.success else (
        f"the fit did not succeed (status {result.status}): these parameters are not a converged solution — see the stop reason",
    )
    for warning in (*unsettled, *result.warnings):
        console.print(f"[yellow]warning[/]: {_escape(warning)}", highlight=False, soft_wrap=True)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)




def check_suffix(path: Path, option: str, allowed: tuple[str, ...]) -> None:
    """An output's extension must name a format that is written (nothing is written in another)."""
    if path.suffix.lower() not in allowed:
        choice = allowed[0] if len(allowed) == 1 else f"one of {', '.join(allowed)}"
        raise OptionError(f"{option} {path}: gradfit writes {', '.join(allowed)} here — end the name in {choice}")


def run_predict(result_path: Path, data: Path, out: Path | None, column: str, console: Console) -> None:
    """``gradfit predict``: apply a saved formula fit to a data file.

    Without ``out`` the data with the prediction column are written to stdout as CSV, every row.
    """
    import polars as pl

    from gradfit.data import read_table
    from gradfit.io import (
        TABLE_OUTPUT_SUFFIXES,
        check_distinct,
        ensure_writable,
        write_table,
    )
    from gradfit.result import FitResult

    if out is not None:
        check_distinct({"the result file": result_path, "the data file": data}, {"--out": out})
        check_suffix(out, "--out", TABLE_OUTPUT_SUFFIXES)
        ensure_writable(out)
    result = FitResult.load(result_path)
    table = read_table(data)
    if column in table.columns:
        raise OptionError(f"{data} already has a column '{column}' — name the predictions with --column")
    table = table.with_columns(pl.Series(column, result.predict(table)))
    if out is None:
        sys.stdout.write(table.write_csv())
        return
    write_table(table, out)
    console.print(f"predictions written: {out}", highlight=False, soft_wrap=True)


def run_explain(
    data: Path, model_text: str, y: str, init: str, console: Console, *, params: str = "", nan: str = "raise",
    sigma: str | None = None,
) -> None:
    """``gradfit explain``: the backward pass, by hand and by autograd, at the starting point."""
    from gradfit.cli_render import render_explanation
    from gradfit.data import read_table
    from gradfit.explain import explain
    from gradfit.fitting import prepare
    from gradfit.model import parse_assignments

    if nan not in ("raise", "omit"):
        raise OptionError(f"unknown nan_policy '{nan}' — choose one of raise, omit")
    names = _names(params)
    model, dataset = prepare(
        model_text, read_table(data), y, sigma=sigma, params=parse_assignments(init), as_parameters=names, nan_policy=nan
    )
    _check_as_parameters(names, model)
    # writable copies: torch warns when it wraps the dataset's read-only arrays
    inputs = {name: column.copy() for name, column in dataset.inputs.items()}
    sigmas = None if dataset.sigma is None else dataset.sigma.copy()
    explanation = explain(model.formula, inputs, dataset.y.copy(), {p.name: p.start for p in model.parameters}, sigma=sigmas)
    render_explanation(explanation, console)
