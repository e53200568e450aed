"""Batched Levenberg-Marquardt and Gauss-Newton for K independent least-squares problems at once.

Every fit ``k`` minimises ``cost_k = ½ Σ_i s² ρ((r_ki / s)²)`` over its own parameters ``θ_k``
(``ρ(z) = z`` for the plain sum of squares, ``s`` is ``f_scale``). All fits advance together as
arrays ``(K, ...)``; each keeps its own trust region, status and iteration count, and a fit that
fails (NaN, zero Jacobian) is masked out without disturbing the others. There is no Python loop
over K.

The mathematics lives in small pure functions; :func:`solve_least_squares` only keeps the books.
The solver's own arithmetic on ``(K, p)`` arrays runs in numpy, whose per-operation overhead is a
fraction of eager torch's — on NIST-sized problems that overhead, not the floating-point work, is
the cost. The model and its Jacobian come either from numpy functions (a formula's compiled numpy
program: no torch at all) or from torch functions (autograd, devices); the solution comes back in
the kind of array the starting values were given in. A single unbounded least-squares fit
(K = 1, the common case) takes a scalar twin of the same loop (Python floats around one SVD per
accepted point), several times cheaper per iteration; tests check both paths agree.

Exact linear problems have their own entry points: :func:`linear_least_squares` (SVD of the
column-equilibrated design) and :func:`polynomial_least_squares` (centred basis plus
double-double iterative refinement, for the ill-conditioned polynomials of NIST's Filip and
Wampler problems).

Method
------
* **Scaling** (Moré 1978): parameters are measured in units of ``D`` = running maximum of the
  Jacobian's column norms, so the trust region and the tests do not depend on parameter units;
  each held within 1e6 of its column's norm now, so that a column that has shrunk by decades
  keeps its direction in the SVD (:func:`more_scaling`).
* **Step**: one SVD of the scaled Jacobian per accepted point, ``J D⁻¹ = U S Vᵀ``. The damped step
  for any ``λ`` is ``D δ = -V (s g / (s² + λ))`` with ``g = Uᵀ r``: a rejected step costs a few
  element-wise operations and no new factorisation, and the SVD never squares the condition number
  (the normal equations would), which NIST's ill-conditioned problems need.
* **Trust region** (Moré 1978, as in MINPACK): ``λ = 0`` when the Gauss-Newton step fits in the
  region, else ``λ`` solves ``‖D δ(λ)‖ = Δ`` by Newton's method on the secular equation (cheap with
  the SVD). ``Δ`` halves after a poor step and doubles the step after a good one.
* **Gauss-Newton** (``method="gn"``): the minimum-norm pseudo-inverse step, halved until the cost
  decreases.
* **Bounds**: projection with an active set. A parameter on a bound whose gradient pushes outwards
  is frozen for the step; trial points are clipped into the box; the gain ratio uses the step
  actually taken. Parameters that end on a bound are flagged in ``at_bound``.
* **Fixed parameters**: their Jacobian columns are zeroed, so they never move.
* **Robust losses**: ``huber``, ``soft_l1``, ``cauchy`` with scipy's definitions; residuals and
  Jacobian are rescaled so the Gauss-Newton model matches the robust cost to second order
  (Triggs et al. 2000), as ``scipy.optimize.least_squares`` does.
* **Jacobian**: ``residual_and_jacobian_fn`` (one pass, e.g. a formula and its symbolic
  derivatives), or ``jacobian_fn`` (evaluated only at accepted points), else exact autograd
  (:func:`autograd_jacobian`, also only at accepted points; the trial's graph is reused).
* **Convergence** (per fit, at every accepted point; none depends on the damping, so a tiny damped
  step never passes for convergence): the relative reduction of the cost that a full Gauss-Newton
  step could still bring is at most ``ftol``; or that step changes every free parameter by at most
  ``xtol`` relative; or every cosine between residuals and a Jacobian column is at most ``gtol``;
  or the residuals are exactly zero. A fit that no step can move any more (the trust region shrunk
  to rounding) has converged by ``xtol`` if that full step is below it — its residuals are rounding
  errors, as on noise-free data — and is ``stalled`` otherwise.
* **Rounding noise**: once a Gauss-Newton step could gain less than 1e-10 of the cost, differences
  of the cost are mostly rounding noise; a step that does not raise the cost by more than 1e-9
  relative is then taken where the Gauss-Newton gain (a scaled gradient norm, computed without that
  cancellation) falls. The gradient still points to the minimum, which is what NIST's certified
  values (LRE ≥ 9 on every problem) need; the gain test keeps a large-residual fit, whose
  Gauss-Newton steps overshoot, from wandering about its minimum.
* **Restarts**: a fit that did not converge, or converged where a parameter's Jacobian column
  vanished (a parameter running off to infinity), is started again from jittered copies of its
  starting point (each value times ``exp(σ N(0,1))``, σ growing from 1 by ½ per round; at most
  200 iterations each), all fits of a round in one batch, until it converges properly. The lowest
  cost is kept (at a tie, a converged result); the status always describes the result returned:
  one still converged where a Jacobian column vanished is no minimum and ends ``singular``. A
  start where the cost is not finite is started again the same way (the result says so:
  :attr:`LeastSquaresSolution.restarted`). A user's own iteration limit or tolerance turns restarts
  off (:func:`user_options`): it is then the stopping rule, and restarts would run past it.
"""

from __future__ import annotations

import copy
import enum
import functools
import math
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from dataclasses import fields as fields_of
from functools import cached_property
from statistics import NormalDist
from typing import Any, Literal

import numpy as np

from gradfit.errors import ModelError, OptionError
from gradfit.losses import robust_rho
from gradfit.stats import as_array, column_norms, identifiable, scaled_svd, total_sum_of_squares

__all__ = [
    "Status",
    "LeastSquaresOptions",
    "user_options",
    "LeastSquaresSolution",
    "solve_least_squares",
    "flat_cost",
    "autograd_jacobian",
    "LOSSES",
    "LinearSolution",
    "linear_least_squares",
    "polynomial_least_squares",
]

Tensor = Any  # torch.Tensor, imported only where torch functions are given
Array = np.ndarray
ResidualFn = Callable[[Any], Any]
JacobianFn = Callable[[Any], Any]
#: ``rows -> {"residual_fn": ..., ...}``: the functions of some fits of a batch (see ``solve_least_squares``)
RowsFn = Callable[[Any], Mapping[str, Any]]
LOSSES = ("linear", "huber", "soft_l1", "cauchy")


class Status(enum.Enum):
    """How one fit ended. The value is the message shown to the user."""

    RUNNING = "still running (internal state, never returned)"
    CONVERGED = "converged: relative reduction of the sum of squares below ftol"
    CONVERGED_XTOL = "converged: relative change of the parameters below xtol"
    CONVERGED_GTOL = "converged: gradient below gtol (residuals orthogonal to every Jacobian column)"
    EXACT = "converged: the residuals are exactly zero"
    MAX_ITER = "stopped at the iteration limit before converging — raise max_iter or give better starting values"
    STALLED = (
        "stopped: no step lowers the sum of squares although the convergence tests are not met — "
        "the result is approximate; rescale the parameters or give better starting values"
    )
    SINGULAR = (
        "stopped: the model does not depend on some parameter here (its Jacobian column is zero, or vanished as "
        "the parameter ran off towards infinity); "
        "check the model and the starting values"
    )
    NON_FINITE = (
        "the sum of squares is not finite at the starting values (the model or its derivatives are NaN or inf "
        "on some points there, or the residuals overflow when squared) — give starting values where the model "
        "is finite on every point, or rescale the data"
    )

    @property
    def converged(self) -> bool:
        """Whether the fit met a convergence test."""
        return self in _CONVERGED

    @property
    def code(self) -> int:
        """Integer code of the status (its position in the enum)."""
        return _CODES[self]


_MEMBERS = tuple(Status)
_CODES = {status: i for i, status in enumerate(_MEMBERS)}
_CONVERGED = frozenset({Status.CONVERGED, Status.CONVERGED_XTOL, Status.CONVERGED_GTOL, Status.EXACT})
_RUN, _FTOL, _XTOL, _GTOL, _EXACT, _MAXIT, _STALL, _SING, _NONFIN = range(len(_MEMBERS))

#: relative Gauss-Newton gain below which cost differences are mostly rounding noise
_NOISE_REGION = 1e-10
#: relative cost increase tolerated in that region (rounding noise, not a real increase)
_NOISE_SLACK = 1e-9
#: a Jacobian column this much smaller than at the start counts as vanished (see `degenerate`)
_VANISHED = 1e-8
#: Moré's scale of a parameter stays within this factor of its Jacobian column's norm (:func:`more_scaling`)
SCALE_MEMORY = 1e6
#: iteration budget of each restart (a fit that needs more from a random start rarely gets there)
_RESTART_ITER = 200


@dataclass(frozen=True)
class LeastSquaresOptions:
    """Settings of :func:`solve_least_squares`. The defaults reach NIST accuracy untuned.

    Attributes
    ----------
    ftol
        Stop when a full Gauss-Newton step could lower the cost by at most this fraction. The gain
        is quadratic in the distance to the minimum, hence the small default: 1e-20 leaves about
        1e-10 relative error in well-determined parameters.
    xtol
        Stop when a full Gauss-Newton step changes every free parameter by at most
        ``xtol * (|θ| + xtol)``.
    gtol
        Stop when every cosine between the residual vector and a Jacobian column is at most this.
    max_iter
        Trial steps per fit and start (restarts not included: see ``restarts``).
    initial_radius
        Trust region at the start, as a multiple of ``‖D θ0‖`` (MINPACK's ``factor``; 1 is more
        careful than MINPACK's 100 and solves more NIST problems from their far starting values).
    restarts
        Rounds of jittered restarts for fits that failed (see the module notes); 0 disables them.
    restart_seed
        Seed of the restarts' jitter (results are deterministic).
    """

    ftol: float = 1e-20
    xtol: float = 1e-10
    gtol: float = 1e-15
    max_iter: int = 1000
    initial_radius: float = 1.0
    restarts: int = 8
    restart_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("ftol", "xtol", "gtol"):
            if not getattr(self, name) >= 0:
                raise OptionError(f"least-squares option {name} must be >= 0, got {getattr(self, name)}")
        if not self.initial_radius > 0:
            raise OptionError(f"least-squares option initial_radius must be > 0, got {self.initial_radius}")
        if self.max_iter < 1 or self.restarts < 0:
            raise OptionError("least-squares options need max_iter >= 1 and restarts >= 0")


