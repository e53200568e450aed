"""Figures: data with the fitted curve in the data's units, and loss per epoch.

One style for every figure (:func:`figure`); files are written atomically. matplotlib is imported
only when a figure is drawn, with the non-interactive Agg backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gradfit.io import atomic_path
from gradfit.predict import prediction_bands
from gradfit.report_text import format_percent, loss_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from gradfit.data import Dataset
    from gradfit.result import FitResult

__all__ = ["mathtext_safe", "figure", "save_figure", "plot_fit", "plot_history", "draw_fit", "draw_history"]

STYLE = {
    "font.size": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "legend.frameon": False,
}
TRAIN_COLOR, VAL_COLOR, CURVE_COLOR = "#1f77b4", "#ff7f0e", "#d62728"


def mathtext_safe(text: object) -> str:
    """``text`` for a matplotlib label: a ``$`` would otherwise start mathtext (and may crash it)."""
    return str(text).replace("$", r"\$")


def figure(ncols: int = 1, width: float = 6.0, height: float = 4.0) -> tuple[Figure, Any]:
    """A new figure in gradfit's style with ``ncols`` axes side by side."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    for ax in axes[0]:
        for key, value in STYLE.items():
            if key.startswith("axes.spines."):
                ax.spines[key.rsplit(".", 1)[1]].set_visible(value)
        ax.grid(True, alpha=STYLE["grid.alpha"])
    return fig, axes[0]


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Save ``fig`` atomically (format from the extension) and close it."""
    import matplotlib.pyplot as plt

    target = Path(path)
    fig.tight_layout()
    with atomic_path(target) as temporary:
        fig.savefig(temporary, format=target.suffix.lstrip(".") or "png")
    plt.close(fig)
    return target


def draw_fit(
    ax: Axes,
    result: FitResult,
    train: Dataset,
    val: Dataset | None = None,
    label: str | None = None,
    color: str = CURVE_COLOR,
    show_bands: bool = True,
) -> None:
    """Draw data and the fitted curve (one input) or observed vs predicted (several inputs).

    With one input, the curve's confidence and prediction bands are shaded when available.
    """
    if len(result.input_names) == 1:
        _draw_curve(ax, result, train, val, label, color, show_bands)
    else:
        _draw_parity(ax, result, train, val)


def _draw_curve(
    ax: Axes, result: FitResult, train: Dataset, val: Dataset | None, label: str | None, color: str, show_bands: bool
) -> None:
    name = result.input_names[0]
    points = [train.inputs[name]] + ([val.inputs[name]] if val is not None else [])
    low, high = min(p.min() for p in points), max(p.max() for p in points)
    grid = curve_grid(ax, low, high)
    draw_points(ax, train.inputs[name], train, "o", TRAIN_COLOR, "training data")
    if val is not None:
        draw_points(ax, val.inputs[name], val, "s", VAL_COLOR, "validation data")
    bands = prediction_bands(result, {name: grid}) if show_bands else None
    if bands is not None:
        draw_bands(ax, grid, bands, color, float(result.settings.get("confidence", 0.95)))
    ax.plot(grid, result.predict({name: grid}), color=color, lw=1.8, label=mathtext_safe(label or f"fit: {result.model}"))
    log_targets(ax, np.concatenate([train.y] + ([val.y] if val is not None else [])))
    ax.set_xlabel(mathtext_safe(name))
    ax.set_ylabel(mathtext_safe(result.y_name))
    _legend(ax, sum(p.size for p in points))


#: positive inputs spanning at least this ratio are drawn on a log axis (and positive targets
#: spanning as much, on a log y axis too)
LOG_AXIS_SPAN = 1e3

#: above this many points, a weighted fit's points get no error bars (they would hide the curve)
ERROR_BAR_POINTS = 2_000


def curve_grid(ax: Axes, low: float, high: float, points: int = 300) -> np.ndarray:
    """Points to draw a curve over ``[low, high]`` at, a little beyond it; inputs that are positive
    and span :data:`LOG_AXIS_SPAN` or more get a log axis (set on ``ax``) and a geometric grid."""
    if low > 0 and high / low >= LOG_AXIS_SPAN:
        ax.set_xscale("log")
        return np.geomspace(low / 1.1, high * 1.1, points)
    pad = 0.05 * (high - low or 1.0)
    return np.linspace(low - pad, high + pad, points)


def log_targets(ax: Axes, targets: np.ndarray) -> None:
    """On a log x axis, a log y axis too when the targets are positive and span :data:`LOG_AXIS_SPAN`."""
    if ax.get_xscale() == "log" and targets.size and targets.min() > 0 and targets.max() / targets.min() >= LOG_AXIS_SPAN:
        ax.set_yscale("log")


def draw_points(ax: Axes, x: np.ndarray, part: Dataset, marker: str, color: str, label: str) -> None:
    """A part's points; with sigma (and not too many points), their ±σ error bars."""
    if part.sigma is not None and part.n_rows <= ERROR_BAR_POINTS:
        ax.errorbar(x, part.y, yerr=part.sigma, fmt=marker, ms=4.5, color=color, ecolor=color, elinewidth=0.8,
                    capsize=2, alpha=0.9, label=f"{label} ± σ", zorder=3)
    else:
        ax.scatter(x, part.y, s=22 if marker == "o" else 26, marker=marker, color=color, label=label, zorder=3)


