"""Compare models on the same data: which one generalises best?

Every model is fitted on the same seeded train/validation split (and, with ``cv=K``, on the same K
folds), so their losses are comparable. :func:`compare` reports, per model, the training and validation
losses, AIC/BIC (parametric models), the number of parameters and an overfitting flag, and names the
model that generalises best in a plain-language verdict.
"""

from __future__ import annotations

import copy
import math
import sys
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gradfit.config import FitOptions
from gradfit.data import Dataset, as_dataset, kfold_indices
from gradfit.errors import GradfitError, ModelError, OptionError, first_line
from gradfit.report_text import format_number

if TYPE_CHECKING:
    from gradfit.result import FitResult

__all__ = ["compare", "Comparison", "ModelScore", "plot_overlay", "plot_validation", "OVERFIT_RATIO", "HISTORY_RISE"]

#: validation loss above this multiple of the training loss (in a model with more parameters than
#: the chosen one, fitting the training data better and generalising worse) flags overfitting
OVERFIT_RATIO = 2.0
#: relative rise of the validation loss above its minimum (and beyond the noise of its points),
#: while the training loss kept falling, that flags overfitting in a gradient fit's history
HISTORY_RISE = 0.10
_PALETTE = ("#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


@dataclass(frozen=True)
class ModelScore:
    """How one model did.

    Attributes
    ----------
    label
        The name the model was given (its spec text, ``"linear"``, a function's name...).
    model
        The fitted model's description (the formula with the data's column names).
    n_params
        Number of estimated (free) parameters.
    train_loss, val_loss
        Losses of the fit on the split (``val_loss`` is ``None`` without a holdout).
    cv_train_loss, cv_val_loss, cv_val_sd
        Means over the folds of the training and validation losses, and the folds' standard
        deviation of the validation loss (``None`` without ``cv``).
    aic, bic
        Information criteria of the fit on the split's training part (parametric models).
    overfitting
        Why the model looks overfitted, in words, or ``None``.
    result
        The fit on the split (its curve is the one plotted), or ``None`` if it failed.
    error
        Why the model could not be fitted, or ``None``.
    """

    label: str
    model: str
    n_params: int
    train_loss: float
    val_loss: float | None
    cv_train_loss: float | None = None
    cv_val_loss: float | None = None
    cv_val_sd: float | None = None
    aic: float | None = None
    bic: float | None = None
    overfitting: str | None = None
    result: FitResult | None = field(default=None, repr=False)
    error: str | None = None
    pointwise: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Whether the model was fitted and has a finite selection loss."""
        return self.error is None and self.score is not None and math.isfinite(self.score)

    @property
    def score(self) -> float | None:
        """The loss used to choose: cross-validated when available, else the holdout's."""
        return self.cv_val_loss if self.cv_val_loss is not None else self.val_loss

    @property
    def selection_train_loss(self) -> float:
        """The training loss that goes with :attr:`score`."""
        return self.cv_train_loss if self.cv_train_loss is not None else self.train_loss


@dataclass(frozen=True)
class Comparison:
    """The outcome of :func:`compare`.

    Attributes
    ----------
    scores
        One :class:`ModelScore` per model, in the order given.
    best
        Label of the model that generalises best (``None`` if none could be fitted).
    verdict
        The choice and its reasons, in plain language.
    criterion
        What was compared: ``"validation loss"`` or ``"K-fold cross-validated loss"``.
    loss
        The loss's name (``"mse"``...).
    y_name
        The target column.
    val, seed, cv
        The split's settings.
    train, validation
        The split's data (``validation`` is ``None`` when ``val=0``).

    Iterating gives the scores in order; indexing by a label gives that model's score.
    """

    scores: tuple[ModelScore, ...]
    best: str | None
    verdict: str
    criterion: str
    loss: str
    y_name: str
    val: float
    seed: int
    cv: int | None
    train: Dataset = field(repr=False)
    validation: Dataset | None = field(default=None, repr=False)

    def __iter__(self) -> Iterator[ModelScore]:
        """The scores, in the order the models were given."""
        return iter(self.scores)

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, label: str) -> ModelScore:
        """The score of the model labelled ``label``."""
        for score in self.scores:
            if score.label == label:
                return score
        raise KeyError(f"no model labelled '{label}' — labels are {', '.join(s.label for s in self.scores)}")

    @property
    def best_result(self) -> FitResult | None:
        """The winning model's fit on the split."""
        return None if self.best is None else self[self.best].result

    def rows(self) -> list[tuple[str, ...]]:
        """The table as text cells: model, parameters, losses, AIC, BIC, overfitting.

        Returns
        -------
        list of tuple of str
            One row per model, in the order given, with the cells of :meth:`headers`: the label
            (starred for the best model), the number of parameters, the training and validation
            losses, with ``cv`` the cross-validated loss ± its standard deviation over the folds,
            AIC, BIC, and ``"yes"``, ``"no"`` or ``"not fitted"``. A missing value is ``"-"``.
        """
        rows = []
        for s in self.scores:
            cv = "" if self.cv is None else (
                "-" if s.cv_val_loss is None else f"{format_number(s.cv_val_loss, 4)} ± {format_number(s.cv_val_sd, 2)}"
            )
            cells = [
                s.label + (" ★" if s.label == self.best else ""),
                str(s.n_params) if s.error is None else "-",
                format_number(s.train_loss, 4) if s.error is None else "-",
                "-" if s.val_loss is None else format_number(s.val_loss, 4),
                *([cv] if self.cv is not None else []),
                "-" if s.aic is None else format_number(s.aic, 4),
                "-" if s.bic is None else format_number(s.bic, 4),
                "not fitted" if s.error is not None else ("yes" if s.overfitting else "no"),
            ]
            rows.append(tuple(cells))
        return rows

    def headers(self) -> tuple[str, ...]:
        """Column headers of :meth:`rows`.

        Returns
        -------
        tuple of str
            ``("model", "params", "train loss", "val loss", "AIC", "BIC", "overfitting")``, with a
            ``"K-fold CV loss ± sd"`` column after ``"val loss"`` when ``cv`` is set.
        """
        cv = (f"{self.cv}-fold CV loss ± sd",) if self.cv is not None else ()
        return ("model", "params", "train loss", "val loss", *cv, "AIC", "BIC", "overfitting")

    @property
    def loss_title(self) -> str:
        """What the losses are of: ``y``, or with sigma the weighted residuals ``(y − model)/σ``."""
        if self.train.sigma is None:
            return f"{self.loss} loss of {self.y_name}"
        return f"{self.loss} loss of ({self.y_name} − model)/σ"

    def report(self) -> str:
        """A plain-text table and the verdict.

        Returns
        -------
        str
            :attr:`loss_title`, the aligned table of :meth:`headers` and :meth:`rows`, a blank line and
            :attr:`verdict`; ``str(comparison)`` gives the same.
        """
        headers, rows = self.headers(), self.rows()
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

        return "\n".join([self.loss_title, line(headers), *map(line, rows), "", self.verdict])

    def __str__(self) -> str:
        return self.report()

    def plot(self, path: str | Path) -> Path:
        """Write every fitted curve over the data to ``path`` (see :func:`plot_overlay`).

        Parameters
        ----------
        path
            Image file; the format follows the extension (``.png``, ``.svg``, ``.pdf``...).

        Returns
        -------
        pathlib.Path
            The path written.
        """
        return plot_overlay(self, path)

    def plot_validation(self, path: str | Path) -> Path:
        """Write the bar chart of losses per model to ``path`` (see :func:`plot_validation`).

        Parameters
        ----------
        path
            Image file; the format follows the extension (``.png``, ``.svg``, ``.pdf``...).

        Returns
        -------
        pathlib.Path
            The path written.
        """
        return plot_validation(self, path)


