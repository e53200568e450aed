"""End-to-end tests of the ``gradfit`` command, run in subprocesses exactly as a user runs it.

Every run records whether torch was imported, so the tests can check that help and input errors are
answered before the (seconds-long) torch import. References are independent of gradfit: numpy's
``polyfit`` for the line, numpy for the gradients, the book's printed numbers for the demo.

Each run is a *scenario*: a folder prepared with data and a command line. All scenarios are started
together in a small thread pool when the first test needs one (each run is a separate interpreter,
mostly start-up and torch import), and every test then checks its own scenario's outcome.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest

T_C = np.array([0.5, 14.0, 15.0, 28.0, 11.0, 8.0, 3.0, -4.0, 6.0, 13.0, 21.0])
T_U = np.array([35.7, 55.9, 58.2, 81.9, 56.3, 48.9, 33.9, 21.8, 48.4, 60.4, 68.4])
LINE = "w*t_u + b"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: what separates the cells of a printed table (spaces and box-drawing bars)
SEP = r"[\s│┃|]+"
NUMBER = r"(-?[\d.]+(?:e[-+]?\d+)?)"

#: runs the CLI's entry point and records, whatever happens, whether torch was imported
RUNNER = """
import sys
flag = sys.argv.pop(1)
try:
    from gradfit.cli import main
    main()
finally:
    with open(flag, "w") as handle:
        handle.write(str("torch" in sys.modules))
"""

# -- running the command ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """The outcome of one ``gradfit`` run."""

    returncode: int
    stdout: str
    stderr: str
    torch_imported: bool

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def gradfit(*args: object, cwd: Path) -> Run:
    """Run ``gradfit ARGS`` in a fresh interpreter in ``cwd``."""
    flag = cwd / ".torch-imported"
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "PYTHONWARNINGS")}
    completed = subprocess.run(
        [sys.executable, "-c", RUNNER, str(flag), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    torch_imported = flag.read_text() == "True"
    flag.unlink()
    return Run(completed.returncode, completed.stdout, completed.stderr, torch_imported)


@dataclass(frozen=True)
class Outcome:
    """A scenario's run, its folder, and the folder's file names before and after the run."""

    folder: Path
    run: Run
    files_before: frozenset[str]
    files_after: frozenset[str]


Prepare = Callable[[Path], None]
#: name -> (prepare the folder, command line); heavy (torch-importing) scenarios are listed first
SCENARIOS: dict[str, tuple[Prepare, list[str]]] = {}


def scenario(name: str, *args: str) -> Callable[[Prepare], Prepare]:
    """Register ``prepare`` as the folder set-up of scenario ``name``, run as ``gradfit ARGS``."""

    def register(prepare: Prepare) -> Prepare:
        SCENARIOS[name] = (prepare, list(args))
        return prepare

    return register


def listing(directory: Path) -> frozenset[str]:
    return frozenset(p.name for p in directory.iterdir())


def uses(*names: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Mark a test as reading the outcomes of the named scenarios."""

    def mark(test: Callable[..., None]) -> Callable[..., None]:
        test.scenarios = names  # type: ignore[attr-defined]
        return test

    return mark


def _wanted(items: list[pytest.Item]) -> set[str]:
    """Scenarios read by the selected tests: their ``case`` parameter or their :func:`uses` names."""
    names: set[str] = set()
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "case" in callspec.params:
            names.add(callspec.params["case"])
        names.update(getattr(getattr(item, "function", None), "scenarios", ()))
    return names


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Outcome]]]:
    """Start the selected tests' scenarios at once; each test waits only for its own."""

    def execute(name: str, folder: Path) -> Outcome:
        prepare, args = SCENARIOS[name]
        prepare(folder)
        before = listing(folder)
        run = gradfit(*args, cwd=folder)
        return Outcome(folder, run, before, listing(folder))

    wanted = _wanted([item for item in request.session.items if item.module is request.module])
    pool = ThreadPoolExecutor(max_workers=max(3, os.cpu_count() or 1))
    try:
        # folders are made here, not in the workers: tmp_path_factory is not thread-safe
        folders = {name: tmp_path_factory.mktemp(re.sub(r"\W+", "-", name)[:30]) for name in SCENARIOS if name in wanted}
        yield {name: pool.submit(execute, name, folder) for name, folder in folders.items()}
    finally:
        pool.shutdown(cancel_futures=True)


