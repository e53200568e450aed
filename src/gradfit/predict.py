"""Apply a fit to new inputs: in memory, or from a saved result file (formula models)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from gradfit.errors import DataError, ModelError

if TYPE_CHECKING:
    from gradfit.result import FitResult

__all__ = ["predict_columns", "input_columns", "prediction_bands", "centred_polynomial"]


def input_columns(result: FitResult, x: Any) -> dict[str, np.ndarray]:
    """The model's input columns from ``x`` (mapping, frame, or array for a single input)."""
    names = result.input_names
    if isinstance(x, Mapping) or hasattr(x, "columns"):
        available = list(x.keys() if isinstance(x, Mapping) else x.columns)
        missing = [n for n in names if n not in available]
        if missing:
            raise DataError(
                f"the data has no column '{missing[0]}' that the model needs "
                f"(model inputs: {', '.join(names)}; columns: {', '.join(map(str, available))})"
            )
        return {n: _floats(x[n], n) for n in names}
    if len(names) != 1:
        raise DataError(f"the model has inputs {', '.join(names)} — pass a mapping or frame with these columns")
    return {names[0]: _floats(x, names[0])}


def _floats(values: Any, name: str) -> np.ndarray:
    """One input column as float64 (missing values such as ``NA`` give NaN predictions there)."""
    from gradfit.data import numeric_column

    if hasattr(values, "to_numpy") and not hasattr(values, "dtype"):
        values = values.to_numpy()
    return numeric_column(values if np.ndim(values) else np.atleast_1d(values), name).reshape(-1)


def predict_columns(result: FitResult, x: Any) -> np.ndarray:
    """Predictions of ``result``'s model at ``x``.

    A result still attached to its model uses it; a result loaded from JSON is rebuilt from its
    formula (never evaluated as Python).
    """
    columns = input_columns(result, x)
    centred = _centred_curve(result, columns)
    if centred is not None:
        return centred
    if result.predictor is not None:
        return result.predictor(columns)
    if result.model_kind != "formula":
        raise ModelError(
            f"a saved {result.model_kind} model cannot be rebuilt from its result file — "
            "predict in the Python session that fitted it"
        )
    from gradfit.evaluate import evaluate_numpy
    from gradfit.formula import parse

    env: dict[str, Any] = dict(columns)
    env.update(result.params)
    with np.errstate(all="ignore"):
        values = np.asarray(evaluate_numpy(parse(result.model).tree, env), dtype=float)
    n = len(next(iter(columns.values()))) if columns else 1
    return np.broadcast_to(values, (n,)).copy()


