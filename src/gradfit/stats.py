"""Statistics of least-squares fits, batched over K fits: covariance, errors, intervals, bands, metrics.

Leading dimensions are fits: a Jacobian ``(K, n, p)`` with residuals ``(K, n)`` is K fits, a
Jacobian ``(n, p)`` with residuals ``(n,)`` is one, and results have the same leading dimensions
(``(K, p, p)`` or ``(p, p)`` covariances, ``(K,)`` arrays or numpy scalars of statistics). Residuals
and Jacobian are the *weighted* ones (divided by sigma) when the fit had sigma.

The arithmetic is numpy: these are small dense problems (``p × p`` factors per fit), where numpy's
per-operation cost is a fraction of eager torch's, and the number of operations, not their size, is
the cost of a single fit — hence one factorisation shared by everything, and per-fit statistics
computed on numpy scalars when there is one fit. Torch tensors are accepted and copied to the host
once; results are numpy arrays.

Conventions
-----------
* Covariance ``C = s² (JᵀJ)⁻¹`` with ``s² = Σr² / (n - p)`` (``p`` = free parameters), or ``s² = 1``
  with ``absolute_sigma=True`` — as ``scipy.optimize.curve_fit``; a robust fit gives its own ``s²``
  (:func:`m_estimator_variance`; an ``mae`` fit :func:`median_regression_variance`). ``(JᵀJ)⁻¹`` comes from an SVD of
  the column-equilibrated Jacobian, never from forming ``JᵀJ``: the normal equations square the
  condition number and lose the digits NIST's certified standard deviations need.
* A direction of parameter space the Jacobian does not see (singular value below
  ``max(n, p)·eps·s_max``) makes the parameters involved non-identifiable: their variances are
  ``inf`` and their covariances NaN. Fixed parameters have NaN rows and columns.
* ``R² = 1 - SSR/SST`` with weights ``w = 1/σ²`` if the fit had sigma (``SST`` about the weighted
  mean). ``chisqr = Σr²`` (weighted), ``redchi = chisqr / dof``.
* AIC and BIC follow lmfit's Gaussian log-likelihood convention: ``AIC = n log(chisqr/n) + 2p`` and
  ``BIC = n log(chisqr/n) + p log(n)``; only differences between models fitted to the same data mean
  anything.
* ``condition`` is the condition number of ``JᵀJ`` as given (depends on parameter units);
  ``condition_scaled`` that of the column-equilibrated ``JᵀJ`` (unit-free; large means strongly
  correlated parameters).
* Intervals and bands use Student's t with ``dof`` degrees of freedom (:mod:`gradfit.tdist`): the
  errors' scale ``s`` is estimated. With ``absolute_sigma=True`` it is known, and the factor is the
  normal quantile (1.96 at 95%), whatever ``dof``.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from gradfit.tdist import t_ppf

Array = np.ndarray

__all__ = [
    "FitReport",
    "ScaledSvd",
    "scaled_svd",
    "as_array",
    "covariance",
    "standard_errors",
    "correlation",
    "t_quantile",
    "interval_factor",
    "confidence_intervals",
    "r_squared",
    "information_criteria",
    "condition_numbers",
    "identifiable",
    "confidence_band",
    "prediction_band",
    "fit_report",
    "m_estimator_variance",
    "median_regression_variance",
    "robust_spread",
    "robust_spreads",
    "ILL_CONDITIONED",
    "EXACT_FIT_WARNING",
]

#: scaled condition number of JᵀJ above which a fit is reported as ill-conditioned
ILL_CONDITIONED = 1e10
#: why zero standard errors from residuals that are exactly zero mean nothing
EXACT_FIT_WARNING = (
    "the residuals are exactly zero (the data show no scatter about the model): the standard errors are 0 and "
    "say nothing about the parameters' uncertainty — check for constant, saturated or duplicated data, or give sigma "
    "with absolute_sigma"
)
#: squared loading on an unseen direction above which a parameter counts as non-identifiable
_LOADING = 1e-8


def as_array(values: Any) -> Array:
    """A numpy array from an array-like or a torch tensor (copied to the host)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _free_mask(free: Any, p: int) -> Array:
    if free is None:
        return np.ones(p, dtype=bool)
    mask = as_array(free).astype(bool)
    if mask.shape != (p,):
        raise ValueError(f"free must be a (p,) boolean mask shared by all fits, got shape {mask.shape}")
    return mask


def _points(residuals: Array, mask: Any) -> Any:
    """Number of real (unpadded) points per fit (a number for unpadded fits)."""
    if mask is None:
        return residuals.dtype.type(residuals.shape[-1])
    return as_array(mask).sum(-1, dtype=residuals.dtype)


