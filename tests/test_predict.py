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
    design = np.column_stack([t_u, np.ones_like(t_u)])
    coef, ssr, *_ = np.linalg.lstsq(design, t_c, rcond=None)
    s2 = ssr[0] / (len(t_u) - 2)
    inverse = np.linalg.inv(design.T @ design)
    new = np.column_stack([grid, np.ones_like(grid)])
    leverage = np.einsum("ij,jk,ik->i", new, inverse, new)
    t = scipy_stats.t.ppf(0.975, len(t_u) - 2)
    np.testing.assert_allclose(curve, new @ coef, rtol=1e-10)
    np.testing.assert_allclose(confidence, t * np.sqrt(s2 * leverage), rtol=1e-8)
    np.testing.assert_allclose(prediction, t * np.sqrt(s2 * (1 + leverage)), rtol=1e-8)


def test_missing_input_column_is_a_clear_error(thermometer):
    t_u, t_c = thermometer
    result = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c)
    with pytest.raises(DataError, match="no column 't_u'"):
        result.predict({"x": t_u})
