"""Solvers: one protocol (:mod:`gradfit.solvers.base`), the registry of solver families, and the
automatic choice.

Add a solver by writing ``solve_x(problem, options) -> SolveOutcome`` and registering it in
:data:`SOLVER_FAMILIES` (and its name in :data:`gradfit.config.SOLVER_NAMES`);
:func:`choose_solver` decides when ``solver="auto"`` picks it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gradfit.errors import OptionError
from gradfit.losses import LEAST_SQUARES_LOSSES
from gradfit.model import ModuleModel

if TYPE_CHECKING:
    from gradfit.config import FitOptions
    from gradfit.solvers.base import Problem, SolveOutcome

__all__ = ["choose_solver", "get_solver", "needs_torch", "optimizer_label", "unused_message", "unused_options", "SOLVER_FAMILIES"]

#: solver name -> "module:function", imported when used
SOLVER_FAMILIES = {
    "linear": "gradfit.solvers.linear:solve_linear",
    "lm": "gradfit.solvers.lsq:solve_lm",
    "gn": "gradfit.solvers.lsq:solve_gn",
    "gradient": "gradfit.solvers.gradient:solve_gradient",
    "fixed": "gradfit.solvers.lsq:solve_fixed",
}

#: settings (of :class:`~gradfit.config.FitOptions`) only gradient descent reads
GRADIENT_ONLY = ("epochs", "batch_size", "target", "patience", "plateau", "scale", "checkpoint", "resume")
#: settings only the iterative least-squares solvers read
ITERATIVE_ONLY = ("starts", "max_iter")
#: what each solver does not read
_UNREAD = {"linear": GRADIENT_ONLY + ITERATIVE_ONLY, "lm": GRADIENT_ONLY, "gn": GRADIENT_ONLY, "gradient": ITERATIVE_ONLY}


@functools.cache
def get_solver(name: str) -> Callable[[Problem, Any], SolveOutcome]:
    """The solve function registered under ``name``."""
    module, _, function = SOLVER_FAMILIES[name].partition(":")
    return getattr(importlib.import_module(module), function)


def needs_torch(name: str, model: Any) -> bool:
    """Whether solver ``name`` computes with torch on ``model``: the gradient family always; the
    least-squares solvers only for models that are not formulas (autograd Jacobians)."""
    return name == "gradient" or getattr(model, "formula", None) is None


def choose_solver(model: Any, options: FitOptions, bounded: bool) -> tuple[str, str]:
    """Pick the solver for a fit and say why.

    Parameters
    ----------
    model
        The model to fit.
    options
        The fit's options (solver, optimizer, loss).
    bounded
        Whether any parameter has a finite bound.

    Returns
    -------
    (name, reason)
        A key of :data:`SOLVER_FAMILIES` and a sentence for the report.
    """
    parametric = not isinstance(model, ModuleModel)
    if parametric and all(p.fixed for p in model.parameters):
        return "fixed", "every parameter is fixed: the model is evaluated at the given values, nothing is estimated"
    if options.uses_optimizer:
        asked = "as asked" if options.optimizer is not None else "the default optimizer of solver='gradient'"
        return "gradient", f"gradient descent with {optimizer_label(options.optimizer)}, {asked}"
    if options.solver != "auto":
        _check_explicit(options.solver, model, options, parametric, bounded)
        return options.solver, "as asked"
    if not parametric:
        return "gradient", "neural networks are trained by gradient descent (Adam)"
    if options.loss not in LEAST_SQUARES_LOSSES:
        return "gradient", f"the {options.loss} loss is not a sum of squares: gradient descent (Adam)"
    if options.loss == "mse" and not bounded and getattr(model, "formula", None) and model.is_linear:
        return "linear", "the model is linear in its parameters: one exact least-squares solve"
    jacobian = "the formula's symbolic Jacobian" if getattr(model, "formula", None) else "autograd Jacobians"
    return "lm", f"a parametric least-squares fit: Levenberg-Marquardt with {jacobian}"


def unused_options(name: str, options: FitOptions) -> list[str]:
    """The options set away from their defaults that solver ``name`` would ignore.

    An ignored option reads as one that worked (``epochs=5000`` on an exact solve), so single fits
    refuse them; settings shared by several models (:func:`gradfit.compare.compare`) are not
    refused. The ``fixed`` solver evaluates the model and reads nothing.
    """
    defaults = _defaults(type(options))
    return [option for option in _UNREAD.get(name, ()) if getattr(options, option) != defaults[option]]


@functools.cache
def _defaults(options_type: type) -> dict[str, Any]:
    """The default of every field of a dataclass of options (read once: single fits are hot)."""
    return {field.name: field.default for field in dataclasses.fields(options_type)}


#: command-line flags whose name is not the option's
_CLI_FLAGS = {"scale": "--no-scale"}


def unused_message(fit: str, unused: list[str]) -> str:
    """Why settings ``unused`` are refused by ``fit`` ("this fit uses the lm solver (...)"), and
    what each family of them needs instead."""
    descent = [option for option in unused if option in GRADIENT_ONLY]
    iterative = [option for option in unused if option not in GRADIENT_ONLY]
    needs = [(descent, "gradient descent — drop {them}, or choose an optimizer (e.g. --optimizer adam)"),
             (iterative, "the iterative least-squares solvers — drop {them}, or fit with solver 'lm' (--solver lm)")]
    reasons = []
    for options, need in needs:
        if options:
            they, them = ("it is", "it") if len(options) == 1 else ("they are", "them")
            reasons.append(f"{_listed(options)}: {they} for {need.format(them=them)}")
    return f"{fit}, which ignores " + "; ".join(reasons)


def _listed(options: list[str]) -> str:
    return ", ".join(f"{option} ({_CLI_FLAGS.get(option, '--' + option.replace('_', '-'))})" for option in options)


def optimizer_label(optimizer: Any) -> str:
    """A readable name for an optimizer given by name, class, factory or instance (None: Adam)."""
    if optimizer is None:
        return "adam"
    if isinstance(optimizer, str):
        return optimizer
    return getattr(optimizer, "__name__", type(optimizer).__name__)


def _check_explicit(name: str, model: Any, options: FitOptions, parametric: bool, bounded: bool) -> None:
    if name == "linear" and bounded:
        raise OptionError("solver 'linear' (one exact solve) cannot keep parameters within bounds — use 'lm' or auto")
    if not parametric:
        raise OptionError(f"solver '{name}' needs a parametric model — use an optimizer for networks")
    if name == "linear" and not (getattr(model, "formula", None) and model.is_linear):
        raise OptionError("solver 'linear' needs a formula that is linear in its parameters — use 'lm'")
    if name == "linear" and options.loss != "mse":
        raise OptionError("solver 'linear' minimises squared errors only — use 'lm' for robust losses")
    if options.loss not in (*LEAST_SQUARES_LOSSES, "mae"):  # mae: least squares by continuation
        raise OptionError(f"solver '{name}' needs a least-squares loss — use an optimizer for {options.loss}")
