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


def residual_functions(problem: Problem) -> dict[str, Any]:
    """Keyword arguments of the solver: ``residual_fn (K, p) -> (K, n)``, or for formula models
    ``residual_and_jacobian_fn`` giving residuals and the symbolic Jacobian ``(K, n, p)`` in one pass."""
    from gradfit.model import FormulaModel

    model, train = problem.model, problem.train

    def residual_fn(theta: torch.Tensor) -> torch.Tensor:
        return train.residuals(model.predict(train.inputs, theta))

    if not isinstance(model, FormulaModel):
        return {"residual_fn": residual_fn}

    def residual_and_jacobian_fn(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prediction, jac = model.predict_and_jacobian(train.inputs, theta)
        if train.weights is not None:
            jac = jac * train.weights[:, None]
        return train.residuals(prediction), jac

    return {"residual_fn": residual_fn, "residual_and_jacobian_fn": residual_and_jacobian_fn}


def _solve(problem: Problem, options: FitOptions, method: str) -> SolveOutcome:
    from gradfit.losses import SOLVER_LOSS
    from gradfit.solvers.least_squares import LeastSquaresOptions, solve_least_squares

    settings = LeastSquaresOptions(max_iter=options.max_iter) if options.max_iter else None
    starts = starting_points(problem.theta0, problem.free, options.starts, options.seed)
    functions = residual_functions(problem)
    solution = solve_least_squares(
        functions.pop("residual_fn"),
        starts,
        **functions,
        lower=problem.lower,
        upper=problem.upper,
        fixed=~problem.free,
        loss=SOLVER_LOSS[problem.loss],
        f_scale=problem.loss_scale,
        method=method,
        options=settings,
    )
    best = _best_start(solution)
    status = solution.status[best]
    message = status.value + (f" (best of {len(starts)} starting points)" if len(starts) > 1 else "")
    return SolveOutcome(
        theta=solution.theta[best],
        status="converged" if status.converged else status.name.lower(),
        message=message,
        success=status.converged,
        iterations=int(solution.n_iter[best]),
        at_bound=tuple(bool(b) for b in solution.at_bound[best].tolist()),
    )


def starting_points(theta0: torch.Tensor, free: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` starting points ``(count, p)``: ``theta0`` first, then jittered copies of it.

    Free parameters are multiplied by log-uniform factors in [0.1, 10]; parameters starting at zero
    get values of either sign and magnitude in [0.01, 1]. Fixed parameters keep their values.
    """
    import torch

    if count == 1:
        return theta0[None, :]
    generator = torch.Generator().manual_seed(seed)
    shape = (count - 1, theta0.numel())
    factors = torch.pow(10.0, 2.0 * torch.rand(shape, generator=generator, dtype=theta0.dtype) - 1.0)
    signs = torch.where(torch.rand(shape, generator=generator, dtype=theta0.dtype) < 0.5, -1.0, 1.0)
    jittered = torch.where(theta0 != 0, theta0 * factors, 0.1 * signs * factors)
    return torch.cat([theta0[None, :], torch.where(free, jittered, theta0)])


def _best_start(solution: Any) -> int:
    """Index of the best start: converged before not converged, then the lowest cost."""
    import torch

    cost = torch.where(torch.isfinite(solution.cost), solution.cost, torch.inf)
    rank = cost + torch.where(solution.converged.to(cost.device), 0.0, torch.inf)
    return int(torch.argmin(rank if torch.isfinite(rank).any() else cost))


def solve_lm(problem: Problem, options: FitOptions) -> SolveOutcome:
    """Levenberg-Marquardt with Moré scaling (see :mod:`gradfit.solvers.least_squares`)."""
    return _solve(problem, options, "lm")


def solve_gn(problem: Problem, options: FitOptions) -> SolveOutcome:
    """Gauss-Newton with step halving."""
    return _solve(problem, options, "gn")
