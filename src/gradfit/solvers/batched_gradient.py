"""Gradient descent for K independent fits at once: every group's parameters in one tensor.

The objective is the sum over groups of each group's own mean loss (any loss of
:mod:`gradfit.losses`, e.g. ``mae``), so the gradient of group ``k``'s parameters is the gradient of
its own loss alone; an optimizer whose update is elementwise (SGD, Adam, AdamW, RMSprop, Adagrad,
Adadelta, Adamax, NAdam, RAdam, ASGD, Rprop — each keeps per-element state) then moves every group
exactly as it would move it alone. Optimizers whose update mixes elements of a tensor (``LBFGS``'s
line search on the total loss, ``Adafactor``'s factored moments and update clipping) would couple the
groups and are refused by :func:`check_group_optimizer`.

Each group is scaled as a single fit is (:mod:`gradfit.scaling`): its parameters move in whitened
coordinates ``θ = θ0 + P_k u`` from its own Jacobian at the start, and its loss is divided by the
loss of its constant model. The stop rules are the training loop's (:mod:`gradfit.train`), per group:
the epoch limit, early stopping on the validation loss (``patience``; the best parameters are
restored), divergence (non-finite or exploding loss: the best finite parameters are kept). A group
that stopped keeps its result while the others go on; the run ends when every group has stopped.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gradfit.errors import OptionError
from gradfit.losses import pointwise_loss
from gradfit.scaling import NULL_FLOOR, whitening_divisors
from gradfit.train import END_GROWTH, EXPLODE_FACTOR, FLOOR_FRACTION, StopReason

if TYPE_CHECKING:
    import torch

    from gradfit.model import ParametricModel

    Tensor = torch.Tensor

__all__ = ["GroupGradientSolution", "solve_groups_by_gradient", "check_group_optimizer", "STOP_CODES", "FAILED_CODES", "EXPLODE_FACTOR"]

#: the stop reasons a group can end with, by code
STOP_CODES = (StopReason.MAX_EPOCHS, StopReason.EARLY_STOPPED, StopReason.DIVERGED, StopReason.NON_FINITE, StopReason.INTERRUPTED)
_MAX_EPOCHS, _EARLY, _DIVERGED, _NON_FINITE, _INTERRUPTED = range(5)
#: the codes of groups that did not end at a proper stopping point
FAILED_CODES = (_DIVERGED, _NON_FINITE, _INTERRUPTED)
#: optimizers whose update mixes the elements of a parameter tensor, and why
_COUPLING = {
    "lbfgs": "runs one line search on the total loss of all groups",
    "adafactor": "factors its moments and clips its update over the whole tensor",
}


def check_group_optimizer(spec: Any, options: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`OptionError` for an optimizer that would couple the groups of a batched fit.

    Checked by name (before torch is imported) and by class.
    """
    name = spec if isinstance(spec, str) else getattr(spec, "__name__", type(spec).__name__)
    key = str(name).lower().replace("-", "").replace("_", "")
    if key in _COUPLING:
        raise OptionError(
            f"optimizer '{name}' {_COUPLING[key]}, which would couple the groups — use an elementwise "
            "optimizer such as adam, sgd or rmsprop for group fits"
        )


@dataclass(frozen=True)
class GroupGradientSolution:
    """Result of :func:`solve_groups_by_gradient` for K groups.

    Attributes
    ----------
    theta
        ``(K, p)`` parameters each group ended with.
    epochs
        ``(K,)`` epochs each group ran before it stopped.
    code
        ``(K,)`` index into :data:`STOP_CODES`.
    """

    theta: Tensor
    epochs: Tensor
    code: Tensor


