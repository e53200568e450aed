"""Statistics of least-squares fits, batched over K fits: covariance, errors, intervals, bands, metrics.

All functions take tensors with a leading batch dimension ``K`` (Jacobian ``(K, n, p)``, residuals
``(K, n)``), and also accept a single fit without it (``(n, p)``, ``(n,)``), returning results without
it. Residuals and Jacobian are the *weighted* ones (divided by sigma) when the fit had sigma.

Conventions
-----------
* Covariance ``C = s² (JᵀJ)⁻¹`` with ``s² = Σr² / (n - p)`` (``p`` = free parameters), or ``s² = 1``
  with ``absolute_sigma=True`` — as ``scipy.optimize.curve_fit``. ``(JᵀJ)⁻¹`` comes from an SVD of
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
* Intervals use Student's t with ``dof`` degrees of freedom (:mod:`gradfit.tdist`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from gradfit.tdist import t_ppf

if TYPE_CHECKING:
    import torch

    Tensor = torch.Tensor

__all__ = [
    "FitReport",
    "covariance",
    "standard_errors",
    "correlation",
    "t_quantile",
    "confidence_intervals",
    "r_squared",
    "information_criteria",
    "condition_numbers",
    "identifiable",
    "confidence_band",
    "prediction_band",
    "fit_report",
    "ILL_CONDITIONED",
]

#: scaled condition number of JᵀJ above which a fit is reported as ill-conditioned
ILL_CONDITIONED = 1e10
#: squared loading on an unseen direction above which a parameter counts as non-identifiable
_LOADING = 1e-8


def _batch(tensor: Tensor, dims: int) -> tuple[Tensor, bool]:
    """Add a leading batch dimension if ``tensor`` has ``dims`` dimensions (a single fit)."""
    return (tensor[None], True) if tensor.ndim == dims else (tensor, False)


def _unbatch(tensor: Tensor, single: bool) -> Tensor:
    return tensor[0] if single else tensor


def _free_mask(free: Tensor | np.ndarray | None, p: int) -> Tensor:
    import torch

    if free is None:
        return torch.ones(p, dtype=torch.bool)
    mask = torch.as_tensor(np.asarray(free) if not isinstance(free, torch.Tensor) else free, dtype=torch.bool).cpu()
    if mask.shape != (p,):
        raise ValueError(f"free must be a (p,) boolean mask shared by all fits, got shape {tuple(mask.shape)}")
    return mask


def _points(residuals: Tensor, mask: Tensor | None) -> Tensor:
    """Number of real (unpadded) points per fit ``(K,)``."""
    if mask is None:
        return residuals.new_full(residuals.shape[:1], float(residuals.shape[-1]))
    return mask.to(residuals.dtype).sum(-1)


@dataclass(frozen=True)
class _Svd:
    d: Tensor  # (K, q) column scales
    s: Tensor  # (K, q)
    v: Tensor  # (K, q, q)  columns = right singular vectors
    null: Tensor  # (K, q) singular value below the rank cut-off


def _scaled_svd(jac_free: Tensor) -> _Svd:
    import torch

    broken = ~torch.isfinite(jac_free).all(dim=-1).all(dim=-1)  # such fits get NaN statistics
    if bool(broken.any()):
        jac_free = torch.where(broken[:, None, None], torch.zeros_like(jac_free), jac_free)
    d = torch.linalg.vector_norm(jac_free, dim=-2)
    d = torch.where(d > 0, d, torch.ones_like(d))
    _, s, vh = torch.linalg.svd(jac_free / d[:, None, :], full_matrices=False)
    s = torch.where(broken[:, None], torch.full_like(s, math.nan), s)
    q = jac_free.shape[-1]
    if s.shape[-1] < q:  # fewer points than parameters: the missing singular values are zero
        s = torch.cat([s, s.new_zeros(s.shape[:-1] + (q - s.shape[-1],))], -1)
        vh = torch.linalg.svd(jac_free / d[:, None, :], full_matrices=True)[2]
    cut = s[:, :1] * (max(jac_free.shape[-2:]) * torch.finfo(s.dtype).eps)
    return _Svd(d, s, vh.mT, s <= cut)


def _embed(matrix: Tensor, free: Tensor, fill: float) -> Tensor:
    """``(K, q, q)`` over free parameters -> ``(K, p, p)`` with ``fill`` for fixed rows/columns."""
    import torch

    k, p = matrix.shape[0], free.numel()
    full = matrix.new_full((k, p, p), fill)
    index = torch.nonzero(free).flatten().to(matrix.device)
    full[:, index[:, None], index[None, :]] = matrix
    return full


def identifiable(jacobian: Tensor, free: Tensor | np.ndarray | None = None) -> Tensor:
    """Which parameters the data determine ``(K, p)`` (fixed ones count as identifiable).

    A parameter is non-identifiable when it loads on a direction of parameter space that the
    column-equilibrated Jacobian does not see (singular value below ``max(n, p)·eps·s_max``).
    """
    import torch

    jac, single = _batch(jacobian, 2)
    free_mask = _free_mask(free, jac.shape[-1])
    return _unbatch(_identifiable_from(_scaled_svd(jac[..., free_mask.to(jac.device)]), free_mask), single)


def _identifiable_from(svd: _Svd, free_mask: Tensor) -> Tensor:
    import torch

    loading = (svd.v**2 * svd.null[:, None, :].to(svd.v.dtype)).sum(-1)
    out = torch.ones(svd.s.shape[0], free_mask.numel(), dtype=torch.bool, device=svd.s.device)
    out[:, free_mask.to(svd.s.device)] = loading <= _LOADING
    return out


def covariance(
    jacobian: Tensor,
    residuals: Tensor,
    *,
    absolute_sigma: bool = False,
    free: Tensor | np.ndarray | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Parameter covariance ``s² (JᵀJ)⁻¹`` per fit ``(K, p, p)``.

    Parameters
    ----------
    jacobian
        Weighted Jacobian of the residuals at the solution, ``(K, n, p)`` or ``(n, p)``.
    residuals
        Weighted residuals ``(K, n)`` or ``(n,)``; padded points must be 0.
    absolute_sigma
        If true, sigma was absolute (``s² = 1``); else the covariance is scaled by the reduced
        chi-square ``Σr² / (n - p)`` (scipy's ``curve_fit`` convention).
    free
        ``(p,)`` mask of estimated parameters (default all); fixed rows/columns are NaN and do
        not count in the degrees of freedom.
    mask
        ``(K, n)`` mask of real points for padded (ragged) batches.

    Returns
    -------
    torch.Tensor
        ``(K, p, p)`` (or ``(p, p)`` for a single fit). Non-identifiable parameters have
        ``inf`` variance and NaN covariances; with no degrees of freedom left (and relative sigma)
        every entry is ``inf``.
    """
    import torch

    jac, single = _batch(jacobian, 2)
    res, _ = _batch(residuals, 1)
    free_mask = _free_mask(free, jac.shape[-1])
    svd = _scaled_svd(jac[..., free_mask.to(jac.device)])
    return _unbatch(_covariance_from(svd, res, absolute_sigma, free_mask, mask), single)


