"""Exact least squares for models linear in their parameters: one QR solve, no iterations.

The model ``f = offset(x) + Σ θ_i · column_i(x)`` comes from the formula's expression tree
(:func:`gradfit.symbolic.linear_design`). The design matrix is column-equilibrated, solved by
Householder QR, and the solution improved by iterative refinement.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradfit.errors import FitError
from gradfit.solvers.base import Problem, SolveOutcome

if TYPE_CHECKING:
    import torch

__all__ = ["solve_linear", "design_matrix", "least_squares_qr", "batched_least_squares"]

#: refinement steps after the first QR solve
REFINEMENT_STEPS = 2


def design_matrix(problem: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted design matrix ``A (n, p)`` and right-hand side ``b (n,)`` of a linear formula model.

    ``A`` keeps every column so that indices match ``theta``; the solver uses the free ones.
    """
    train = problem.train
    offset, a = problem.model.design(train.inputs)
    b = train.y - offset
    if train.weights is not None:
        a, b = a * train.weights[:, None], b * train.weights
    return a, b


def batched_least_squares(
    a: torch.Tensor, b: torch.Tensor, steps: int = REFINEMENT_STEPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``min ||a x - b||`` for a batch by column-scaled Householder QR with refinement.

    Parameters
    ----------
    a
        Matrices ``(..., n, p)``; rows of zeros (padding) do not change the solution.
    b
        Right-hand sides ``(..., n)``.
    steps
        Refinement steps: each solves for the correction from the current residual.

    Returns
    -------
    (x, singular)
        Solutions ``(..., p)`` (NaN where singular) and a ``(...,)`` mask of rank-deficient systems.
    """
    import torch

    norms = torch.linalg.vector_norm(a, dim=-2, keepdim=True)
    scaled = a / torch.where(norms > 0, norms, torch.ones_like(norms))
    q, r = torch.linalg.qr(scaled)
    diagonal = r.diagonal(dim1=-2, dim2=-1).abs()
    tiny = diagonal.amax(-1) * torch.finfo(a.dtype).eps * a.shape[-2]
    singular = (diagonal.amin(-1) <= tiny) if diagonal.shape[-1] else torch.zeros(diagonal.shape[:-1], dtype=torch.bool)
    r = r + torch.diag_embed(torch.where(singular[..., None], 1.0, 0.0).expand_as(diagonal))
    z = torch.linalg.solve_triangular(r, (q.mT @ b[..., None]), upper=True)
    for _ in range(steps):
        residual = b[..., None] - scaled @ z
        z = z + torch.linalg.solve_triangular(r, q.mT @ residual, upper=True)
    x = z[..., 0] / torch.where(norms > 0, norms, torch.ones_like(norms))[..., 0, :]
    return torch.where(singular[..., None], torch.nan, x), singular


def least_squares_qr(a: torch.Tensor, b: torch.Tensor, steps: int = REFINEMENT_STEPS) -> torch.Tensor:
    """Solve one system ``min ||a x - b||`` (see :func:`batched_least_squares`).

    Raises
    ------
    FitError
        If ``a`` does not have full column rank.
    """
    x, singular = batched_least_squares(a, b, steps)
    if bool(singular):
        raise FitError(
            "the design matrix is singular: some parameters cannot be told apart by the data — "
            "remove a parameter or add varied data"
        )
    return x


def solve_linear(problem: Problem, options: Any = None) -> SolveOutcome:
    """Fit a linear-in-parameters formula model exactly."""
    import torch

    a, b = design_matrix(problem)
    free = problem.free
    fixed_part = a[:, ~free] @ problem.theta0[~free]
    theta = problem.theta0.clone()
    theta[free] = least_squares_qr(a[:, free], b - fixed_part)
    ok = bool(torch.isfinite(theta).all())
    message = (
        "solved exactly: one least-squares solve of the linear system (no iterations needed)"
        if ok
        else "the least-squares solve produced non-finite values — check the data for huge values"
    )
    return SolveOutcome(theta, "converged" if ok else "non_finite", message, ok, 1)
