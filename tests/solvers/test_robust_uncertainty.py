"""Standard errors of robust fits: Monte Carlo against the spread of the estimates themselves."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import gradfit
from gradfit.solvers.least_squares import robust_error_variance


def _contaminated_slopes(loss: str, scale: float, repeats: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Slopes and their reported standard errors over datasets with 10% gross outliers."""
    x = np.linspace(0.0, 1.0, 50)
    slopes, errors = [], []
    for i in range(repeats):
        rng = np.random.default_rng(1000 + i)
        noise = np.where(rng.uniform(size=50) < 0.1, rng.normal(0.0, 2.0, 50), rng.normal(0.0, 0.1, 50))
        result = gradfit.fit("w*x + b", {"x": x}, 2.0 * x + 1.0 + noise, loss=loss, loss_scale=scale)
        slopes.append(result.params["w"])
        errors.append(result.stderr["w"])
    return np.array(slopes), np.array(errors)


@pytest.mark.parametrize(("loss", "scale"), [("huber", 0.15), ("soft_l1", 0.1), ("cauchy", 0.2)])
def test_robust_standard_errors_match_the_spread_of_the_estimates(loss, scale):
    slopes, errors = _contaminated_slopes(loss, scale)
    # 200 datasets estimate the spread to about 5%; the outliers' Σr² would make the errors 4-6 times too large
    assert np.mean(errors) == pytest.approx(np.std(slopes), rel=0.15)


def test_with_absolute_sigma_the_variance_is_the_losss_inverse_efficiency_at_the_normal():
    # Huber's 1.345 and the Cauchy 2.385 are the scales of 95% efficiency at the normal distribution
    assert robust_error_variance("huber", np.zeros(3), 1.345, 1, True) == pytest.approx(1 / 0.95, rel=2e-3)
    assert robust_error_variance("cauchy", np.zeros(3), 2.385, 1, True) == pytest.approx(1 / 0.95, rel=2e-3)
    assert robust_error_variance("linear", np.zeros(3), 1.0, 1, True) is None
    x = np.linspace(0.0, 1.0, 30)
    y = 2.0 * x + 1.0 + 0.1 * np.sin(17.0 * x)
    sigma = np.full(30, 0.1)
    robust = gradfit.fit("w*x + b", {"x": x}, y, sigma=sigma, absolute_sigma=True, loss="huber", loss_scale=1.345)
    plain = gradfit.fit("w*x + b", {"x": x}, y, sigma=sigma, absolute_sigma=True)
    assert robust.stderr["w"] == pytest.approx(plain.stderr["w"] * np.sqrt(robust_error_variance("huber", x, 1.345, 2, True)), rel=1e-6)


def test_a_loss_scale_far_below_the_noise_is_flagged():
    # with most residuals outside the scale the variance rests on a few points: coverage fell to 55%
    x = np.linspace(0.0, 1.0, 12)
    y = 2.0 * x + 1.0 + np.random.default_rng(0).normal(0.0, 10.0, 12)
    warned = gradfit.fit("a*x + b", {"x": x}, y, loss="cauchy")
    (warning,) = [w for w in warned.warnings if "loss scale" in w]
    assert "residuals lie within the loss scale 1" in warning and "1.4826·MAD" in warning
    matched = gradfit.fit("a*x + b", {"x": x}, y, loss="cauchy", loss_scale=10.0)
    assert not [w for w in matched.warnings if "loss scale" in w]


def test_a_robust_fits_prediction_band_covers_new_points_from_the_bulk_of_the_data():
    from gradfit.predict import prediction_bands

    x = np.linspace(0.0, 1.0, 40)
    covered, widths = [], []
    for i in range(200):
        rng = np.random.default_rng(5000 + i)
        noise = np.where(rng.uniform(size=40) < 0.2, rng.normal(0.0, 3.0, 40), rng.normal(0.0, 0.1, 40))
        result = gradfit.fit("w*x + b", {"x": x}, 2.0 * x + 1.0 + noise, loss="huber", loss_scale=0.15)
        curve, _, half = prediction_bands(result, {"x": [0.5]})
        new = 2.0 + rng.normal(0.0, 0.1)  # a new point from the uncontaminated bulk
        covered.append(abs(new - curve[0]) <= half[0])
        widths.append(half[0])
    # Σr² of the outliers made the band 5 times too wide (it covered every point)
    assert 0.9 <= np.mean(covered) <= 0.995 and np.median(widths) < 0.4


