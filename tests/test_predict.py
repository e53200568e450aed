"""Predictions and bands from a fit, in memory and from a saved result."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

import gradfit
from gradfit.errors import DataError
from gradfit.predict import prediction_bands


def test_bands_equal_the_closed_form_ols_bands(thermometer):
    t_u, t_c = thermometer
    result = gradfit.FitResult.from_json(gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c).to_json())
    grid = np.linspace(10, 90, 7)
    curve, confidence, prediction = prediction_bands(result, {"t_u": grid})
    t, s2, leverage = _ols_bands(t_u, t_c, grid)
    np.testing.assert_allclose(curve, np.polyval(np.polyfit(t_u, t_c, 1), grid), rtol=1e-10)
    np.testing.assert_allclose(confidence, t * np.sqrt(s2 * leverage), rtol=1e-8)
    np.testing.assert_allclose(prediction, t * np.sqrt(s2 * (1 + leverage)), rtol=1e-8)


def _ols_bands(t_u, t_c, grid):
    """t factor, residual variance s² and leverage x₀ᵀ(XᵀX)⁻¹x₀ of the closed-form OLS line."""
    design = np.column_stack([t_u, np.ones_like(t_u)])
    _, ssr, *_ = np.linalg.lstsq(design, t_c, rcond=None)
    new = np.column_stack([grid, np.ones_like(grid)])
    leverage = np.einsum("ij,jk,ik->i", new, np.linalg.inv(design.T @ design), new)
    t = scipy_stats.t.ppf(0.975, len(t_u) - 2)
    s2 = ssr[0] / (len(t_u) - 2)
    return t, s2, leverage


@pytest.mark.parametrize("saved", [False, True])
def test_a_weighted_fit_adds_the_new_points_noise_in_the_datas_units(thermometer, saved):
    t_u, t_c = thermometer
    grid = np.linspace(10, 90, 7)
    t, s2, leverage = _ols_bands(t_u, t_c, grid)

    def bands(**options):
        result = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c, sigma=np.full(t_u.size, 0.5), **options)
        return gradfit.FitResult.from_json(result.to_json()) if saved else result

    relative = bands()  # a constant relative sigma changes nothing
    _, confidence, prediction = prediction_bands(relative, {"t_u": grid}, sigma=0.5)
    np.testing.assert_allclose(confidence, t * np.sqrt(s2 * leverage), rtol=1e-8)
    np.testing.assert_allclose(prediction, t * np.sqrt(s2 * (1 + leverage)), rtol=1e-8)
    assert np.isnan(prediction_bands(relative, {"t_u": grid})[2]).all()  # its noise at new points is unknown
    absolute = bands(absolute_sigma=True)  # cov = 0.25 (XᵀX)⁻¹, a new point's variance 0.25, a known scale: z
    _, confidence, prediction = prediction_bands(absolute, {"t_u": grid}, sigma=0.5)
    z = scipy_stats.norm.ppf(0.975)
    np.testing.assert_allclose(confidence, z * np.sqrt(0.25 * leverage), rtol=1e-8)
    np.testing.assert_allclose(prediction, z * np.sqrt(0.25 * (1 + leverage)), rtol=1e-8)


def test_bands_leave_fixed_parameters_out_and_are_unknown_where_a_parameter_is_not_identifiable(thermometer):
    t_u, t_c = thermometer
    fixed = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c, fix={"b": -17.0})
    w = fixed.params["w"]
    _, confidence, _ = prediction_bands(fixed, {"t_u": [50.0]})
    t = scipy_stats.t.ppf(0.975, len(t_u) - 1)
    assert confidence[0] == pytest.approx(t * 50.0 * fixed.stderr["w"], rel=1e-10) and np.isfinite(w)
    x = np.linspace(-1, 1, 20)
    undetermined = gradfit.fit("a*b*x + c", x, np.exp(x))  # only a·b is determined
    for result in (undetermined, gradfit.FitResult.from_json(undetermined.to_json())):
        assert result.stderr["a"] == np.inf
        _, confidence, prediction = prediction_bands(result, {"x": [0.5]})
        assert np.isnan(confidence).all() and np.isnan(prediction).all()


def test_bands_of_absolute_sigma_use_the_normal_quantile_and_need_no_degrees_of_freedom():
    x, sigma = np.array([0.0, 1.0]), np.array([0.1, 0.1])
    exact = gradfit.fit("a + b*x", x, 1.0 + 2.0 * x, sigma=sigma, absolute_sigma=True)  # 2 points, 2 parameters
    curve, confidence, prediction = prediction_bands(exact, {"x": [0.5]}, sigma=0.2)
    g = np.array([1.0, 0.5])
    variance = g @ np.asarray(exact.covariance) @ g
    z = scipy_stats.norm.ppf(0.975)
    assert curve[0] == pytest.approx(2.0)
    assert confidence[0] == pytest.approx(z * np.sqrt(variance), rel=1e-10)
    assert prediction[0] == pytest.approx(z * np.sqrt(variance + 0.04), rel=1e-10)
    unweighted = gradfit.fit("a + b*x", [0.0, 1.0, 2.0], [1.0, 3.1, 4.9], absolute_sigma=True)  # σ = 1, as curve_fit
    _, confidence, prediction = prediction_bands(unweighted, {"x": [1.0]})
    assert prediction[0] == pytest.approx(np.sqrt(confidence[0] ** 2 + z**2), rel=1e-10)


def test_bands_where_the_curve_does_not_depend_on_an_undetermined_parameter_are_known():
    x = np.linspace(0.0, 3.0, 20)
    result = gradfit.fit("a*b*x + c", x, 2.0 * x + 1.0 + 0.05 * np.sin(7.0 * x), params={"a": 1.0, "b": 1.0, "c": 0.0})
    _, confidence, _ = prediction_bands(result, {"x": [0.0, 1.0]})
    t = scipy_stats.t.ppf(0.975, result.statistics["dof"])
    assert confidence[0] == pytest.approx(t * result.stderr["c"], rel=1e-10)
    assert np.isnan(confidence[1])


def test_missing_input_column_is_a_clear_error(thermometer):
    t_u, t_c = thermometer
    result = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c)
    with pytest.raises(DataError, match="no column 't_u'"):
        result.predict({"x": t_u})


def test_sigma_of_the_wrong_length_is_a_data_error(thermometer):
    t_u, t_c = thermometer
    weighted = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c, sigma=np.full(t_u.size, 0.5))
    with pytest.raises(DataError, match="one per new point"):
        prediction_bands(weighted, {"t_u": [1.0, 2.0]}, sigma=[0.1, 0.2, 0.3])
    assert prediction_bands(weighted, {"t_u": [1.0, 2.0]}, sigma=[0.1, 0.2])[2].shape == (2,)


def test_text_input_columns_convert_as_the_fits_data_do():
    # a column holding "NA" (text in polars) was "not numeric — clean the data", with no row named
    import polars as pl

    result = gradfit.fit("w*t + b", {"t": np.array([1.0, 2.0, 3.0, 4.0])}, np.array([1.0, 2.0, 3.0, 4.2]))
    predicted = result.predict({"t": pl.Series(["1", "NA", "3"])})
    np.testing.assert_allclose(predicted, [result.predict(1.0)[0], np.nan, result.predict(3.0)[0]], rtol=1e-15)
    with pytest.raises(DataError, match="row 2 has 'x'"):
        result.predict({"t": pl.Series(["1", "x", "3"])})


@pytest.mark.parametrize(("low", "high", "degree"), [(2000.0, 2020.0, 3), (1000.0, 1010.0, 6)])
def test_a_polynomial_in_a_raw_input_far_from_zero_has_exact_predictions_and_bands(low, high, degree):
    """In powers of x near 2010, g C gᵀ cancels (the monomial covariance gave 0 at the centre), and
    so does the curve's evaluation; both come from the centred basis the fit was solved in.
    Reference: the least-squares fit in mpmath at 80 digits."""
    import mpmath

    rng = np.random.default_rng(0)
    x = np.linspace(low, high, 30)
    u = (x - 0.5 * (low + high)) / (high - low)
    y = 10.0 * sum(0.7**k * u**k for k in range(degree + 1)) + rng.normal(0.0, 0.05, x.size)
    result = gradfit.fit(" + ".join(["c0", *(f"c{k}*x**{k}" for k in range(1, degree + 1))]), {"x": x}, y)
    grid = np.array([low, low + 0.3 * (high - low), 0.5 * (low + high), high + 0.05 * (high - low)])
    mpmath.mp.dps = 80
    design = mpmath.matrix([[mpmath.mpf(v) ** k for k in range(degree + 1)] for v in x])
    inverse = (design.T * design) ** -1
    residuals = design * (inverse * (design.T * mpmath.matrix([mpmath.mpf(v) for v in y]))) - mpmath.matrix([mpmath.mpf(v) for v in y])
    s2 = sum(r**2 for r in residuals) / (x.size - degree - 1)
    factor = scipy_stats.t.ppf(0.975, x.size - degree - 1)
    exact = []
    for g in grid:
        row = mpmath.matrix([[mpmath.mpf(g) ** k for k in range(degree + 1)]])
        exact.append(float(mpmath.sqrt(s2 * (row * inverse * row.T)[0])) * factor)
    coefficients = inverse * (design.T * mpmath.matrix([mpmath.mpf(v) for v in y]))
    curve = [float(sum(coefficients[k] * mpmath.mpf(g) ** k for k in range(degree + 1))) for g in grid]
    for fitted in (result, gradfit.FitResult.from_json(result.to_json())):  # in memory and saved
        predicted, confidence, _ = prediction_bands(fitted, {"x": grid})
        np.testing.assert_allclose(confidence, exact, rtol=1e-9)
        np.testing.assert_allclose(predicted, curve, rtol=1e-9, atol=1e-9)  # the curve too: no cancellation
        np.testing.assert_allclose(fitted.predict({"x": grid}), curve, rtol=1e-9, atol=1e-9)


def test_a_far_polynomials_validation_loss_and_sklearn_predictions_use_its_centred_basis():
    from gradfit.sklearn import ParametricRegressor

    rng = np.random.default_rng(3)
    x = np.linspace(1000.0, 1010.0, 41)
    u = x - 1005.0
    y = 0.5 + 0.3 * u - 0.02 * u**2 + 0.001 * u**6 / 1e3 + rng.normal(0.0, 0.01, x.size)
    far = gradfit.fit("poly:6", {"x": x}, y, val=0.3, seed=0)
    near = gradfit.fit("poly:6", {"x": u}, y, val=0.3, seed=0)  # the same split, in a centred input
    assert far.val_loss == pytest.approx(near.val_loss, rel=1e-6)
    regressor = ParametricRegressor(model="poly:6").fit(x.reshape(-1, 1), y)
    reference = np.polynomial.Polynomial.fit(x, y, 6)(x)
    np.testing.assert_allclose(regressor.predict(x.reshape(-1, 1)), reference, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("formula", "extra"),
    [
        ("a + b*x + c*x**2 + x**3", lambda x, z: x**3),
        ("a + b*x + c*x**2 + 5", lambda x, z: np.full_like(x, 5.0)),
        ("a + b*x + c*x**2 + sin(x)", lambda x, z: np.sin(x)),
        ("a + b*x + c*x**2 + z", lambda x, z: z),
    ],
)
def test_a_polynomial_plus_a_term_without_a_parameter_predicts_with_that_term(formula, extra):
    """The polynomial solver fits y minus the parameter-free term; the curve adds it back (its
    predictions, saved or not, and its validation loss used to leave it out)."""
    x = np.linspace(0.0, 4.0, 60)
    z = np.cos(3.0 * x)
    y = 1.0 + 2.0 * x - 0.5 * x**2 + extra(x, z)
    data = {"x": x, "z": z} if "z" in formula else {"x": x}
    result = gradfit.fit(formula, data, y)
    assert result.params == pytest.approx({"a": 1.0, "b": 2.0, "c": -0.5}, rel=1e-12, abs=1e-12)
    for fitted in (result, gradfit.FitResult.from_json(result.to_json())):
        np.testing.assert_allclose(fitted.predict(data), y, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(prediction_bands(fitted, data)[0], y, rtol=1e-12, atol=1e-12)
    assert gradfit.fit(formula, data, y, val=0.3, seed=1).val_loss < 1e-20


def test_a_far_polynomial_plus_a_term_without_a_parameter_warns_that_its_own_predictions_lose_digits():
    x = np.linspace(1000.0, 1010.0, 41)
    u = x - 1005.0
    y = 0.5 + 0.3 * u - 0.02 * u**2 + 0.001 * u**4 + np.sin(x) + np.random.default_rng(0).normal(0.0, 1e-6, x.size)
    result = gradfit.fit("c0 + c1*x + c2*x**2 + c3*x**3 + c4*x**4 + sin(x)", {"x": x}, y)
    assert any("gradfit's own predictions too: the model has terms outside the polynomial" in w for w in result.warnings)