def _covariance_from(svd: _Svd, res: Tensor, absolute_sigma: bool, free_mask: Tensor, mask: Tensor | None) -> Tensor:
    import torch

    inv_s2 = torch.where(svd.null, torch.zeros_like(svd.s), 1.0 / torch.where(svd.null, torch.ones_like(svd.s), svd.s) ** 2)
    scaled_v = svd.v / svd.d[:, :, None]
    cov = (scaled_v * inv_s2[:, None, :]) @ scaled_v.mT
    if not absolute_sigma:
        dof = _points(res, mask) - int(free_mask.sum())
        s2 = (res * res).sum(-1) / dof
        s2 = torch.where(dof > 0, s2, torch.full_like(s2, math.inf))
        cov = cov * s2[:, None, None]
    loading = (svd.v**2 * svd.null[:, None, :].to(svd.v.dtype)).sum(-1)
    lost = loading > _LOADING
    if bool(lost.any()):
        cov = torch.where(lost[:, :, None] | lost[:, None, :], torch.full_like(cov, math.nan), cov)
        diagonal = torch.diagonal(cov, dim1=-2, dim2=-1)
        diagonal.copy_(torch.where(lost, torch.full_like(diagonal, math.inf), diagonal))
    return _embed(cov, free_mask, math.nan)


def standard_errors(cov: Tensor) -> Tensor:
    """Square roots of the covariance diagonal (NaN for fixed, ``inf`` for non-identifiable)."""
    import torch

    return torch.sqrt(torch.diagonal(cov, dim1=-2, dim2=-1))


