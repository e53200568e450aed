"""Fast fused Levenberg-Marquardt for many small independent least-squares fits (K up to millions).

Every fit ``k`` minimises ``cost_k = ½ Σ_i r_ki²`` (residuals already weighted by ``1/σ`` and masked)
over its own free parameters. :mod:`gradfit.solvers.least_squares` is the accurate reference (SVD
steps, Moré's trust region, restarts, numpy bookkeeping); this module trades its generality for
throughput on the common case of many small, well-posed fits. Per iteration it costs one pass of
the model over the data and a few hundred operations on ``(K,)`` vectors:

* **One pass per trial point.** :func:`formula_system` evaluates the model and its symbolic
  partial derivatives in one compiled program, giving ``M = [J | r]`` (the ``q`` free parameters'
  Jacobian columns, then the residuals; weights and the padding mask applied), ``block`` fits at a
  time so the temporaries stay in cache. The ``(q+1)(q+2)/2`` dot products along the points give
  ``G = M Mᵀ``: ``JᵀJ``, ``Jᵀr`` and ``rᵀr`` together. The trial's cost decides acceptance, and an
  accepted trial's normal equations are ready for the next step with nothing evaluated again.
* **Small solves as vector operations.** Per-fit state is stored component-major — parameters
  ``(p, K)`` and the lower triangle of ``G`` packed ``(T, K)`` — so every matrix entry is a
  contiguous ``(K,)`` vector, and the ``q × q`` systems are solved by a Cholesky factorisation
  unrolled over ``q`` (:func:`cholesky_packed`): about ``q³/3`` fused multiply-adds on vectors,
  several times faster than LAPACK's batched ``cholesky_ex`` (one call per tiny matrix) and the
  same code on a GPU. Factoring the augmented matrix ``[[JᵀJ, Jᵀr], [rᵀJ, ·]]`` gives the forward
  substitution for free, and with it the Gauss-Newton gain ``½ gᵀ(JᵀJ)⁻¹g = ½‖z‖²``. The damped
  and the undamped system are factored side by side in one ``(2K,)`` pass; the undamped one
  serves the convergence tests, so that no test depends on the damping.
* **Per-fit damping and acceptance with masks**: Marquardt scaling by the running maximum of
  ``diag(JᵀJ)`` (Moré), Nielsen's damping update, no Python loop over K and one host
  synchronisation per iteration (how many fits go on). When fewer than half the fits of the
  working set go on, it is compacted to those before their trial points are evaluated.
* **Bit-reproducible per fit.** Every operation is elementwise or a reduction along one fit's
  own points (no batched matrix product, whose BLAS kernel depends on each matrix's alignment),
  so a fit's numbers do not depend on which other fits share its batch, block or thread.
* ``torch.compile`` does not pay here (measured on a 2-core CPU: 10-35 s to compile the model and
  Gram step, a 2x faster step, slower than eager for the fused reduction), so all of it is eager.

Statuses (integer codes; names in :data:`STATUS_NAMES`):

``converged``
    At an accepted point, a full Gauss-Newton step could lower the cost by at most ``ftol``
    relative, or would change every free parameter by at most ``xtol·(|θ| + xtol)`` (tested only
    where that gain is below 1% of the cost), or the residuals are exactly zero; or no damped step
    lowers the cost while that full step is below ``xtol`` (the residuals are rounding errors, as
    on noise-free data: their part along the Jacobian, which the gain measures, is rounding noise).
``max_iter``
    The trial budget ran out first.
``non_finite``
    The model or its derivatives are not finite at the starting values. (Non-finite *trial*
    points are never accepted: they count as failed steps.)
``singular``
    ``JᵀJ`` is singular where the fit stopped: no free parameter changes the model (at the start),
    or ``JᵀJ`` is not numerically positive definite and no damped step could lower the cost by more
    than ``ftol`` (the floor of a flat valley), or the budget ran out with ``JᵀJ`` singular.
``stalled``
    The damping grew past ``1e16`` without an acceptable step, and a full Gauss-Newton step would
    still move a parameter by more than ``xtol``.

Standard errors come from the same factorisation at the solution:
:attr:`BatchedSolution.inverse_diagonal` is the diagonal of ``(JᵀJ)⁻¹`` (``cov = s² (JᵀJ)⁻¹``), with an upper bound of the
scaled condition number, :attr:`BatchedSolution.condition`, so that a caller can send
ill-conditioned fits to the SVD path of :func:`gradfit.stats.fit_report` (the normal equations
square the condition number and lose about ``log10(condition)`` of 16 digits).

Bounds are enforced by clamping trial points into the box, with an active set: a parameter on a
bound whose gradient points outwards is frozen for the step (as in the reference solver).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from gradfit.errors import ModelError, OptionError

if TYPE_CHECKING:
    import torch

    Tensor = torch.Tensor

__all__ = [
    "BatchedOptions",
    "BatchedSolution",
    "STATUS_NAMES",
    "STATUS_MESSAGES",
    "RUNNING",
    "CONVERGED",
    "MAX_ITER",
    "NON_FINITE",
    "SINGULAR",
    "STALLED",
    "solve_batched",
    "solve_linear_batched",
    "formula_system",
    "cholesky_packed",
    "normal_covariance_diagonal",
]

RUNNING, CONVERGED, MAX_ITER, NON_FINITE, SINGULAR, STALLED = range(6)
#: status names by code
STATUS_NAMES = ("running", "converged", "max_iter", "non_finite", "singular", "stalled")
#: messages by code (what a user reads)
STATUS_MESSAGES = (
    "still running (internal state, never returned)",
    "converged: a full Gauss-Newton step would change the sum of squares or the parameters by less than the tolerance",
    "stopped at the iteration limit before converging — raise max_iter or give better starting values",
    "the sum of squares is not finite at the starting values (the model or its derivatives are NaN or inf "
    "on some points there, or the residuals overflow when squared) — give starting values where the model "
    "is finite on every point, or rescale the data",
    "stopped: JᵀJ is singular — some parameter combination does not change the model for this group's data; "
    "fix parameters or check the model and the starting values",
    "stopped: no step lowers the sum of squares although the convergence tests are not met — "
    "give better starting values",
)

#: relative Gauss-Newton gain below which cost differences are mostly rounding noise (float64)
_NOISE_REGION = 1e-10
#: relative cost increase tolerated in that region
_NOISE_SLACK = 1e-9
#: a Jacobian column this much smaller (in norm) than at the start counts as vanished
_VANISHED = 1e-8
#: damping beyond which a fit counts as stalled
_MAX_DAMPING = 1e16
#: fits per model evaluation on a CPU (measured: 2048-8192 best for 5 parameters × 25 points)
_CPU_BLOCK = 4096


@dataclass(frozen=True)
class BatchedOptions:
    """Settings of :func:`solve_batched`.

    Attributes
    ----------
    max_iter
        Trial steps per fit.
    ftol
        Converged when a full Gauss-Newton step could lower the cost by at most this fraction
        (default as tight as the reference solver's: the gain is quadratic in the distance to the
        minimum). Gpufit's settings correspond to ``ftol = xtol = 1e-4, max_iter = 10``.
    xtol
        Converged when a full Gauss-Newton step would change every free parameter by at most
        ``xtol·(|θ| + xtol)`` (tested only where the gain is below 1% of the cost).
    initial_damping
        Starting damping ``λ`` relative to the scaled ``diag(JᵀJ)`` (Nielsen's ``τ``).
    compact
        Compact the working set when fewer than this fraction of its fits still run.
    block
        Fits per evaluation of the model (its ``(block, n)`` temporaries stay in cache; the small
        systems are still solved for the whole working set at once). Default: 4096 on a CPU, the
        whole working set on a GPU (where every operation should be as large as possible).
    """

    max_iter: int = 200
    ftol: float = 1e-20
    xtol: float = 1e-10
    initial_damping: float = 1e-3
    compact: float = 0.5
    block: int | None = None

    def __post_init__(self) -> None:
        if self.max_iter < 0:
            raise OptionError(f"max_iter must be >= 0, got {self.max_iter}")
        for name in ("ftol", "xtol"):
            if not getattr(self, name) >= 0:
                raise OptionError(f"batched solver option {name} must be >= 0, got {getattr(self, name)}")
        if not self.initial_damping > 0:
            raise OptionError(f"initial_damping must be > 0, got {self.initial_damping}")
        if self.block is not None and self.block < 1:
            raise OptionError(f"block must be >= 1, got {self.block}")
        if not 0.0 <= self.compact < 1.0:
            raise OptionError(f"compact must be in [0, 1), got {self.compact}")


@dataclass(frozen=True)
class BatchedSolution:
    """Result of :func:`solve_batched` for K fits (q = number of free parameters).

    Attributes
    ----------
    theta
        Parameters ``(K, p)`` (fixed ones unchanged).
    packed
        Lower triangle of ``G = M Mᵀ`` at ``theta``, packed row by row, component-major ``(T, K)``
        with ``T = (q+1)(q+2)/2`` (see :attr:`normal` for the full matrices).
    n_iter
        Trial steps per fit ``(K,)``.
    code
        Status code per fit ``(K,)`` (see :data:`STATUS_NAMES`).
    vanished
        ``(K,)`` bool: a free parameter's Jacobian column shrank to ``1e-8`` of its norm at the
        start (a parameter running off to infinity: a spurious stationary point).
    inverse_diagonal
        ``(K, q)`` diagonal of ``(JᵀJ)⁻¹`` at ``theta`` (``inf`` where ``JᵀJ`` is numerically
        singular): the variances are ``s²`` times it.
    condition
        ``(K,)`` upper bound (at most ``q²`` times too large) of the condition number of the
        column-equilibrated ``JᵀJ``; ``inf`` where singular.
    """

    theta: Tensor
    packed: Tensor
    n_iter: Tensor
    code: Tensor
    vanished: Tensor
    inverse_diagonal: Tensor
    condition: Tensor

    @property
    def converged(self) -> Tensor:
        """``(K,)`` bool: which fits converged."""
        return self.code == CONVERGED

    @property
    def normal(self) -> Tensor:
        """``G = M Mᵀ`` ``(K, q + 1, q + 1)``: ``JᵀJ`` in ``[:, :q, :q]``, ``Jᵀr`` in ``[:, :q, q]``,
        ``Σr²`` in ``[:, q, q]`` (weighted residuals)."""
        k, q1 = self.packed.shape[-1], self.inverse_diagonal.shape[-1] + 1
        return self.packed[_unpack_index(q1, self.packed.device)].T.reshape(k, q1, q1)

    @property
    def jtj(self) -> Tensor:
        """``JᵀJ`` over the free parameters ``(K, q, q)``."""
        q = self.inverse_diagonal.shape[-1]
        return self.normal[:, :q, :q]

    @property
    def chisqr(self) -> Tensor:
        """``Σ r²`` per fit ``(K,)`` (weighted residuals)."""
        return self.packed[-1]

    @property
    def cost(self) -> Tensor:
        """``½ Σ r²`` per fit ``(K,)``."""
        return 0.5 * self.chisqr

    def status_names(self) -> list[str]:
        """Status name per fit."""
        return [STATUS_NAMES[c] for c in self.code.tolist()]


# ------------------------------------------------------------------------------ the formula system


def formula_system(model: Any, free: Sequence[bool]) -> Callable[[Tensor, Mapping[str, Tensor]], list[Tensor]]:
    """``system(theta, data) -> [J_1, ..., J_q, r]`` for a formula model (weighted, each ``(K, n)``).

    Parameters
    ----------
    model
        A :class:`gradfit.model.FormulaModel`.
    free
        ``(p,)`` which parameters are estimated.

    Returns
    -------
    callable
        ``theta`` is component-major ``(p, K)``; ``data`` holds the input columns ``(K, n)`` under
        their names, the target under ``"__y"`` and, optionally, the weights (``mask / σ``) under
        ``"__w"``. It returns the free parameters' Jacobian columns, then the residuals
        ``prediction - y``, all times the weights (broadcastable to ``(K, n)``).
    """
    from gradfit.evaluate import compile_torch

    free = [bool(f) for f in free]
    if len(free) != model.n_params:
        raise ModelError(f"free must have one entry per parameter ({model.n_params}), got {len(free)}")
    derivatives = model.derivative_trees()
    program = compile_torch([model.formula.tree, *[d for d, f in zip(derivatives, free) if f]])
    names = model.param_names
    inputs = model.input_names

    def system(theta: Tensor, data: Mapping[str, Tensor]) -> list[Tensor]:
        env: dict[str, Any] = {name: data[name] for name in inputs}
        env.update(zip(names, theta.unsqueeze(-1)))
        prediction, *columns = program(env)
        y = data["__y"]
        rows = [*columns, prediction - y]
        weights = data.get("__w")
        return rows if weights is None else [row * weights for row in rows]

    return system


# ------------------------------------------------------------------------------- packed triangles


@lru_cache(maxsize=64)
def _packed_index(size: int) -> tuple[tuple[int, int], ...]:
    """``(i, j)`` of the packed lower triangle of a ``size × size`` matrix, row by row."""
    return tuple((i, j) for i in range(size) for j in range(i + 1))


def _pos(i: int, j: int) -> int:
    """Row of entry ``(i, j)`` in the packed lower triangle."""
    if j > i:
        i, j = j, i
    return i * (i + 1) // 2 + j


def _pack_index(size: int, device: Any) -> Tensor:
    """Flat ``(size*size)`` positions of the packed lower triangle's entries."""
    import torch

    return torch.tensor([i * size + j for i, j in _packed_index(size)], device=device)


def _unpack_index(size: int, device: Any) -> Tensor:
    """Packed row of every entry of the full symmetric ``size × size`` matrix (row-major)."""
    import torch

    return torch.tensor([_pos(i, j) for i in range(size) for j in range(size)], device=device)


# --------------------------------------------------------------------- unrolled small factorisations


def cholesky_packed(a: Tensor, q: int, tiny: float, augmented: bool = False) -> tuple[dict[tuple[int, int], Tensor], list[Tensor], Tensor]:
    """Cholesky factors of W symmetric matrices stored as packed lower triangles ``a (T, W)``.

    Unrolled over the matrix size: every entry is a ``(W,)``-vector operation (fused
    multiply-adds), so a batch costs about ``q³/3`` vector operations and no per-matrix call.

    Parameters
    ----------
    a
        ``(T, W)``: row ``i(i+1)/2 + j`` holds entry ``(i, j)``, ``j ≤ i``, of every matrix.
    q
        Size of the matrix to factor.
    tiny
        A pivot at or below ``tiny`` counts as a failure (not numerically positive definite); the
        factorisation goes on with that pivot raised to ``tiny`` so the numbers stay finite.
    augmented
        The matrices are ``(q + 1) × (q + 1)`` ``[[A, c], [cᵀ, ·]]``: also compute the last row of
        the factor, which is ``z = L⁻¹c`` (forward substitution for free). Its last pivot is not
        needed and not computed.

    Returns
    -------
    (L, inverse_pivots, ok)
        Off-diagonal factor entries ``L[(i, j)]`` (``j < i``; with ``augmented``, ``L[(q, j)] =
        z_j``), ``1 / L[i, i]``, and ``ok (W,)`` where every pivot exceeded ``tiny`` (NaN fails).
    """
    import torch

    factor: dict[tuple[int, int], Tensor] = {}
    inverse: list[Tensor] = []
    ok: Tensor | None = None
    last = q + 1 if augmented else q
    for j in range(q):
        pivot = a[_pos(j, j)]
        for k in range(j):
            pivot = torch.addcmul(pivot, factor[(j, k)], factor[(j, k)], value=-1.0)
        good = pivot > tiny
        ok = good if ok is None else ok & good
        inv = torch.rsqrt(torch.clamp(pivot, min=tiny))
        inverse.append(inv)
        for i in range(j + 1, last):
            entry = a[_pos(i, j)]
            for k in range(j):
                entry = torch.addcmul(entry, factor[(i, k)], factor[(j, k)], value=-1.0)
            factor[(i, j)] = entry * inv
    if ok is None:
        ok = torch.ones(a.shape[-1], dtype=torch.bool, device=a.device)
    return factor, inverse, ok


def _back_substitute(factor: dict[tuple[int, int], Tensor], inverse: list[Tensor], z: list[Tensor]) -> list[Tensor]:
    """Solve ``Lᵀ x = z``."""
    import torch

    q = len(inverse)
    x: list[Tensor] = [z[0]] * q
    for i in reversed(range(q)):
        value = z[i]
        for k in range(i + 1, q):
            value = torch.addcmul(value, factor[(k, i)], x[k], value=-1.0)
        x[i] = value * inverse[i]
    return x


def _inverse_diagonal(factor: dict[tuple[int, int], Tensor], inverse: list[Tensor]) -> list[Tensor]:
    """Diagonal of ``(L Lᵀ)⁻¹ = L⁻ᵀ L⁻¹``: ``Σ_i (L⁻¹)_ij²`` for every column j."""
    import torch

    q = len(inverse)
    w: dict[tuple[int, int], Tensor] = {}  # W = L⁻¹, lower triangular
    for j in range(q):
        w[(j, j)] = inverse[j]
        for i in range(j + 1, q):
            acc = factor[(i, j)] * w[(j, j)]
            for k in range(j + 1, i):
                acc = torch.addcmul(acc, factor[(i, k)], w[(k, j)])
            w[(i, j)] = -acc * inverse[i]
    out = []
    for j in range(q):
        total = w[(j, j)] * w[(j, j)]
        for i in range(j + 1, q):
            total = torch.addcmul(total, w[(i, j)], w[(i, j)])
        out.append(total)
    return out


@dataclass(frozen=True)
class _Factor:
    """Cholesky factor of the column-equilibrated ``S JᵀJ S`` (``S = diag(JᵀJ)^-½``) of K fits."""

    factor: dict[tuple[int, int], Tensor]
    inverse: list[Tensor]
    scale: Tensor  # (q, K) the diagonal of S
    ok: Tensor  # (K,) finite and numerically positive definite


def _equilibrated_cholesky(packed: Tensor, q: int) -> _Factor:
    """Factor the ``JᵀJ`` block of packed ``G`` ``(T, K)`` after scaling it to a unit diagonal."""
    import torch

    diag = packed[[_pos(i, i) for i in range(q)]]  # (q, K)
    usable = torch.isfinite(packed[: _pos(q - 1, q - 1) + 1]).all(0) & (diag > 0).all(0)
    scale = torch.rsqrt(torch.where(diag > 0, diag, 1.0))
    rows, cols = zip(*_packed_index(q))
    scaled = packed[: len(rows)] * (scale[list(rows)] * scale[list(cols)])
    factor, inverse, ok = cholesky_packed(scaled, q, 4.0 * q * torch.finfo(packed.dtype).eps)
    return _Factor(factor, inverse, scale, ok & usable)


def _packed_covariance(packed: Tensor, q: int) -> tuple[Tensor, Tensor]:
    """Diagonal of ``(JᵀJ)⁻¹`` ``(q, K)`` and the condition bound ``(K,)`` from packed ``JᵀJ``."""
    k = packed.shape[-1]
    if q == 0:
        return packed.new_zeros((0, k)), packed.new_ones(k)
    return _covariance_of(_equilibrated_cholesky(packed, q), q)


def _covariance_of(f: _Factor, q: int) -> tuple[Tensor, Tensor]:
    import torch

    inv_diag = torch.stack(_inverse_diagonal(f.factor, f.inverse))  # of the unit-diagonal matrix
    condition = torch.where(f.ok, q * inv_diag.sum(0), math.inf)
    return torch.where(f.ok, inv_diag * f.scale * f.scale, math.inf), condition


def normal_covariance_diagonal(jtj: Tensor) -> tuple[Tensor, Tensor]:
    """Diagonal of ``(JᵀJ)⁻¹`` for K fits, and an upper bound of the scaled condition number.

    Parameters
    ----------
    jtj
        ``(K, q, q)`` symmetric positive semi-definite (only the lower triangle is read).

    Returns
    -------
    (diagonal, condition)
        ``(K, q)`` diagonal of the inverse (``inf`` where ``JᵀJ`` is numerically singular or not
        finite), and ``(K,)`` ``q · trace(A⁻¹)`` of the unit-diagonal (equilibrated) ``A``: an
        upper bound of its 2-norm condition number, at most ``q²`` times too large (``inf`` where
        singular). The normal equations lose about ``log10(condition)`` of 16 digits.
    """
    k, q = jtj.shape[0], jtj.shape[-1]
    packed = jtj.reshape(k, q * q)[:, _pack_index(q, jtj.device)].T
    diagonal, condition = _packed_covariance(packed, q)
    return diagonal.T, condition


# ---------------------------------------------------------------------------------------- the solver


class _Layout:
    """Row positions of the packed state ``(p + T, K)``: parameters, then the packed ``G``.

    Index tensors are built once per solve (building one from a Python list costs more than the
    gather itself on small problems).
    """

    def __init__(self, p: int, q: int, free_index: list[int], device: Any) -> None:
        import torch

        self.p, self.q, self.free_index = p, q, free_index
        self.all_free = free_index == list(range(p))
        self.size = p + (q + 1) * (q + 2) // 2
        self.cost_row = p + _pos(q, q)
        self.diagonal = [p + _pos(i, i) for i in range(q)]

        def index(values: Sequence[int]) -> Tensor:
            return torch.tensor(list(values), dtype=torch.int64, device=device)

        self.diagonal_index = index(self.diagonal)
        self.finite_index = index([*self.diagonal, self.cost_row])
        self.gradient_index = index([p + _pos(q, j) for j in range(q)])
        self.free_tensor = index(free_index)
        rows, cols = zip(*_packed_index(q + 1))
        self.outer_rows, self.outer_cols = index(rows), index(cols)


@dataclass
class _Work:
    """The working set: all fits before the first compaction, afterwards the ones still running."""

    index: Tensor  # (Kw,) positions in the full problem
    state: Tensor  # (p + T, Kw): parameters, then G = M Mᵀ at them (packed lower triangle)
    dmax: Tensor  # (q, Kw) running maximum of diag(JᵀJ) (Marquardt/Moré scaling)
    damping: Tensor  # (Kw,)
    nu: Tensor  # (Kw,) Nielsen's growth factor
    n_iter: Tensor  # (Kw,) int64
    code: Tensor  # (Kw,) int64
    data: dict[str, Tensor]

    def store(self, state: Tensor, n_iter: Tensor, code: Tensor) -> None:
        """Write this working set into the full-size outputs."""
        state.index_copy_(1, self.index, self.state)
        n_iter.index_copy_(0, self.index, self.n_iter)
        code.index_copy_(0, self.index, self.code)

    def subset(self, keep: Tensor) -> _Work:
        return _Work(
            index=self.index[keep],
            state=self.state[:, keep],
            dmax=self.dmax[:, keep],
            damping=self.damping[keep],
            nu=self.nu[keep],
            n_iter=self.n_iter[keep],
            code=self.code[keep],
            data={name: value[keep] for name, value in self.data.items()},
        )


@dataclass(frozen=True)
class _Settings:
    layout: _Layout
    max_iter: int
    ftol: float
    xtol: float
    compact: float
    block: int
    noise_region: float
    noise_slack: float
    tiny: float
    lower: Tensor  # (q, 1)
    upper: Tensor
    bounded: bool
    on_iteration: Callable[[], None] | None = None


def solve_batched(
    system: Callable[[Tensor, Mapping[str, Tensor]], Tensor],
    theta0: Tensor,
    data: Mapping[str, Tensor],
    *,
    free: Sequence[bool] | None = None,
    lower: Sequence[float] | None = None,
    upper: Sequence[float] | None = None,
    options: BatchedOptions | None = None,
    on_iteration: Callable[[], None] | None = None,
) -> BatchedSolution:
    """Solve K independent least-squares problems with a fused, batched Levenberg-Marquardt.

    Parameters
    ----------
    system
        ``system(theta (p, K'), data) -> [J_1, ..., J_q, r]``: the free parameters' weighted
        Jacobian columns (each broadcastable to ``(K', n)``) and then the weighted residuals
        (exactly ``(K', n)``), e.g. :func:`formula_system`; ``theta`` is component-major. It is
        called with column blocks of ``theta`` and the matching row blocks of ``data`` (every
        tensor's first dimension is the fit).
    theta0
        Starting values ``(K, p)``; their dtype and device are the solve's.
    data
        Tensors with a leading dimension K (inputs, targets, weights) that ``system`` reads.
    free
        ``(p,)`` which parameters are estimated (default all); the others keep their values.
    lower, upper
        ``(p,)`` bounds shared by every fit (default none). Starting values are clamped into them.
    options
        Tolerances and limits.
    on_iteration
        Called before each iteration; whatever it raises abandons the solve.

    Returns
    -------
    BatchedSolution

    Raises
    ------
    ModelError
        For inconsistent shapes or bounds.
    """
    import torch

    options = options or BatchedOptions()
    theta0 = _check_theta(theta0)
    k, p = theta0.shape
    free_list = [True] * p if free is None else [bool(f) for f in free]
    if len(free_list) != p:
        raise ModelError(f"free must have one entry per parameter ({p}), got {len(free_list)}")
    free_index = [j for j, f in enumerate(free_list) if f]
    q = len(free_index)
    dtype, device = theta0.dtype, theta0.device
    layout = _Layout(p, q, free_index, device)
    lo = _bound(lower, p, -math.inf, dtype, device)[free_index]
    hi = _bound(upper, p, math.inf, dtype, device)[free_index]
    if bool((lo > hi).any()) or bool(torch.isnan(lo).any() | torch.isnan(hi).any()):
        raise ModelError("every lower bound must be <= its upper bound (and not NaN) — check the bounds")
    bounded = bool((torch.isfinite(lo) | torch.isfinite(hi)).any())
    data = {name: value for name, value in data.items()}
    for name, value in data.items():
        if value.shape[0] != k:
            raise ModelError(f"data '{name}' has {value.shape[0]} rows, theta0 has {k} — give one row per fit")
    state = theta0.new_empty((layout.size, k))
    state[:p] = theta0.T
    if bounded:
        state[free_index] = torch.clamp(state[free_index], lo[:, None], hi[:, None])
    block = options.block or (_CPU_BLOCK if device.type == "cpu" else k)
    _normal(system, state[:p], data, q, block, out=state[p:])
    finite = _finite(state, layout)
    state[p:] = torch.where(finite, state[p:], 0.0)
    diag0 = state[layout.diagonal_index]  # (q, K)
    code = torch.full((k,), RUNNING if q else CONVERGED, dtype=torch.int64, device=device)
    if q:
        code[(diag0 == 0).all(0)] = SINGULAR
    code[~finite] = NON_FINITE
    n_iter = torch.zeros(k, dtype=torch.int64, device=device)
    if q:
        eps = torch.finfo(dtype).eps
        settings = _Settings(
            layout=layout,
            max_iter=options.max_iter,
            ftol=max(options.ftol, 100.0 * eps * eps),
            xtol=max(options.xtol, 1000.0 * eps),
            compact=options.compact,
            block=block,
            noise_region=max(_NOISE_REGION, 100.0 * eps),
            noise_slack=max(_NOISE_SLACK, 1000.0 * eps),
            tiny=16.0 * eps,
            lower=lo[:, None],
            upper=hi[:, None],
            bounded=bounded,
            on_iteration=on_iteration,
        )
        work = _Work(
            index=torch.arange(k, device=device),
            state=state.clone(),
            dmax=torch.clamp(diag0, min=torch.finfo(dtype).tiny),
            damping=torch.full((k,), options.initial_damping, dtype=dtype, device=device),
            nu=torch.full((k,), 2.0, dtype=dtype, device=device),
            n_iter=n_iter.clone(),
            code=code.clone(),
            data=data,
        )
        _iterate(system, work, settings, state, n_iter, code)
    return _solution(state, layout, n_iter, code, diag0)


def solve_linear_batched(
    system: Callable[[Tensor, Mapping[str, Tensor]], Tensor],
    theta0: Tensor,
    data: Mapping[str, Tensor],
    *,
    free: Sequence[bool] | None = None,
    block: int | None = None,
) -> BatchedSolution:
    """Solve K least-squares problems whose model is linear in its parameters, by their normal equations.

    For a linear model one Gauss-Newton step from any point lands on the solution: the normal
    equations ``JᵀJ δ = -Jᵀr`` at ``theta0`` are factored once (column-equilibrated Cholesky,
    unrolled over the fits as in :func:`solve_batched`), and the system is evaluated again at the
    solution for its residuals and the statistics. Fits whose ``JᵀJ`` is not numerically positive
    definite are ``singular``; :attr:`BatchedSolution.condition` tells the caller which others the
    normal equations may have cost digits (the group fits solve those again by an SVD).

    Parameters
    ----------
    system, theta0, data, free
        As in :func:`solve_batched`; ``system`` must be linear in the free parameters.
    block
        Fits per evaluation of the system (default as in :class:`BatchedOptions`).
    """
    import torch

    theta0 = _check_theta(theta0)
    k, p = theta0.shape
    free_index = [j for j, f in enumerate([True] * p if free is None else free) if f]
    q = len(free_index)
    layout = _Layout(p, q, free_index, theta0.device)
    block = block or (_CPU_BLOCK if theta0.device.type == "cpu" else k)
    state = theta0.new_empty((layout.size, k))
    state[:p] = theta0.T
    _normal(system, state[:p], data, q, block, out=state[p:])
    finite = _finite(state, layout)
    diag0 = state[layout.diagonal_index]
    code = torch.full((k,), CONVERGED, dtype=torch.int64, device=theta0.device)
    if q:
        f = _equilibrated_cholesky(torch.where(finite, state[p:], 0.0), q)
        gradient = [state[p + _pos(q, j)] * f.scale[j] for j in range(q)]  # S Jᵀr
        z = _forward_substitute(f.factor, f.inverse, gradient)
        step = torch.stack(_back_substitute(f.factor, f.inverse, z)) * f.scale  # (JᵀJ)⁻¹ Jᵀr
        moved = state.index_select(0, layout.free_tensor) - torch.where(f.ok, step, 0.0)
        state.index_copy_(0, layout.free_tensor, moved)
        _normal(system, state[:p], data, q, block, out=state[p:])
        code = torch.where(f.ok, code, SINGULAR)
    code = torch.where(finite & _finite(state, layout), code, NON_FINITE)
    return _solution(state, layout, torch.ones(k, dtype=torch.int64, device=theta0.device), code, diag0)


def _forward_substitute(factor: dict[tuple[int, int], Tensor], inverse: list[Tensor], b: list[Tensor]) -> list[Tensor]:
    """Solve ``L z = b``."""
    import torch

    z: list[Tensor] = []
    for i in range(len(inverse)):
        value = b[i]
        for k in range(i):
            value = torch.addcmul(value, factor[(i, k)], z[k], value=-1.0)
        z.append(value * inverse[i])
    return z


def _solution(state: Tensor, layout: _Layout, n_iter: Tensor, code: Tensor, diag0: Tensor) -> BatchedSolution:
    import torch

    p, q = layout.p, layout.q
    k = state.shape[-1]
    packed = state[p:]
    final_diag = state[layout.diagonal_index]
    if q:
        vanished = ((final_diag <= (_VANISHED**2) * diag0) & (diag0 > 0)).any(0)
    else:
        vanished = torch.zeros(k, dtype=torch.bool, device=state.device)
    inv_diag, condition = _packed_covariance(packed, q)
    return BatchedSolution(
        theta=state[:p].T.contiguous(),
        packed=packed,
        n_iter=n_iter,
        code=code,
        vanished=vanished,
        inverse_diagonal=inv_diag.T.contiguous(),
        condition=condition,
    )


def _check_theta(theta0: Any) -> Tensor:
    import torch

    if not isinstance(theta0, torch.Tensor) or not theta0.is_floating_point():
        theta0 = torch.as_tensor(theta0, dtype=torch.float64)
    if theta0.ndim != 2 or theta0.shape[0] == 0:
        raise ModelError(f"theta0 must have shape (K, p) with K >= 1, got {tuple(theta0.shape)}")
    return theta0.detach()


def _bound(value: Sequence[float] | None, p: int, fill: float, dtype: Any, device: Any) -> Tensor:
    import torch

    if value is None:
        return torch.full((p,), fill, dtype=dtype, device=device)
    tensor = torch.as_tensor(value, dtype=dtype, device=device).reshape(-1)
    if tensor.numel() != p:
        raise ModelError(f"bounds need one value per parameter ({p}), got {tensor.numel()}")
    return tensor


def _normal(
    system: Callable[[Tensor, Mapping[str, Tensor]], list[Tensor]],
    theta: Tensor,
    data: Mapping[str, Tensor],
    q: int,
    block: int,
    out: Tensor,
) -> None:
    """Write the packed lower triangle of ``G = M Mᵀ`` at ``theta (p, K)`` into ``out (T, K)``.

    The system is evaluated ``block`` fits at a time, so that its temporaries stay in cache. Each
    entry of ``G`` is one dot product along the points (``linalg.vecdot``), written in place: unlike
    a batched matrix product, whose kernel depends on each matrix's memory alignment, this makes
    every fit's numbers independent of its position in the batch (results are bit-identical
    whichever other groups are fitted with it).
    """
    import torch

    k = theta.shape[-1]
    pairs = _packed_index(q + 1)
    for start in range(0, k, block):
        stop = min(start + block, k)
        whole = start == 0 and stop == k
        part = data if whole else {name: value[start:stop] for name, value in data.items()}
        rows = system(theta if whole else theta[:, start:stop], part)
        if len(rows) != q + 1:
            raise ModelError(f"system must return q + 1 = {q + 1} arrays (Jacobian columns, then residuals), got {len(rows)}")
        shape = rows[-1].shape  # the residuals have the full (K, n) shape
        if len(shape) != 2 or shape[0] != stop - start:
            raise ModelError(f"the residuals must have shape (K, n) = ({stop - start}, n), got {tuple(shape)}")
        rows = [row if row.shape == shape else row.expand(shape) for row in rows]
        # a constant column (an additive parameter, unweighted: an expanded scalar) needs sums only
        constant = [row.stride() == (0, 0) for row in rows]
        sums: dict[int, Tensor] = {}
        for position, (i, j) in enumerate(pairs):
            target = out[position, start:stop]
            if constant[i] or constant[j]:
                c, other = (i, j) if constant[i] else (j, i)
                value = rows[c].reshape(-1)[:1]
                if constant[other]:
                    target.copy_((value * rows[other].reshape(-1)[:1] * shape[1]).expand_as(target))
                else:
                    if other not in sums:
                        sums[other] = rows[other].sum(-1)
                    torch.mul(sums[other], value, out=target)
            else:
                torch.linalg.vecdot(rows[i], rows[j], out=target)


def _finite(state: Tensor, layout: _Layout) -> Tensor:
    """``(K,)``: every entry of ``M`` was finite (a non-finite entry makes its row's ``Σ m²`` so)."""
    import torch

    return torch.isfinite(state.index_select(0, layout.finite_index).sum(0))


def _iterate(system: Callable[..., Tensor], work: _Work, s: _Settings, state: Tensor, n_iter: Tensor, code: Tensor) -> None:
    """The LM loop; writes every fit's final state into ``state``, ``n_iter`` and ``code``.

    Each iteration tests every running fit at its current point and, for those that go on,
    evaluates one trial point. Fits that stop leave the working set before their trial is evaluated
    once fewer than ``compact`` of it would go on.
    """
    import torch

    layout = s.layout
    p, q = layout.p, layout.q
    cost_row = layout.cost_row
    for iteration in range(s.max_iter + 1):
        if s.on_iteration is not None:
            s.on_iteration()
        running = work.code == RUNNING
        last = iteration == s.max_iter
        trial, gn_ok, gain, gn_small, predicted = _steps(work, s, last)
        cost = 0.5 * work.state[cost_row]
        converged = (cost <= 0) | (gn_ok & ((gain <= s.ftol * cost) | ((gain <= 0.01 * cost) & gn_small)))
        if last:
            stuck = torch.where(gn_ok, MAX_ITER, SINGULAR)
            work.code = torch.where(running, torch.where(converged, CONVERGED, stuck), work.code)
            break
        # JᵀJ singular and no damped step can lower the cost either: a flat valley's floor
        flat = ~gn_ok & (predicted <= s.ftol * cost)
        work.code = torch.where(running & converged, CONVERGED, torch.where(running & flat, SINGULAR, work.code))
        trying = running & ~converged & ~flat
        n_trying = int(trying.sum())  # the one host synchronisation per iteration
        if n_trying == 0:
            break
        if n_trying < s.compact * trying.numel():
            work.store(state, n_iter, code)
            keep = torch.nonzero(trying).flatten()
            work = work.subset(keep)
            trial, gn_ok, gain, predicted, cost = trial[:, keep], gn_ok[keep], gain[keep], predicted[keep], cost[keep]
            gn_small = gn_small[keep]
            trying = torch.ones_like(trying[:n_trying])
        _normal(system, trial[:p], work.data, q, s.block, out=trial[p:])
        trial_cost = 0.5 * trial[cost_row]
        noisy = gn_ok & (gain <= s.noise_region * cost)
        better = (trial_cost < cost) | (noisy & (trial_cost <= cost * (1.0 + s.noise_slack)))
        accept = trying & better & _finite(trial, layout)
        work.state = torch.where(accept, trial, work.state)
        # Nielsen: λ·max(1/3, 1 - (2ρ - 1)³) after a success, λ·ν with ν doubling after a failure;
        # in the noise region (ρ meaningless, the point is at the minimum) λ/3 after a success
        ratio = (cost - trial_cost) / torch.clamp(predicted, min=torch.finfo(cost.dtype).tiny)
        shrink = torch.clamp(1.0 - (2.0 * torch.clamp(ratio, min=0.0, max=1.0) - 1.0) ** 3, min=1.0 / 3.0)
        shrink = torch.where(noisy, 1.0 / 3.0, shrink)
        grow = torch.where(trying, work.nu, 1.0)
        work.damping = work.damping * torch.where(accept, shrink, grow)
        work.nu = torch.where(accept, 2.0, work.nu * grow)
        work.n_iter += trying
        # no step can move it: the minimum to rounding if Gauss-Newton puts it within xtol (noise-free data)
        stuck = torch.where(gn_ok & gn_small, CONVERGED, STALLED)
        work.code = torch.where(trying & (work.damping > _MAX_DAMPING), stuck, work.code)
    work.store(state, n_iter, code)


def _steps(work: _Work, s: _Settings, last: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The trial state (damped step taken) and the Gauss-Newton quantities at the current points.

    Returns ``(trial (p + T, Kw), gn_ok, gain, gn_small, predicted)``: the trial's parameter rows
    are filled (its ``G`` rows are for the caller to evaluate); ``gain`` is the cost reduction a
    full Gauss-Newton step predicts, ``½ gᵀ(JᵀJ)⁻¹g`` (valid where ``gn_ok``: ``JᵀJ`` numerically
    positive definite), ``gn_small`` whether that step is below ``xtol`` relative, ``predicted``
    the reduction the damped step predicts. Both systems are solved in scaled variables
    ``y = S⁻¹ δ``, ``S = diag(dmax)^-½``, side by side in one factorisation.
    """
    import torch

    layout = s.layout
    p, q = layout.p, layout.q
    state = work.state
    kw = state.shape[-1]
    work.dmax = torch.maximum(work.dmax, state.index_select(0, layout.diagonal_index))
    scale = torch.rsqrt(work.dmax)  # (q, Kw)
    aug = torch.cat([scale, scale.new_ones((1, kw))])  # the residual row is not scaled
    outer = aug.index_select(0, layout.outer_rows) * aug.index_select(0, layout.outer_cols)
    theta_free = state[:p] if layout.all_free else state.index_select(0, layout.free_tensor)  # (q, Kw)
    width = kw if last else 2 * kw
    systems = state.new_empty((outer.shape[0], width))
    scaled = torch.mul(state[p:], outer, out=systems[:, :kw])  # [[S A S, S g], [., rr]] packed
    if s.bounded:
        g = state.index_select(0, layout.gradient_index)
        frozen = ((theta_free <= s.lower) & (g > 0)) | ((theta_free >= s.upper) & (g < 0))
        keep = torch.cat([(~frozen).to(scaled.dtype), scale.new_ones((1, kw))])
        scaled *= keep.index_select(0, layout.outer_rows) * keep.index_select(0, layout.outer_cols)
        for i in range(q):
            scaled[_pos(i, i)] += frozen[i].to(scaled.dtype)  # frozen parameters: identity rows
    if not last:
        systems[:, kw:] = scaled
        for i in range(q):
            systems[_pos(i, i), kw:] += work.damping
    factor, inverse, ok = cholesky_packed(systems, q, s.tiny, augmented=True)
    z = [factor[(q, j)] for j in range(q)]  # L⁻¹ S g
    x = _back_substitute(factor, inverse, z)  # (JᵀJ)⁻¹-ish solution; the step is -x
    zz = z[0] * z[0]
    for j in range(1, q):
        zz = torch.addcmul(zz, z[j], z[j])
    y = -torch.stack(x)  # (q, width)
    gn_ok = ok[:kw]
    step_gn = y[:, :kw] * scale
    gain = 0.5 * zz[:kw]  # ½ gᵀ(JᵀJ)⁻¹g over the parameters not frozen on a bound
    gn_small = (step_gn.abs() <= s.xtol * (theta_free.abs() + s.xtol)).all(0)
    trial = torch.empty_like(state)
    if last:
        return trial, gn_ok, gain, gn_small, gain
    y_d = y[:, kw:]
    step = y_d * scale
    if s.bounded:
        moved = torch.clamp(theta_free + step, s.lower, s.upper)
        predicted = _model_reduction(scaled, (moved - theta_free) / scale, q)
    else:
        moved = theta_free + step
        # (A + λI) y = -c  =>  -cᵀy - ½ yᵀA y = ½ (‖z‖² + λ‖y‖²)
        predicted = 0.5 * (zz[kw:] + work.damping * (y_d * y_d).sum(0))
    if layout.all_free:
        trial[:p] = moved
    else:
        trial[:p] = state[:p]
        trial.index_copy_(0, layout.free_tensor, moved)
    return trial, gn_ok, gain, gn_small, predicted


def _model_reduction(scaled: Tensor, y: Tensor, q: int) -> Tensor:
    """``-cᵀy - ½ yᵀ A y`` for the packed scaled ``[[A, c], ...]`` ``(T, K)`` and ``y (q, K)``."""
    import torch

    total = torch.zeros_like(y[0])
    for i in range(q):
        ay = scaled[_pos(i, 0)] * y[0]
        for j in range(1, q):
            ay = torch.addcmul(ay, scaled[_pos(i, j)], y[j])
        total = total - y[i] * (scaled[_pos(q, i)] + 0.5 * ay)
    return total
