"""The ``gradfit`` command: a thin shell over the library.

Arguments, files and formulas are checked before torch is imported, so mistakes are answered at
once. Library errors are caught only here and printed as one line ``Name: message`` with exit code 2
(``--debug`` shows the traceback instead); bad command lines (missing option, unknown command) are
answered the same way, in one line.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from gradfit.cli_fit import InterruptedFit
from gradfit.errors import GradfitError

app = typer.Typer(
    name="gradfit",
    help="Learning as parameter estimation: fit any differentiable model to data with PyTorch autograd.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console()
errors = Console(stderr=True)

EXIT_USAGE = 2
_state = {"debug": False}


def _path_argument(*names: str, **settings: Any) -> Any:
    """``typer.Argument`` for a file, unchecked by click: gradfit's own readers say what is wrong (and how
    to fix it) in one line, where click would answer "path 'f.csv' is not readable"."""
    return typer.Argument(*names, readable=False, **settings)


def _path_option(*names: str, **settings: Any) -> Any:
    """``typer.Option`` for a file, unchecked by click (see :func:`_path_argument`)."""
    return typer.Option(*names, readable=False, **settings)


def _guarded(action: Callable[[], Any]) -> Any:
    """Run ``action``; turn gradfit errors into one line and exit code 2, Ctrl-C into 130."""
    try:
        return action()
    except GradfitError as exc:
        if _state["debug"]:  # the traceback, and still the exit code of bad input
            traceback.print_exc()
            raise typer.Exit(EXIT_USAGE) from None
        errors.print(f"[bold red]{type(exc).__name__}[/]: {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        errors.print("interrupted before a result was written", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except InterruptedFit as stop:
        errors.print(stop.message, highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(stop.exit_code) from None


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False) -> None:
    _state["debug"] = debug


DataArg = Annotated[Path, _path_argument(help="Data file: CSV, TSV, Parquet or NDJSON.", show_default=False)]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Formula, e.g. 'w*t_u + b' (data columns are inputs, other names parameters), or a named model: linear, poly:N, exp_decay(t), gaussian, mlp:H...")]
YOpt = Annotated[str, typer.Option("--y", "-y", help="Target column.")]


@app.command()
def fit(
    data: DataArg,
    model: ModelOpt,
    y: YOpt,
    sigma: Annotated[Optional[str], typer.Option(help="Column of standard deviations of y (weighted fit).")] = None,
    init: Annotated[Optional[list[str]], typer.Option(help="Starting values, e.g. 'w=1,b=0' (may be repeated); with --group-by also k=COLUMN (each group starts from its first value there).", show_default=False)] = None,
    params: Annotated[str, typer.Option("--params", help="Names to treat as parameters even if a column has that name, e.g. 'w,b'.")] = "",
    bounds: Annotated[Optional[list[str]], typer.Option(help="Parameter bounds, e.g. 'b>=0, 0<k<10' (may be repeated).", show_default=False)] = None,
    fix: Annotated[Optional[list[str]], typer.Option(help="Hold parameters at values, e.g. 'w=1' (may be repeated).", show_default=False)] = None,
    starts: Annotated[int, typer.Option(help="Least squares: solve from this many starting points at once, keep the best.")] = 1,
    solver: Annotated[str, typer.Option(help="auto | linear | lm | gn | gradient (lm with --loss mae: the exact least-absolute-deviations fit).")] = "auto",
    optimizer: Annotated[Optional[str], typer.Option(help="Any torch.optim optimizer: sgd, adam, adamw, rmsprop, adagrad, lbfgs, ...")] = None,
    opt: Annotated[str, typer.Option("--opt", help="Optimizer keyword arguments, e.g. 'lr=1e-2,momentum=0.9'.")] = "",
    loss: Annotated[str, typer.Option(help="mse | mae | huber | soft_l1 | cauchy.")] = "mse",
    loss_scale: Annotated[Optional[float], typer.Option(help="Residual scale of the robust losses huber, soft_l1, cauchy (scipy's f_scale; default 1).", show_default=False)] = None,
    epochs: Annotated[int, typer.Option(help="Maximum epochs of a gradient solver.")] = 1000,
    batch_size: Annotated[Optional[int], typer.Option(help="Minibatch size (default: full batch).")] = None,
    val: Annotated[float, typer.Option(help="Fraction of rows held out for validation.")] = 0.0,
    val_data: Annotated[Optional[Path], _path_option(help="Validation data file (instead of --val).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split and minibatch order.")] = 0,
    target: Annotated[Optional[float], typer.Option(help="Stop when the monitored loss (validation if any, else training) reaches this value.")] = None,
    patience: Annotated[Optional[int], typer.Option(help="Early stopping: epochs without improvement.")] = None,
    plateau: Annotated[Optional[int], typer.Option(help="Halve the learning rate after this many epochs without improvement.")] = None,
    scale: Annotated[bool, typer.Option("--scale/--no-scale", help="Standardise before solving (parameters are reported in your units).")] = True,
    dtype: Annotated[str, typer.Option(help="float64 | float32.")] = "float64",
    nan: Annotated[str, typer.Option("--nan", help="raise | omit rows with missing or non-finite values.")] = "raise",
    absolute_sigma: Annotated[bool, typer.Option(help="Treat sigma as absolute (as curve_fit's absolute_sigma).")] = False,
    confidence: Annotated[Optional[float], typer.Option(help="Coverage of the confidence intervals and bands, e.g. 0.99 (default 0.95).", show_default=False)] = None,
    out: Annotated[Optional[Path], _path_option("--out", "-o", help="Write the result: JSON (.json); with --group-by a table of every group's fit (.parquet, .pq, .csv, .ndjson or .jsonl).")] = None,
    plot: Annotated[Optional[Path], _path_option(help="Write data and fitted curve to this image.")] = None,
    plot_history: Annotated[Optional[Path], _path_option(help="Write train/validation loss per epoch to this image.")] = None,
    report_html: Annotated[Optional[Path], _path_option("--report-html", help="Write a self-contained HTML report: figures with bands, residuals, parameters, statistics, provenance.")] = None,
    checkpoint: Annotated[Optional[Path], _path_option(help="Gradient solvers: save the run's state to this file periodically.")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(help="Epochs between checkpoints (with --checkpoint; default 100).", show_default=False)] = None,
    resume: Annotated[Optional[Path], _path_option(help="Continue a gradient run from a checkpoint file.")] = None,
    report: Annotated[bool, typer.Option("--report", help="Print the full sectioned fit report.")] = False,
    group_by: Annotated[Optional[str], typer.Option(help="Fit every group of rows with this key independently (batched).")] = None,
    chunk: Annotated[Optional[int], typer.Option(help="Groups per batch (default: from available memory).")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda | auto: where torch work runs (least-squares formula fits run on numpy).")] = "cpu",
    max_iter: Annotated[Optional[int], typer.Option(help="Least squares: iteration cap per start (the automatic restarts of failed fits are then off).")] = None,
    tolerance: Annotated[Optional[float], typer.Option(help="Group fits: relative tolerance (default: certified-accuracy settings).")] = None,
    refit_failed: Annotated[bool, typer.Option(help="Group fits: refit groups that did not converge with 16 starts.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
) -> None:
    """Fit a model to a data file and report the parameters."""
    arguments = dict(locals())  # first statement: only the command's parameters are local yet
    from gradfit.cli_fit import FitCommand

    for name in ("init", "bounds", "fix"):  # repeated options add up (a name given twice is refused)
        arguments[name] = ",".join(arguments[name] or ())
    command = FitCommand(**arguments)
    _guarded(command.run)


@app.command()
def predict(
    result: Annotated[Path, _path_argument(help="Result JSON written by 'gradfit fit --out'.")],
    data: DataArg,
    out: Annotated[Optional[Path], _path_option("--out", "-o", help="Write the data with a prediction column (CSV, Parquet or NDJSON by extension; default: CSV on stdout).")] = None,
    column: Annotated[str, typer.Option(help="Name of the prediction column.")] = "prediction",
) -> None:
    """Apply a saved fit to new data."""
    from gradfit.cli_fit import run_predict

    _guarded(lambda: run_predict(result, data, out, column, console))


@app.command()
def explain(
    data: DataArg,
    model: ModelOpt,
    y: YOpt,
    init: Annotated[str, typer.Option(help="Point at which to take the gradients, e.g. 'w=1,b=0'.")] = "",
    params: Annotated[str, typer.Option("--params", help="Names to treat as parameters even if a column has that name, e.g. 'w,b'.")] = "",
    nan: Annotated[str, typer.Option("--nan", help="raise | omit rows with missing or non-finite values.")] = "raise",
    sigma: Annotated[Optional[str], typer.Option(help="Column of standard deviations of y: the weighted loss mean(((f - y)/σ)²).")] = None,
) -> None:
    """Show dL/dparam by the chain rule, by autograd and by finite differences."""
    from gradfit.cli_fit import run_explain

    _guarded(lambda: run_explain(data, model, y, init, console, params=params, nan=nan, sigma=sigma))


@app.command()
def demo(
    name: Annotated[str, typer.Argument(help="Which demo: thermometer.")] = "thermometer",
    out_dir: Annotated[Path, _path_option(help="Folder for the figures.")] = Path("demo-output"),
) -> None:
    """Run a bundled demonstration (the chapter's thermometer)."""
    from gradfit.cli_demo import run_demo

    _guarded(lambda: run_demo(name, out_dir, console))


@app.command()
def report(
    result: Annotated[Path, _path_argument(help="Result JSON written by 'gradfit fit --out'.")],
    out: Annotated[Optional[Path], _path_option("--out", "-o", help="HTML file to write (default: the result's name with .html).")] = None,
    data: Annotated[Optional[Path], _path_option("--data", help="The fitted data file, to draw the points and residuals.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
) -> None:
    """Write a saved fit as one self-contained HTML report (open it in any browser)."""
    from gradfit.cli_report import run_report

    _guarded(lambda: run_report(result, out, data, console, quiet))


@app.command()
def compare(
    data: DataArg,
    y: YOpt,
    model: Annotated[list[str], typer.Option("--model", "-m", help="A model to compare; repeat for each: a formula, or linear, poly:N, exp_decay, logistic, michaelis_menten, gaussian, mlp:H.")],
    val: Annotated[float, typer.Option(help="Fraction of rows held out for validation (the same rows for every model).")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the split, the folds and the networks' initial weights.")] = 0,
    cv: Annotated[Optional[int], typer.Option("--cv", help="Also K-fold cross-validation; the verdict then uses the mean validation loss over the folds.")] = None,
    inputs: Annotated[str, typer.Option(help="Candidate input columns, e.g. 'x1,x2' (default: all but --y and --sigma).")] = "",
    sigma: Annotated[Optional[str], typer.Option(help="Column of standard deviations of y (weighted fits).")] = None,
    loss: Annotated[str, typer.Option(help="mse | mae | huber | soft_l1 | cauchy.")] = "mse",
    epochs: Annotated[int, typer.Option(help="Maximum epochs of gradient fits (networks).")] = 1000,
    optimizer: Annotated[Optional[str], typer.Option(help="Fit every model with this torch.optim optimizer.")] = None,
    opt: Annotated[str, typer.Option("--opt", help="Optimizer keyword arguments, e.g. 'lr=1e-2'.")] = "",
    nan: Annotated[str, typer.Option("--nan", help="raise | omit rows with missing or non-finite values.")] = "raise",
    plot: Annotated[Optional[Path], _path_option(help="Write every fitted curve over the data to this image.")] = None,
    plot_val: Annotated[Optional[Path], _path_option("--plot-val", help="Write a bar chart of the losses per model to this image.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
) -> None:
    """Fit several models on the same split and say which generalises best."""
    arguments = dict(locals())  # first statement: only the command's parameters are local yet
    from gradfit.cli_compare import CompareCommand

    _guarded(CompareCommand(**arguments).run)


def _usage_error_types() -> tuple[type[Exception], ...]:
    """Exceptions typer/click raise for bad command lines (typer >= 0.20 vendors click)."""
    found: list[type[Exception]] = []
    try:
        from click import ClickException

        found.append(ClickException)
    except ImportError:
        pass
    vendored = getattr(typer, "TyperException", None)
    if vendored is not None:
        found.append(vendored)
    return tuple(found)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``gradfit`` console script.

    Usage errors (missing option, bad value, unknown command) become one line on stderr with exit
    code 2, like every other error, instead of click's framed multi-line message.

    Parameters
    ----------
    argv
        Arguments without the program name (default: ``sys.argv[1:]``).
    """
    try:
        code = app(args=argv, prog_name="gradfit", standalone_mode=False)
    except _usage_error_types() as exc:
        code = getattr(exc, "exit_code", EXIT_USAGE)
        if type(exc).__name__ != "NoArgsIsHelpError":  # that one has already shown the help
            context = getattr(exc, "ctx", None)
            hint = f" — see '{context.command_path} --help'" if context is not None else ""
            if getattr(exc, "option_name", None) == "--debug":  # an option of gradfit itself, not of the command
                hint = " — --debug goes before the command: gradfit --debug fit ..."
            errors.print(f"[bold red]Error[/]: {escape(exc.format_message())}{escape(hint)}", highlight=False, soft_wrap=True)
    except typer.Abort:
        errors.print("Aborted!", highlight=False, soft_wrap=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