@dataclass(frozen=True)
class LeastSquaresSolution:
    """Result of :func:`solve_least_squares` for K fits, as arrays of ``theta0``'s kind (numpy
    arrays, or tensors in the dtype and on the device of ``theta0``).

    Attributes
    ----------
    theta
        Parameters ``(K, p)``.
    residuals
        Residuals at ``theta`` ``(K, n)``, as ``residual_fn`` returns them (no robust rescaling).
    jacobian
        Jacobian of the residuals at ``theta`` ``(K, n, p)``, fixed parameters' columns included.
    cost
        ``½ Σ s² ρ((r/s)²)`` per fit ``(K,)``: half the sum of squares for ``loss="linear"``.
    n_iter
        Trial steps per fit ``(K,)``, restarts included.
    n_fev
        Residual evaluations per fit ``(K,)``.
    status
        One :class:`Status` per fit.
    at_bound
        ``(K, p)`` bool: free parameter that ended on a bound.
    restarted
        ``(K,)`` bool (numpy): the cost was not finite at the fit's starting values, and the
        result is from a jittered restart (see the module notes).
    """

    theta: Tensor
    residuals: Tensor
    jacobian: Tensor
    cost: Tensor
    n_iter: Tensor
    n_fev: Tensor
    status: list[Status]
    at_bound: Tensor
    restarted: Array | None = None

    @property
    def status_code(self) -> Any:
        """Status codes ``(K,)`` (see :attr:`Status.code`)."""
        return self._like(np.array([s.code for s in self.status], dtype=np.int64))

    @property
    def message(self) -> list[str]:
        """The message of every fit's status."""
        return [s.value for s in self.status]

    @property
    def converged(self) -> Any:
        """``(K,)`` bool: which fits converged."""
        return self._like(np.array([s.converged for s in self.status], dtype=bool))

    def _like(self, array: Array) -> Any:
        if isinstance(self.theta, np.ndarray):
            return array
        import torch

        return torch.from_numpy(array)

    @property
    def success(self) -> bool:
        """Whether every fit converged."""
        return all(s.converged for s in self.status)


# ------------------------------------------------------------------------------------ Jacobians


def autograd_jacobian(residual_fn: ResidualFn, theta: Tensor) -> tuple[Tensor, Tensor]:
    """Residuals ``(K, n)`` and their exact Jacobian ``(K, n, p)`` at ``theta (K, p)`` by autograd.

    Fits are independent, so ``∂r_k/∂θ_k`` comes for all fits at once. The columns come from a
    double backward pass: ``g(u) = Jᵀu`` is linear in ``u`` and its derivative along the basis
    vectors ``e_j`` is ``J e_j`` — forward mode in effect. It replaces ``torch.func.jvp``/``jacfwd``
    because in torch 2.x on CPU every forward-mode product of a dual and a plain tensor takes a slow
    Python path (~250 µs per operation); the double backward was 2-3 times faster at every size we
    measured (K = 1 to 10,000).
    """
    import torch

    with torch.enable_grad():
        point = theta.detach().requires_grad_(True)
        residuals = residual_fn(point)
        return residuals.detach(), _jacobian_from_graph(residuals, point).detach()


def _jacobian_from_graph(residuals: Tensor, point: Tensor) -> Tensor:
    """Jacobian of ``residuals (K, n)`` with respect to ``point (K, p)`` from a recorded graph."""
    import torch

    k, p = point.shape
    zeros = residuals.new_zeros(residuals.shape + (p,))
    if not residuals.requires_grad:
        return zeros
    with torch.enable_grad():
        u = torch.zeros_like(residuals, requires_grad=True)
        (g,) = torch.autograd.grad(residuals, point, u, create_graph=True)
        if not g.requires_grad:
            return zeros
        basis = torch.eye(p, dtype=point.dtype, device=point.device)[:, None, :].expand(p, k, p)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*performance drop.*")
                (columns,) = torch.autograd.grad(g, u, basis, is_grads_batched=True, allow_unused=True)
        except RuntimeError:
            columns = _columns_one_by_one(g, u, p)
    if columns is None:
        return zeros
    return columns.permute(1, 2, 0)


def _columns_one_by_one(g: Tensor, u: Tensor, p: int) -> Tensor:
    """Fallback of :func:`_jacobian_from_graph` for operations that vmap cannot batch."""
    import torch

    columns = []
    for j in range(p):
        (col,) = torch.autograd.grad(g[:, j].sum(), u, retain_graph=True, allow_unused=True)
        columns.append(torch.zeros_like(u) if col is None else col)
    return torch.stack(columns)


# ------------------------------------------------------------------------------- robust losses


def robust_cost(loss: str, residuals: Array, f_scale: float) -> Array:
    """Cost per fit ``½ Σ s² ρ((r/s)²)`` ``(K,)``; NaN or ``inf`` where residuals are not finite."""
    if loss == "linear":
        return 0.5 * np.einsum("kn,kn->k", residuals, residuals)
    return (0.5 * f_scale**2) * robust_rho(loss, (residuals / f_scale) ** 2)[0].sum(-1)


def robust_system(loss: str, residuals: Array, jacobian: Array, f_scale: float) -> tuple[Array, Array]:
    """Residuals and Jacobian rescaled so that ``½‖r̃ + J̃δ‖²`` models the robust cost (pure).

    With ``a = ρ' + 2ρ''z`` (floored at machine epsilon): ``J̃ = √a J`` and ``r̃ = ρ'/√a r``.
    """
    if loss == "linear":
        return residuals, jacobian
    z = (residuals / f_scale) ** 2
    _, rho1, rho2 = robust_rho(loss, z)
    scale = np.sqrt(np.maximum(rho1 + 2.0 * rho2 * z, np.finfo(residuals.dtype).eps))
    return residuals * (rho1 / scale), jacobian * scale[..., None]


def robust_psi(loss: str, residuals: Array, f_scale: float) -> tuple[Array, Array]:
    """``ψ(r) = r ρ'(z)`` and ``ψ'(r) = ρ'(z) + 2zρ''(z)``, ``z = (r/s)²``: half the derivatives of a
    point's cost ``s² ρ(z)`` (``ψ = r``, ``ψ' = 1`` for least squares)."""
    z = (residuals / f_scale) ** 2
    _, rho1, rho2 = robust_rho(loss, z)
    return residuals * rho1, rho1 + 2.0 * rho2 * z


def robust_error_variance(
    loss: str, residuals: Array, f_scale: float, n_params: int, absolute_sigma: bool, mask: Array | None = None
) -> Array | float | None:
    """``s²`` of a robust fit's covariance ``s² (JᵀJ)⁻¹``; None for least squares (``Σr²/(n - p)``).

    ``loss`` is gradfit's name (:data:`gradfit.losses.LOSSES`). Estimated from the residuals:
    :func:`gradfit.stats.m_estimator_variance` for the robust least-squares losses,
    :func:`gradfit.stats.median_regression_variance` for ``mae``. With absolute sigma the residuals
    ``r/σ`` are standard normal by assumption, and ``s² = E ψ² / (E ψ')²`` over that distribution
    (the inverse of the loss's efficiency: 1.053 for huber at scale 1.345, π/2 for ``mae``).
    """
    from gradfit.losses import SOLVER_LOSS
    from gradfit.stats import m_estimator_variance, median_regression_variance

    if loss == "mae":
        return math.pi / 2.0 if absolute_sigma else median_regression_variance(residuals, n_params, mask)
    solver_loss = SOLVER_LOSS.get(loss, "linear")
    if solver_loss == "linear":
        return None
    if absolute_sigma:
        return _normal_error_variance(solver_loss, float(f_scale))
    psi, dpsi = robust_psi(solver_loss, np.asarray(residuals), f_scale)
    return m_estimator_variance(psi, dpsi, n_params, mask)


def robust_scale_warning(loss: str, residuals: Array, f_scale: float) -> tuple[str, ...]:
    """A warning when fewer than half the (weighted) residuals lie within a robust loss's scale: the
    M-estimator's variance then rests on those few points (its mean ``ψ'``), and the standard errors
    come out too small as often as not. It names a scale near the residuals' spread (1.4826 MAD)."""
    from gradfit.stats import robust_spread

    r = np.asarray(residuals)
    inside = int(np.count_nonzero(np.abs(r) <= f_scale))
    if loss == "linear" or 2 * inside >= r.size:
        return ()
    spread = robust_spread(r)
    return (
        f"only {inside} of {r.size} residuals lie within the loss scale {f_scale:g}, so the robust standard errors "
        f"rest on those few points and are unreliable — set the loss scale near the residuals' spread "
        f"(1.4826·MAD = {spread:.3g})",
    )


@functools.lru_cache(maxsize=64)
def _normal_error_variance(loss: str, f_scale: float) -> float:
    """``E ψ(ε)² / (E ψ'(ε))²`` for ``ε ~ N(0, 1)``.

    Huber's in closed form (its ``ψ'`` steps at the scale ``δ``, where the trapezoidal rule is only
    first-order accurate: 3e-4 off at ``δ = 1``): ``E ψ' = P = 2Φ(δ) - 1`` and
    ``E ψ² = P - 2δφ(δ) + 2δ²(1 - Φ(δ))``. The smooth losses by the trapezoidal rule on ±12
    (converged to ~1e-10).
    """
    if loss == "huber":
        normal, delta = NormalDist(), f_scale
        inside = 2.0 * normal.cdf(delta) - 1.0
        tails = 2.0 * delta * delta * normal.cdf(-delta)
        return (inside - 2.0 * delta * normal.pdf(delta) + tails) / inside**2
    eps = np.linspace(-12.0, 12.0, 48_001)
    density = np.exp(-0.5 * eps * eps) / math.sqrt(2.0 * math.pi)
    psi, dpsi = robust_psi(loss, eps, f_scale)
    return float(np.trapezoid(psi * psi * density, eps) / np.trapezoid(dpsi * density, eps) ** 2)


# ------------------------------------------------------------------------------ the pure steps


@dataclass(frozen=True)
class Decomposition:
    """The scaled system at the current points, factored once for all trial steps.

    ``J̃ D⁻¹ = U diag(s) Vᵀ`` with ``J̃`` the (robust-scaled, masked) Jacobian; ``q = min(n, p)``.
    Quantities only some steps need are computed on first use.
    """

    d: Array  # (K, p) Moré scaling, > 0
    vt: Array  # (K, p, q) = V
    s: Array  # (K, q)
    g: Array  # (K, q) Uᵀ r̃
    rank: Array  # (K, q) singular values above the rank cut-off
    col_norms: Array  # (K, p) column norms of J̃
    res: Array  # (K, n) r̃
    gn_coef: Array  # (K, q) V-basis coefficients of D δ_GN
    gn_norm: Array  # (K,) ‖D δ_GN‖
    gn_gain: Array  # (K,) ½‖U Uᵀ r̃‖²: cost reduction a full Gauss-Newton step predicts

    @cached_property
    def sg(self) -> Array:
        """``s g`` (K, q): V-basis components of the scaled gradient ``D⁻¹ J̃ᵀ r̃``."""
        return self.s * self.g

    @cached_property
    def s2(self) -> Array:
        """``s²`` (K, q)."""
        return self.s * self.s

    @cached_property
    def res_norm2(self) -> Array:
        """``‖r̃‖²`` (K,)."""
        return np.einsum("kn,kn->k", self.res, self.res)


