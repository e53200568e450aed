"""gradfit: learning as parameter estimation.

Give it input/output pairs and a model — a formula such as ``"w2*x**2 + w1*x + b"``, a Python
function, or a ``torch.nn.Module`` — and it estimates the parameters with PyTorch autograd, checks the
fit on held-out data, and reports what it found, with uncertainties.

>>> import gradfit
>>> result = gradfit.fit("w*x + b", [1.0, 2.0, 3.0, 4.0], [2.1, 3.9, 6.2, 7.8])
>>> print(result)  # doctest: +SKIP

The public names are imported lazily so that ``import gradfit`` (and the command line's ``--help``)
does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gradfit.errors import (
    DataError,
    DivergenceError,
    FitError,
    FormulaError,
    GradfitError,
    ModelError,
    NotFittedError,
    OptionError,
    OutputError,
)

if TYPE_CHECKING:
    from gradfit.config import FitOptions
    from gradfit.data import Dataset, as_dataset, make_dataset, read_table
    from gradfit.demo import thermometer
    from gradfit.explain import explain
    from gradfit.fitting import fit
    from gradfit.compare import Comparison, compare
    from gradfit.formula import parse
    from gradfit.groups import GroupFitResult, GroupFits, GroupSummary, fit_groups, iter_group_fits
    from gradfit.model import Parameter, make_model
    from gradfit.result import FitResult

__version__ = "0.1.0"

_LAZY = {
    "fit": "gradfit.fitting",
    "FitResult": "gradfit.result",
    "FitOptions": "gradfit.config",
    "Parameter": "gradfit.model",
    "make_model": "gradfit.model",
    "Dataset": "gradfit.data",
    "as_dataset": "gradfit.data",
    "make_dataset": "gradfit.data",
    "read_table": "gradfit.data",
    "parse": "gradfit.formula",
    "explain": "gradfit.explain",
    "thermometer": "gradfit.demo",
    "fit_groups": "gradfit.groups",
    "iter_group_fits": "gradfit.groups",
    "GroupFitResult": "gradfit.groups",
    "GroupFits": "gradfit.groups",
    "GroupSummary": "gradfit.groups",
    "compare": "gradfit.compare",
    "Comparison": "gradfit.compare",
}

__all__ = [
    *_LAZY,
    "GradfitError",
    "DataError",
    "FormulaError",
    "ModelError",
    "FitError",
    "DivergenceError",
    "NotFittedError",
    "OptionError",
    "OutputError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gradfit' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
