"""Fit statistics against independent references: scipy curve_fit's pcov, numpy formulas, scipy t."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps
from scipy.optimize import OptimizeWarning, curve_fit

from gradfit import stats

X = np.linspace(0.0, 4.0, 30)
SIGMA = 0.02 + 0.03 * X
Y = 2.5 * np.exp(-1.3 * X) + 0.4 + np.random.default_rng(0).normal(0.0, 1.0, X.size) * SIGMA


def decay(x, a, k, c):
    return a * np.exp(-k * x) + c


def jacobian(x, a, k, c):
    e = np.exp(-k * x)
    return np.column_stack([e, -a * x * e, np.ones_like(x)])


def weighted_system(popt, sigma=None):
    w = np.ones_like(X) if sigma is None else 1.0 / sigma
    res = (decay(X, *popt) - Y) * w
    jac = jacobian(X, *popt) * w[:, None]
    return jac, res


def fit(sigma=None, absolute_sigma=False):
    popt, pcov = curve_fit(
        decay, X, Y, p0=[1, 1, 0], sigma=sigma, absolute_sigma=absolute_sigma, jac=jacobian, xtol=1e-15, ftol=1e-15
    )
    return popt, pcov


@pytest.mark.parametrize("use_sigma", [False, True])
@pytest.mark.parametrize("absolute_sigma", [False, True])
def test_covariance_equals_curve_fit(use_sigma, absolute_sigma):
    sigma = SIGMA if use_sigma else None
    popt, pcov = fit(sigma, absolute_sigma)
    jac, res = weighted_system(popt, sigma)
    cov = stats.covariance(jac, res, absolute_sigma=absolute_sigma)
    np.testing.assert_allclose(cov, pcov, rtol=1e-8)
    np.testing.assert_allclose(stats.standard_errors(cov), np.sqrt(np.diag(pcov)), rtol=1e-8)


def test_batched_equals_single_and_ragged_mask():
    popt, _ = fit()
    jac, res = weighted_system(popt)
    single = stats.covariance(jac, res)
    # second fit: first 20 points only, padded with zeros to n = 30
    popt2, pcov2 = curve_fit(decay, X[:20], Y[:20], p0=[1, 1, 0], jac=jacobian, xtol=1e-15, ftol=1e-15)
    jac2 = np.zeros((30, 3))
    res2 = np.zeros(30)
    jac2[:20] = jacobian(X[:20], *popt2)
    res2[:20] = decay(X[:20], *popt2) - Y[:20]
    mask = np.ones((2, 30), dtype=bool)
    mask[1, 20:] = False
    batch = stats.covariance(np.stack([jac, np.asarray(jac2)]), np.stack([res, np.asarray(res2)]), mask=mask)
    np.testing.assert_allclose(batch[0], single, rtol=1e-12)
    expected = np.linalg.inv(jac2[:20].T @ jac2[:20]) * (res2 @ res2) / (20 - 3)  # same point as ours
    np.testing.assert_allclose(batch[1], expected, rtol=1e-10)
    np.testing.assert_allclose(batch[1], pcov2, rtol=1e-6)  # scipy's fjac is from a nearby point


def test_fixed_parameters_have_nan_rows_and_do_not_count_in_dof():
    c_fixed = 0.4
    popt, pcov = curve_fit(
        lambda x, a, k: decay(x, a, k, c_fixed),
        X,
        Y,
        p0=[1, 1],
        jac=lambda x, a, k: jacobian(x, a, k, c_fixed)[:, :2],
        xtol=1e-15,
        ftol=1e-15,
    )
    theta = np.array([popt[0], popt[1], c_fixed])
    jac, res = weighted_system(theta)
    cov = stats.covariance(jac, res, free=[True, True, False])
    np.testing.assert_allclose(cov[:2, :2], pcov, rtol=1e-8)
    assert np.isnan(cov[2]).all() and np.isnan(cov[:, 2]).all()
    report = stats.fit_report(jac, res, np.asarray(Y), free=[True, True, False])
    assert report.statistics["dof"] == X.size - 2
    assert math.isnan(float(report.stderr[2]))


def test_non_identifiable_parameters_get_infinite_errors_and_a_warning():
    # y = a*b*x: only the product is determined
    x = np.linspace(1, 5, 10)
    a, b = 2.0, 3.0
    jac = np.column_stack([b * x, a * x, np.ones_like(x)])
    res = np.random.default_rng(1).normal(size=x.size)
    report = stats.fit_report(jac, res, np.asarray(a * b * x), param_names=["a", "b", "c"])
    assert np.isinf(report.stderr[:2]).all() and np.isfinite(report.stderr[2])
    assert report.identifiable.tolist() == [False, False, True]
    assert any("a, b cannot be determined" in w for w in report.warnings)
    assert np.isnan(report.correlation[0, 1])


def test_correlation_and_confidence_intervals():
    popt, pcov = fit()
    jac, res = weighted_system(popt)
    report = stats.fit_report(jac, res, np.asarray(Y), confidence=0.9)
    se = np.sqrt(np.diag(pcov))
    np.testing.assert_allclose(report.correlation, pcov / np.outer(se, se), rtol=1e-8)
    np.testing.assert_allclose(np.diagonal(report.correlation), 1.0, rtol=1e-14)
    t = sps.t.ppf(0.95, X.size - 3)
    np.testing.assert_allclose(report.ci_half_width, t * se, rtol=1e-8)
    lower, upper = stats.confidence_intervals(np.asarray(popt), report.stderr, X.size - 3, 0.9)
    np.testing.assert_allclose(upper - lower, 2 * t * se, rtol=1e-8)


@pytest.mark.parametrize("use_sigma", [False, True])
def test_fit_statistics_match_numpy_formulas(use_sigma):
    sigma = SIGMA if use_sigma else None
    popt, _ = fit(sigma)
    jac, res = weighted_system(popt, sigma)
    weights = None if sigma is None else np.asarray(1.0 / sigma)
    report = stats.fit_report(jac, res, np.asarray(Y), weights=weights)
    s = report.statistics
    w2 = np.ones_like(X) if sigma is None else 1.0 / sigma**2
    raw = decay(X, *popt) - Y
    chisqr = np.sum(w2 * raw**2)
    mean = np.sum(w2 * Y) / np.sum(w2)
    n, p = X.size, 3
    assert s["chisqr"] == pytest.approx(chisqr, rel=1e-12)
    assert s["r2"] == pytest.approx(1 - chisqr / np.sum(w2 * (Y - mean) ** 2), rel=1e-12)
    assert s["redchi"] == pytest.approx(chisqr / (n - p), rel=1e-12)
    assert s["rmse"] == pytest.approx(np.sqrt(np.mean(raw**2)), rel=1e-12)
    assert s["aic"] == pytest.approx(n * np.log(chisqr / n) + 2 * p, rel=1e-12)
    assert s["bic"] == pytest.approx(n * np.log(chisqr / n) + np.log(n) * p, rel=1e-12)
    assert s["dof"] == n - p
    j = jac
    assert s["condition"] == pytest.approx(np.linalg.cond(j.T @ j), rel=1e-6)
    js = j / np.linalg.norm(j, axis=0)
    assert s["condition_scaled"] == pytest.approx(np.linalg.cond(js.T @ js), rel=1e-6)
    assert report.warnings == []


def test_ill_conditioned_fit_is_flagged():
    x = np.linspace(0, 1, 50)
    jac = np.column_stack([x**k for k in range(9)])
    res = np.random.default_rng(2).normal(size=x.size) * 1e-3
    report = stats.fit_report(jac, res, np.asarray(x))
    assert report.statistics["condition_scaled"] > stats.ILL_CONDITIONED
    assert any("ill-conditioned" in w for w in report.warnings)
    assert all(report.identifiable.tolist())


def test_bands_match_the_linear_regression_formulas():
    rng = np.random.default_rng(3)
    x = np.linspace(0, 10, 25)
    y = 1.5 + 0.7 * x + rng.normal(0, 0.5, x.size)
    a = np.column_stack([np.ones_like(x), x])
    beta, *_ = np.linalg.lstsq(a, y, rcond=None)
    res = a @ beta - y
    s2 = res @ res / (x.size - 2)
    cov = stats.covariance(np.asarray(a), np.asarray(res))
    x0 = np.array([[1.0, -1.0], [1.0, 5.0], [1.0, 12.0]])
    t = sps.t.ppf(0.975, x.size - 2)
    xtx_inv = np.linalg.inv(a.T @ a)
    expected_conf = t * np.sqrt(s2 * np.einsum("mi,ij,mj->m", x0, xtx_inv, x0))
    expected_pred = t * np.sqrt(s2 * (1 + np.einsum("mi,ij,mj->m", x0, xtx_inv, x0)))
    conf = stats.confidence_band(np.asarray(x0), cov, x.size - 2)
    pred = stats.prediction_band(np.asarray(x0), cov, x.size - 2, noise_variance=s2)
    np.testing.assert_allclose(conf, expected_conf, rtol=1e-10)
    np.testing.assert_allclose(pred, expected_pred, rtol=1e-10)


def test_no_degrees_of_freedom():
    jac = np.eye(3)
    res = np.zeros(3)
    report = stats.fit_report(jac, res, np.ones(3))
    assert np.isinf(report.stderr).all()
    assert any("degrees of freedom" in w for w in report.warnings)
    assert math.isnan(report.statistics["redchi"])


def test_absolute_sigma_ignores_the_residual_scale():
    popt, _ = fit(SIGMA, True)
    jac, res = weighted_system(popt, SIGMA)
    a = stats.covariance(jac, res, absolute_sigma=True)
    b = stats.covariance(jac, 10 * res, absolute_sigma=True)
    np.testing.assert_array_equal(a, b)


def test_intervals_of_absolute_sigma_use_the_normal_quantile_whatever_the_degrees_of_freedom():
    # the errors' scale is known, not estimated: z, not t (a 95% t(1) interval is 6.5 times wider)
    x = np.array([0.0, 1.0, 2.0])
    jac = np.column_stack([np.ones(3), x]) / 0.1
    report = stats.fit_report(jac, np.array([0.5, -0.8, 0.2]), np.zeros(3), absolute_sigma=True)
    np.testing.assert_allclose(report.ci_half_width / report.stderr, sps.norm.ppf(0.975), rtol=1e-12)
    exact = stats.fit_report(jac[:2], np.zeros(2), np.zeros(2), absolute_sigma=True)  # dof = 0
    assert np.isfinite(exact.ci_half_width).all()
    estimated = stats.fit_report(jac, np.array([0.5, -0.8, 0.2]), np.zeros(3))
    np.testing.assert_allclose(estimated.ci_half_width / estimated.stderr, sps.t.ppf(0.975, 1), rtol=1e-12)
    band = stats.confidence_band(np.array([[1.0, 0.5]]), report.covariance, 1, 0.9, absolute_sigma=True)
    assert band[0] == pytest.approx(sps.norm.ppf(0.95) * np.sqrt([1.0, 0.5] @ report.covariance @ [1.0, 0.5]), rel=1e-12)


def test_a_band_is_known_where_the_curve_does_not_depend_on_an_undetermined_parameter():
    cov = np.array([[np.inf, np.nan], [np.nan, 0.25]])
    band = stats.confidence_band(np.array([[0.0, 2.0], [1.0, 2.0]]), cov, 10)
    assert band[0] == pytest.approx(sps.t.ppf(0.975, 10) * 1.0, rel=1e-12)
    assert np.isnan(band[1])


def test_t_quantile_validates_confidence():
    assert stats.t_quantile(0.95, 10) == pytest.approx(sps.t.ppf(0.975, 10), rel=1e-12)
    assert stats.t_quantile(0.95, 0) == math.inf
    with pytest.raises(ValueError, match="confidence"):
        stats.t_quantile(1.5, 10)


def test_no_scipy_import_at_runtime():
    import subprocess
    import sys

    code = "import sys, gradfit.stats, gradfit.tdist; print('scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_curve_fit_warning_free_reference():
    # the references above must not come from a fit scipy itself distrusts
    with warnings.catch_warnings():
        warnings.simplefilter("error", OptimizeWarning)
        fit()


def test_tensors_are_accepted_and_answers_are_numpy():
    import torch

    popt, pcov = fit()
    jac, res = weighted_system(popt)
    report = stats.fit_report(torch.as_tensor(jac), torch.as_tensor(res), torch.as_tensor(Y))
    assert isinstance(report.covariance, np.ndarray)
    np.testing.assert_allclose(report.covariance, pcov, rtol=1e-8)


def test_a_given_decomposition_changes_nothing_and_single_fits_give_floats():
    popt, _ = fit()
    jac, res = weighted_system(popt)
    with np.errstate(all="ignore"):
        decomposition = stats.scaled_svd(jac)
    fresh = stats.fit_report(jac, res, Y)
    reused = stats.fit_report(jac, res, Y, decomposition=decomposition)
    np.testing.assert_array_equal(reused.covariance, fresh.covariance)
    assert reused.statistics == fresh.statistics
    assert all(type(v) is float for v in fresh.statistics.values())
    batch = stats.fit_report(np.stack([jac, jac]), np.stack([res, res]), Y)
    assert batch.statistics["r2"].shape == (2,) and batch.covariance.shape == (2, 3, 3)
    np.testing.assert_allclose(batch.statistics["aic"], fresh.statistics["aic"], rtol=1e-14)


def test_residuals_that_are_exactly_zero_say_so() -> None:
    """Zero scatter gives zero standard errors by the formula; the report must not let them pass
    for certainty (a saturated pixel, a dead sensor's constant reading)."""
    x = np.linspace(0.0, 1.0, 8)
    jac = np.column_stack([x, np.ones_like(x)])
    exact = stats.fit_report(jac, np.zeros_like(x), 2 * x + 1)
    assert (exact.stderr == 0).all() and stats.EXACT_FIT_WARNING in exact.warnings
    absolute = stats.fit_report(jac, np.zeros_like(x), 2 * x + 1, absolute_sigma=True)
    assert stats.EXACT_FIT_WARNING not in absolute.warnings and (absolute.stderr > 0).all()
    noisy = stats.fit_report(jac, np.full_like(x, 1e-3), 2 * x + 1)
    assert stats.EXACT_FIT_WARNING not in noisy.warnings


def test_r_squared_is_undefined_for_data_that_do_not_vary() -> None:
    x = np.linspace(0.0, 1.0, 6)
    residuals = np.array([[1e-3, -1e-3, 0, 0, 0, 0], [0.1, -0.1, 0.2, -0.2, 0, 0]])
    y = np.stack([np.full(6, 7.0), 2 * x])
    r2 = stats.r_squared(residuals, y)
    assert np.isnan(r2[0]) and r2[1] == pytest.approx(1 - 0.1 / np.sum((2 * x - 1) ** 2))
    report = stats.fit_report(np.column_stack([x, np.ones_like(x)]), residuals[0], y[0])
    assert np.isnan(report.statistics["r2"])


def test_the_m_estimator_variance_of_least_squares_is_the_residual_variance():
    rng = np.random.default_rng(0)
    r = rng.standard_normal((3, 20))
    np.testing.assert_allclose(stats.m_estimator_variance(r, np.ones_like(r), 2), (r * r).sum(-1) / 18, rtol=1e-14)
    mask = np.ones_like(r)
    mask[:, 15:] = 0.0
    np.testing.assert_allclose(stats.m_estimator_variance(r * mask, np.ones_like(r), 2, mask), (r[:, :15] ** 2).sum(-1) / 13, rtol=1e-14)
    assert stats.m_estimator_variance(r[0, :2], np.ones(2), 2) == np.inf


@pytest.mark.parametrize(
    ("draw", "density_at_0", "tolerance"),
    [
        (lambda rng, size: rng.normal(0.0, 2.0, size), 1.0 / (2.0 * np.sqrt(2.0 * np.pi)), 0.03),
        # the density's cusp at 0 biases the quotient by about the bandwidth, 2% here (4% in s²)
        (lambda rng, size: rng.laplace(0.0, 0.5, size), 1.0, 0.07),
        (lambda rng, size: np.where(rng.uniform(size=size) < 0.2, rng.normal(0.0, 20.0, size), rng.normal(0.0, 0.5, size)),
         (0.8 / 0.5 + 0.2 / 20.0) / np.sqrt(2.0 * np.pi), 0.03),
    ],
    ids=["normal", "laplace", "contaminated"],
)
def test_the_median_regression_variance_converges_to_the_inverse_squared_density_at_zero(draw, density_at_0, tolerance):
    r = draw(np.random.default_rng(3), (8, 100_000))
    variance = stats.median_regression_variance(r, 2)
    assert np.mean(variance) == pytest.approx(0.25 / density_at_0**2, rel=tolerance)


def test_the_median_regression_variance_of_padded_fits_is_that_of_their_real_points():
    rng = np.random.default_rng(4)
    r = rng.standard_normal((3, 40))
    mask = np.ones_like(r, dtype=bool)
    mask[1, 25:] = False
    padded = np.where(mask, r, 0.0)
    batched = stats.median_regression_variance(padded, 2, mask)
    alone = [stats.median_regression_variance(r[i, mask[i]], 2) for i in range(3)]
    np.testing.assert_allclose(batched, alone, rtol=1e-14)
    # Siddiqui's quotient from numpy's interpolated quantiles, Hall-Sheather's bandwidth at n = 40
    h = 1.959964 ** (2 / 3) * (1.5 / (2 * np.pi)) ** (1 / 3) / 40 ** (1 / 3)
    low, high = np.percentile(r[0], [100 * (0.5 - h), 100 * (0.5 + h)])
    assert alone[0] == pytest.approx(((high - low) / (4 * h)) ** 2, rel=1e-6)
    assert stats.median_regression_variance(r[0, :2], 2) == np.inf
    assert stats.median_regression_variance(np.zeros(10), 2) == 0.0


def test_robust_spreads_of_masked_rows_equal_each_rows_robust_spread():
    from gradfit.stats import robust_spread, robust_spreads

    rng = np.random.default_rng(3)
    residuals = rng.standard_cauchy((6, 9))
    mask = rng.random((6, 9)) < 0.7
    mask[0], mask[1] = False, True  # a row without entries, a full row
    spreads = robust_spreads(residuals, mask)
    assert np.isnan(spreads[0])
    for row in range(1, 6):
        assert spreads[row] == robust_spread(residuals[row][mask[row]])