def more_scaling(d_prev: Array, col_norms: Array) -> Array:
    """Moré's scaling: the largest norm each Jacobian column has had, but at most
    :data:`SCALE_MEMORY` times its norm now (pure; zero columns get 1).

    Kept whole, the memory of a column that has since shrunk by many orders of magnitude (a
    parameter grown by as many, or a start where an exponential was huge) drives its scaled column
    below the SVD's rank cut-off, and its direction is lost: the fit stops where a Gauss-Newton step
    would still lower the cost, and calls it converged.
    """
    d = np.maximum(d_prev, col_norms)
    d = np.where(col_norms > 0, np.minimum(d, SCALE_MEMORY * col_norms), d)
    return np.where(d == 0, 1.0, d)


def decompose(jac: Array, res: Array, d_prev: Array) -> Decomposition:
    """Update the scaling and factor the scaled Jacobian (pure)."""
    col_norms = column_norms(jac)
    d = more_scaling(d_prev, col_norms)
    u, s, vh = np.linalg.svd(jac / d[:, None, :], full_matrices=False)
    g = np.einsum("knq,kn->kq", u, res)
    n, p = jac.shape[1:]
    rank = s > s[:, :1] * (max(n, p) * np.finfo(s.dtype).eps)
    if rank.all():
        gn_coef = -g / s
        g_rank = g
    else:
        gn_coef = np.where(rank, -g / np.where(rank, s, 1.0), 0.0)
        g_rank = np.where(rank, g, 0.0)
    return Decomposition(
        d=d,
        vt=np.swapaxes(vh, 1, 2),
        s=s,
        g=g,
        rank=rank,
        col_norms=col_norms,
        res=res,
        gn_coef=gn_coef,
        gn_norm=np.sqrt(np.einsum("kq,kq->k", gn_coef, gn_coef)),
        gn_gain=0.5 * np.einsum("kq,kq->k", g_rank, g_rank),
    )


def damped_coefficients(dec: Decomposition, damping: Array) -> Array:
    """V-basis coefficients of the scaled damped step ``D δ``; ``λ = 0`` gives Gauss-Newton (pure)."""
    lam = damping[:, None]
    usable = dec.rank | (lam > 0)
    denom = np.where(usable, dec.s2 + lam, 1.0)
    return np.where(usable, -dec.sg / denom, 0.0)


def step_from_coefficients(dec: Decomposition, coef: Array) -> Array:
    """Parameter step ``δ = D⁻¹ V coef`` (pure)."""
    return np.einsum("kpq,kq->kp", dec.vt, coef) / dec.d


def trust_region_damping(dec: Decomposition, radius: Array, start: Array, iterations: int = 10) -> Array:
    """Damping ``λ`` whose step has scaled length ``‖D δ(λ)‖ ≈ radius`` (pure).

    ``λ = 0`` where the Gauss-Newton step fits in the region. Elsewhere Newton's method on Moré's
    secular equation ``1/Δ - 1/‖D δ(λ)‖ = 0``, nearly linear in ``λ``, from ``start`` (clipped at
    0; convergence is monotone from below). Each fit stops once its length is within 10% of ``Δ``
    (as :func:`_damping_single` does), so that its damping does not depend on the rest of the batch.
    """
    need = dec.gn_norm > 1.1 * radius
    if not need.any():
        return np.zeros_like(radius)
    lam = np.where(need, start, 0.0)
    for _ in range(iterations):
        denom = dec.s2 + lam[:, None]
        coef = np.where(dec.rank | (lam[:, None] > 0), dec.sg / np.where(denom > 0, denom, 1.0), 0.0)
        norm2 = np.einsum("kq,kq->k", coef, coef)
        norm = np.sqrt(norm2)
        need = need & (np.abs(norm - radius) > 0.1 * radius)
        if not need.any():
            break
        slope = np.einsum("kq,kq->k", coef * coef, 1.0 / np.where(denom > 0, denom, np.inf))
        newton = lam + (norm / radius - 1.0) * norm2 / np.where(slope > 0, slope, 1.0)
        lam = np.where(need & (slope > 0), np.maximum(newton, 0.0), lam)
        need = need & (slope > 0)  # a fit whose slope vanished keeps its damping, as _damping_single
    return lam


def predicted_reduction(dec: Decomposition, coef: Array) -> Array:
    """Reduction of ``½‖r̃‖²`` the linear model predicts for the scaled step ``V coef`` (pure)."""
    w = dec.s * coef
    return -np.einsum("kq,kq->k", dec.g, w) - 0.5 * np.einsum("kq,kq->k", w, w)


def coefficients_of_step(dec: Decomposition, step: Array) -> Array:
    """V-basis coefficients of an arbitrary step (e.g. one clipped to bounds) (pure)."""
    return (np.swapaxes(dec.vt, 1, 2) @ (step * dec.d)[..., None])[..., 0]


def gain_ratio(cost: Array, trial_cost: Array, predicted: Array) -> Array:
    """Actual over predicted reduction (pure); NaN or ``-inf`` for non-finite trials, which every
    test below treats as a failed step (comparisons with NaN are false)."""
    return (cost - trial_cost) / np.maximum(predicted, np.finfo(cost.dtype).tiny)


def update_radius(radius: Array, step_norm: Array, ratio: Array, damping: Array) -> Array:
    """Trust-region radius after a trial (pure; Moré's rules).

    Half the step taken when the model was poor (``ρ < ¼``, or a non-finite trial); twice the step
    when it was good (``ρ > ¾``, or the undamped step worked); unchanged otherwise.
    """
    poor = ~(ratio >= 0.25)
    good = (ratio > 0.75) | ((damping == 0) & ~poor)
    return np.select([poor, good], [0.5 * np.minimum(radius, step_norm), np.maximum(radius, 2.0 * step_norm)], radius)


def convergence_code(dec: Decomposition, theta: Array, cost: Array, options: LeastSquaresOptions) -> Array:
    """Status code per fit: a convergence code, or RUNNING (pure).

    Precedence: exact fit (zero cost), ``ftol``, ``xtol``, ``gtol`` (see the module notes). The
    step and gradient tests only run where a Gauss-Newton step could gain at most 1% of the cost:
    far from a minimum neither can pass, and skipping them saves most of the work.
    """
    near = dec.gn_gain <= 0.01 * cost
    if not near.any():
        return np.where(cost <= 0, _EXACT, _RUN)
    x_ok = small_gn_step(dec, theta, options)
    # cosine_j = |J̃_jᵀ r̃| / (‖J̃_j‖ ‖r̃‖), with J̃ᵀ r̃ = D V (s g)
    gradient = np.abs(dec.d * np.einsum("kpq,kq->kp", dec.vt, dec.sg))
    g_ok = (gradient <= options.gtol * dec.col_norms * np.sqrt(dec.res_norm2)[:, None]).all(-1)
    return np.select(
        [cost <= 0, dec.gn_gain <= options.ftol * cost, near & x_ok, near & g_ok], [_EXACT, _FTOL, _XTOL, _GTOL], _RUN
    )


def small_gn_step(dec: Decomposition, theta: Array, options: LeastSquaresOptions) -> Array:
    """Fits whose full Gauss-Newton step changes every free parameter by at most ``xtol`` relative (pure)."""
    gn_step = step_from_coefficients(dec, dec.gn_coef)
    return (np.abs(gn_step) <= options.xtol * (np.abs(theta) + options.xtol)).all(-1)


def stall_code(small_step: Array) -> Array:
    """Code of fits that no step can move (pure): converged by ``xtol`` where the full Gauss-Newton
    step is below it, stalled elsewhere.

    With exact derivatives, a point where no step lowers the cost while Gauss-Newton puts the
    minimum within ``xtol`` is the minimum to within the rounding of the cost itself: the residuals
    are rounding errors (noise-free data), so their part along the Jacobian (the gain the ``ftol``
    test reads) is rounding noise too, a sizeable fraction of the cost.
    """
    return np.where(small_step, _XTOL, _STALL)


def active_set(theta: Array, gradient: Array, lower: Array, upper: Array) -> Array:
    """Parameters on a bound whose descent direction points out of the box (pure)."""
    return ((theta <= lower) & (gradient > 0)) | ((theta >= upper) & (gradient < 0))


def at_bound(theta: Array, lower: Array, upper: Array, free: Array) -> Array:
    """Free parameters on a finite bound, within 1e-12 of its magnitude (pure).

    Steps are clipped onto a bound exactly, so a bound of 0 means 0: a parameter of 1e-13 above a
    bound of 0 (a baseline in picoamperes) is a value, not the bound.
    """
    near_lo = np.isfinite(lower) & (theta - lower <= 1e-12 * np.abs(lower))
    near_hi = np.isfinite(upper) & (upper - theta <= 1e-12 * np.abs(upper))
    return (near_lo | near_hi) & free


def degenerate(jac: Array, theta: Array, res: Array, start_norms: Array, free: Array, bound: Array) -> Array:
    """Fits where a free parameter stopped affecting the model (pure).

    A Jacobian column shrunk to ``1e-8`` of its size at the start may mean the parameter ran off
    towards infinity: a spurious stationary point (a column zero from the start is a parameter the
    data never saw: not identifiable, a warning of the fit statistics, as for collinear columns). It does when a relative
    change of the parameter moves the model by nothing (``|θ_j|·‖J_j‖`` below ``1e-8`` of the
    largest such effect and of ``‖r‖``: a rate in ``exp(-b x)``), or by nothing other parameters
    cannot undo (it loads on a null direction of the column-equilibrated Jacobian: MGH09's
    ``b1, b3, b4`` growing together). A column that shrank because the parameter or another one grew by orders of
    magnitude (``A`` in ``A·exp(-E/T)`` going from 1 to 1e13, ``a`` in ``a·x^b`` as ``b`` falls)
    still moves the model in its own way, and is no sign.
    """
    norms = column_norms(jac)
    shrunk = (norms <= _VANISHED * start_norms) & (start_norms > 0) & free & ~bound
    if not shrunk.any():
        return np.zeros(shrunk.shape[0], dtype=bool)
    effect = np.abs(theta) * norms
    reference = np.maximum(np.max(np.where(free, effect, 0.0), axis=-1), np.sqrt(np.einsum("kn,kn->k", res, res)))
    no_effect = effect <= _VANISHED * reference[:, None]
    undone = ~identifiable(jac)  # fixed parameters' zero columns are null on their own
    return np.any(shrunk & (no_effect | undone), axis=-1)


