"""Batched group fits equal one-at-a-time fits, and a failing group never disturbs the others."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest

import gradfit
from gradfit.errors import ModelError, OptionError
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


@pytest.fixture(scope="module")
def outlier_fleet(fleet) -> pl.DataFrame:
    """The fleet's readings with Cauchy noise (gross outliers), and sensor 9 fitted exactly by a line."""
    rng = np.random.default_rng(7)
    frame = fleet.with_columns(y=pl.col("y") + pl.Series(0.05 * rng.standard_cauchy(fleet.height)))
    return frame.with_columns(y=pl.when(pl.col("sensor") == 9).then(2.0 * pl.col("t") - 1.0).otherwise(pl.col("y")))


@pytest.mark.parametrize(("model", "options", "failed"), [(DECAY, {"params": START}, 2), ("w*t + b", {}, 0)])
@pytest.mark.parametrize("weighted", [False, True])
def test_least_absolute_deviations_groups_equal_single_fits_with_the_lm_solver(outlier_fleet, model, options, failed, weighted):
    names = [p for p in ("a", "k", "c", "w", "b") if re.search(rf"\b{p}\b", model)]
    sigma = "sigma" if weighted else None
    result = fit_groups(model, outlier_fleet, group="sensor", y="y", sigma=sigma, loss="mae", solver="lm", chunk=7, **options)
    table = result.table
    assert result.solver == "lm"
    # bad data (5), too few points (7), and for the decay model a line it cannot reach (9, max_iter
    # in the least-squares solve) and one soft_l1 solve that stalls at a scale of 1e-9 (6)
    assert result.status_counts()["converged"] == 22 - failed
    for key in (0, 3, 9, 11, 23):
        single = _single(model, outlier_fleet, key, loss="mae", solver="lm", columns=("sigma",) if weighted else (), **options)
        row = table.filter(pl.col("sensor") == key)
        assert row["status"][0] == single.status and row["message"][0] == single.message
        assert "least absolute deviations" in single.message or key == 9
        np.testing.assert_allclose([row[n][0] for n in names], single.values, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose([row[f"{n}_stderr"][0] for n in names], [single.stderr[n] for n in names], rtol=1e-8, atol=1e-12)


def test_least_absolute_deviations_groups_are_each_groups_linear_program_solution(outlier_fleet):
    from scipy.optimize import linprog

    table = fit_groups("w*t + b", outlier_fleet, group="sensor", y="y", loss="mae", solver="lm").table
    for key in (0, 4, 17):
        part = outlier_fleet.filter(pl.col("sensor") == key)
        t, y = part["t"].to_numpy(), part["y"].to_numpy()
        n = t.size  # min Σ(u + v) with w t + b + u - v = y, u, v >= 0
        equality = np.hstack([np.column_stack([t, np.ones(n)]), np.eye(n), -np.eye(n)])
        cost = np.concatenate([np.zeros(2), np.ones(2 * n)])
        optimum = linprog(cost, A_eq=equality, b_eq=y, bounds=[(None, None)] * 2 + [(0, None)] * (2 * n), method="highs").x[:2]
        row = table.filter(pl.col("sensor") == key)
        np.testing.assert_allclose([row["w"][0], row["b"][0]], optimum, rtol=1e-9)
    exact = table.filter(pl.col("sensor") == 9)  # |r| = 0 already: the least-squares line, unchanged
    assert (exact["w"][0], exact["b"][0]) == (pytest.approx(2.0, rel=1e-12), pytest.approx(-1.0, rel=1e-12))
    assert "least absolute deviations" not in exact["message"][0]


def test_linear_groups_equal_polyfit(fleet):
    result = fit_groups("w2*t**2 + w1*t + w0", fleet, group="sensor", y="y")
    assert result.solver == "linear"
    for key in (0, 9, 20):
        part = fleet.filter(pl.col("sensor") == key)
        row = result.table.filter(pl.col("sensor") == key)
        np.testing.assert_allclose([row[n][0] for n in ("w2", "w1", "w0")], np.polyfit(part["t"], part["y"], 2), rtol=1e-8)


@pytest.mark.parametrize(("model", "lost"), [("w*t + b", "w, b"), ("w2*t**2 + w1*t + b", "w2, w1, b")])  # SVD and polynomial solver
def test_a_singular_linear_group_names_the_parameters_its_data_cannot_tell_apart_as_a_single_fit_does(fleet, model, lost):
    t = fleet["t"].to_numpy().copy()
    t[fleet["sensor"].to_numpy() == 4] = 2.0  # one input value: w and b (and w2) are confounded
    flat = fleet.with_columns(pl.Series("t", t))
    table = fit_groups(model, flat, group="sensor", y="y").table
    row = table.filter(pl.col("sensor") == 4)
    part = flat.filter(pl.col("sensor") == 4)
    with pytest.raises(gradfit.errors.FitError) as single:
        gradfit.fit(model, {"t": part["t"].to_numpy()}, part["y"].to_numpy())
    assert row["status"][0] == "singular" and row["message"][0] == str(single.value)
    assert f"parameters {lost} cannot be told apart" in row["message"][0]
    assert table.filter(pl.col("sensor") == 0)["status"][0] == "converged"


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


@pytest.mark.parametrize("weighted", [False, True])
def test_omitting_missing_values_fits_each_group_from_its_finite_rows_as_a_single_fit_would(fleet, weighted, tmp_path):
    sigma = "sigma" if weighted else None
    sensor = fleet["sensor"].to_numpy()
    t = fleet["t"].to_numpy().copy()
    t[np.flatnonzero(sensor == 11)[[0, 4]]] = [np.inf, np.nan]  # inputs too, not only y
    dirty = fleet.with_columns(pl.Series("t", t), pl.when(pl.col("sensor") == 3).then(None).otherwise(pl.col("y")).alias("y"))
    result = fit_groups(DECAY, dirty, group="sensor", y="y", sigma=sigma, params=START, nan_policy="omit", chunk=5)
    table = result.table
    assert result.status_counts() == {"bad_data": 1, "converged": 22, "too_few_points": 1}
    assert table.filter(pl.col("sensor") == 3)["n_points"][0] == (sensor == 3).sum()  # nothing finite: kept, reported
    for key in (5, 11, 0):
        finite = dirty.filter((pl.col("sensor") == key) & pl.col("t").is_finite() & pl.col("y").is_finite())
        single = _single(DECAY, finite, key, params=START, columns=("sigma",) if weighted else ())
        row = table.filter(pl.col("sensor") == key)
        assert row["n_points"][0] == finite.height < (sensor == key).sum() or key == 0
        np.testing.assert_allclose([row[n][0] for n in "akc"], single.values, rtol=1e-8)
        np.testing.assert_allclose([row[f"{n}_stderr"][0] for n in "akc"], [single.stderr[n] for n in "akc"], rtol=1e-8)
    path = tmp_path / "dirty.parquet"
    dirty.write_parquet(path, row_group_size=50)  # streamed in batches of whole groups
    streamed = fit_groups(DECAY, path, group="sensor", y="y", sigma=sigma, params=START, nan_policy="omit").table
    np.testing.assert_allclose(streamed["k"].to_numpy(), table["k"].to_numpy(), rtol=1e-12)
    assert fit_groups(DECAY, dirty, group="sensor", y="y", params=START).status_counts()["bad_data"] == 3
    with pytest.raises(OptionError, match="unknown nan_policy 'drop'"):
        fit_groups(DECAY, dirty, group="sensor", y="y", nan_policy="drop")


@pytest.mark.parametrize("flag", ["absolute_sigma", "scale"])
def test_a_flag_given_as_text_is_refused_as_for_a_single_fit(fleet, flag):
    with pytest.raises(OptionError, match=f"{flag} must be True or False, got 'false'"):
        fit_groups(DECAY, fleet, group="sensor", y="y", params=START, **{flag: "false"})


@pytest.mark.parametrize(
    ("model", "options", "named"),
    [
        (DECAY, {"params": START, "epochs": 5000}, "batched solver, which ignores epochs \\(--epochs\\): it is for gradient descent"),
        (DECAY, {"params": START, "starts": 3, "patience": 4, "scale": False}, "lm solver, which ignores patience .*, scale \\(--no-scale\\)"),
        (DECAY, {"params": START, "loss": "mae", "starts": 3, "tolerance": 1e-4}, "gradient solver, which ignores starts .*, tolerance .*solver 'lm'"),
        ("w*t + b", {"max_iter": 10, "epochs": 9}, "linear solver, which ignores epochs .*; max_iter \\(--max-iter\\): it is for the iterative"),
    ],
)
def test_settings_the_groups_path_would_ignore_are_refused_as_for_a_single_fit(fleet, model, options, named):
    with pytest.raises(OptionError, match=named):
        fit_groups(model, fleet, group="sensor", y="y", **options)


def test_a_group_with_zero_or_negative_sigma_is_bad_data_and_warns_nothing(fleet):
    sigma = fleet["sigma"].to_numpy().copy()
    sensor = fleet["sensor"].to_numpy()
    sigma[np.flatnonzero(sensor == 2)[0]], sigma[np.flatnonzero(sensor == 4)[1]] = 0.0, -1.0
    broken = fleet.with_columns(pl.Series("sigma", sigma))
    clean = fit_groups(DECAY, fleet, group="sensor", y="y", sigma="sigma", params=START).table
    dirty = fit_groups(DECAY, broken, group="sensor", y="y", sigma="sigma", params=START).table
    assert dirty.filter(pl.col("sensor").is_in([2, 4]))["status"].to_list() == ["bad_data", "bad_data"]
    kept = pl.col("sensor").is_in([2, 4]).not_()
    np.testing.assert_allclose(dirty.filter(kept)["k"].to_numpy(), clean.filter(kept)["k"].to_numpy(), rtol=0)


def test_per_group_starting_values_from_a_column_and_validation(fleet):
    frame = fleet.with_columns(pl.lit(2.0).alias("a_guess"))
    result = fit_groups(DECAY, frame, group="sensor", y="y", params={"a": "a_guess", "k": 1.0, "c": 0.0}, val=0.25, seed=1)
    converged = result.table.filter(pl.col("success"))
    assert converged.height >= 20
    assert (converged["val_loss"].drop_nans() >= 0).all() and converged["val_loss"].drop_nans().len() >= 15


def test_validation_loss_is_the_loss_of_a_single_fit_on_the_same_split(fleet):
    """Each group's val_loss equals an independent computation: gradfit.fit on the group's training
    points (the split rebuilt from packing.held_out), then the mean squared error on the others."""
    from gradfit.packing import held_out

    result = fit_groups(DECAY, fleet, group="sensor", y="y", params=START, val=0.3, seed=2).table
    for key in (0, 1, 11, 23):
        part = fleet.filter(pl.col("sensor") == key)
        held = held_out(np.array([key]), part.height, 0.3, 2)[0]
        assert held.sum() == round(0.3 * part.height)
        t, y = part["t"].to_numpy(), part["y"].to_numpy()
        alone = gradfit.fit(DECAY, {"t": t[~held]}, y[~held], params=START)
        expected = np.mean((alone.predict({"t": t[held]}) - y[held]) ** 2)
        row = result.filter(pl.col("sensor") == key)
        assert row["n_points"][0] == part.height
        assert row["val_loss"][0] == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("model", ["w*t + b", DECAY])
def test_a_group_whose_y_does_not_vary_has_no_r_squared(fleet, model):
    flat = fleet.with_columns(pl.when(pl.col("sensor") == 3).then(2.5).otherwise(pl.col("y")).alias("y"))
    table = fit_groups(model, flat, group="sensor", y="y", params=None if model.startswith("w") else START).table
    assert np.isnan(table.filter(pl.col("sensor") == 3)["r2"][0])
    others = table.filter(pl.col("success") & (pl.col("sensor") != 3))["r2"].to_numpy()
    assert np.isfinite(others).all()


@pytest.mark.parametrize("solver", ["auto", "lm", "gradient"])
def test_groups_that_end_on_a_bound_are_flagged_as_single_fits_are(fleet, solver):
    options = dict(params=START, bounds="k<=0.6, c>=-0.2", solver=solver)
    if solver == "gradient":
        options.update(epochs=300, optimizer_options={"lr": 0.05})
    table = fit_groups(DECAY, fleet, group="sensor", y="y", **options).table
    flagged = table.filter(pl.col("at_bound") != "")
    assert 3 <= flagged.height < table.height
    for key in table["sensor"].to_list()[:12]:
        row = table.filter(pl.col("sensor") == key)
        if not row["success"][0] and row["status"][0] in ("bad_data", "too_few_points"):
            assert row["at_bound"][0] == ""
            continue
        alone = _single(DECAY, fleet, key, **options)
        expected = ",".join(p.name for p in alone.parameters if p.at_bound)
        assert row["at_bound"][0] == expected, key
    unbounded = fit_groups(DECAY, fleet, group="sensor", y="y", params=START).table
    assert (unbounded["at_bound"] == "").all()


@pytest.mark.parametrize("model", ["linear", "poly:2", "exp_decay(t)"])
def test_a_group_with_a_nan_input_is_bad_data_for_the_guessing_built_in_models_too(fleet, model):
    """The built-ins guess each group's start from its points: a NaN input made that guess's SVD
    fail and stopped every group."""
    t = fleet["t"].to_numpy().copy()
    t[np.flatnonzero(fleet["sensor"].to_numpy() == 4)[2]] = np.nan
    table = fit_groups(model, fleet.with_columns(pl.Series("t", t)).drop("sigma"), group="sensor", y="y").table
    assert table.filter(pl.col("sensor") == 4)["status"][0] == "bad_data"
    assert table.filter(pl.col("sensor") != 4)["success"].sum() >= 20


def test_ill_conditioned_polynomial_groups_are_solved_as_single_fits_are():
    """A quadratic in epoch seconds (x near 1.7e9): single fits solve it in a centred basis; the
    groups' SVD of the raw design lost six digits."""
    rng = np.random.default_rng(5)
    x = 1.7e9 + np.sort(rng.uniform(0, 3600, 3 * 50))
    y = 20 + 1e-3 * (x - 1.7e9) + 1e-7 * (x - 1.7e9) ** 2 + rng.normal(0, 0.01, x.size)
    frame = pl.DataFrame({"g": np.repeat([0, 1, 2], 50), "x": x, "y": y})
    table = fit_groups("w2*x**2 + w1*x + b", frame, group="g", y="y").table
    for key in range(3):
        part = frame.filter(pl.col("g") == key)
        single = gradfit.fit("w2*x**2 + w1*x + b", {"x": part["x"].to_numpy()}, part["y"].to_numpy())
        row = table.filter(pl.col("g") == key)
        np.testing.assert_allclose([row[n][0] for n in ("w2", "w1", "b")], single.values, rtol=1e-8)
        assert row["status"][0] == "converged"


def test_a_linear_group_whose_numbers_overflow_is_non_finite_not_converged():
    frame = pl.DataFrame({"g": [0] * 5 + [1] * 5, "t": [0.0, 1, 2, 3, 4, 0.0, 1e160, 2, 3, 4],
                          "y": [1.0, 2, 3, 4, 5, 1.0, 0.7, 0.5, 0.4, 0.3]})
    table = fit_groups("w2*t**2 + w1*t + b", frame, group="g", y="y").table
    assert table["status"].to_list() == ["converged", "non_finite"]
    assert "not finite (NaN or inf) on 1 of 5 points" in table["message"][1] and not table["success"][1]


def test_a_group_that_needs_restarts_ends_alike_whatever_shares_its_batch():
    """The reference solver's jittered restarts drew from one generator for the whole batch, so a
    group needing two rounds ended elsewhere when another group was fitted with it."""
    group = pl.DataFrame({"g": [36] * 4, "t": [0.736288, 2.241572, 2.425018, 3.204105], "y": [1.352004, 0.345511, 0.353742, 0.254815]})
    options = dict(params={"a": 1.0, "k": 1.0, "c": 0.0}, bounds={"c": (0.35, 10), "k": (0, 10)}, solver="lm")
    alone = fit_groups(DECAY, group, group="g", y="y", **options).table
    twins = fit_groups(DECAY, pl.concat([group, group.with_columns(pl.lit(37, dtype=pl.Int64).alias("g"))]), group="g", y="y", **options).table
    single = gradfit.fit(DECAY, {"t": group["t"].to_numpy()}, group["y"].to_numpy(), **{k: v for k, v in options.items()})
    for table in (alone, twins, twins.filter(pl.col("g") == 37)):
        np.testing.assert_allclose([table[n][0] for n in "akc"], single.values, rtol=1e-10)
        assert table["status"][0] == single.status


def test_summary_and_worst_groups(fleet):
    result = fit_groups(DECAY, fleet, group="sensor", y="y", params=START)
    summary = result.summary()
    assert summary["groups"] == 24 and summary["status"]["converged"] == 22
    assert 0.9 < summary["r2"]["q50"] <= 1.0
    worst = result.worst(3)
    assert worst["status"].to_list()[:2] == ["bad_data", "too_few_points"] or not worst["success"][0]


# ------------------------------------------------------------------------- the fused batched solver


def test_default_nonlinear_path_is_the_batched_solver_and_equals_the_reference_lm(fleet):
    fast = fit_groups(DECAY, fleet, group="sensor", y="y", sigma="sigma", params=START)
    reference = fit_groups(DECAY, fleet, group="sensor", y="y", sigma="sigma", params=START, solver="lm")
    assert fast.solver == "batched" and reference.solver == "lm"
    assert fast.table["status"].to_list() == reference.table["status"].to_list()
    for name in ("a", "k", "c", "a_stderr", "k_stderr", "c_stderr", "r2", "redchi", "aic", "bic"):
        np.testing.assert_allclose(fast.table[name].to_numpy(), reference.table[name].to_numpy(), rtol=1e-8)


def _gaussians(k: int, seed: int = 0) -> tuple[pl.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = np.column_stack([rng.uniform(500, 1000, k), rng.uniform(1.5, 2.5, k), rng.uniform(1.5, 2.5, k),
                             rng.uniform(0.8, 1.2, k), rng.uniform(5, 15, k)])
    x, y = np.tile(np.arange(5.0), 5), np.repeat(np.arange(5.0), 5)
    mean = truth[:, [0]] * np.exp(-((x - truth[:, [1]]) ** 2 + (y - truth[:, [2]]) ** 2) / (2 * truth[:, [3]] ** 2)) + truth[:, [4]]
    start = truth * (1 + rng.uniform(-0.1, 0.1, truth.shape))
    columns = {"g": np.repeat(np.arange(k), 25), "x": np.tile(x, k), "y": np.tile(y, k), "z": rng.poisson(mean).ravel().astype(float)}
    columns.update({f"{name}_0": np.repeat(start[:, j], 25) for j, name in enumerate(GAUSS_PARAMS)})
    return pl.DataFrame(columns), start


GAUSS = "a*exp(-((x-x0)**2+(y-y0)**2)/(2*s**2)) + b"
GAUSS_PARAMS = ("a", "x0", "y0", "s", "b")


def test_gpufit_settings_on_gaussian_spots_match_scipy_within_the_tolerance():
    from scipy.optimize import curve_fit

    frame, start = _gaussians(60)
    result = fit_groups(GAUSS, frame, group="g", y="z", params={n: f"{n}_0" for n in GAUSS_PARAMS}, max_iter=10, tolerance=1e-4)
    table = result.table
    assert result.solver == "batched" and result.status_counts() == {"converged": 60}
    assert table["iterations"].max() <= 10
    assert np.isfinite(table.select([f"{n}_stderr" for n in GAUSS_PARAMS]).to_numpy()).all()

    def gauss(xy, a, x0, y0, s, b):
        return a * np.exp(-((xy[0] - x0) ** 2 + (xy[1] - y0) ** 2) / (2 * s**2)) + b

    for key in (0, 17, 59):
        part = frame.filter(pl.col("g") == key)
        values, cov = curve_fit(gauss, np.vstack([part["x"], part["y"]]), part["z"].to_numpy(), p0=start[key], xtol=1e-12, ftol=1e-12)
        row = table.filter(pl.col("g") == key)
        stderr = np.sqrt(np.diag(cov))
        # tolerance 1e-4 on the Gauss-Newton gain: a small fraction of a standard error from the optimum
        assert np.all(np.abs(np.array([row[n][0] for n in GAUSS_PARAMS]) - values) <= 0.1 * stderr)
        np.testing.assert_allclose([row[f"{n}_stderr"][0] for n in GAUSS_PARAMS], stderr, rtol=0.02)


def test_speed_settings_report_the_iteration_limit_honestly(fleet):
    capped = fit_groups(DECAY, fleet, group="sensor", y="y", params=START, max_iter=2)
    counts = capped.status_counts()
    assert counts.get("max_iter", 0) >= 15 and counts["bad_data"] == 1 and counts["too_few_points"] == 1
    stopped = capped.table.filter(pl.col("status") == "max_iter")
    assert not stopped["success"].any() and (stopped["iterations"] == 2).all()
    assert stopped["message"][0].startswith("stopped at the iteration limit")


def test_bounded_and_fixed_groups_equal_single_fits(fleet):
    bounds = {"k": (0.0, 0.9)}  # active for the sensors whose rate is faster
    result = fit_groups(DECAY, fleet, group="sensor", y="y", params=START, bounds=bounds, fix={"c": 0.1})
    assert result.solver == "batched"
    for key in (0, 3, 11, 23):
        single = _single(DECAY, fleet, key, params=START, bounds=bounds, fix={"c": 0.1})
        row = result.table.filter(pl.col("sensor") == key)
        np.testing.assert_allclose([row[n][0] for n in "akc"], single.values, rtol=1e-8)
        np.testing.assert_allclose([row[f"{n}_stderr"][0] for n in "ak"], [single.stderr[n] for n in "ak"], rtol=1e-6)
        assert np.isnan(row["c_stderr"][0]) and row["c"][0] == 0.1


def test_shuffled_rows_give_the_same_fits(fleet):
    ordered = fit_groups(DECAY, fleet, group="sensor", y="y", params=START).table
    shuffled = fit_groups(DECAY, fleet.sample(fraction=1.0, shuffle=True, seed=3).sort("t"), group="sensor", y="y", params=START).table
    assert ordered["sensor"].to_list() == shuffled["sensor"].to_list()
    np.testing.assert_allclose(shuffled["k"].to_numpy(), ordered["k"].to_numpy(), rtol=1e-9)


def test_packing_fast_paths_equal_the_general_path():
    from gradfit.packing import index_groups, pack

    key = np.repeat(np.array([3, 5, 9, 12]), 6)
    values = {"v": np.arange(24.0)}
    fast = index_groups(key)
    general = index_groups(key.reshape(4, 6).T.ravel().copy())  # groups scattered: argsort path
    np.testing.assert_array_equal(fast.keys, general.keys)
    np.testing.assert_array_equal(fast.counts, general.counts)
    grouped = index_groups(key[::-1].copy())  # together but not sorted: file order, no sort
    assert grouped.keys.tolist() == [12, 9, 5, 3] and grouped.order is None and general.order is not None
    equal = pack(values, fast, slice(1, 3))  # equal consecutive groups: a reshape
    np.testing.assert_array_equal(equal.columns["v"], np.arange(6.0, 18.0).reshape(2, 6))
    assert equal.mask.all() and equal.columns["v"].flags.writeable
    ragged = index_groups(np.array([1, 1, 2, 2, 2]))
    packed = pack({"v": np.arange(5.0)}, ragged, slice(0, 2))
    np.testing.assert_array_equal(packed.columns["v"], [[0, 1, 1], [2, 3, 4]])
    np.testing.assert_array_equal(packed.mask, [[1, 1, 0], [1, 1, 1]])
    with_nan = index_groups(np.array([1.0, np.nan, 1.0, np.nan]))
    assert with_nan.n_groups == 2 and with_nan.counts.tolist() == [2, 2]


def test_ill_conditioned_linear_groups_fall_back_to_the_exact_solve():
    rng = np.random.default_rng(5)
    t = np.tile(np.linspace(1000.0, 1001.0, 12), 3)  # far from the origin: the monomial design is ill-conditioned
    gid = np.repeat(np.arange(3), 12)
    y = 0.3 * (t - 1000.0) ** 2 + 2.0 + 0.01 * rng.standard_normal(t.size)
    frame = pl.DataFrame({"g": gid, "t": t, "y": y})
    result = fit_groups("w2*t**2 + w1*t + w0", frame, group="g", y="y")
    assert result.solver == "linear" and result.status_counts() == {"converged": 3}
    for key in range(3):
        part = frame.filter(pl.col("g") == key)
        row = result.table.filter(pl.col("g") == key)
        np.testing.assert_allclose([row[n][0] for n in ("w2", "w1", "w0")], np.polyfit(part["t"], part["y"], 2), rtol=1e-6)


def test_float32_groups(fleet):
    single = fit_groups(DECAY, fleet, group="sensor", y="y", params=START, dtype="float32", max_iter=50, tolerance=1e-6)
    double = fit_groups(DECAY, fleet, group="sensor", y="y", params=START)
    ok = single.table["success"].to_numpy() & double.table["success"].to_numpy()
    assert ok.sum() >= 18
    np.testing.assert_allclose(single.table["k"].to_numpy()[ok], double.table["k"].to_numpy()[ok], rtol=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("model", "options", "rtol"),
    [
        (DECAY, {"params": START}, 1e-8),  # the fused batched LM
        (DECAY, {"params": START, "solver": "lm", "starts": 3}, 1e-8),  # the reference LM, multi-start
        (DECAY, {"params": START, "val": 0.25, "seed": 2}, 1e-8),  # per-group validation split
        (DECAY, {"params": START, "dtype": "float32", "max_iter": 10, "tolerance": 1e-4}, 1e-4),
        ("w2*t**2 + w1*t + w0", {}, 1e-8),  # the exact linear solve
        (DECAY, {"params": START, "loss": "mae", "optimizer": "adam", "epochs": 50}, 1e-6),  # gradient descent
    ],
    ids=["batched", "lm", "val", "float32", "linear", "gradient"],
)
def test_groups_on_cuda_equal_cpu(fleet, model, options, rtol):
    # GPU reductions round differently: float64 fits agree to rounding, statuses included; in
    # float32 near the tolerance a status may flip, so there the groups both runs converged count
    cpu = fit_groups(model, fleet, group="sensor", y="y", **options).table
    gpu = fit_groups(model, fleet, group="sensor", y="y", device="cuda", **options).table
    both = (cpu["success"] & gpu["success"]).to_numpy()
    if options.get("dtype") == "float32":
        assert both.sum() >= 0.9 * cpu["success"].sum()
    else:
        assert gpu["status"].to_list() == cpu["status"].to_list()
    names = [c for c in cpu.columns if c.endswith("_stderr")]
    for column in names + [c.removesuffix("_stderr") for c in names]:
        np.testing.assert_allclose(gpu[column].to_numpy()[both], cpu[column].to_numpy()[both], rtol=rtol, err_msg=column)


def test_results_do_not_depend_on_the_thread_count(fleet):
    import torch

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fit_groups(DECAY, fleet, group="sensor", y="y", params=START, chunk=5).table
        torch.set_num_threads(2)
        two = fit_groups(DECAY, fleet, group="sensor", y="y", params=START, chunk=5).table
    finally:
        torch.set_num_threads(previous)
    assert torch.get_num_threads() == previous
    assert one.equals(two)  # bit-identical: chunks are independent and fits within them too
    other = fit_groups(DECAY, fleet, group="sensor", y="y", params=START, chunk=24).table  # other padding widths
    np.testing.assert_allclose(other["c"].to_numpy(), one["c"].to_numpy(), rtol=1e-12)


# ------------------------------------------------------------------------- chunk by chunk, refits


def test_results_come_chunk_by_chunk_with_a_fixed_schema(fleet):
    from gradfit.groups import iter_group_fits

    fits = iter_group_fits(DECAY, fleet, group="sensor", y="y", params=START, chunk=5)
    seen = []
    for table in fits:
        assert dict(table.schema) == fits.schema
        seen.append((table.height, fits.done))
    assert [h for h, _ in seen] == [5, 5, 5, 5, 4] and seen[-1][1] == fits.n_groups == 24
    progress = []
    whole = fit_groups(DECAY, fleet, group="sensor", y="y", params=START, chunk=5, callback=lambda done, total: progress.append((done, total)))
    assert progress == [(5, 24), (10, 24), (15, 24), (20, 24), (24, 24)]
    assert whole.table.height == 24 and whole.elapsed > 0


def test_the_summary_accumulated_chunk_by_chunk_equals_the_tables(fleet):
    from gradfit.groups import GroupSummary, iter_group_fits

    fits = iter_group_fits(DECAY, fleet, group="sensor", y="y", params=START, chunk=7)
    summary = GroupSummary(fits.param_names)
    parts = []
    for table in fits:
        summary.add(table)
        parts.append(table)
    table = pl.concat(parts)
    ok = table.filter(pl.col("success"))
    numbers = summary.result(fits.elapsed)
    assert numbers["status"] == {"bad_data": 1, "converged": 22, "too_few_points": 1}
    assert numbers["r2"]["q50"] == pytest.approx(float(ok["r2"].quantile(0.5)), rel=1e-12)
    assert numbers["parameters"]["k"]["q5"] == pytest.approx(float(ok["k"].quantile(0.05)), rel=1e-12)
    assert summary.worst()["sensor"].to_list()[:2] == [5, 7]  # not fitted first
    assert summary.fitted == 22  # bad_data and too_few_points end without parameters


def test_refit_failed_groups_with_more_starts(fleet):
    far = {"a": 1.0, "k": 40.0, "c": 0.0}  # so fast a decay that most sensors stall at the iteration cap
    options = dict(group="sensor", y="y", params=far, max_iter=8, tolerance=1e-6)
    first = fit_groups(DECAY, fleet, **options)
    again = fit_groups(DECAY, fleet, refit_failed=True, **options)
    failed = set(first.failed()["sensor"].to_list()) - {5, 7}
    assert len(failed) >= 3
    assert again.table["sensor"].to_list() == first.table["sensor"].to_list()
    fixed = again.table.filter(pl.col("sensor").is_in(list(failed)) & pl.col("success"))
    assert fixed.height >= 3
    for row in fixed.iter_rows(named=True):
        single = _single(DECAY, fleet, row["sensor"], params=START)
        assert row["k"] == pytest.approx(single.params["k"], rel=1e-3)  # refits keep tolerance=1e-6
    untouched = pl.col("sensor").is_in(list(failed)).not_()
    assert again.table.filter(untouched).equals(first.table.filter(untouched))


def test_validation_splits_depend_on_key_point_and_seed_only():
    from gradfit.packing import held_out

    keys = np.arange(1000, 1200)
    split = held_out(keys, 40, 0.25, seed=3)
    assert abs(split.mean() - 0.25) < 0.02  # 8000 draws: sd 0.005
    order = np.random.default_rng(0).permutation(keys.size)
    np.testing.assert_array_equal(held_out(keys[order], 40, 0.25, seed=3), split[order])  # per key, not per position
    assert not np.array_equal(held_out(keys, 40, 0.25, seed=4), split)
    names = np.array(["a", "b", "a"], dtype=object)
    by_name = held_out(names, 16, 0.5, seed=0)
    np.testing.assert_array_equal(by_name[0], by_name[2])


def test_built_in_models_guess_every_groups_start_from_its_own_points(fleet):
    clean = fleet.filter(~pl.col("sensor").is_in([5, 7]))
    result = fit_groups("exp_decay(t)", clean, group="sensor", y="y")
    assert result.status_counts() == {"converged": 22}
    for key in (0, 4, 13, 21):
        part = clean.filter(pl.col("sensor") == key)
        single = gradfit.fit("exp_decay(t)", {"t": part["t"].to_numpy()}, part["y"].to_numpy())
        row = result.table.filter(pl.col("sensor") == key)
        np.testing.assert_allclose([row[n][0] for n in single.param_names], single.values, rtol=1e-8)
    blind = fit_groups("exp_decay(t)", clean, group="sensor", y="y", params=dict.fromkeys(single.param_names, 1.0))
    assert result.table["iterations"].sum() < blind.table["iterations"].sum()  # the guesses were used


def test_python_functions_fit_groups_through_vmapped_autograd(fleet):
    import torch

    def decay(t, a, k, c):
        return a * torch.exp(-k * t) + c

    result = fit_groups(decay, fleet, group="sensor", y="y", params=START)
    assert result.solver == "lm"
    formula = fit_groups(DECAY, fleet, group="sensor", y="y", params=START).table
    assert result.status_counts() == {"bad_data": 1, "converged": 22, "too_few_points": 1}
    ok = pl.col("success")
    for name in ("a", "k", "c", "a_stderr"):
        np.testing.assert_allclose(result.table.filter(ok)[name].to_numpy(), formula.filter(ok)[name].to_numpy(), rtol=1e-8)


@pytest.mark.parametrize(("model", "options", "column"), [
    ("w*t + sensor", {}, "sensor"), ("w*t + b*y", {}, "y"), ("a*exp(-k*t) + c*k0", {"params": {"k": "k0"}}, "k0"),
])
def test_a_model_cannot_use_the_key_target_or_start_columns_as_parameters(fleet, model, options, column):
    frame = fleet.with_columns(pl.lit(1.0).alias("k0"))
    with pytest.raises(ModelError, match=f"'{column}' is the .* column, so the model cannot use it"):
        fit_groups(model, frame, group="sensor", y="y", **options)



def test_a_python_function_along_the_data_is_fitted_per_group_as_alone(fleet):
    import torch

    def integrated(t, a=1.0, b=0.0):
        return torch.cumsum(a * t, 0) + b

    table = fit_groups(integrated, fleet, group="sensor", y="y").table
    for key in (0, 1, 10):
        part = fleet.filter(pl.col("sensor") == key)
        single = gradfit.fit(integrated, {"t": part["t"].to_numpy()}, part["y"].to_numpy())
        row = table.filter(pl.col("sensor") == key)
        np.testing.assert_allclose([row["a"][0], row["b"][0]], single.values, rtol=1e-8)


def test_an_empty_frame_is_refused():
    from gradfit.errors import DataError

    empty = pl.DataFrame({"g": pl.Series([], dtype=pl.Int64), "t": pl.Series([], dtype=pl.Float64), "y": pl.Series([], dtype=pl.Float64)})
    with pytest.raises(DataError, match="no rows in the data"):
        fit_groups("w*t + b", empty, group="g", y="y")


def test_noise_free_groups_converge_as_single_fits_do():
    # synthetic data without noise, computed in another order than the model: rounding-level residuals
    rng = np.random.default_rng(2)
    t = np.linspace(0, 5, 20)
    truth = np.column_stack([rng.uniform(1, 3, 40), rng.uniform(0.3, 1.5, 40), rng.uniform(-1, 1, 40)])
    y = (truth[:, [2]] + np.exp(-t * truth[:, [1]]) * truth[:, [0]]).ravel()
    frame = pl.DataFrame({"sensor": np.repeat(np.arange(40), t.size), "t": np.tile(t, 40), "y": y})
    result = fit_groups(DECAY, frame, group="sensor", y="y", params=START)
    assert result.status_counts() == {"converged": 40}
    np.testing.assert_allclose(result.table.select("a", "k", "c").to_numpy(), truth, rtol=1e-9)
    for key in (0, 17):
        single = gradfit.fit(DECAY, {"t": t}, y[key * t.size:(key + 1) * t.size], params=START)
        assert single.success and single.status == "converged", single.message


def test_robust_least_squares_groups_do_not_depend_on_the_other_groups_in_their_batch():
    # Student-t noise and a small loss scale: a multimodal cost, where any coupling of the damping
    # across the batch sends a group to another minimum
    rng = np.random.default_rng(0)
    k, t = 12, np.linspace(0, 5, 25)
    truth = np.column_stack([rng.uniform(1, 3, k), rng.uniform(0.3, 1.5, k), rng.uniform(-1, 1, k)])
    y = (truth[:, [0]] * np.exp(-truth[:, [1]] * t) + truth[:, [2]] + 0.05 * rng.standard_t(2, (k, t.size))).ravel()
    frame = pl.DataFrame({"sensor": np.repeat(np.arange(k), t.size), "t": np.tile(t, k), "y": y})
    for loss, scale in (("cauchy", 0.01), ("huber", 0.05)):
        together = fit_groups(DECAY, frame, group="sensor", y="y", params=START, loss=loss, loss_scale=scale).table
        for key in range(k):
            alone = fit_groups(DECAY, frame.filter(pl.col("sensor") == key), group="sensor", y="y", params=START, loss=loss, loss_scale=scale).table
            row = together.filter(pl.col("sensor") == key)
            # to rounding: a batch's sums may round differently in the last bit, and a cost this flat keeps that at ~1e-9
            np.testing.assert_allclose([row[n][0] for n in "akc"], [alone[n][0] for n in "akc"], rtol=1e-7, err_msg=f"{loss} {key}")


@pytest.mark.parametrize(("group", "sigma", "fragment"), [("y", None, "both the group key and the target"), ("sensor", "y", "both the target and the sigma")])
def test_one_column_in_two_roles_is_refused(fleet, group, sigma, fragment):
    from gradfit.errors import OptionError

    with pytest.raises(OptionError, match=fragment):
        fit_groups(DECAY, fleet, group=group, y="y", sigma=sigma, params=START)


def test_float32_linear_groups_are_as_accurate_as_float32_single_fits():
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 5, 300)
    y = 2 * t + 1 + 0.05 * rng.standard_normal(300)
    frame = pl.DataFrame({"g": [0] * 150 + [1] * 150, "t": t, "y": y})
    table = fit_groups("w*(t+100) + b", frame, group="g", y="y", dtype="float32").table
    for g in (0, 1):
        rows = slice(150 * g, 150 * (g + 1))
        exact = gradfit.fit("w*(t+100) + b", {"t": t[rows]}, y[rows]).params["w"]
        # the normal equations in float32 lost 4 of 7 digits here (relative error 9e-5)
        assert abs(table["w"][g] / exact - 1) < 1e-6


def test_group_settings_are_checked_as_a_single_fits_are():
    from gradfit.errors import OptionError

    frame = pl.DataFrame({"g": [0] * 10 + [1] * 10, "t": np.tile(np.arange(10.0), 2), "y": np.arange(20.0)})
    for options, fragment in (({"seed": -1, "val": 0.2}, "seed must be"), ({"max_iter": 0}, "max_iter must be"),
                              ({"tolerance": -1.0}, "tolerance must be"), ({"starts": 1.5}, "starts must be"),
                              ({"seed": 2**64, "val": 0.2}, "seed must be below 2\\*\\*63")):
        with pytest.raises(OptionError, match=fragment):
            fit_groups("a*exp(-k*t) + c", frame, group="g", y="y", **options)
        if "tolerance" in options:  # a group fits' setting only
            continue
        with pytest.raises(OptionError, match=fragment):
            gradfit.fit("a*exp(-k*t) + c", frame.filter(pl.col("g") == 0), "y", optimizer="adam", epochs=2, **options)


@pytest.mark.parametrize(
    ("cores", "k", "count"),
    [(2, 19_999, 1), (2, 20_000, 2), (2, 50_000, 2), (2, 100_000, 4), (2, 1_000_000, 32),
     (8, 40_000, 4), (8, 100_000, 8), (8, 1_000_000, 32), (1, 100_000, 4), (3, 100_000, 6)],
)
def test_equal_chunks_are_as_large_as_pays_and_shared_evenly_by_the_cores(cores, k, count):
    from gradfit.groups import MAX_CHUNK, MIN_SPLIT_CHUNK, _balanced_chunks

    parts = _balanced_chunks(k, MAX_CHUNK, cores)
    widths = {part.stop - part.start for part in parts}
    assert len(parts) == count and parts[-1].stop == k and max(widths) <= MAX_CHUNK
    assert count == 1 or min(widths) >= MIN_SPLIT_CHUNK


def test_chunks_bound_memory_and_padding_when_a_few_groups_are_huge():
    from gradfit.groups import _chunks_by_padding, auto_chunk_size

    assert auto_chunk_size(10_000_000, 3, budget=10**9) == 1  # never more than the budget allows (it was at least 64)
    counts = np.array([300_000] + [10] * 6 + [500] + [10] * 3)
    parts = _chunks_by_padding(counts, budget=1_000_000, cap=4)
    covered = np.concatenate([np.arange(counts.size)[part] for part in parts])
    assert covered.tolist() == list(range(counts.size))  # every group once, in order
    for part in parts:
        padded = counts[part].max() * (part.stop - part.start)
        assert part.stop - part.start <= 4 and (padded <= 1_000_000 or part.stop - part.start == 1)
        assert padded <= 2 * counts[part].sum()
    assert parts[0].stop <= 2  # the small groups are not padded to the huge one's size (one may, within twice the points)


def test_a_huge_group_among_small_ones_is_fitted_like_the_others():
    rng = np.random.default_rng(0)
    sizes = [200_000] + [10] * 9
    t = np.concatenate([np.linspace(0, 5, s) for s in sizes])
    frame = pl.DataFrame({"g": np.repeat(np.arange(10), sizes), "t": t, "y": 2 * np.exp(-0.7 * t) + 0.1 + 0.01 * rng.standard_normal(t.size)})
    start = {"a": 1.0, "k": 1.0, "c": 0.0}
    table = fit_groups(DECAY, frame, group="g", y="y", params=start).table
    for g in (0, 5):
        single = gradfit.fit(DECAY, frame.filter(pl.col("g") == g), "y", params=start)
        assert table["k"][g] == pytest.approx(single.params["k"], rel=1e-8)
        assert table["k_stderr"][g] == pytest.approx(single.stderr["k"], rel=1e-8)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_linear_groups_with_a_fixed_parameter_solved_exactly(dtype):
    x = 1000.0 + np.tile(np.linspace(0, 10, 20), 2)  # far from 0: the exact solve, not the normal equations
    frame = pl.DataFrame({"g": np.repeat([1, 2], 20), "x": x, "y": 1 + 2 * x + 0.01 * np.sin(x)})
    table = fit_groups("a + b*x + c*x**2", frame, group="g", y="y", fix={"c": 0.0}, dtype=dtype).table  # crashed
    single = gradfit.fit("a + b*x + c*x**2", {"x": x[:20]}, frame["y"].to_numpy()[:20], fix={"c": 0.0}, dtype=dtype)
    assert table["b"][0] == pytest.approx(single.params["b"], rel=1e-5 if dtype == "float32" else 1e-8)


@pytest.mark.parametrize(
    ("model", "group", "clash"),
    [
        ("r2*t + c", "sensor", "parameter 'r2' has the name of the result column 'r2'"),
        ("a*t + a_stderr", "sensor", "parameter 'a_stderr' has the name of the standard-error column of parameter 'a'"),
        ("status*t + c", "sensor", "parameter 'status' has the name of the result column 'status'"),
        ("w*t + c", "status", "the group column 'status' has the name of the result column 'status'"),
        ("w*t + c", "w_stderr", "the group column 'w_stderr' has the name of the standard-error column of parameter 'w'"),
    ],
)
def test_names_that_would_collide_in_the_result_table_are_refused(fleet, model, group, clash):
    # a parameter r2 was silently replaced by R² (its own values lost), status raised a TypeError
    from gradfit.errors import DataError

    data = fleet.drop("sigma").rename({"sensor": group})
    with pytest.raises((ModelError, DataError), match=re.escape(clash) + ".* rename the"):
        fit_groups(model, data, group=group, y="y")


def test_a_csv_whose_missing_values_are_spelled_na_or_nan_marks_those_groups_bad_data(tmp_path):
    # polars reads such a column as text, and the group fit refused the whole file as "not numeric"
    rows = ["g,t,y"] + [f"{g},{t},{2 * t + 1 + 0.01 * t * t}" for g in (1, 2, 3) for t in range(5)]
    rows[7], rows[13] = "2,1,NA", "3,2,nan"
    path = tmp_path / "fleet.csv"
    path.write_text("\n".join(rows) + "\n")
    table = fit_groups("m*t + q", path, group="g", y="y").table.sort("g")
    assert table["status"].to_list() == ["converged", "bad_data", "bad_data"]
    t = np.arange(5.0)
    assert table["m"][0] == pytest.approx(gradfit.fit("m*t + q", {"t": t}, 2 * t + 1 + 0.01 * t * t).params["m"], rel=1e-12)
    rows[13] = "3,2,x1"
    path.write_text("\n".join(rows) + "\n")
    from gradfit.errors import DataError

    with pytest.raises(DataError, match="column 'y' is not numeric: row 13 has 'x1'"):
        fit_groups("m*t + q", path, group="g", y="y")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_table_without_rows_is_refused_as_a_single_fit_refuses_it(tmp_path, suffix):
    # a header-only file fitted "successfully" and replaced an existing output with a header
    from gradfit.errors import DataError

    path = tmp_path / f"empty{suffix}"
    empty = pl.DataFrame({"g": [], "t": [], "y": []}, schema={"g": pl.Int64, "t": pl.Float64, "y": pl.Float64})
    empty.write_csv(path) if suffix == ".csv" else empty.write_parquet(path)
    with pytest.raises(DataError, match="no rows in the data"):
        fit_groups("w*t + b", path, group="g", y="y")


def test_a_text_value_in_a_streamed_file_is_named_by_its_row_in_the_file(tmp_path):
    # batches counted rows from their own start: "row 15" for the file's row 15005, and no file
    from gradfit.errors import DataError

    k, n = 2000, 10
    t = np.tile(np.arange(n, dtype=float), k)
    y = [str(v) for v in 2.0 * t + 1.0]
    y[15004] = "x1"
    path = tmp_path / "fleet.parquet"
    pl.DataFrame({"g": np.repeat(np.arange(k), n), "t": t, "y": y}).write_parquet(path, row_group_size=500)
    with pytest.raises(DataError, match=re.escape(f"{path}: column 'y' is not numeric: row 15005 has 'x1'")):
        fit_groups("w*t + b", path, group="g", y="y", chunk=50)


def test_a_group_left_short_by_the_validation_hold_out_is_told_so(fleet):
    result = fit_groups(DECAY, fleet, group="sensor", y="y", params=START, val=0.8, seed=2).table
    few = result.filter(pl.col("status") == "too_few_points")
    short = few.filter(pl.col("n_points") >= 3)  # three parameters: enough points until the hold-out
    assert short.height >= 1 and short["message"].cast(pl.String).str.contains("validation share").all()
    assert not few.filter(pl.col("n_points") < 3)["message"].cast(pl.String).str.contains("validation share").any()


def test_an_interruption_abandons_running_least_squares_chunks_and_keeps_the_finished_prefix():
    from concurrent.futures import Future

    from gradfit.group_chunks import ChunkAbandoned, ChunkPlan
    from gradfit.groups import _ChunkWorkers

    plan = ChunkPlan(model=None, y="y", sigma=None, starts={}, path="batched", options={})  # type: ignore[arg-type]
    plan.abandon_if_stopped()  # not stopped: nothing happens
    plan.stop.set()
    with pytest.raises(ChunkAbandoned):
        plan.abandon_if_stopped()
    done, abandoned, waiting = Future(), Future(), Future()
    done.set_result("table 0")
    abandoned.set_exception(ChunkAbandoned())
    parts = [slice(0, 1), slice(1, 2), slice(2, 3)]
    kept = list(_ChunkWorkers(plan)._begun(parts, [done, abandoned, waiting]))
    assert kept == [(slice(0, 1), "table 0")] and waiting.cancelled()  # the output stays a prefix


@pytest.mark.parametrize("solver", ["auto", "lm"])
def test_a_group_whose_data_do_not_determine_a_parameter_says_so(fleet, solver):
    same_t = fleet.with_columns(pl.when(pl.col("sensor") == 2).then(2.0).otherwise(pl.col("t")).alias("t"))  # one t: k and a, c tied
    table = fit_groups(DECAY, same_t, group="sensor", y="y", params=START, solver=solver).table
    row = table.filter(pl.col("sensor") == 2)
    if row["success"][0]:
        assert "but the data do not determine" in row["message"][0] and "rank-deficient" in row["message"][0]
    else:
        assert row["status"][0] == "singular"
    assert not table.filter(pl.col("sensor") == 0)["message"].cast(pl.String).str.contains("do not determine").any()


def test_a_formula_whose_only_input_is_the_group_key_is_told_so(fleet):
    with pytest.raises(ModelError, match="'t' is the group key column, so the model cannot use it"):
        fit_groups(DECAY, fleet, group="t", y="y", params=START)


def test_a_group_whose_targets_are_too_small_to_square_is_not_fitted_and_the_others_are(fleet):
    tiny = fleet.with_columns(pl.when(pl.col("sensor") == 4).then(pl.col("y") * 1e-200).otherwise(pl.col("y")).alias("y"))
    table = fit_groups(DECAY, tiny, group="sensor", y="y", params=START).table
    row = table.filter(pl.col("sensor") == 4)
    assert row["status"][0] == "bad_data" and "squares underflow" in row["message"][0]
    expected = fit_groups(DECAY, fleet, group="sensor", y="y", params=START).table.filter(pl.col("sensor") != 4)
    np.testing.assert_array_equal(table.filter(pl.col("sensor") != 4)["k"].to_numpy(), expected["k"].to_numpy())


def test_michaelis_menten_groups_from_the_default_start_reach_the_optimum_their_single_fits_do():
    """From (1, 1) a single fit's first steps cross the pole at km = -t into a minimum worse than a
    constant, which its restarts leave; groups reach the same optimum (a group the fused solver
    leaves at R² < 0 goes to the reference solver: see the bounded fits above)."""
    t = np.linspace(0.0, 5.0, 40)
    rng = np.random.default_rng(4)
    frame = pl.DataFrame({
        "sensor": np.repeat(np.arange(6), t.size), "t": np.tile(t, 6),
        "y": np.concatenate([v * t / (1.2 + t) + 0.05 * rng.normal(size=t.size) for v in (4.0, 3.0, 5.0, 4.5, 3.5, 2.5)]),
    })
    table = fit_groups("vmax*t/(km+t)", frame, group="sensor", y="y").table
    for key in range(6):
        part = frame.filter(pl.col("sensor") == key)
        alone = gradfit.fit("vmax*t/(km+t)", {"t": part["t"].to_numpy()}, part["y"].to_numpy())
        row = table.filter(pl.col("sensor") == key)
        assert row["status"][0] == alone.status == "converged" and row["r2"][0] > 0.9
        np.testing.assert_allclose([row["vmax"][0], row["km"][0]], alone.values, rtol=1e-8)


def test_group_starts_in_a_list_are_refused_with_the_mapping_to_use(fleet):
    with pytest.raises(ModelError, match="params must give the starting values by name"):
        fit_groups(DECAY, fleet, group="sensor", y="y", params=[1.0, 1.0, 0.0])
    with pytest.raises(ModelError, match="group fits take params as a mapping of names to starts"):
        fit_groups(DECAY, fleet, group="sensor", y="y", params=[gradfit.Parameter("a", 1.0)])


def test_groups_not_fitted_for_a_missing_start_or_no_finite_row_say_which(fleet):
    """A NaN in a start column ended the group 'non_finite' with advice about the data's scale, and
    an all-NaN group under nan_policy='omit' was told to use nan_policy='omit'."""
    frame = fleet.with_columns(
        k_guess=pl.when(pl.col("sensor") == 1).then(float("nan")).otherwise(0.8),
        y=pl.when(pl.col("sensor") == 3).then(float("nan")).otherwise(pl.col("y")),
    )
    table = fit_groups(DECAY, frame, group="sensor", y="y", params={"a": 1.0, "k": "k_guess", "c": 0.0}, nan_policy="omit").table
    row = {key: table.filter(pl.col("sensor") == key).to_dicts()[0] for key in (0, 1, 3)}
    assert row[1]["status"] == "bad_data" and "start of 'k' (the first value of column 'k_guess') is missing" in row[1]["message"]
    assert row[3]["status"] == "bad_data" and row[3]["message"].startswith("not fitted: none of the group's rows has finite values")
    assert row[0]["status"] == "converged"
    alone = _single(DECAY, frame, 0, params={"a": 1.0, "k": 0.8, "c": 0.0})
    np.testing.assert_allclose([row[0][n] for n in "akc"], alone.values, rtol=1e-8)


def test_groups_whose_model_cannot_follow_a_constant_equal_their_single_fits():
    """a*sin(k*x) on data offset by 5: the optimum itself is worse than a constant (R² < 0), so one
    round of restarts (not every round) looks for better, in groups as alone."""
    rng = np.random.default_rng(3)
    x = np.linspace(0.0, 10.0, 50)
    frame = pl.DataFrame({"g": np.repeat(np.arange(3), x.size), "x": np.tile(x, 3),
                          "y": np.concatenate([5 + 0.5 * np.sin(1.3 * x) + rng.normal(0, 0.05, x.size) for _ in range(3)])})
    table = fit_groups("a*sin(k*x)", frame, group="g", y="y").table
    for key in range(3):
        part = frame.filter(pl.col("g") == key)
        alone = gradfit.fit("a*sin(k*x)", {"x": part["x"].to_numpy()}, part["y"].to_numpy())
        row = table.filter(pl.col("g") == key)
        assert row["status"][0] == alone.status == "converged" and row["r2"][0] < 0
        np.testing.assert_allclose([row["a"][0], row["k"][0]], alone.values, rtol=1e-8)
        assert any(w.startswith("the fit is worse than a constant") for w in alone.warnings)
