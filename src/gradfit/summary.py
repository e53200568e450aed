"""From a solver's outcome to what a result reports: losses, uncertainties, statistics, predictor.

Every solver's parameters get the same treatment: the Jacobian at the solution (symbolic for
formulas, forward-mode autograd otherwise), covariance, standard errors, confidence intervals and fit
statistics from :mod:`gradfit.stats`. Parametric models are evaluated on the problem's numpy arrays
(formulas natively, callables through torch); networks on torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gradfit import stats
from gradfit.losses import get_loss
from gradfit.result import ParameterEstimate

if TYPE_CHECKING:
    from gradfit.config import FitOptions
    from gradfit.objective import Split
    from gradfit.solvers.base import Problem, SolveOutcome

__all__ = ["Summary", "summarize"]


@dataclass(frozen=True)
class Summary:
    """The reported quantities of a fit."""

    parameters: tuple[ParameterEstimate, ...]
    covariance: tuple[tuple[float, ...], ...] | None
    statistics: dict[str, float]
    train_loss: float
    val_loss: float | None
    warnings: tuple[str, ...]
    predictor: Callable[[Mapping[str, np.ndarray]], np.ndarray]


def summarize(problem: Problem, outcome: SolveOutcome, options: FitOptions) -> Summary:
    """Compute losses, uncertainties and statistics for a solver's outcome."""
    if outcome.theta is None:
        return _module_summary(problem, outcome)
    return _parametric_summary(problem, outcome, options)


def _module_summary(problem: Problem, outcome: SolveOutcome) -> Summary:
    """A network's losses, R² and RMS error on the training points, and predictor (no parameter
    statistics: a network's weights have no standard errors worth reporting)."""
    import torch

    tensors = problem.on_torch()
    loss_fn = get_loss(problem.loss, problem.loss_scale)
    predict = outcome.predict
    assert predict is not None
    with torch.no_grad():
        residuals = tensors.train.residuals(predict(tensors.train.inputs))
        train_loss = float(loss_fn(residuals))
        val_loss = None if tensors.val is None else float(loss_fn(tensors.val.residuals(predict(tensors.val.inputs))))
    statistics = _fit_quality(residuals.detach().to("cpu", torch.float64).numpy().reshape(-1), problem.train)
    return Summary((), None, statistics, train_loss, val_loss, _loss_warnings(problem), _torch_predictor(tensors, predict))


def _fit_quality(residuals: np.ndarray, train: Split) -> dict[str, float]:
    """``r2`` (about the ``1/σ²``-weighted mean, as for parametric fits), ``rmse`` (of the unweighted
    residuals) and ``n_points`` of a fit's weighted training ``residuals``."""
    y = np.asarray(train.y, dtype=np.float64).reshape(-1)
    weights = None if train.weights is None else np.asarray(train.weights, dtype=np.float64).reshape(-1)
    raw = residuals if weights is None else residuals / weights
    with np.errstate(all="ignore"):
        r2 = float(stats.r_squared(residuals, y, weights))
        rmse = float(np.sqrt(np.mean(raw**2)))
    return {"r2": r2, "rmse": rmse, "n_points": float(y.size)}


def _loss_warnings(problem: Problem) -> tuple[str, ...]:
    """A weighted training loss beside an unweighted validation loss cannot be compared."""
    if problem.val is None or problem.train.weights is None or problem.val.weights is not None:
        return ()
    return (
        "the training loss is weighted by sigma but the validation set has none, so the two losses are "
        "not comparable — give the validation set its sigma: val_data=(x, y, sigma)",
    )


