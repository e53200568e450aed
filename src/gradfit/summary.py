"""From a solver's outcome to what a result reports: losses, uncertainties, statistics, predictor.

Every solver's parameters get the same treatment: the Jacobian at the solution (symbolic for
formulas, forward-mode autograd otherwise), covariance, standard errors, confidence intervals and fit
statistics from :mod:`gradfit.stats`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gradfit.result import ParameterEstimate

if TYPE_CHECKING:
    import torch

    from gradfit.config import FitOptions
    from gradfit.objective import Split
    from gradfit.solvers.base import Problem, SolveOutcome

__all__ = ["Summary", "summarize", "model_jacobian"]


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


def model_jacobian(model: Any, inputs: Mapping[str, torch.Tensor], theta: torch.Tensor) -> torch.Tensor:
    """Jacobian ``(n, p)`` of the predictions at ``theta``: closed form if the model has one."""
    import torch

    closed = model.jacobian(inputs, theta)
    if closed is not None:
        return closed
    return torch.func.jacfwd(lambda t: model.predict(inputs, t))(theta)


def summarize(problem: Problem, outcome: SolveOutcome, options: FitOptions) -> Summary:
    """Compute losses, uncertainties and statistics for a solver's outcome."""
    import torch

    from gradfit.losses import get_loss

    loss_fn = get_loss(problem.loss, problem.loss_scale)
    predict = _prediction_function(problem, outcome)
    with torch.no_grad():
        train_loss = float(loss_fn(problem.train.residuals(predict(problem.train.inputs))))
        val_loss = None if problem.val is None else float(loss_fn(problem.val.residuals(predict(problem.val.inputs))))
    if outcome.theta is None:
        parameters: tuple[ParameterEstimate, ...] = ()
        return Summary(parameters, None, {}, train_loss, val_loss, (), _numpy_predictor(problem, predict))
    return _parametric_summary(problem, outcome, options, train_loss, val_loss, predict)


def _prediction_function(problem: Problem, outcome: SolveOutcome) -> Callable[[Mapping[str, torch.Tensor]], torch.Tensor]:
    if outcome.predict is not None:
        return outcome.predict
    theta = outcome.theta
    return lambda inputs: problem.model.predict(inputs, theta)


def _numpy_predictor(problem: Problem, predict: Callable[[Any], torch.Tensor]) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    import torch

    dtype, device = problem.train.y.dtype, problem.train.y.device

    def predictor(columns: Mapping[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            inputs = {k: torch.as_tensor(np.asarray(v, dtype=float), dtype=dtype, device=device) for k, v in columns.items()}
            return predict(inputs).detach().cpu().numpy().astype(float)

    return predictor


def _parametric_summary(
    problem: Problem,
    outcome: SolveOutcome,
    options: FitOptions,
    train_loss: float,
    val_loss: float | None,
    predict: Callable[[Any], torch.Tensor],
) -> Summary:
    from gradfit import stats

    theta = outcome.theta
    train = problem.train
    jac = _weighted(model_jacobian(problem.model, train.inputs, theta).detach(), train)
    residuals = train.residuals(predict(train.inputs)).detach()
    report = stats.fit_report(
        jac,
        residuals,
        train.y,
        weights=train.weights,
        absolute_sigma=options.absolute_sigma,
        confidence=options.confidence,
        free=problem.free,
        param_names=problem.model.param_names,
    )
    covariance, stderr, half = report.covariance.cpu(), report.stderr.cpu(), report.ci_half_width.cpu()
    if outcome.inverse_normal is not None:
        covariance, stderr, half = _accurate_covariance(outcome.inverse_normal, report, problem.free, options)
    at_bound = outcome.at_bound or _at_bound(problem, theta)
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
        for i, p in enumerate(problem.model.parameters)
    )
    warnings = tuple(report.warnings) + tuple(
        f"parameter '{e.name}' is at a bound ({e.value:g}); its uncertainty is not reliable"
        for e in estimates
        if e.at_bound
    )
    return Summary(
        estimates,
        tuple(tuple(float(v) for v in row) for row in covariance.tolist()),
        dict(report.statistics),
        train_loss,
        val_loss,
        warnings,
        _numpy_predictor(problem, predict),
    )


def _accurate_covariance(inverse_normal: torch.Tensor, report: Any, free: torch.Tensor, options: FitOptions) -> tuple:
    """Covariance, standard errors and CI half-widths from a solver's own ``(JᵀJ)⁻¹``."""
    import torch

    scale = 1.0 if options.absolute_sigma else report.statistics["redchi"]
    covariance = torch.full_like(report.covariance, float("nan"))
    index = torch.nonzero(free).flatten()
    covariance[index[:, None], index[None, :]] = inverse_normal.to(covariance) * scale
    stderr = torch.sqrt(torch.diagonal(covariance))
    ratio = report.ci_half_width / report.stderr
    return covariance.cpu(), stderr.cpu(), (stderr * ratio).cpu()


def _weighted(jac: torch.Tensor, train: Split) -> torch.Tensor:
    return jac if train.weights is None else jac * train.weights[:, None]


def _at_bound(problem: Problem, theta: torch.Tensor) -> list[bool]:
    import torch

    span = torch.clamp(problem.upper - problem.lower, max=1.0)
    tol = 1e-10 * torch.where(torch.isfinite(span), span, torch.ones_like(span))
    on = (theta - problem.lower <= tol) | (problem.upper - theta <= tol)
    return (on & problem.free).tolist()
