"""Figures of a fit: what goes on the axes."""

from __future__ import annotations

import numpy as np
import pytest

import gradfit
from gradfit.data import as_dataset


@pytest.mark.parametrize(("n", "location"), [(200, 0), (50_000, 2)])  # matplotlib's codes: best, upper left
def test_the_legend_searches_for_the_best_place_only_among_few_points(n, location):
    # with 2M points matplotlib's search took seconds and printed 'loc="best" can be slow'
    import matplotlib

    matplotlib.use("Agg")
    from gradfit.plot import draw_fit, figure

    x = np.linspace(0.0, 1.0, n)
    y = 2.0 * x + 1.0 + np.random.default_rng(0).normal(0.0, 0.1, n)
    result = gradfit.fit("w*x + b", {"x": x}, y)
    fig, axes = figure()
    ax = axes[0]
    draw_fit(ax, result, as_dataset({"x": x}, y))
    assert ax.get_legend()._loc == location
    import matplotlib.pyplot as plt

    plt.close(fig)


@pytest.mark.parametrize("weighted", [True, False])
def test_a_weighted_fit_draws_its_points_with_sigma_error_bars(weighted):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.container import ErrorbarContainer

    from gradfit.plot import draw_fit, figure

    x = np.linspace(0.0, 5.0, 25)
    sigma = 0.05 + 0.05 * x
    y = 2.0 * np.exp(-0.6 * x) + 0.3 + sigma * np.cos(9 * x)
    result = gradfit.fit("a*exp(-k*x) + c", {"x": x}, y, sigma=sigma if weighted else None)
    fig, (ax,) = figure()
    draw_fit(ax, result, as_dataset({"x": x}, y, sigma=sigma if weighted else None))
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    if weighted:
        segments = bars[0].lines[2][0].get_segments()
        np.testing.assert_allclose([s[1, 1] - s[0, 1] for s in segments], 2 * sigma)  # ±σ about each point
    else:
        assert not bars
    plt.close(fig)


@pytest.mark.parametrize(("low", "scales"), [(1e-3, ("log", "log")), (1.0, ("linear", "linear"))])
def test_inputs_over_decades_are_drawn_on_log_axes(low, scales):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gradfit.plot import draw_fit, figure

    x = np.geomspace(low, low * (1e6 if low < 1 else 10.0), 40)
    y = 2.5 * x**1.7 * (1.0 + 0.01 * np.cos(9 * np.arange(40)))
    result = gradfit.fit("a*x**b", {"x": x}, y, params={"a": 1.0, "b": 1.0})
    fig, (ax,) = figure()
    draw_fit(ax, result, as_dataset({"x": x}, y))
    assert (ax.get_xscale(), ax.get_yscale()) == scales
    plt.close(fig)