def compare(
    models: Sequence[Any] | Mapping[str, Any],
    x: Any,
    y: Any = None,
    *,
    val: float = 0.2,
    seed: int = 0,
    cv: int | None = None,
    sigma: Any = None,
    inputs: Sequence[str] | None = None,
    nan_policy: str = "raise",
    **options: Any,
) -> Comparison:
    """Fit several models on the same split and say which generalises best.

    Parameters
    ----------
    models
        Models as :func:`gradfit.fit` accepts them — formulas, built-in names (``"linear"``,
        ``"poly:2"``, ``"mlp:8"``...), functions, ``torch.nn.Module`` s — or a mapping of label to
        model. Networks are copied for every fit, so the originals are not trained.
    x, y, sigma
        The data, as for :func:`gradfit.fit` (``y`` and ``sigma`` may be column names of a frame).
    val
        Fraction of rows held out for validation (seeded by ``seed``); every model gets the same
        rows. May be 0 when ``cv`` is given: the plotted fits then use every row.
    seed
        Seed of the split, of the folds and of built-in networks' initial weights.
    cv
        Number of folds for K-fold cross-validation over all rows (:func:`gradfit.data.kfold_indices`);
        the validation loss that decides is then the mean over the folds.
    inputs
        Candidate input columns of a frame (default: every column but ``y`` and ``sigma``);
        ``linear`` and ``mlp:H`` use all of them.
    nan_policy
        ``"raise"`` or ``"omit"`` (rows with a missing value in any input are dropped for every model).
    **options
        Fit settings shared by every model (``loss``, ``epochs``, ``optimizer``...; see
        :class:`~gradfit.config.FitOptions`).

    Returns
    -------
    Comparison
        Scores per model, the best model's label and the verdict.

    Notes
    -----
    **The rule.** The best model is the one with the lowest validation loss (cross-validated when
    ``cv`` is given). A model whose loss exceeds that minimum by no more than one standard error of
    the difference — computed from the per-point losses of both models on the same validation
    points (with ``cv``: every row's out-of-fold loss) — is tied with it, and among tied models the
    one with the fewest parameters wins (then the lower loss). With a single validation point no
    standard error exists and only the losses decide.

    **Overfitting** is flagged when, in a gradient fit's history, the validation loss rose above its
    minimum by more than :data:`HISTORY_RISE` and more than one standard error of its points' mean
    while the training loss kept falling (in at least half of the fits that record a validation
    history); or when a model with more parameters than the chosen one fits the training data
    better, generalises worse (beyond one standard error of the difference) and has a validation
    loss above :data:`OVERFIT_RATIO` times its training loss.

    Models that cannot be fitted (too few rows for their parameters, a diverged fit...) are reported
    with the reason and left out of the choice.

    Examples
    --------
    >>> from gradfit.compare import compare
    >>> t_c = [0.5, 14.0, 15.0, 28.0, 11.0, 8.0, 3.0, -4.0, 6.0, 13.0, 21.0]
    >>> t_u = [35.7, 55.9, 58.2, 81.9, 56.3, 48.9, 33.9, 21.8, 48.4, 60.4, 68.4]
    >>> result = compare(["linear", "poly:2"], {"t_u": t_u}, t_c, val=0.0, cv=5)
    >>> result.best
    'linear'
    >>> result["poly:2"].train_loss < result["linear"].train_loss
    True
    """
    from gradfit.fitting import split_dataset

    entries = _labelled(models)
    if cv is None and not val > 0:
        raise OptionError("compare needs validation data: give val > 0 (e.g. 0.2) or cv=K folds")
    settings = FitOptions(**{**options, "val": 0.0, "seed": seed, "nan_policy": nan_policy})
    if not 0.0 <= val < 1.0:
        raise OptionError(f"val must be a fraction in [0, 1), got {val} — e.g. 0.2")
    data = _dataset([spec for _, spec in entries], x, y, sigma, inputs, nan_policy, seed)
    train, validation = split_dataset(data, replace(settings, val=val))
    folds = None if cv is None else kfold_indices(data.n_rows, cv, seed)
    scores = [_score(label, spec, data, train, validation, folds, settings) for label, spec in entries]
    scores = _flag_gaps(scores, _chosen([s for s in scores if s.ok]))
    best, verdict = _verdict(scores, _criterion(cv))
    return Comparison(
        tuple(scores), best, verdict, _criterion(cv), settings.loss, data.y_name, val, seed, cv, train, validation
    )