def assert_one_line_error(run: Run, *fragments: str) -> None:
    """Exit code 2, no traceback, one line on stderr containing every fragment."""
    assert run.returncode == 2, run
    assert "Traceback" not in run.stderr, run.stderr
    assert len(run.error_lines) == 1, run.stderr
    for fragment in fragments:
        assert fragment in run.stderr, (fragment, run.stderr)


def write_frame(path: Path, frame: pl.DataFrame) -> Path:
    """Write ``frame`` with polars in the format named by the extension."""
    writers = {".csv": frame.write_csv, ".parquet": frame.write_parquet, ".ndjson": frame.write_ndjson}
    writers[path.suffix](path)
    return path


def thermometer_frame(rows: slice = slice(None)) -> pl.DataFrame:
    return pl.DataFrame({"t_c": T_C[rows], "t_u": T_U[rows]})


def table_value(stdout: str, name: str) -> float:
    """The value column of parameter ``name`` in the printed result table."""
    match = re.search(rf"^{SEP}{name}{SEP}{NUMBER}\s", stdout, re.MULTILINE)
    assert match, stdout
    return float(match.group(1))


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000, path


def mse(params: np.ndarray, rows: np.ndarray | slice) -> float:
    return float(np.mean((np.polyval(params, T_U[rows]) - T_C[rows]) ** 2))


# -- scenarios that fit (they import torch) ------------------------------------------------------
@scenario("demo", "demo", "thermometer", "--out-dir", "figures")
def _nothing(folder: Path) -> None:
    pass


@scenario(
    "sgd scaled", "fit", "data.ndjson", "--model", LINE, "--y", "t_c", "--optimizer", "sgd", "--opt", "lr=1e-2",
    "--epochs", "3000", "--val", "0.2", "--seed", "1", "--out", "result.json", "--plot-history", "loss.png",
)  # fmt: skip
def _ndjson(folder: Path) -> None:
    write_frame(folder / "data.ndjson", thermometer_frame())


@scenario(
    "sgd unscaled", "fit", "data.csv", "--model", LINE, "--y", "t_c", "--init", "w=1,b=0", "--optimizer", "sgd",
    "--opt", "lr=1e-2", "--epochs", "3000", "--no-scale", "--out", "result.json", "--plot", "fit.png",
)  # fmt: skip
def _csv(folder: Path) -> None:
    write_frame(folder / "data.csv", thermometer_frame())


@scenario(
    "iteration limit", "fit", "data.csv", "--model", "a*exp(-k*t) + c", "--y", "y", "--init", "a=1,k=5,c=0",
    "--max-iter", "2", "--out", "result.json", "--plot-history", "loss.png",
)  # fmt: skip
def _iteration_limit(folder: Path) -> None:
    t = np.linspace(0.0, 4.0, 40)
    write_frame(folder / "data.csv", pl.DataFrame({"t": t, "y": 2.5 * np.exp(-1.3 * t) + 0.5 + 0.01 * np.sin(7 * t)}))


@scenario(
    "not finite at the start", "fit", "data.csv", "--model", "a*sqrt(t - k)", "--y", "y", "--init", "a=1,k=1",
    "--loss", "mae", "--out", "result.json",
)  # fmt: skip
def _not_finite_at_start(folder: Path) -> None:
    t = np.array([0.5, 2.0, 3.0, 4.0, 5.0, 6.0])  # sqrt(0.5 - 1) is NaN
    write_frame(folder / "data.csv", pl.DataFrame({"t": t, "y": 2.0 * np.sqrt(np.abs(t - 1.2))}))


@scenario(
    "csv", "fit", "data.csv", "--model", LINE, "--y", "t_c", "--params", "b", "--init", "w=1,b=0",
    "--out", "result.json", "--plot", "fit.png",
)  # fmt: skip
def _csv_with_column_b(folder: Path) -> None:
    # a column named 'b' that --params must keep out of the model's inputs
    noise = np.random.default_rng(0).normal(size=T_C.size)
    write_frame(folder / "data.csv", thermometer_frame().with_columns(pl.Series("b", noise)))


@scenario(
    "parquet", "fit", "train.parquet", "--model", LINE, "--y", "t_c", "--val-data", "val.ndjson", "--nan", "omit",
    "--out", "result.json",
)  # fmt: skip
def _parquet_with_gap_and_ndjson_validation(folder: Path) -> None:
    gap = pl.DataFrame({"t_c": [5.0], "t_u": [float("nan")]})
    write_frame(folder / "train.parquet", pl.concat([thermometer_frame(slice(0, 8)), gap]))
    write_frame(folder / "val.ndjson", thermometer_frame(slice(8, None)))


