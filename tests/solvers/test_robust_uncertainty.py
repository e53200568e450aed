"""Standard errors of robust fits: Monte Carlo against the spread of the estimates themselves."""

from __future__ import annotations

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