# -- inputs -------------------------------------------------------------------------------------------
def _labelled(models: Sequence[Any] | Mapping[str, Any]) -> list[tuple[str, Any]]:
    if isinstance(models, Mapping):
        entries = [(str(k), v) for k, v in models.items()]
    elif isinstance(models, (str, bytes)) or not isinstance(models, Sequence):
        raise ModelError("compare takes a list of models (or a mapping of label to model) — e.g. ['linear', 'poly:2']")
    else:
        entries = [(_label(spec), spec) for spec in models]
    if not entries:
        raise ModelError("no models to compare — give at least one, e.g. ['linear', 'poly:2']")
    seen: dict[str, int] = {}
    unique = []
    for label, spec in entries:
        seen[label] = seen.get(label, 0) + 1
        unique.append((label if seen[label] == 1 else f"{label} #{seen[label]}", spec))
    return unique


def _label(spec: Any) -> str:
    if isinstance(spec, str):
        return " ".join(spec.split())
    description = getattr(spec, "description", None)
    if isinstance(description, str):
        return description
    return getattr(spec, "__name__", type(spec).__name__)


def _is_table(x: Any) -> bool:
    return isinstance(x, Mapping) or (hasattr(x, "columns") and not hasattr(x, "dim"))


def _dataset(
    specs: list[Any], x: Any, y: Any, sigma: Any, inputs: Sequence[str] | None, nan_policy: str, seed: int
) -> Dataset:
    """One dataset for every model: the columns any model reads, rows dropped for all alike."""
    if not _is_table(x):
        x = np.asarray(x) if isinstance(x, (list, tuple)) else x
        y = np.asarray(y) if isinstance(y, (list, tuple)) else y
        return as_dataset(x, y, input_names=inputs, sigma=sigma, nan_policy=nan_policy)  # type: ignore[arg-type]
    roles = {v for v in (y, sigma) if isinstance(v, str)}
    columns = list(inputs) if inputs else [str(c) for c in (x.keys() if isinstance(x, Mapping) else x.columns) if str(c) not in roles]
    used: list[str] = []
    for spec in specs:
        names = _build(spec, columns, seed).input_names or columns
        used += [n for n in names if n not in used]
    ordered = [c for c in columns if c in used] + [c for c in used if c not in columns]
    return as_dataset(x, y, input_names=ordered, sigma=sigma, nan_policy=nan_policy)  # type: ignore[arg-type]


