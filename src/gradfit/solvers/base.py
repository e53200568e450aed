"""The one protocol every solver follows: a :class:`Problem` in, a :class:`SolveOutcome` out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gradfit.result import History

if TYPE_CHECKING:
    import torch

    from gradfit.model import ModuleModel, ParametricModel
    from gradfit.objective import Split

__all__ = ["Problem", "SolveOutcome", "Solver"]


@dataclass(frozen=True)
class Problem:
    """A fit to carry out, as tensors.

    Attributes
    ----------
    model
        The model to fit.
    train, val
        Training data and optional validation data.
    loss
        Loss name (see :mod:`gradfit.losses`).
    loss_scale
        Residual scale of the robust losses.
    theta0, free, lower, upper
        Starting values, mask of estimated parameters, and bounds, each ``(p,)``; ``None`` for
        module models.
    """

    model: ParametricModel | ModuleModel
    train: Split
    val: Split | None
    loss: str = "mse"
    loss_scale: float = 1.0
    theta0: torch.Tensor | None = None
    free: torch.Tensor | None = None
    lower: torch.Tensor | None = None
    upper: torch.Tensor | None = None

    @property
    def bounded(self) -> bool:
        """Whether any parameter has a finite bound."""
        import torch

        if self.lower is None or self.upper is None:
            return False
        return bool(torch.isfinite(self.lower).any() or torch.isfinite(self.upper).any())


@dataclass(frozen=True)
class SolveOutcome:
    """What a solver returns.

    Attributes
    ----------
    theta
        Fitted parameters ``(p,)``; ``None`` for module models (trained in place).
    status
        Short status code (``converged``, ``max_iter``, ``max_epochs``, ``early_stopped``...).
    message
        The status in words, with what to change when it is a failure.
    success
        Whether the solver reached a proper stopping point.
    iterations
        Iterations or epochs run.
    history
        Losses per epoch, when the solver keeps them.
    at_bound
        Per parameter, whether it ended on a bound.
    predict
        For module models: the trained predictor in the user's units.
    inverse_normal
        ``(JᵀJ)⁻¹`` over the free parameters when the solver computed it more accurately than an
        SVD of the Jacobian can (ill-conditioned polynomial designs); used for the covariance.
    """

    theta: torch.Tensor | None
    status: str
    message: str
    success: bool
    iterations: int
    history: History = field(default_factory=History)
    at_bound: tuple[bool, ...] = ()
    predict: Callable[[Any], torch.Tensor] | None = None
    inverse_normal: torch.Tensor | None = None


Solver = Callable[[Problem, Any], SolveOutcome]