def _contaminated_lines(groups: int, n: int = 60) -> tuple[np.ndarray, Any]:
    """``groups`` noisy lines ``2x + 1`` with 20% gross outliers, as one long frame."""
    import polars as pl

    rng = np.random.default_rng(7)
    x = np.linspace(0.0, 10.0, n)
    noise = np.where(rng.uniform(size=(groups, n)) < 0.2, rng.normal(0.0, 20.0, (groups, n)), rng.normal(0.0, 0.5, (groups, n)))
    y = 2.0 * x + 1.0 + noise
    return y, pl.DataFrame({"g": np.repeat(np.arange(groups), n), "x": np.tile(x, groups), "y": y.ravel()})


def test_least_absolute_deviation_standard_errors_match_the_spread_of_the_estimates():
    # the outliers' Σr²/(n-p) made them 10-12 times too large (0.39 against a spread of 0.036)
    y, frame = _contaminated_lines(200)
    table = gradfit.fit_groups("w*x + b", frame, group="g", y="y", loss="mae").table
    slopes, errors = table["w"].to_numpy(), table["w_stderr"].to_numpy()
    assert np.mean(errors) == pytest.approx(np.std(slopes), rel=0.3)
    assert 0.9 <= np.mean(np.abs(slopes - 2.0) <= 1.96 * errors) <= 0.99
    single = gradfit.fit("w*x + b", {"x": np.linspace(0.0, 10.0, 60)}, y[0], loss="mae")
    assert single.stderr["w"] == pytest.approx(errors[0], rel=1e-6)


def test_an_mae_fits_noise_for_new_points_is_the_robust_spread_of_its_residuals():
    y, _ = _contaminated_lines(1, n=200)
    result = gradfit.fit("w*x + b", {"x": np.linspace(0.0, 10.0, 200)}, y[0], loss="mae")
    # the bulk's σ is 0.5; the outliers put the reduced chi-square near 0.2 · 20² = 80, and raise
    # 1.4826·MAD only to 0.652 (where 0.8·P(|N(0, 0.5)| < m) + 0.2·P(|N(0, 20)| < m) = ½)
    assert result.statistics["redchi"] > 20
    assert np.sqrt(result.statistics["error_variance"]) == pytest.approx(0.652, rel=0.1)


def test_with_absolute_sigma_an_mae_fits_variance_is_the_medians_inverse_efficiency():
    assert robust_error_variance("mae", np.zeros(3), 1.0, 1, True) == pytest.approx(np.pi / 2, rel=1e-12)
    x = np.linspace(0.0, 1.0, 30)
    sigma = np.full(30, 0.1)
    y = 2.0 * x + 1.0 + 0.1 * np.sin(17.0 * x)
    robust = gradfit.fit("w*x + b", {"x": x}, y, sigma=sigma, absolute_sigma=True, loss="mae")
    design = np.column_stack([x, np.ones_like(x)]) / 0.1
    expected = np.sqrt(np.pi / 2 * np.linalg.inv(design.T @ design)[0, 0])
    assert robust.stderr["w"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("scale", [1.0, 1.345, 2.0])
def test_hubers_inverse_efficiency_at_the_normal_is_its_closed_form(scale):
    # the trapezoidal rule is first-order at the kink of ψ': 3.5e-4 off at scale 1
    from scipy.stats import norm

    inside = 2.0 * norm.cdf(scale) - 1.0
    expected = (inside - 2.0 * scale * norm.pdf(scale) + 2.0 * scale**2 * norm.sf(scale)) / inside**2
    assert robust_error_variance("huber", np.zeros(3), scale, 1, True) == pytest.approx(expected, rel=1e-13)
