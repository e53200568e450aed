"""Batched group fits equal one-at-a-time fits, and a failing group never disturbs the others."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import gradfit
from gradfit.groups import fit_groups

DECAY = "a*exp(-k*t) + c"
START = {"a": 1.0, "k": 1.0, "c": 0.0}


@pytest.fixture(scope="module")
def fleet() -> pl.DataFrame:
    """24 sensors with ragged sizes; sensor 5 has a NaN, sensor 7 has two points only."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(6, 30, 24)
    sizes[7] = 2
    gid = np.repeat(np.arange(24), sizes)
    t = np.concatenate([np.sort(rng.uniform(0, 5, s)) for s in sizes])
    a, k, c = rng.uniform(1, 3, 24), rng.uniform(0.3, 1.5, 24), rng.uniform(-1, 1, 24)
    y = a[gid] * np.exp(-k[gid] * t) + c[gid] + 0.02 * rng.standard_normal(t.size)
    y[np.flatnonzero(gid == 5)[2]] = np.nan
    return pl.DataFrame({"sensor": gid, "t": t, "y": y, "sigma": rng.uniform(0.01, 0.05, t.size)})


def _single(model: str, frame: pl.DataFrame, key: int, **options) -> gradfit.FitResult:
    part = frame.filter(pl.col("sensor") == key)
    sigma = part["sigma"].to_numpy() if "sigma" in options.pop("columns", ()) else None
    return gradfit.fit(model, {"t": part["t"].to_numpy()}, part["y"].to_numpy(), sigma=sigma, **options)


@pytest.mark.parametrize("weighted", [False, True])
def test_nonlinear_groups_equal_single_fits(fleet, weighted):
    sigma = "sigma" if weighted else None
    result = fit_groups(DECAY, fleet, group="sensor", y="y", sigma=sigma, params=START, chunk=7)
    table = result.table
    assert result.status_counts() == {"bad_data": 1, "converged": 22, "too_few_points": 1}
    for key in (0, 3, 11, 23):
        single = _single(DECAY, fleet, key, params=START, columns=("sigma",) if weighted else ())
        row = table.filter(pl.col("sensor") == key)
        np.testing.assert_allclose([row[n][0] for n in "akc"], single.values, rtol=1e-8)
        np.testing.assert_allclose([row[f"{n}_stderr"][0] for n in "akc"], [single.stderr[n] for n in "akc"], rtol=1e-8)
        assert row["r2"][0] == pytest.approx(single.statistics["r2"], rel=1e-10)


def test_linear_groups_equal_polyfit(fleet):
    result = fit_groups("w2*t**2 + w1*t + w0", fleet, group="sensor", y="y")
    assert result.solver == "linear"
    for key in (0, 9, 20):
        part = fleet.filter(pl.col("sensor") == key)
        row = result.table.filter(pl.col("sensor") == key)
        np.testing.assert_allclose([row[n][0] for n in ("w2", "w1", "w0")], np.polyfit(part["t"], part["y"], 2), rtol=1e-8)


def test_failing_groups_are_reported_and_leave_the_others_alone(fleet):
    broken = fleet.with_columns(
        pl.when(pl.col("sensor") == 3).then(pl.lit(float("inf"))).otherwise(pl.col("y")).alias("y"),
        pl.when(pl.col("sensor") == 9).then(pl.lit(1.0)).otherwise(pl.col("t")).alias("t"),  # zero-variance input
    )
    clean = fit_groups(DECAY, fleet, group="sensor", y="y", params=START)
    dirty = fit_groups(DECAY, broken, group="sensor", y="y", params=START)
    bad = dirty.table.filter(pl.col("sensor") == 3)
    assert bad["status"][0] == "bad_data" and not bad["success"][0]
    flat = dirty.table.filter(pl.col("sensor") == 9)
    assert not np.isfinite(flat["a_stderr"][0]) or not flat["success"][0]  # nothing can be identified
    others = [k for k in range(24) if k not in (3, 5, 7, 9)]
    for name in ("a", "k", "c", "a_stderr"):
        np.testing.assert_allclose(  # parameters bit-identical; batched SVDs may differ in the last bit
            clean.table.filter(pl.col("sensor").is_in(others))[name].to_numpy(),
            dirty.table.filter(pl.col("sensor").is_in(others))[name].to_numpy(),
            rtol=0 if "stderr" not in name else 1e-12,
        )
    assert "non-finite" in dirty.table.filter(pl.col("sensor") == 5)["message"][0]


def test_per_group_starting_values_from_a_column_and_validation(fleet):
    frame = fleet.with_columns(pl.lit(2.0).alias("a_guess"))
    result = fit_groups(DECAY, frame, group="sensor", y="y", params={"a": "a_guess", "k": 1.0, "c": 0.0}, val=0.25, seed=1)
    converged = result.table.filter(pl.col("success"))
    assert converged.height >= 20
    assert (converged["val_loss"].drop_nans() >= 0).all() and converged["val_loss"].drop_nans().len() >= 15


def test_summary_and_worst_groups(fleet):
    result = fit_groups(DECAY, fleet, group="sensor", y="y", params=START)
    summary = result.summary()
    assert summary["groups"] == 24 and summary["status"]["converged"] == 22
    assert 0.9 < summary["r2"]["q50"] <= 1.0
    worst = result.worst(3)
    assert worst["status"].to_list()[:2] == ["bad_data", "too_few_points"] or not worst["success"][0]