def correlation(cov: Tensor) -> Tensor:
    """Correlation matrix ``C_ij / (σ_i σ_j)``; NaN where a variance is not finite and positive."""
    import torch

    se = standard_errors(cov)
    ok = torch.isfinite(se) & (se > 0)
    safe = torch.where(ok, se, torch.ones_like(se))
    corr = cov / (safe[..., :, None] * safe[..., None, :])
    valid = ok[..., :, None] & ok[..., None, :]
    return torch.where(valid, corr, torch.full_like(corr, math.nan))


def t_quantile(confidence: float, dof: Tensor | np.ndarray | float) -> np.ndarray | float:
    """Two-sided Student t factor: ``t_{(1+confidence)/2}(dof)`` (``inf`` where ``dof <= 0``)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    dof_array = np.asarray(dof.detach().cpu().numpy() if hasattr(dof, "detach") else dof, dtype=float)  # type: ignore[union-attr]
    unique, position = np.unique(dof_array, return_inverse=True)  # batches share few distinct dofs
    factor = np.array([_t_factor(confidence, float(d)) for d in unique])[position].reshape(dof_array.shape)
    return float(factor) if factor.ndim == 0 else factor


@functools.lru_cache(maxsize=4096)
def _t_factor(confidence: float, dof: float) -> float:
    return float(t_ppf(0.5 + 0.5 * confidence, dof)) if dof > 0 else math.inf


def confidence_intervals(theta: Tensor, stderr: Tensor, dof: Tensor | float, confidence: float = 0.95) -> tuple[Tensor, Tensor]:
    """Two-sided t intervals ``θ ± t·σ`` per parameter; returns ``(lower, upper)``."""
    import torch

    factor = torch.as_tensor(t_quantile(confidence, dof), dtype=stderr.dtype, device=stderr.device)
    half = stderr * (factor[..., None] if factor.ndim else factor)
    return theta - half, theta + half


def r_squared(residuals: Tensor, y: Tensor, weights: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    """Coefficient of determination ``1 - SSR/SST`` per fit.

    Parameters
    ----------
    residuals
        Weighted residuals ``(prediction - y) / σ``, ``(K, n)`` or ``(n,)``.
    y
        Observed values (unweighted), same shape (or broadcastable).
    weights
        ``1/σ`` per point, or None; ``SST`` is taken about the mean weighted by ``1/σ²``.
    mask
        Real points of padded batches.
    """
    import torch

    res, single = _batch(residuals, 1)
    target = torch.broadcast_to(torch.as_tensor(y, dtype=res.dtype, device=res.device), res.shape)
    w2 = torch.ones_like(res) if weights is None else torch.broadcast_to(torch.as_tensor(weights, dtype=res.dtype, device=res.device), res.shape) ** 2
    if mask is not None:
        w2 = w2 * mask.to(res.dtype)
    mean = (w2 * target).sum(-1, keepdim=True) / w2.sum(-1, keepdim=True)
    sst = (w2 * (target - mean) ** 2).sum(-1)
    ssr = (res * res).sum(-1)
    return _unbatch(1.0 - ssr / sst, single)


def information_criteria(chisqr: Tensor, n_points: Tensor | float, n_params: int) -> tuple[Tensor, Tensor]:
    """``(AIC, BIC)`` in lmfit's convention: ``n log(χ²/n) + 2p`` and ``n log(χ²/n) + p log n``."""
    import torch

    n = torch.as_tensor(n_points, dtype=chisqr.dtype, device=chisqr.device)
    base = n * torch.log(chisqr / n)
    return base + 2.0 * n_params, base + n_params * torch.log(n)


def condition_numbers(jacobian: Tensor, free: Tensor | np.ndarray | None = None) -> tuple[Tensor, Tensor]:
    """Condition numbers of ``JᵀJ`` per fit: ``(as given, column-equilibrated)``."""
    import torch

    jac, single = _batch(jacobian, 2)
    free_mask = _free_mask(free, jac.shape[-1])
    jac = jac[..., free_mask.to(jac.device)]
    if jac.shape[-1] == 0:
        ones = jac.new_ones(jac.shape[0])
        return _unbatch(ones, single), _unbatch(ones, single)
    return _conditions_from(jac, _scaled_svd(jac), single)


