"""Group fits by gradient descent: each group moves exactly as it would alone."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import gradfit
from gradfit.errors import OptionError
from gradfit.groups import fit_groups

DECAY = "a*exp(-k*t) + c"
START = {"a": 1.0, "k": 1.0, "c": 0.0}


@pytest.fixture(scope="module")
def heavy_tailed() -> pl.DataFrame:
    """Six decays with Student-t(2) noise: outliers that a robust loss should shrug off."""
    rng = np.random.default_rng(0)
    k, n = 6, 30
    t = np.tile(np.linspace(0, 5, n), k)
    g = np.repeat(np.arange(k), n)
    truth = np.column_stack([rng.uniform(1, 3, k), rng.uniform(0.3, 1.5, k), rng.uniform(-1, 1, k)])
    y = truth[g, 0] * np.exp(-truth[g, 1] * t) + truth[g, 2] + 0.05 * rng.standard_t(2, k * n)
    return pl.DataFrame({"g": g, "t": t, "y": y})


def _single(frame: pl.DataFrame, key: int, **options) -> gradfit.FitResult:
    part = frame.filter(pl.col("g") == key)
    return gradfit.fit(DECAY, {"t": part["t"].to_numpy()}, part["y"].to_numpy(), params=START, **options)


@pytest.mark.parametrize(
    "options",
    [
        {"loss": "soft_l1", "optimizer": "adam", "epochs": 1500},
        {"loss": "huber", "loss_scale": 0.1, "optimizer": "rmsprop", "epochs": 800},
        {"loss": "mse", "optimizer": "sgd", "optimizer_options": {"lr": 0.05, "momentum": 0.5}, "epochs": 600},
        {"loss": "huber", "optimizer": "adam", "optimizer_options": {"lr": 0.05}, "epochs": 3000, "patience": 30},
        {"loss": "cauchy", "optimizer": "adamw", "epochs": 400, "scale": False},
    ],
)
def test_every_group_equals_its_one_at_a_time_gradient_fit(heavy_tailed, options):
    # smooth losses: the two runs round differently in the last bit (batched vs single SVDs and
    # reductions), which a smooth loss keeps in the last bits; under mae a sign flips sooner or
    # later and the trajectories part (mae is checked against an independent solution below)
    result = fit_groups(DECAY, heavy_tailed, group="g", y="y", params=START, **options)
    assert result.solver == "gradient"
    for key in range(6):
        single = _single(heavy_tailed, key, **options)
        row = result.table.filter(pl.col("g") == key)
        np.testing.assert_allclose([row[n][0] for n in "akc"], single.values, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose([row[f"{n}_stderr"][0] for n in "akc"], [single.stderr[n] for n in "akc"], rtol=1e-9)
        assert row["status"][0] == single.status and row["iterations"][0] == single.iterations
        assert row["success"][0] == single.success


def test_a_group_is_fitted_the_same_alone_or_in_a_batch(heavy_tailed):
    options = dict(group="g", y="y", params=START, loss="mae", optimizer="adam", epochs=300, val=0.3, seed=4, patience=20)
    batch = fit_groups(DECAY, heavy_tailed, **options).table
    alone = fit_groups(DECAY, heavy_tailed.filter(pl.col("g") == 3), **options).table
    mixed = fit_groups(DECAY, heavy_tailed, chunk=4, **options).table
    row = batch.filter(pl.col("g") == 3)
    assert alone.select("a", "k", "c", "val_loss", "iterations").equals(row.select("a", "k", "c", "val_loss", "iterations"))
    assert mixed.select("a", "k", "c").equals(batch.select("a", "k", "c"))  # other chunk neighbours, same bits


def test_robust_loss_fits_close_to_the_least_absolute_deviations_line():
    from scipy.optimize import linprog

    rng = np.random.default_rng(5)
    k, n = 4, 40
    t = np.tile(np.linspace(0, 10, n), k)
    g = np.repeat(np.arange(k), n)
    slope, intercept = rng.uniform(0.5, 2, k), rng.uniform(-3, 3, k)
    y = slope[g] * t + intercept[g] + rng.laplace(0, 0.3, k * n)
    y[::17] += 25.0  # gross outliers
    frame = pl.DataFrame({"g": g, "t": t, "y": y})
    result = fit_groups("w*t + b", frame, group="g", y="y", loss="mae", optimizer="adam", optimizer_options={"lr": 1e-3}, epochs=4000)
    squares = fit_groups("w*t + b", frame, group="g", y="y")  # the outliers pull least squares away
    for key in range(k):
        tk, yk = t[g == key], y[g == key]
        # LAD as a linear program: minimise Σ (u+ + u-) with y - w t - b = u+ - u-
        a_eq = np.hstack([tk[:, None], np.ones((n, 1)), np.eye(n), -np.eye(n)])
        cost = np.concatenate([[0.0, 0.0], np.ones(2 * n)])
        bounds = [(None, None)] * 2 + [(0, None)] * (2 * n)
        lad = linprog(cost, A_eq=a_eq, b_eq=yk, bounds=bounds, method="highs").x[:2]
        row = result.table.filter(pl.col("g") == key)
        np.testing.assert_allclose([row["w"][0], row["b"][0]], lad, rtol=1e-2, atol=1e-2)  # Adam hovers within ~lr
        assert abs(squares.table.filter(pl.col("g") == key)["b"][0] - lad[1]) > 0.1


def test_a_group_whose_loss_overflows_is_reported_and_leaves_the_others_alone(heavy_tailed):
    broken = heavy_tailed.with_columns(pl.when(pl.col("g") == 2).then(pl.col("y") * 1e200).otherwise(pl.col("y")).alias("y"))
    options = dict(group="g", y="y", params=START, loss="mse", optimizer="adam", epochs=200)
    clean = fit_groups(DECAY, heavy_tailed, **options).table
    dirty = fit_groups(DECAY, broken, **options).table
    bad = dirty.filter(pl.col("g") == 2)
    assert bad["status"][0] == "non_finite" and not bad["success"][0]  # inf from the first epoch on
    others = pl.col("g") != 2
    assert dirty.filter(others).select("a", "k", "c").equals(clean.filter(others).select("a", "k", "c"))


def test_groups_that_diverge_keep_their_last_finite_parameters(heavy_tailed):
    options = dict(group="g", y="y", params=START, loss="mse", optimizer="sgd", optimizer_options={"lr": 10.0}, epochs=200, scale=False)
    table = fit_groups(DECAY, heavy_tailed, **options).table
    assert set(table["status"].to_list()) == {"diverged"} and not table["success"].any()
    assert "learning rate" in table["message"][0]
    assert np.isfinite(table.select("a", "k", "c").to_numpy()).all()


def test_groups_with_a_redundant_parameter_converge_as_single_fits_do():
    t = np.linspace(0.5, 4.0, 12)
    frame = pl.DataFrame({"g": np.repeat([0, 1], 12), "t": np.tile(t, 2), "y": np.concatenate([2.0 * np.sqrt(0.7 * t), np.sqrt(t)])})
    table = fit_groups("a*sqrt(k*t)", frame, group="g", y="y", params={"a": 1.0, "k": 1.0}, solver="gradient").table
    assert table["success"].all()
    np.testing.assert_allclose(table["a"] * np.sqrt(table["k"]), [2.0 * np.sqrt(0.7), 1.0], rtol=1e-6)


def test_a_group_not_finite_at_its_start_is_reported_and_leaves_the_others_alone():
    # sqrt(t - k) at k = 1 is NaN at group 1's point t = 0.5: its start has no finite loss, and
    # no finite Jacobian to whiten with (a batched SVD of it raised for all groups)
    t = np.tile(np.linspace(2.0, 6.0, 12), 3)
    t[12] = 0.5
    frame = pl.DataFrame({"g": np.repeat([0, 1, 2], 12), "t": t, "y": 2.0 * np.sqrt(np.abs(t - 1.2))})
    options = dict(group="g", y="y", params={"a": 1.0, "k": 1.0}, loss="mae", optimizer="adam", epochs=100)
    table = fit_groups("a*sqrt(t - k)", frame, **options).table
    bad = table.filter(pl.col("g") == 1)
    assert bad["status"][0] == "non_finite" and not bad["success"][0] and "starting values" in bad["message"][0]
    assert (bad["a"][0], bad["k"][0]) == (1.0, 1.0)
    alone = fit_groups("a*sqrt(t - k)", frame.filter(pl.col("g") != 1), **options).table
    others = table.filter(pl.col("g") != 1).select("g", "a", "k", "status")
    assert others.equals(alone.select("g", "a", "k", "status"))


@pytest.mark.parametrize("name", ["lbfgs", "adafactor"])
def test_optimizers_that_couple_the_groups_are_refused(heavy_tailed, name):
    with pytest.raises(OptionError, match="couple the groups"):
        fit_groups(DECAY, heavy_tailed, group="g", y="y", optimizer=name)


def test_least_squares_solvers_refuse_non_squared_losses(heavy_tailed):
    # lm and gn take mae by the least-absolute-deviations continuation; the fused solver does not
    with pytest.raises(OptionError, match="use solver 'gradient' \\(or auto\\), or 'lm' for the exact least absolute deviations"):
        fit_groups(DECAY, heavy_tailed, group="g", y="y", loss="mae", solver="batched")
    with pytest.raises(OptionError, match="an optimizer was named — use solver 'gradient' \\(or auto\\)$"):
        fit_groups(DECAY, heavy_tailed, group="g", y="y", loss="mae", solver="lm", optimizer="adam")


def test_bounds_and_fixed_parameters_per_group_as_in_single_fits(heavy_tailed):
    options = {"loss": "huber", "optimizer": "adam", "optimizer_options": {"lr": 0.05}, "epochs": 400,
               "bounds": {"k": (0.0, 0.6)}, "fix": {"c": 0.1}}
    result = fit_groups(DECAY, heavy_tailed, group="g", y="y", params=START, **options)
    assert (result.table["c"] == 0.1).all() and (result.table["k"] <= 0.6).all()
    for key in range(6):
        single = _single(heavy_tailed, key, **options)
        row = result.table.filter(pl.col("g") == key)
        np.testing.assert_allclose([row[n][0] for n in "akc"], single.values, rtol=1e-9, atol=1e-12)


def test_huber_groups_shorter_than_the_longest_equal_single_fits(heavy_tailed):
    # padding has zero residuals, where huber's unused square-root branch used to give NaN gradients
    ragged = heavy_tailed.filter((pl.col("g") != 2) | (pl.int_range(pl.len()).over("g") < 17))
    options = {"loss": "huber", "optimizer": "adam", "optimizer_options": {"lr": 0.05}, "epochs": 400}
    result = fit_groups(DECAY, ragged, group="g", y="y", params=START, **options)
    assert result.status_counts() == {"max_epochs": 6}
    for key in (1, 2):
        single = _single(ragged, key, **options)
        row = result.table.filter(pl.col("g") == key)
        np.testing.assert_allclose([row[n][0] for n in "akc"], single.values, rtol=1e-9, atol=1e-12)


def test_a_group_whose_loss_ends_far_above_its_start_diverged_as_its_single_fit_did():
    # plain SGD, the same learning rate: stable on the short range, slowly growing (never 1e8 times) on the long one
    t = np.linspace(0.0, 1.0, 10)
    frame = pl.DataFrame({"g": np.repeat([0, 1], 10), "t": np.concatenate([t, 1.6 * t]), "y": np.concatenate([2 * t + 1, 3.2 * t + 1])})
    options = {"optimizer": "sgd", "optimizer_options": {"lr": 0.6}, "epochs": 60, "scale": False}
    table = fit_groups("w*t + b", frame, group="g", y="y", **options).table
    for key, span in ((0, 1.0), (1, 1.6)):
        single = gradfit.fit("w*t + b", {"t": span * t}, 2 * span * t + 1, **options)
        row = table.filter(pl.col("g") == key)
        assert row["status"][0] == single.status == ("max_epochs", "diverged")[key]
        np.testing.assert_allclose([row["w"][0], row["b"][0]], single.values, rtol=1e-9)
    assert table["w"][1] == 1.0 and table["b"][1] == 1.0  # the diverged group keeps its best (starting) parameters
