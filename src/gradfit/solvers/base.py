"""The one protocol every solver follows: a :class:`Problem` in, a :class:`SolveOutcome` out.

A problem holds numpy arrays: the least-squares solvers work on them directly (small dense problems,
where numpy's per-operation cost is a fraction of eager torch's). Solvers that need torch — the
gradient family, autograd Jacobians of callables — take :meth:`Problem.on_torch`, the same problem as
tensors of the fit's dtype on its device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from gradfit.result import History
from gradfit.stats import as_array

if TYPE_CHECKING:
    import torch

    from gradfit.model import ModuleModel, ParametricModel
    from gradfit.objective import Split

__all__ = ["Problem", "SolveOutcome", "Solver"]


@dataclass(frozen=True)
class Problem:
    """A fit to carry out.

    Attributes
    ----------
    model
        The model to fit.
    train, val
        Training data and optional validation data (numpy arrays of ``dtype``, or tensors after
        :meth:`on_torch`).
    loss
        Loss name (see :mod:`gradfit.losses`).
    loss_scale
        Residual scale of the robust losses.
    theta0, free, lower, upper
        Starting values, mask of estimated parameters, and bounds, each ``(p,)``; ``None`` for
        module models.
    dtype, device
        The fit's floating-point type (``"float64"``, ``"float32"``) and torch device.
    """

    model: ParametricModel | ModuleModel
    train: Split
    val: Split | None
    loss: str = "mse"
    loss_scale: float = 1.0
    theta0: Any = None
    free: Any = None
    lower: Any = None
    upper: Any = None
    dtype: str = "float64"
    device: str = "cpu"

    @cached_property
    def bounded(self) -> bool:
        """Whether any parameter has a finite bound."""
        if self.lower is None or self.upper is None:
            return False
        return bool(np.isfinite(as_array(self.lower)).any() or np.isfinite(as_array(self.upper)).any())

    def on_torch(self) -> Problem:
        """The same problem with every array a torch tensor of :attr:`dtype` on :attr:`device`
        (module models are moved there too); computed once."""
        return self._torch_problem

    @cached_property
    def _torch_problem(self) -> Problem:
        import torch

        from gradfit.config import resolve_device

        dtype, device = getattr(torch, self.dtype), resolve_device(self.device)

        def tensor(values: Any, kind: Any = dtype) -> Any:
            return None if values is None else torch.as_tensor(values, dtype=kind, device=device)

        def split(part: Split | None) -> Split | None:
            if part is None:
                return None
            inputs = {name: tensor(column) for name, column in part.inputs.items()}
            return type(part)(inputs, tensor(part.y), tensor(part.weights))

        if hasattr(self.model, "module"):
            self.model.module.to(dtype=dtype, device=device)
        return replace(
            self,
            train=split(self.train),
            val=split(self.val),
            theta0=tensor(self.theta0),
            free=tensor(self.free, torch.bool),
            lower=tensor(self.lower),
            upper=tensor(self.upper),
        )


@dataclass(frozen=True)
class SolveOutcome:
    """What a solver returns.

    Attributes
    ----------
    theta
        Fitted parameters ``(p,)`` (numpy or torch); ``None`` for module models (trained in place).
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
    residuals, jacobian
        Weighted training residuals ``(n,)`` and Jacobian ``(n, p)`` at ``theta`` when the solver
        has them (least-squares solvers end with both; an exact polynomial solve computes the
        residuals more accurately than evaluating the model can); the training loss and the
        statistics use them instead of evaluating the model again.
    decomposition
        The :func:`~gradfit.stats.scaled_svd` of the weighted Jacobian's free columns at
        ``theta``, when the solver factored exactly that matrix (exact linear solves); the
        statistics reuse it.
    warnings
        What the solver found that the result should warn about.
    settings
        Settings the solver chose that the fit's options leave out, for the result's record (a
        gradient fit's optimizer options with their defaults filled in; a polynomial's centred
        basis, for its bands).
    """

    theta: Any
    status: str
    message: str
    success: bool
    iterations: int
    history: History = field(default_factory=History)
    at_bound: tuple[bool, ...] = ()
    predict: Callable[[Any], torch.Tensor] | None = None
    inverse_normal: Any = None
    residuals: Any = None
    jacobian: Any = None
    decomposition: Any = None
    warnings: tuple[str, ...] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)


Solver = Callable[[Problem, Any], SolveOutcome]