def _any(values: Any) -> bool:
    """Whether any entry is true (cheap for numpy scalars and small arrays)."""
    return bool(values.any()) if isinstance(values, np.ndarray) else bool(values)


@dataclass(frozen=True)
class ScaledSvd:
    """SVD of column-equilibrated Jacobians ``(..., n, q)``: ``J D⁻¹ = U diag(s) Vᵀ``.

    Attributes
    ----------
    d
        ``(..., q)`` column norms of ``J`` (1 where a column is zero).
    u
        ``(..., n, q)`` left singular vectors (``(..., n, n)`` when ``n < q``).
    s
        ``(..., q)`` singular values, largest first (zeros appended when ``n < q``; NaN for fits
        whose Jacobian is not finite).
    v
        ``(..., q, q)`` right singular vectors as columns.
    null
        ``(..., q)`` singular values at or below the rank cut-off ``max(n, q)·eps·s_max``.
    finite
        Whether every entry of the Jacobian was finite.
    """

    d: Array
    u: Array
    s: Array
    v: Array
    null: Array
    finite: bool

    def __getitem__(self, index: Any) -> ScaledSvd:
        """The factors of the fits at ``index`` of the leading dimensions (``svd[0]``: the first)."""
        return ScaledSvd(self.d[index], self.u[index], self.s[index], self.v[index], self.null[index], self.finite)


#: margin inside sqrt(tiny)..sqrt(max) beyond which column norms are recomputed scaled
_NORM_MARGIN = 1e9


@functools.lru_cache(maxsize=None)
def _plain_norm_range(dtype: np.dtype) -> tuple[float, float]:
    info = np.finfo(dtype)
    return math.sqrt(float(info.tiny)) * _NORM_MARGIN, math.sqrt(float(info.max)) / _NORM_MARGIN


def column_norms(jac: Array) -> Array:
    """Euclidean norms of the Jacobian's columns along the points ``(..., p)`` (pure; call with
    floating-point warnings off).

    Squares of entries beyond about ``1e±154`` under- or overflow; such columns (a parameter with
    scale ``1e100`` against data of scale ``1e-100``, say) are recomputed divided by their largest
    entry, so that column scaling (here and in Moré's LM) stays right at any scale.
    """
    norms = np.sqrt(np.vecdot(jac, jac, axis=-2))
    low, high = _plain_norm_range(norms.dtype)
    if norms.size <= 64:  # a single fit's few numbers: Python's min and max are cheaper than numpy's
        values = norms.ravel().tolist()
        smallest, largest_norm = (min(values), max(values)) if values else (low, high)
    else:
        smallest, largest_norm = norms.min(), norms.max()
    if low <= smallest and largest_norm <= high:
        return norms
    largest = np.max(np.abs(jac), axis=-2)
    safe = np.where((largest > 0) & np.isfinite(largest), largest, 1.0)
    scaled = jac / safe[..., None, :]
    return safe * np.sqrt(np.vecdot(scaled, scaled, axis=-2)) * np.where(largest > 0, 1.0, 0.0)


def scaled_svd(jacobian: Array) -> ScaledSvd:
    """Factor Jacobians ``(..., n, q)`` as :class:`ScaledSvd` (call with floating-point warnings off).

    The one factorisation behind the covariance, the identifiability test and the scaled
    condition number here, and behind the exact linear solve of :mod:`gradfit.solvers`.
    """
    finite = bool(np.isfinite(jacobian).all())
    if not finite:  # such fits get NaN statistics; the others are unaffected
        broken = ~np.isfinite(jacobian).all(axis=(-2, -1))
        jacobian = np.where(broken[..., None, None], 0.0, jacobian)
    d = column_norms(jacobian)
    d = d + (d == 0)
    n, q = jacobian.shape[-2:]
    u, s, vh = np.linalg.svd(jacobian / d[..., None, :], full_matrices=n < q)
    if not finite:
        s = np.where(broken[..., None], np.nan, s)
    if s.shape[-1] < q:  # fewer points than parameters: the missing singular values are zero
        s = np.concatenate([s, np.zeros(s.shape[:-1] + (q - s.shape[-1],), dtype=s.dtype)], -1)
    null = s <= s[..., :1] * (max(n, q) * np.finfo(s.dtype).eps)
    return ScaledSvd(d, u, s, vh.mT, null, finite)


def _embed(matrix: Array, free: Array, fill: float) -> Array:
    """``(..., q, q)`` over free parameters -> ``(..., p, p)`` with ``fill`` for fixed rows/columns."""
    p = free.size
    if matrix.shape[-1] == p:
        return matrix
    full = np.full(matrix.shape[:-2] + (p, p), fill, dtype=matrix.dtype)
    index = np.flatnonzero(free)
    full[..., index[:, None], index[None, :]] = matrix
    return full


