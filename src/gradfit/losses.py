"""Losses: residual vector to scalar.

Least-squares losses follow ``scipy.optimize.least_squares``: with ``z = (r / s)**2`` and a scale
``s``, the loss is ``mean(s**2 * rho(z))`` where ``rho`` is ``z`` (``mse``), ``2*(sqrt(1+z)-1)``
(``soft_l1``), ``z`` or ``2*sqrt(z)-1`` (``huber``) and ``log1p(z)`` (``cauchy``). ``mae`` is the
mean absolute residual. The least-squares solvers minimise the same objective through ``rho``.

A loss takes a torch tensor (the training loop, with autograd) or a numpy array (statistics of
least-squares fits) and computes in that array's library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gradfit.errors import OptionError

__all__ = ["LOSSES", "LEAST_SQUARES_LOSSES", "get_loss", "pointwise_loss", "check_loss", "robust_rho"]

LEAST_SQUARES_LOSSES = ("mse", "soft_l1", "huber", "cauchy")
LOSSES = (*LEAST_SQUARES_LOSSES, "mae")

#: gradfit's loss name -> the ``loss`` argument of the least-squares solver
SOLVER_LOSS = {"mse": "linear", "soft_l1": "soft_l1", "huber": "huber", "cauchy": "cauchy"}


def check_loss(name: str) -> str:
    """Return ``name`` if it is a known loss, else raise :class:`OptionError`."""
    if name not in LOSSES:
        raise OptionError(f"unknown loss '{name}' — choose one of {', '.join(LOSSES)}")
    return name


def _namespace(values: Any) -> Any:
    """numpy for numpy arrays, torch for tensors (imported only then)."""
    if isinstance(values, np.ndarray):
        return np
    import torch

    return torch


def _rho(name: str, z: Any) -> Any:
    xp = _namespace(z)
    if name == "soft_l1":
        return 2.0 * (xp.sqrt(1.0 + z) - 1.0)
    if name == "huber":
        # the square root only of z >= 1: where's unused branch still carries a gradient, NaN at z = 0
        return xp.where(z <= 1.0, z, 2.0 * xp.sqrt(xp.clip(z, 1.0, None)) - 1.0)
    if name == "cauchy":
        return xp.log1p(z)
    return z


def robust_rho(loss: str, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``ρ(z)``, ``ρ'(z)``, ``ρ''(z)`` of a least-squares loss at ``z = (r / s)²``, on numpy arrays
    (scipy's names and definitions: ``linear``, ``huber``, ``soft_l1``, ``cauchy``), for the
    least-squares solvers' rescaled systems and robust variances; :func:`_rho` is ``ρ`` for
    gradient descent, on tensors too."""
    if loss == "huber":
        inside = z <= 1.0
        root = np.sqrt(np.where(inside, 1.0, z))
        return (
            np.where(inside, z, 2.0 * root - 1.0),
            np.where(inside, 1.0, 1.0 / root),
            np.where(inside, 0.0, -0.5 / root**3),
        )
    if loss == "soft_l1":
        t = 1.0 + z
        root = np.sqrt(t)
        return 2.0 * (root - 1.0), 1.0 / root, -0.5 / (t * root)
    if loss == "cauchy":
        t = 1.0 + z
        return np.log1p(z), 1.0 / t, -1.0 / (t * t)
    return z, np.ones_like(z), np.zeros_like(z)


def get_loss(name: str = "mse", scale: float = 1.0) -> Callable[[Any], Any]:
    """Return the loss function ``residual -> scalar`` named ``name``.

    Parameters
    ----------
    name
        One of :data:`LOSSES`.
    scale
        Residual scale ``s`` of the robust losses (``f_scale`` in scipy); ignored by ``mse`` and
        ``mae``.
    """
    check_loss(name)
    if name == "mse":
        return _mse
    pointwise = pointwise_loss(name, scale)
    return lambda r: pointwise(r).mean()


def pointwise_loss(name: str = "mse", scale: float = 1.0) -> Callable[[Any], Any]:
    """The loss of each residual, ``r -> s² ρ((r/s)²)`` (``r²`` for mse, ``|r|`` for mae), elementwise.

    :func:`get_loss` is its mean; fits of many groups average it over each group's own points.
    Every loss is 0 at ``r = 0``, so padded points with zero residuals add nothing to a sum.
    """
    check_loss(name)
    if name == "mse":
        return lambda r: r * r
    if name == "mae":
        return abs
    s2 = float(scale) ** 2
    return lambda r: s2 * _rho(name, r**2 / s2)


def _mse(r: Any) -> Any:
    if isinstance(r, np.ndarray):  # numpy's mean() is several times slower than a dot product here
        return np.vecdot(r, r) / r.size if r.ndim == 1 else (r**2).mean()
    return (r**2).mean()
