"""Least-squares solvers for a single fit: the batched LM/GN of :mod:`least_squares` with K = 1.

Formula models are solved on numpy: their compiled numpy program gives the residuals and the
symbolic Jacobian in one pass, and no torch is involved. Other parametric models (Python functions of
tensors) are evaluated on torch, and the solver differentiates them by autograd.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from gradfit.solvers.base import Problem, SolveOutcome
from gradfit.stats import as_array

if TYPE_CHECKING:
    from gradfit.config import FitOptions

__all__ = ["solve_lm", "solve_gn", "solve_fixed", "residual_functions", "starting_points"]


def residual_functions(problem: Problem) -> dict[str, Any]:
    """Keyword arguments of the solver for ``problem``'s model.

    Formula models give ``residual_and_jacobian_fn`` on numpy arrays (residuals ``(K, n)`` and the
    symbolic Jacobian ``(K, n, p)`` in one pass); other models give a torch ``residual_fn`` (on
    :meth:`Problem.on_torch`), differentiated by autograd.
    """
    model = problem.model
    if getattr(model, "formula", None) is None:
        train = problem.on_torch().train

        def residual_fn(theta: Any) -> Any:
            return train.residuals(model.predict(train.inputs, theta))

        return {"residual_fn": residual_fn}
    train = problem.train

    def residual_and_jacobian_fn(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        prediction, jac = model.predict_and_jacobian(train.inputs, theta)
        if train.weights is not None:
            jac = jac * train.weights[:, None]
        return train.residuals(prediction), jac

    return {"residual_fn": None, "residual_and_jacobian_fn": residual_and_jacobian_fn}


#: least absolute deviations: soft_l1 scales, relative to the spread of the least-squares residuals,
#: down which the solves go; s² ρ((r/s)²) / (2s) = √(s² + r²) - s tends to |r| - s as s shrinks,
#: and its minimiser to the LAD one
LAD_SCALES = tuple(10.0**-k for k in range(13))


def _solve(problem: Problem, options: FitOptions, method: str) -> SolveOutcome:
    from gradfit.losses import SOLVER_LOSS


    starts = starting_points(problem.theta0, problem.free, options.starts, options.seed)
    if problem.loss == "mae":
        return _least_absolute_deviations(problem, options, method, starts)
    solution = _run(problem, options, method, starts, SOLVER_LOSS[problem.loss], problem.loss_scale)
    return _outcome(solution, len(starts))


def _run(problem: Problem, options: FitOptions, method: str, starts: np.ndarray, loss: str, scale: float) -> Any:
    """One batched least-squares solve of ``problem`` from ``starts`` with ``loss`` at ``scale``."""
    from gradfit.solvers.least_squares import flat_cost, solve_least_squares, user_options

    settings = user_options(options.max_iter)
    flat = flat_cost(problem.train.y, problem.train.weights)
    functions = residual_functions(problem)
    if functions["residual_fn"] is not None:  # torch functions: torch starting values
        starts = problem.on_torch().theta0.new_tensor(starts)
    return solve_least_squares(
        functions.pop("residual_fn"),
        starts,
        **functions,
        lower=problem.lower,
        upper=problem.upper,
        fixed=~np.asarray(problem.free),
        loss=loss,  # type: ignore[arg-type]
        f_scale=scale,
        method=method,  # type: ignore[arg-type]
        options=settings,
        flat=flat if len(starts) == 1 else None,  # several starts explore already
    )


def _least_absolute_deviations(problem: Problem, options: FitOptions, method: str, starts: np.ndarray) -> SolveOutcome:
    """The ``mae`` loss by continuation: least squares from ``starts``, then soft_l1 from the best
    point found with the scales :data:`LAD_SCALES` times the residuals' spread there, each solve
    starting where the last ended. The outcome is the last solve's."""
    from gradfit.stats import robust_spread

    solution = _run(problem, options, method, starts, "linear", 1.0)
    outcome = _outcome(solution, len(starts))
    spread = robust_spread(outcome.residuals) if outcome.residuals is not None else 0.0
    if not outcome.success:
        return replace(outcome, message=f"{outcome.message} (least absolute deviations: in the least-squares solve they start from)")
    if not spread > 0:  # an exact fit: |r| = 0 is the LAD optimum too
        return outcome
    iterations, first_warnings = outcome.iterations, outcome.warnings
    for relative in LAD_SCALES:
        solution = _run(problem, options, method, outcome.theta[None, :], "soft_l1", relative * spread)
        outcome = _outcome(solution, 1)
        iterations += outcome.iterations
        if not outcome.success:  # the message says at which scale it stopped
            break
    message = f"{outcome.message} (least absolute deviations: soft_l1 solves down to scale {relative * spread:.3g})"
    return replace(outcome, message=message, iterations=iterations, warnings=first_warnings + outcome.warnings)


