"""FitOptions validation: every wrong setting is one OptionError naming it, before any work."""

from __future__ import annotations

import numpy as np
import pytest

import gradfit
from gradfit.config import FitOptions
from gradfit.errors import OptionError


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"batch_size": 4.0}, "batch_size must be a whole number of at least 1, got 4.0"),
        ({"seed": None}, "seed must be a whole number of at least 0, got None"),
        ({"epochs": "100"}, "epochs must be a whole number of at least 1, got '100'"),
        ({"epochs": True}, "epochs must be a whole number"),
        ({"plateau": -1}, "plateau must be a whole number of at least 1, got -1"),
        ({"patience": 0}, "patience must be a whole number of at least 1, got 0"),
        ({"optimizer": 42}, "optimizer must be a name such as 'adam'"),
        ({"optimizer_options": [("lr", 1)]}, "optimizer_options must be a mapping"),
        ({"val": "0.2"}, "val must be a number, got '0.2'"),
        ({"target": "low"}, "target must be a number"),
        ({"loss_scale": float("nan")}, "loss scale must be positive"),
        ({"absolute_sigma": "false"}, "absolute_sigma must be True or False, got 'false'"),  # truthy: it was on
        ({"scale": "no"}, "scale must be True or False, got 'no'"),
        ({"absolute_sigma": 1}, "absolute_sigma must be True or False, got 1"),
    ],
)
def test_a_wrong_setting_is_an_option_error_naming_it(options, fragment):
    with pytest.raises(OptionError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        FitOptions(**options)


def test_numpy_integers_and_no_optimizer_options_are_accepted():
    options = FitOptions(epochs=np.int64(10), seed=np.int32(3), optimizer_options=None)
    assert options.epochs == 10 and options.optimizer_options == {}
    result = gradfit.fit("w*x + b", [0.0, 1.0, 2.0], [1.0, 3.0, 5.0], optimizer="sgd", optimizer_options=None, epochs=np.int64(5))
    assert result.iterations == 5


def test_an_optimizer_with_a_least_squares_solver_is_refused_not_ignored():
    for solver in ("linear", "lm", "gn"):
        with pytest.raises(OptionError, match=f"solver '{solver}' was asked for — drop one of them"):
            FitOptions(solver=solver, optimizer="adam")
    assert FitOptions(solver="gradient", optimizer="sgd").uses_optimizer


def test_the_reported_solver_name_batched_says_which_choice_picks_it():
    from gradfit.config import FitOptions

    with pytest.raises(OptionError, match=r"unknown solver 'batched' \('batched' is the fused .* that auto picks for group fits\) — choose one of auto"):
        FitOptions(solver="batched")


def test_numpys_bools_are_flags_and_are_kept_as_python_bools():
    options = FitOptions(absolute_sigma=np.True_, scale=np.False_)
    assert options.absolute_sigma is True and options.scale is False
