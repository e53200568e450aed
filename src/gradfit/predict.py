"""Apply a fit to new inputs: in memory, or from a saved result file (formula models)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from gradfit.errors import DataError, ModelError

if TYPE_CHECKING:
    from gradfit.result import FitResult

__all__ = ["predict_columns", "input_columns", "prediction_bands"]


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
    if hasattr(values, "to_numpy"):
        values = values.to_numpy()
    try:
        array = np.asarray(values, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"column '{name}' is not numeric — clean the data") from None
    return array


def predict_columns(result: FitResult, x: Any) -> np.ndarray:
    """Predictions of ``result``'s model at ``x``.

    A result still attached to its model uses it; a result loaded from JSON is rebuilt from its
    formula (never evaluated as Python).
    """
    columns = input_columns(result, x)
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


def prediction_bands(result: FitResult, x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Fitted curve and half-widths of its confidence and prediction bands at ``x``.

    Available for formula models with a covariance (in memory or loaded from JSON); ``None``
    otherwise. The prediction band adds the residual variance of one new observation (the reduced
    chi-square, or 1 with ``absolute_sigma``).

    Returns
    -------
    (prediction, confidence half-width, prediction half-width) or None
    """
    if result.model_kind != "formula" or result.covariance is None or not result.statistics.get("dof"):
        return None
    from gradfit import stats
    from gradfit.model import make_model

    columns = input_columns(result, x)
    model = make_model(result.model, result.input_names)
    inputs = {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}
    prediction, jacobian = model.predict_and_jacobian(inputs, np.asarray(result.values, dtype=np.float64))
    cov = np.nan_to_num(np.asarray(result.covariance, dtype=float))
    dof, level = float(result.statistics["dof"]), float(result.settings.get("confidence", 0.95))
    noise = 1.0 if result.settings.get("absolute_sigma") else float(result.statistics.get("redchi", 0.0))
    confidence = stats.confidence_band(jacobian, cov, dof, level)
    prediction_half = stats.prediction_band(jacobian, cov, dof, noise, level)
    return np.array(prediction), confidence, prediction_half
