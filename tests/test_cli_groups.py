"""``gradfit fit --group-by``: run as a user runs it, in subprocesses."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from gradfit.groups import fit_groups

DECAY = "a*exp(-k*t) + c"
INIT = "a=1,k=1,c=0"


def _fleet(k: int, n: int = 20, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    t = np.tile(np.linspace(0, 5, n), k)
    g = np.repeat(np.arange(k), n)
    a, kk, c = rng.uniform(1, 3, k), rng.uniform(0.3, 1.5, k), rng.uniform(-1, 1, k)
    y = a[g] * np.exp(-kk[g] * t) + c[g] + 0.02 * rng.standard_normal(k * n)
    y[g == 3] = np.nan
    return pl.DataFrame({"sensor": g, "t": t, "y": y})


def gradfit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradfit.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("groups")
    _fleet(60).write_parquet(path / "fleet.parquet", row_group_size=150)
    _fleet(60).write_csv(path / "fleet.csv")
    return path


@pytest.mark.parametrize("out", ["per_sensor.parquet", "per_sensor.csv", "per_sensor.ndjson"])
def test_group_fit_writes_one_row_per_group_and_prints_the_summary(folder, out):
    run = gradfit("fit", "fleet.parquet", "--group-by", "sensor", "--model", DECAY, "--y", "y", "--init", INIT, "--out", out, "--chunk", "16", cwd=folder)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert "60 groups" in run.stdout and "bad_data" in run.stdout and "worst groups" in run.stdout
    assert run.stdout.rstrip().endswith(f"written: {out}")
    reader = {".parquet": pl.read_parquet, ".csv": pl.read_csv, ".ndjson": pl.read_ndjson}[Path(out).suffix]
    table = reader(folder / out)
    expected = fit_groups(DECAY, _fleet(60), group="sensor", y="y", params={"a": 1.0, "k": 1.0, "c": 0.0}).table
    assert table["sensor"].to_list() == list(range(60))
    np.testing.assert_allclose(table["k"].to_numpy(), expected["k"].to_numpy(), rtol=1e-10, equal_nan=True)
    assert table.filter(pl.col("sensor") == 3)["status"][0] == "bad_data"
    assert not list(folder.glob(".gradfit-parts-*"))  # the part files are gone


def test_a_group_fit_without_out_says_that_nothing_was_written(folder):
    run = gradfit("fit", "fleet.parquet", "--group-by", "sensor", "--model", DECAY, "--y", "y", "--init", INIT, cwd=folder)
    assert run.returncode == 0 and run.stdout.rstrip().endswith("no --out: the table of groups was not written (add e.g. --out fits.parquet)")


def test_a_group_fit_where_no_group_could_be_fitted_exits_2_and_keeps_the_table(tmp_path):
    fleet = _fleet(4).with_columns((2.0 * pl.col("sensor")).alias("shift"))
    fleet.write_csv(tmp_path / "fleet.csv")
    run = gradfit("fit", "fleet.csv", "--group-by", "sensor", "--model", "a*log(t - 10)", "--y", "y", "--out", "fits.csv", cwd=tmp_path)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "no group could be fitted (bad_data 1, non_finite 3); the first: " in run.stderr
    assert "every group's status and message are in fits.csv" in run.stderr and "groups by status" in run.stdout
    assert pl.read_csv(tmp_path / "fits.csv")["status"].to_list() == ["non_finite", "non_finite", "non_finite", "bad_data"]
    some = gradfit("fit", "fleet.csv", "--group-by", "sensor", "--model", "a*log(t + 1 - shift)", "--y", "y", "-q", cwd=tmp_path)
    assert some.returncode == 0 and some.stderr == "", some.stderr  # one group fitted (sensor 0): the run succeeds


def test_init_takes_each_groups_start_from_a_column(tmp_path):
    fleet = _fleet(8).with_columns((0.5 + 0.1 * pl.col("sensor")).alias("k_guess"))
    fleet.write_csv(tmp_path / "fleet.csv")
    run = gradfit("fit", "fleet.csv", "--group-by", "sensor", "--model", DECAY, "--y", "y", "--init", "a=1,k=k_guess,c=0",
                  "--out", "fits.csv", cwd=tmp_path)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    expected = fit_groups(DECAY, fleet, group="sensor", y="y", params={"a": 1.0, "k": "k_guess", "c": 0.0}).table
    np.testing.assert_allclose(pl.read_csv(tmp_path / "fits.csv")["k"].to_numpy(), expected["k"].to_numpy(), rtol=1e-10, equal_nan=True)
    wrong = gradfit("fit", "fleet.csv", "--group-by", "sensor", "--model", DECAY, "--y", "y", "--init", "a=1,k=k_gues,c=0", cwd=tmp_path)
    assert wrong.returncode == 2 and "k_gues" in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1
    both = gradfit("fit", "fleet.csv", "--group-by", "sensor", "--model", DECAY, "--y", "y", "--init", "k=k_guess", "--fix", "k=1", cwd=tmp_path)
    assert both.returncode == 2 and "starting value (column 'k_guess') and a fixed value (1)" in both.stderr


def test_nan_omit_fits_a_group_from_its_finite_rows(tmp_path):
    fleet = _fleet(6).with_columns(pl.when((pl.col("sensor") == 1) & (pl.col("t") > 4)).then(None).otherwise(pl.col("y")).alias("y"))
    fleet.write_csv(tmp_path / "fleet.csv")  # a missing value in a CSV is an empty field
    run = gradfit("fit", "fleet.csv", "--group-by", "sensor", "--model", DECAY, "--y", "y", "--init", INIT, "--nan", "omit",
                  "--out", "fits.csv", cwd=tmp_path)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    table = pl.read_csv(tmp_path / "fits.csv")
    expected = fit_groups(DECAY, fleet.drop_nulls(), group="sensor", y="y", params={"a": 1.0, "k": 1.0, "c": 0.0}).table
    assert table.filter(pl.col("sensor") == 3)["status"][0] == "bad_data"  # every y is NaN: nothing to fit
    fitted = pl.col("sensor") != 3
    assert table.filter(pl.col("sensor") == 1)["n_points"][0] == expected.filter(pl.col("sensor") == 1)["n_points"][0] < 20
    np.testing.assert_allclose(table.filter(fitted)["k"].to_numpy(), expected.filter(fitted)["k"].to_numpy(), rtol=1e-10)


def test_robust_group_fit_by_gradient_descent(folder):
    run = gradfit("fit", "fleet.csv", "--group-by", "sensor", "--model", DECAY, "--y", "y", "--init", INIT, "--loss", "mae",
                  "--optimizer", "adam", "--epochs", "200", "--out", "mae.parquet", cwd=folder)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    # the distributions cover groups that ran their epochs: the summary said "converged groups"
    assert "distribution over successful groups (max_epochs)" in " ".join(run.stdout.split())
    table = pl.read_parquet(folder / "mae.parquet")
    assert set(table["status"].to_list()) == {"bad_data", "max_epochs"}
    assert (table.filter(pl.col("success"))["iterations"] == 200).all()


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--optimizer", "lbfgs"], "would couple the groups"),
        (["--plot", "fit.png"], "--plot does not apply to --group-by fits"),
        (["--out", "table.xlsx"], "must end in .parquet"),
        (["--loss", "mae", "--solver", "linear"], "use solver 'gradient' (or auto), or 'lm'"),
        (["--loss", "mae", "--refit-failed"], "(--refit-failed) uses more least-squares starting points"),
        (["--loss", "mae", "--refit-failed"], "or use the lm solver (exact least absolute deviations)"),
        (["--loss", "huber", "--optimizer", "adam", "--refit-failed"], "or leave out the optimizer"),
        (["--solver", "gradient", "--refit-failed"], "or use the lm solver\n"),
        (["--chunk", "0"], "chunk must be at least 1 group, got 0"),
        (["--nan", "drop"], "unknown nan_policy 'drop'"),
        (["--report"], "--report does not apply to --group-by fits"),
        (["--seed", "-1", "--val", "0.2"], "seed must be a whole number of at least 0"),
        (["--max-iter", "0"], "max_iter must be a whole number of at least 1"),
    ],
)
def test_group_fit_input_errors_are_one_line(folder, extra, fragment):
    run = gradfit("fit", "fleet.parquet", "--group-by", "sensor", "--model", DECAY, "--y", "y", *extra, cwd=folder)
    assert run.returncode == 2 and fragment in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_group_fit_keeps_the_groups_done(tmp_path, sig, code):
    _fleet(3000, n=30).write_parquet(tmp_path / "big.parquet")
    command = [sys.executable, "-m", "gradfit.cli", "fit", "big.parquet", "--group-by", "sensor", "--model", DECAY, "--y", "y",
               "--init", INIT, "--loss", "huber", "--optimizer", "adam", "--epochs", "3000", "--chunk", "20", "--out", "part.parquet"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    # part 2 begun: parts 0 and 1 are complete (a signal during a part's write may lose that part)
    while not list(tmp_path.glob(".gradfit-parts-*/part-000002.parquet")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no chunk was ever written"
        time.sleep(0.05)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr and "interrupted" in stdout
    table = pl.read_parquet(tmp_path / "part.parquet")
    assert 2 * 19 <= table.height < 3000 and table["sensor"].to_list() == list(range(table.height))
    assert table["a"].is_finite().sum() == table.height - (1 if 3 < table.height else 0)
    assert not list(tmp_path.glob(".gradfit-parts-*"))


def test_a_signal_during_a_gradient_group_fit_exits_143_with_what_was_kept(tmp_path):
    # when the signal lands depends on the machine's load: before training (nothing kept) or during
    # it (the groups come out "interrupted"); both must exit 143 and say which
    _fleet(40, n=30).write_parquet(tmp_path / "big.parquet")
    command = [sys.executable, "-m", "gradfit.cli", "fit", "big.parquet", "--group-by", "sensor", "--model", DECAY, "--y", "y",
               "--init", INIT, "--loss", "huber", "--optimizer", "adam", "--epochs", "10000000", "--chunk", "20", "--out", "keep.parquet"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".gradfit-parts-*")):  # the fit has begun
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the fit never began"
        time.sleep(0.05)
    time.sleep(2.0)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    if "nothing was written" in stderr:
        assert not (tmp_path / "keep.parquet").exists()
    else:
        assert "groups fitted so far were written to keep.parquet" in stderr, stderr
        trained = pl.read_parquet(tmp_path / "keep.parquet").filter(pl.col("status") != "bad_data")
        assert set(trained["status"].to_list()) == {"interrupted"} and not trained["success"].any()


class _InterruptAfter:
    """An elementwise optimizer (Adam) whose 50th step is interrupted, as Ctrl-C would be."""

    def __new__(cls, params, **options):
        import torch

        class Interrupting(torch.optim.Adam):
            steps = 0

            def step(self, closure=None):
                Interrupting.steps += 1
                if Interrupting.steps == 50:
                    raise KeyboardInterrupt
                return super().step(closure)

        return Interrupting(params, **options)


def test_an_interrupted_gradient_chunk_keeps_its_groups_with_their_best_parameters():
    from gradfit.groups import iter_group_fits

    fleet = _fleet(12, n=30)
    options = dict(group="sensor", y="y", params={"a": 1.0, "k": 1.0, "c": 0.0}, loss="huber", optimizer_options={"lr": 0.01})
    tables = []
    with pytest.raises(KeyboardInterrupt):
        for table in iter_group_fits(DECAY, fleet, optimizer=_InterruptAfter, epochs=100_000, **options):
            tables.append(table)
    table = pl.concat(tables).filter(pl.col("status") != "bad_data")
    assert table.height == 11 and set(table["status"].to_list()) == {"interrupted"} and not table["success"].any()
    # the best parameters so far: at least as good as those after the 48th step (the 50th never
    # ran), and the same where the loss fell all along
    from gradfit.losses import get_loss

    last = fit_groups(DECAY, fleet, optimizer="adam", epochs=48, **options).table.filter(pl.col("status") != "bad_data")
    huber = get_loss("huber")

    def loss(row: dict) -> float:
        part = fleet.filter(pl.col("sensor") == row["sensor"])
        t, y = part["t"].to_numpy(), part["y"].to_numpy()
        return float(huber(row["a"] * np.exp(-row["k"] * t) + row["c"] - y))

    kept, after = [loss(r) for r in table.iter_rows(named=True)], [loss(r) for r in last.iter_rows(named=True)]
    assert all(k <= a * (1 + 1e-12) for k, a in zip(kept, after))
    assert sum(k == a for k, a in zip(kept, after)) >= 8


def test_an_interruption_before_any_chunk_is_written_leaves_the_output_as_it_was(tmp_path):
    from gradfit.cli_groups import write_tables

    def interrupted_at_once():
        raise KeyboardInterrupt
        yield  # a generator

    (tmp_path / "keep.parquet").write_bytes(b"an earlier result")
    assert write_tables(interrupted_at_once(), tmp_path / "keep.parquet", {"a": pl.Float64}) == 0
    assert (tmp_path / "keep.parquet").read_bytes() == b"an earlier result"
    assert not list(tmp_path.glob(".gradfit-parts-*"))


def test_params_names_a_formula_parameter_that_a_column_shadows(tmp_path):
    frame = _fleet(4).with_columns(pl.lit(5.0).alias("k"))
    frame.write_csv(tmp_path / "fleet.csv")
    run = gradfit("fit", "fleet.csv", "--group-by", "sensor", "--model", DECAY, "--y", "y", "--init", INIT, "--params", "k",
                  "--out", "t.csv", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    table = pl.read_csv(tmp_path / "t.csv")
    assert "k" in table.columns and "k_stderr" in table.columns  # k was fitted, not read from the column
    expected = fit_groups(DECAY, _fleet(4), group="sensor", y="y", params={"a": 1.0, "k": 1.0, "c": 0.0}).table
    np.testing.assert_allclose(table["k"].to_numpy(), expected["k"].to_numpy(), rtol=1e-8)


def test_an_output_directory_that_takes_no_files_is_an_output_error(tmp_path, monkeypatch):
    import gradfit.cli_groups as cli_groups
    from gradfit.errors import OutputError

    def refuse(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(cli_groups.tempfile, "TemporaryDirectory", refuse)  # as in /proc, which access() passes
    with pytest.raises(OutputError, match=r"cannot write in directory .*: No such file or directory — choose another"):
        cli_groups.write_tables(iter([]), tmp_path / "fits.parquet", {})