def solve_groups_by_gradient(
    model: ParametricModel,
    inputs: Mapping[str, Tensor],
    y: Tensor,
    fit_weights: Tensor,
    val_weights: Tensor | None,
    theta0: Tensor,
    free: list[bool],
    lower: list[float],
    upper: list[float],
    *,
    loss: str = "mse",
    loss_scale: float = 1.0,
    optimizer: Any = "adam",
    optimizer_options: Mapping[str, Any] | None = None,
    epochs: int = 1000,
    patience: int | None = None,
    scale: bool = True,
    stop: threading.Event | None = None,
) -> GroupGradientSolution:
    """Train K groups' parameters together with a ``torch.optim`` optimizer.

    Parameters
    ----------
    model
        A parametric model evaluated with ``(K, p)`` parameters on ``(K, n)`` inputs.
    inputs, y
        Input columns and target, ``(K, n)`` each.
    fit_weights, val_weights
        ``(K, n)`` weight of each point in the training and validation losses: ``1/σ`` (or 1) on
        the group's points of that part, 0 elsewhere (padding, the other part).
    theta0
        ``(K, p)`` starting values; ``free`` marks the estimated parameters, ``lower``/``upper``
        their bounds (parameters are projected into them after every step).
    loss, loss_scale
        The loss (:mod:`gradfit.losses`) and the residual scale of the robust losses.
    optimizer, optimizer_options
        An elementwise ``torch.optim`` optimizer (name, class or factory) and its keyword
        arguments (a learning rate of 1e-2 when none is given, as for single fits).
    epochs, patience
        Epoch limit, and early stopping after ``patience`` epochs without improvement of a group's
        monitored loss (its validation loss if it has validation points, else its training loss).
    scale
        Whitened coordinates and normalised losses per group (see the module notes).
    stop
        When set (by another thread), or at a ``KeyboardInterrupt`` (which also sets it), the groups
        still training stop with status ``interrupted`` and their best parameters so far.
    """
    import torch

    from gradfit.solvers.gradient import make_optimizer

    check_group_optimizer(optimizer, optimizer_options)
    objective = _GroupObjective(model, inputs, y, fit_weights, val_weights, theta0, free, lower, upper, loss, loss_scale, scale)
    opt = make_optimizer(optimizer, [objective.leaf], optimizer_options)
    record = _Record(objective)
    try:
        _train(objective, opt, record, epochs, patience, stop)
    except KeyboardInterrupt:
        if stop is not None:
            stop.set()  # the caller learns of it, and re-raises once this chunk's table is out
        record.interrupt()
    return record.solution(objective)


def _train(objective: _GroupObjective, opt: Any, record: _Record, epochs: int, patience: int | None, stop: threading.Event | None) -> None:
    """The epochs: losses before each step (validation without a graph), one step, the stop rules."""
    import torch

    for epoch in range(1, epochs + 1):
        if not bool(record.active.any()):
            break
        if stop is not None and stop.is_set():
            record.interrupt()
            break
        state = objective.leaf.detach().clone()
        with torch.no_grad():
            val = objective.losses(objective.val_weights, objective.val_count) if objective.val_weights is not None else None

        def closure() -> Tensor:
            opt.zero_grad()
            train_k = objective.losses(objective.fit_weights, objective.fit_count)
            closure.train = train_k.detach()  # type: ignore[attr-defined]
            total = torch.where(record.active, train_k / objective.unit, 0.0).sum()
            total.backward()
            return total

        opt.step(closure)
        objective.project()
        train = closure.train  # type: ignore[attr-defined]
        record.update(epoch, state, train, train if val is None else torch.where(objective.has_val, val, train), patience)