def restart_points(start: Array, free: Array, seed: int, round_: int, spread: float = 1.0) -> Array:
    """Jittered starting points: free values times ``exp(spread·N(0,1))``; zeros get ``0.1·N(0,1)``.

    Each fit draws from its own generator, seeded by ``(seed, round_)`` and the bits of its own
    starting point, so that its restarts do not depend on which other fits share the batch.
    """
    bits = np.ascontiguousarray(start, dtype=np.float64).view(np.uint64).reshape(start.shape)
    noise = np.stack([np.random.default_rng([seed, round_, *row.tolist()]).standard_normal(start.shape[1:] + (2,)) for row in bits])
    jittered = np.where(start != 0, start * np.exp(spread * noise[..., 0]), 0.1 * noise[..., 1])
    return np.where(free, jittered, start).astype(start.dtype)


@functools.lru_cache(maxsize=64)
def effective_options(options: LeastSquaresOptions, dtype: np.dtype[Any]) -> LeastSquaresOptions:
    """Tolerances no tighter than the floating-point type can meet (float32 needs looser ones)."""
    eps = float(np.finfo(dtype).eps)
    return replace(
        options,
        ftol=max(options.ftol, 100.0 * eps**2),
        xtol=max(options.xtol, 1000.0 * eps),
        gtol=max(options.gtol, eps),
    )


# ----------------------------------------------------------------------------- the bookkeeping


class _Evaluator:
    """The model boundary for torch functions: residuals at trial points (numpy out), the Jacobian
    only when asked for (from the recorded graph, or ``jacobian_fn``)."""

    def __init__(
        self,
        residual_fn: ResidualFn | None,
        jacobian_fn: JacobianFn | None,
        combined_fn: Callable[[Any], tuple[Any, Any]] | None,
        like: Tensor,
    ) -> None:
        self.residual_fn = residual_fn
        self.jacobian_fn = jacobian_fn
        self.combined_fn = combined_fn
        self.dtype = like.dtype
        self.device = like.device
        self.rows_fn: RowsFn | None = None
        self.origin: Array | None = None  # the batch's rows these functions evaluate (None: all)

    def residuals(self, theta: Array) -> tuple[Array, Any]:
        import torch

        point = self._tensor(theta)
        k = theta.shape[0]
        if self.combined_fn is not None:
            with torch.no_grad():
                res, jac = self.combined_fn(point)
            return _to_numpy(_check_residuals(res, k), theta.dtype), (point, jac)
        if self.jacobian_fn is not None:
            with torch.no_grad():
                return _to_numpy(_check_residuals(self.residual_fn(point), k), theta.dtype), (point, None)  # type: ignore[misc]
        with torch.enable_grad():
            point.requires_grad_(True)
            res = _check_residuals(self.residual_fn(point), k)  # type: ignore[misc]
        return _to_numpy(res.detach(), theta.dtype), (point, res)

    def jacobian(self, handle: Any, np_dtype: np.dtype[Any]) -> Array:
        import torch

        point, extra = handle
        if self.combined_fn is None and self.jacobian_fn is None:
            return _to_numpy(_jacobian_from_graph(extra, point).detach(), np_dtype)
        if self.combined_fn is None:
            with torch.no_grad():
                extra = self.jacobian_fn(point)  # type: ignore[misc]
        return _to_numpy(_check_jacobian(extra, *point.shape), np_dtype)

    def _tensor(self, theta: Array) -> Tensor:
        import torch

        point = torch.from_numpy(theta)
        if point.dtype != self.dtype or self.device.type != "cpu":
            point = point.to(device=self.device, dtype=self.dtype)
        return point


class _NumpyEvaluator:
    """The model boundary for numpy functions: no conversions, no torch."""

    def __init__(
        self,
        residual_fn: ResidualFn | None,
        jacobian_fn: JacobianFn | None,
        combined_fn: Callable[[Array], tuple[Array, Array]] | None,
    ) -> None:
        if combined_fn is None and jacobian_fn is None:
            raise ModelError("numpy residual functions need a Jacobian: give jacobian_fn or residual_and_jacobian_fn")
        self.residual_fn = residual_fn
        self.jacobian_fn = jacobian_fn
        self.combined_fn = combined_fn
        self.rows_fn: RowsFn | None = None
        self.origin: Array | None = None  # the batch's rows these functions evaluate (None: all)

    def residuals(self, theta: Array) -> tuple[Array, Any]:
        k = theta.shape[0]
        if self.combined_fn is not None:
            res, jac = self.combined_fn(theta)
            return _as_dtype(_check_residuals(res, k), theta.dtype), (theta, jac)
        return _as_dtype(_check_residuals(self.residual_fn(theta), k), theta.dtype), (theta, None)  # type: ignore[misc]

    def jacobian(self, handle: Any, np_dtype: np.dtype[Any]) -> Array:
        point, jac = handle
        if jac is None:
            jac = self.jacobian_fn(point)  # type: ignore[misc]
        return _as_dtype(_check_jacobian(jac, *point.shape), np_dtype)


def _check_residuals(res: Any, k: int) -> Any:
    if getattr(res, "ndim", None) != 2 or res.shape[0] != k or res.shape[1] == 0:
        got = tuple(res.shape) if hasattr(res, "shape") else type(res).__name__
        raise ModelError(f"residual_fn must return an array of shape (K, n) with K = {k}, n >= 1; got {got}")
    return res


def _check_jacobian(jac: Any, k: int, p: int) -> Any:
    if getattr(jac, "ndim", None) != 3 or jac.shape[0] != k or jac.shape[2] != p:
        got = tuple(jac.shape) if hasattr(jac, "shape") else type(jac).__name__
        raise ModelError(f"the Jacobian must be an array of shape (K, n, p) = ({k}, n, {p}), got {got}")
    return jac


def _as_dtype(array: Array, dtype: np.dtype[Any]) -> Array:
    array = np.asarray(array)
    return array if array.dtype == dtype else array.astype(dtype)


def _to_numpy(tensor: Tensor, dtype: np.dtype[Any]) -> Array:
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    array = tensor.detach().numpy()
    return array if array.dtype == dtype else array.astype(dtype)


@dataclass(frozen=True)
class _Problem:
    """Everything fixed during a solve."""

    evaluator: _Evaluator | _NumpyEvaluator
    free: Array  # (K, p) bool
    lower: Array  # (K, p)
    upper: Array  # (K, p)
    bounded: bool
    loss: str
    f_scale: float
    method: str
    options: LeastSquaresOptions
    dtype: np.dtype[Any]
    all_free: bool = True
    any_free: Array | None = None
    single: bool = False  # use the K = 1 fast path
    on_iteration: Callable[[], None] | None = None  # may raise to abandon the solve
    flat: Array | None = None  # (K,) the cost of the best constant model (see flat_cost)


@dataclass
class _State:
    """The running state of K fits (mutable bookkeeping)."""

    theta: Array
    res: Array
    cost: Array
    jac: Array
    dec: Decomposition
    radius: Array  # trust-region radius (lm) or step fraction (gn)
    damping: Array  # last λ: the next solve's starting guess
    code: Array
    n_iter: Array
    noisy: Array  # cost differences are rounding noise at this point
    start_norms: Array  # (K, p) Jacobian column norms at the starting point


def _system(prob: _Problem, theta: Array, res: Array, jac: Array, d_prev: Array) -> tuple[Decomposition, Array]:
    """Decomposition of the scaled, masked system at ``theta``, and which fits have a zero Jacobian."""
    res_t, jac_t = robust_system(prob.loss, res, jac, prob.f_scale)
    if not prob.all_free:
        jac_t = jac_t * prob.free[:, None, :]
    if prob.bounded:
        zero = ~np.any(jac_t != 0, axis=1)
        gradient = (np.swapaxes(jac_t, 1, 2) @ res_t[..., None])[..., 0]
        jac_t = jac_t * ~active_set(theta, gradient, prob.lower, prob.upper)[:, None, :]
        dec = decompose(jac_t, res_t, d_prev)
    else:
        dec = decompose(jac_t, res_t, d_prev)
        zero = dec.col_norms == 0
    if not zero.any():
        return dec, np.zeros(theta.shape[0], dtype=bool)
    return dec, np.all(zero | ~prob.free, axis=-1) & prob.any_free


def _status(prob: _Problem, dec: Decomposition, theta: Array, cost: Array, singular: Array) -> tuple[Array, Array]:
    """Status code at a new point, and whether the cost is too noisy to judge steps there."""
    code = convergence_code(dec, theta, cost, prob.options)
    if singular.any():
        code = np.where(singular, _SING, code)
    return code, dec.gn_gain <= _NOISE_REGION * cost


def _initial_state(prob: _Problem, theta0: Array) -> _State:
    res, handle = prob.evaluator.residuals(theta0)
    jac = prob.evaluator.jacobian(handle, prob.dtype)
    cost = robust_cost(prob.loss, res, prob.f_scale)
    finite = np.isfinite(cost) & np.all(np.isfinite(res), axis=-1) & np.all(np.isfinite(jac), axis=(1, 2))
    res = np.where(finite[:, None], res, 0.0)
    jac = np.where(finite[:, None, None], jac, 0.0)
    dec, singular = _system(prob, theta0, res, jac, np.zeros_like(theta0))
    code, noisy = _status(prob, dec, theta0, cost, singular)
    if prob.method == "gn":
        radius = np.ones_like(cost)
    else:
        scaled = np.sqrt(np.einsum("kp,kp->k", dec.d * theta0, dec.d * theta0))
        radius = prob.options.initial_radius * np.where(scaled > 0, scaled, 1.0)
    return _State(
        theta=theta0,
        res=res,
        cost=cost,
        jac=jac,
        dec=dec,
        radius=radius,
        damping=np.zeros_like(cost),
        code=np.where(finite, code, _NONFIN),
        n_iter=np.zeros(theta0.shape[0], dtype=np.int64),
        noisy=noisy,
        # a start that is not finite has no sizes to compare with: every column that vanishes is suspect
        start_norms=np.where(finite[:, None], np.sqrt(np.einsum("knp,knp->kp", jac, jac)), np.inf),
    )


def _trial(prob: _Problem, state: _State) -> tuple[Array, Array, Array]:
    """Trial point, the V-basis coefficients of the scaled step taken, and the predicted reduction."""
    dec = state.dec
    if prob.method == "gn":
        coef = state.radius[:, None] * dec.gn_coef
    else:
        state.damping = trust_region_damping(dec, state.radius, state.damping)
        coef = damped_coefficients(dec, state.damping) if state.damping.any() else dec.gn_coef
    step = step_from_coefficients(dec, coef)
    trial = state.theta + (step if prob.all_free else step * prob.free)
    if prob.bounded:
        trial = np.clip(trial, prob.lower, prob.upper)
        coef = coefficients_of_step(dec, trial - state.theta)
    elif coef is dec.gn_coef:
        return trial, coef, dec.gn_gain
    return trial, coef, predicted_reduction(dec, coef)


