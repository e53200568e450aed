"""The backward pass made visible: the chain rule by hand vs autograd vs finite differences.

For a formula model ``f`` and the mean-squared-error loss ``L = mean((f - y)**2)``, each parameter
``p`` has ``dL/dp = mean(2*(f - y) * df/dp)`` (with standard deviations ``σ`` of ``y``, the weighted
``L = mean(((f - y)/σ)**2)`` and ``dL/dp = mean(2*(f - y)/σ**2 * df/dp)``). :func:`explain` derives ``df/dp`` symbolically,
evaluates the chain rule "by hand" (numpy), asks torch autograd (float64), and checks both with
central finite differences. Nothing is printed; the command line renders the :class:`Explanation`.
"""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradfit.errors import DataError, ModelError
from gradfit.evaluate import compile_torch, evaluate_numpy
from gradfit.formula import Expr, Formula, Num, Var, parse
from gradfit.symbolic import diff, mul, sub, to_text

__all__ = ["LOSS_TEXT", "WEIGHTED_LOSS_TEXT", "GradientRow", "Explanation", "explain", "relative_difference"]

LOSS_TEXT = "L = mean((f - y)**2)"
#: the loss of a fit weighted by the standard deviations σ of y
WEIGHTED_LOSS_TEXT = "L = mean(((f - y)/σ)**2)"


@dataclass(frozen=True)
class GradientRow:
    """The gradient of the loss with respect to one parameter, three ways.

    Attributes
    ----------
    parameter
        Parameter name.
    value
        The parameter's value the gradient is taken at.
    derivative
        ``df/dp`` as formula text.
    chain_rule
        ``dL/dp = mean(2*(f - y)*df/dp)`` as text.
    by_hand
        The chain rule evaluated with the symbolic derivative (numpy, float64).
    autograd
        ``dL/dp`` from torch autograd (float64).
    finite_difference
        Central finite difference ``(L(p + h) - L(p - h)) / (2h)``.
    step
        The finite-difference step ``h``.
    rel_diff_autograd
        Relative difference between ``by_hand`` and ``autograd``.
    rel_diff_finite_difference
        Relative difference between ``by_hand`` and ``finite_difference``.
    """

    parameter: str
    value: float
    derivative: str
    chain_rule: str
    by_hand: float
    autograd: float
    finite_difference: float
    step: float
    rel_diff_autograd: float
    rel_diff_finite_difference: float


@dataclass(frozen=True)
class Explanation:
    """Loss and per-parameter gradients of a formula model on data.

    Attributes
    ----------
    formula
        The formula as given.
    model
        ``f = ...``, the model as printed from its tree.
    loss_text
        The loss definition.
    loss
        The loss value at the given parameters.
    n_points
        Number of data points.
    inputs
        Data input names used.
    parameters
        Parameter names, in first-appearance order in the formula.
    rows
        One :class:`GradientRow` per parameter.
    """

    formula: str
    model: str
    loss_text: str
    loss: float
    n_points: int
    inputs: tuple[str, ...]
    parameters: tuple[str, ...]
    rows: list[GradientRow]

    @property
    def max_rel_diff(self) -> float:
        """Largest relative difference between the three methods over all parameters."""
        diffs = [r.rel_diff_autograd for r in self.rows]
        diffs += [r.rel_diff_finite_difference for r in self.rows]
        return worst_difference(diffs)


def worst_difference(diffs: list[float]) -> float:
    """The largest of relative differences, NaN if any is NaN (a method that failed agrees with
    nothing; Python's ``max`` would skip it)."""
    return math.nan if any(math.isnan(d) for d in diffs) else max(diffs, default=0.0)


def relative_difference(a: float, b: float, floor: float = 0.0) -> float:
    """Return ``|a - b| / max(|a|, |b|)``: 0 when both are at most ``floor`` in size (or both 0),
    nan when either is not finite.

    Parameters
    ----------
    a, b
        The two values.
    floor
        The size below which values are noise: a finite difference's rounding error, so that a
        zero gradient and its finite difference of ``1e-11`` do not read as 100% apart.

    Returns
    -------
    float
    """
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.nan
    scale = max(abs(a), abs(b))
    return 0.0 if scale <= floor else abs(a - b) / scale


