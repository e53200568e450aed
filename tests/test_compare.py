"""Model comparison: same split for every model, losses checked against numpy least squares, and a
verdict that picks the known truth on synthetic data.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gradfit
from gradfit.compare import ModelScore, _chosen, _flag_gaps, _history_overfitting, _history_rise, _verdict, compare
from gradfit.data import holdout_split, kfold_indices
from gradfit.errors import ModelError, OptionError
from gradfit.report_text import format_number
from gradfit.result import History

T_C = np.array([0.5, 14.0, 15.0, 28.0, 11.0, 8.0, 3.0, -4.0, 6.0, 13.0, 21.0])
T_U = np.array([35.7, 55.9, 58.2, 81.9, 56.3, 48.9, 33.9, 21.8, 48.4, 60.4, 68.4])
QUADRATIC = "w2*t_u**2 + w1*t_u + b"
PNG = b"\x89PNG\r\n\x1a\n"


def _polyfit_losses(x: np.ndarray, y: np.ndarray, degree: int, train: np.ndarray, val: np.ndarray) -> tuple[float, np.ndarray]:
    """Training MSE and per-point validation squared errors of a numpy polynomial fit."""
    coef = np.polyfit(x[train], y[train], degree)
    train_loss = float(np.mean((np.polyval(coef, x[train]) - y[train]) ** 2))
    return train_loss, (np.polyval(coef, x[val]) - y[val]) ** 2


def _expected_winner(simple: str, complex_: str, simple_points: np.ndarray, complex_points: np.ndarray) -> str:
    """The documented rule for two models, computed from per-point validation losses."""
    if simple_points.mean() <= complex_points.mean():
        return simple
    diff = simple_points - complex_points
    se = diff.std(ddof=1) / math.sqrt(diff.size)
    return simple if simple_points.mean() - complex_points.mean() <= se else complex_


# -- the chapter's thermometer ----------------------------------------------------------------------
def test_thermometer_holdout_quadratic_trains_better_and_validation_decides() -> None:
    result = compare({"linear": "linear", "quadratic": QUADRATIC}, {"t_u": T_U, "t_c": T_C}, "t_c", val=0.2, seed=0)
    train_idx, val_idx = holdout_split(11, 0.2, 0)
    lin_train, lin_val = _polyfit_losses(T_U, T_C, 1, train_idx, val_idx)
    quad_train, quad_val = _polyfit_losses(T_U, T_C, 2, train_idx, val_idx)
    lin, quad = result["linear"], result["quadratic"]
    np.testing.assert_allclose([lin.train_loss, quad.train_loss], [lin_train, quad_train], rtol=1e-9)
    np.testing.assert_allclose([lin.val_loss, quad.val_loss], [lin_val.mean(), quad_val.mean()], rtol=1e-9)
    # the chapter's first answer: the quadratic's training loss is lower
    assert quad.train_loss < lin.train_loss
    assert (lin.n_params, quad.n_params) == (2, 3) and lin.aic is not None and quad.bic is not None
    assert lin.model == "w*t_u + b" and result.y_name == "t_c"
    # what validation says follows the documented rule
    winner = _expected_winner("linear", "quadratic", lin_val, quad_val)
    assert result.best == winner and result.verdict.startswith(f"{winner} generalises best")
    assert result.train.n_rows + result.validation.n_rows == 11


def test_thermometer_cross_validation_matches_numpy_folds() -> None:
    result = compare({"linear": "linear", "quadratic": QUADRATIC}, {"t_u": T_U}, T_C, val=0.0, cv=5, seed=0)
    folds = kfold_indices(11, 5, 0)
    for label, degree in (("linear", 1), ("quadratic", 2)):
        fold_losses = [_polyfit_losses(T_U, T_C, degree, t, v) for t, v in folds]
        score = result[label]
        np.testing.assert_allclose(score.cv_val_loss, np.mean([p.mean() for _, p in fold_losses]), rtol=1e-9)
        np.testing.assert_allclose(score.cv_train_loss, np.mean([t for t, _ in fold_losses]), rtol=1e-9)
        assert score.val_loss is None and score.result is not None and score.result.n_train == 11
    out_of_fold = {d: np.empty(11) for d in (1, 2)}
    for t, v in folds:
        for degree in (1, 2):
            out_of_fold[degree][v] = _polyfit_losses(T_U, T_C, degree, t, v)[1]
    winner = _expected_winner("linear", "quadratic", out_of_fold[1], out_of_fold[2])
    assert result.best == winner and result.criterion == "5-fold cross-validated loss"


# -- synthetic data with a known truth ---------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quadratic_truth_wins_over_linear(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    x = rng.uniform(0.0, 10.0, 60)
    y = 0.3 * x**2 - 2.0 * x + 1.0 + rng.normal(0.0, 0.5, x.size)
    assert compare(["linear", "poly:2"], x, y, val=0.25, seed=seed).best == "poly:2"
    assert compare(["linear", "poly:2"], x, y, val=0.0, cv=5, seed=seed).best == "poly:2"


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_linear_truth_with_few_points_does_not_lose_to_an_overfitting_polynomial(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    x = np.sort(rng.uniform(0.0, 10.0, 14))
    y = 2.0 * x + 1.0 + rng.normal(0.0, 1.0, x.size)
    result = compare(["linear", "poly:8"], x, y, val=0.0, cv=7, seed=seed)
    assert result.best == "linear"
    poly = result["poly:8"]
    assert poly.train_loss < result["linear"].train_loss  # it fits the training points better...
    assert poly.overfitting is not None and "Overfitting: poly:8" in result.verdict  # ...and is flagged
    ratio = float(poly.cv_val_loss) / float(poly.cv_train_loss)  # in the words of what it compares
    assert poly.overfitting.startswith(f"cross-validated loss {format_number(float(poly.cv_val_loss), 3)} ")
    assert (f"{ratio:.3g}× mean training loss over the folds" in poly.overfitting) or ("≫ mean training loss over the folds" in poly.overfitting)


# -- the rule itself ---------------------------------------------------------------------------------
def _score(label: str, n_params: int, points: list[float]) -> ModelScore:
    values = np.array(points)
    return ModelScore(label, label, n_params, train_loss=0.5, val_loss=float(values.mean()), pointwise=values)


def test_ties_within_noise_go_to_fewer_parameters() -> None:
    simple = _score("simple", 2, [1.0, 2.0, 1.5, 0.5])
    close = _score("close", 3, [0.8, 2.1, 1.2, 0.6])  # lower on average, but within one standard error
    best, verdict = _verdict([simple, close], "validation loss")
    assert best == "simple" and "within noise" in verdict
    clear = _score("clear", 3, [0.1, 0.2, 0.15, 0.05])
    assert _verdict([simple, clear], "validation loss")[0] == "clear"


def test_failed_models_are_reported_and_left_out() -> None:
    rng = np.random.default_rng(5)
    x = np.linspace(0.0, 1.0, 10)
    result = compare(["linear", "poly:8"], x, 3 * x + rng.normal(0, 0.1, 10), val=0.2)
    assert result.best == "linear"
    assert result["poly:8"].error is not None and "Not compared: poly:8" in result.verdict


def test_history_rule() -> None:
    falling = np.linspace(1.0, 0.1, 50)
    u_shape = np.concatenate([np.linspace(1.0, 0.3, 25), np.linspace(0.3, 0.6, 25)])
    assert _history_rise(falling, u_shape) is not None
    assert _history_rise(falling, falling) is None
    assert _history_rise(falling, np.linspace(0.2, 0.6, 50)) is not None  # worse from the first epoch on
    assert _history_rise(falling, np.linspace(0.6, 0.2, 50)) is None
    assert _history_rise(np.linspace(0.1, 0.1, 50), u_shape) is None  # training did not fall


def test_the_overfitting_text_says_which_fit_it_describes() -> None:
    falling = tuple(np.linspace(1.0, 0.1, 50))
    u_shape = tuple(np.concatenate([np.linspace(1.0, 0.3, 25), np.linspace(0.3, 0.6, 25)]))
    rising, steady = History(falling, u_shape), History(falling, falling)
    histories = [("on the validation split", steady, None), ("in fold 1 of 2", rising, None), ("in fold 2 of 2", rising, None)]
    text = _history_overfitting(histories)
    assert text is not None and text.endswith("while training loss kept falling (in fold 1 of 2)")
    assert _history_overfitting(histories[:2]) is not None  # half of the fits
    assert _history_overfitting([histories[0], histories[0], histories[1]]) is None  # fewer than half


def test_a_rise_within_the_noise_of_the_validation_points_is_not_overfitting() -> None:
    falling = np.linspace(1.0, 0.1, 50)
    u_shape = np.concatenate([np.linspace(1.0, 0.3, 25), np.linspace(0.3, 0.6, 25)])
    assert _history_rise(falling, u_shape, noise=0.2) is not None
    assert _history_rise(falling, u_shape, noise=0.5) is None  # a rise of 0.3 against a standard error of 0.5


def _scored(label: str, n_params: int, train: float, points: list[float]) -> ModelScore:
    values = np.array(points)
    return ModelScore(label, label, n_params, train_loss=train, val_loss=float(values.mean()), pointwise=values)


def test_overfitting_is_judged_against_the_chosen_model_not_the_simplest() -> None:
    # an underfitting straight line has the widest gap of all; it used to hide the interpolating polynomial
    line = _scored("linear", 2, 0.05, [0.9, 0.02, 0.5, 0.01, 0.6])
    truth = _scored("exp_decay", 3, 0.002, [0.004, 0.001, 0.003, 0.002, 0.005])
    wiggly = _scored("poly:7", 8, 1e-20, [0.3, 0.001, 0.1, 0.05, 0.2])
    lucky = _scored("poly:2", 3, 0.001, [0.004, 0.002, 0.003, 0.002, 0.004])  # as many parameters as the chosen one
    scores = [line, truth, wiggly, lucky]
    chosen = _chosen(scores)
    assert chosen is truth
    flagged = {s.label: s.overfitting for s in _flag_gaps(scores, chosen)}
    assert flagged["poly:7"] is not None and "training loss" in flagged["poly:7"]
    assert flagged["exp_decay"] is None and flagged["linear"] is None and flagged["poly:2"] is None


def test_a_model_worse_only_within_noise_is_not_flagged() -> None:
    chosen = _scored("simple", 2, 0.5, [1.0, 2.0, 1.5, 0.5])
    close = _scored("complex", 5, 0.1, [1.1, 2.2, 1.5, 0.6])  # 0.1 above, the difference's standard error 0.04
    noisy = _scored("noisy", 5, 0.1, [0.2, 4.0, 0.3, 1.5])  # 0.25 above with a standard error of 0.9
    flagged = {s.label: s.overfitting for s in _flag_gaps([chosen, close, noisy], chosen)}
    assert flagged["complex"] is not None and flagged["noisy"] is None and flagged["simple"] is None


# -- networks, several inputs, options ----------------------------------------------------------------
def test_networks_are_copied_and_scored_without_aic() -> None:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    before = [p.detach().clone() for p in net.parameters()]
    x = np.linspace(-1.0, 1.0, 30)
    result = compare({"net": net, "mlp": "mlp:4", "line": "linear"}, x, np.sin(2 * x), epochs=100)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert result["mlp"].n_params == 1 * 4 + 4 + 4 + 1 == result["net"].n_params
    assert result["mlp"].aic is None and result["line"].aic is not None
    assert len(result["mlp"].result.history.val) == 100
    assert result["line"].result.solver == "linear"  # epochs are shared: the exact solve ignores them


def test_a_comparison_iterates_over_its_scores_in_the_order_given() -> None:
    x = np.linspace(0.0, 1.0, 20)
    result = compare({"quadratic": "poly:2", "line": "linear"}, x, 1 + 2 * x, val=0.25)
    assert [score.label for score in result] == ["quadratic", "line"] == [s.label for s in result.scores]
    assert len(result) == 2 and result["line"] is result.scores[1]


def test_several_inputs_nan_rows_and_figures(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0, 1, 40), rng.uniform(0, 1, 40)
    y = 2 * a - b + rng.normal(0, 0.05, 40)
    a[3] = np.nan
    result = compare(["linear", "w*a + c"], {"a": a, "b": b, "y": y}, "y", nan_policy="omit")
    assert result.train.n_rows + result.validation.n_rows == 39
    assert result["linear"].model == "w_a*a + w_b*b + b_" and result.best == "linear"
    assert result.plot(tmp_path / "parity.png").read_bytes().startswith(PNG)
    one = compare(["linear", "poly:2", "poly:6"], {"t_u": T_U, "t_c": T_C}, "t_c", cv=3)
    assert one.plot(tmp_path / "overlay.png").read_bytes().startswith(PNG)
    assert one.plot_validation(tmp_path / "val.svg").read_text().lstrip().startswith("<?xml")
    assert "poly:6" in str(one) and one.headers()[4] == "3-fold CV loss ± sd"


def test_bad_calls_say_what_to_do() -> None:
    with pytest.raises(OptionError, match="val > 0"):
        compare(["linear"], T_U, T_C, val=0.0)
    with pytest.raises(ModelError, match="at least one"):
        compare([], T_U, T_C)
    with pytest.raises(ModelError, match="a list of models"):
        compare("linear", T_U, T_C)


def test_gradfit_compare_is_callable_in_any_import_order() -> None:
    import gradfit.compare as module

    assert callable(module) and callable(gradfit.compare)
    assert gradfit.compare(["linear"], T_U, T_C).best == "linear"


# -- command line -------------------------------------------------------------------------------------
def _cli(args: list[str]) -> int:
    from gradfit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return int(exit_info.value.code)


def test_cli_prints_table_and_verdict_and_writes_figures(thermometer_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    overlay, bars = tmp_path / "overlay.png", tmp_path / "val.png"
    code = _cli([
        "compare", str(thermometer_csv), "--y", "t_c", "--model", "linear", "--model", "w2*t_u**2+w1*t_u+b",
        "--model", "mlp:4", "--epochs", "50", "--cv", "3", "--plot", str(overlay), "--plot-val", str(bars),
    ])
    out = capsys.readouterr().out
    assert code == 0 and "generalises best" in out and "3-fold" in out
    assert overlay.read_bytes().startswith(PNG) and bars.read_bytes().startswith(PNG)


def test_cli_errors_before_importing_torch(thermometer_csv: Path, tmp_path: Path) -> None:
    code = (
        "import sys\nfrom gradfit.cli import main\ntry:\n    main(sys.argv[1:])\n"
        "finally:\n    print('torch' in sys.modules)\n"
    )
    cases = [
        (["--model", "w*t_u +", "--y", "t_c"], "FormulaError"),
        (["--model", "poly:x", "--y", "t_c"], "whole number"),
        (["--model", "linear", "--y", "nope"], "no column 'nope'"),
        (["--model", "linear", "--y", "t_c", "--plot", str(tmp_path / "f.xyz")], "cannot write a '.xyz'"),
    ]
    for args, message in cases:
        run = subprocess.run([sys.executable, "-c", code, "compare", str(thermometer_csv), *args], capture_output=True, text=True)
        assert run.returncode == 2 and message in run.stderr and run.stdout.strip() == "False", (args, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1


def test_a_comparison_where_no_model_could_be_fitted_exits_2_and_draws_nothing(tmp_path, thermometer_csv) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "gradfit.cli", "compare", str(thermometer_csv), "--y", "t_c", "--model", "linear", "--model", "poly:2",
         "--optimizer", "sgd", "--opt", "lr=5", "--epochs", "200", "--val", "0.2", "--plot", str(tmp_path / "overlay.png")],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 2 and "no model could be fitted (the reasons are above)" in run.stderr, run.stderr
    assert "Not compared: linear" in run.stdout and not (tmp_path / "overlay.png").exists()