def _iterate(prob: _Problem, state: _State) -> None:
    """One trial step for every running fit; updates ``state`` in place."""
    running = state.code == _RUN
    trial, coef, predicted = _trial(prob, state)
    res_t, handle = prob.evaluator.residuals(trial)
    cost_t = robust_cost(prob.loss, res_t, prob.f_scale)
    ratio = gain_ratio(state.cost, cost_t, predicted)
    # cost differences are rounding noise: a step that does not clearly raise the cost is taken if
    # the gradient, computed without that cancellation, says it went downhill (see _accept)
    by_noise = state.noisy & (cost_t <= state.cost * (1.0 + _NOISE_SLACK)) & ~(ratio >= 0.25)
    ratio = np.where(by_noise, 1.0, ratio)
    accepted = running & (ratio > (0.0 if prob.method == "gn" else 1e-4))
    state.n_iter += running
    step_norm = np.sqrt(np.einsum("kq,kq->k", coef, coef))
    if accepted.any():
        jac_t = prob.evaluator.jacobian(handle, prob.dtype)
        finite = np.isfinite(jac_t.sum(axis=(1, 2))) & np.isfinite(res_t.sum(axis=-1))
        if not finite.all():  # a point whose Jacobian is not finite counts as a failed step
            ratio = np.where(finite, ratio, -np.inf)
            accepted &= finite
        if accepted.any():
            moved = _accept(prob, state, accepted, by_noise, (trial, res_t, cost_t, jac_t))
            ratio = np.where(accepted & ~moved, 0.0, ratio)
            accepted = moved
    _update_step_control(prob, state, step_norm, ratio, accepted, running)


def _accept(prob: _Problem, state: _State, accepted: Array, by_noise: Array, trial: tuple[Array, Array, Array, Array]) -> Array:
    """Move the ``accepted`` fits to their trial points; returns the fits that moved.

    A fit accepted only because its cost change is rounding noise (``by_noise``) moves only where the
    Gauss-Newton gain, ``½‖P_J r‖²`` (a scaled gradient norm), is lower at the trial: in a
    large-residual problem, where Gauss-Newton steps overshoot, taking every step the noisy cost
    allowed wandered about the minimum until the iteration limit.
    """
    point = _moved(state, accepted, trial)
    dec, singular = _system(prob, point[0], point[1], point[3], state.dec.d)
    worse = accepted & by_noise & ~(dec.gn_gain < state.dec.gn_gain)
    if worse.any():
        accepted = accepted & ~worse
        if not accepted.any():
            return accepted
        point = _moved(state, accepted, trial)
        dec, singular = _system(prob, point[0], point[1], point[3], state.dec.d)
    state.theta, state.res, state.cost, state.jac = point
    state.dec = dec
    code, noisy = _status(prob, state.dec, state.theta, state.cost, singular)
    state.code = np.where(accepted, code, state.code)
    state.noisy = np.where(accepted, noisy, state.noisy)
    return accepted


def _moved(state: _State, accepted: Array, trial: tuple[Array, Array, Array, Array]) -> tuple[Array, Array, Array, Array]:
    """``(theta, res, cost, jac)``: the trial's rows where ``accepted``, the state's elsewhere."""
    if accepted.all():
        return trial
    theta, res, cost, jac = trial
    return (
        np.where(accepted[:, None], theta, state.theta),
        np.where(accepted[:, None], res, state.res),
        np.where(accepted, cost, state.cost),
        np.where(accepted[:, None, None], jac, state.jac),
    )


def _update_step_control(prob: _Problem, state: _State, step_norm: Array, ratio: Array, accepted: Array, running: Array) -> None:
    """New trust region (lm) or step fraction (gn); flag fits that can no longer move."""
    if prob.method == "gn":
        radius = np.where(accepted, np.minimum(2.0 * state.radius, 1.0), 0.5 * state.radius)
        stalled = radius < 2.0**-40
    else:
        radius = update_radius(state.radius, step_norm, ratio, state.damping)
        if accepted.all():
            stalled = np.zeros_like(accepted)
        else:
            scaled = state.dec.d * state.theta
            stalled = radius * radius <= np.finfo(radius.dtype).eps ** 2 * np.einsum("kp,kp->k", scaled, scaled)
    state.radius = np.where(running, radius, state.radius)
    if stalled.any():
        stuck = running & stalled & (state.code == _RUN)
        state.code = np.where(stuck, stall_code(small_gn_step(state.dec, state.theta, prob.options)), state.code)


def _run(prob: _Problem, theta0: Array, active: Array | None = None) -> _State:
    """Iterate from ``theta0`` until every (active) fit has a status."""
    if prob.single and (active is None or bool(active[0])):
        return _run_single(prob, theta0)
    state = _initial_state(prob, theta0)
    if active is not None:
        state.code = np.where(active, state.code, _FTOL)
    _iterate_until_done(prob, state, prob.options.max_iter)
    state.code = np.where(state.code == _RUN, _MAXIT, state.code)
    return state


#: once at most this fraction of a batch still runs, those fits go on as a batch of their own
COMPACT_BELOW = 0.5


def _iterate_until_done(prob: _Problem, state: _State, budget: int) -> None:
    """Up to ``budget`` iterations of every running fit.

    A fit's arithmetic is its own (every operation acts row by row), so the fits still running can
    go on without the finished ones: once they are at most :data:`COMPACT_BELOW` of the batch, they
    continue as a batch of their own, and a batch costs what its slowest fit needs, not that times
    the batch size.
    """
    for used in range(budget):
        running = state.code == _RUN
        count = int(np.count_nonzero(running))
        if count == 0:
            return
        if count <= COMPACT_BELOW * running.size:
            rows = np.flatnonzero(running)
            part = _rows_of(state, rows)
            _iterate_until_done(_problem_rows(prob, rows, state.theta), part, budget - used)
            _put_rows(state, rows, part)
            return
        if prob.on_iteration is not None:
            prob.on_iteration()
        _iterate(prob, state)


class _RowsEvaluator:
    """Some fits of a batch: the other fits' parameters stay where they ended."""

    def __init__(self, base: Any, rows: Array, theta: Array) -> None:
        self.base, self.rows, self.theta = base, rows, theta.copy()

    def residuals(self, theta: Array) -> tuple[Array, Any]:
        full = self.theta.copy()
        full[self.rows] = theta
        res, handle = self.base.residuals(full)
        return res[self.rows], handle

    def jacobian(self, handle: Any, np_dtype: np.dtype[Any]) -> Array:
        return self.base.jacobian(handle, np_dtype)[self.rows]


def _problem_rows(prob: _Problem, rows: Array, theta: Array) -> _Problem:
    """``prob`` for the fits ``rows`` (the others held at ``theta``)."""
    return replace(
        prob,
        evaluator=_evaluator_of_rows(prob.evaluator, rows, theta),
        free=prob.free[rows], lower=prob.lower[rows], upper=prob.upper[rows],
        any_free=None if prob.any_free is None else prob.any_free[rows],
    )


def _evaluator_of_rows(evaluator: Any, rows: Array, theta: Array) -> Any:
    """An evaluator of the fits ``rows`` alone: from the caller's ``rows_fn`` where it gave one,
    else the whole batch's, with the other fits held at ``theta``."""
    if getattr(evaluator, "rows_fn", None) is not None:
        origin = rows if evaluator.origin is None else evaluator.origin[rows]
        functions = evaluator.rows_fn(origin)
        part = copy.copy(evaluator)
        part.residual_fn = functions.get("residual_fn")
        part.jacobian_fn = functions.get("jacobian_fn")
        part.combined_fn = functions.get("residual_and_jacobian_fn")
        part.origin = origin
        return part
    if isinstance(evaluator, _RowsEvaluator):  # rows of rows: one level, over the whole batch
        held = evaluator.theta.copy()
        held[evaluator.rows] = theta
        return _RowsEvaluator(evaluator.base, evaluator.rows[rows], held)
    return _RowsEvaluator(evaluator, rows, theta)


def _rows_of(state: _State, rows: Array) -> _State:
    """The state of the fits ``rows`` (copies)."""
    fields = {name: value[rows] for name, value in vars(state).items() if isinstance(value, np.ndarray)}
    dec = Decomposition(**{f.name: getattr(state.dec, f.name)[rows] for f in fields_of(Decomposition)})
    return _State(**fields, dec=dec)


def _put_rows(state: _State, rows: Array, part: _State) -> None:
    """Write ``part``, the state of the fits ``rows``, back into ``state``."""
    for name, value in vars(part).items():
        if isinstance(value, np.ndarray):
            setattr(state, name, _merged(getattr(state, name), rows, value))
    state.dec = Decomposition(**{
        f.name: _merged(getattr(state.dec, f.name), rows, getattr(part.dec, f.name)) for f in fields_of(Decomposition)
    })


def _merged(whole: Array, rows: Array, part: Array) -> Array:
    """A copy of ``whole`` with ``part`` in its ``rows``."""
    merged = np.array(whole, copy=True)
    merged[rows] = part
    return merged


# --------------------------------------------------------------- single-fit fast path (K = 1)
#
# With one fit, every (K,)-array operation above costs a numpy call (~1 µs) for one number. This
# path runs the same algorithm — unbounded, sum of squares, Levenberg-Marquardt, fixed parameters
# allowed — with Python floats around one SVD per accepted point, cutting the solver's own cost
# per iteration by about 5x. `test_batch_equals_single_solves` checks both paths agree.


@dataclass(frozen=True)
class _Point:
    """:class:`Decomposition` of a single fit, as Python floats (``vt`` stays a numpy ``(p, q)``)."""

    d: Array
    vt: Array
    s: list[float]
    g: list[float]
    rank: list[bool]
    col_norms: list[float]
    gn_coef: list[float]
    gn_norm: float
    gn_gain: float
    res_norm2: float


def _decompose_single(jac: Array, res: Array, d_prev: Array) -> _Point:
    col = column_norms(jac)
    d = more_scaling(d_prev, col)
    u, s_arr, vh = np.linalg.svd(jac / d, full_matrices=False)
    s, g = s_arr.tolist(), (res @ u).tolist()
    cut = s[0] * max(jac.shape) * float(np.finfo(jac.dtype).eps)
    rank = [si > cut for si in s]
    gn_coef = [-gi / si if ok else 0.0 for gi, si, ok in zip(g, s, rank)]
    gain = 0.5 * sum(gi * gi for gi, ok in zip(g, rank) if ok)
    norm = math.sqrt(sum(c * c for c in gn_coef))
    return _Point(d, vh.T, s, g, rank, col.tolist(), gn_coef, norm, gain, float(res @ res))


def _convergence_single(pt: _Point, theta: list[float], cost: float, options: LeastSquaresOptions) -> int:
    """Scalar twin of :func:`convergence_code`."""
    if cost <= 0:
        return _EXACT
    if pt.gn_gain <= options.ftol * cost:
        return _FTOL
    if pt.gn_gain > 0.01 * cost:
        return _RUN
    if _small_step_single(pt, theta, options):
        return _XTOL
    d = pt.d.tolist()
    gradient = (pt.vt @ np.array([si * gi for si, gi in zip(pt.s, pt.g)])).tolist()
    scale = options.gtol * math.sqrt(pt.res_norm2)
    if all(abs(dj * gr) <= scale * cn for dj, gr, cn in zip(d, gradient, pt.col_norms)):
        return _GTOL
    return _RUN


