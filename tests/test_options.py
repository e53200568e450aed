"""Parsing of key=value option strings."""

import pytest

from gradfit.errors import OptionError
from gradfit.options import parse_options


def test_values_of_each_kind():
    assert parse_options("lr=1e-2, momentum=0.9,nesterov=true, betas=(0.9, 0.99), foreach=none, mode=max") == {
        "lr": 0.01, "momentum": 0.9, "nesterov": True, "betas": (0.9, 0.99), "foreach": None, "mode": "max",
    }
    assert parse_options("") == {}
    assert parse_options("history_size=10") == {"history_size": 10}


@pytest.mark.parametrize("text", ["lr", "lr=1e-2;x", "=3", "betas=(0.9,abc)", "lr=__import__('os')", "lr=", "lr=0.1,momentum="])
def test_bad_options_are_errors(text):
    with pytest.raises(OptionError):
        parse_options(text)
