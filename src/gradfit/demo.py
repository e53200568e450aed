"""The chapter's thermometer, end to end: the book's recipe, gradfit's default, and the exercise.

The bundled data are the chapter's 11 readings: ``t_u`` in unknown units (they are degrees
Fahrenheit) against ``t_c`` in Celsius.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gradfit.data import Dataset, make_dataset, read_table
from gradfit.result import FitResult

__all__ = [
    "thermometer",
    "ThermometerDemo",
    "run_thermometer_demo",
    "BOOK_RECIPE",
    "TRUE_SLOPE",
    "TRUE_INTERCEPT",
]

#: the true conversion from °F to °C: t_c = (t_f - 32) * 5/9
TRUE_SLOPE, TRUE_INTERCEPT = 5.0 / 9.0, -32.0 * 5.0 / 9.0

#: the chapter's exact recipe: 0.1-scaled input, plain SGD, raw units, float32
BOOK_RECIPE = dict(
    optimizer="sgd",
    optimizer_options={"lr": 1e-2},
    epochs=5000,
    scale=False,
    dtype="float32",
)
LINEAR, QUADRATIC = "w*t_u + b", "w2*t_u**2 + w1*t_u + b"


def thermometer() -> Dataset:
    """The chapter's 11 thermometer readings as a :class:`~gradfit.data.Dataset` (input ``t_u``).

    Returns
    -------
    Dataset
        Input ``t_u`` (readings in unknown units) and target ``t_c`` (°C), 11 rows each, without
        ``sigma``; read from the ``thermometer.csv`` file shipped with the package.
    """
    with resources.as_file(resources.files("gradfit.datasets") / "thermometer.csv") as path:
        return make_dataset(read_table(path), inputs=["t_u"], y="t_c")


@dataclass(frozen=True)
class ThermometerDemo:
    """Everything the thermometer demo found.

    Attributes
    ----------
    book
        The book's recipe: ``w*t_un + b`` on ``t_un = 0.1*t_u``, SGD lr 1e-2, 5000 epochs.
    default
        gradfit's default fit of ``w*t_u + b`` (exact least squares).
    linear, quadratic
        The exercise: both models fitted on the same seeded train/validation split.
    seed, val_fraction
        The split's settings.
    """

    book: FitResult
    default: FitResult
    linear: FitResult
    quadratic: FitResult
    seed: int
    val_fraction: float

    def book_losses(self, every: int = 500) -> list[tuple[int, float]]:
        """The book's printed training losses: ``(epoch, loss)`` every ``every`` epochs."""
        history = self.book.history.train
        return [(epoch, history[epoch - 1]) for epoch in range(every, len(history) + 1, every)]

    @property
    def quadratic_lower_train_loss(self) -> bool:
        """Is the quadratic model's training loss lower than the linear one's?"""
        return self.quadratic.train_loss < self.linear.train_loss

    def truth_error(self, result: FitResult) -> float:
        """RMS deviation (°C) of a fit from the true °F→°C conversion over the readings' range."""
        import numpy as np

        t_u = thermometer().inputs["t_u"]
        grid = np.linspace(t_u.min(), t_u.max(), 200)
        truth = TRUE_SLOPE * grid + TRUE_INTERCEPT
        return float(np.sqrt(np.mean((result.predict({"t_u": grid}) - truth) ** 2)))

    @property
    def quadratic_closer_to_truth(self) -> bool:
        """Is the quadratic fit closer to the true conversion than the linear one?"""
        return self.truth_error(self.quadratic) < self.truth_error(self.linear)

    @property
    def quadratic_better_on_validation(self) -> bool:
        """Is the quadratic model's validation loss lower than the linear one's?"""
        assert self.quadratic.val_loss is not None and self.linear.val_loss is not None
        return self.quadratic.val_loss < self.linear.val_loss


def run_thermometer_demo(seed: int = 0, val_fraction: float = 0.2) -> ThermometerDemo:
    """Fit the thermometer three ways (see :class:`ThermometerDemo`).

    Parameters
    ----------
    seed
        Seed of the exercise's train/validation split.
    val_fraction
        Fraction of the 11 readings held out for validation in the exercise.
    """
    from gradfit.fitting import fit

    data = thermometer()
    t_u, t_c = data.inputs["t_u"], data.y
    book = fit("w*t_un + b", {"t_un": 0.1 * t_u}, t_c, params={"w": 1.0, "b": 0.0}, **BOOK_RECIPE)
    default = fit(LINEAR, {"t_u": t_u}, t_c)
    split = dict(val=val_fraction, seed=seed)
    linear = fit(LINEAR, {"t_u": t_u}, t_c, **split)
    quadratic = fit(QUADRATIC, {"t_u": t_u}, t_c, **split)
    return ThermometerDemo(book, default, linear, quadratic, seed, val_fraction)


def write_demo_figures(demo: ThermometerDemo, out_dir: Path) -> list[Path]:
    """Write the demo's figures: data with every fit, and the book's loss curve."""
    import numpy as np

    from gradfit.fitting import split_dataset
    from gradfit.config import FitOptions
    from gradfit.plot import draw_fit, draw_history, figure, save_figure

    data = thermometer()
    train, val = split_dataset(data, FitOptions(val=demo.val_fraction, seed=demo.seed))
    fig, (left, right) = figure(ncols=2)
    draw_fit(left, demo.linear, train, val, label=f"linear: {LINEAR}", color="#d62728", show_bands=False)
    grid = np.linspace(data.inputs["t_u"].min() - 3, data.inputs["t_u"].max() + 3, 300)
    left.plot(grid, demo.quadratic.predict({"t_u": grid}), color="#2ca02c", lw=1.5, label=f"quadratic: {QUADRATIC}")
    left.plot(grid, TRUE_SLOPE * grid + TRUE_INTERCEPT, color="black", lw=1, ls="--", label="true °F → °C")
    left.set_xlabel("t_u (unknown units: °F)")
    left.set_ylabel("t_c (°C)")
    left.set_title("thermometer: linear vs quadratic on one split")
    left.legend(fontsize=8)
    draw_history(right, {"book recipe: SGD lr=1e-2, 0.1·t_u": demo.book.history.train}, "training loss per epoch")
    return [save_figure(fig, out_dir / "thermometer.png")]