scenario("explain", "explain", "--model", "w*t_u+b", "data.csv", "--y", "t_c", "--init", "w=1,b=0")(_csv)


# -- scenarios that must answer before torch -------------------------------------------------------
def _broken_files(folder: Path) -> None:
    """The thermometer data and a few broken variants of it."""
    write_frame(folder / "data.csv", thermometer_frame())
    _parquet_with_gap_and_ndjson_validation(folder)
    (folder / "text.csv").write_text("t_c,t_u,label\n1,2,a\n2,3,b\n3,4,c\n")
    (folder / "nan.csv").write_text("t_c,t_u\n1,2\n2,nan\n3,4\n4,5\n")
    (folder / "inf.csv").write_text("t_c,t_u\n1,2\n2,3\n3,inf\n4,5\n")
    (folder / "empty.csv").write_text("t_c,t_u\n")
    (folder / "one.csv").write_text("t_c,t_u\n1,2\n")
    (folder / "other.csv").write_text("t_c,x\n1,2\n2,3\n")
    (folder / "afile").write_text("not a directory\n")


FIT = ["fit", "data.csv", "--model", LINE, "--y", "t_c"]
OUTPUTS = {"--out": "result.json", "--plot": "fit.png", "--plot-history": "loss.png"}

#: case -> (command line, fragments the one-line error must contain)
INPUT_ERRORS: dict[str, tuple[list[str], list[str]]] = {
    "missing file": (["fit", "nope.csv", "--model", LINE, "--y", "t_c"], ["file not found: nope.csv", "check the path"]),
    "unknown column": (["fit", "data.csv", "--model", LINE, "--y", "tc"], ["unknown column 'tc'", "did you mean 't_c'"]),
    "non-numeric column": (["fit", "text.csv", "--model", "w*label + b", "--y", "t_c"], ["'label' is not numeric", "row 1"]),
    "nan in data": (["fit", "nan.csv", "--model", LINE, "--y", "t_c"], ["missing or non-finite", "t_u", "--nan omit"]),
    "inf in data": (["fit", "inf.csv", "--model", LINE, "--y", "t_c"], ["missing or non-finite", "--nan omit"]),
    "nan in parquet": (["fit", "train.parquet", "--model", LINE, "--y", "t_c"], ["missing or non-finite", "--nan omit"]),
    "formula syntax": ([*FIT[:3], "w*t_u +", *FIT[4:]], ["FormulaError", "syntax", "column"]),
    "unknown function": ([*FIT[:3], "w*foo(t_u) + b", *FIT[4:]], ["unknown function 'foo'", "exp"]),
    "no parameters": ([*FIT[:3], "t_u", *FIT[4:]], ["no parameters", "add a parameter"]),
    "no data column in formula": ([*FIT[:3], "w*t_x + b", *FIT[4:]], ["uses no data column", "t_u"]),
    "empty data": (["fit", "empty.csv", "--model", LINE, "--y", "t_c"], ["no rows", "at least one"]),
    "fewer rows than parameters": (["fit", "one.csv", "--model", LINE, "--y", "t_c"], ["1 training row for 2 parameters", "add data"]),
    "out into missing dir": ([*FIT, "--out", "missing/result.json"], ["does not exist", "missing", "create it"]),
    "out under a file": ([*FIT, "--out", "afile/result.json"], ["afile", "not a directory"]),
    "unknown optimizer": ([*FIT, "--optimizer", "sgdd"], ["unknown optimizer 'sgdd'", "did you mean 'sgd'"]),
    "bad --opt syntax": ([*FIT, "--optimizer", "sgd", "--opt", "lr"], ["--opt", "key=value"]),
    "bad --opt value": ([*FIT, "--optimizer", "sgd", "--opt", "lr=fast-ish"], ["--opt", "not a number"]),
    "--opt word for a number": ([*FIT, "--optimizer", "sgd", "--opt", "lr=abc"], ["--opt lr=abc: 'abc' is not a number", "lr=0.01"]),
    "unknown --opt keyword": ([*FIT, "--optimizer", "sgd", "--opt", "lr=1e-2,betas=(0.9,0.99)"], ["SGD has no option 'betas'", "momentum"]),
    "--opt without --optimizer": ([*FIT, "--opt", "lr=1e-2"], ["--opt needs --optimizer"]),
    "bad --init": ([*FIT, "--init", "w=one"], ["--init", "'one' is not a number"]),
    "--init of unknown parameter": ([*FIT, "--init", "z=1"], ["'z' is not a parameter", "w, b"]),
    "--params not in formula": ([*FIT, "--params", "z"], ["--params", "'z'", "w, b"]),
    "bad plot format": ([*FIT, "--plot", "fit.xyz"], ["--plot", ".xyz", ".png"]),
    "plot without extension": ([*FIT, "--plot-history", "loss"], ["--plot-history", "no extension", "loss.png"]),
    "bad --val": ([*FIT, "--val", "1.5"], ["val must be a fraction", "0.2"]),
    "--val and --val-data": ([*FIT, "--val", "0.2", "--val-data", "data.csv"], ["either --val or --val-data"]),
    "bad --val-data": ([*FIT, "--val-data", "nope.csv"], ["file not found: nope.csv"]),
    "--val-data without the columns": ([*FIT, "--val-data", "other.csv"], ["the validation file other.csv: ", "unknown column 't_u'"]),
    "unknown solver": ([*FIT, "--solver", "magic"], ["unknown solver 'magic'", "auto"]),
    "unknown device": ([*FIT, "--device", "gpu0"], ["unknown device 'gpu0'", "cpu, cuda, auto"]),
    "missing --model": (["fit", "data.csv", "--y", "t_c"], ["Missing option '--model'", "gradfit fit --help"]),
    "bad integer": ([*FIT, "--epochs", "many"], ["--epochs", "gradfit fit --help"]),
    "unknown command": (["fitt"], ["No such command 'fitt'"]),
    "predict: missing result": (["predict", "nope.json", "data.csv"], ["cannot read result file", "nope.json"]),
    "predict: not a result": (["predict", "data.csv", "data.csv"], ["not a gradfit result file"]),
    "predict: out into missing dir": (["predict", "nope.json", "data.csv", "--out", "missing/p.csv"], ["does not exist"]),
    "explain: unknown column": (["explain", "data.csv", "--model", LINE, "--y", "tc"], ["did you mean 't_c'"]),
    "explain: nan": (["explain", "nan.csv", "--model", LINE, "--y", "t_c"], ["--nan omit"]),
    "out over the data": ([*FIT, "--out", "data.csv"], ["--out data.csv would overwrite the data file", "another file name"]),
    "two outputs on one path": ([*FIT, "--out", "fit.png", "--plot", "fit.png"], ["--plot fit.png would overwrite --out"]),
    "group out over the data": ([*FIT, "--group-by", "t_u", "--out", "train.parquet", "--val-data", "train.parquet"], ["would overwrite the validation file"]),
    "predict: out over the data": (["predict", "nope.json", "data.csv", "--out", "data.csv"], ["--out data.csv would overwrite the data file"]),
    "out not json": ([*FIT, "--out", "result.parquet"], ["--out result.parquet: gradfit writes .json here"]),
    "predict: unknown out format": (["predict", "nope.json", "data.csv", "--out", "p.xlsx"], ["--out p.xlsx", ".parquet"]),
    "checkpoint of an exact fit": ([*FIT, "--checkpoint", "run.ckpt"], ["linear solver", "ignores checkpoint (--checkpoint)", "--optimizer adam"]),
    "solver beside an optimizer": ([*FIT, "--solver", "lm", "--optimizer", "adam"], ["solver 'lm' was asked for — drop one of them"]),
    "infinite --init": ([*FIT, "--init", "w=inf"], ["--init: 'w' must be a finite number"]),
    "--opt without a value": ([*FIT, "--optimizer", "sgd", "--opt", "lr="], ["'lr' has no value"]),
    "report: not html": (["report", "nope.json", "-o", "report.png"], ["the report report.png: gradfit writes .html"]),
    "--debug after the command": ([*FIT, "--debug"], ["No such option: --debug", "--debug goes before the command: gradfit --debug fit"]),
    "explain: --fix is no option": (["explain", "data.csv", "--model", LINE, "--y", "t_c", "--fix", "w=2"], ["No such option: --fix"]),
    "demo: unknown": (["demo", "barometer"], ["unknown demo 'barometer'", "thermometer"]),
    "demo: out-dir is a file": (["demo", "--out-dir", "afile"], ["afile", "not a directory"]),
    "out over the checkpoint resumed": ([*FIT, "--optimizer", "adam", "--resume", "run.ckpt", "--out", "run.ckpt"], ["--out run.ckpt would overwrite the checkpoint to resume (--resume)"]),
    "plot over the checkpoint resumed": ([*FIT, "--optimizer", "adam", "--resume", "fit.png"], ["--plot fit.png would overwrite the checkpoint to resume"]),
    "checkpoint over --out": ([*FIT, "--optimizer", "adam", "--checkpoint", "result.json"], ["--checkpoint result.json would overwrite --out"]),
    "checkpoint over the data": ([*FIT, "--optimizer", "adam", "--checkpoint", "data.csv"], ["--checkpoint data.csv would overwrite the data file"]),
    "--tolerance of a single fit": ([*FIT, "--tolerance", "1e-4"], ["--tolerance is for group fits (--group-by)", "drop it"]),
    "--refit-failed of a single fit": ([*FIT, "--refit-failed"], ["--refit-failed is for group fits (--group-by)"]),
    "--chunk of a single fit": ([*FIT, "--chunk", "4"], ["--chunk is for group fits (--group-by)"]),
    "--checkpoint-every without --checkpoint": ([*FIT, "--optimizer", "adam", "--checkpoint-every", "5"], ["--checkpoint-every needs --checkpoint"]),
    "group --checkpoint-every": ([*FIT, "--group-by", "t_u", "--checkpoint-every", "5"], ["--checkpoint-every does not apply to --group-by fits"]),
    "--loss-scale of mse": ([*FIT, "--loss-scale", "3"], ["--loss-scale is the residual scale of the robust losses", "the mse loss has none"]),
    "--loss-scale of mae": ([*FIT, "--loss", "mae", "--loss-scale", "3"], ["the mae loss has none", "--loss"]),
}