def _small_step_single(pt: _Point, theta: list[float], options: LeastSquaresOptions) -> bool:
    """Scalar twin of :func:`small_gn_step`."""
    step = (pt.vt @ np.array(pt.gn_coef)).tolist()
    return all(abs(st / dj) <= options.xtol * (abs(th) + options.xtol) for st, dj, th in zip(step, pt.d.tolist(), theta))


def _damping_single(pt: _Point, radius: float, lam: float, iterations: int = 10) -> float:
    """Scalar twin of :func:`trust_region_damping`."""
    if not pt.gn_norm > 1.1 * radius:
        return 0.0
    sg = [si * gi for si, gi in zip(pt.s, pt.g)]
    s2 = [si * si for si in pt.s]
    for _ in range(iterations):
        usable = [ok or lam > 0 for ok in pt.rank]
        denom = [x + lam for x in s2]
        coef = [a / b if ok and b > 0 else 0.0 for a, b, ok in zip(sg, denom, usable)]
        norm2 = sum(c * c for c in coef)
        norm = math.sqrt(norm2)
        if not abs(norm - radius) > 0.1 * radius:
            break
        slope = sum(c * c / b for c, b in zip(coef, denom) if b > 0)
        if not slope > 0:
            break
        lam = max(lam + (norm / radius - 1.0) * norm2 / slope, 0.0)
    return lam


def _coefficients_single(pt: _Point, lam: float) -> list[float]:
    if lam == 0:
        return pt.gn_coef
    return [-si * gi / (si * si + lam) for si, gi in zip(pt.s, pt.g)]


def _run_single(prob: _Problem, theta0: Array) -> _State:
    """One fit: :func:`_run` for K = 1, unbounded, ``loss="linear"``, ``method="lm"``."""
    options, evaluator, dtype = prob.options, prob.evaluator, prob.dtype
    free = prob.free[0]
    res, handle = evaluator.residuals(theta0)
    jac = evaluator.jacobian(handle, dtype)
    res1, jac1 = res[0], jac[0] if prob.all_free else jac[0] * free
    with np.errstate(over="ignore", invalid="ignore"):
        cost = 0.5 * float(res1 @ res1)
    if not (math.isfinite(cost) and np.isfinite(jac).all()):  # the general path reports it as non-finite
        return _run(replace(prob, single=False), theta0)
    theta = theta0[0].tolist()
    pt = _decompose_single(jac1, res1, np.zeros(len(theta), dtype=dtype))
    start_norms = np.array(pt.col_norms, dtype=dtype)
    code = _SING if prob.any_free[0] and max(pt.col_norms) == 0 else _convergence_single(pt, theta, cost, options)
    noisy = pt.gn_gain <= _NOISE_REGION * cost
    scaled = math.hypot(*(dj * th for dj, th in zip(pt.d.tolist(), theta)))
    radius = options.initial_radius * (scaled if scaled > 0 else 1.0)
    lam, n_iter = 0.0, 0
    mask = free.tolist()
    while code == _RUN and n_iter < options.max_iter:
        lam = _damping_single(pt, radius, lam)
        coef = _coefficients_single(pt, lam)
        step = ((pt.vt @ np.array(coef)) / pt.d).tolist()
        trial = [th + (st if m else 0.0) for th, st, m in zip(theta, step, mask)]
        predicted = pt.gn_gain if lam == 0 else -sum(gi * si * c for gi, si, c in zip(pt.g, pt.s, coef)) - 0.5 * sum(
            (si * c) * (si * c) for si, c in zip(pt.s, coef)
        )
        res_t, handle = evaluator.residuals(np.array([trial], dtype=dtype))
        cost_t = 0.5 * float(res_t[0] @ res_t[0])
        ratio = (cost - cost_t) / max(predicted, np.finfo(dtype).tiny) if math.isfinite(cost_t) else -math.inf
        by_noise = noisy and cost_t <= cost * (1.0 + _NOISE_SLACK) and not ratio >= 0.25
        if by_noise:
            ratio = 1.0
        n_iter += 1
        step_norm = math.sqrt(sum(c * c for c in coef))
        if ratio > 1e-4:
            jac_t = evaluator.jacobian(handle, dtype)
            if np.isfinite(jac_t).all() and np.isfinite(res_t).all():
                jac1_t = jac_t[0] if prob.all_free else jac_t[0] * free
                pt_t = _decompose_single(jac1_t, res_t[0], pt.d)
                if by_noise and not pt_t.gn_gain < pt.gn_gain:  # the cost cannot tell; the gradient says worse
                    ratio = 0.0
                else:
                    theta, res1, cost, jac1, pt = trial, res_t[0], cost_t, jac1_t, pt_t
                    code = _SING if prob.any_free[0] and max(pt.col_norms) == 0 else _convergence_single(pt, theta, cost, options)
                    noisy = pt.gn_gain <= _NOISE_REGION * cost
            else:
                ratio = -math.inf
        poor = not ratio >= 0.25
        if poor:
            radius = 0.5 * min(radius, step_norm)
        elif ratio > 0.75 or lam == 0:
            radius = max(radius, 2.0 * step_norm)
        if code == _RUN and poor:
            scaled = math.hypot(*(dj * th for dj, th in zip(pt.d.tolist(), theta)))
            if radius <= np.finfo(dtype).eps * scaled:
                code = _XTOL if _small_step_single(pt, theta, options) else _STALL
    if code == _RUN:
        code = _MAXIT
    theta_arr = np.array([theta], dtype=dtype)
    return _State(
        theta=theta_arr,
        res=res1[None],
        cost=np.array([cost], dtype=dtype),
        jac=jac1[None],
        dec=None,  # type: ignore[arg-type]  # not needed after the run
        radius=np.array([radius]),
        damping=np.array([lam]),
        code=np.array([code]),
        n_iter=np.array([n_iter], dtype=np.int64),
        noisy=np.array([noisy]),
        start_norms=start_norms[None],
    )


# ---------------------------------------------------------------------------------- restarts


def _good(prob: _Problem, state: _State, start_norms: Array) -> Array:
    """Fits that converged to a point worth keeping: not a runaway parameter's spurious stationary
    point, nor a local minimum worse than a constant model (a step across a pole of ``x/(k + x)``)."""
    converged = (state.code >= _FTOL) & (state.code <= _EXACT)
    return converged & ~_spurious(prob, state, start_norms) & ~_worse_than_flat(prob, state)


def _spurious(prob: _Problem, state: _State, start_norms: Array) -> Array:
    bound = at_bound(state.theta, prob.lower, prob.upper, prob.free)
    return degenerate(state.jac, state.theta, state.res, start_norms, prob.free, bound)


#: a converged cost above the constant model's by more than this fraction is worse than a constant
_FLAT_SLACK = 1e-9


def _worse_than_flat(prob: _Problem, state: _State) -> Array:
    if prob.flat is None or prob.loss != "linear":
        return np.zeros(state.cost.shape, dtype=bool)
    return state.cost > prob.flat * (1.0 + _FLAT_SLACK)


def flat_cost(y: Array, weights: Array | None = None) -> Array:
    """The cost (half the sum of squares) of the best constant model of each fit's data, ``(K,)``.

    A least-squares fit that converges above it is worse than a flat line through the weighted
    mean (R² < 0): for a model that can be flat, a local minimum, which one round of the jittered
    restarts of :func:`solve_least_squares` then tries to leave. Points of weight 0 (padding) do not count.

    Parameters
    ----------
    y
        Targets, ``(n,)`` or ``(K, n)``.
    weights
        ``1/σ`` of each point, the shape of ``y``; None: all 1.
    """
    y = np.atleast_2d(np.asarray(y, dtype=np.float64))
    with np.errstate(all="ignore"):
        return 0.5 * total_sum_of_squares(y, None if weights is None else np.asarray(weights, dtype=np.float64), None)


def _better(candidate: _State, current: _State) -> Array:
    """Whether a restart's result replaces the current one (pure): a lower cost wins; at equal cost
    (1e-12 relative) a converged result beats one that is not."""
    cand_ok = (candidate.code >= _FTOL) & (candidate.code <= _EXACT)
    curr_ok = (current.code >= _FTOL) & (current.code <= _EXACT)
    lower = (candidate.cost < current.cost * (1.0 - 1e-12)) | (np.isfinite(candidate.cost) & ~np.isfinite(current.cost))
    tie = np.abs(candidate.cost - current.cost) <= 1e-12 * np.abs(current.cost)
    return lower | (tie & cand_ok & ~curr_ok)


def _take(take: Array, candidate: _State, current: _State) -> None:
    """Copy the fits in ``take`` from ``candidate`` into ``current`` (results only)."""
    current.theta = np.where(take[:, None], candidate.theta, current.theta)
    current.res = np.where(take[:, None], candidate.res, current.res)
    current.cost = np.where(take, candidate.cost, current.cost)
    current.jac = np.where(take[:, None, None], candidate.jac, current.jac)
    current.code = np.where(take, candidate.code, current.code)


def _solve_with_restarts(prob: _Problem, start: Array) -> tuple[_State, Array]:
    """The fits' final state, and which of them a restart mended from a start that was not finite."""
    state = _run(prob, start)
    not_finite = state.code == _NONFIN
    start_norms = state.start_norms
    need = ~_good(prob, state, start_norms)
    if not need.any():
        return state, not_finite & (state.code != _NONFIN)
    for round_ in range(prob.options.restarts):
        if not need.any():
            break
        points, rows = start.copy(), np.flatnonzero(need)  # only the fits that go on draw
        points[rows] = restart_points(start[rows], np.broadcast_to(prob.free, start.shape)[rows], prob.options.restart_seed, round_, spread=1.0 + 0.5 * round_)
        if prob.bounded:
            points = np.clip(points, prob.lower, prob.upper)
        candidate = _run(replace(prob, options=replace(prob.options, max_iter=min(prob.options.max_iter, _RESTART_ITER))), points, active=need)
        state.n_iter += np.where(need, candidate.n_iter + 1, 0)
        _take(need & _better(candidate, state), candidate, state)
        # one round to beat a constant: a model that cannot (a*sin(k*x) on offset data) is not sent on
        prob = replace(prob, flat=None)
        need &= ~_good(prob, state, start_norms)
    # still "converged" where a parameter stopped affecting the model: no minimum, report it singular
    # (one worse than a constant is a minimum, if a poor one: it stays converged, and the fit says so)
    spurious = need & (state.code >= _FTOL) & (state.code <= _EXACT) & _spurious(prob, state, start_norms)
    state.code = np.where(spurious, _SING, state.code)
    return state, not_finite & (state.code != _NONFIN)