def _conditions_from(jac: Tensor, svd: _Svd, single: bool) -> tuple[Tensor, Tensor]:
    import torch

    jac = torch.where(torch.isfinite(jac), jac, torch.zeros_like(jac))
    raw = torch.linalg.svdvals(jac)
    scaled = svd.s

    def ratio(s: Tensor) -> Tensor:
        return torch.where(s[:, -1] > 0, (s[:, 0] / s[:, -1]) ** 2, torch.full_like(s[:, 0], math.inf))

    if raw.shape[-1] < jac.shape[-1]:
        raw = torch.cat([raw, raw.new_zeros(raw.shape[:-1] + (jac.shape[-1] - raw.shape[-1],))], -1)
    return _unbatch(ratio(raw), single), _unbatch(ratio(scaled), single)


def _band_variance(pred_jacobian: Tensor, cov: Tensor) -> Tensor:
    import torch

    jac, single = _batch(pred_jacobian, 2)
    c, _ = _batch(cov, 2)
    c = torch.where(torch.isnan(c), torch.zeros_like(c), c)  # fixed parameters add no uncertainty
    variance = torch.einsum("kmi,kij,kmj->km", jac, c, jac)
    return _unbatch(torch.clamp(variance, min=0.0), single)


def confidence_band(pred_jacobian: Tensor, cov: Tensor, dof: Tensor | float, confidence: float = 0.95) -> Tensor:
    """Half-width of the confidence band of the fitted curve at new points.

    Parameters
    ----------
    pred_jacobian
        Jacobian of the model's predictions at the new points, ``(K, m, p)`` or ``(m, p)``.
    cov
        Parameter covariance ``(K, p, p)`` or ``(p, p)`` (fixed parameters' NaN entries count as 0).
    dof
        Degrees of freedom for the t factor.
    confidence
        Coverage probability.

    Returns
    -------
    torch.Tensor
        ``t · sqrt(g C gᵀ)`` per point, ``(K, m)`` or ``(m,)``.
    """
    import torch

    variance = _band_variance(pred_jacobian, cov)
    factor = torch.as_tensor(t_quantile(confidence, dof), dtype=variance.dtype, device=variance.device)
    return torch.sqrt(variance) * (factor[..., None] if factor.ndim else factor)


def prediction_band(
    pred_jacobian: Tensor,
    cov: Tensor,
    dof: Tensor | float,
    noise_variance: Tensor | float,
    confidence: float = 0.95,
) -> Tensor:
    """Half-width of the prediction band (a new observation) at new points.

    ``t · sqrt(g C gᵀ + noise_variance)``, where ``noise_variance`` is the variance of one new
    observation: the residual variance ``s²`` of an unweighted fit, or ``σ²`` at the new point.
    """
    import torch

    variance = _band_variance(pred_jacobian, cov)
    noise = torch.as_tensor(noise_variance, dtype=variance.dtype, device=variance.device)
    if noise.ndim == 1 and variance.ndim == 2:
        noise = noise[:, None]
    factor = torch.as_tensor(t_quantile(confidence, dof), dtype=variance.dtype, device=variance.device)
    return torch.sqrt(variance + noise) * (factor[..., None] if factor.ndim else factor)


@dataclass(frozen=True)
class FitReport:
    """Statistics of K fits (single-fit inputs give tensors without the K dimension).

    Attributes
    ----------
    covariance, stderr, correlation
        ``(K, p, p)``, ``(K, p)``, ``(K, p, p)``; see :func:`covariance`.
    ci_half_width
        ``t · stderr`` at the requested confidence ``(K, p)``.
    dof
        Degrees of freedom ``n - p`` ``(K,)``.
    statistics
        For a single fit: ``r2``, ``rmse``, ``chisqr``, ``redchi``, ``aic``, ``bic``, ``dof``,
        ``condition``, ``condition_scaled``, ``n_points``, ``n_params`` (floats); for K fits,
        tensors ``(K,)`` under the same keys.
    identifiable
        ``(K, p)`` bool (see :func:`identifiable`).
    warnings
        Plain-language warnings (for a single fit; for K fits, those that hold for any fit).
    """

    covariance: Tensor
    stderr: Tensor
    correlation: Tensor
    ci_half_width: Tensor
    dof: Tensor
    statistics: dict[str, object]
    identifiable: Tensor
    warnings: list[str] = field(default_factory=list)


