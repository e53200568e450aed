"""What a result reports about a solver's outcome (:mod:`gradfit.summary`)."""

from __future__ import annotations

import numpy as np
import pytest

import gradfit


def _descend(thermometer, **options):
    t_u, t_c = thermometer
    return gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c, optimizer="sgd", optimizer_options={"lr": 1e-2}, **options)


def test_gradient_descent_cut_short_by_its_epoch_limit_says_how_far_the_minimum_is(thermometer):
    result = _descend(thermometer, epochs=50)
    exact = gradfit.fit("w*t_u + b", {"t_u": thermometer[0]}, thermometer[1])
    assert result.status == "max_epochs"
    (warning,) = [w for w in result.warnings if "Gauss-Newton" in w]
    # for a linear model one Gauss-Newton step lands on the least-squares solution exactly
    drop = 1.0 - exact.train_loss / result.train_loss
    assert f"lowers the loss by {100.0 * drop:.3g}%" in warning
    assert "more epochs" in warning


def test_gradient_descent_that_reached_the_minimum_does_not_warn(thermometer):
    result = _descend(thermometer, epochs=2000)
    assert result.status == "max_epochs"
    assert not [w for w in result.warnings if "Gauss-Newton" in w]


@pytest.mark.parametrize("options", [{"target": 100.0, "epochs": 2000}, {"val": 0.3, "patience": 1, "epochs": 2000}])
def test_runs_stopped_on_purpose_before_the_minimum_do_not_warn(thermometer, options):
    result = _descend(thermometer, **options)
    assert result.status in ("target", "early_stopped")
    assert not [w for w in result.warnings if "Gauss-Newton" in w]


def test_the_check_is_for_squared_losses_only(thermometer):
    result = _descend(thermometer, epochs=50, loss="mae")
    assert result.status == "max_epochs"
    assert not [w for w in result.warnings if "Gauss-Newton" in w]


def test_a_nonlinear_descent_cut_short_is_flagged_too():
    t = np.linspace(0.0, 4.0, 30)
    y = 2.0 * np.exp(-0.7 * t) + 0.1
    result = gradfit.fit("a*exp(-k*t) + c", {"t": t}, y, params={"a": 1.0, "k": 0.3, "c": 0.0}, optimizer="adam", epochs=20)
    assert result.status == "max_epochs"
    assert [w for w in result.warnings if "Gauss-Newton" in w]


def test_a_descent_that_ends_on_a_bound_is_not_called_unfinished(thermometer):
    t_u, t_c = thermometer
    bounded = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c, optimizer="adam", optimizer_options={"lr": 1e-2}, epochs=5000, bounds="b>=-5")
    reference = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c, bounds="b>=-5", solver="lm")
    assert bounded.train_loss == pytest.approx(reference.train_loss, rel=1e-9)  # the bounded minimum
    assert not [w for w in bounded.warnings if "Gauss-Newton" in w]


def test_a_networks_result_reports_r_squared_and_rms_error_of_its_training_points():
    x = np.linspace(0.0, 1.0, 40)
    y = np.sin(6 * x) + 0.05 * np.cos(40 * x)
    result = gradfit.fit("mlp:6", x, y, epochs=150, seed=3)
    residuals = result.predict(x) - y
    assert result.statistics["r2"] == pytest.approx(1.0 - np.sum(residuals**2) / np.sum((y - y.mean()) ** 2), rel=1e-9)
    assert result.statistics["rmse"] == pytest.approx(np.sqrt(np.mean(residuals**2)), rel=1e-9)
    assert result.statistics["n_points"] == 40
