"""Group sources: Parquet files grouped by key are streamed in batches of whole groups."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from gradfit.errors import DataError
from gradfit.group_sources import open_groups
from gradfit.groups import fit_groups

DECAY = "a*exp(-k*t) + c"
START = {"a": 1.0, "k": 1.0, "c": 0.0}


@pytest.fixture(scope="module")
def ragged() -> pl.DataFrame:
    """40 groups of 5 to 29 points, keys in file order 100, 99, ... (grouped, not sorted)."""
    rng = np.random.default_rng(7)
    sizes = rng.integers(5, 30, 40)
    keys = np.repeat(100 - np.arange(40), sizes)
    t = np.concatenate([np.linspace(0, 4, s) for s in sizes])
    a, k, c = (np.repeat(v, sizes) for v in (rng.uniform(1, 3, 40), rng.uniform(0.3, 1.5, 40), rng.uniform(-1, 1, 40)))
    y = a * np.exp(-k * t) + c + 0.02 * rng.standard_normal(t.size)
    return pl.DataFrame({"sensor": keys, "t": t, "y": y, "unused": np.zeros(t.size)})


def test_a_grouped_parquet_file_streams_whole_groups(tmp_path, ragged):
    path = tmp_path / "fleet.parquet"
    ragged.write_parquet(path, row_group_size=37)
    source = open_groups(path, "sensor")
    assert source.streamed and source.n_groups == 40
    batches = list(source.batches(["t", "y"], groups_per_batch=3))
    assert len(batches) > 5 and all(b.columns == ["sensor", "t", "y"] for b in batches)
    keys = [b["sensor"].unique(maintain_order=True).to_list() for b in batches]
    flat = [key for part in keys for key in part]
    assert flat == list(range(100, 60, -1))  # every group in exactly one batch, in file order
    assert pl.concat(batches).equals(ragged.select("sensor", "t", "y"))


def test_the_last_batch_of_a_streamed_file_keeps_its_last_group(tmp_path):
    keys = np.repeat(np.arange(40), 10)
    pl.DataFrame({"g": keys, "y": np.arange(keys.size, dtype=float)}).write_parquet(tmp_path / "even.parquet")
    batches = list(open_groups(tmp_path / "even.parquet", "g").batches(["y"], groups_per_batch=3))
    assert batches[-1]["g"].n_unique() > 1  # the last group is complete there: not held back to stand alone
    assert pl.concat(batches)["g"].to_list() == keys.tolist()


def test_streamed_fits_equal_fits_of_the_frame_in_memory(tmp_path, ragged):
    path = tmp_path / "fleet.parquet"
    ragged.write_parquet(path, row_group_size=50)
    options = dict(group="sensor", y="y", params=START, chunk=6, val=0.2, seed=5)  # the same held-out points too
    streamed = fit_groups(DECAY, path, **options).table
    in_memory = fit_groups(DECAY, ragged, **options).table
    assert streamed["sensor"].to_list() == in_memory["sensor"].to_list() == list(range(100, 60, -1))  # file order
    for name in ("a", "k", "c", "a_stderr", "r2", "val_loss"):  # other chunk neighbours, other padding: last bits at most
        np.testing.assert_allclose(streamed[name].to_numpy(), in_memory[name].to_numpy(), rtol=1e-12)


def test_scattered_groups_and_other_formats_are_read_whole(tmp_path, ragged):
    shuffled = tmp_path / "shuffled.parquet"
    ragged.sample(fraction=1.0, shuffle=True, seed=2).write_parquet(shuffled)
    csv = tmp_path / "fleet.csv"
    ragged.write_csv(csv)
    for path in (shuffled, csv):
        source = open_groups(path, "sensor")
        assert not source.streamed and source.n_groups == 40
    a = fit_groups(DECAY, shuffled, group="sensor", y="y", params=START).table  # scattered: key order
    b = fit_groups(DECAY, csv, group="sensor", y="y", params=START).table.sort("sensor")  # together: file order
    assert a["sensor"].to_list() == b["sensor"].to_list() == list(range(61, 101))
    np.testing.assert_allclose(a["k"].to_numpy(), b["k"].to_numpy(), rtol=1e-9)


def test_unknown_columns_and_broken_files_are_data_errors(tmp_path, ragged):
    path = tmp_path / "fleet.parquet"
    ragged.write_parquet(path)
    with pytest.raises(DataError, match="unknown column 'sensr'; did you mean 'sensor'"):
        open_groups(path, "sensr")
    with pytest.raises(DataError, match="a list of columns where one is asked for .*a group key is one column"):
        open_groups(path, "sensor,t")
    with pytest.raises(DataError, match="unknown column 'z'"):
        fit_groups(DECAY, path, group="sensor", y="z")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError):
        fit_groups(DECAY, broken, group="sensor", y="y")


@pytest.mark.parametrize("kind", ["text", "float"])
def test_missing_group_keys_are_a_data_error_in_a_frame_and_in_a_streamed_file(tmp_path, ragged, kind):
    keys = ragged["sensor"].cast(pl.Utf8 if kind == "text" else pl.Float64)
    missing = pl.Series([None, None]) if kind == "text" else pl.Series([None, float("nan")])
    last = ragged.height - 1  # the last rows: their own run at the end, so the file still streams
    broken = ragged.with_columns(keys.scatter([last - 1, last], missing).alias("sensor"))
    path = tmp_path / "fleet.parquet"
    broken.write_parquet(path)
    for data in (broken, path):
        with pytest.raises(DataError, match="the group column 'sensor' has 2 missing keys"):
            fit_groups(DECAY, data, group="sensor", y="y", params=START)


def test_keys_that_are_not_plain_values_are_a_data_error(tmp_path):
    import decimal

    base = pl.DataFrame({"t": np.tile(np.arange(5.0), 2), "y": np.arange(10.0)})
    keys = {"list": pl.Series([[1]] * 5 + [[2]] * 5), "struct": pl.Series([{"a": 1}] * 5 + [{"a": 2}] * 5),
            "decimal": pl.Series([decimal.Decimal("1.5")] * 5 + [decimal.Decimal("2.5")] * 5)}
    for name, key in keys.items():
        frame = base.with_columns(key.alias("g"))
        frame.write_parquet(tmp_path / f"{name}.parquet")
        for data in (frame, tmp_path / f"{name}.parquet"):
            with pytest.raises(DataError, match="group keys must be numbers, text or dates"):
                fit_groups("w*t + b", data, group="g", y="y")


@pytest.mark.parametrize("dtype", [pl.Categorical, pl.Enum(["s1", "s2", "s3"])])
def test_categorical_keys_come_back_in_their_own_type_so_results_join_the_data(dtype):
    frame = pl.DataFrame({"g": pl.Series(["s1"] * 5 + ["s2"] * 5 + ["s3"] * 5, dtype=dtype), "t": np.tile(np.arange(5.0), 3), "y": np.arange(15.0)})
    table = fit_groups("w*t + b", frame, group="g", y="y").table
    assert table["g"].dtype == frame["g"].dtype
    assert frame.join(table.select("g", "w"), on="g").height == frame.height


def test_csv_keys_are_read_as_written(tmp_path):
    # "007" and "7" are two sensors; 20-digit identifiers are exact; plain integers stay integers
    t = np.linspace(0, 3, 6)
    rows = [("007", 2.0), ("7", 3.0), ("12345678901234567890", 1.5), ("12345678901234567891", 0.5)]
    lines = ["key,t,y"] + [f"{key},{ti},{slope * ti + 1}" for key, slope in rows for ti in t]
    (tmp_path / "text.csv").write_text("\n".join(lines) + "\n")
    table = fit_groups("a*t + b", tmp_path / "text.csv", group="key", y="y").table
    assert table["key"].to_list() == [key for key, _ in rows]
    np.testing.assert_allclose(table["a"].to_numpy(), [slope for _, slope in rows], rtol=1e-12)
    lines = ["key,t,y"] + [f"{key},{ti},{key * ti}" for key in (3, -1, 10) for ti in t]
    (tmp_path / "ints.csv").write_text("\n".join(lines) + "\n")
    table = fit_groups("a*t + b", tmp_path / "ints.csv", group="key", y="y").table
    assert table["key"].dtype == pl.Int64 and sorted(table["key"].to_list()) == [-1, 3, 10]


def test_time_zone_aware_keys_of_a_streamed_file_keep_each_group_whole(tmp_path):
    sizes = [10] * 9 + [300]
    t = np.concatenate([np.linspace(0.0, 1.0, s) for s in sizes])
    frame = pl.DataFrame({"k": np.repeat(np.arange(10), sizes), "t": t, "y": 2 * t + 1})
    frame = frame.with_columns(pl.from_epoch("k", time_unit="s").dt.replace_time_zone("UTC").alias("key")).drop("k")
    frame.write_parquet(tmp_path / "tz.parquet", row_group_size=16)
    table = fit_groups("w*t + b", tmp_path / "tz.parquet", group="key", y="y", chunk=1).table
    assert table.height == 10 and table["n_points"].to_list() == sizes  # batches cut groups in pieces before
    assert table["key"].dtype == frame["key"].dtype


def test_times_of_day_are_keys_like_dates():
    import datetime

    frame = pl.DataFrame({"g": [datetime.time(1)] * 4 + [datetime.time(2)] * 4, "t": [0.0, 1, 2, 3] * 2, "y": [1.0, 3, 5, 7.1, 2, 4, 6, 8.2]})
    table = fit_groups("w*t + b", frame, group="g", y="y").table
    assert table["g"].to_list() == [datetime.time(1), datetime.time(2)] and table["success"].all()