def _lost(svd: ScaledSvd) -> Array | None:
    """``(..., q)``: parameters loading on a direction the Jacobian does not see; None if none can."""
    if not svd.null.any():
        return None
    return (svd.v**2 * svd.null[..., None, :]).sum(-1) > _LOADING


def _identifiable_from(svd: ScaledSvd, free_mask: Array) -> Array:
    out = np.ones(svd.s.shape[:-1] + (free_mask.size,), dtype=bool)
    lost = _lost(svd)
    if lost is not None:
        out[..., free_mask] = ~lost
    return out


def identifiable(jacobian: Any, free: Any = None) -> Array:
    """Which parameters the data determine ``(..., p)`` (fixed ones count as identifiable).

    A parameter is non-identifiable when it loads on a direction of parameter space that the
    column-equilibrated Jacobian does not see (singular value below ``max(n, p)·eps·s_max``).
    """
    jac = as_array(jacobian)
    free_mask = _free_mask(free, jac.shape[-1])
    with np.errstate(all="ignore"):
        return _identifiable_from(scaled_svd(jac[..., free_mask]), free_mask)


def covariance(
    jacobian: Any,
    residuals: Any,
    *,
    absolute_sigma: bool = False,
    free: Any = None,
    mask: Any = None,
) -> Array:
    """Parameter covariance ``s² (JᵀJ)⁻¹`` per fit.

    Parameters
    ----------
    jacobian
        Weighted Jacobian of the residuals at the solution, ``(..., n, p)``.
    residuals
        Weighted residuals ``(..., n)``; padded points must be 0.
    absolute_sigma
        If true, sigma was absolute (``s² = 1``); else the covariance is scaled by the reduced
        chi-square ``Σr² / (n - p)`` (scipy's ``curve_fit`` convention).
    free
        ``(p,)`` mask of estimated parameters (default all); fixed rows/columns are NaN and do
        not count in the degrees of freedom.
    mask
        ``(..., n)`` mask of real points for padded (ragged) batches.

    Returns
    -------
    numpy.ndarray
        ``(..., p, p)``. Non-identifiable parameters have ``inf`` variance and NaN covariances;
        with no degrees of freedom left (and relative sigma) every entry is ``inf``.
    """
    jac, res = as_array(jacobian), as_array(residuals)
    free_mask = _free_mask(free, jac.shape[-1])
    with np.errstate(all="ignore"):
        svd = scaled_svd(jac[..., free_mask])
        dof = _points(res, mask) - int(np.count_nonzero(free_mask))
        return _covariance_from(svd, _error_variance(np.vecdot(res, res), dof, absolute_sigma, None), free_mask)


def _error_variance(chisqr: Any, dof: Any, absolute_sigma: bool, given: Any) -> Array:
    """``s²`` of the covariance: ``given``, else 1 with absolute sigma, else ``χ² / dof``."""
    if given is not None:
        return np.broadcast_to(as_array(given).astype(np.result_type(chisqr, float)), np.shape(chisqr))
    return np.ones_like(chisqr) if absolute_sigma else residual_variance(chisqr, dof)


def _covariance_from(svd: ScaledSvd, s2: Array, free_mask: Array) -> Array:
    """``s² (JᵀJ)⁻¹`` from the scaled SVD (call with floating-point warnings off)."""
    lost = _lost(svd)
    inv_s = 1.0 / svd.s if lost is None else np.where(svd.null, 0.0, 1.0 / svd.s)
    finite = np.isfinite(s2)
    # s·(JᵀJ)^-½ before squaring: at extreme scales (JᵀJ)⁻¹ alone may overflow where s²(JᵀJ)⁻¹ does not
    inv_s = inv_s * np.sqrt(np.where(finite, s2, 1.0))[..., None]
    scaled_v = svd.v * (inv_s[..., None, :] / svd.d[..., :, None])
    cov = scaled_v @ scaled_v.mT
    if not finite.all():  # no degrees of freedom: every entry inf
        cov = cov * np.where(finite, 1.0, s2)[..., None, None]
    if lost is not None and lost.any():
        cov = np.where(lost[..., :, None] | lost[..., None, :], np.nan, cov)
        diagonal = np.einsum("...ii->...i", cov)  # a writable view
        diagonal[...] = np.where(lost, np.inf, diagonal)
    return _embed(cov, free_mask, math.nan)