class _GroupObjective:
    """The groups' parameters as one leaf (whitened or plain free parameters) and their losses."""

    def __init__(self, model: ParametricModel, inputs: Mapping[str, Tensor], y: Tensor, fit_weights: Tensor,
                 val_weights: Tensor | None, theta0: Tensor, free: list[bool], lower: list[float], upper: list[float],
                 loss: str, loss_scale: float, scale: bool) -> None:
        import torch

        self.model, self.inputs, self.y = model, dict(inputs), y
        self.fit_weights, self.val_weights = fit_weights, val_weights
        self.theta0 = theta0
        self.free_index = torch.tensor([j for j, f in enumerate(free) if f], dtype=torch.int64, device=theta0.device)
        self.lower = torch.as_tensor(lower, dtype=theta0.dtype, device=theta0.device)
        self.upper = torch.as_tensor(upper, dtype=theta0.dtype, device=theta0.device)
        self.bounded = any(math.isfinite(b) for b in (*lower, *upper))
        self.pointwise = pointwise_loss(loss, loss_scale)
        self.fit_count = torch.clamp((fit_weights != 0).sum(-1), min=1).to(theta0.dtype)
        self.has_val = None if val_weights is None else (val_weights != 0).any(-1)
        self.val_count = None if val_weights is None else torch.clamp((val_weights != 0).sum(-1), min=1).to(theta0.dtype)
        k, q = theta0.shape[0], self.free_index.numel()
        self.shape = (k, q)
        self.bounded_free = any(math.isfinite(lower[j]) or math.isfinite(upper[j]) for j, f in enumerate(free) if f)
        self.transform = self._whitening() if scale else None
        self.unit = self._reference() if scale else torch.ones(k, dtype=theta0.dtype, device=theta0.device)
        self.baseline = self._baseline()
        start = theta0.new_zeros(k * q) if scale else theta0.index_select(1, self.free_index).reshape(-1).clone()
        self.leaf = start.requires_grad_(True)  # flat: an optimizer's per-tensor rules see elements only

    def theta(self) -> Tensor:
        """``(K, p)`` parameters in the user's units (differentiable)."""
        u = self.leaf.reshape(self.shape)
        free = u if self.transform is None else (self.transform * u[:, None, :]).sum(-1)
        if self.transform is not None:
            free = self.theta0.index_select(1, self.free_index) + free
        return self.theta0.index_copy(1, self.free_index, free)

    def losses(self, weights: Tensor, count: Tensor) -> Tensor:
        """``(K,)`` each group's mean loss over the ``count`` points ``weights`` selects, at the current parameters."""
        residuals = (self.model.predict(self.inputs, self.theta()) - self.y) * weights
        return self.pointwise(residuals).sum(-1) / count

    def project(self) -> None:
        """Move parameters back into their bounds (plain coordinates only: whitened ones are solved for)."""
        import torch

        if not self.bounded:
            return
        with torch.no_grad():
            clamped = torch.maximum(torch.minimum(self.theta(), self.upper), self.lower).index_select(1, self.free_index)
            if self.transform is not None:  # the whitened coordinates of the clamped point
                offset = clamped - self.theta0.index_select(1, self.free_index)
                clamped = torch.linalg.solve(self.transform, offset.unsqueeze(-1)).squeeze(-1)
            self.leaf.copy_(clamped.reshape(-1))

    def _whitening(self) -> Tensor:
        """``P_k`` ``(K, q, q)`` with ``P_kᵀ (J_kᵀJ_k / n_k) P_k = sd(y_k)² I`` (see :func:`gradfit.scaling.whitening`),
        or, when a free parameter is bounded, each parameter scaled alone (as
        :func:`gradfit.scaling.column_scaling`: a box stays a box)."""
        import torch

        with torch.no_grad():
            _, jac = self.model.predict_and_jacobian(self.inputs, self.theta0)
            jac = (jac * self.fit_weights[..., None]).index_select(-1, self.free_index)
            jac = torch.where(torch.isfinite(jac).all((-2, -1), keepdim=True), jac, 0.0)  # such groups: no whitening
            mask = (self.fit_weights != 0).to(jac.dtype)
            n = self.fit_count
            mean = (self.y * mask).sum(-1) / n
            spread = torch.sqrt((((self.y - mean[:, None]) * mask) ** 2).sum(-1) / n)
            spread = torch.where((spread > 0) & (n > 1), spread, 1.0)
            if self.bounded_free:
                return _column_scaling(jac / torch.sqrt(n)[:, None, None], spread)
            _, s, vh = torch.linalg.svd(jac / torch.sqrt(n)[:, None, None], full_matrices=False)
            largest = s.amax(-1, keepdim=True)
            usable = torch.isfinite(largest) & (largest > 0)
            s = torch.where(usable, whitening_divisors(s, largest), 1.0)
            vh = torch.where(usable[..., None], vh, torch.eye(vh.shape[-1], dtype=vh.dtype, device=vh.device))
            return spread[:, None, None] * (vh.mT / s[:, None, :]) @ vh

    def _reference(self) -> Tensor:
        """``(K,)`` the loss of each group's constant model ``mean(y)`` (1 where it is 0 or not finite)."""
        import torch

        value = self._constant_model_loss(weighted=False)
        return torch.where(torch.isfinite(value) & (value > 0), value, 1.0)

    def _baseline(self) -> Tensor:
        """``(K,)`` each group's weighted loss of predicting its mean target (0 where not finite), in the
        user's units: the scale of :mod:`gradfit.train`'s divergence rules."""
        import torch

        value = self._constant_model_loss(weighted=True)
        return torch.where(torch.isfinite(value), value, 0.0)

    def _constant_model_loss(self, weighted: bool) -> Tensor:
        """``(K,)`` each group's mean loss of ``mean(y)`` over its fitted points, of weighted or plain residuals."""
        import torch

        with torch.no_grad():
            mask = (self.fit_weights != 0).to(self.y.dtype)
            mean = (self.y * mask).sum(-1) / self.fit_count
            return self.pointwise((self.y - mean[:, None]) * (self.fit_weights if weighted else mask)).sum(-1) / self.fit_count


