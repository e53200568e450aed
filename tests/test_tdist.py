"""Student's t without scipy, checked against scipy.stats.t (and mpmath where scipy is the question)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from gradfit.tdist import t_cdf, t_isf, t_pdf, t_ppf, t_sf

DFS = [1, 1.5, 2, 3, 4.5, 7, 10, 29, 30, 100, 999, 1000, 2500, 1e4, 1e5, 1e6]
PS = [1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.45, 0.49, 0.51, 0.6, 0.75, 0.9, 0.95, 0.975, 0.99,
      0.999, 1 - 1e-4, 1 - 1e-6]  # fmt: skip


def rel(a: float, b: float) -> float:
    return 0.0 if a == b else abs(a - b) / abs(b)


@pytest.mark.parametrize("df", DFS)
def test_ppf_matches_scipy(df):
    for p in PS:
        assert rel(t_ppf(p, df), stats.t.ppf(p, df)) <= 1e-10, (p, df)


@pytest.mark.parametrize("df", DFS)
def test_cdf_and_sf_match_scipy(df):
    for p in PS:
        q = stats.t.ppf(p, df)
        for t in (q, 0.37 * q, 3.0 * q):
            assert rel(t_cdf(t, df), stats.t.cdf(t, df)) <= 1e-10, (t, df)
            assert rel(t_sf(t, df), stats.t.sf(t, df)) <= 1e-10, (t, df)


@pytest.mark.parametrize("df", [1, 3, 30, 1e4, 1e6])
def test_pdf_matches_mpmath(df):
    # scipy's t.pdf itself is off by ~2e-12 at df = 1e4, so the reference is 50-digit mpmath
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 50
    for t in (-50.0, -3.0, -0.5, 0.0, 0.5, 2.0, 40.0):
        nu = mp.mpf(df)
        exact = mp.exp(mp.loggamma((nu + 1) / 2) - mp.loggamma(nu / 2)) / mp.sqrt(nu * mp.pi) * (1 + mp.mpf(t) ** 2 / nu) ** (-(nu + 1) / 2)
        if exact > mp.mpf(1e-300):
            assert rel(t_pdf(t, df), float(exact)) <= 1e-12, t


def test_far_tails_keep_relative_accuracy():
    for df in (1, 5, 50):
        for q in (1e-12, 1e-20, 1e-50):
            assert rel(t_isf(q, df), stats.t.isf(q, df)) <= 1e-10
            t = stats.t.isf(q, df)
            assert rel(t_sf(t, df), q) <= 1e-10
            assert rel(t_cdf(-t, df), q) <= 1e-10


def test_closed_forms():
    # df = 1 is Cauchy, df = 2 has an algebraic quantile
    for p in (0.001, 0.2, 0.7, 0.99):
        assert rel(t_ppf(p, 1), math.tan(math.pi * (p - 0.5))) <= 1e-12
        assert rel(t_ppf(p, 2), (2 * p - 1) / math.sqrt(2 * p * (1 - p))) <= 1e-12
    assert t_ppf(0.5, 7) == 0.0 and t_cdf(0.0, 7) == 0.5


def test_infinite_df_is_the_normal_distribution():
    for p in (1e-6, 0.025, 0.3, 0.975):
        assert rel(t_ppf(p, math.inf), stats.norm.ppf(p)) <= 1e-12
    assert rel(t_cdf(-2.0, math.inf), stats.norm.cdf(-2.0)) <= 1e-12


def test_edges_and_vectors():
    assert t_ppf(0.0, 5) == -math.inf and t_ppf(1.0, 5) == math.inf
    assert math.isnan(t_ppf(1.5, 5)) and math.isnan(t_cdf(math.nan, 5))
    assert t_cdf(math.inf, 3) == 1.0 and t_cdf(-math.inf, 3) == 0.0
    out = t_ppf(np.array([0.025, 0.975]), np.array([[5.0], [50.0]]))
    assert out.shape == (2, 2)
    np.testing.assert_allclose(out, stats.t.ppf([0.025, 0.975], [[5.0], [50.0]]), rtol=1e-10)
    assert isinstance(t_ppf(0.3, 4), float)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_cdf(1.0, 0.0)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(log_df=st.floats(0.0, 6.0), log_p=st.floats(-6.0, math.log10(0.45)), upper=st.booleans())
def test_random_quantiles_match_scipy(log_df, log_p, upper):
    df, p = 10.0**log_df, 10.0**log_p
    p = 1.0 - p if upper else p
    expected = stats.t.ppf(p, df)  # p <= 0.45: near p = ½ the quantile's relative value is ill-posed
    assert rel(t_ppf(p, df), expected) <= 1e-10
    assert rel(t_cdf(expected, df), stats.t.cdf(expected, df)) <= 1e-10
