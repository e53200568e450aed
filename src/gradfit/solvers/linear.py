"""Exact least squares for models linear in their parameters: one SVD solve, no iterations.

The model ``f = offset(x) + Σ θ_i · column_i(x)`` comes from the formula's expression tree
(:func:`gradfit.symbolic.linear_design`). Polynomials in one input are solved in a centred, scaled
variable with double-double refinement; other designs by an SVD of the column-equilibrated matrix
with iterative refinement (:mod:`gradfit.solvers.least_squares`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from gradfit.errors import FitError
from gradfit.solvers.base import Problem, SolveOutcome
from gradfit.solvers.least_squares import linear_least_squares, polynomial_least_squares

__all__ = ["solve_linear", "design_matrix", "least_squares_qr", "batched_least_squares", "non_finite_message", "polynomial_powers", "rounding_warning"]



def design_matrix(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """Weighted design matrix ``A (n, p)`` and right-hand side ``b (n,)`` of a linear formula model.

    ``A`` keeps every column so that indices match ``theta``; the solver uses the free ones.
    """
    train = problem.train
    offset, a = problem.model.design(train.inputs)
    b = train.y - offset
    if train.weights is not None:
        a, b = a * train.weights[:, None], b * train.weights
    return a, b


def batched_least_squares(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """Solve ``min ||a x - b||`` for a batch (SVD of the column-equilibrated design, refined).

    Parameters
    ----------
    a
        Matrices ``(K, n, p)`` (numpy or torch); rows of zeros (padding) do not change the solution.
    b
        Right-hand sides ``(K, n)``.

    Returns
    -------
    (x, singular)
        Solutions ``(K, p)`` (NaN where singular) and a ``(K,)`` mask of rank-deficient systems,
        as numpy arrays.
    """
    solution = linear_least_squares(a, b)
    singular = solution.rank < solution.theta.shape[-1]
    return np.where(singular[:, None], np.nan, solution.theta), singular


def polynomial_powers(model: Any, free: Sequence[bool]) -> tuple[str, list[int]] | None:
    """``(input, powers)`` when the free parameters multiply ``1, x, x**2, ... x**d`` of one input.

    Such models are solved by :func:`~gradfit.solvers.least_squares.polynomial_least_squares`, which
    keeps 10-11 digits on designs as ill-conditioned as NIST's Filip and Wampler problems.
    """
    _, columns = model.linear_trees()
    return _polynomial_powers(columns, tuple(free))


@functools.lru_cache(maxsize=256)
def _polynomial_powers(columns: tuple[Any, ...], free: tuple[bool, ...]) -> tuple[str, list[int]] | None:
    from gradfit.formula import Bin, Num, Var

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


@dataclass(frozen=True)
class _Exact:
    """An exact solve over the free parameters: values, ``(AᵀA)⁻¹`` when computed more accurately
    than the statistics would (polynomials, else None), weighted residuals, the SVD of ``A`` for
    the statistics, and what the result should warn about."""

    theta: np.ndarray
    inverse_normal: Any
    residuals: np.ndarray
    decomposition: Any
    warnings: tuple[str, ...] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)  # the polynomial's centred basis, for bands


def solve_linear(problem: Problem, options: Any = None) -> SolveOutcome:
    """Fit a linear-in-parameters formula model exactly."""
    a, b = design_matrix(problem)
    try:
        exact = _solve_free(problem, a, b)
    except FitError:  # a design made singular by NaN points is the model's domain, not the data's spread
        if _non_finite_rows(a, b):
            return _undefined(problem, a, b)
        raise
    ok = bool(np.isfinite(exact.theta).all())
    if not ok and _non_finite_rows(a, b):
        return _undefined(problem, a, b)
    message = (
        "solved exactly: one least-squares solve of the linear system (no iterations needed)"
        if ok
        else "the least-squares solve produced non-finite values — check the data for huge values"
    )
    return SolveOutcome(
        exact.theta, "converged" if ok else "non_finite", message, ok, 1,
        inverse_normal=exact.inverse_normal, residuals=exact.residuals, jacobian=a,
        decomposition=exact.decomposition, warnings=exact.warnings, settings=exact.settings,
    )


def _solve_free(problem: Problem, a: np.ndarray, b: np.ndarray) -> _Exact:
    """:func:`_exact` over the free parameters (fixed ones move to the right-hand side)."""
    free = np.asarray(problem.free)
    if free.all():
        return _exact(problem, a, b)
    theta = np.array(problem.theta0, copy=True)
    exact = _exact(problem, a[:, free], b - a[:, ~free] @ theta[~free])
    theta[free] = exact.theta
    return replace(exact, theta=theta)


def _singular(a: np.ndarray, problem: Problem) -> str:
    """Why the design is singular; in float32 rounding may be the cause (a column of large offsets)."""
    text = singular_message(a, _free_names(problem))
    if a.dtype == np.float32:
        text += " (in float32 the data may only look so after rounding: fit in float64, the default)"
    return text


def _non_finite_rows(a: np.ndarray, b: np.ndarray) -> int:
    """Rows of the design or target that are NaN or inf."""
    return int((~(np.isfinite(a).all(axis=1) & np.isfinite(b))).sum())


def _undefined(problem: Problem, a: np.ndarray, b: np.ndarray) -> SolveOutcome:
    """The outcome of a model that is NaN or inf on some points: not fitted, and why."""
    message = non_finite_message(_non_finite_rows(a, b), b.size)
    return SolveOutcome(np.array(problem.theta0, copy=True), "non_finite", message, False, 0)


def non_finite_message(count: int, total: int) -> str:
    """What to tell a user whose linear model is NaN or inf on ``count`` of ``total`` points."""
    return (
        f"the model is not finite (NaN or inf) on {count} of {total} points — e.g. the log or square root of a "
        "negative number, or a division by zero there; change the model or leave those points out"
    )


def _exact(problem: Problem, a: np.ndarray, b: np.ndarray) -> _Exact:
    """One SVD solve, or the polynomial solve when the design is powers of one input and the SVD
    alone could lose digits (degree 2 and up, or a scaled condition number above
    :data:`ILL_CONDITIONED`)."""
    solution = linear_least_squares(a, b)
    full_rank = solution.rank[0] == a.shape[-1]
    polynomial = polynomial_powers(problem.model, problem.free.tolist())
    fixed_hint = _fixed_polynomial_hint(problem, float(solution.condition[0]))
    if polynomial is None or a.dtype != np.float64 or (max(polynomial[1]) < 2 and full_rank and solution.condition[0] < ILL_CONDITIONED):
        if not full_rank:
            raise FitError(_singular(a, problem) + (f"; {fixed_hint}" if fixed_hint else ""))
        return _Exact(solution.theta[0], None, solution.residuals[0], solution.decomposition[0], (fixed_hint,) if fixed_hint else ())
    name, powers = polynomial  # solved in a centred basis: the raw design may only look singular
    weights = problem.train.weights
    target = b if weights is None else b / weights
    inputs = problem.train.inputs[name]
    accurate = polynomial_least_squares(inputs, target, max(powers), weights)
    if accurate.rank[0] < len(powers):
        raise FitError(_singular(a, problem))
    factor = accurate.inverse_factor[0][powers]
    residuals = accurate.residuals[0]
    in_y = residuals if weights is None else residuals / weights
    centred = _pure_polynomial(problem)
    rounding = rounding_warning(name, inputs, target, float(accurate.coefficient_rounding[0]), in_y, centred=centred)
    warning = rounding + ((fixed_hint,) if fixed_hint else ())
    settings = {POLYNOMIAL_BASIS: _centred_basis(name, accurate)} if centred else {}
    return _Exact(accurate.theta[0][powers], factor @ factor.T, residuals, solution.decomposition[0], warning, settings)


def _pure_polynomial(problem: Problem) -> bool:
    """Whether the fitted curve is the solved polynomial itself: every coefficient free and no term
    without a parameter (``+ x**3``, ``+ sin(x)``), which the centred basis leaves out, and which
    predictions in it would therefore miss."""
    from gradfit.formula import Num

    offset, _ = problem.model.linear_trees()
    return bool(np.asarray(problem.free).all()) and isinstance(offset, Num) and offset.value == 0.0


def _fixed_polynomial_hint(problem: Problem, condition: float) -> str:
    """For a polynomial of one input with some coefficients fixed, whose free columns in raw powers
    are ill-conditioned: the fixed terms are subtracted and the rest solved in those powers (only a
    complete polynomial is solved in a centred basis), which loses digits. Else an empty text."""
    free = np.asarray(problem.free)
    if free.all() or not condition > ILL_CONDITIONED:
        return ""
    whole = polynomial_powers(problem.model, [True] * free.size)
    if whole is None:
        return ""
    name = whole[0]
    x = np.asarray(problem.train.inputs[name])
    centre = 0.5 * (float(x.min()) + float(x.max()))
    return (
        f"with fixed coefficients this polynomial is solved in raw powers of {name}, whose design is ill-conditioned "
        f"(scaled condition number {condition:.2g}), and digits may be lost — centre {name} (fit in {name} - {centre:.10g}) "
        "or leave the coefficients free"
    )


def _centred_basis(name: str, solution: Any) -> dict[str, Any]:
    """The record of a polynomial's centred basis (:attr:`LinearSolution.centred_basis`) that its
    predictions and bands are computed in (:mod:`gradfit.predict`), as JSON-ready numbers."""
    centre, half, coefficients, factor = solution.centred_basis
    return {
        "input": name, "centre": float(centre[0]), "half_width": float(half[0]),
        "coefficients": coefficients[0].tolist(), "factor": factor[0].tolist(),
    }


#: the key, in a result's settings, of a polynomial's centred basis (:func:`gradfit.predict.prediction_bands`)
POLYNOMIAL_BASIS = "polynomial_basis"


#: coefficient rounding above this fraction of the residuals' RMS is worth a warning
ROUNDING_FRACTION = 0.01
#: ...and above this fraction of the data's RMS (below it, it is rounding of the data themselves)
ROUNDING_FLOOR = 1e-10


def rounding_warning(
    name: str, x: np.ndarray, y: np.ndarray, rounding: float, residuals: np.ndarray, *, centred: bool = True
) -> tuple[str, ...]:
    """A warning when a polynomial's coefficients, rounded, move its curve by more than
    :data:`ROUNDING_FRACTION` of the residuals and :data:`ROUNDING_FLOOR` of ``y`` (inputs far
    from 0); else nothing. ``rounding`` and ``residuals`` are in the units of ``y``; ``centred``:
    whether gradfit's own predictions use the centred basis (else they too are that far off)."""
    spread = float(np.sqrt(np.mean(residuals**2)))
    floor = ROUNDING_FLOOR * float(np.sqrt(np.mean(y**2)))
    if not (rounding > ROUNDING_FRACTION * spread and rounding > floor):
        return ()
    centre = 0.5 * (float(np.min(x)) + float(np.max(x)))
    return (
        f"the coefficients in powers of {name} cancel at these {name} (around {centre:.10g}): rounded to floating "
        f"point they move the curve by {rounding:.3g} (RMS over the data, against residuals of RMS {spread:.3g}), so "
        f"predictions computed from these coefficients are at least that far off "
        + (
            "(gradfit's own predictions, figures and bands use the centred basis it solved in) — to use the coefficients elsewhere"
            if centred
            else "(gradfit's own predictions too: the model has terms outside the polynomial) —"
        )
        + f" centre {name} (fit in {name} - {centre:.10g})",
    )