def _outcome(solution: Any, n_starts: int) -> SolveOutcome:
    """The best start of a least-squares solution, as a :class:`SolveOutcome`."""
    from gradfit.solvers.least_squares import Status

    best = best_start(as_array(solution.cost), [s.converged for s in solution.status])
    status = solution.status[best]
    message = status.value + (f" (best of {n_starts} starting points)" if n_starts > 1 else "")
    # a non-finite start's residuals and Jacobian were zeroed inside the solver: the statistics
    # evaluate the model instead (NaN), rather than report an exact fit
    finite = status is not Status.NON_FINITE
    restarted = solution.restarted is not None and bool(solution.restarted[best])
    return SolveOutcome(
        theta=as_array(solution.theta[best]),
        status="converged" if status.converged else status.name.lower(),
        message=message,
        success=status.converged,
        iterations=int(solution.n_iter[best]),
        at_bound=tuple(as_array(solution.at_bound[best]).tolist()),
        residuals=as_array(solution.residuals[best]) if finite else None,
        jacobian=as_array(solution.jacobian[best]) if finite else None,
        warnings=(RESTARTED_WARNING,) if restarted else (),
    )


#: the warning of a fit whose starting values gave a cost that is not finite
RESTARTED_WARNING = (
    "the model is not finite at the starting values (NaN or inf on some points, or residuals that overflow "
    "when squared), so the fit started again from jittered values and this result is from one of them — "
    "give starting values where the model is finite on every point"
)


def starting_points(theta0: Any, free: Any, count: int, seed: int = 0) -> np.ndarray:
    """``count`` starting points ``(count, p)``: ``theta0`` first, then jittered copies of it.

    Free parameters are multiplied by log-uniform factors in [0.1, 10]; parameters starting at zero
    get values of either sign and magnitude in [0.01, 1]. Fixed parameters keep their values.
    """
    theta0, free = np.asarray(theta0), np.asarray(free, dtype=bool)
    if count == 1:
        return theta0[None, :]
    rng = np.random.default_rng(seed)
    shape = (count - 1, theta0.size)
    factors = 10.0 ** (2.0 * rng.random(shape) - 1.0)
    signs = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    jittered = np.where(theta0 != 0, theta0 * factors, 0.1 * signs * factors)
    return np.concatenate([theta0[None, :], np.where(free, jittered, theta0)]).astype(theta0.dtype)


def best_start(cost: np.ndarray, converged: Any) -> int:
    """Index of the best start: converged before not converged, then the lowest cost."""
    cost = np.where(np.isfinite(cost), cost, np.inf)
    rank = cost + np.where(np.asarray(converged, dtype=bool), 0.0, np.inf)
    return int(np.argmin(rank if np.isfinite(rank).any() else cost))


def solve_lm(problem: Problem, options: FitOptions) -> SolveOutcome:
    """Levenberg-Marquardt with Moré scaling (see :mod:`gradfit.solvers.least_squares`)."""
    return _solve(problem, options, "lm")


def solve_gn(problem: Problem, options: FitOptions) -> SolveOutcome:
    """Gauss-Newton with step halving."""
    return _solve(problem, options, "gn")


def solve_fixed(problem: Problem, options: FitOptions) -> SolveOutcome:
    """No parameter is free: the model at the given values, for its statistics against the data."""
    return SolveOutcome(
        theta=np.array(problem.theta0, copy=True),
        status="converged",
        message="nothing to estimate: every parameter is fixed, and the model is evaluated at the given values",
        success=True,
        iterations=0,
    )
