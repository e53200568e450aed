"""Models: parameters from formulas and signatures, overrides, bounds syntax."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import gradfit
from gradfit.errors import ModelError
from gradfit.model import Parameter, make_model, parse_assignments, parse_bounds


def test_formula_names_split_into_inputs_and_parameters():
    model = make_model("w2*t_u**2 + w1*t_u + b", ["t_u", "t_c"])
    assert model.input_names == ("t_u",)
    assert model.param_names == ("w2", "w1", "b")
    assert model.is_linear
    assert not make_model("a*exp(-k*t)", ["t"]).is_linear


def test_as_parameters_overrides_a_column_of_the_same_name():
    model = make_model("w*x + b", ["x", "b"], as_parameters=["b"])
    assert model.param_names == ("w", "b")


def test_callable_parameters_and_defaults_from_signature():
    def decay(t, a=2.0, k=0.5):
        return a * t * k

    model = make_model(decay, ["time"])
    assert model.param_names == ("a", "k")
    assert [p.start for p in model.parameters] == [2.0, 0.5]
    assert model.input_names == ("time",)


def test_unknown_override_names_the_parameters():
    with pytest.raises(ModelError, match="'q' is not a parameter of the model — its parameters are w, b"):
        make_model("w*x + b", ["x"], {"q": 1.0})


def test_parameter_checks_bounds_and_fixed():
    with pytest.raises(ModelError, match="lower bound 2.0 above upper bound 1.0"):
        Parameter("k", lower=2.0, upper=1.0)
    with pytest.raises(ModelError, match="fixed but has no value"):
        Parameter("k", fixed=True)
    # a start outside its bounds goes to the nearest one, just inside (lmfit clips to the bound)
    assert Parameter("k", init=-5.0, lower=0.0, upper=10.0).start == 1e-3
    assert Parameter("k", init=1.0, upper=0.3).start == pytest.approx(0.299)
    assert Parameter("k", init=50.0, lower=0.0, upper=10.0).start == pytest.approx(9.99)
    assert Parameter("k", init=3.0, lower=1.0, upper=1.0).start == 1.0
    assert Parameter("k", lower=2.0, upper=4.0).start == 3.0  # no start given: the middle of the box
    assert Parameter("k", lower=5.0).start == pytest.approx(5.005)


def test_parse_assignments_and_bounds():
    assert parse_assignments("w=1, b=-0.5") == {"w": 1.0, "b": -0.5}
    with pytest.raises(ModelError, match="not a number"):
        parse_assignments("w=one")
    assert parse_bounds("b>=0, 0<k<10, w<=5, 3 > z") == {
        "b": {"lower": 0.0}, "k": {"lower": 0.0, "upper": 10.0}, "w": {"upper": 5.0}, "z": {"upper": 3.0},
    }
    assert parse_bounds("10 > k > 0, 0 <= w <= inf") == {"k": {"upper": 10.0, "lower": 0.0}, "w": {"lower": 0.0, "upper": math.inf}}
    for bad in ("b", "b=0", "0<1", "a<b", "k<ten", "k<0<1", "0<k<1<2", "0<k>1", "k>1e400", "k<-inf", "k>nan"):
        with pytest.raises(ModelError):
            parse_bounds(bad)
    with pytest.raises(ModelError, match="'k' has two upper bounds"):
        parse_bounds("k<1, k<2")


def test_bounds_are_respected_and_flagged():
    from scipy.optimize import least_squares

    t = np.linspace(0, 4, 30)
    y = 2.0 * np.exp(-1.3 * t) + 0.05 * np.cos(7 * t)
    result = gradfit.fit("a*exp(-k*t)", {"t": t}, y, bounds="k<=1", params={"a": 1.0, "k": 0.5})
    reference = least_squares(lambda p: p[0] * np.exp(-p[1] * t) - y, [1.0, 0.5], bounds=([-np.inf, -np.inf], [np.inf, 1.0]), xtol=1e-15, ftol=1e-15, gtol=1e-15)
    assert result.params["k"] <= 1.0
    np.testing.assert_allclose(result.values, reference.x, rtol=1e-6)
    flagged = {p.name: p.at_bound for p in result.parameters}
    assert flagged == {"a": False, "k": True}
    assert any("at a bound" in w for w in result.warnings)


def test_fixed_parameter_in_a_nonlinear_fit():
    t = np.linspace(0, 4, 30)
    y = 2.0 * np.exp(-1.3 * t) + 0.5
    result = gradfit.fit("a*exp(-k*t) + c", {"t": t}, y, fix={"c": 0.5}, params={"a": 1.0, "k": 1.0})
    assert result.params["c"] == 0.5
    np.testing.assert_allclose([result.params["a"], result.params["k"]], [2.0, 1.3], rtol=1e-9)
    assert result.stderr["c"] is None or math.isnan(result.stderr["c"])


@pytest.mark.parametrize(("formula", "columns"), [("w*e + b", ["e"]), ("a*x + b*e", ["x", "e"]), ("a*x + pi*b", ["x", "pi"])])
def test_a_column_named_like_a_constant_the_formula_uses_is_refused_not_left_out(formula, columns):
    """The formula reads the constant: with another column in it, the fit used to leave the column
    out silently (b fitted to 2/e)."""
    name = "pi" if "pi" in columns else "e"
    with pytest.raises(ModelError, match=f"'{name}' in the formula .* is the constant {name} = .* data also have a column '{name}' — rename that column"):
        make_model(formula, columns)
    assert make_model("a*exp(-k*x)", ["x", "e"]).input_names == ("x",)  # a column the formula does not name is no matter


def _decay(t, a=1.0, k=1.0, c=0.0):
    return a * torch.exp(-k * t) + c


@pytest.mark.parametrize(
    ("function", "fragment"),
    [
        (lambda t, a=1.0: torch.as_tensor(np.asarray(a * t)), "calls numpy on the torch tensors it is given"),
        (lambda t, a=1.0: (a * t)[:5], "returned shape (5,) for inputs of shape (30,) — return one value per point"),
        (lambda t, a=1.0, k=1.0, c=0.0: _decay(t, a, k, c).float(), "returns float32 values in a float64 fit"),
    ],
)
def test_a_python_function_that_cannot_serve_as_a_model_is_a_model_error(function, fragment):
    t = np.linspace(0, 5, 30)
    with pytest.raises(ModelError, match=re.escape(fragment)):
        gradfit.fit(function, t, _decay(torch.as_tensor(t), 2.0, 0.7, 0.3).numpy())


def test_an_exception_inside_a_python_function_is_reported_with_its_cause():
    def broken(t, a=1.0):
        raise ValueError("boom\nsecond line")

    with pytest.raises(ModelError, match=r"broken\(t, a\) raised ValueError: boom — ") as caught:
        gradfit.fit(broken, np.arange(5.0), np.arange(5.0))
    assert isinstance(caught.value.__cause__, ValueError) and "\n" not in str(caught.value)


@pytest.mark.parametrize(("text", "fragment"), [("w=inf", "'w' must be a finite number"), ("w=nan", "'w' must be a finite number"), ("w=1,w=2", "gives 'w' twice")])
def test_assignments_must_be_finite_and_given_once(text, fragment):
    with pytest.raises(ModelError, match=fragment):
        parse_assignments(text)


def test_a_parameter_starting_or_fixed_at_a_non_finite_value_is_refused():
    with pytest.raises(ModelError, match="starting value inf — give a finite number"):
        Parameter("w", init=math.inf)
    with pytest.raises(ModelError, match="fixed value nan"):
        Parameter("w", init=math.nan, fixed=True)


def test_a_column_whose_name_a_formula_cannot_use_is_named_with_a_renaming_hint():
    frame = {"raw reading": np.arange(4.0), "temp (C)": np.arange(4.0)}
    with pytest.raises(ModelError, match=r"the column 'raw reading' is not a name a formula can use: rename it, e.g. to 'raw_reading'"):
        gradfit.fit("w*raw_reading + b", frame, np.arange(4.0))
    with pytest.raises(ModelError, match=r"columns such as 'raw reading' are not names a formula can use"):
        gradfit.fit("w*t + b", frame, np.arange(4.0))


def test_a_network_with_several_outputs_or_forward_arguments_is_a_model_error():
    # two outputs trained the first alone, silently; forward(x, z) failed deep in the training loop
    x = np.random.default_rng(0).standard_normal((20, 2))
    with pytest.raises(ModelError, match="the network gives 2 outputs per row and y is one column"):
        gradfit.fit(torch.nn.Linear(2, 2), x, x.sum(1), epochs=3)

    class TwoArguments(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            return self.layer(torch.stack([x, z], -1))

    with pytest.raises(ModelError, match=r"forward takes 2 arguments \(x, z\)"):
        gradfit.fit(TwoArguments(), {"x": x[:, 0], "z": x[:, 1]}, x.sum(1), epochs=3)


def test_a_start_for_the_constant_e_says_that_e_is_a_constant() -> None:
    with pytest.raises(ModelError, match=r"'e' in a formula is the constant 2.71828: call the parameter otherwise, e.g. 'e0'"):
        gradfit.fit("a*exp(-k*x) + e", [0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.5, 1.2], params={"e": 1.0})


def test_a_parameter_bound_of_none_is_no_bound_and_a_word_is_refused() -> None:
    assert Parameter("c", 0.0, lower=None, upper=None) == Parameter("c", 0.0)
    with pytest.raises(ModelError, match="parameter 'c' has lower bound 'low' — give a number, or None for no bound"):
        Parameter("c", lower="low")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("formula", "column", "suggestion"),
    [("a*t.u + b", "t.u", "t_u"), ("a*température + b", "température", "temperature"), ("a*temp (°C) + b", "temp (°C)", "temp_C")],
)
def test_a_formula_naming_a_column_it_cannot_read_says_to_rename_the_column(formula, column, suggestion):
    """'t.u' read as attribute access, and a non-ASCII name as a stray character, named no column."""
    with pytest.raises(ModelError, match=f"column '{re.escape(column)}' cannot be used as a name in a formula — .* e.g. '{suggestion}'"):
        make_model(formula, [column, "other"])


def test_one_column_with_spaces_in_its_name_says_to_separate_the_files_columns():
    """'t y' is a whitespace-separated file read as one column: the formula named none of it."""
    with pytest.raises(ModelError, match="the data have one column, 't y': separate the columns of the file with commas"):
        make_model("a*t + b", ["t y"])


def test_a_parameter_filed_under_another_name_is_refused():
    with pytest.raises(ModelError, match="params\\['a'\\] is Parameter\\('b', ...\\): which parameter is meant"):
        gradfit.fit("a*x + b", {"x": np.arange(5.0)}, np.arange(5.0), params={"a": gradfit.Parameter("b", 1.0)})
