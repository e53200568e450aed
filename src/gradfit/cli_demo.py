"""``gradfit demo thermometer``: the chapter's calibration on one screen."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from gradfit.cli_render import loss_table, print_table
from gradfit.errors import OptionError, OutputError
from gradfit.report_text import format_number

if TYPE_CHECKING:
    from gradfit.demo import ThermometerDemo
    from gradfit.result import FitResult

__all__ = ["run_demo"]

DEMOS = ("thermometer",)


def run_demo(name: str, out_dir: Path, console: Console) -> None:
    """Run the named demo, print its findings and write its figures into ``out_dir``."""
    if name not in DEMOS:
        raise OptionError(f"unknown demo '{name}' — choose one of {', '.join(DEMOS)}")
    _prepare_out_dir(out_dir)
    from gradfit.demo import TRUE_INTERCEPT, TRUE_SLOPE, run_thermometer_demo, write_demo_figures

    demo = run_thermometer_demo()
    _book(demo, console)
    _default(demo, console, TRUE_SLOPE, TRUE_INTERCEPT)
    _exercise(demo, console)
    for path in write_demo_figures(demo, out_dir):
        console.print(f"figure written: {path}", highlight=False, soft_wrap=True)


def _prepare_out_dir(out_dir: Path) -> None:
    """Create ``out_dir`` and check that the figures can be written, before any work is done."""
    from gradfit.io import ensure_writable

    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out-dir {out_dir} is a file, not a directory — choose another path")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create directory {out_dir}: {exc.strerror or exc} — choose another --out-dir") from None
    ensure_writable(out_dir / "thermometer.png")


def _book(demo: ThermometerDemo, console: Console) -> None:
    book = demo.book
    console.rule("(a) the book's recipe: w*t_un + b, t_un = 0.1*t_u, SGD lr=1e-2, 5000 epochs, float32")
    rows = [(str(epoch), f"{loss:.6f}") for epoch, loss in demo.book_losses()]
    print_table(console, loss_table("training loss (before each step, as the book prints it)", rows, ("epoch", "loss")))
    console.print(
        f"w = {book.params['w']:.4f}, b = {book.params['b']:.4f}, loss at epoch 5000 = "
        f"{book.history.train[-1]:.6f}   (book: w = 5.3671, b = -17.3012, loss 2.927648)   "
        f"[{book.elapsed:.2f} s]",
        highlight=False,
        soft_wrap=True,
    )


def _default(demo: ThermometerDemo, console: Console, slope: float, intercept: float) -> None:
    fit = demo.default
    console.rule("(b) gradfit's default: w*t_u + b on the raw readings")
    console.print(f"{fit.solver}: {fit.solver_reason}  [{fit.elapsed * 1e3:.2f} ms]", highlight=False, soft_wrap=True)
    rows = [
        ("w", _pm(fit, "w"), f"{slope:.6f}", f"{demo.book.params['w'] / 10:.6f}"),
        ("b", _pm(fit, "b"), f"{intercept:.6f}", f"{demo.book.params['b']:.6f}"),
        ("train MSE", f"{fit.train_loss:.6f}", "", f"{demo.book.train_loss:.6f}"),
    ]
    print_table(console, loss_table("least-squares optimum vs the true °F→°C conversion", rows, ("", "gradfit (± std. error)", "true °F→°C", "book (per unit t_u)")))
    inside = all(abs(fit.params[k] - v) <= 2 * fit.stderr[k] for k, v in (("w", slope), ("b", intercept)))
    console.print(
        "the true conversion lies " + ("within" if inside else "outside") + " two standard errors of the fit: "
        "the readings are noisy Fahrenheit",
        highlight=False,
        soft_wrap=True,
    )


def _pm(fit: FitResult, name: str) -> str:
    return f"{fit.params[name]:.6f} ± {format_number(fit.stderr[name], 3)}"


def _exercise(demo: ThermometerDemo, console: Console) -> None:
    linear, quadratic = demo.linear, demo.quadratic
    console.rule(f"(c) the exercise: linear vs quadratic, same split (val {demo.val_fraction:.0%}, seed {demo.seed})")
    rows = [
        (label, f"{r.train_loss:.4f}", f"{r.val_loss:.4f}", f"{demo.truth_error(r):.3f}", str(len(r.parameters)))
        for label, r in (("linear", linear), ("quadratic", quadratic))
    ]
    headers = ("model", "train MSE", "val MSE", "RMS vs true °F→°C", "params")
    print_table(console, loss_table(f"{linear.n_train} training and {linear.n_val} validation points", rows, headers))
    lower = demo.quadratic_lower_train_loss
    console.print(
        f"Is the loss lower? {'yes' if lower else 'no'}: quadratic {quadratic.train_loss:.4f} vs linear "
        f"{linear.train_loss:.4f} on the training points — an extra parameter can only lower it.",
        highlight=False,
        soft_wrap=True,
    )
    closer = demo.quadratic_closer_to_truth
    on_val = "lower" if demo.quadratic_better_on_validation else "higher"
    console.print(
        f"Is the result better? {'yes' if closer else 'no'}: against the true conversion the quadratic is off by "
        f"{demo.truth_error(quadratic):.3f} °C RMS vs {demo.truth_error(linear):.3f} °C for the linear model"
        + ("." if closer else " — the lower loss comes from fitting the readings' noise (overfitting).")
        + f" Its validation MSE is {on_val} on this split, but {linear.n_val} held-out points are too few to show it reliably.",
        highlight=False,
        soft_wrap=True,
    )
