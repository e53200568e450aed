"""Exact linear least squares (:mod:`gradfit.solvers.linear`): polynomials far from zero."""

from __future__ import annotations

import mpmath
import numpy as np
import polars as pl
import pytest

import gradfit


def _cubic(offset: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    u = np.linspace(0.0, 10.0, 100)
    return u + offset, 1 + 0.5 * u - 0.1 * u**2 + 0.01 * u**3 + 0.05 * rng.standard_normal(100)


def _exact_leading_stderr(x: np.ndarray, y: np.ndarray, degree: int) -> float:
    """The leading coefficient's standard error in 50-digit arithmetic (normal equations in x - x[0])."""
    mpmath.mp.dps = 50
    shift = mpmath.mpf(float(x[0]))
    t = [mpmath.mpf(float(v)) - shift for v in x]
    design = mpmath.matrix([[ti**k for k in range(degree + 1)] for ti in t])
    target = mpmath.matrix([mpmath.mpf(float(v)) for v in y])
    normal = design.T * design
    theta = mpmath.lu_solve(normal, design.T * target)
    residual = design * theta - target
    s2 = sum(r**2 for r in residual) / (len(x) - degree - 1)
    return float(mpmath.sqrt(mpmath.inverse(normal)[degree, degree] * s2))


@pytest.mark.parametrize("offset", [2000.0, 1e6])
def test_a_polynomial_far_from_zero_has_the_standard_errors_and_loss_of_its_fit(offset):
    # the cubic coefficient does not depend on where x starts; rounding the other coefficients to
    # float64 moved the curve by 300 at x ≈ 1e6, and that error was taken for noise (stderr 1.64, not 2.5e-4)
    x, y = _cubic(offset)
    far = gradfit.fit("poly:3", {"x": x}, y)
    near = gradfit.fit("poly:3", {"x": x - offset}, y)
    assert far.stderr["w3"] == pytest.approx(near.stderr["w3"], rel=1e-8)
    assert far.stderr["w3"] == pytest.approx(_exact_leading_stderr(x, y, 3), rel=1e-8)
    assert far.train_loss == pytest.approx(near.train_loss, rel=1e-8)


def test_coefficients_that_cancel_when_rounded_say_so():
    x, y = _cubic(1e6)
    warning = next(w for w in gradfit.fit("poly:3", {"x": x}, y).warnings if "cancel" in w)
    assert "centre x (fit in x - 1000005)" in warning
    assert not [w for w in gradfit.fit("poly:3", {"x": x - 1e6}, y).warnings if "cancel" in w]


@pytest.mark.parametrize(("model", "offset"), [("poly:4", 2000.0), ("poly:5", 1000.0), ("poly:3", 1e6)])
def test_group_fits_of_polynomials_far_from_zero_equal_single_fits(model, offset):
    x, y = _cubic(offset)
    frame = pl.DataFrame({"g": np.repeat([1, 2], 100), "x": np.tile(x, 2), "y": np.concatenate([y, y[::-1]])})
    table = gradfit.fit_groups(model, frame, group="g", y="y").table
    for row, (xs, ys) in enumerate([(x, y), (x, y[::-1])]):
        single = gradfit.fit(model, {"x": xs}, ys)
        for name in single.param_names:
            assert table[name][row] == pytest.approx(single.params[name], rel=1e-8)
            assert table[f"{name}_stderr"][row] == pytest.approx(single.stderr[name], rel=1e-8)
        assert table["redchi"][row] == pytest.approx(single.statistics["redchi"], rel=1e-8)


def test_the_cancellation_warning_is_in_the_units_of_y_and_only_above_rounding():
    exact = np.linspace(0.0, 1.0, 11)
    clean = gradfit.fit("a + b*x + c*x**2 + d*x**3", {"x": exact}, 1 + 0.3 * exact - 0.02 * exact**2 + 0.001 * exact**3)
    assert not [w for w in clean.warnings if "cancel" in w]  # rounding of the data themselves is no cancellation
    rng = np.random.default_rng(0)
    u = np.linspace(-10.0, 10.0, 30)
    y = 1 + 0.5 * u - 0.01 * u**3 + rng.normal(0.0, 1000.0, 30)
    far = gradfit.fit("poly:3", {"x": u + 1e6}, y, sigma=np.full(30, 1000.0))
    near = gradfit.fit("poly:3", {"x": u}, y, sigma=np.full(30, 1000.0))
    warning = next(w for w in far.warnings if "cancel" in w)
    moved = float(warning.split("move the curve by ")[1].split(" ")[0])
    from_coefficients = np.polyval(far.values, u + 1e6)  # w3, w2, w1, b: what a user's own evaluation gets
    actual = np.sqrt(np.mean((from_coefficients - near.predict({"x": u})) ** 2))
    assert actual / 5 <= moved <= actual * 1.01  # in y's units, and such predictions are at least that far off
    # gradfit's own predictions use the centred basis it solved in, and do not cancel
    np.testing.assert_allclose(far.predict({"x": u + 1e6}), near.predict({"x": u}), rtol=1e-9, atol=1e-9 * np.abs(y).max())


@pytest.mark.parametrize(
    ("formula", "options", "named"),
    [
        ("a + b + c*x", {}, "parameters a, b cannot"),
        ("a*x**2 + b*x**2 + c*x", {}, "parameters a, b cannot"),  # the polynomial solver's branch
        ("a*x + b*(2*x) + c + d*x**2", {}, "parameters a, b cannot"),
    ],
)
def test_a_singular_design_names_the_parameters_the_data_cannot_tell_apart(formula, options, named):
    x = np.linspace(0.0, 1.0, 20)
    with pytest.raises(gradfit.errors.FitError, match=f"design matrix is singular: {named} be told apart .* fix one of them"):
        gradfit.fit(formula, {"x": x}, 3.0 * x + 1.0, **options)
    assert gradfit.fit("a*x + b*x + c", {"x": x}, 3.0 * x + 1.0, fix={"b": 1.0}).values[0] == pytest.approx(2.0, rel=1e-12)


def test_a_parameter_whose_column_is_zero_is_named_as_having_no_effect():
    x = np.linspace(0.0, 1.0, 20)
    with pytest.raises(gradfit.errors.FitError, match="singular: parameter b has no effect on the model at these data — remove or fix it"):
        gradfit.fit("a*x + b*z + c", {"x": x, "z": np.zeros_like(x)}, 3.0 * x + 1.0)
    nonlinear = gradfit.fit("a*exp(k*x) + b*z", {"x": x, "z": np.zeros_like(x)}, 3.0 * x + 1.0)
    assert nonlinear.stderr["b"] == np.inf
    assert any(w.startswith("parameter b cannot be determined from the data") and "its standard error is infinite — fix it" in w for w in nonlinear.warnings)


def test_a_float32_design_made_singular_by_rounding_says_that_float64_may_mend_it():
    from gradfit.errors import FitError

    t = 1.7e9 + np.linspace(0.0, 1000.0, 50)
    with pytest.raises(FitError, match=r"cannot be told apart .* \(in float32 the data may only look so after rounding: fit in float64"):
        gradfit.fit("w*t + b", {"t": t}, 0.5 * (t - 1.7e9), dtype="float32")
    assert gradfit.fit("w*t + b", {"t": t}, 0.5 * (t - 1.7e9)).success


def test_a_far_polynomial_with_a_fixed_coefficient_warns_that_it_is_solved_in_raw_powers():
    rng = np.random.default_rng(4)
    formula = "c0 + c1*x + c2*x**2 + c3*x**3 + c4*x**4"
    u = np.linspace(-5.0, 5.0, 40)
    y = 1.0 + 0.2 * u - 0.05 * u**2 + 0.002 * u**4 + rng.normal(0.0, 0.01, u.size)
    far = gradfit.fit(formula, {"x": u + 1000.0}, y, fix={"c4": 0.002})
    assert any(w.startswith("with fixed coefficients this polynomial is solved in raw powers of x") and "x - 1000" in w for w in far.warnings)
    near = gradfit.fit(formula, {"x": u}, y, fix={"c4": 0.002})
    assert not any("fixed coefficients" in w for w in near.warnings)
    free = gradfit.fit(formula, {"x": u + 1000.0}, y)
    assert not any("fixed coefficients" in w for w in free.warnings)


@pytest.mark.parametrize("formula", ["a*x + b + 0*log(x)", "a*x + b + 0/x"])
def test_a_term_that_simplifies_away_still_makes_the_model_undefined_where_it_is(formula):
    """As the iterative solver reports it: the model as written is NaN there (it used to fit R² = 1)."""
    x = np.linspace(-2.0, 2.0, 11)
    exact = gradfit.fit(formula, {"x": x}, 2.0 * x + 1.0)
    iterative = gradfit.fit(formula, {"x": x}, 2.0 * x + 1.0, solver="lm")
    assert exact.status == iterative.status == "non_finite" and not exact.success
    positive = np.linspace(1.0, 2.0, 11)
    assert gradfit.fit(formula, {"x": positive}, 2.0 * positive + 1.0).params == pytest.approx({"a": 2.0, "b": 1.0}, rel=1e-12)