def draw_bands(ax: Axes, grid: np.ndarray, bands: tuple[np.ndarray, np.ndarray, np.ndarray], color: str, level: float) -> None:
    """Shade the prediction band (where it is known: a weighted fit's is not) and the confidence band
    of :func:`gradfit.predict.prediction_bands` around the curve."""
    curve, confidence, prediction = bands
    for half, alpha, kind in ((prediction, 0.08, "prediction"), (confidence, 0.22, "confidence")):
        if np.isfinite(half).any():
            ax.fill_between(grid, curve - half, curve + half, color=color, alpha=alpha, lw=0, label=f"{format_percent(level)} {kind} band")


def _draw_parity(ax: Axes, result: FitResult, train: Dataset, val: Dataset | None) -> None:
    parts = [("training data", train, TRAIN_COLOR)] + ([("validation data", val, VAL_COLOR)] if val is not None else [])
    for label, part, color in parts:
        ax.scatter(part.y, result.predict(part.inputs), s=22, color=color, label=label)
    everything = np.concatenate([p.y for _, p, _ in parts])
    ax.plot([everything.min(), everything.max()], [everything.min(), everything.max()], color="grey", lw=1)
    ax.set_xlabel(mathtext_safe(f"observed {result.y_name}"))
    ax.set_ylabel(mathtext_safe(f"predicted {result.y_name}"))
    _legend(ax, everything.size)


#: above this many points, the legend goes in a fixed corner: matplotlib's search for the best
#: place scans every point (seconds, and a warning, for a million)
LEGEND_SEARCH_POINTS = 20_000


def _legend(ax: Axes, n_points: int) -> None:
    ax.legend(loc="best" if n_points <= LEGEND_SEARCH_POINTS else "upper left")


def draw_history(ax: Axes, histories: Mapping[str, Sequence[float]], title: str = "") -> None:
    """Draw loss curves (log scale when positive) against the epoch."""
    for label, values in histories.items():
        if len(values):
            ax.plot(np.arange(1, len(values) + 1), values, lw=1.5, label=mathtext_safe(label))
    if all(min(v, default=1.0) > 0 for v in histories.values()):
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()


def plot_fit(result: FitResult, train: Dataset, path: str | Path, val: Dataset | None = None) -> Path:
    """Write the data-and-fit figure to ``path``."""
    fig, (ax,) = figure()
    draw_fit(ax, result, train, val)
    ax.set_title(mathtext_safe(f"{result.y_name} = {result.model}"))
    return save_figure(fig, path)


def plot_history(result: FitResult, path: str | Path) -> Path:
    """Write the training and validation loss per epoch to ``path``."""
    fig, (ax,) = figure()
    draw_history(ax, {"training loss": result.history.train, "validation loss": result.history.val}, f"{loss_label(result, 'loss')} per epoch")
    if not result.history.train:
        ax.text(0.5, 0.5, f"{result.solver} solver: no epochs to show", ha="center", transform=ax.transAxes)
    return save_figure(fig, path)
