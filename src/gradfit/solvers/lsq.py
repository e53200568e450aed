"""Least-squares solvers for a single fit: the batched LM/GN of :mod:`least_squares` with K = 1.

Formula models pass their symbolic Jacobian (model and Jacobian columns in one compiled pass); other
parametric models get forward-mode autograd Jacobians from the solver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradfit.solvers.base import Problem, SolveOutcome

if TYPE_CHECKING:
    import torch

    from gradfit.config import FitOptions

__all__ = ["solve_lm", "solve_gn", "residual_functions"]


def residual_functions(problem: Problem) -> tuple[Any, Any]:
    """``residual_fn (K, p) -> (K, n)`` and, for formula models, ``jacobian_fn (K, p) -> (K, n, p)``."""
    from gradfit.model import FormulaModel

    model, train = problem.model, problem.train

    def residual_fn(theta: torch.Tensor) -> torch.Tensor:
        return train.residuals(model.predict(train.inputs, theta))

    if not isinstance(model, FormulaModel):
        return residual_fn, None

    def jacobian_fn(theta: torch.Tensor) -> torch.Tensor:
        _, jac = model.predict_and_jacobian(train.inputs, theta)
        return jac if train.weights is None else jac * train.weights[:, None]

    return residual_fn, jacobian_fn


def _solve(problem: Problem, options: FitOptions, method: str) -> SolveOutcome:
    from gradfit.losses import SOLVER_LOSS
    from gradfit.solvers.least_squares import LeastSquaresOptions, solve_least_squares

    residual_fn, jacobian_fn = residual_functions(problem)
    settings = LeastSquaresOptions(max_iter=options.max_iter) if options.max_iter else None
    solution = solve_least_squares(
        residual_fn,
        problem.theta0[None, :],
        jacobian_fn=jacobian_fn,
        lower=problem.lower,
        upper=problem.upper,
        fixed=~problem.free,
        loss=SOLVER_LOSS[problem.loss],
        f_scale=problem.loss_scale,
        method=method,
        options=settings,
    )
    status = solution.status[0]
    return SolveOutcome(
        theta=solution.theta[0],
        status="converged" if status.converged else status.name.lower(),
        message=status.value,
        success=status.converged,
        iterations=int(solution.n_iter[0]),
        at_bound=tuple(bool(b) for b in solution.at_bound[0].tolist()),
    )


def solve_lm(problem: Problem, options: FitOptions) -> SolveOutcome:
    """Levenberg-Marquardt with Moré scaling (see :mod:`gradfit.solvers.least_squares`)."""
    return _solve(problem, options, "lm")


def solve_gn(problem: Problem, options: FitOptions) -> SolveOutcome:
    """Gauss-Newton with step halving."""
    return _solve(problem, options, "gn")