def fit_report(
    jacobian: Tensor,
    residuals: Tensor,
    y: Tensor,
    *,
    weights: Tensor | None = None,
    absolute_sigma: bool = False,
    confidence: float = 0.95,
    free: Tensor | np.ndarray | None = None,
    mask: Tensor | None = None,
    param_names: list[str] | tuple[str, ...] | None = None,
) -> FitReport:
    """Every statistic of a least-squares fit at its solution.

    Parameters
    ----------
    jacobian
        Weighted Jacobian ``(n, p)`` or ``(K, n, p)``.
    residuals
        Weighted residuals ``(prediction - y) / σ``, ``(n,)`` or ``(K, n)``.
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
        ``(K, n)`` real points of a padded batch.
    param_names
        Names used in the warnings (default ``p0, p1, ...``).

    Returns
    -------
    FitReport
    """
    import torch

    jac, single = _batch(jacobian, 2)
    res, _ = _batch(residuals, 1)
    p = jac.shape[-1]
    free_mask = _free_mask(free, p)
    n_params = int(free_mask.sum())
    n_points = _points(res, mask)
    dof = n_points - n_params
    free_jac = jac[..., free_mask.to(jac.device)]
    svd = _scaled_svd(free_jac) if n_params else None
    cov = _covariance_from(svd, res, absolute_sigma, free_mask, mask) if svd else covariance(jac, res, absolute_sigma=absolute_sigma, free=free_mask, mask=mask)
    stderr = standard_errors(cov)
    factor = torch.as_tensor(t_quantile(confidence, dof), dtype=stderr.dtype, device=stderr.device)
    chisqr = (res * res).sum(-1)
    raw = res if weights is None else res / torch.broadcast_to(torch.as_tensor(weights, dtype=res.dtype, device=res.device), res.shape)
    aic, bic = information_criteria(chisqr, n_points, n_params)
    condition, condition_scaled = _conditions_from(free_jac, svd, False) if svd else condition_numbers(jac, free_mask)
    ident = _identifiable_from(svd, free_mask) if svd else identifiable(jac, free_mask)
    stats = {
        "r2": r_squared(res, y, weights, mask),
        "rmse": torch.sqrt((raw * raw).sum(-1) / n_points),
        "chisqr": chisqr,
        "redchi": torch.where(dof > 0, chisqr / dof, torch.full_like(chisqr, math.nan)),
        "aic": aic,
        "bic": bic,
        "dof": dof,
        "condition": condition,
        "condition_scaled": condition_scaled,
        "n_points": n_points,
        "n_params": torch.full_like(chisqr, float(n_params)),
    }
    names = list(param_names) if param_names is not None else [f"p{i}" for i in range(p)]
    warnings = _warnings(dof, condition_scaled, ident, free_mask, names)
    statistics: dict[str, object] = {k: float(v[0]) for k, v in stats.items()} if single else dict(stats)
    return FitReport(
        covariance=_unbatch(cov, single),
        stderr=_unbatch(stderr, single),
        correlation=_unbatch(correlation(cov), single),
        ci_half_width=_unbatch(stderr * factor[:, None], single),
        dof=_unbatch(dof, single),
        statistics=statistics,
        identifiable=_unbatch(ident, single),
        warnings=warnings,
    )


def _warnings(dof: Tensor, condition_scaled: Tensor, ident: Tensor, free: Tensor, names: list[str]) -> list[str]:
    out = []
    if bool((dof <= 0).any()):
        out.append("no degrees of freedom left (data points <= free parameters): standard errors are undefined — add data or fix parameters")
    lost = [name for j, name in enumerate(names) if bool(free[j]) and not bool(ident[:, j].all())]
    if lost:
        out.append(
            f"parameters {', '.join(lost)} cannot be determined from the data (the Jacobian is rank-deficient): "
            "their standard errors are infinite — fix some of them or reparametrise the model"
        )
    elif bool((condition_scaled > ILL_CONDITIONED).any()):
        worst = float(condition_scaled.max())
        out.append(
            f"the fit is ill-conditioned (scaled condition number of JᵀJ = {worst:.2g}): the parameters are strongly "
            "correlated and their standard errors are sensitive — consider reparametrising or fixing a parameter"
        )
    return out