def _rounding_of_difference(residual: np.ndarray, step: float) -> float:
    """The rounding error of a central difference of the loss: about ``eps·L / h``."""
    loss = float(np.mean(residual**2))
    return 100.0 * float(np.finfo(np.float64).eps) * loss / float(step) if step > 0 else 0.0


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------
def _as_vector(name: str, values: object) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"'{name}' is not numeric; pass numbers") from None
    if array.ndim != 1 or array.size == 0:
        raise DataError(f"'{name}' must be a non-empty 1-D array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise DataError(f"'{name}' contains NaN or infinite values; remove those rows")
    return array


def _check_data(
    formula: Formula, inputs: Mapping[str, object], y: object
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    target = _as_vector("y", y)
    used = {name: _as_vector(name, inputs[name]) for name in formula.names if name in inputs}
    for name, column in used.items():
        if column.shape != target.shape:
            raise DataError(
                f"input '{name}' has {column.size} values but y has {target.size};"
                " pass equal lengths"
            )
    return used, target


def _weights(sigma: object, target: np.ndarray) -> np.ndarray:
    """``1/σ`` per point (ones without sigma); σ must be positive and finite, one per point."""
    if sigma is None:
        return np.ones_like(target)
    values = _as_vector("sigma", sigma)
    if values.shape != target.shape:
        raise DataError(f"sigma has {values.size} values but y has {target.size}; pass one per point")
    if not (values > 0).all():
        raise DataError("sigma must be positive on every point; drop the points without an uncertainty")
    return 1.0 / values


def _check_parameters(
    formula: Formula, inputs: Mapping[str, object], params: Mapping[str, float]
) -> dict[str, float]:
    names = formula.parameters(inputs.keys())
    if not names:
        raise ModelError(
            f"formula {formula.text!r} has no parameters (every name is a data input); add one"
        )
    missing = [name for name in names if name not in params]
    if missing:
        raise ModelError(
            f"no value for parameter(s) {', '.join(missing)}; pass params for {', '.join(names)}"
        )
    unknown = [name for name in params if name not in names]
    if unknown:
        raise ModelError(
            f"unknown parameter(s) {', '.join(unknown)}; the formula's parameters are"
            f" {', '.join(names)}"
        )
    values = {name: float(params[name]) for name in names}
    bad = [name for name, value in values.items() if not math.isfinite(value)]
    if bad:
        raise ModelError(f"parameter(s) {', '.join(bad)} are not finite; pass finite values")
    return values


# --------------------------------------------------------------------------------------------------
# The three gradients
# --------------------------------------------------------------------------------------------------
def _mse(tree: Expr, env: Mapping[str, object], y: np.ndarray, weights: np.ndarray) -> float:
    residual = (np.broadcast_to(evaluate_numpy(tree, env), y.shape) - y) * weights
    return float(np.mean(residual**2))


def _by_hand(derivative: Expr, env: Mapping[str, object], residual: np.ndarray, weights: np.ndarray) -> float:
    """The chain rule: ``mean(2 (f - y)/σ² · df/dp)`` (``residual`` is ``f - y``, ``weights`` ``1/σ``)."""
    dfdp = np.broadcast_to(evaluate_numpy(derivative, env), residual.shape)
    return float(np.mean(2.0 * residual * weights**2 * dfdp))


def _autograd(
    tree: Expr, data: Mapping[str, np.ndarray], y: np.ndarray, weights: np.ndarray, values: Mapping[str, float]
) -> dict[str, float]:
    import torch

    env = {name: torch.tensor(np.array(column, dtype=np.float64)) for name, column in data.items()}
    leaves = {
        name: torch.tensor(value, dtype=torch.float64, requires_grad=True)
        for name, value in values.items()
    }
    (prediction,) = compile_torch([tree])({**env, **leaves})
    residual = (prediction - torch.tensor(np.array(y, dtype=np.float64))) * torch.tensor(np.array(weights, dtype=np.float64))
    loss = torch.mean(residual**2)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {name: 0.0 if g is None else float(g) for name, g in zip(leaves, grads)}


def _finite_difference(
    tree: Expr, env: Mapping[str, object], y: np.ndarray, weights: np.ndarray, name: str
) -> tuple[float, float]:
    value = float(env[name])  # type: ignore[arg-type]
    step = np.finfo(np.float64).eps ** (1.0 / 3.0) * max(1.0, abs(value))
    up = _mse(tree, {**env, name: value + step}, y, weights)
    down = _mse(tree, {**env, name: value - step}, y, weights)
    return float((up - down) / (2.0 * step)), float(step)


def _chain_rule_text(name: str, derivative: Expr, weighted: bool) -> str:
    term = mul(mul(Num(2.0), sub(Var("f"), Var("y"))), derivative)
    text = to_text(term)
    return f"dL/d{name} = mean({text})" if not weighted else f"dL/d{name} = mean({text}/σ**2)"


def explain(
    formula: str | Formula,
    inputs: Mapping[str, object],
    y: object,
    params: Mapping[str, float],
    sigma: object = None,
) -> Explanation:
    """Explain the gradient of the MSE loss of a formula model, three independent ways.

    Parameters
    ----------
    formula
        Formula text or a parsed :class:`~gradfit.formula.Formula`; names that are not in
        ``inputs`` are the parameters.
    inputs
        Data input name -> 1-D array of the same length as ``y``.
    y
        Target values, 1-D.
    params
        Parameter name -> value at which the gradient is taken (every parameter, no others).
    sigma
        Standard deviations of ``y`` (positive, one per point), for the weighted loss of a fit
        with ``sigma``.

    Returns
    -------
    Explanation
        Loss value and, per parameter, ``df/dp``, the chain rule, and ``dL/dp`` by hand, by autograd
        and by central finite differences with their relative differences.

    Raises
    ------
    FormulaError
        If the formula cannot be parsed.
    ModelError
        If a parameter value is missing, unknown or not finite, or there is no parameter.
    DataError
        If the data are not numeric, not finite, or of mismatched lengths.
    """
    parsed = parse(formula) if isinstance(formula, str) else formula
    values = _check_parameters(parsed, inputs, params)
    data, target = _check_data(parsed, inputs, y)
    weights = _weights(sigma, target)
    tree = parsed.tree
    env: dict[str, object] = {**data, **values}
    with np.errstate(all="ignore"):
        residual = np.broadcast_to(evaluate_numpy(tree, env), target.shape) - target
        loss = float(np.mean((residual * weights) ** 2))
    if not math.isfinite(loss):
        point = ", ".join(f"{name}={value:g}" for name, value in values.items())
        raise ModelError(
            f"the loss is not finite at {point} (the model is NaN or inf on some points there, or its residuals "
            "overflow) — take the gradient at values where the model is finite on every point"
        )
    autograd = _autograd(tree, data, target, weights, values)
    rows = []
    for name in values:
        derivative = diff(tree, name)
        by_hand = _by_hand(derivative, env, residual, weights)
        fd, step = _finite_difference(tree, env, target, weights, name)
        rows.append(
            GradientRow(
                parameter=name,
                value=values[name],
                derivative=to_text(derivative),
                chain_rule=_chain_rule_text(name, derivative, sigma is not None),
                by_hand=by_hand,
                autograd=autograd[name],
                finite_difference=fd,
                step=float(step),
                rel_diff_autograd=relative_difference(by_hand, autograd[name]),
                rel_diff_finite_difference=relative_difference(by_hand, fd, _rounding_of_difference(residual * weights, step)),
            )
        )
    return Explanation(
        formula=parsed.text,
        model=f"f = {to_text(tree)}",
        loss_text=LOSS_TEXT if sigma is None else WEIGHTED_LOSS_TEXT,
        loss=loss,
        n_points=int(target.size),
        inputs=tuple(data),
        parameters=tuple(values),
        rows=rows,
    )


class _CallableModule(types.ModuleType):
    """``gradfit.explain(...)`` calls :func:`explain` even where the submodule shadows the function
    (importing ``gradfit.explain`` binds that name on the package to the module), as for compare."""

    def __call__(self, *args: Any, **kwargs: Any) -> Explanation:
        return explain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
