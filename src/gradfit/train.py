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
from dataclasses import dataclass, field
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
        "the loss diverged (non-finite, exploding, or ending far above its start); kept the best finite "
        "parameters — lower the learning rate (lr in the optimizer's options) or keep input scaling on"
    )
    INTERRUPTED = "interrupted; kept the best parameters found so far"
    NON_FINITE = (
        "the loss is not finite at the starting values (the model is NaN or inf on some points there, or the "
        "residuals overflow) — give starting values where the model is finite on every point, or rescale the data"
    )


#: a training loss this many times its first value (or the floor below) counts as divergence
EXPLODE_FACTOR = 1e8
#: losses below this fraction of the baseline are all "near zero": growing from there is no divergence
FLOOR_FRACTION = 1e-8
#: a run whose last loss is this many times above both its first loss and the baseline has diverged
END_GROWTH = 10.0


class Objective(Protocol):
    """What the loop needs from an objective (see :mod:`gradfit.objective`)."""

    tensors: list[torch.Tensor]
    unit: float
    baseline: float  # the loss of a constant model (the training targets' mean), in the user's units

    def train_loss(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss in internal units (times :attr:`unit` gives the user's), with a graph.

        Parameters
        ----------
        index
            Row indices of a minibatch; ``None`` for all training rows.

        Returns
        -------
        torch.Tensor
            A scalar that the loop calls ``backward()`` on.
        """

    def val_loss(self) -> torch.Tensor | None:
        """The validation loss in internal units, without a graph; ``None`` without validation data."""

    def full_train_loss(self) -> torch.Tensor:
        """The loss on all training rows in internal units, without a graph.

        Minibatch training monitors it when there is no validation data, and measures the start with it.
        """

    def project(self) -> None:
        """Move the parameters back inside their bounds after an optimizer step (a no-op if unbounded)."""

    def snapshot(self) -> Any:
        """A copy of the current parameters, for :meth:`restore` and for checkpoints."""

    def restore(self, state: Any) -> None:
        """Return the parameters to a state from :meth:`snapshot`.

        Parameters
        ----------
        state
            A value :meth:`snapshot` returned.
        """


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
        Stop once the monitored loss (validation if any, else training, at the parameters an epoch
        starts from), in the user's units, is at or below this value.
    patience
        Early stopping: stop after this many epochs without improvement of the monitored loss and
        restore the best parameters. ``None`` disables it.
    min_delta
        Relative improvement that counts as an improvement for ``patience``.
    explode_factor
        A training loss this many times its first value (or :data:`FLOOR_FRACTION` of the
        objective's baseline, if larger) counts as divergence.
    seed
        Seed of the minibatch shuffling.
    plateau_patience
        When set, halve the learning rate after this many epochs without improvement.
    checkpoint_every
        Epochs between two calls of the checkpoint callback.
    """

    epochs: int = 1000
    batch_size: int | None = None
    target: float | None = None
    patience: int | None = None
    min_delta: float = 0.0
    explode_factor: float = EXPLODE_FACTOR
    seed: int = 0
    plateau_patience: int | None = None
    checkpoint_every: int = 100


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


@dataclass
class _Progress:
    """Everything the loop carries from one epoch to the next (what a checkpoint holds)."""

    epoch: int = 0
    train_history: list[float] = field(default_factory=list)
    val_history: list[float] = field(default_factory=list)
    best: _Best = field(default_factory=_Best)
    first: float | None = None


Callback = Callable[[int, float, "float | None"], None]
Checkpoint = Callable[[dict[str, Any]], None]


def run_training(
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    callback: Callback | None = None,
    checkpoint: Checkpoint | None = None,
    resume: dict[str, Any] | None = None,
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
    checkpoint
        Called every ``config.checkpoint_every`` epochs with the loop's complete state (a dict of
        tensors and numbers, for ``torch.save``).
    resume
        A state from ``checkpoint``: the run continues after its epoch and ends exactly where an
        uninterrupted run would.

    Returns
    -------
    TrainOutcome
        Histories, epochs run, best epoch and the stop reason. The objective is left at the
        parameters the run returns (the best ones after early stopping, divergence or interruption).
    """
    import torch

    scheduler = _scheduler(optimizer, config)
    generator = torch.Generator().manual_seed(config.seed)
    progress = _restore(resume, objective, optimizer, scheduler, generator) if resume else _Progress()
    if progress.best.state is None:  # until an epoch does better, the best parameters are the start
        progress.best = _Best(math.inf, progress.epoch, objective.snapshot())
    stop = StopReason.MAX_EPOCHS
    try:
        while progress.epoch < config.epochs:
            stop = _epoch(objective, optimizer, scheduler, generator, config, progress, callback)
            if stop is not None:
                break
            if checkpoint is not None and progress.epoch % config.checkpoint_every == 0:
                checkpoint(_state(progress, objective, optimizer, scheduler, generator))
        else:
            stop = StopReason.MAX_EPOCHS
    except KeyboardInterrupt:
        stop = StopReason.INTERRUPTED
    if stop is StopReason.MAX_EPOCHS and ended_far_above_start(progress.train_history, objective.baseline, progress.first):
        stop = StopReason.DIVERGED
    if stop is not StopReason.MAX_EPOCHS and stop is not StopReason.TARGET and progress.best.state is not None:
        objective.restore(progress.best.state)
    return TrainOutcome(progress.train_history, progress.val_history, progress.epoch, progress.best.epoch, stop)


def _epoch(
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: Any,
    config: TrainConfig,
    progress: _Progress,
    callback: Callback | None,
) -> StopReason | None:
    """One epoch: validation loss at the current parameters, then the step(s); returns a stop reason.

    The monitored loss is the validation loss, else the training loss, both at the parameters the
    epoch starts from (those a stop rule restores): with minibatches, whose average loss is taken
    while the parameters move, the full training loss is evaluated there for it — and at the start,
    for the reference that divergence is judged against (an average over an epoch that exploded is
    none).
    """
    step = _full_batch_step if config.batch_size is None else _minibatch_epoch
    state = objective.snapshot()
    val = objective.val_loss()
    needed = config.batch_size is not None and (val is None or progress.first is None)
    start = float(objective.full_train_loss()) * objective.unit if needed else None
    train = step(objective, optimizer, config, generator) * objective.unit
    val_value = None if val is None else float(val) * objective.unit
    progress.epoch += 1
    progress.train_history.append(train)
    if val_value is not None:
        progress.val_history.append(val_value)
    monitored = val_value if val_value is not None else (train if start is None else start)
    if progress.first is None:  # the training loss at the starting parameters
        progress.first = train if start is None else start
    diverged = _diverged(train, monitored, max(progress.first, FLOOR_FRACTION * objective.baseline), config)
    if not diverged and monitored < progress.best.loss * (1.0 - config.min_delta):
        progress.best = _Best(monitored, progress.epoch, state)
    if callback is not None:  # after the books are kept: a callback that interrupts loses nothing
        callback(progress.epoch, train, val_value)
    if diverged:  # the best parameters so far (the start, if it diverged at once) are kept
        at_start = progress.epoch == 1 and not (math.isfinite(progress.first) and math.isfinite(monitored))
        return StopReason.NON_FINITE if at_start else StopReason.DIVERGED
    if scheduler is not None:
        scheduler.step(monitored)
    if config.target is not None and monitored <= config.target:
        objective.restore(state)  # the parameters whose loss met the target: those before this epoch's step
        return StopReason.TARGET
    if config.patience is not None and progress.epoch - progress.best.epoch >= config.patience:
        return StopReason.EARLY_STOPPED
    return None


def _state(progress: _Progress, objective: Objective, optimizer: Any, scheduler: Any, generator: Any) -> dict[str, Any]:
    return {
        "epoch": progress.epoch,
        "train_history": list(progress.train_history),
        "val_history": list(progress.val_history),
        "best": {"loss": progress.best.loss, "epoch": progress.best.epoch, "state": progress.best.state},
        "first": progress.first,
        "objective": objective.snapshot(),
        "optimizer": optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch_random_state(),  # dropout and other random layers draw from torch's own generators
    }


def _restore(state: dict[str, Any], objective: Objective, optimizer: Any, scheduler: Any, generator: Any) -> _Progress:
    objective.restore(state["objective"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    if state.get("torch_rng") is not None:
        set_torch_random_state(state["torch_rng"])
    best = _Best(state["best"]["loss"], state["best"]["epoch"], state["best"]["state"])
    return _Progress(state["epoch"], list(state["train_history"]), list(state["val_history"]), best, state["first"])


def torch_random_state() -> dict[str, Any]:
    """Torch's global random state: the CPU generator's and, where CUDA was used, each device's."""
    import torch

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_torch_random_state(state: dict[str, Any]) -> None:
    """Return to a state from :func:`torch_random_state`."""
    import torch

    torch.set_rng_state(state["cpu"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _diverged(train: float, monitored: float, reference: float, config: TrainConfig) -> bool:
    """Non-finite, or ``explode_factor`` times the first loss (floored near zero)."""
    if not (math.isfinite(train) and math.isfinite(monitored)):
        return True
    return reference > 0 and train > config.explode_factor * reference


def ended_far_above_start(train_history: list[float], baseline: float, first: float | None = None) -> bool:
    """Whether a run's last training loss is :data:`END_GROWTH` times above both its loss at the
    start (``first``; by default the history's first) and the baseline: a run that made the fit
    worse than its start and than a constant model failed."""
    if not train_history:
        return False
    return train_history[-1] > END_GROWTH * max(train_history[0] if first is None else first, baseline)


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

    train = objective.train  # type: ignore[attr-defined]
    n = train.n_rows
    order = torch.randperm(n, generator=generator).to(train.y.device)  # the same order on every device, copied once
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
