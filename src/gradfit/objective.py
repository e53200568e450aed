"""Objectives: what the training loop minimises, in internal (scaled) units.

An objective owns the leaf tensors an optimizer updates, computes the training loss (optionally on a
minibatch of rows) with a graph, the validation loss without one, and can snapshot and restore its
state so that the loop can return the best parameters it saw. ``unit`` converts internal losses back
to the user's units; ``baseline`` is the loss of a constant model, the loop's sense of scale.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gradfit.model import one_output
from gradfit.scaling import Standardizer, column_scaling, reference_loss, whitening

if TYPE_CHECKING:
    import torch

    from gradfit.model import ModuleModel, ParametricModel

__all__ = ["Split", "ParametricObjective", "ModuleObjective"]

Loss = Callable[["torch.Tensor"], "torch.Tensor"]


@dataclass(frozen=True)
class Split:
    """One part of the data as tensors: input columns, target, and per-point weights (1/sigma)."""

    inputs: Mapping[str, torch.Tensor]
    y: torch.Tensor
    weights: torch.Tensor | None = None

    @property
    def n_rows(self) -> int:
        """Number of points."""
        return int(self.y.shape[-1])

    def rows(self, index: torch.Tensor | None) -> Split:
        """The points at ``index`` (all when ``None``)."""
        if index is None:
            return self
        return Split(
            {name: col[index] for name, col in self.inputs.items()},
            self.y[index],
            None if self.weights is None else self.weights[index],
        )

    def residuals(self, prediction: torch.Tensor) -> torch.Tensor:
        """Weighted residuals ``(prediction - y) / sigma``."""
        r = prediction - self.y
        return r if self.weights is None else r * self.weights


def baseline_loss(loss_fn: Loss, train: Split) -> float:
    """The loss, in the user's units, of predicting the mean target everywhere (0 if not finite): the
    scale below which the training loop treats losses as near zero (see :mod:`gradfit.train`)."""
    import torch

    with torch.no_grad():
        value = float(loss_fn(train.residuals(train.y.mean().expand_as(train.y))))
    return value if value < float("inf") else 0.0


class _Objective:
    """What both objectives share: the training loss (with a graph) and the validation loss (without)."""

    train: Split
    val: Split | None

    def loss(self, part: Split) -> torch.Tensor:
        """Internal loss on ``part`` at the current parameters."""
        raise NotImplementedError

    def train_loss(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """Internal training loss, on the rows ``index`` when given."""
        return self.loss(self.train.rows(index))

    def val_loss(self) -> torch.Tensor | None:
        """Internal validation loss, computed under ``torch.no_grad()``; ``None`` without validation data."""
        import torch

        if self.val is None:
            return None
        with torch.no_grad():
            return self.loss(self.val)

    def full_train_loss(self) -> torch.Tensor:
        """Internal loss on all training rows at the current parameters, without a graph (what
        minibatch training monitors when there is no validation set)."""
        import torch

        with torch.no_grad():
            return self.loss(self.train)


class ParametricObjective(_Objective):
    """Loss of a parametric model as a function of its free parameters.

    Parameters
    ----------
    model
        The parametric model.
    train, val
        Training data and optional validation data.
    loss_fn
        Residual -> scalar loss.
    theta0
        Starting parameters ``(p,)``; fixed parameters keep these values.
    free
        Boolean mask ``(p,)`` of the parameters to estimate.
    lower, upper
        Bounds ``(p,)``; after each step, parameters are projected into them.
    scale
        Optimise in whitened coordinates with a normalised loss (see :mod:`gradfit.scaling`).
    """

    def __init__(
        self,
        model: ParametricModel,
        train: Split,
        val: Split | None,
        loss_fn: Loss,
        theta0: torch.Tensor,
        free: torch.Tensor,
        lower: torch.Tensor,
        upper: torch.Tensor,
        scale: bool,
    ) -> None:
        import torch

        self.model, self.train, self.val, self.loss_fn = model, train, val, loss_fn
        self.theta0, self.lower, self.upper = theta0, lower, upper
        self.free_index = torch.nonzero(free).flatten()
        self.identity = not scale and bool(free.all())
        self.unit = reference_loss(loss_fn, train.y) if scale else 1.0
        self.baseline = baseline_loss(loss_fn, train)
        self.transform = self._transform(scale)
        start = theta0.clone() if self.identity else torch.zeros_like(theta0[self.free_index])
        self.leaf = start.requires_grad_(True)
        self.tensors = [self.leaf]

    def _transform(self, scale: bool) -> torch.Tensor | None:
        import torch

        if not scale:
            return None
        jac = torch.func.jacfwd(lambda t: self.model.predict(self.train.inputs, t))(self.theta0)
        if self.train.weights is not None:
            jac = jac * self.train.weights[:, None]
        spread = float(self.train.y.std(correction=0)) if self.train.n_rows > 1 else 1.0
        bounded = bool((torch.isfinite(self.lower[self.free_index]) | torch.isfinite(self.upper[self.free_index])).any())
        scaling = column_scaling if bounded else whitening  # a box must stay a box (see column_scaling)
        return scaling(jac[:, self.free_index], spread if spread > 0 else 1.0)

    def theta(self) -> torch.Tensor:
        """The full parameter vector ``(p,)`` in the user's units (differentiable)."""
        if self.identity:
            return self.leaf
        step = self.leaf if self.transform is None else self.transform @ self.leaf
        return self.theta0.index_add(0, self.free_index, step)

    def loss(self, part: Split) -> torch.Tensor:
        """Internal loss on ``part`` at the current parameters."""
        prediction = self.model.predict(part.inputs, self.theta())
        return self.loss_fn(part.residuals(prediction)) / self.unit

    def project(self) -> None:
        """Move the parameters back inside their bounds after a step."""
        import torch

        with torch.no_grad():
            theta = self.theta()
            clamped = torch.clamp(theta, self.lower, self.upper)
            if torch.equal(clamped, theta):
                return
            if self.identity:
                self.leaf.copy_(clamped)
                return
            delta = (clamped - self.theta0)[self.free_index]
            if self.transform is not None:
                delta = torch.linalg.solve(self.transform, delta)
            self.leaf.copy_(delta)

    def snapshot(self) -> torch.Tensor:
        """A copy of the current state."""
        return self.leaf.detach().clone()

    def restore(self, state: torch.Tensor) -> None:
        """Return to a state from :meth:`snapshot`."""
        import torch

        with torch.no_grad():
            self.leaf.copy_(state)

    def result_theta(self) -> torch.Tensor:
        """The current parameters, detached."""
        return self.theta().detach().clone()


