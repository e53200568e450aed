"""The text report's labels against the fit's settings."""

from __future__ import annotations

import numpy as np
import pytest

import gradfit
from gradfit.report_text import format_percent, loss_label


def test_confidence_levels_keep_the_digits_they_need():
    assert [format_percent(level) for level in (0.95, 0.9999, 0.6827, 0.5)] == ["95%", "99.99%", "68.27%", "50%"]


def test_the_report_names_the_confidence_level_and_a_weighted_loss(thermometer):
    t_u, t_c = thermometer
    result = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c, sigma=np.full(t_u.size, 0.5), confidence=0.9999)
    report = str(result)
    assert "99.99% CI [" in report and "100% CI" not in report
    assert "train loss   = " in report and "(mse of r/σ)" in report
    assert result.train_loss == pytest.approx(np.mean(((result.predict({"t_u": t_u}) - t_c) / 0.5) ** 2), rel=1e-12)
    assert "(mse)" in str(gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c))


def test_every_label_of_a_weighted_loss_says_it_is_of_r_over_sigma(thermometer):
    from gradfit.notebook import key_statistics

    t_u, t_c = thermometer
    weighted = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c, sigma=np.full(t_u.size, 0.5), val=0.3)
    plain = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c, val=0.3)
    assert (loss_label(weighted, "loss"), loss_label(plain, "loss")) == ("mse loss of r/σ", "mse loss")
    assert {label for _, label, _ in key_statistics(weighted)} >= {"training loss (mse of r/σ)", "validation loss (mse of r/σ)"}
    assert "training loss (mse)" in {label for _, label, _ in key_statistics(plain)}
    compared = gradfit.compare({"line": "w*t_u + b"}, {"t_u": t_u}, t_c, sigma=np.full(t_u.size, 0.5), val=0.3)
    assert compared.report().startswith("mse loss of (y − model)/σ\n")
    assert gradfit.compare({"line": "w*t_u + b"}, {"t_u": t_u}, t_c, val=0.3).report().startswith("mse loss of y\n")


def test_a_parameter_of_value_zero_gets_no_relative_error():
    x = np.linspace(0.0, 1.0, 20)
    y = 2.0 * x - 0.5 + 0.01 * np.sin(9.0 * x)
    result = gradfit.fit("w*x + c", {"x": x}, y, bounds="c>=0")
    assert result.params["c"] == 0.0
    line = next(line for line in result.report().splitlines() if line.strip().startswith("c "))
    assert "+/-" in line and "%)" not in line and "inf" not in line


def test_the_report_counts_the_rows_that_nan_omit_left_out(thermometer):
    t_u, t_c = thermometer
    t_u[[2, 5]] = np.nan
    dropped = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c, nan_policy="omit")
    assert dropped.n_train == 9
    assert "data points  = 9 training, 0 validation; 2 rows left out (missing or non-finite values)" in str(dropped)
    assert "left out" not in str(gradfit.fit("w*t_u + b", {"t_u": t_u[:2]}, t_c[:2]))


def test_an_infinite_standard_error_is_shown_not_left_out():
    result = gradfit.fit("w*x + b", [1.0, 2.0], [2.0, 4.0])  # no degrees of freedom
    assert "w          = 2 +/- inf  95% CI [-inf, inf]" in str(result)


def test_a_huge_relative_error_is_written_in_scientific_notation():
    from gradfit.result import ParameterEstimate
    from gradfit.report_text import _parameter_line

    result = gradfit.fit("w*x + b", [1.0, 2.0, 3.0], [2.0, 4.1, 5.9])
    line = _parameter_line(ParameterEstimate("a", 1.0, stderr=8.364e99), result)
    assert line.endswith("(8.36e+101%)")
