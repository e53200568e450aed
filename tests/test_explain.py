"""Tests for gradfit.explain: hand chain rule == autograd == finite differences."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from gradfit.errors import DataError, FormulaError, ModelError
from gradfit.explain import Explanation, explain, relative_difference
from gradfit.formula import parse

# The chapter's thermometer readings (Deep Learning with PyTorch, ch. 5).
T_C = np.array([0.5, 14.0, 15.0, 28.0, 11.0, 8.0, 3.0, -4.0, 6.0, 13.0, 21.0])
T_U = np.array([35.7, 55.9, 58.2, 81.9, 56.3, 48.9, 33.9, 21.8, 48.4, 60.4, 68.4])


def test_thermometer_gradient_matches_the_book() -> None:
    result = explain("w*t_u + b", {"t_u": T_U}, T_C, {"w": 1.0, "b": 0.0})
    # Book: loss tensor(1763.8846); gradient tensor([4517.2969, 82.6000]) (float32 print).
    assert result.loss == pytest.approx(1763.8846, abs=1e-4)
    w_row, b_row = result.rows
    for value in (w_row.by_hand, w_row.autograd, w_row.finite_difference):
        assert value == pytest.approx(4517.2966, abs=1e-3)
    for value in (b_row.by_hand, b_row.autograd, b_row.finite_difference):
        assert value == pytest.approx(82.6, abs=1e-6)
    # closed form with numpy, written independently
    residual = 1.0 * T_U + 0.0 - T_C
    assert w_row.by_hand == pytest.approx(np.mean(2 * residual * T_U), rel=1e-14)
    assert b_row.by_hand == pytest.approx(np.mean(2 * residual), rel=1e-14)
    assert result.max_rel_diff < 1e-8


def test_thermometer_explanation_texts() -> None:
    result = explain(parse("w*t_u + b"), {"t_u": T_U}, T_C, {"b": 0.0, "w": 1.0})
    assert result.model == "f = w*t_u + b"
    assert result.loss_text == "L = mean((f - y)**2)"
    assert result.parameters == ("w", "b") and result.inputs == ("t_u",)
    assert result.n_points == 11
    assert [(r.parameter, r.derivative, r.chain_rule) for r in result.rows] == [
        ("w", "t_u", "dL/dw = mean(2*(f - y)*t_u)"),
        ("b", "1", "dL/db = mean(2*(f - y))"),
    ]
    assert [r.value for r in result.rows] == [1.0, 0.0]


def test_book_training_step_reproduces() -> None:
    # One step of the book's gradient descent: params - 1e-2 * grad at w=1, b=0 (diverges).
    result = explain("w*t_u + b", {"t_u": T_U}, T_C, {"w": 1.0, "b": 0.0})
    w_new = 1.0 - 1e-2 * result.rows[0].autograd
    b_new = 0.0 - 1e-2 * result.rows[1].autograd
    assert w_new == pytest.approx(-44.1730, abs=1e-4)
    assert b_new == pytest.approx(-0.8260, abs=1e-4)


@pytest.mark.parametrize(
    ("formula", "params"),
    [
        ("a*exp(-k*t) + c", {"a": 20.0, "k": 0.02, "c": -5.0}),
        ("w2*t**2 + w1*t + b", {"w2": 0.001, "w1": 0.5, "b": -10.0}),
        ("s*sigmoid((t - m)/r) + arctan2(q, t)", {"s": 30.0, "m": 50.0, "r": 8.0, "q": 3.0}),
        ("sqrt(abs(v)*t) - log1p(t/u)", {"v": 2.0, "u": 40.0}),
    ],
)
def test_three_methods_agree_on_nonlinear_models(formula: str, params: dict[str, float]) -> None:
    result = explain(formula, {"t": T_U}, T_C, params)
    assert result.parameters == tuple(params)
    for row in result.rows:
        assert row.rel_diff_autograd < 1e-10, row
        assert row.rel_diff_finite_difference < 1e-6, row
        assert np.isfinite(row.by_hand)
    assert result.loss == pytest.approx(
        np.mean((np.broadcast_to(_numpy_model(formula, params), T_U.shape) - T_C) ** 2), rel=1e-12
    )


def _numpy_model(formula: str, p: dict[str, float]) -> np.ndarray:
    """The same models written directly with numpy (independent of the tree evaluator)."""
    t = T_U
    if formula.startswith("a*exp"):
        return p["a"] * np.exp(-p["k"] * t) + p["c"]
    if formula.startswith("w2"):
        return p["w2"] * t**2 + p["w1"] * t + p["b"]
    if formula.startswith("s*sigmoid"):
        return p["s"] / (1 + np.exp(-(t - p["m"]) / p["r"])) + np.arctan2(p["q"], t)
    return np.sqrt(abs(p["v"]) * t) - np.log1p(t / p["u"])


def test_parameter_not_affecting_the_loss_has_zero_gradient() -> None:
    result = explain("w*x + 0*q", {"x": T_U}, T_C, {"w": 0.5, "q": 3.0})
    q_row = result.rows[1]
    assert q_row.derivative == "0"
    assert q_row.by_hand == q_row.autograd == q_row.finite_difference == 0.0
    assert q_row.rel_diff_autograd == 0.0


def test_explanation_is_frozen() -> None:
    result = explain("w*x", {"x": T_U}, T_C, {"w": 0.5})
    assert isinstance(result, Explanation)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.loss = 0.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.rows[0].by_hand = 0.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("formula", "inputs", "y", "params", "error", "fragment"),
    [
        ("w*x + b", {"x": T_U}, T_C, {"w": 1.0}, ModelError, "no value for parameter(s) b"),
        ("w*x + b", {"x": T_U}, T_C, {"w": 1, "b": 0, "z": 2}, ModelError, "unknown parameter"),
        ("w*x + b", {"x": T_U}, T_C, {"w": np.nan, "b": 0}, ModelError, "not finite"),
        ("x*2", {"x": T_U}, T_C, {}, ModelError, "no parameters"),
        ("w*x", {"x": T_U[:5]}, T_C, {"w": 1.0}, DataError, "equal lengths"),
        ("w*x", {"x": T_U}, T_C[:, None], {"w": 1.0}, DataError, "1-D"),
        ("w*x", {"x": ["a"] * 11}, T_C, {"w": 1.0}, DataError, "not numeric"),
        ("w*x", {"x": np.full(11, np.inf)}, T_C, {"w": 1.0}, DataError, "NaN or infinite"),
        ("w*x +", {"x": T_U}, T_C, {"w": 1.0}, FormulaError, "syntax"),
    ],
)
def test_invalid_requests_raise_clear_errors(
    formula: str,
    inputs: dict[str, object],
    y: np.ndarray,
    params: dict[str, float],
    error: type[Exception],
    fragment: str,
) -> None:
    with pytest.raises(error) as info:
        explain(formula, inputs, y, params)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_relative_difference() -> None:
    assert relative_difference(0.0, 0.0) == 0.0
    assert relative_difference(1.0, 1.1) == pytest.approx(0.1 / 1.1)
    assert relative_difference(-2.0, 2.0) == 2.0
    assert np.isnan(relative_difference(np.inf, 1.0))


def test_a_zero_gradient_and_its_finite_difference_noise_agree() -> None:
    # at the minimum of (x - c)**2 the gradient is 0 and the central difference is rounding noise
    x = np.array([0.0, 1.0, 2.0, 3.0])
    row = explain("(x-c)**2", {"x": x}, x, {"c": 1.0}).rows[0]
    assert row.by_hand == 0.0 and row.autograd == 0.0 and abs(row.finite_difference) < 1e-8
    assert row.rel_diff_finite_difference == 0.0
    assert relative_difference(1e-12, 0.0, floor=1e-9) == 0.0 and relative_difference(1e-6, 0.0, floor=1e-9) == 1.0


def test_the_exponent_derivative_at_a_zero_base_agrees_with_autograd() -> None:
    x = np.array([0.0, 1.0, 2.0, 3.0])
    row = explain("a*x**p", {"x": x}, x, {"a": 1.0, "p": 2.0}).rows[1]
    assert row.by_hand == pytest.approx(row.autograd, rel=1e-12) and row.rel_diff_finite_difference < 1e-6


def test_a_point_where_the_loss_is_not_finite_is_a_model_error():
    with pytest.raises(ModelError, match="the loss is not finite at w=10"):
        explain("exp(w*x)", {"x": np.array([35.7, 55.9, 58.2])}, np.array([0.5, 14.0, 15.0]), {"w": 10.0})


def test_with_sigma_the_gradient_is_that_of_the_weighted_loss():
    t_u = np.array([35.7, 55.9, 58.2, 81.9])
    t_c = np.array([0.5, 14.0, 15.0, 28.0])
    sigma = np.array([0.5, 1.0, 2.0, 0.5])
    result = explain("w*t_u + b", {"t_u": t_u}, t_c, {"w": 1.0, "b": 0.0}, sigma=sigma)
    residual = t_u - t_c
    assert result.loss == pytest.approx(np.mean((residual / sigma) ** 2), rel=1e-14)
    by_name = {row.parameter: row for row in result.rows}
    assert by_name["w"].by_hand == pytest.approx(np.mean(2 * residual * t_u / sigma**2), rel=1e-14)
    assert by_name["b"].autograd == pytest.approx(np.mean(2 * residual / sigma**2), rel=1e-14)
    assert result.max_rel_diff < 1e-8 and "σ" in result.loss_text and by_name["b"].chain_rule.endswith("/σ**2)")
    with pytest.raises(DataError, match="sigma must be positive"):
        explain("w*t_u + b", {"t_u": t_u}, t_c, {"w": 1.0, "b": 0.0}, sigma=[1.0, 0.0, 1.0, 1.0])


def test_a_finite_difference_that_failed_agrees_with_nothing():
    # the step crosses the edge of sqrt's domain: Python's max skipped the NaN, and the report
    # said the three methods agreed to 1e-16
    t_u = np.array([21.8, 35.7, 55.9, 58.2])
    result = explain("w*sqrt(t_u - c) + b", {"t_u": t_u}, np.array([-4.0, 0.5, 14.0, 15.0]), {"w": 1.0, "c": 21.79999, "b": 0.0})
    assert math.isnan(result.max_rel_diff)


def test_gradfit_explain_stays_callable_after_its_module_is_imported():
    import gradfit
    import gradfit.explain  # binds the name on the package to the module

    result = gradfit.explain("w*t_u + b", {"t_u": np.array([1.0, 2.0, 3.0])}, np.array([1.0, 2.0, 2.9]), {"w": 1.0, "b": 0.0})
    assert result.max_rel_diff < 1e-6
