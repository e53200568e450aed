"""Scaling: solve in standardised coordinates, report in the user's units.

Two tools, one idea — make a unit step mean the same for every parameter and the loss be of order one:

* :func:`whitening` for parametric models: ``theta = theta0 + P u`` with
  ``P = sd(y) * (JᵀJ / n)^(-1/2)`` from the Jacobian at the start. For a model linear in its
  parameters this is exactly what standardising inputs and output does (the normalised loss has
  Hessian ``2 I`` in ``u``), so the chapter's ``lr=1e-2`` converges on raw readings; for a nonlinear
  model it is the same preconditioner taken at the starting point.
* :class:`Standardizer` for neural networks, whose weights have no user units: inputs and output are
  standardised column-wise and predictions mapped back.

Losses are divided by the loss of the constant model ``mean(y)`` (:func:`reference_loss`), which is
``var(y)`` for MSE; histories are reported multiplied back, in the user's units.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["whitening", "whitening_divisors", "column_scaling", "reference_loss", "Standardizer"]

#: singular values of J below this fraction of the largest are raised to it (cond(JᵀJ) ≤ 1e6)
SINGULAR_FLOOR = 1e-3
#: singular values at or below this fraction of the largest: directions the data do not determine
#: (at the start); they keep the largest one's scale instead of being amplified
NULL_FLOOR = 1e-8


def whitening_divisors(s: torch.Tensor, largest: torch.Tensor) -> torch.Tensor:
    """The singular values whitening divides by: raised to ``SINGULAR_FLOOR · largest``, and the
    largest one for directions the data do not determine. The loss is flat along those; an optimizer
    that normalises its steps (Adam, RMSprop) moves the same distance in whitened units whatever the
    gradient, so amplifying them would send it racing along the valley floor into overflow."""
    import torch

    return torch.where(s <= largest * NULL_FLOOR, largest, torch.maximum(s, largest * SINGULAR_FLOOR))


def whitening(jacobian: torch.Tensor, y_scale: float) -> torch.Tensor:
    """Return ``P`` (p, p) such that ``Pᵀ (JᵀJ / n) P = y_scale² I`` where J is well conditioned
    (singular values as in :func:`whitening_divisors`).

    Parameters
    ----------
    jacobian
        Jacobian of the predictions at the starting point, shape ``(n, p)``.
    y_scale
        The output's spread (standard deviation), so that a unit of ``u`` moves predictions by
        about one standard deviation of ``y``.
    """
    import torch

    n, p = jacobian.shape
    if p == 0:
        return jacobian.new_zeros((0, 0))
    if not bool(torch.isfinite(jacobian).all()):  # not at this start: the fit will say why
        return torch.eye(p, dtype=jacobian.dtype, device=jacobian.device) * y_scale
    _, s, vh = torch.linalg.svd(jacobian / n**0.5, full_matrices=False)
    largest = s.max() if s.numel() else jacobian.new_tensor(0.0)
    if not torch.isfinite(largest) or largest <= 0:
        return torch.eye(p, dtype=jacobian.dtype, device=jacobian.device) * y_scale
    return y_scale * (vh.mT / whitening_divisors(s, largest)) @ vh


def column_scaling(jacobian: torch.Tensor, y_scale: float) -> torch.Tensor:
    """Return a diagonal ``P`` (p, p): each parameter scaled alone, so that a unit of its ``u``
    moves the predictions by about ``y_scale`` (RMS over the points).

    For bounded fits: a box in the parameters stays a box in ``u``, where clamping is the exact
    projection. (Whitening mixes parameters; clamping one then moves the others' ``u``, and an
    optimizer's momentum fights the box.) Columns the data do not determine (RMS at or below
    :data:`NULL_FLOOR` of the largest) keep the unit scale of the largest.
    """
    import torch

    n, p = jacobian.shape
    if p == 0:
        return jacobian.new_zeros((0, 0))
    rms = torch.linalg.vector_norm(jacobian, dim=0) / n**0.5
    largest = rms.max()
    if not bool(torch.isfinite(rms).all()) or largest <= 0:
        return torch.eye(p, dtype=jacobian.dtype, device=jacobian.device) * y_scale
    return torch.diag(y_scale / torch.where(rms <= largest * NULL_FLOOR, largest, rms))


def reference_loss(loss_fn: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor) -> float:
    """The loss of predicting ``mean(y)`` everywhere, or 1.0 when that is zero or not finite."""
    value = float(loss_fn(y - y.mean()))
    return value if value > 0 and value == value and value != float("inf") else 1.0


@dataclass(frozen=True)
class Standardizer:
    """Column-wise standardisation ``(x - mean) / std`` of a matrix ``(n, d)`` or vector ``(n,)``."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, values: torch.Tensor) -> Standardizer:
        """Learn mean and standard deviation (1 where a column is constant)."""
        import torch

        mean = values.mean(dim=0)
        std = values.std(dim=0, correction=0) if values.shape[0] > 1 else torch.ones_like(mean)
        std = torch.where(std > 0, std, torch.ones_like(std))
        return cls(mean, std)

    def transform(self, values: torch.Tensor) -> torch.Tensor:
        """Standardise ``values``."""
        return (values - self.mean) / self.std

    def inverse(self, values: torch.Tensor) -> torch.Tensor:
        """Map standardised values back to the original units."""
        return values * self.std + self.mean