def prediction_bands(
    result: FitResult, x: Any, sigma: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Fitted curve and half-widths of its confidence and prediction bands at ``x``.

    Available for formula models with a covariance (in memory or loaded from JSON); ``None``
    otherwise. The prediction band adds the variance of one new observation: the residual variance
    ``s²`` (the reduced chi-square; a robust fit's M-estimate of it, which its outliers do not
    inflate) of an unweighted fit; for a weighted fit, ``sigma² · s²`` (or
    ``sigma²`` with ``absolute_sigma``), where ``sigma`` is the new points' standard deviation. A
    weighted fit's prediction band is NaN without ``sigma``: its noise at new points is unknown;
    ``absolute_sigma`` without sigma takes σ = 1, as the covariance does. Bands use Student's t, or
    the normal quantile with ``absolute_sigma`` (then they exist with no degrees of freedom left).
    Fixed parameters add no variance; a parameter that is not identifiable makes both bands NaN
    wherever the curve depends on it.

    Parameters
    ----------
    result
        A fit of a formula model.
    x
        New inputs (as for :meth:`FitResult.predict`).
    sigma
        Standard deviations of new observations at ``x`` (scalar or one per point), for a
        weighted fit.

    Returns
    -------
    (prediction, confidence half-width, prediction half-width) or None
    """
    absolute = bool(result.settings.get("absolute_sigma"))
    if result.model_kind != "formula" or result.covariance is None or not (absolute or result.statistics.get("dof")):
        return None
    from gradfit import stats
    from gradfit.model import make_model

    columns = input_columns(result, x)
    model = make_model(result.model, result.input_names)
    inputs = {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}
    prediction, jacobian = model.predict_and_jacobian(inputs, np.asarray(result.values, dtype=np.float64))
    jacobian = np.broadcast_to(jacobian, (len(next(iter(inputs.values()))), len(result.parameters)))
    free = np.array([not p.fixed for p in result.parameters])
    gradient, cov = _band_basis(result, inputs)
    if gradient is None:
        gradient, cov = jacobian[:, free], np.asarray(result.covariance, dtype=float)[np.ix_(free, free)]
    dof, level = float(result.statistics["dof"]), float(result.settings.get("confidence", 0.95))
    confidence = stats.confidence_band(gradient, cov, dof, level, absolute)
    prediction_half = stats.prediction_band(gradient, cov, dof, _new_noise(result, sigma, gradient.shape[0]), level, absolute)
    centred = _centred_curve(result, inputs)
    return np.array(prediction) if centred is None else centred, confidence, prediction_half


def _centred_input(basis: Mapping[str, Any] | None, inputs: Mapping[str, np.ndarray]) -> Any:
    """``t = (x - centre) / half_width`` of a polynomial's centred basis record at ``inputs``; None
    without a record (or without its input)."""
    if not basis or basis.get("input") not in inputs:
        return None
    return (np.asarray(inputs[basis["input"]], dtype=float).reshape(-1) - basis["centre"]) / basis["half_width"]


def centred_polynomial(basis: Mapping[str, Any] | None, inputs: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """A polynomial evaluated in the centred basis it was solved in (Horner in ``t``).

    Its coefficients in powers of a raw ``x`` far from 0 cancel when evaluated (the fit's rounding
    warning says by how much); the centred ones do not.

    Parameters
    ----------
    basis
        A result's ``settings["polynomial_basis"]`` (see :mod:`gradfit.solvers.linear`), or None.
    inputs
        Input columns by name.

    Returns
    -------
    numpy.ndarray or None
        The curve at the points; None without a basis record.
    """
    t = _centred_input(basis, inputs)
    if t is None or "coefficients" not in basis:  # type: ignore[operator]
        return None
    curve = np.zeros_like(t)
    for coefficient in reversed(basis["coefficients"]):  # type: ignore[index]
        curve = curve * t + coefficient
    return curve


def _centred_curve(result: FitResult, inputs: Mapping[str, np.ndarray]) -> np.ndarray | None:
    from gradfit.solvers.linear import POLYNOMIAL_BASIS

    return centred_polynomial(result.settings.get(POLYNOMIAL_BASIS), inputs)


def _band_basis(result: FitResult, inputs: Mapping[str, np.ndarray]) -> tuple[Any, Any]:
    """For a polynomial solved in a centred basis: the curve's gradient in that basis, ``t^k`` at
    ``t = (x - centre) / half_width``, and the covariance there, ``s² L Lᵀ``; ``(None, None)``
    otherwise. In powers of a raw ``x`` far from 0 (years, kelvins), ``g C gᵀ`` cancels to noise
    (a cubic over 2000..2020 keeps about two digits of its band); in the centred basis it does not."""
    from gradfit.solvers.linear import POLYNOMIAL_BASIS

    basis = result.settings.get(POLYNOMIAL_BASIS)
    t = _centred_input(basis, inputs)
    if t is None:
        return None, None
    factor = np.asarray(basis["factor"], dtype=float)
    gradient = t[:, None] ** np.arange(factor.shape[0])
    s2 = 1.0 if result.settings.get("absolute_sigma") else float(result.statistics["redchi"])
    return gradient, s2 * (factor @ factor.T)


def _new_noise(result: FitResult, sigma: Any, n_points: int) -> Any:
    """The variance of one new observation at each of ``n_points`` (see :func:`prediction_bands`)."""
    # a robust fit's own scale (its M-estimate, as its covariance has it), else the reduced chi-square
    redchi = float(result.statistics.get("error_variance", result.statistics.get("redchi", np.nan)))
    absolute = bool(result.settings.get("absolute_sigma"))
    if not result.settings.get("weighted"):
        return 1.0 if absolute else redchi  # absolute sigma without sigma: σ = 1, as curve_fit takes it
    if sigma is None:
        return np.nan
    variance = np.asarray(sigma, dtype=float) ** 2
    if variance.ndim > 1 or variance.size not in (1, n_points):
        raise DataError(f"sigma must be one number or one per new point ({n_points}), got {variance.size} values — pass sigma for x")
    return variance if absolute else variance * redchi
