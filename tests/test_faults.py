"""Numerical faults during a fit: overflow, NaN, singular and rank-deficient problems."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradfit
from gradfit.errors import FitError

X = np.linspace(0.0, 5.0, 30)


def test_overflow_in_a_gradient_run_stops_with_finite_parameters():
    y = 2.0 * np.exp(0.3 * X)
    # exp(200 x) overflows at the start already: the start is named, not the learning rate
    result = gradfit.fit("a*exp(k*x)", X, y, params={"a": 1.0, "k": 200.0}, optimizer="adam", epochs=200, scale=False)
    assert result.status == "non_finite" and not result.success
    assert result.params == {"a": 1.0, "k": 200.0}
    assert "starting values" in result.message
    # a finite start that a too-large learning rate throws into overflow is divergence
    result = gradfit.fit("a*exp(k*x)", X, y, params={"a": 1.0, "k": 0.1}, optimizer="sgd", optimizer_options={"lr": 1.0}, epochs=200, scale=False)
    assert result.status == "diverged" and not result.success
    assert all(math.isfinite(v) for v in result.params.values())
    assert "learning rate" in result.message


def test_nan_gradients_stop_the_run_and_keep_the_best_parameters():
    y = np.sqrt(2.0 * X)
    # at w = 0 the loss is finite but d sqrt(w*x)/dw = x / (2 sqrt(w*x)) is 0/0 at x = 0: NaN gradient
    result = gradfit.fit("sqrt(w*x)", X, y, params={"w": 0.0}, optimizer="sgd", epochs=50, scale=False)
    assert result.status == "diverged" and result.iterations == 2
    assert result.params == {"w": 0.0}


def test_least_squares_never_accepts_non_finite_steps():
    y = 2.0 * np.exp(-0.7 * X)
    result = gradfit.fit("a*exp(-k*x)", X, y, params={"a": 1.0, "k": -200.0})  # exp(1000) at the start
    assert all(math.isfinite(v) for v in result.params.values())
    assert math.isfinite(result.train_loss)
    assert result.train_loss <= np.mean(y**2)  # never worse than the model's flat tail


def test_parameters_the_data_cannot_separate_are_flagged():
    y = 3.0 * X + 0.01 * np.sin(7 * X)
    result = gradfit.fit("a*b*x", X, y, params={"a": 1.0, "b": 1.0})
    assert result.params["a"] * result.params["b"] == pytest.approx(np.dot(X, y) / np.dot(X, X), rel=1e-9)
    assert any("identif" in w or "cannot" in w for w in result.warnings), result.warnings
    assert not all(math.isfinite(s) for s in result.stderr.values())


@pytest.mark.parametrize(("model", "x"), [("a*x + b*x", X), ("w*x + b", np.full(30, 2.0))])
def test_rank_deficient_linear_fits_say_what_to_change(model, x):
    with pytest.raises(FitError, match="singular: parameters (a, b|w, b) cannot be told apart.*remove or fix one of them, or add varied data"):
        gradfit.fit(model, x, 2.0 * X + 1.0)