def singular_message(design: np.ndarray, names: Sequence[str] | None = None) -> str:
    """Why a design without full column rank has no unique solution, naming the parameters
    (``names``, one per column) that load on the directions the data do not see."""
    from gradfit.stats import identifiable

    return singular_text(names or [], identifiable(design).tolist() if names else [])


def singular_text(names: Sequence[str], seen: Sequence[bool]) -> str:
    """The message of a singular design whose parameters ``names`` the data see or not (``seen``)."""
    lost = [name for name, ok in zip(names, seen) if not ok]
    if len(lost) == 1:  # alone on a direction the data do not see: its column is zero
        return f"the design matrix is singular: parameter {lost[0]} has no effect on the model at these data — remove or fix it, or add varied data"
    who = f"parameters {', '.join(lost)}" if lost else "some parameters"
    return f"the design matrix is singular: {who} cannot be told apart by the data — remove or fix one of them, or add varied data"


def _free_names(problem: Problem) -> list[str]:
    return [p.name for p, free in zip(problem.model.parameters, np.asarray(problem.free).tolist()) if free]


#: straight lines whose column-scaled design is worse conditioned than this get the polynomial
#: solver's refinement too (every polynomial of degree >= 2 does)
ILL_CONDITIONED = 1e4


def least_squares_qr(a: Any, b: Any) -> np.ndarray:
    """Solve one system ``min ||a x - b||`` (see :func:`batched_least_squares`).

    Raises
    ------
    FitError
        If ``a`` does not have full column rank.
    """
    x, singular = batched_least_squares(np.asarray(a)[None], np.asarray(b)[None])
    if bool(singular[0]):
        raise FitError(singular_message(np.asarray(a)))
    return x[0]
