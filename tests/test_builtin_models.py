"""Built-in models: each recovers known parameters from synthetic data, starting from its own guess.

References: the true parameters the data were made with, and scipy's ``curve_fit`` started at the
truth (it must land on the same least-squares optimum as gradfit started from the guess).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy.optimize import curve_fit

import gradfit
from gradfit.builtin_models import (
    BuiltinFormulaModel,
    BuiltinModuleModel,
    builtin_model,
    check_builtin,
    guess_exp_decay,
    is_builtin,
    model_for,
    usable_name,
)
from gradfit.config import FitOptions
from gradfit.data import as_dataset
from gradfit.errors import ModelError
from gradfit.fitting import fit_dataset
from gradfit.model import FormulaModel, make_model


def _exp_decay(x, a, k, c):
    return a * np.exp(-k * x) + c


def _logistic(x, L, k, x0, c):
    return L / (1.0 + np.exp(-k * (x - x0))) + c


def _michaelis_menten(x, vmax, km):
    return vmax * x / (km + x)


def _gaussian(x, a, mu, s, c):
    return a * np.exp(-((x - mu) ** 2) / (2 * s**2)) + c


#: name -> (numpy model, true parameters in the built-in's order, x grid, noise sd)
CASES = {
    "exp_decay": (_exp_decay, (30.0, 0.045, 12.0), np.linspace(0.0, 120.0, 50), 0.3),
    "logistic": (_logistic, (-8.0, 0.9, 14.0, 20.0), np.linspace(0.0, 30.0, 60), 0.15),
    "michaelis_menten": (_michaelis_menten, (3.2, 45.0), np.geomspace(2.0, 400.0, 30), 0.03),
    "gaussian": (_gaussian, (5.0, 62.0, 3.5, 1.0), np.linspace(0.0, 100.0, 120), 0.1),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_recovers_known_parameters_from_its_guess(name: str) -> None:
    function, truth, x, noise = CASES[name]
    rng = np.random.default_rng(7)
    y = function(x, *truth) + rng.normal(0.0, noise, x.size)
    data = as_dataset({"t": x}, y)
    model = model_for(name, data)
    assert isinstance(model, BuiltinFormulaModel) and model.input_names == ("t",)
    result = fit_dataset(model, data, FitOptions())
    assert result.success and result.solver == "lm"
    values = result.values
    reference, _ = curve_fit(function, x, y, p0=truth)
    np.testing.assert_allclose(values, reference, rtol=1e-6, atol=1e-9)
    stderr = np.array([result.stderr[n] for n in result.param_names])
    assert np.all(np.abs(values - np.array(truth)) < 5 * stderr), (values, truth, stderr)


@pytest.mark.parametrize("name", sorted(CASES))
def test_guess_alone_is_near_the_truth(name: str) -> None:
    function, truth, x, _ = CASES[name]
    model = builtin_model(name, ["t"])
    guess = model.initial_guess({"t": x}, function(x, *truth))
    np.testing.assert_allclose([guess[p] for p in model.param_names], truth, rtol=0.25)


def test_exp_decay_guess_is_close_on_clean_data_far_from_zero() -> None:
    x = np.linspace(100.0, 105.0, 40)
    y = 4.0 * np.exp(-1.3 * (x - 100.0)) - 2.0
    a, k, c = guess_exp_decay(x, y)
    np.testing.assert_allclose([k, c], [1.3, -2.0], rtol=0.01)
    np.testing.assert_allclose(_exp_decay(x, a, k, c), y, atol=0.02)


def test_rising_exponential_and_falling_logistic_keep_canonical_signs() -> None:
    x = np.linspace(0.0, 10.0, 50)
    growth = builtin_model("exp_decay", ["x"]).initial_guess({"x": x}, 0.5 * np.exp(0.3 * x) + 1.0)
    assert growth["k"] < 0 < growth["a"]
    falling = builtin_model("logistic", ["x"]).initial_guess({"x": x}, _logistic(x, -3.0, 2.0, 5.0, 4.0))
    assert falling["k"] > 0 > falling["L"]


@pytest.mark.parametrize(("spec", "degree"), [("linear", 1), ("poly:1", 1), ("poly:2", 2), ("poly:5", 5)])
def test_linear_and_polynomials_match_polyfit(thermometer: tuple[np.ndarray, np.ndarray], spec: str, degree: int) -> None:
    t_u, t_c = thermometer
    result = gradfit.fit(spec, {"t_u": t_u}, t_c)
    assert result.solver == "linear"
    np.testing.assert_allclose(result.values, np.polyfit(t_u, t_c, degree), rtol=1e-7)
    assert result.model == ("w*t_u + b" if degree == 1 else "w2*t_u**2 + w1*t_u + b" if degree == 2 else result.model)


def test_linear_over_several_inputs_matches_lstsq() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(30, 3))
    y = X @ [1.5, -2.0, 0.25] + 4.0 + rng.normal(0, 0.1, 30)
    result = gradfit.fit("linear", X, y)
    assert result.model == "w_x0*x0 + w_x1*x1 + w_x2*x2 + b"
    reference = np.linalg.lstsq(np.column_stack([X, np.ones(30)]), y, rcond=None)[0]
    np.testing.assert_allclose(result.values, reference, rtol=1e-9)


def test_names_come_from_the_data_and_avoid_columns() -> None:
    assert builtin_model("poly:2", ["b"]).description == "w2*b**2 + w1*b + b_"
    assert builtin_model("exp_decay", ["k"]).param_names == ("a", "k_", "c")
    assert builtin_model("gaussian").input_names == ("x",)
    assert builtin_model("poly:2(t_u)", ["t_c2", "t_u"]).description == "w2*t_u**2 + w1*t_u + b"
    assert isinstance(make_model("michaelis_menten", ["s"]), FormulaModel)


@pytest.mark.parametrize(
    ("spec", "columns", "message"),
    [
        ("poly", ["x"], "needs a size"),
        ("poly:0", ["x"], "from 1 to"),
        ("poly:two", ["x"], "whole number"),
        ("linear:3", ["x"], "takes no"),
        ("gaussian", ["a", "b"], "name it, e.g. 'gaussian(a)'"),
        ("poly:2(z)", ["x"], "no data column 'z'"),
        ("exp_decay", ["temp (C)"], "cannot be used as a name"),
        ("logistic", ["exp"], "cannot be used as a name"),
    ],
)
def test_bad_specs_say_what_to_do(spec: str, columns: list[str], message: str) -> None:
    with pytest.raises(ModelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        builtin_model(spec, columns)
    with pytest.raises(ModelError):
        check_builtin(spec, columns)


def test_recognised_names() -> None:
    assert is_builtin("linear") and is_builtin(" poly:3 ") and is_builtin("mlp:8(x)")
    assert not is_builtin("w*x + b") and not is_builtin("linearity") and not is_builtin(3)
    assert usable_name("t_u") and not usable_name("pi") and not usable_name("lambda") and not usable_name("1x")


def test_user_starting_values_win_over_the_guess() -> None:
    x = np.linspace(0.0, 10.0, 30)
    data = as_dataset(x, 3.0 * np.exp(-0.5 * x) + 1.0)
    model = model_for("exp_decay", data, params={"k": 0.2})
    starts = {p.name: p.start for p in model.parameters}
    assert starts["k"] == 0.2 and starts["a"] != 1.0


def test_mlp_is_seeded_and_sized() -> None:
    import torch

    first = builtin_model("mlp:8", ["a", "b"], seed=1)
    again = builtin_model("mlp:8", ["a", "b"], seed=1)
    other = builtin_model("mlp:8", ["a", "b"], seed=2)
    assert isinstance(first, BuiltinModuleModel) and first.description == "mlp:8"
    assert first.n_params == 2 * 8 + 8 + 8 + 1
    state = torch.random.get_rng_state()
    weights = [p.detach() for p in first.module.parameters()]
    assert all(torch.equal(u, v) for u, v in zip(weights, again.module.parameters()))
    assert not torch.equal(weights[0], next(other.module.parameters()))
    assert torch.equal(state, torch.random.get_rng_state())  # the global generator is left alone


def test_mlp_fits_a_curve() -> None:
    x = np.linspace(-2.0, 2.0, 40)
    result = gradfit.fit("mlp:8", x, np.tanh(2.0 * x), epochs=150, optimizer="adam", optimizer_options={"lr": 0.05})
    assert result.model_kind == "module" and result.train_loss < 0.01 * np.var(np.tanh(2.0 * x))


def test_importing_builtin_models_does_not_import_torch() -> None:
    code = "import sys, gradfit.builtin_models as b; b.check_builtin('mlp:4'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