class _Record:
    """Each group's stop rule state: best monitored loss and its parameters, first loss, status."""

    def __init__(self, objective: _GroupObjective) -> None:
        import torch

        k = objective.shape[0]
        like = objective.theta0
        self.active = torch.ones(k, dtype=torch.bool, device=like.device)
        self.best_loss = torch.full((k,), math.inf, dtype=like.dtype, device=like.device)
        self.best_epoch = torch.zeros(k, dtype=torch.int64, device=like.device)
        self.best_state = objective.leaf.detach().clone().reshape(objective.shape)
        self.has_best = torch.zeros(k, dtype=torch.bool, device=like.device)
        self.first: Tensor | None = None
        self.floor = FLOOR_FRACTION * objective.baseline
        self.baseline = objective.baseline
        self.last = torch.zeros(k, dtype=like.dtype, device=like.device)  # the last training loss
        self.code = torch.full((k,), _MAX_EPOCHS, dtype=torch.int64, device=like.device)
        self.epochs = torch.zeros(k, dtype=torch.int64, device=like.device)
        self.final = self.best_state.clone()  # parameters of groups that stopped

    def update(self, epoch: int, state: Tensor, train: Tensor, monitored: Tensor, patience: int | None) -> None:
        """One epoch's losses at ``state`` (the parameters before the step), for the active groups."""
        import torch

        state = state.reshape(self.best_state.shape)
        self.first = train if self.first is None else self.first
        active = self.active
        self.epochs = torch.where(active, epoch, self.epochs)
        self.last = torch.where(active, train, self.last)
        reference = torch.maximum(self.first, self.floor)  # as gradfit.train's rules
        exploded = (reference > 0) & (train > EXPLODE_FACTOR * reference)
        diverged = active & (~torch.isfinite(train) | ~torch.isfinite(monitored) | exploded)
        first_time = diverged & ~self.has_best  # diverged at once: keep the starting parameters
        self.best_state = torch.where(first_time[:, None], state, self.best_state)
        self.has_best |= first_time
        going = active & ~diverged
        improved = going & ((monitored < self.best_loss) | ~self.has_best)
        self.best_loss = torch.where(improved, monitored, self.best_loss)
        self.best_epoch = torch.where(improved, epoch, self.best_epoch)
        self.best_state = torch.where(improved[:, None], state, self.best_state)
        self.has_best |= improved
        early = going & torch.full_like(going, patience is not None) & (epoch - self.best_epoch >= (patience or 0))
        stopped = diverged | early
        at_start = (~torch.isfinite(train) | ~torch.isfinite(monitored)) & (epoch == 1)  # not finite at the start
        failed = torch.where(at_start, _NON_FINITE, _DIVERGED)
        self.code = torch.where(diverged, failed, torch.where(early, _EARLY, self.code))
        self.final = torch.where(stopped[:, None], self.best_state, self.final)
        self.active = active & ~stopped

    def interrupt(self) -> None:
        """The groups still training stop here with their best parameters so far."""
        import torch

        self.code = torch.where(self.active, _INTERRUPTED, self.code)
        self.final = torch.where(self.active[:, None], self.best_state, self.final)
        self.active = torch.zeros_like(self.active)

    def solution(self, objective: _GroupObjective) -> GroupGradientSolution:
        """Groups still going ended at the epoch limit, with the parameters after the last step, unless
        their loss ended far above its start (:func:`gradfit.train.ended_far_above_start`): those
        diverged, and keep their best parameters."""
        import torch

        if self.first is not None:
            worse = self.active & (self.last > END_GROWTH * torch.maximum(self.first, self.baseline))
            self.code = torch.where(worse, _DIVERGED, self.code)
            self.final = torch.where(worse[:, None], self.best_state, self.final)
            self.active &= ~worse
        current = objective.leaf.detach().reshape(objective.shape)
        final = torch.where(self.active[:, None], current, self.final)
        with torch.no_grad():
            objective.leaf.copy_(final.reshape(-1))
            theta = objective.theta().detach().clone()
        return GroupGradientSolution(theta, self.epochs, self.code)


def _column_scaling(scaled_jac: Tensor, spread: Tensor) -> Tensor:
    """``(K, q, q)`` diagonal: ``spread_k`` over each column's RMS (``scaled_jac = J_k / sqrt(n_k)``);
    columns at or below ``NULL_FLOOR`` of the largest keep its scale; groups whose Jacobian is zero or
    not finite are scaled by ``spread_k`` alone (as :func:`gradfit.scaling.column_scaling`)."""
    import torch

    rms = torch.linalg.vector_norm(scaled_jac, dim=-2)  # (K, q)
    largest = rms.amax(-1, keepdim=True)
    usable = torch.isfinite(rms).all(-1, keepdim=True) & (largest > 0)
    divisors = torch.where(usable, torch.where(rms <= largest * NULL_FLOOR, largest, rms), 1.0)
    return torch.diag_embed(spread[:, None] / divisors)