class ModuleObjective(_Objective):
    """Loss of a ``torch.nn.Module`` trained in place, with standardised inputs and output."""

    def __init__(
        self, model: ModuleModel, train: Split, val: Split | None, loss_fn: Loss, scale: bool
    ) -> None:
        self.model, self.train, self.val, self.loss_fn = model, train, val, loss_fn
        x = model.stack_inputs(train.inputs)
        self.x_scaler = Standardizer.fit(x) if scale else None
        self.y_scaler = Standardizer.fit(train.y) if scale else None
        self.unit = reference_loss(loss_fn, train.y) if scale else 1.0
        self.baseline = baseline_loss(loss_fn, train)
        self.tensors = [p for p in model.module.parameters() if p.requires_grad]

    def predict(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Predictions in the user's units."""
        x = self.model.stack_inputs(inputs)
        if self.x_scaler is not None:
            x = self.x_scaler.transform(x)
        out = one_output(self.model.module(self.model.as_module_input(x)))
        return self.y_scaler.inverse(out) if self.y_scaler is not None else out

    def evaluate(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Predictions in the user's units in evaluation mode (dropout off, batch norm's running
        statistics), without a graph: what validation, the statistics and ``predict`` see."""
        import torch

        with torch.no_grad(), self.model.evaluating():
            return self.predict(inputs)

    def loss(self, part: Split) -> torch.Tensor:
        """Internal loss on ``part``."""
        return self.loss_fn(part.residuals(self.predict(part.inputs))) / self.unit

    def train_loss(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """Internal training loss in training mode (as ``module.train()``), on the rows ``index`` when given."""
        self.model.module.train()
        return super().train_loss(index)

    def val_loss(self) -> torch.Tensor | None:
        """Internal validation loss in evaluation mode, without a graph."""
        with self.model.evaluating():
            return super().val_loss()

    def full_train_loss(self) -> torch.Tensor:
        """Internal loss on all training rows in evaluation mode, without a graph (as ``predict`` sees it)."""
        with self.model.evaluating():
            return super().full_train_loss()

    def project(self) -> None:
        """Modules have no bounds."""

    def snapshot(self) -> dict[str, Any]:
        """A copy of the module's state."""
        return {k: v.detach().clone() for k, v in self.model.module.state_dict().items()}

    def restore(self, state: dict[str, Any]) -> None:
        """Return to a state from :meth:`snapshot`."""
        self.model.module.load_state_dict(state)
