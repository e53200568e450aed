"""The training loop of the gradient-family solvers, with the chapter's stop rules.

Each epoch computes the validation loss under ``torch.no_grad()`` at the current parameters, then
takes one optimizer step (full batch) or one pass of minibatch steps on the training loss, whose value
before the step is recorded. Backward runs only on the training loss. The loop stops at the epoch
limit, when the monitored loss reaches a target, when it has not improved for ``patience`` epochs
(restoring the best parameters), or when the loss diverges (restoring the best finite parameters).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

__all__ = ["StopReason", "TrainConfig", "TrainOutcome", "Objective", "run_training"]


class StopReason(enum.Enum):
    """Why a training run stopped; each value is the message shown to the user."""

    MAX_EPOCHS = "reached the epoch limit"
    TARGET = "the monitored loss reached the target"
    EARLY_STOPPED = "validation loss stopped improving; restored the parameters of the best epoch"
    DIVERGED = (
        "the loss diverged (non-finite or exploding); kept the best finite parameters — lower the "
        "learning rate (--opt lr=...) or keep input scaling on"
    )
    INTERRUPTED = "interrupted; kept the best parameters found so far"


class Objective(Protocol):
    """What the loop needs from an objective (see :mod:`gradfit.objective`)."""

    tensors: list[torch.Tensor]
    unit: float

    def train_loss(self, index: torch.Tensor | None = None) -> torch.Tensor: ...

    def val_loss(self) -> torch.Tensor | None: ...

    def project(self) -> None: ...

    def snapshot(self) -> Any: ...

    def restore(self, state: Any) -> None: ...


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the training loop.

    Parameters
    ----------
    epochs
        Maximum number of epochs.
    batch_size
        Minibatch size; ``None`` for full batch.
    target
        Stop once the monitored loss (validation if any, else training), in the user's units, is at
        or below this value.
    patience
        Early stopping: stop after this many epochs without improvement of the monitored loss and
        restore the best parameters. ``None`` disables it.
    min_delta
        Relative improvement that counts as an improvement for ``patience``.
    explode_factor
        A training loss this many times its first value counts as divergence.
    seed
        Seed of the minibatch shuffling.
    plateau_patience
        When set, halve the learning rate after this many epochs without improvement.
    """

    epochs: int = 1000
    batch_size: int | None = None
    target: float | None = None
    patience: int | None = None
    min_delta: float = 0.0
    explode_factor: float = 1e8
    seed: int = 0
    plateau_patience: int | None = None


@dataclass(frozen=True)
class TrainOutcome:
    """What a training run produced (losses in the user's units)."""

    train_history: list[float]
    val_history: list[float]
    epochs: int
    best_epoch: int
    stop: StopReason


@dataclass
class _Best:
    loss: float = math.inf
    epoch: int = 0
    state: Any = None


Callback = Callable[[int, float, "float | None"], None]


def run_training(
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    callback: Callback | None = None,
) -> TrainOutcome:
    """Run the training loop until a stop rule fires.

    Parameters
    ----------
    objective
        The objective; its tensors are the optimizer's parameters.
    optimizer
        Any ``torch.optim`` optimizer over ``objective.tensors``.
    config
        Loop settings.
    callback
        Called after every epoch with ``(epoch, train_loss, val_loss)`` in the user's units.

    Returns
    -------
    TrainOutcome
        Histories, epochs run, best epoch and the stop reason. The objective is left at the
        parameters the run returns (the best ones after early stopping or divergence).
    """
    import torch

    scheduler = _scheduler(optimizer, config)
    step = _full_batch_step if config.batch_size is None else _minibatch_epoch
    generator = torch.Generator().manual_seed(config.seed)
    train_history: list[float] = []
    val_history: list[float] = []
    best, first = _Best(), None
    stop = StopReason.MAX_EPOCHS
    epoch = 0
    try:
        for epoch in range(1, config.epochs + 1):
            state = objective.snapshot()
            val = objective.val_loss()
            train = step(objective, optimizer, config, generator) * objective.unit
            val_value = None if val is None else float(val) * objective.unit
            train_history.append(train)
            if val_value is not None:
                val_history.append(val_value)
            monitored = train if val_value is None else val_value
            first = train if first is None else first
            if callback is not None:
                callback(epoch, train, val_value)
            if _diverged(train, monitored, first, config):
                stop = StopReason.DIVERGED
                break
            if monitored < best.loss * (1.0 - config.min_delta) or best.state is None:
                best = _Best(monitored, epoch, state)
            if scheduler is not None:
                scheduler.step(monitored)
            if config.target is not None and monitored <= config.target:
                stop = StopReason.TARGET
                break
            if config.patience is not None and epoch - best.epoch >= config.patience:
                stop = StopReason.EARLY_STOPPED
                break
    except KeyboardInterrupt:
        stop = StopReason.INTERRUPTED
    if stop in (StopReason.DIVERGED, StopReason.EARLY_STOPPED, StopReason.INTERRUPTED) and best.state is not None:
        objective.restore(best.state)
    return TrainOutcome(train_history, val_history, epoch, best.epoch, stop)


def _diverged(train: float, monitored: float, first: float, config: TrainConfig) -> bool:
    if not (math.isfinite(train) and math.isfinite(monitored)):
        return True
    return first > 0 and train > config.explode_factor * first


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> Any:
    if config.plateau_patience is None:
        return None
    from gradfit.solvers.gradient import make_plateau_scheduler

    return make_plateau_scheduler(optimizer, patience=config.plateau_patience)


def _full_batch_step(
    objective: Objective, optimizer: torch.optim.Optimizer, config: TrainConfig, generator: Any
) -> float:
    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective.train_loss()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    objective.project()
    return float(loss.detach())


def _minibatch_epoch(
    objective: Objective, optimizer: torch.optim.Optimizer, config: TrainConfig, generator: Any
) -> float:
    import torch

    n = objective.train.n_rows  # type: ignore[attr-defined]
    order = torch.randperm(n, generator=generator)
    total = 0.0
    for batch in order.split(config.batch_size):

        def closure(batch: torch.Tensor = batch) -> torch.Tensor:
            optimizer.zero_grad()
            loss = objective.train_loss(batch)
            loss.backward()
            return loss

        total += float(optimizer.step(closure).detach()) * batch.numel()
        objective.project()
    return total / n