# ------------------------------------------------------------------------------- public entry


def user_options(max_iter: int | None = None, tolerance: float | None = None) -> LeastSquaresOptions:
    """The solver's options for a user's iteration limit and tolerance (each None: the default).

    Either one, given, is the user's stopping rule: ``max_iter`` caps the trial steps from each
    start and ``tolerance`` sets ``ftol`` and ``xtol``; the jittered restarts of failed fits, which
    would run past them, are off (``--starts`` asks for more starting points explicitly).
    """
    settings: dict[str, Any] = {}
    if max_iter is not None:
        settings.update(max_iter=max_iter, restarts=0)
    if tolerance is not None:
        settings.update(ftol=tolerance, xtol=tolerance, restarts=0)
    return LeastSquaresOptions(**settings)


def solve_least_squares(
    residual_fn: ResidualFn | None,
    theta0: Tensor,
    *,
    jacobian_fn: JacobianFn | None = None,
    residual_and_jacobian_fn: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None,
    lower: Tensor | None = None,
    upper: Tensor | None = None,
    fixed: Tensor | None = None,
    loss: Literal["linear", "huber", "soft_l1", "cauchy"] = "linear",
    f_scale: float = 1.0,
    method: Literal["lm", "gn"] = "lm",
    options: LeastSquaresOptions | None = None,
    rows_fn: RowsFn | None = None,
    on_iteration: Callable[[], None] | None = None,
    flat: Any = None,
) -> LeastSquaresSolution:
    """Fit K independent least-squares problems at once.

    Parameters
    ----------
    residual_fn
        ``theta (K, p) -> residuals (K, n)``, already weighted (divided by sigma); padded points
        must give 0. Row ``k`` of the output may depend on row ``k`` of ``theta`` only.
    theta0
        Starting values ``(K, p)`` (a ``(p,)`` vector counts as K = 1). A floating numpy array
        makes this a numpy solve: the functions take and return numpy arrays (a Jacobian function
        is then required) and the solution is numpy. A floating tensor keeps its dtype and device
        and the functions work on tensors; anything else becomes a float64 tensor.
    jacobian_fn
        ``theta (K, p) -> (K, n, p)``, the Jacobian of ``residual_fn`` (e.g. a formula's symbolic
        derivatives). Default for torch functions: exact autograd (:func:`autograd_jacobian`);
        never finite differences.
    residual_and_jacobian_fn
        ``theta -> (residuals (K, n), jacobian (K, n, p))`` in one pass, e.g. a compiled formula
        whose model and derivatives share sub-expressions; it is called at every trial point and
        replaces ``residual_fn`` (which may then be None) and ``jacobian_fn``.
    lower, upper
        Bounds broadcastable to ``(K, p)``; ``None`` means unbounded. Starting values outside the
        box are moved onto it.
    fixed
        Boolean mask broadcastable to ``(K, p)``: parameters held at their starting values.
    loss
        ``"linear"`` (sum of squares) or a robust loss, as in ``scipy.optimize.least_squares``.
    f_scale
        Residual scale of the robust losses (scipy's ``f_scale``).
    method
        ``"lm"`` (Levenberg-Marquardt, trust region) or ``"gn"`` (Gauss-Newton with step halving).
    options
        Tolerances and limits (:class:`LeastSquaresOptions`); the defaults need no tuning.
    rows_fn
        ``rows (m,) -> {"residual_fn": ..., "jacobian_fn": ..., "residual_and_jacobian_fn": ...}``:
        the functions of the fits ``rows`` of the batch alone (absent keys: None). Once few fits
        still run, only theirs are then evaluated; without it every fit is, as at the start.
    on_iteration
        Called before each iteration of the batch (not of a single fit's fast path); whatever it
        raises abandons the solve (group fits stop a chunk at an interruption this way).
    flat
        ``(K,)`` each fit's constant-model cost (:func:`flat_cost`), or None. With ``loss="linear"``
        and restarts on, a fit that converges above it gets one round of the restarts a failed
        fit gets (a model that cannot be flat may have its optimum there).

    Returns
    -------
    LeastSquaresSolution
        Parameters, residuals, Jacobian, cost, and a :class:`Status` per fit.

    Raises
    ------
    ModelError
        If shapes or bounds are inconsistent, or a function returns the wrong shape.
    OptionError
        For an unknown loss or method, or ``f_scale <= 0``.
    """
    options = options or LeastSquaresOptions()
    theta = _as_theta(theta0)
    if residual_fn is None and residual_and_jacobian_fn is None:
        raise ModelError("give residual_fn (or residual_and_jacobian_fn)")
    on_numpy = isinstance(theta, np.ndarray)
    evaluator: _Evaluator | _NumpyEvaluator = (
        _NumpyEvaluator(residual_fn, jacobian_fn, residual_and_jacobian_fn)
        if on_numpy
        else _Evaluator(residual_fn, jacobian_fn, residual_and_jacobian_fn, theta)
    )
    evaluator.rows_fn = rows_fn
    prob = replace(
        _make_problem(evaluator, theta, lower, upper, fixed, loss, f_scale, method, options),
        on_iteration=on_iteration, flat=None if flat is None else np.broadcast_to(np.asarray(flat, dtype=np.float64), (theta.shape[0],)),
    )
    start = theta.copy() if on_numpy else _to_numpy(theta, prob.dtype).copy()
    if prob.bounded:
        start = np.clip(start, prob.lower, prob.upper)
    with np.errstate(all="ignore"):  # NaN/inf trials are expected and handled
        state, restarted = _solve_with_restarts(prob, start)
    return _solution(prob, state, theta, restarted)


def _as_theta(theta0: Any) -> Any:
    """``(K, p)`` starting values: a floating numpy array, or a tensor (anything else)."""
    if isinstance(theta0, np.ndarray) and theta0.dtype in (np.float64, np.float32):
        theta: Any = theta0
    else:
        import torch

        if isinstance(theta0, torch.Tensor) and theta0.is_floating_point():
            theta = theta0.detach()
        else:
            theta = torch.as_tensor(np.asarray(theta0, dtype=np.float64))
    if theta.ndim == 1:
        theta = theta[None, :]
    if theta.ndim != 2 or theta.shape[0] == 0 or theta.shape[1] == 0:
        raise ModelError(f"theta0 must have shape (K, p) with K, p >= 1, got {tuple(theta.shape)}")
    return theta


_FLOAT64, _FLOAT32 = np.dtype(np.float64), np.dtype(np.float32)


def _torch_float64() -> Any:
    """torch.float64 where torch is loaded (a numpy solve never loads it)."""
    torch = sys.modules.get("torch")
    return None if torch is None else torch.float64


def _broadcast(value: Any, shape: tuple[int, ...], fill: float | bool, dtype: Any, name: str) -> Array:
    if value is None:
        return np.full(shape, fill, dtype=dtype)
    array = as_array(value)
    try:
        return np.broadcast_to(array.astype(dtype), shape).copy()
    except ValueError:
        raise ModelError(f"{name} must broadcast to theta's shape {shape}, got {array.shape}") from None


def _make_problem(
    evaluator: _Evaluator,
    theta: Tensor,
    lower: Any,
    upper: Any,
    fixed: Any,
    loss: str,
    f_scale: float,
    method: str,
    options: LeastSquaresOptions,
) -> _Problem:
    if loss not in LOSSES:
        raise OptionError(f"unknown least-squares loss '{loss}' — choose one of {', '.join(LOSSES)}")
    if method not in ("lm", "gn"):
        raise OptionError(f"unknown least-squares method '{method}' — choose 'lm' or 'gn'")
    if not f_scale > 0:
        raise OptionError(f"f_scale must be > 0, got {f_scale}")
    dtype = _FLOAT64 if theta.dtype in (np.float64, _torch_float64()) else _FLOAT32
    shape = tuple(theta.shape)
    lo = _broadcast(lower, shape, -np.inf, dtype, "lower")
    hi = _broadcast(upper, shape, np.inf, dtype, "upper")
    if not (lo <= hi).all():  # also false where a bound is NaN
        raise ModelError("every lower bound must be <= its upper bound (and not NaN) — check the bounds")
    free = ~_broadcast(fixed, shape, False, bool, "fixed")
    bounded = bool(np.any(np.isfinite(lo) | np.isfinite(hi)))
    return _Problem(
        evaluator=evaluator,
        free=free,
        lower=lo,
        upper=hi,
        bounded=bounded,
        loss=loss,
        f_scale=float(f_scale),
        method=method,
        options=effective_options(options, dtype),
        dtype=dtype,
        all_free=bool(np.all(free)),
        any_free=np.any(free, axis=-1),
        single=shape[0] == 1 and loss == "linear" and method == "lm" and not bounded,
    )


def _solution(prob: _Problem, state: _State, like: Any, restarted: Array) -> LeastSquaresSolution:
    status = [_MEMBERS[c] for c in state.code.tolist()]
    bound = at_bound(state.theta, prob.lower, prob.upper, prob.free)
    n_iter = state.n_iter.copy()
    if isinstance(like, np.ndarray):
        return LeastSquaresSolution(state.theta, state.res, state.jac, state.cost, n_iter, n_iter + 1, status, bound, restarted)
    import torch

    def tensor(array: Array) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device=like.device, dtype=like.dtype)

    n_iter_t = torch.from_numpy(n_iter)
    return LeastSquaresSolution(
        theta=tensor(state.theta),
        residuals=tensor(state.res),
        jacobian=tensor(state.jac),
        cost=tensor(state.cost),
        n_iter=n_iter_t,
        n_fev=n_iter_t + 1,
        status=status,
        at_bound=torch.from_numpy(bound),
        restarted=restarted,
    )


# ------------------------------------------------------------------------- linear least squares

#: scaled condition number of a design above which :func:`linear_least_squares` refines
REFINE_ABOVE = 100.0