def residual_variance(chisqr: Any, dof: Any) -> Array:
    """``s² = χ² / dof``, the scale of a relative-sigma covariance; ``inf`` with no degrees of freedom
    (call with floating-point warnings off)."""
    return np.where(dof > 0, chisqr / dof, np.inf)


def m_estimator_variance(psi: Any, dpsi: Any, n_params: int, mask: Any = None) -> Array:
    """``s²`` of an M-estimator's covariance ``s² (JᵀJ)⁻¹`` (Huber's first estimate, statsmodels' H1).

    ``s² = K² · Σψ² / (n - p) / m²`` with ``m`` the mean of ``ψ'`` and the small-sample correction
    ``K = 1 + (p/n) · var(ψ') / m²``. For least squares (``ψ = r``, ``ψ' = 1``) it is ``Σr²/(n - p)``;
    for a robust loss the points it down-weights weigh little in it too, where ``Σr²`` would be
    dominated by them. ``inf`` with no degrees of freedom or where ``m <= 0`` (a redescending loss
    with most points beyond its scale: the estimate is not determined).

    Parameters
    ----------
    psi, dpsi
        ``ψ(r)`` and ``ψ'(r)`` at the (weighted) residuals, ``(..., n)``.
    n_params
        Free parameters.
    mask
        ``(..., n)`` real points of a padded batch.
    """
    psi, dpsi = as_array(psi), as_array(dpsi)
    weight = np.ones_like(psi) if mask is None else as_array(mask).astype(psi.dtype)
    with np.errstate(all="ignore"):
        n = weight.sum(-1)
        mean = (dpsi * weight).sum(-1) / n
        spread = (((dpsi - mean[..., None]) ** 2) * weight).sum(-1) / n
        correction = 1.0 + n_params / n * spread / mean**2
        variance = correction**2 * (psi * psi * weight).sum(-1) / (n - n_params) / mean**2
        return np.where((n > n_params) & (mean > 0), variance, np.inf)


#: Hall and Sheather's bandwidth at the median (5% level), in probability units: ``0.9715 n^(-1/3)``
_HALL_SHEATHER = NormalDist().inv_cdf(0.975) ** (2.0 / 3.0) * (1.5 / (2.0 * math.pi)) ** (1.0 / 3.0)
#: the bandwidth is kept below this, so that ``0.5 ± h`` stays inside (0, 1) for a handful of points
_MAX_BANDWIDTH = 0.45


def median_regression_variance(residuals: Any, n_params: int, mask: Any = None) -> Array:
    """``s²`` of a least-absolute-deviations fit's covariance ``s² (JᵀJ)⁻¹``: ``1 / (4 f(0)²)``.

    The ``mae`` fit estimates the conditional median, whose asymptotic covariance is
    ``τ(1 - τ) / f(0)² · (JᵀJ)⁻¹`` at ``τ = ½``, ``f`` the density of the errors at 0 (Koenker's
    iid form). The sparsity ``1/f(0)`` is Siddiqui's difference quotient of the residuals' empirical
    quantiles, ``(Q(½ + h) - Q(½ - h)) / 2h``, with Hall and Sheather's bandwidth ``h``, as in R's
    ``quantreg``. Gross outliers barely move it, where they dominate ``Σr²/(n - p)``. ``inf`` with
    no degrees of freedom; 0 where the residuals do not spread.

    Parameters
    ----------
    residuals
        Weighted residuals ``(..., n)``.
    n_params
        Free parameters.
    mask
        ``(..., n)`` real points of a padded batch.
    """
    r = as_array(residuals)
    real = np.ones(r.shape, dtype=bool) if mask is None else as_array(mask).astype(bool)
    n = real.sum(-1)
    if r.shape[-1] == 0:
        return np.full(n.shape, np.inf)
    with np.errstate(all="ignore"):
        h = np.minimum(_HALL_SHEATHER * np.cbrt(1.0 / np.maximum(n, 1)), _MAX_BANDWIDTH)
        ordered = np.sort(np.where(real, r, np.inf), axis=-1)  # the real points first
        low, high = _empirical_quantile(ordered, n, 0.5 - h), _empirical_quantile(ordered, n, 0.5 + h)
        sparsity = (high - low) / (2.0 * h)
        return np.where(n > n_params, 0.25 * sparsity**2, np.inf)


#: the median absolute deviation of normal noise times this is its standard deviation
NORMAL_MAD_FACTOR = 1.4826


def robust_spread(residuals: Any) -> float:
    """``1.4826 · MAD`` of one fit's residuals: their standard deviation were they normal, which
    a minority of gross outliers barely moves."""
    r = as_array(residuals)
    return NORMAL_MAD_FACTOR * float(np.median(np.abs(r - np.median(r)))) if r.size else math.nan