def _build(spec: Any, columns: Sequence[str], seed: int, data: Dataset | None = None) -> Any:
    """A fresh model: networks are copied, built-ins seeded and (with ``data``) started from a guess."""
    from gradfit.builtin_models import builtin_model, is_builtin, model_for
    from gradfit.model import ModuleModel, _is_module, make_model

    if isinstance(spec, ModuleModel) or _is_module(spec):
        spec = copy.deepcopy(spec)
    if data is not None:
        return model_for(spec, data, seed=seed)
    return builtin_model(spec, columns, seed=seed) if is_builtin(spec) else make_model(spec, columns)


def _columns(data: Dataset, names: Sequence[str]) -> Dataset:
    return replace(data, inputs={n: data.inputs[n] for n in names})


# -- fitting and scoring ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Fit:
    result: FitResult
    pointwise: np.ndarray | None
    n_params: int


def _fit(spec: Any, train: Dataset, validation: Dataset | None, settings: FitOptions) -> _Fit:
    from gradfit.fitting import fit_dataset
    from gradfit.model import ParametricModel

    model = _build(spec, train.input_names, settings.seed, train)
    names = model.input_names or train.input_names
    train_part = _columns(train, names)
    val_part = None if validation is None else _columns(validation, names)
    result = fit_dataset(model, train_part, settings, val_part, shared=True)
    if not result.success or not math.isfinite(result.train_loss):
        raise _Failed(f"the fit failed: {result.message}")
    if isinstance(model, ParametricModel):
        n_params = sum(not p.fixed for p in model.parameters)
    else:
        n_params = model.n_params
    pointwise = None if val_part is None else _pointwise(result, val_part, settings)
    return _Fit(result, pointwise, n_params)


class _Failed(Exception):
    """A fit that ran but cannot be scored."""


def _pointwise(result: FitResult, data: Dataset, settings: FitOptions) -> np.ndarray:
    """Each point's loss, so that the validation loss is their mean."""
    import torch

    from gradfit.losses import get_loss

    residual = result.predict(data.inputs) - data.y
    if data.sigma is not None:
        residual = residual / data.sigma
    loss_fn = get_loss(settings.loss, settings.loss_scale)
    values = torch.vmap(loss_fn)(torch.as_tensor(residual, dtype=torch.float64)[:, None])
    return values.numpy().astype(float)


