"""A fit as one self-contained HTML file: figures, tables, data summary and provenance.

The file needs nothing else: figures are embedded as base64 PNG, the style is inline, there is no
script, and a Content-Security-Policy forbids any network access. Every user string (formula,
column and parameter names, messages, the command line) is HTML-escaped; every number in a table
carries its exact value in ``data-value`` (see :mod:`gradfit.notebook`).

The result file holds no data. With ``data`` the report draws the points and residuals; without,
it draws the curve and its bands over the input range recorded in ``settings["data_summary"]``
(written by ``gradfit fit``; see :func:`data_summary`).
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gradfit.errors import GradfitError
from gradfit.report_text import format_percent, loss_label
from gradfit.notebook import (
    CSS,
    draw_correlation,
    draw_curve,
    escape,
    figure_html,
    input_range,
    key_statistics,
    mathtext_safe,
    number_cell,
    parameter_table,
    statistics_table,
    table_html,
    text_cell,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from gradfit.data import Dataset
    from gradfit.result import FitResult

__all__ = ["ReportData", "data_summary", "render_report", "resolve_data", "write_report"]

#: no network, no script, no plug-in: only inline style and embedded images
CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

#: settings shown elsewhere in the report, or not settings at all
_NOT_SETTINGS = frozenset({"data_summary", "command", "gradfit", "torch", "numpy", "python"})

PAGE_CSS = """
body.gradfit { max-width: 1000px; margin: 1.5em auto; padding: 0 1.2em; background: #fff; }
.gradfit h1 { font-size: 1.45em; margin-bottom: 0.2em; }
.gradfit h2 { font-size: 1.15em; margin: 1.6em 0 0.4em 0; border-bottom: 2px solid #e3e6ea; padding-bottom: 0.15em; }
.gradfit .status-ok { color: #1b7a2c; font-weight: 600; }
.gradfit .status-bad { color: #b3261e; font-weight: 600; }
.gradfit figure + figure { margin-top: 1em; }
.gradfit figure { margin: 0; break-inside: avoid; }
.gradfit figcaption { font-size: 0.88em; color: #555; }
.gradfit .note { color: #555; font-style: italic; }
.gradfit .warnings li { color: #8a5300; }
.gradfit pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #f6f8fa; padding: 0.6em 0.8em; border-radius: 4px; }
.gradfit details summary { cursor: pointer; color: #444; }
@media print { body.gradfit { max-width: none; margin: 0; } .gradfit h2 { break-after: avoid; }
  .gradfit table, .gradfit figure { break-inside: avoid; } }
"""


@dataclass(frozen=True)
class ReportData:
    """The data drawn in a report.

    Attributes
    ----------
    train, val
        Training points and validation points (``None`` when none or not known).
    split_known
        Whether ``train``/``val`` are the fit's own split; otherwise every point is in ``train``
        and drawn as "data".
    note
        Where the points come from, in words.
    """

    train: Dataset
    val: Dataset | None
    split_known: bool
    note: str

    @property
    def parts(self) -> list[tuple[str, Dataset, str]]:
        """``(label, points, colour)`` for each part to draw."""
        from gradfit.plot import TRAIN_COLOR, VAL_COLOR

        if not self.split_known:
            return [("data", self.train, TRAIN_COLOR)]
        parts = [("training data", self.train, TRAIN_COLOR)]
        return parts + ([("validation data", self.val, VAL_COLOR)] if self.val is not None else [])


# -- the data ----------------------------------------------------------------------------------------
def data_summary(train: Dataset, val: Dataset | None = None) -> dict[str, Any]:
    """What a report needs to know about the fitted data, as a JSON-ready record.

    ``gradfit fit`` stores it in the result's ``settings["data_summary"]``, so that a report made
    later from the result file alone can draw the curve over the data's range.

    Parameters
    ----------
    train, val
        The training and (optional) validation points.

    Returns
    -------
    dict
        ``{"points": {"train": n, "val": m}, "columns": {name: {"role", "min", "max", "mean", "std"}}}``
        over all points; the inputs first, then the target.
    """
    parts = [train] + ([val] if val is not None else [])
    names = [*train.input_names, train.y_name]
    roles = ["input"] * len(train.input_names) + ["target"]
    table = np.stack([np.concatenate([p.column(name) if role == "input" else p.y for p in parts]) for name, role in zip(names, roles)])
    described = _describe_rows(table)
    columns = {name: {"role": role, **values} for name, role, values in zip(names, roles, described)}
    return {"points": {"train": train.n_rows, "val": 0 if val is None else val.n_rows}, "columns": columns}


def _describe_rows(table: np.ndarray) -> list[dict[str, float | None]]:
    """min, max, mean and sample standard deviation of each row's finite values.

    Rows with values near the float64 limit (1e200, say) are divided by their largest magnitude
    first, so that their squares do not overflow.
    """
    if not np.isfinite(table).all():
        return [_describe(row) for row in table]
    n = table.shape[1]
    lows, highs = table.min(1).tolist(), table.max(1).tolist()
    huge = max(max(highs), -min(lows)) > _SQUARES_OVERFLOW
    scale = np.maximum(np.abs(table).max(1), 1.0) if huge else None
    unit = table / scale[:, None] if huge else table
    mean = unit.sum(1) / n
    std = np.sqrt(np.square(unit - mean[:, None]).sum(1) / (n - 1)) if n > 1 else np.full(len(table), np.nan)
    if huge:
        mean, std = mean * scale, std * scale
    rows = zip(lows, highs, mean.tolist(), std.tolist())
    return [{"min": lo, "max": hi, "mean": mu, "std": sd if n > 1 else None} for lo, hi, mu, sd in rows]


#: magnitudes above which squares (or sums of many values) could overflow float64
_SQUARES_OVERFLOW = 1e150


def _describe(values: np.ndarray) -> dict[str, float | None]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"min": None, "max": None, "mean": None, "std": None}
    return _describe_rows(finite[None, :])[0]


def resolve_data(result: FitResult, data: Any) -> ReportData | None:
    """The points to draw for ``result``.

    Parameters
    ----------
    result
        The fit.
    data
        ``None``; a :class:`ReportData`; a ``(train, val)`` pair of :class:`~gradfit.data.Dataset` (``val`` may be
        ``None``); a single Dataset; or anything :func:`gradfit.data.make_dataset` reads (a path,
        a data frame, a mapping of columns) with the result's input and target columns (rows with
        missing values are left out). When its row count equals the fit's training plus validation
        points and the fit held out a seeded fraction, the fit's split is reproduced.

    Returns
    -------
    ReportData or None

    Raises
    ------
    DataError
        If ``data`` lacks a column the model needs, or a column is not numeric.
    """
    from gradfit.data import Dataset, make_dataset

    if data is None or isinstance(data, ReportData):
        return data
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Dataset):
        return ReportData(data[0], data[1], True, "the fit's own training and validation points")
    dataset = data if isinstance(data, Dataset) else make_dataset(
        data, inputs=result.input_names, y=result.y_name, nan_policy="omit"
    )
    return _split_like_fit(result, dataset)


def _split_like_fit(result: FitResult, dataset: Dataset) -> ReportData:
    from gradfit.data import holdout_split

    dropped = f" ({dataset.n_dropped} rows with missing values left out)" if dataset.n_dropped else ""
    fraction, seed = result.settings.get("val") or 0.0, result.settings.get("seed")
    same_rows = dataset.n_rows == result.n_train + result.n_val
    if result.n_val == 0 and same_rows:
        return ReportData(dataset, None, True, f"the given data, all used for training{dropped}")
    if fraction > 0 and same_rows and isinstance(seed, int):
        train_idx, val_idx = holdout_split(dataset.n_rows, fraction, seed)
        if len(val_idx) == result.n_val:
            note = f"the given data, split as in the fit (val={fraction:g}, seed={seed}){dropped}"
            return ReportData(dataset.subset(train_idx), dataset.subset(val_idx), True, note)
    note = f"the given data ({dataset.n_rows} points; which were used for training is not known){dropped}"
    return ReportData(dataset, None, False, note)


# -- figures -----------------------------------------------------------------------------------------
def fit_figure(result: FitResult, data: ReportData | None) -> Figure | None:
    """Data and fitted curve with bands (one input), or observed vs predicted (several inputs)."""
    from gradfit import plot

    if len(result.input_names) == 1:
        span = _data_range(data, result.input_names[0]) if data is not None else input_range(result, result.input_names[0])
        if span is None:
            return None
        fig, (ax,) = plot.figure(width=6.4, height=4.2)
        with _closing_on_error(fig):
            draw_curve(ax, result, span, show_range=data is None)
            for label, part, color in data.parts if data is not None else ():
                plot.draw_points(ax, part.column(result.input_names[0]), part, _marker(label), color, label)
            if data is not None:
                plot.log_targets(ax, np.concatenate([part.y for _, part, _ in data.parts]))
            ax.legend()
            ax.set_title(mathtext_safe(f"{result.y_name} = {result.model}"), fontsize="medium")
        return fig
    if data is None:
        return None
    fig, (ax,) = plot.figure(width=5.0, height=4.6)
    with _closing_on_error(fig):
        _draw_parity(ax, result, data)
    return fig


def _draw_parity(ax: Any, result: FitResult, data: ReportData) -> None:
    everything = []
    for label, part, color in data.parts:
        ax.scatter(part.y, result.predict(part.inputs), s=22, color=color, label=label, marker=_marker(label), zorder=3)
        everything.append(part.y)
    values = np.concatenate(everything)
    ax.plot([values.min(), values.max()], [values.min(), values.max()], color="0.4", lw=1, label="predicted = observed")
    ax.set_xlabel(mathtext_safe(f"observed {result.y_name}"))
    ax.set_ylabel(mathtext_safe(f"predicted {result.y_name}"))
    ax.legend(fontsize="small")


def residual_figure(result: FitResult, data: ReportData) -> Figure:
    """Residuals (observed - fitted) against the input (one input) or the prediction."""
    from gradfit import plot

    single = len(result.input_names) == 1
    fig, (ax,) = plot.figure(width=6.4, height=3.2)
    with _closing_on_error(fig):
        for label, part, color in data.parts:
            fitted = result.predict(part.inputs)
            x = part.column(result.input_names[0]) if single else fitted
            ax.scatter(x, part.y - fitted, s=22, color=color, label=label, zorder=3, marker=_marker(label))
        ax.axhline(0.0, color="0.3", lw=1)
        rmse = result.statistics.get("rmse")
        if isinstance(rmse, (int, float)) and math.isfinite(rmse) and rmse > 0:
            for sign in (1, -1):
                ax.axhline(sign * rmse, color="0.5", lw=0.8, ls="--", label="± RMS error" if sign > 0 else None)
        ax.set_xlabel(mathtext_safe(result.input_names[0] if single else f"predicted {result.y_name}"))
        ax.set_ylabel(mathtext_safe(f"residual in {result.y_name}"))
        ax.legend(fontsize="small", loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=3)
    return fig


def history_figure(result: FitResult) -> Figure:
    """Training and validation loss per epoch."""
    from gradfit import plot

    fig, (ax,) = plot.figure(width=6.4, height=3.4)
    plot.draw_history(ax, {"training loss": result.history.train, "validation loss": result.history.val})
    ax.set_ylabel(mathtext_safe(loss_label(result, "loss")))
    return fig


def correlation_figure(result: FitResult) -> Figure:
    """Heat map of the parameter correlations."""
    from gradfit import plot

    side = min(7.0, 2.4 + 0.55 * len(result.parameters))
    fig, (ax,) = plot.figure(width=side + 0.9, height=side)
    with _closing_on_error(fig):
        draw_correlation(ax, result)
    return fig


def _marker(label: str) -> str:
    """Squares for validation points, dots otherwise (as in :func:`gradfit.plot.draw_fit`)."""
    return "s" if label.startswith("validation") else "o"


def _data_range(data: ReportData, name: str) -> tuple[float, float] | None:
    values = np.concatenate([part.column(name) for _, part, _ in data.parts])
    values = values[np.isfinite(values)]
    return (float(values.min()), float(values.max())) if values.size else None


@contextlib.contextmanager
def _closing_on_error(fig: Figure) -> Iterator[Figure]:
    """Close ``fig`` if drawing it fails, so no figure is left open."""
    try:
        yield fig
    except BaseException:
        import matplotlib.pyplot as plt

        plt.close(fig)
        raise


# -- sections ----------------------------------------------------------------------------------------
def _figure_html(build: Callable[[], Figure | None], alt: str, caption: str | Callable[[Figure], str], missing: str) -> str:
    """A ``<figure>`` from ``build``; a note if it returns ``None`` or the model cannot be evaluated.

    ``caption`` may be a function of the drawn figure (to describe what it turned out to show).
    """
    try:
        fig = build()
    except GradfitError as exc:
        return f'<p class="note">{escape(alt)}: could not be drawn — {escape(exc)}</p>'
    if fig is None:
        return f'<p class="note">{escape(missing)}</p>' if missing else ""
    text = caption(fig) if callable(caption) else caption
    return f"<figure>{figure_html(fig, alt)}<figcaption>{escape(text)}</figcaption></figure>"


def _section(title: str, body: str, ident: str) -> str:
    return f'<section id="{escape(ident)}"><h2>{escape(title)}</h2>{body}</section>' if body else ""


def _header(result: FitResult, generated: str) -> str:
    state = ("status-ok" if result.success else "status-bad", result.status.replace("_", " "))
    return (
        f"<header><h1>Fit of <code>{escape(result.y_name)} = {escape(result.model)}</code></h1>"
        f'<p><span class="{state[0]}">{escape(state[1])}</span> — {escape(result.message)}<br>'
        f"solver: {escape(result.solver)} ({escape(result.solver_reason)}); "
        f"{escape(_count(result.iterations, 'epoch' if result.history.train else 'iteration'))}; "
        f"{escape(f'{result.elapsed:.3g}')} s</p>"
        f'<p class="muted">report generated {escape(generated)} by gradfit {escape(_version("gradfit"))}</p></header>'
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _figures_section(result: FitResult, data: ReportData | None) -> str:
    single = len(result.input_names) == 1
    if single:
        missing = "No input range recorded in the result: pass the data (--data) to draw the fit."
    else:
        missing = "With several inputs the fit is drawn as observed vs predicted, which needs the data: pass --data."
    caption = lambda fig: _fit_caption(result, data, fig)  # noqa: E731
    parts = [_figure_html(lambda: fit_figure(result, data), "fit", caption, missing)]
    if data is not None:
        parts.append(_figure_html(lambda: residual_figure(result, data), "residuals", "Residuals: observed minus fitted value, in the target's units.", ""))
    body = f'<div class="figures">{"".join(parts)}</div>'
    if data is None:
        body += '<p class="note">Residuals need the data: pass the data file (gradfit report --data FILE).</p>'
    return _section("Fit and residuals", body, "fit")


def _bands_caption(result: FitResult, labels: set[str]) -> str:
    level = format_percent(float(result.settings.get("confidence", 0.95)))
    if f"{level} confidence band" not in labels:
        return " (no uncertainty bands: they need a formula model with a covariance)."
    if f"{level} prediction band" not in labels:
        return f" with its {level} confidence band (where the curve lies; a weighted fit has no prediction band: the noise at new points is unknown)."
    return f" with its {level} confidence band (dark: where the curve lies) and {level} prediction band (light: where a new observation lies)."


def _fit_caption(result: FitResult, data: ReportData | None, fig: Figure) -> str:
    if len(result.input_names) != 1:
        return "Observed against predicted values; points on the line are fitted exactly."
    text = "Fitted curve" + _bands_caption(result, {str(c.get_label()) for c in fig.axes[0].collections})
    if data is not None:
        return text + " Points: the data."
    return text + " Shaded grey: the range of the data (the points are not stored in the result; pass --data to draw them)."


def _parameters_section(result: FitResult) -> str:
    level = float(result.settings.get("confidence", 0.95))
    if not result.parameters:
        return _section("Parameters", f'<p class="note">A {escape(result.model_kind)} model: its weights are not listed.</p>', "parameters-section")
    body = parameter_table(result.parameters, level)
    body += f'<p class="muted">± standard errors from the covariance at the solution; {format_percent(level)} confidence intervals from Student\'s t.</p>'
    return _section("Parameters", body, "parameters-section")


def _correlation_section(result: FitResult) -> str:
    corr = result.correlation()
    if corr is None or len(result.parameters) < 2:
        return ""
    figure = _figure_html(lambda: correlation_figure(result), "correlation heat map", "Correlations of the parameter estimates (from the covariance).", "")
    names = result.param_names
    rows = [({"data-param": a}, [text_cell(a)] + [number_cell(float(corr[i, j]), 4, b) for j, b in enumerate(names)]) for i, a in enumerate(names)]
    table = table_html(["", *names], rows, table_id="correlations")
    return _section("Correlations", f"{figure}<details><summary>the correlations as numbers</summary>{table}</details>", "correlation-section")


def _statistics_section(result: FitResult) -> str:
    extra = key_statistics(result) + [("iterations", "epochs" if result.history.train else "iterations", float(result.iterations))]
    return _section("Fit statistics", statistics_table(result.statistics, extra), "statistics-section")


def _history_section(result: FitResult) -> str:
    if not result.history.train:
        return ""
    figure = _figure_html(lambda: history_figure(result), "loss curves", "Training and validation loss per epoch.", "")
    return _section("Loss per epoch", figure, "history")


def _data_section(result: FitResult, data: ReportData | None) -> str:
    summary = data_summary(data.train, data.val) if data is not None else result.settings.get("data_summary")
    if data is not None:
        source = data.note
    elif isinstance(summary, Mapping):
        source = "recorded with the fit (the points themselves are not stored in the result)"
    else:
        source = "not recorded (the result was not made by 'gradfit fit'); pass the data to summarise it"
    body = f"<p>{result.n_train} training and {result.n_val} validation points in the fit. Data shown: {escape(source)}.</p>"
    columns = summary.get("columns", {}) if isinstance(summary, Mapping) else {}
    if columns:
        rows = [
            ({"data-column": name}, [text_cell(name), text_cell(c.get("role", "")), *(number_cell(c.get(k), 6, k) for k in ("min", "max", "mean", "std"))])
            for name, c in columns.items()
            if isinstance(c, Mapping)
        ]
        body += table_html(["column", "role", "min", "max", "mean", "std. dev."], rows, table_id="data-summary")
    return _section("Data", body, "data")


def _settings_section(result: FitResult) -> str:
    rows = [
        ({"data-setting": key}, [text_cell(key), text_cell(value if isinstance(value, str) else json.dumps(value), field="value")])
        for key, value in result.settings.items()
        if key not in _NOT_SETTINGS
    ]
    rows.insert(0, ({"data-setting": "loss"}, [text_cell("loss"), text_cell(result.loss, field="value")]))
    return _section("Settings", table_html(["setting", "value"], rows, table_id="settings"), "settings-section")


def _provenance_section(result: FitResult, command: str | None) -> str:
    fitted_by = result.settings.get("command")
    lines = [("fit", fitted_by if isinstance(fitted_by, str) else "not recorded (fitted from Python, not by the gradfit command)")]
    if command and command != fitted_by:
        lines.append(("report", command))
    body = "".join(f"<p>{escape(label)} command:</p><pre><code>{escape(text)}</code></pre>" for label, text in lines)
    rows = [
        ({"data-package": name}, [text_cell(name), text_cell(result.settings.get(name, "not recorded")), text_cell(_version(name))])
        for name in ("gradfit", "torch", "numpy", "python")
    ]
    body += table_html(["package", "used for the fit", "used for this report"], rows, table_id="versions")
    return _section("How this was made", body, "provenance")


def _warnings_section(result: FitResult) -> str:
    if not result.warnings:
        return ""
    items = "".join(f"<li>{escape(w)}</li>" for w in result.warnings)
    return _section("Warnings", f'<ul class="warnings">{items}</ul>', "warnings")


def _version(name: str) -> str:
    if name == "python":
        return platform.python_version()
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


# -- the document ------------------------------------------------------------------------------------
def render_report(result: FitResult, data: Any = None, *, command: str | None = None) -> str:
    """The report of ``result`` as one self-contained HTML document.

    Parameters
    ----------
    result
        The fit (in memory, or loaded with :meth:`FitResult.load`).
    data
        The fitted data, to draw the points and residuals: see :func:`resolve_data`. Without it
        the curve and its bands are drawn over the input range recorded in the result.
    command
        The command line that asks for this report, shown when it differs from the one that made
        the fit (recorded in ``settings["command"]``).

    Returns
    -------
    str
        The HTML text.

    Raises
    ------
    DataError
        If ``data`` lacks a column the model needs.
    """
    points = resolve_data(result, data)
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    sections = [
        _header(result, generated),
        _warnings_section(result),
        _figures_section(result, points),
        _parameters_section(result),
        _correlation_section(result),
        _statistics_section(result),
        _history_section(result),
        _data_section(result, points),
        _settings_section(result),
        _provenance_section(result, command),
    ]
    title = f"gradfit: {result.y_name} = {result.model}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="gradfit {escape(_version("gradfit"))}">'
        f"<title>{escape(title)}</title><style>{CSS}{PAGE_CSS}</style></head>\n"
        f'<body class="gradfit">{"".join(sections)}</body></html>\n'
    )


def write_report(result: FitResult, path: str | Path, data: Any = None, *, command: str | None = None) -> Path:
    """Write :func:`render_report` to ``path`` atomically.

    Parameters
    ----------
    result, data, command
        As for :func:`render_report`.
    path
        The HTML file to create or replace.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OutputError
        If ``path`` cannot be written (nothing is written then).
    """
    from gradfit.io import atomic_write_text, ensure_writable

    ensure_writable(path)
    return atomic_write_text(path, render_report(result, data, command=command))
