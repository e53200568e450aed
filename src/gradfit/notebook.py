"""HTML building blocks shared by the notebook display and the HTML report.

Everything here returns HTML text in which every user-supplied string (formula, column and parameter
names, messages) is escaped, and every number shown in a table also carries its exact value in a
``data-value`` attribute (Python's round-trip ``repr``), so a reader or a test can recover the
numbers without parsing the rounded text.

The pieces take parameter estimates and statistics rather than a whole :class:`FitResult`, so a
result that holds several fits (one per group) can lay out the same tables once per group.
:func:`result_html` is the notebook display of one fit (``FitResult._repr_html_``).
"""

from __future__ import annotations

import base64
import html
import io
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gradfit.report_text import (
    format_number,
    format_percent,
    loss_label,
    relative_error,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from gradfit.result import FitResult, ParameterEstimate

__all__ = [
    "Cell",
    "CSS",
    "STATISTIC_LABELS",
    "escape",
    "mathtext_safe",
    "number_cell",
    "text_cell",
    "table_html",
    "parameter_table",
    "statistics_table",
    "key_statistics",
    "figure_png",
    "figure_html",
    "png_size",
    "image_html",
    "input_range",
    "summary_figure",
    "result_html",
]

#: statistics shown in tables, in this order, with their labels
STATISTIC_LABELS = {
    "r2": "R²",
    "rmse": "RMS error",
    "chisqr": "chi-square",
    "redchi": "reduced chi-square",
    "error_variance": "error variance (robust)",
    "aic": "AIC",
    "bic": "BIC",
    "dof": "degrees of freedom",
    "condition": "condition number of JᵀJ",
}

#: the statistics the notebook display shows
KEY_STATISTICS = ("r2", "rmse", "redchi", "dof")

#: style of the tables, scoped to ``.gradfit`` so it leaves a notebook's own styles alone
CSS = """
.gradfit { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: #1a1a1a; line-height: 1.4; }
.gradfit table { border-collapse: collapse; margin: 0.4em 0 1em 0; font-size: 0.92em; }
.gradfit caption { text-align: left; font-weight: 600; padding-bottom: 0.3em; }
.gradfit th, .gradfit td { padding: 0.22em 0.7em; border-bottom: 1px solid #ddd; vertical-align: top; }
.gradfit th { text-align: left; background: #f3f5f7; font-weight: 600; }
.gradfit td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.gradfit td.flag { color: #8a5300; }
.gradfit code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 0.95em; }
.gradfit img { max-width: 100%; height: auto; }
.gradfit .muted { color: #666; }
.gradfit .gradfit-row { display: flex; flex-wrap: wrap; gap: 0 1.6em; align-items: flex-start; }
"""


@dataclass(frozen=True)
class Cell:
    """One table cell: display text (escaped when rendered), optional exact value and CSS class.

    Attributes
    ----------
    text
        What the cell shows (plain text; it is escaped).
    value
        The exact number behind ``text``, written to ``data-value``; ``None`` for text cells and
        missing numbers.
    css
        CSS class of the cell (``"num"`` right-aligns numbers).
    field
        Written to ``data-field``: what the cell holds (``"value"``, ``"stderr"``...).
    """

    text: str
    value: float | None = None
    css: str = ""
    field: str = ""

    def html(self, tag: str = "td") -> str:
        """The cell as a ``<td>`` (or ``tag``) element."""
        attributes = ""
        if self.css:
            attributes += f' class="{escape(self.css)}"'
        if self.field:
            attributes += f' data-field="{escape(self.field)}"'
        if self.value is not None:
            attributes += f' data-value="{escape(repr(float(self.value)))}"'
        return f"<{tag}{attributes}>{escape(self.text)}</{tag}>"


def escape(text: Any) -> str:
    """``text`` as a string safe inside HTML elements and quoted attributes."""
    return html.escape(str(text), quote=True)


def mathtext_safe(text: Any) -> str:
    """``text`` for a matplotlib label (see :func:`gradfit.plot.mathtext_safe`)."""
    from gradfit.plot import mathtext_safe as safe

    return safe(text)


def number_cell(value: float | None, digits: int = 7, field: str = "") -> Cell:
    """A right-aligned number cell showing ``digits`` significant digits, ``-`` when missing."""
    if value is None:
        return Cell("-", None, "num", field)
    number = float(value)
    text = format_number(number, digits) if math.isfinite(number) else str(number)
    return Cell(text, number, "num", field)


def text_cell(text: Any, css: str = "", field: str = "") -> Cell:
    """A text cell (escaped when rendered)."""
    return Cell(str(text), None, css, field)


def table_html(
    headers: Sequence[str],
    rows: Iterable[tuple[Mapping[str, str], Sequence[Cell]]],
    *,
    caption: str | None = None,
    table_id: str | None = None,
) -> str:
    """An HTML table.

    Parameters
    ----------
    headers
        Column headings (plain text).
    rows
        ``(row attributes, cells)`` pairs; the attributes (e.g. ``{"data-param": "w"}``) are
        written, escaped, on the ``<tr>``; the first cell is a row heading.
    caption
        Plain-text caption.
    table_id
        ``id`` of the table.

    Returns
    -------
    str
    """
    head = "".join(f"<th scope=\"col\">{escape(h)}</th>" for h in headers)
    body = []
    for attributes, cells in rows:
        attrs = "".join(f' {escape(k)}="{escape(v)}"' for k, v in attributes.items())
        first, rest = (cells[0].html("th"), cells[1:]) if cells else ("", ())
        body.append(f"<tr{attrs}>{first}{''.join(c.html() for c in rest)}</tr>")
    ident = f' id="{escape(table_id)}"' if table_id else ""
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f"<table{ident}>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# -- the tables ------------------------------------------------------------------------------------
def parameter_table(
    parameters: Sequence[ParameterEstimate], confidence: float = 0.95, *, table_id: str = "parameters"
) -> str:
    """Parameters with value, standard error, relative error, confidence interval and notes (fixed, at bound).

    Parameters
    ----------
    parameters
        The estimates (one fit's, or one group's).
    confidence
        Level of the intervals, for the headings.
    table_id
        ``id`` of the table.

    Returns
    -------
    str
    """
    headers = ["parameter", "value", "std. error", "relative", f"{format_percent(confidence)} CI low", f"{format_percent(confidence)} CI high", "note"]
    rows = [({"data-param": p.name}, _parameter_cells(p)) for p in parameters]
    if not any(p.fixed or p.at_bound for p in parameters):  # no notes: no empty column
        headers, rows = headers[:-1], [(attrs, cells[:-1]) for attrs, cells in rows]
    return table_html(headers, rows, table_id=table_id)


def _parameter_cells(p: ParameterEstimate) -> list[Cell]:
    relative = relative_error(p)
    notes = [text for flag, text in ((p.fixed, "fixed"), (p.at_bound, "at bound")) if flag]
    return [
        text_cell(p.name),
        number_cell(p.value, 10, "value"),
        number_cell(p.stderr, 4, "stderr"),
        Cell("-" if relative is None else relative, None, "num", "relative"),
        number_cell(p.ci_low, 6, "ci_low"),
        number_cell(p.ci_high, 6, "ci_high"),
        text_cell(", ".join(notes), "flag" if notes else "", "note"),
    ]


def statistics_table(
    statistics: Mapping[str, float | None],
    extra: Sequence[tuple[str, str, float | str | None]] = (),
    *,
    keys: Sequence[str] = tuple(STATISTIC_LABELS),
    table_id: str = "statistics",
) -> str:
    """Fit statistics as a two-column table.

    Parameters
    ----------
    statistics
        ``FitResult.statistics`` (missing keys are left out; ``None`` shows as ``-``).
    extra
        More rows before the statistics: ``(key, label, number or text)``.
    keys
        Which statistics to show, in order.
    table_id
        ``id`` of the table.

    Returns
    -------
    str
    """
    rows = [_statistic_row(key, label, value) for key, label, value in extra]
    rows += [_statistic_row(k, STATISTIC_LABELS.get(k, k), statistics[k]) for k in keys if k in statistics]
    return table_html(["statistic", "value"], rows, table_id=table_id)


def _statistic_row(key: str, label: str, value: float | str | None) -> tuple[dict[str, str], list[Cell]]:
    cell = text_cell(value, field="value") if isinstance(value, str) else number_cell(value, 7, "value")
    return {"data-stat": key}, [text_cell(label), cell]


def key_statistics(result: FitResult) -> list[tuple[str, str, float | str | None]]:
    """Losses and point counts of ``result``, as ``extra`` rows for :func:`statistics_table`."""
    rows: list[tuple[str, str, float | str | None]] = [
        ("train_loss", f"training loss ({loss_label(result)})", result.train_loss),
        ("n_train", "training points", float(result.n_train)),
    ]
    if result.val_loss is not None:
        rows += [("val_loss", f"validation loss ({loss_label(result)})", result.val_loss), ("n_val", "validation points", float(result.n_val))]
    return rows


# -- figures ---------------------------------------------------------------------------------------
def figure_png(fig: Figure, dpi: int = 150) -> bytes:
    """``fig`` as PNG bytes, cropped to what it draws (long labels widen it); the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():  # labels too long for tight_layout: bbox_inches still fits them
            warnings.filterwarnings("ignore", "Tight layout not applied", UserWarning)
            fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.05, metadata={"Software": None})
    finally:
        plt.close(fig)
    return buffer.getvalue()


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height in pixels of a PNG image (from its header)."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or len(png) < 24:
        raise ValueError("not a PNG image")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def figure_html(fig: Figure, alt: str, *, dpi: int = 150, css: str = "figure") -> str:
    """``fig`` as an embedded ``<img>`` shown at the size it was drawn (96 CSS pixels per inch).

    Its text then appears at the point size it was drawn with; the PNG's ``dpi`` only sets how
    sharp it is (150: sharp on high-density screens and in print). The figure is closed.
    """
    png = figure_png(fig, dpi)
    return image_html(png, alt, width=round(png_size(png)[0] * 96 / dpi), css=css)


def image_html(png: bytes, alt: str, *, width: int | None = None, css: str = "figure") -> str:
    """An ``<img>`` with ``png`` embedded as a base64 data URI (no file, no network).

    ``width`` is the displayed width in CSS pixels (the image scales down on narrow screens).
    """
    data = base64.b64encode(png).decode("ascii")
    size = f' width="{int(width)}"' if width else ""
    return f'<img class="{escape(css)}" alt="{escape(alt)}"{size} src="data:image/png;base64,{data}">'


def input_range(result: FitResult, name: str) -> tuple[float, float] | None:
    """The range of input ``name`` recorded in ``result.settings["data_summary"]``, if any."""
    summary = result.settings.get("data_summary")
    column = summary.get("columns", {}).get(name) if isinstance(summary, Mapping) else None
    if not isinstance(column, Mapping):
        return None
    low, high = column.get("min"), column.get("max")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (low, high)):
        return None
    return float(low), float(high)


def summary_figure(result: FitResult, width: float = 4.2, height: float = 2.8) -> Figure | None:
    """A small figure for the notebook display.

    The fitted curve with its bands over the recorded input range (one input), else the loss
    curves (gradient solvers), else the correlation heat map (two or more parameters), else ``None``.
    """
    from gradfit import plot
    from gradfit.errors import GradfitError

    span = input_range(result, result.input_names[0]) if len(result.input_names) == 1 else None
    if span is not None:
        fig, (ax,) = plot.figure(width=width, height=height)
        try:
            draw_curve(ax, result, span)
            ax.legend(fontsize="x-small")
        except GradfitError:
            import matplotlib.pyplot as plt

            plt.close(fig)
        else:
            return fig
    if result.history.train:
        fig, (ax,) = plot.figure(width=width, height=height)
        plot.draw_history(ax, {"training": result.history.train, "validation": result.history.val})
        return fig
    if result.covariance is not None and len(result.parameters) >= 2:
        fig, (ax,) = plot.figure(width=width, height=height)
        draw_correlation(ax, result)
        return fig
    return None


def draw_curve(ax: Any, result: FitResult, span: tuple[float, float], *, show_range: bool = True, points: int = 300) -> None:
    """The fitted curve with confidence and prediction bands over ``span`` (no data points).

    ``show_range`` shades ``span`` (the data's range, when the points themselves are not drawn).

    Raises
    ------
    GradfitError
        If the model cannot be evaluated (a saved non-formula model, a broken formula).
    """
    from gradfit.plot import CURVE_COLOR, curve_grid, draw_bands
    from gradfit.predict import prediction_bands

    name = result.input_names[0]
    low, high = span
    grid = curve_grid(ax, low, high, points)
    curve = result.predict({name: grid})
    bands = prediction_bands(result, {name: grid})
    level = float(result.settings.get("confidence", 0.95))
    if bands is not None:
        draw_bands(ax, grid, bands, CURVE_COLOR, level)
    ax.plot(grid, curve, color=CURVE_COLOR, lw=1.8, label="fit")
    if show_range:
        ax.axvspan(low, high, color="0.5", alpha=0.07, lw=0, label="range of the data")
    ax.set_xlabel(mathtext_safe(name))
    ax.set_ylabel(mathtext_safe(result.y_name))
    ax.legend(fontsize="small")


def draw_correlation(ax: Any, result: FitResult) -> None:
    """Heat map of the parameter correlations, each cell annotated with its value."""
    import numpy as np

    corr = result.correlation()
    if corr is None:
        return
    names = [mathtext_safe(_shorten(n)) for n in result.param_names]
    shown = np.ma.masked_invalid(corr)
    image = ax.imshow(shown, cmap="RdBu_r", vmin=-1.0, vmax=1.0)
    ax.grid(False)
    ax.set_xticks(range(len(names)), names, rotation=45 if len(names) > 4 else 0)
    ax.set_yticks(range(len(names)), names)
    for (i, j), value in np.ndenumerate(corr):
        text = "-" if not np.isfinite(value) else f"{value:+.2f}"
        ax.text(j, i, text, ha="center", va="center", fontsize="small", color="white" if abs(np.nan_to_num(value)) > 0.6 else "black")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="correlation")


def _shorten(text: str, limit: int = 16) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- the notebook display --------------------------------------------------------------------------
def result_html(result: FitResult, *, figure: bool = True) -> str:
    """The notebook display of one fit: title, parameters ± stderr, key statistics, small figure.

    Parameters
    ----------
    result
        The fit.
    figure
        Whether to include the small inline figure (see :func:`summary_figure`).

    Returns
    -------
    str
        An HTML fragment (a ``<div class="gradfit">`` with its own scoped ``<style>``).
    """
    confidence = float(result.settings.get("confidence", 0.95))
    title = f"{result.y_name} = {result.model}"
    status = "" if result.success else ' <span class="flag">(not converged)</span>'
    parts = [
        f"<style>{CSS}</style>",
        f'<div class="gradfit-title"><strong><code>{escape(title)}</code></strong>{status}</div>',
        f'<div class="muted">{escape(result.solver)} solver — {escape(result.message)}</div>',
    ]
    parts += [f'<div class="flag">warning: {escape(w)}</div>' for w in result.warnings]
    row = [
        parameter_table(result.parameters, confidence, table_id=""),
        statistics_table(result.statistics, key_statistics(result), keys=KEY_STATISTICS, table_id=""),
    ]
    fig = summary_figure(result) if figure else None
    if fig is not None:
        row.append(figure_html(fig, f"figure of the fit {title}", dpi=144, css="gradfit-figure"))
    parts.append(f'<div class="gradfit-row">{"".join(row)}</div>')
    return f'<div class="gradfit">{"".join(parts)}</div>'