def _score(
    label: str,
    spec: Any,
    data: Dataset,
    train: Dataset,
    validation: Dataset | None,
    folds: list[tuple[np.ndarray, np.ndarray]] | None,
    settings: FitOptions,
) -> ModelScore:
    try:
        main = _fit(spec, train, validation, settings)
        fold_fits = [_fit(spec, data.subset(t), data.subset(v), settings) for t, v in folds or ()]
    except (GradfitError, _Failed) as exc:
        return ModelScore(label, _label(spec), 0, math.nan, None, error=first_line(exc))
    result = main.result
    cv_fields: dict[str, Any] = {}
    pointwise = main.pointwise
    if folds:
        fold_val = np.array([f.result.val_loss for f in fold_fits], dtype=float)
        cv_fields = dict(
            cv_train_loss=float(np.mean([f.result.train_loss for f in fold_fits])),
            cv_val_loss=float(fold_val.mean()),
            cv_val_sd=float(fold_val.std(ddof=1)) if len(fold_val) > 1 else 0.0,
        )
        pointwise = np.empty(data.n_rows)
        for (_, val_idx), fold in zip(folds, fold_fits):
            pointwise[val_idx] = fold.pointwise
    fits = [("on the validation split", main), *((f"in fold {i + 1} of {len(fold_fits)}", f) for i, f in enumerate(fold_fits))]
    histories = [(where, f.result.history, f.pointwise) for where, f in fits if f.result.history.val]
    return ModelScore(
        label=label,
        model=result.model,
        n_params=main.n_params,
        train_loss=result.train_loss,
        val_loss=result.val_loss,
        aic=_criterion_value(result, "aic"),
        bic=_criterion_value(result, "bic"),
        overfitting=_history_overfitting(histories),
        result=result,
        pointwise=pointwise,
        **cv_fields,
    )


def _criterion_value(result: FitResult, name: str) -> float | None:
    """AIC or BIC where defined: a parametric fit with residual degrees of freedom."""
    value, dof = result.statistics.get(name), result.statistics.get("dof")
    if result.model_kind == "module" or value is None or not dof or dof <= 0:
        return None
    return float(value) if math.isfinite(float(value)) else None


def _history_overfitting(histories: list[tuple[str, Any, np.ndarray | None]]) -> str | None:
    """Validation loss rising while training loss falls, in at least half of the recorded histories
    (``(where, history, per-point validation losses)``); the text describes the first such fit."""
    rises = [
        f"{rise} ({where})"
        for where, history, points in histories
        if (rise := _history_rise(history.train, history.val, _standard_error(points))) is not None
    ]
    if not histories or 2 * len(rises) < len(histories):
        return None
    return rises[0]


def _standard_error(points: np.ndarray | None) -> float:
    """Standard error of the mean of the per-point validation losses (0 if unknown)."""
    if points is None or len(points) < 2:
        return 0.0
    return float(np.std(points, ddof=1) / math.sqrt(len(points)))


def _history_rise(train: Sequence[float], val: Sequence[float], noise: float = 0.0) -> str | None:
    """The words for a validation loss that ended above its lowest value by more than ``noise`` (and
    :data:`HISTORY_RISE` relative) while the training loss fell below its value there; else None.
    A validation loss lowest at the first epoch counts too: training made the model generalise worse
    from the start."""
    v, t = np.asarray(val, dtype=float), np.asarray(train, dtype=float)
    if len(v) < 3 or len(t) != len(v) or not np.isfinite(v).all():
        return None
    low = int(np.argmin(v))
    rose = v[-1] > (1.0 + HISTORY_RISE) * v[low] and v[-1] - v[low] > max(noise, 1e-12)
    if low < len(v) - 1 and rose and t[-1] < t[low]:
        return (
            f"validation loss rose from {format_number(v[low], 3)} (epoch {low + 1}) to "
            f"{format_number(v[-1], 3)} while training loss kept falling"
        )
    return None


def _flag_gaps(scores: list[ModelScore], chosen: ModelScore | None) -> list[ModelScore]:
    """Flag the models that overfit compared with the chosen one (see :func:`_overfits`)."""
    if chosen is None:
        return scores
    return [
        replace(s, overfitting=_gap_text(float(s.score), s.selection_train_loss, s.cv_train_loss is not None))  # type: ignore[arg-type]
        if s.ok and s.overfitting is None and _overfits(s, chosen)
        else s
        for s in scores
    ]


def _overfits(model: ModelScore, chosen: ModelScore) -> bool:
    """More parameters than the chosen model, a lower training loss, a validation loss higher beyond
    noise, and a validation loss above :data:`OVERFIT_RATIO` times its own training loss."""
    if model is chosen or model.n_params <= chosen.n_params:
        return False
    train, value = model.selection_train_loss, float(model.score)  # type: ignore[arg-type]
    noise = _noise(model, chosen)
    worse = value - float(chosen.score) > (noise if math.isfinite(noise) else 0.0)  # type: ignore[arg-type]
    return train < chosen.selection_train_loss and worse and value > OVERFIT_RATIO * train