@dataclass(frozen=True)
class LinearSolution:
    """Exact least-squares solution of K linear problems ``min ‖A θ - y‖`` (numpy arrays).

    Attributes
    ----------
    theta
        Coefficients ``(K, p)``.
    residuals
        ``A θ - y`` ``(K, n)``.
    inverse_factor
        ``L (K, p, p)`` with ``(AᵀA)⁻¹ = L Lᵀ``, computed without forming ``AᵀA``.
    rank
        Numerical rank of ``A`` per fit ``(K,)``.
    condition
        Condition number of the column-equilibrated ``A`` per fit ``(K,)`` (``inf`` when
        rank-deficient).
    decomposition
        The :class:`~gradfit.stats.ScaledSvd` of ``A`` the solution comes from (the statistics of
        the fit reuse it); None where the solve went through another basis.
    coefficient_rounding
        ``(K,)`` RMS of the difference between the fit and the polynomial that ``theta``, rounded
        to floating point, evaluates to, in the units of ``y`` (:func:`polynomial_least_squares`;
        None elsewhere). Far from 0 the monomial coefficients cancel, and their last bits alone move
        the curve.
    centred_basis
        ``(centre (K,), half_width (K,), coefficients (K, p), factor (K, p, p))`` of
        :func:`polynomial_least_squares`: the basis ``t = (x - centre) / half_width`` it solved in,
        the coefficients of ``1, t, t², ...`` and the factor ``L`` of ``(BᵀB)⁻¹ = L Lᵀ`` there (B
        the weighted design in powers of ``t``), from which the curve and its bands are computed
        without the monomials' cancellation (None elsewhere).
    """

    theta: Array
    residuals: Array
    inverse_factor: Array
    rank: Array
    condition: Array
    decomposition: Any = None
    coefficient_rounding: Array | None = None
    centred_basis: tuple[Array, Array, Array, Array] | None = None

    def covariance(self, absolute_sigma: bool = False) -> Array:
        """Coefficient covariance ``s² (AᵀA)⁻¹`` (``s² = Σr²/(n-p)``, or 1 with ``absolute_sigma``)."""
        cov = self.inverse_factor @ np.swapaxes(self.inverse_factor, -1, -2)
        if absolute_sigma:
            return cov
        n, p = self.residuals.shape[-1], self.theta.shape[-1]
        s2 = (self.residuals**2).sum(-1) / (n - p) if n > p else np.full(self.residuals.shape[0], np.inf)
        return cov * s2[:, None, None]


def linear_least_squares(design: Any, target: Any, refinements: int = 1) -> LinearSolution:
    """Solve ``min ‖A θ - y‖`` for K problems by an SVD of the column-equilibrated design.

    Parameters
    ----------
    design
        ``A (K, n, p)`` (or ``(n, p)``, counted as K = 1); numpy array or tensor.
    target
        ``y (K, n)`` (or ``(n,)``).
    refinements
        Iterative-refinement steps (each re-solves for the correction from the current residual);
        they recover the last digits when the residual is small. Skipped when every design is
        well conditioned (scaled condition number below :data:`REFINE_ABOVE`), where they change
        nothing.

    Returns
    -------
    LinearSolution
        Minimum-norm solution over the numerical rank (singular values below
        ``max(n, p)·eps·s_max`` are dropped), as numpy arrays.
    """
    a, y = as_array(design), as_array(target)
    a = a[None] if a.ndim == 2 else a
    y = (y[None] if y.ndim == 1 else y)[..., None]  # (K, n, 1)
    with np.errstate(all="ignore"):  # a design of huge or tiny entries: see column_norms
        svd = scaled_svd(a)
        full_rank = ~svd.null.any(-1)
        inv_s = 1.0 / svd.s if full_rank.all() else np.where(svd.null, 0.0, 1.0 / svd.s)
        factor = svd.v * (inv_s[:, None, :] / svd.d[:, :, None])  # (K, p, q): θ = factor Uᵀ y
        ut = svd.u.mT
        theta = factor @ (ut @ y)
        residuals = a @ theta - y
        condition = np.where(full_rank, svd.s[:, 0] / svd.s[:, -1], np.inf)
        for _ in range(refinements if condition.max() > REFINE_ABOVE else 0):
            theta = theta - factor @ (ut @ residuals)
            residuals = a @ theta - y
        residuals = residuals[..., 0]
    return LinearSolution(theta[..., 0], residuals, factor, (~svd.null).sum(-1), condition, svd)


def polynomial_least_squares(
    x: Any, target: Any, degree: int, weights: Any = None, refinements: int = 2
) -> LinearSolution:
    """Fit ``y = Σ_k θ_k x^k`` (k = 0..degree) for K problems, accurately even when ill-conditioned.

    The monomial design is badly conditioned (NIST's Filip: condition number 1e15), so the fit is
    first solved in ``t = (x - c) / h``, centred and scaled onto ``[-1, 1]``, where the design is well
    conditioned; coefficients and the factor of ``(AᵀA)⁻¹`` are mapped back to the monomial basis.
    Then Björck's iterative refinement of the augmented system ``r + Aθ = y, Aᵀr = 0`` polishes
    ``θ``, with both residuals evaluated in double-double arithmetic — needed when the residuals are
    huge and the coefficients cancel (NIST's Wampler5). NIST's linear problems reach 10-11 digits.

    Parameters
    ----------
    x, target
        ``(K, n)`` or ``(n,)`` each (numpy arrays or tensors).
    degree
        Polynomial degree (``degree + 1`` coefficients, constant first).
    weights
        ``1/σ`` per point (broadcastable to ``x``), or None; the residuals returned are weighted.
    refinements
        Refinement steps (0 keeps the centred solve alone). Each sums ``Aᵀr`` exactly per fit with
        ``math.fsum`` (a Python loop over K).
    """
    xs = as_array(x)
    xs = xs[None] if xs.ndim == 1 else xs
    t_in = as_array(target)
    y = np.broadcast_to(t_in[None] if t_in.ndim == 1 else t_in, xs.shape)
    w = np.ones_like(xs) if weights is None else np.broadcast_to(as_array(weights).astype(xs.dtype), xs.shape)
    lo, hi = xs.min(-1), xs.max(-1)
    centre = 0.5 * (lo + hi)
    half = 0.5 * (hi - lo)
    half = np.where(half > 0, half, 1.0)
    t = (xs - centre[:, None]) / half[:, None]
    basis = np.stack([t**k for k in range(degree + 1)], -1) * w[..., None]
    inner = linear_least_squares(basis, y * w)
    # θ_k = Σ_j c_j C(j, k) (-centre)^(j-k) / half^j   (j >= k)
    p = degree + 1
    mapping = np.zeros((xs.shape[0], p, p), dtype=xs.dtype)
    for j in range(p):
        for k in range(j + 1):
            mapping[:, k, j] = math.comb(j, k) * (-centre) ** (j - k) / half**j
    theta = np.einsum("kpj,kj->kp", mapping, inner.theta)
    full = np.flatnonzero(inner.rank == p)  # refinement needs full rank; each fit is refined alone
    if refinements and xs.dtype == np.float64 and full.size:
        theta[full] = _refine_polynomial(xs[full], y[full], w[full], theta[full], basis[full], mapping[full], refinements)
    fit_hi, fit_lo = _dd_polyval(xs, theta)
    rounded = _dd_round(*_dd_add(fit_hi, fit_lo, -y, np.zeros(y.shape))) * w  # exact, of the rounded θ
    # the centred fit's residuals are the least-squares fit's to rounding; where the rounded
    # coefficients fit worse (they cancel far from 0), the fit is the centred one
    centred = inner.residuals
    better = np.einsum("kn,kn->k", centred, centred) < np.einsum("kn,kn->k", rounded, rounded)
    residuals = np.where(better[:, None], centred, rounded)
    with np.errstate(all="ignore"):  # in the units of y (the residuals are weighted)
        change = np.where(w > 0, (rounded - centred) / w, 0.0)
    rounding = np.sqrt(np.mean(change**2, axis=-1))
    condition = np.full(xs.shape[0], np.nan)  # of the monomial design: not computed (see inner)
    return LinearSolution(
        theta, residuals, mapping @ inner.inverse_factor, inner.rank, condition, coefficient_rounding=rounding,
        centred_basis=(centre, half, inner.theta, inner.inverse_factor),
    )


# double-double helpers (error-free transformations; Dekker / Knuth), numpy float64


def _two_sum(a: Array, b: Array) -> tuple[Array, Array]:
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _split(a: Array) -> tuple[Array, Array]:
    c = 134217729.0 * a  # 2**27 + 1
    hi = c - (c - a)
    return hi, a - hi


def _two_prod(a: Array, b: Array) -> tuple[Array, Array]:
    prod = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    return prod, ((ah * bh - prod) + ah * bl + al * bh) + al * bl


def _dd_add(ah: Array, al: Array, bh: Array, bl: Array) -> tuple[Array, Array]:
    s, e = _two_sum(ah, bh)
    return _two_sum(s, e + al + bl)


def _dd_round(hi: Array, lo: Array) -> Array:
    return hi + lo


def _dd_powers(x: Array, degree: int) -> list[tuple[Array, Array]]:
    """``x^k`` for k = 0..degree as double-double pairs."""
    powers = [(np.ones_like(x), np.zeros_like(x))]
    for _ in range(degree):
        hi, lo = powers[-1]
        prod, err = _two_prod(hi, x)
        powers.append(_two_sum(prod, err + lo * x))
    return powers


def _dd_polyval(x: Array, theta: Array) -> tuple[Array, Array]:
    """``Σ_k θ_k x^k`` in double-double; ``x (K, n)``, ``theta (K, p)``."""
    acc_hi, acc_lo = np.zeros_like(x), np.zeros_like(x)
    for k, (hi, lo) in enumerate(_dd_powers(x, theta.shape[-1] - 1)):
        prod, err = _two_prod(hi, theta[:, k : k + 1])
        acc_hi, acc_lo = _dd_add(acc_hi, acc_lo, prod, err + lo * theta[:, k : k + 1])
    return acc_hi, acc_lo


def _refine_polynomial(x: Array, y: Array, w: Array, theta: Array, basis: Array, mapping: Array, steps: int) -> Array:
    """Björck's refinement of ``r + WAθ = Wy, (WA)ᵀr = 0`` with residuals in double-double."""
    th = theta.copy()

    def weighted_misfit(theta_: Array) -> tuple[Array, Array]:  # W (y - Aθ) in double-double
        fit_hi, fit_lo = _dd_polyval(x, theta_)
        hi, lo = _dd_add(y, np.zeros_like(y), -fit_hi, -fit_lo)
        prod, err = _two_prod(hi, w)
        return _two_sum(prod, err + lo * w)

    r = _dd_round(*weighted_misfit(th))
    qn, rn = np.linalg.qr(basis)
    powers = _dd_powers(x, th.shape[-1] - 1)
    for _ in range(steps):
        f = _dd_round(*_dd_add(*weighted_misfit(th), -r, np.zeros_like(r)))  # Wy - r - WAθ
        g = np.empty_like(th)  # -(WA)ᵀ r, each entry summed exactly
        wr = w * r
        for k, (hi, lo) in enumerate(powers):
            prod, err = _two_prod(hi, wr)
            for i in range(x.shape[0]):
                g[i, k] = -math.fsum(np.concatenate([prod[i], err[i], lo[i] * wr[i]]))
        g_t = np.einsum("kjt,kj->kt", mapping, g)  # basis B = A M  =>  Bᵀ r = Mᵀ Aᵀ r
        a = np.linalg.solve(np.swapaxes(rn, 1, 2), g_t[..., None])[..., 0]
        qtf = np.einsum("knp,kn->kp", qn, f)
        dc = np.linalg.solve(rn, (qtf - a)[..., None])[..., 0]
        r = r + (f - np.einsum("knp,kp->kn", qn, qtf - a))
        th = th + np.einsum("kpj,kj->kp", mapping, dc)
    return th