for _case, (_args, _) in INPUT_ERRORS.items():
    if _args[0] == "fit":  # ask for every output the case does not set itself
        _args = _args + [item for option, path in OUTPUTS.items() if option not in _args for item in (option, path)]
    scenario(_case, *_args)(_broken_files)

for _args in (["--help"], ["fit", "--help"], ["explain", "-h"]):
    scenario(" ".join(_args), *_args)(_nothing)

scenario("debug", "--debug", "fit", "nope.csv", "--model", LINE, "--y", "t_c")(_nothing)


# -- answers before torch ------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["--help", "fit --help", "explain -h"])
def test_help_answers_without_torch(outcomes: dict[str, Future[Outcome]], case: str) -> None:
    run = outcomes[case].result().run
    assert run.returncode == 0, run
    assert "Usage" in run.stdout and "--help" in run.stdout and run.stderr == ""
    assert not run.torch_imported


def test_installed_console_script_shows_help(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("gradfit")
    if not script.exists():
        pytest.skip("gradfit is not installed as a console script in this environment")
    completed = subprocess.run([script, "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert completed.returncode == 0 and "fit" in completed.stdout and "predict" in completed.stdout


@pytest.mark.parametrize("case", list(INPUT_ERRORS))
def test_bad_input_is_one_line_exit_2_before_torch_and_writes_nothing(
    outcomes: dict[str, Future[Outcome]], case: str
) -> None:
    outcome = outcomes[case].result()
    assert_one_line_error(outcome.run, *INPUT_ERRORS[case][1])
    assert outcome.run.stdout == ""
    assert not outcome.run.torch_imported, "this error should be found before torch is imported"
    assert outcome.files_after == outcome.files_before, "an output or temporary file was left behind"


@uses("debug")
def test_debug_shows_the_traceback_instead(outcomes: dict[str, Future[Outcome]]) -> None:
    run = outcomes["debug"].result().run
    assert run.returncode == 2  # still the exit code of bad input
    assert "Traceback" in run.stderr and "DataError: file not found: nope.csv" in run.stderr


# -- fits: CSV, Parquet, NDJSON, JSON output, predict, plots ---------------------------------------
@uses("csv")
def test_fit_csv_prints_table_writes_json_and_plot_and_predict_applies_it(
    outcomes: dict[str, Future[Outcome]],
) -> None:
    outcome = outcomes["csv"].result()
    run, folder = outcome.run, outcome.folder
    slope, intercept = np.polyfit(T_U, T_C, 1)
    assert run.returncode == 0 and run.stderr == "", run
    assert not run.torch_imported, "an exact least-squares fit of a formula needs no torch"
    for label in ("train loss", "validation loss", "iterations", "stop reason", "solver", "linear", "11 points"):
        assert label in run.stdout, label
    assert table_value(run.stdout, "w") == pytest.approx(slope, rel=1e-7)
    assert table_value(run.stdout, "b") == pytest.approx(intercept, rel=1e-7)

    saved = json.loads((folder / "result.json").read_text())
    assert saved["input_names"] == ["t_u"]
    assert [p["name"] for p in saved["parameters"]] == ["w", "b"]
    assert [p["value"] for p in saved["parameters"]] == pytest.approx([slope, intercept], rel=1e-10)
    assert saved["train_loss"] == pytest.approx(mse(np.array([slope, intercept]), slice(None)), rel=1e-10)
    assert saved["n_train"] == 11 and saved["val_loss"] is None
    assert_png(folder / "fit.png")
    assert outcome.files_after == outcome.files_before | {"result.json", "fit.png"}

    new_t_u = np.array([0.0, 32.0, 50.5, 212.0])
    write_frame(folder / "new.csv", pl.DataFrame({"t_u": new_t_u}))
    expected = np.polyval([slope, intercept], new_t_u)
    printed = gradfit("predict", "result.json", "new.csv", cwd=folder)
    assert printed.returncode == 0 and printed.stderr == "", printed
    assert not printed.torch_imported
    table = pl.read_csv(printed.stdout.encode())
    assert table.columns == ["t_u", "prediction"]
    np.testing.assert_allclose(table["prediction"].to_numpy(), expected, rtol=1e-10)

    written = gradfit("predict", "result.json", "new.csv", "--out", "pred.parquet", "--column", "t_c_hat", cwd=folder)
    assert written.returncode == 0, written
    np.testing.assert_allclose(pl.read_parquet(folder / "pred.parquet")["t_c_hat"].to_numpy(), expected, rtol=1e-10)


@uses("parquet")
def test_fit_parquet_with_ndjson_validation_file_and_nan_omit(outcomes: dict[str, Future[Outcome]]) -> None:
    outcome = outcomes["parquet"].result()
    run = outcome.run
    line = np.polyfit(T_U[:8], T_C[:8], 1)
    assert run.returncode == 0 and run.stderr == "", run
    assert "(3 points)" in run.stdout and "(mse, 8 points; 1 row left out (missing or non-finite values))" in run.stdout
    saved = json.loads((outcome.folder / "result.json").read_text())
    assert [p["value"] for p in saved["parameters"]] == pytest.approx(list(line), rel=1e-10)
    assert (saved["n_train"], saved["n_val"]) == (8, 3)
    assert saved["val_loss"] == pytest.approx(mse(line, slice(8, None)), rel=1e-10)


@uses("sgd scaled")
def test_sgd_on_raw_readings_converges_with_scaling_and_a_seeded_holdout(
    outcomes: dict[str, Future[Outcome]],
) -> None:
    outcome = outcomes["sgd scaled"].result()
    run = outcome.run
    assert run.returncode == 0 and run.stderr == "", run
    assert "epochs" in run.stdout and "sgd" in run.stdout and "(2 points)" in run.stdout
    saved = json.loads((outcome.folder / "result.json").read_text())
    assert saved["solver"] == "gradient" and saved["iterations"] == 3000
    assert (saved["n_train"], saved["n_val"]) == (9, 2)
    assert len(saved["history"]["train"]) == len(saved["history"]["val"]) == 3000
    fitted = [p["value"] for p in saved["parameters"]]
    # which two readings were held out? exactly one pair's least-squares line matches the fit
    matches = []
    for pair in itertools.combinations(range(T_U.size), 2):
        keep = np.setdiff1d(np.arange(T_U.size), pair)
        line = np.polyfit(T_U[keep], T_C[keep], 1)
        if np.allclose(fitted, line, rtol=1e-5):
            matches.append((np.array(pair), line))
    assert len(matches) == 1, matches
    held_out, line = matches[0]
    assert saved["val_loss"] == pytest.approx(mse(line, held_out), rel=1e-4)
    assert_png(outcome.folder / "loss.png")


@uses("sgd unscaled")
def test_sgd_without_scaling_diverges_says_what_to_change_and_writes_nothing(
    outcomes: dict[str, Future[Outcome]],
) -> None:
    outcome = outcomes["sgd unscaled"].result()
    assert_one_line_error(outcome.run, "diverged", "--opt lr=", "--no-scale")
    assert outcome.run.stdout == ""
    assert outcome.files_after == outcome.files_before


@uses("iteration limit")
def test_a_fit_stopped_by_its_iteration_limit_warns_writes_its_result_and_exits_0_without_a_loss_history(
    outcomes: dict[str, Future[Outcome]],
) -> None:
    outcome = outcomes["iteration limit"].result()
    assert outcome.run.returncode == 0, outcome.run.stderr
    assert "warning: the fit did not succeed (status max_iter)" in " ".join(outcome.run.stdout.split())
    record = json.loads((outcome.folder / "result.json").read_text())
    assert record["status"] == "max_iter" and record["iterations"] == 2 and not record["success"]
    assert "written: result.json\n--plot-history loss.png not written: the lm solver has no epochs to draw" in outcome.run.stdout
    assert outcome.files_after == outcome.files_before | {"result.json"}


@uses("not finite at the start")
def test_a_start_where_the_model_is_not_finite_is_one_line_and_writes_nothing(
    outcomes: dict[str, Future[Outcome]],
) -> None:
    outcome = outcomes["not finite at the start"].result()
    assert_one_line_error(outcome.run, "not finite at the starting values", "nothing was written")
    assert outcome.files_after == outcome.files_before


# -- explain and demo -------------------------------------------------------------------------------
@uses("explain")
def test_explain_shows_the_symbolic_gradient_and_three_matching_values(
    outcomes: dict[str, Future[Outcome]],
) -> None:
    run = outcomes["explain"].result().run
    assert run.returncode == 0 and run.stderr == "", run
    assert "df/dw = t_u" in run.stdout and "dL/dw = mean(2*(f - y)*t_u)" in run.stdout
    assert "df/db = 1" in run.stdout and "dL/db = mean(2*(f - y))" in run.stdout
    residual = 1.0 * T_U + 0.0 - T_C
    reference = {"w": np.mean(2 * residual * T_U), "b": np.mean(2 * residual)}
    assert reference["w"] == pytest.approx(4517.2966, abs=5e-4) and reference["b"] == pytest.approx(82.6)
    for name, value in reference.items():
        row = re.search(rf"^{SEP}{name}{SEP}{SEP.join([NUMBER] * 4)}", run.stdout, re.MULTILINE)
        assert row, run.stdout
        at, by_hand, autograd, finite = (float(row.group(i)) for i in range(1, 5))
        assert at == {"w": 1.0, "b": 0.0}[name]
        assert by_hand == pytest.approx(value, rel=1e-9) and autograd == pytest.approx(value, rel=1e-9)
        assert finite == pytest.approx(value, rel=1e-6)


@uses("demo")
def test_demo_prints_the_books_numbers_and_writes_the_figure(outcomes: dict[str, Future[Outcome]]) -> None:
    outcome = outcomes["demo"].result()
    run = outcome.run
    assert run.returncode == 0 and run.stderr == "", run
    match = re.search(r"w = (-?[\d.]+), b = (-?[\d.]+), loss at epoch 5000 = ([\d.]+)", run.stdout)
    assert match, run.stdout
    assert match.group(1) == "5.3671" and match.group(2) == "-17.3012"
    assert float(match.group(3)) == pytest.approx(2.927648, abs=1.5e-6)  # the book prints 6 decimals
    assert_png(outcome.folder / "figures" / "thermometer.png")


def test_a_reader_that_closes_the_pipe_early_loses_no_output(thermometer_csv, tmp_path):
    """`gradfit fit ... --out r.json | head -1` wrote no r.json: the report was printed first, and the
    closed pipe ended the run before the outputs."""
    out = tmp_path / "r.json"
    command = [sys.executable, "-m", "gradfit.cli", "fit", str(thermometer_csv), "--model", "w*t_u + b", "--y", "t_c", "--out", str(out)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=tmp_path) as process:
        assert process.stdout is not None
        process.stdout.close()  # as head does once it has its lines: every later print fails
        process.wait(timeout=120)
    assert json.loads(out.read_text())["parameters"][0]["name"] == "w"