def _gap_text(value: float, train: float, cross_validated: bool = False) -> str:
    """The gap in words; cross-validated, both losses are means over the folds (the table shows the
    validation one, not the training one: it names it)."""
    pair = f"{'cross-validated' if cross_validated else 'validation'} loss {format_number(value, 3)}"
    trained = f"{'mean training loss over the folds' if cross_validated else 'training loss'} {format_number(train, 3)}"
    if train <= 0 or value / train >= 1000:
        return f"{pair} ≫ {trained}"
    return f"{pair} = {value / train:.3g}× {trained}"


# -- the verdict --------------------------------------------------------------------------------------
def _criterion(cv: int | None) -> str:
    return "validation loss" if cv is None else f"{cv}-fold cross-validated loss"


def _verdict(scores: list[ModelScore], criterion: str) -> tuple[str | None, str]:
    valid = [s for s in scores if s.ok]
    failed = [s for s in scores if not s.ok]
    tail = _failures(failed)
    if not valid:
        return None, ("No model could be fitted." + tail).strip()
    lowest = min(valid, key=lambda s: float(s.score))  # type: ignore[arg-type]
    best = _chosen(valid)
    assert best is not None
    text = _choice_sentence(best, lowest, valid, criterion)
    trained = min(valid, key=lambda s: s.train_loss)
    if trained is not best:
        text += (
            f" {trained.label} has the lowest training loss ({format_number(trained.train_loss, 4)}), "
            "but a lower training loss alone does not make a better model."
        )
    overfit = [s for s in valid if s.overfitting]
    if overfit:
        text += " Overfitting: " + "; ".join(f"{s.label} ({s.overfitting})" for s in overfit) + "."
    return best.label, text + tail


def _chosen(valid: list[ModelScore]) -> ModelScore | None:
    """The model the rule chooses: among those tied with the lowest score, the fewest parameters."""
    if not valid:
        return None
    lowest = min(valid, key=lambda s: float(s.score))  # type: ignore[arg-type]
    tied = [s for s in valid if _within_noise(s, lowest)]
    return min(tied, key=lambda s: (s.n_params, float(s.score)))  # type: ignore[arg-type]


def _noise(model: ModelScore, reference: ModelScore) -> float:
    """Standard error of the mean per-point loss difference between two models (NaN if unknown)."""
    a, b = model.pointwise, reference.pointwise
    if a is None or b is None or len(a) != len(b) or len(a) < 2:
        return math.nan
    diff = a - b
    return float(np.std(diff, ddof=1) / math.sqrt(len(diff)))


def _within_noise(model: ModelScore, lowest: ModelScore) -> bool:
    if model is lowest:
        return True
    se = _noise(model, lowest)
    return math.isfinite(se) and float(model.score) - float(lowest.score) <= se  # type: ignore[arg-type]


def _choice_sentence(best: ModelScore, lowest: ModelScore, valid: list[ModelScore], criterion: str) -> str:
    if len(valid) == 1:
        return f"{best.label} is the only model that could be fitted ({criterion} {format_number(best.score, 4)})."
    if best is lowest:
        runner = min((s for s in valid if s is not best), key=lambda s: float(s.score))  # type: ignore[arg-type]
        return (
            f"{best.label} generalises best: lowest {criterion} ({format_number(best.score, 4)}; "
            f"next {runner.label} with {format_number(runner.score, 4)})."
        )
    se = _noise(best, lowest)
    return (
        f"{best.label} generalises best: {lowest.label}'s {criterion} is lower "
        f"({format_number(lowest.score, 4)} vs {format_number(best.score, 4)}) but the difference is within "
        f"noise (one standard error: {format_number(se, 3)}), and {best.label} has fewer parameters "
        f"({best.n_params} vs {lowest.n_params})."
    )


def _failures(failed: list[ModelScore]) -> str:
    if not failed:
        return ""
    return " Not compared: " + "; ".join(f"{s.label} ({s.error or 'no finite validation loss'})" for s in failed) + "."