def _torch_predictor(problem: Problem, predict: Callable[[Any], Any]) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    import torch

    dtype, device = problem.train.y.dtype, problem.train.y.device

    def predictor(columns: Mapping[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            inputs = {k: torch.as_tensor(np.asarray(v, dtype=float), dtype=dtype, device=device) for k, v in columns.items()}
            return predict(inputs).detach().to("cpu", torch.float64).numpy()  # numpy has no bfloat16

    return predictor


def _parametric_predictor(model: Any, theta: np.ndarray) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    def predictor(columns: Mapping[str, np.ndarray]) -> np.ndarray:
        inputs = {k: np.asarray(v, dtype=theta.dtype) for k, v in columns.items()}
        return np.asarray(model.predict(inputs, theta), dtype=float)

    return predictor


def _parametric_summary(problem: Problem, outcome: SolveOutcome, options: FitOptions) -> Summary:
    with np.errstate(all="ignore"):  # a diverged fit's non-finite values are reported, not warned about
        return _parametric_quantities(problem, outcome, options)


def _parametric_quantities(problem: Problem, outcome: SolveOutcome, options: FitOptions) -> Summary:
    model, train = problem.model, problem.train
    theta = stats.as_array(outcome.theta).astype(problem.dtype)
    free = stats.as_array(problem.free)
    loss_fn = get_loss(problem.loss, problem.loss_scale)
    residuals, jac = outcome.residuals, outcome.jacobian
    if jac is None:
        prediction, jac = model.predict_and_jacobian(train.inputs, theta)
        jac = _weighted(jac, train)
        residuals = train.residuals(prediction) if residuals is None else residuals
    train_loss = float(loss_fn(residuals))
    val_loss = None if problem.val is None else float(loss_fn(problem.val.residuals(_predict(model, problem.val.inputs, theta, outcome))))
    robust = _robust_variance(problem, options, residuals, free)
    report = stats.fit_report(
        jac,
        residuals,
        train.y,
        weights=train.weights,
        absolute_sigma=options.absolute_sigma,
        confidence=options.confidence,
        free=free,
        param_names=model.param_names,
        decomposition=outcome.decomposition,
        inverse_normal=outcome.inverse_normal,
        error_variance=robust,
    )
    covariance, stderr, half = report.covariance, report.stderr, report.ci_half_width
    statistics = dict(report.statistics)
    if robust is not None and not options.absolute_sigma:  # the noise the bands add for a new point
        statistics["error_variance"] = _noise_variance(problem.loss, robust, residuals)
    at_bound = outcome.at_bound or (_at_bound(problem, theta) if problem.bounded else [False] * theta.size)
    estimates = tuple(
        ParameterEstimate(
            name=p.name,
            value=float(theta[i]),
            stderr=None if p.fixed else float(stderr[i]),
            ci_low=None if p.fixed else float(theta[i] - half[i]),
            ci_high=None if p.fixed else float(theta[i] + half[i]),
            fixed=p.fixed,
            at_bound=bool(at_bound[i]),
            lower=p.lower,
            upper=p.upper,
        )
        for i, p in enumerate(model.parameters)
    )
    bound = tuple(f"parameter '{e.name}' is at a bound ({e.value:g}); its uncertainty is not reliable" for e in estimates if e.at_bound)
    moving = free & ~np.array(at_bound, dtype=bool)  # a minimum on a bound is no Gauss-Newton step's
    warnings = (
        outcome.warnings + tuple(report.warnings) + bound + _loss_warnings(problem)
        + _robust_warnings(problem, options, residuals) + _unfinished_descent(outcome, problem.loss, jac, residuals, moving)
        + _worse_than_constant(problem, outcome, statistics)
    )
    return Summary(
        estimates,
        tuple(map(tuple, covariance.astype(float).tolist())),
        statistics,
        train_loss,
        val_loss,
        warnings,
        _parametric_predictor(model, theta),
    )


def _worse_than_constant(problem: Problem, outcome: SolveOutcome, statistics: Mapping[str, Any]) -> tuple[str, ...]:
    """An iterative fit that ended worse than a flat line through the mean (R² < 0): for a model
    that can be flat, a local minimum (the solver's restarts did not leave it)."""
    r2 = statistics.get("r2")
    if problem.loss != "mse" or not outcome.success or problem.model.is_linear or r2 is None or not float(r2) < 0:
        return ()
    return (
        f"the fit is worse than a constant (R² = {float(r2):.3g}): if the model can follow the data's mean, this is a "
        "local minimum — give other starting values (params=..., --init) or more of them (starts=8, --starts 8)",
    )


#: a gradient fit whose loss one Gauss-Newton step would lower by more than this fraction is unfinished
UNFINISHED_FRACTION = 1e-3


def _unfinished_descent(outcome: SolveOutcome, loss: str, jac: np.ndarray, residuals: np.ndarray, free: np.ndarray) -> tuple[str, ...]:
    """Gradient descent stopped by its epoch limit while still far above a least-squares minimum.

    One Gauss-Newton step from the end over the ``free`` parameters (exact for a model linear in
    its parameters, the local quadratic estimate otherwise) says how much lower the squared loss
    goes nearby. Least absolute deviations always get a note: gradient descent ends near their
    optimum, not on it, and the lm solver finds it.
    """
    if outcome.status == "max_epochs" and loss == "mae" and free.any():
        return (
            "gradient descent stopped at its epoch limit near, not at, the least-absolute-deviations optimum — "
            "fit with solver='lm' (--solver lm) for the exact one",
        )
    if outcome.status != "max_epochs" or loss != "mse" or not free.any():
        return ()
    with np.errstate(all="ignore"):
        total = float(np.dot(residuals, residuals))
        columns = jac[:, free]
        if not (np.isfinite(total) and total > 0 and np.isfinite(columns).all()):
            return ()
        step = np.linalg.lstsq(columns, residuals, rcond=None)[0]
        fitted = columns @ step
        drop = float(np.dot(fitted, fitted)) / total
    if not drop > UNFINISHED_FRACTION:
        return ()
    return (
        f"gradient descent stopped at its epoch limit short of a minimum: one Gauss-Newton step from where it "
        f"ended lowers the loss by {100.0 * drop:.3g}% — train for more epochs or with a larger learning rate, "
        "or fit with the lm solver",
    )


def _robust_variance(problem: Problem, options: FitOptions, residuals: np.ndarray, free: np.ndarray) -> Any:
    """A robust loss's ``s²`` for the covariance (None for least squares)."""
    from gradfit.solvers.least_squares import robust_error_variance

    return robust_error_variance(problem.loss, residuals, problem.loss_scale, int(np.count_nonzero(free)), options.absolute_sigma)


def _noise_variance(loss: str, robust: Any, residuals: np.ndarray) -> float:
    """A robust fit's estimate of the (weighted) errors' variance: its M-estimator's ``s²`` (the
    covariance's scale too), or for ``mae``, whose ``s²`` is the median's sampling variance
    (π/2 σ² for normal errors), the square of the residuals' :func:`~gradfit.stats.robust_spread`."""
    return stats.robust_spread(residuals) ** 2 if loss == "mae" else float(robust)


def _robust_warnings(problem: Problem, options: FitOptions, residuals: np.ndarray) -> tuple[str, ...]:
    """A robust loss whose scale leaves most residuals outside (its errors estimated from residuals)."""
    from gradfit.losses import SOLVER_LOSS
    from gradfit.solvers.least_squares import robust_scale_warning

    if options.absolute_sigma or problem.loss not in SOLVER_LOSS:
        return ()
    return robust_scale_warning(SOLVER_LOSS[problem.loss], residuals, problem.loss_scale)


def _predict(model: Any, inputs: Mapping[str, np.ndarray], theta: np.ndarray, outcome: SolveOutcome) -> np.ndarray:
    """The model at ``inputs``; a polynomial in the centred basis its exact solve recorded."""
    from gradfit.predict import centred_polynomial
    from gradfit.solvers.linear import POLYNOMIAL_BASIS

    centred = centred_polynomial(outcome.settings.get(POLYNOMIAL_BASIS), inputs)
    return model.predict(inputs, theta) if centred is None else centred


def _weighted(jac: np.ndarray, train: Split) -> np.ndarray:
    return jac if train.weights is None else jac * train.weights[:, None]


def _at_bound(problem: Problem, theta: np.ndarray) -> list[bool]:
    """Free parameters a gradient fit left on a bound: its projection clamps them onto it, and
    mapping back from the scaled variables rounds them by a few ulps of the start and the value."""
    lower, upper = np.asarray(problem.lower), np.asarray(problem.upper)
    start = np.abs(np.asarray(problem.theta0, dtype=theta.dtype))
    with np.errstate(invalid="ignore"):
        tol = 64.0 * np.finfo(theta.dtype).eps * (start + np.abs(theta))
        on_lower = np.isfinite(lower) & (theta - lower <= tol + 1e-12 * np.abs(lower))
        on = on_lower | (np.isfinite(upper) & (upper - theta <= tol + 1e-12 * np.abs(upper)))
    return (on & np.asarray(problem.free)).tolist()
