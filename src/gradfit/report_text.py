"""The plain-text fit report, in sections as lmfit prints them."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gradfit.result import FitResult, ParameterEstimate

__all__ = ["format_report", "format_number"]

#: correlations whose magnitude is below this are left out of the report
CORRELATION_THRESHOLD = 0.1

_STATISTIC_LABELS = {
    "r2": "R-squared",
    "rmse": "RMS error",
    "chisqr": "chi-square",
    "redchi": "reduced chi-square",
    "error_variance": "error variance (robust)",
    "aic": "Akaike info crit",
    "bic": "Bayesian info crit",
    "dof": "degrees of freedom",
    "condition": "condition number of JᵀJ",
}


def format_number(value: float | None, digits: int = 7) -> str:
    """A number with ``digits`` significant digits, or ``-`` when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


def relative_error(p: ParameterEstimate) -> str | None:
    """A parameter's standard error relative to its value, ``"2.34%"`` (``"8.36e+101%"`` when huge);
    None without a finite standard error, or for a value of 0, where it means nothing."""
    if p.stderr is None or not math.isfinite(p.stderr) or not p.value:
        return None
    percent = abs(p.stderr / p.value) * 100.0
    return f"{percent:.2f}%" if percent < 1e4 else f"{percent:.3g}%"


def format_percent(level: float) -> str:
    """A confidence level as a percentage with the digits it needs: ``95%``, ``99.99%``, ``68.27%``."""
    return f"{100.0 * level:.4g}%"


def loss_label(result: FitResult, noun: str = "") -> str:
    """The loss's name (followed by ``noun``: ``"mse loss"``), and whether it is of weighted residuals
    ``r / σ`` (``"mse loss of r/σ"``)."""
    name = f"{result.loss} {noun}".rstrip()
    return f"{name} of r/σ" if result.settings.get("weighted") else name


def format_report(result: FitResult) -> str:
    """Render ``result`` as a sectioned text report."""
    sections = [
        _section("Fit", _fit_lines(result)),
        _section("Statistics", _statistics_lines(result)),
        _section("Parameters", [_parameter_line(p, result) for p in result.parameters]),
        _section("Correlations", _correlation_lines(result)),
        _section("Validation", _validation_lines(result)),
        _section("Warnings", list(result.warnings)),
    ]
    return "\n".join(s for s in sections if s)


def _section(title: str, lines: list[str]) -> str:
    if not lines:
        return ""
    return "\n".join([f"[[{title}]]", *("    " + line for line in lines)])


def dropped_note(r: FitResult) -> str:
    """``"; 2 rows left out (missing or non-finite values)"`` after ``nan_policy="omit"``, else ``""``."""
    dropped = int(r.settings.get("rows_dropped", 0) or 0)
    if not dropped:
        return ""
    return f"; {dropped} row{'s' if dropped != 1 else ''} left out (missing or non-finite values)"


def _fit_lines(r: FitResult) -> list[str]:
    return [
        f"model        = {r.model}",
        f"solver       = {r.solver} ({r.solver_reason})",
        f"status       = {r.message}",
        f"data points  = {r.n_train} training, {r.n_val} validation{dropped_note(r)}",
        f"iterations   = {r.iterations}",
        f"train loss   = {format_number(r.train_loss)} ({loss_label(r)})",
    ]


def _statistics_lines(r: FitResult) -> list[str]:
    return [
        f"{label:<24} = {format_number(r.statistics[key])}"
        for key, label in _STATISTIC_LABELS.items()
        if key in r.statistics
    ]


def _parameter_line(p: ParameterEstimate, r: FitResult) -> str:
    text = f"{p.name:<10} = {format_number(p.value, 10)}"
    if p.fixed:
        return text + " (fixed)"
    if p.stderr is not None and math.isfinite(p.stderr):
        text += f" +/- {format_number(p.stderr, 4)}"
        relative = relative_error(p)
        if relative is not None:
            text += f" ({relative})"
    elif p.stderr is not None:  # inf (not determined) or nan, as the table of the CLI shows it
        text += f" +/- {format_number(p.stderr, 4)}"
    if p.ci_low is not None and p.ci_high is not None:
        level = r.settings.get("confidence", 0.95)
        text += f"  {format_percent(level)} CI [{format_number(p.ci_low, 6)}, {format_number(p.ci_high, 6)}]"
    if p.at_bound:
        text += "  (at bound)"
    return text


def _correlation_lines(r: FitResult) -> list[str]:
    corr = r.correlation()
    if corr is None:
        return []
    names = r.param_names
    pairs = [
        (abs(corr[i, j]), f"C({names[i]}, {names[j]}) = {corr[i, j]:+.4f}")
        for i in range(len(names))
        for j in range(i + 1, len(names))
        if math.isfinite(corr[i, j]) and abs(corr[i, j]) >= CORRELATION_THRESHOLD
    ]
    return [line for _, line in sorted(pairs, reverse=True)]


def _validation_lines(r: FitResult) -> list[str]:
    if r.val_loss is None:
        return []
    lines = [f"validation loss = {format_number(r.val_loss)} ({r.n_val} points)"]
    if r.train_loss > 0:
        lines.append(f"validation / train = {r.val_loss / r.train_loss:.3g}")
    return lines