def robust_spreads(residuals: Array, mask: Array) -> Array:
    """:func:`robust_spread` of each row's entries where ``mask`` ``(K,)`` (NaN for a row without any)."""
    kept = np.where(mask, residuals, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a row without entries ("All-NaN slice")
        centre = np.nanmedian(kept, axis=-1, keepdims=True)
        return NORMAL_MAD_FACTOR * np.nanmedian(np.abs(kept - centre), axis=-1)


def _empirical_quantile(ordered: Array, n: Array, level: Array) -> Array:
    """Linearly interpolated ``level`` quantile of the first ``n`` of each sorted row (numpy's default)."""
    position = level * (np.maximum(n, 1) - 1)
    below = np.floor(position).astype(np.intp)
    above = np.minimum(below + 1, np.maximum(n, 1) - 1)
    lower = np.take_along_axis(ordered, below[..., None], -1)[..., 0]
    upper = np.take_along_axis(ordered, above[..., None], -1)[..., 0]
    return lower + (position - below) * (upper - lower)


def _solver_covariance(inverse_normal: Any, s2: Array, free_mask: Array) -> tuple[Array, Array]:
    """Covariance and identifiability from a solver's own ``(JᵀJ)⁻¹`` of the free parameters."""
    inverse = as_array(inverse_normal)
    cov = inverse * s2[..., None, None]
    ident = np.ones(cov.shape[:-2] + (free_mask.size,), dtype=bool)
    ident[..., free_mask] = np.isfinite(np.einsum("...ii->...i", inverse))
    return _embed(cov, free_mask, math.nan), ident


def standard_errors(cov: Any) -> Array:
    """Square roots of the covariance diagonal (NaN for fixed, ``inf`` for non-identifiable)."""
    with np.errstate(invalid="ignore"):
        return np.sqrt(np.diagonal(as_array(cov), axis1=-2, axis2=-1))


def correlation(cov: Any) -> Array:
    """Correlation matrix ``C_ij / (σ_i σ_j)``; NaN where a variance is not finite and positive."""
    cov = as_array(cov)
    se = standard_errors(cov)
    ok = np.isfinite(se) & (se > 0)
    safe = np.where(ok, se, 1.0)
    with np.errstate(invalid="ignore"):
        corr = cov / (safe[..., :, None] * safe[..., None, :])
    valid = ok[..., :, None] & ok[..., None, :]
    return np.where(valid, corr, np.nan)


def t_quantile(confidence: float, dof: Any) -> Array | float:
    """Two-sided Student t factor: ``t_{(1+confidence)/2}(dof)`` (``inf`` where ``dof <= 0``)."""
    _check_level(confidence)
    dof_array = as_array(dof).astype(float)
    if dof_array.ndim == 0:
        return _t_factor(confidence, float(dof_array))
    unique, position = np.unique(dof_array, return_inverse=True)  # batches share few distinct dofs
    return np.array([_t_factor(confidence, float(d)) for d in unique])[position].reshape(dof_array.shape)


@functools.lru_cache(maxsize=4096)
def _t_factor(confidence: float, dof: float) -> float:
    return float(t_ppf(0.5 + 0.5 * confidence, dof)) if dof > 0 else math.inf


def interval_factor(confidence: float, dof: Any, absolute_sigma: bool = False) -> Array | float:
    """Two-sided factor of intervals and bands, shaped like ``dof``.

    Student's t (:func:`t_quantile`) when the errors' scale was estimated from the residuals; the
    normal quantile ``z_{(1+confidence)/2}`` with ``absolute_sigma`` (the scale is known, so the
    degrees of freedom do not matter, and an exactly determined fit still has intervals).
    """
    if not absolute_sigma:
        return t_quantile(confidence, dof)
    _check_level(confidence)
    z = _normal_factor(confidence)
    return z if np.ndim(dof) == 0 else np.full(np.shape(dof), z)


@functools.lru_cache(maxsize=64)
def _normal_factor(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + 0.5 * confidence)


def _check_level(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def confidence_intervals(theta: Any, stderr: Any, dof: Any, confidence: float = 0.95) -> tuple[Array, Array]:
    """Two-sided t intervals ``θ ± t·σ`` per parameter; returns ``(lower, upper)``."""
    theta, stderr = as_array(theta), as_array(stderr)
    half = stderr * np.asarray(t_quantile(confidence, dof))[..., None]
    return theta - half, theta + half


def r_squared(residuals: Any, y: Any, weights: Any = None, mask: Any = None) -> Any:
    """Coefficient of determination ``1 - SSR/SST`` per fit (NaN where ``y`` does not vary).

    Parameters
    ----------
    residuals
        Weighted residuals ``(prediction - y) / σ``, ``(..., n)``.
    y
        Observed values (unweighted), same shape (or broadcastable).
    weights
        ``1/σ`` per point, or None; ``SST`` is taken about the mean weighted by ``1/σ²``.
    mask
        Real points of padded batches.
    """
    res = as_array(residuals)
    target = np.broadcast_to(as_array(y).astype(res.dtype, copy=False), res.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _r2(np.vecdot(res, res), total_sum_of_squares(target, weights, mask))


def _r2(chisqr: Any, sst: Any) -> Any:
    """``1 - SSR/SST``; NaN where the data do not vary (``SST = 0``: R² is undefined, not -inf)."""
    return np.where(sst > 0, 1.0 - chisqr / sst, np.nan)


def total_sum_of_squares(target: Array, weights: Any, mask: Any) -> Any:
    """``Σ w² (y - ȳ)²`` about the ``w²``-weighted mean, per fit: the χ² of the best constant model
    (``weights``: ``1/σ`` or None; ``mask``: 0 on padding or None)."""
    if weights is None and mask is None:
        centred = target - target.sum(-1, keepdims=True) / target.shape[-1]
        return np.vecdot(centred, centred)
    w2 = np.ones_like(target) if weights is None else np.broadcast_to(as_array(weights), target.shape) ** 2
    if mask is not None:
        w2 = w2 * as_array(mask)
    mean = (w2 * target).sum(-1, keepdims=True) / w2.sum(-1, keepdims=True)
    return (w2 * (target - mean) ** 2).sum(-1)


def information_criteria(chisqr: Any, n_points: Any, n_params: int) -> tuple[Any, Any]:
    """``(AIC, BIC)`` in lmfit's convention: ``n log(χ²/n) + 2p`` and ``n log(χ²/n) + p log n``."""
    chisqr = as_array(chisqr)
    n = as_array(n_points).astype(chisqr.dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        base = n * np.log(chisqr / n)
        return base + 2.0 * n_params, base + n_params * np.log(n)


def condition_numbers(jacobian: Any, free: Any = None) -> tuple[Any, Any]:
    """Condition numbers of ``JᵀJ`` per fit: ``(as given, column-equilibrated)``."""
    jac = as_array(jacobian)
    free_mask = _free_mask(free, jac.shape[-1])
    jac = jac[..., free_mask]
    if jac.shape[-1] == 0:
        ones = np.ones(jac.shape[:-2], dtype=jac.dtype)
        return ones, ones
    with np.errstate(all="ignore"):
        svd = scaled_svd(jac)
        return _condition_ratio(_singular_values(jac, svd.finite)), _condition_ratio(svd.s)


def _singular_values(jac: Array, finite: bool) -> Array:
    """Singular values ``(..., q)`` of the Jacobian as given (non-finite entries read as 0; zeros
    appended when ``n < q``)."""
    s = np.linalg.svd(jac if finite else np.where(np.isfinite(jac), jac, 0.0), compute_uv=False)
    if s.shape[-1] < jac.shape[-1]:
        s = np.concatenate([s, np.zeros(s.shape[:-1] + (jac.shape[-1] - s.shape[-1],), dtype=s.dtype)], -1)
    return s


def _condition_ratio(s: Array) -> Any:
    """``(s_max / s_min)²`` over the last axis: the condition number of ``JᵀJ`` (``inf`` if singular,
    NaN where the Jacobian was not finite)."""
    smallest = s[..., -1]
    return np.where(smallest > 0, (s[..., 0] / smallest) ** 2, np.where(np.isnan(smallest), np.nan, np.inf))


def _band_variance(pred_jacobian: Any, cov: Any) -> Array:
    """``g C gᵀ`` per point; NaN where the curve depends on an undetermined (non-finite) entry of ``C``
    — a point where the curve does not depend on that parameter (``g_i = 0``) keeps its band."""
    jac, c = as_array(pred_jacobian), as_array(cov)
    known = np.isfinite(c)
    variance = np.einsum("...mi,...ij,...mj->...m", jac, np.where(known, c, 0.0), jac)
    moves = (jac != 0).astype(c.dtype)
    unknown = np.einsum("...mi,...ij,...mj->...m", moves, (~known).astype(c.dtype), moves) > 0
    return np.where(unknown, np.nan, np.maximum(variance, 0.0))


def confidence_band(pred_jacobian: Any, cov: Any, dof: Any, confidence: float = 0.95, absolute_sigma: bool = False) -> Array:
    """Half-width of the confidence band of the fitted curve at new points.

    Parameters
    ----------
    pred_jacobian
        Jacobian of the model's predictions at the new points, ``(..., m, p)``.
    cov
        Covariance of the free parameters ``(..., p, p)`` (leave fixed ones out: they add no
        variance). Non-finite entries, of parameters that are not identifiable, make the band NaN.
    dof
        Degrees of freedom for the t factor (one per fit).
    confidence
        Coverage probability.
    absolute_sigma
        The covariance is of absolute sigma: the normal factor instead of t (:func:`interval_factor`).

    Returns
    -------
    numpy.ndarray
        ``t · sqrt(g C gᵀ)`` per point, ``(..., m)``.
    """
    variance = _band_variance(pred_jacobian, cov)
    return np.sqrt(variance) * np.asarray(interval_factor(confidence, dof, absolute_sigma))[..., None]


def prediction_band(
    pred_jacobian: Any,
    cov: Any,
    dof: Any,
    noise_variance: Any,
    confidence: float = 0.95,
    absolute_sigma: bool = False,
) -> Array:
    """Half-width of the prediction band (a new observation) at new points.

    ``t · sqrt(g C gᵀ + noise_variance)``, where ``noise_variance`` is the variance of one new
    observation: the residual variance ``s²`` of an unweighted fit, or ``σ²`` at the new point;
    ``absolute_sigma`` as for :func:`confidence_band`.
    """
    variance = _band_variance(pred_jacobian, cov)
    noise = as_array(noise_variance).astype(variance.dtype)
    if noise.ndim == 1 and variance.ndim == 2:
        noise = noise[:, None]
    return np.sqrt(variance + noise) * np.asarray(interval_factor(confidence, dof, absolute_sigma))[..., None]


@dataclass(frozen=True)
class FitReport:
    """Statistics of one fit or K fits (leading dimensions as in the inputs).

    Attributes
    ----------
    covariance, stderr
        ``(..., p, p)``, ``(..., p)``; see :func:`covariance`.
    ci_half_width
        ``t · stderr`` at the requested confidence ``(..., p)``.
    dof
        Degrees of freedom ``n - p`` (per fit).
    statistics
        For a single fit: ``r2``, ``rmse``, ``chisqr``, ``redchi``, ``aic``, ``bic``, ``dof``,
        ``condition``, ``condition_scaled``, ``n_points``, ``n_params`` (floats); for K fits,
        arrays ``(K,)`` under the same keys.
    identifiable
        ``(..., p)`` bool (see :func:`identifiable`).
    warnings
        Plain-language warnings (for a single fit; for K fits, those that hold for any fit).
    """

    covariance: Array
    stderr: Array
    ci_half_width: Array
    dof: Any
    statistics: dict[str, Any]
    identifiable: Array
    warnings: list[str] = field(default_factory=list)

    @property
    def correlation(self) -> Array:
        """Correlation matrices ``(..., p, p)`` (see :func:`correlation`)."""
        return correlation(self.covariance)


def fit_report(
    jacobian: Any,
    residuals: Any,
    y: Any,
    *,
    weights: Any = None,
    absolute_sigma: bool = False,
    confidence: float = 0.95,
    free: Any = None,
    mask: Any = None,
    param_names: list[str] | tuple[str, ...] | None = None,
    decomposition: ScaledSvd | None = None,
    inverse_normal: Any = None,
    error_variance: Any = None,
) -> FitReport:
    """Every statistic of a least-squares fit at its solution.

    Parameters
    ----------
    jacobian
        Weighted Jacobian ``(..., n, p)``.
    residuals
        Weighted residuals ``(prediction - y) / σ``, ``(..., n)``.
    y
        Observed values (unweighted), for R².
    weights
        ``1/σ`` per point, or None.
    absolute_sigma
        Treat sigma as absolute (see :func:`covariance`).
    confidence
        Coverage of the confidence intervals.
    free
        ``(p,)`` mask of estimated parameters (default all).
    mask
        ``(..., n)`` real points of a padded batch.
    param_names
        Names used in the warnings (default ``p0, p1, ...``).
    decomposition
        :func:`scaled_svd` of the free columns of ``jacobian``, when the caller already has it
        (an exact linear solve factors the same matrix).
    inverse_normal
        A solver's own, more accurate ``(JᵀJ)⁻¹`` of the free parameters ``(..., q, q)`` (a
        polynomial solved in a better-conditioned basis): the covariance, standard errors,
        intervals and identifiability come from it instead of the SVD of ``jacobian``.
    error_variance
        ``s²`` of the covariance per fit, in place of ``Σr² / (n - p)`` (or 1 with absolute sigma):
        a robust fit's :func:`m_estimator_variance`.

    Returns
    -------
    FitReport
    """
    jac, res = as_array(jacobian), as_array(residuals)
    p = jac.shape[-1]
    free_mask = _free_mask(free, p)
    n_params = int(np.count_nonzero(free_mask))
    fits = res.shape[:-1]
    with np.errstate(all="ignore"):  # undefined statistics are NaN or inf, not warnings
        n_points = _points(res, mask)
        dof = n_points - n_params
        chisqr = np.vecdot(res, res)
        if n_params:
            free_jac = jac if n_params == p else jac[..., free_mask]
            svd = decomposition or scaled_svd(free_jac)
            s2 = _error_variance(chisqr, dof, absolute_sigma, error_variance)
            if inverse_normal is None:
                cov, ident = _covariance_from(svd, s2, free_mask), _identifiable_from(svd, free_mask)
            else:
                cov, ident = _solver_covariance(inverse_normal, s2, free_mask)
            s_raw, s_scaled = _singular_values(free_jac, svd.finite), svd.s
        else:
            cov = np.full(fits + (p, p), np.nan, dtype=res.dtype)
            s_raw = s_scaled = np.ones(fits + (1,), dtype=res.dtype)
            ident = np.ones(fits + (p,), dtype=bool)
        stderr = standard_errors(cov)
        raw_ss = chisqr if weights is None else np.vecdot(raw := res / as_array(weights), raw)
        target = np.broadcast_to(as_array(y).astype(res.dtype, copy=False), res.shape)
        sst = total_sum_of_squares(target, weights, mask)
        statistics = _per_fit_statistics(chisqr, sst, raw_ss, n_points + np.zeros_like(chisqr), s_raw, s_scaled, n_params)
    half = stderr * np.asarray(interval_factor(confidence, dof, absolute_sigma))[..., None]
    names = list(param_names) if param_names is not None else [f"p{i}" for i in range(p)]
    warnings = _warnings(dof, statistics["condition_scaled"], ident, free_mask, names, absolute_sigma)
    if not absolute_sigma and n_params and _any((chisqr == 0) & (dof > 0)):
        warnings.append(EXACT_FIT_WARNING)
    if not fits:
        statistics = {k: float(v) for k, v in statistics.items()}
    return FitReport(cov, stderr, half, dof, statistics, ident, warnings)


def _per_fit_statistics(
    chisqr: Any, sst: Any, raw_ss: Any, n: Any, s_raw: Array, s_scaled: Array, n_params: int
) -> dict[str, Any]:
    """R², RMS error, χ², reduced χ², AIC, BIC, degrees of freedom and condition numbers.

    The same formulas serve K fits (``(K,)`` arrays, ``(K, q)`` singular values) and one fit
    (numpy scalars and ``(q,)`` singular values, where each operation costs a fraction of an array
    operation); call with floating-point warnings off.
    """
    dof = n - n_params
    base = n * np.log(chisqr / n)
    return {
        "r2": _r2(chisqr, sst),
        "rmse": np.sqrt(raw_ss / n),
        "chisqr": chisqr,
        "redchi": np.where(dof > 0, chisqr / dof, np.nan),
        "aic": base + 2.0 * n_params,
        "bic": base + n_params * np.log(n),
        "dof": dof,
        "condition": _condition_ratio(s_raw),
        "condition_scaled": _condition_ratio(s_scaled),
        "n_points": n,
        "n_params": n - dof,
    }


def _warnings(dof: Any, condition_scaled: Any, ident: Array, free: Array, names: list[str], absolute_sigma: bool) -> list[str]:
    out = []
    if _any(dof <= 0) and not absolute_sigma:  # with absolute sigma the errors need no residual variance
        out.append("no degrees of freedom left (data points <= free parameters): standard errors are undefined — add data or fix parameters")
    lost = [] if ident.all() else [name for name, gone in zip(names, (free & ~ident.reshape(-1, free.size).all(0)).tolist()) if gone]
    if lost:
        few = len(lost) == 1
        out.append(
            f"{'parameter' if few else 'parameters'} {', '.join(lost)} cannot be determined from the data (the Jacobian is "
            f"rank-deficient): {'its standard error is' if few else 'their standard errors are'} infinite — "
            f"{'fix it' if few else 'fix some of them'} or reparametrise the model"
        )
    elif _any(condition_scaled > ILL_CONDITIONED):
        worst = float(np.max(condition_scaled))
        out.append(
            f"the fit is ill-conditioned (scaled condition number of JᵀJ = {worst:.2g}): the parameters are strongly "
            "correlated and their standard errors are sensitive — consider reparametrising or fixing a parameter"
        )
    return out
