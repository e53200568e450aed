"""Exact least squares for models linear in their parameters: one QR solve, no iterations.

The model ``f = offset(x) + Σ θ_i · column_i(x)`` comes from the formula's expression tree
(:func:`gradfit.symbolic.linear_design`). Polynomials in one input are solved in a centred, scaled
variable with double-double refinement; other designs by an SVD of the column-equilibrated matrix
with iterative refinement (:mod:`gradfit.solvers.least_squares`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gradfit.errors import FitError
from gradfit.solvers.base import Problem, SolveOutcome

if TYPE_CHECKING:
    import torch

__all__ = ["solve_linear", "design_matrix", "least_squares_qr", "batched_least_squares"]



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


def batched_least_squares(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``min ||a x - b||`` for a batch (SVD of the column-equilibrated design, refined).

    Parameters
    ----------
    a
        Matrices ``(K, n, p)``; rows of zeros (padding) do not change the solution.
    b
        Right-hand sides ``(K, n)``.

    Returns
    -------
    (x, singular)
        Solutions ``(K, p)`` (NaN where singular) and a ``(K,)`` mask of rank-deficient systems.
    """
    import torch

    from gradfit.solvers.least_squares import linear_least_squares

    solution = linear_least_squares(a, b)
    singular = solution.rank < a.shape[-1]
    return torch.where(singular[:, None], torch.nan, solution.theta), singular


def polynomial_powers(model: Any, free: Sequence[bool]) -> tuple[str, list[int]] | None:
    """``(input, powers)`` when the free parameters multiply ``1, x, x**2, ... x**d`` of one input.

    Such models are solved by :func:`~gradfit.solvers.least_squares.polynomial_least_squares`, which
    keeps 10-11 digits on designs as ill-conditioned as NIST's Filip and Wampler problems.
    """
    from gradfit.formula import Bin, Num, Var

    _, columns = model.linear_trees()
    inputs, powers = set(), []
    for column, is_free in zip(columns, free):
        if not is_free:
            continue
        if isinstance(column, Num) and column.value == 1.0:
            powers.append(0)
        elif isinstance(column, Var):
            inputs.add(column.name)
            powers.append(1)
        elif isinstance(column, Bin) and column.op == "**" and isinstance(column.left, Var) and isinstance(column.right, Num) and float(column.right.value).is_integer():
            inputs.add(column.left.name)
            powers.append(int(column.right.value))
        else:
            return None
    if len(inputs) != 1 or sorted(powers) != list(range(len(powers))):
        return None
    return inputs.pop(), powers


def solve_linear(problem: Problem, options: Any = None) -> SolveOutcome:
    """Fit a linear-in-parameters formula model exactly."""
    import torch

    a, b = design_matrix(problem)
    free = problem.free
    b = b - (a[:, ~free] @ problem.theta0[~free] if bool((~free).any()) else 0.0)
    theta = problem.theta0.clone()
    theta[free], inverse_normal = _exact(problem, a[:, free], b)
    ok = bool(torch.isfinite(theta).all())
    message = (
        "solved exactly: one least-squares solve of the linear system (no iterations needed)"
        if ok
        else "the least-squares solve produced non-finite values — check the data for huge values"
    )
    return SolveOutcome(theta, "converged" if ok else "non_finite", message, ok, 1, inverse_normal=inverse_normal)


def _exact(problem: Problem, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The free parameters (and, for polynomials, an accurate ``(AᵀA)⁻¹``): polynomial solve when
    the design is powers of one input, else an SVD."""
    from gradfit.solvers.least_squares import polynomial_least_squares

    polynomial = polynomial_powers(problem.model, problem.free.tolist())
    if polynomial is None or a.dtype != _float64():
        return least_squares_qr(a, b), None
    condition = _scaled_condition(a)
    if not math.isfinite(condition) or (max(polynomial[1]) < 2 and condition < ILL_CONDITIONED):
        return least_squares_qr(a, b), None  # raises FitError when singular
    name, powers = polynomial
    weights = problem.train.weights
    target = b if weights is None else b / weights
    solution = polynomial_least_squares(problem.train.inputs[name], target, max(powers), weights)
    factor = solution.inverse_factor[0][powers]
    return solution.theta[0][powers], factor @ factor.mT


#: straight lines whose column-scaled design is worse conditioned than this get the polynomial
#: solver's refinement too (every polynomial of degree >= 2 does)
ILL_CONDITIONED = 1e4


def _scaled_condition(a: torch.Tensor) -> float:
    import torch

    norms = torch.linalg.vector_norm(a, dim=0)
    s = torch.linalg.svdvals(a / torch.where(norms > 0, norms, torch.ones_like(norms)))
    return float(s[0] / s[-1]) if float(s[-1]) > float(s[0]) * torch.finfo(a.dtype).eps * a.shape[0] else math.inf


def _float64() -> Any:
    import torch

    return torch.float64


def least_squares_qr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve one system ``min ||a x - b||`` (see :func:`batched_least_squares`).

    Raises
    ------
    FitError
        If ``a`` does not have full column rank.
    """
    x, singular = batched_least_squares(a[None], b[None])
    if bool(singular[0]):
        raise FitError(
            "the design matrix is singular: some parameters cannot be told apart by the data — "
            "remove a parameter or add varied data"
        )
    return x[0]