# -- figures ------------------------------------------------------------------------------------------
def plot_overlay(comparison: Comparison, path: str | Path) -> Path:
    """Write every fitted model over the data: curves for one shared input, else predicted vs observed.

    Parameters
    ----------
    comparison
        The outcome of :func:`compare`.
    path
        Image file; the format follows the extension.
    """
    from gradfit.plot import draw_fit, figure, save_figure

    fig, (ax,) = figure(width=7.0, height=4.5)
    fitted = [s for s in comparison.scores if s.result is not None]
    inputs = {s.result.input_names for s in fitted}  # type: ignore[union-attr]
    if len(inputs) == 1 and len(next(iter(inputs))) == 1:
        for i, s in enumerate(fitted):
            color = _PALETTE[i % len(_PALETTE)]
            draw_fit(ax, s.result, comparison.train, comparison.validation, label=_legend(s, comparison), color=color, show_bands=False)
        _clip_to_data(ax, comparison)
    else:
        _draw_parities(ax, fitted, comparison)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8)
    ax.set_title(f"{comparison.y_name}: {len(fitted)} models on the same split")
    return save_figure(fig, path)


def _legend(score: ModelScore, comparison: Comparison) -> str:
    star = " ★" if score.label == comparison.best else ""
    shown = score.model != score.label and len(score.model) <= 40  # long formulas: the label says enough
    return f"{score.label}{star}" + (f": {score.model}" if shown else "")


def _clip_to_data(ax: Any, comparison: Comparison) -> None:
    """Keep the data in view when a curve (an overfitted polynomial) shoots off between points."""
    parts = [comparison.train.y] + ([comparison.validation.y] if comparison.validation is not None else [])
    y = np.concatenate(parts)
    low, high = float(y.min()), float(y.max())
    pad = 0.5 * (high - low or 1.0)
    current = ax.get_ylim()
    ax.set_ylim(max(current[0], low - pad), min(current[1], high + pad))


def _draw_parities(ax: Any, fitted: list[ModelScore], comparison: Comparison) -> None:
    shown = comparison.validation if comparison.validation is not None else comparison.train
    for i, s in enumerate(fitted):
        prediction = s.result.predict(shown.inputs)  # type: ignore[union-attr]
        ax.scatter(shown.y, prediction, s=22, color=_PALETTE[i % len(_PALETTE)], label=_legend(s, comparison))
    low, high = float(shown.y.min()), float(shown.y.max())
    ax.plot([low, high], [low, high], color="grey", lw=1)
    part = "validation" if comparison.validation is not None else "training"
    ax.set_xlabel(f"observed {comparison.y_name} ({part} data)")
    ax.set_ylabel(f"predicted {comparison.y_name}")


def plot_validation(comparison: Comparison, path: str | Path) -> Path:
    """Write a bar chart of training and validation loss per model (the winner starred).

    With ``cv`` the bars are the means over the folds, with the standard error of the mean over
    the folds (the table's ± is their standard deviation).

    Parameters
    ----------
    comparison
        The outcome of :func:`compare`.
    path
        Image file; the format follows the extension.
    """
    from gradfit.plot import TRAIN_COLOR, VAL_COLOR, figure, save_figure

    scores = [s for s in comparison.scores if s.ok]
    fig, (ax,) = figure(width=max(5.0, 1.2 * len(scores) + 2.0), height=4.0)
    positions = np.arange(len(scores))
    train = np.array([s.selection_train_loss for s in scores], dtype=float)
    value = np.array([s.score for s in scores], dtype=float)
    errors = None
    if comparison.cv is not None:
        errors = np.array([(s.cv_val_sd or 0.0) / math.sqrt(comparison.cv) for s in scores])
    ax.bar(positions - 0.2, train, width=0.4, color=TRAIN_COLOR, label="training loss")
    label = comparison.criterion if errors is None else f"{comparison.criterion} (± standard error over the folds)"
    ax.bar(positions + 0.2, value, width=0.4, yerr=errors, capsize=3, color=VAL_COLOR, label=label)
    ax.set_xticks(positions, [s.label + (" ★" if s.label == comparison.best else "") for s in scores], rotation=20, ha="right")
    both = np.concatenate([train, value])
    if both.size and (both > 0).all() and both.max() / both.min() > 100:
        ax.set_yscale("log")
    ax.set_ylabel(f"{comparison.loss} loss")
    ax.set_title(f"{comparison.criterion} per model (★ generalises best)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


class _CallableModule(types.ModuleType):
    """``gradfit.compare(...)`` calls :func:`compare` even where the submodule shadows the function.

    Importing ``gradfit.compare`` (the module) binds that name on the package to the module; making
    the module callable keeps ``gradfit.compare(models, x, y)`` working in any import order.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Comparison:
        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
