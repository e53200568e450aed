"""Gradient-family solvers: any ``torch.optim`` optimizer, by name or as an instance.

Names are matched case-insensitively against the classes in ``torch.optim`` (``sgd``, ``adam``,
``adamw``, ``rmsprop``, ``adagrad``, ``lbfgs``...). Keyword arguments go to the constructor
unchanged, except that a learning rate is supplied when none is given (see :data:`DEFAULT_LR`)
and LBFGS gets a strong-Wolfe line search unless ``line_search_fn`` is given. The result records
every hyperparameter the optimizer ran with (:func:`effective_options`).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from gradfit.config import FitOptions
from gradfit.errors import OptionError, first_line
from gradfit.model import ModuleModel
from gradfit.objective import ModuleObjective, ParametricObjective
from gradfit.result import History
from gradfit.solvers.base import Problem, SolveOutcome
from gradfit.train import StopReason, TrainConfig, TrainOutcome, run_training

if TYPE_CHECKING:
    import torch

__all__ = ["optimizer_names", "make_optimizer", "make_plateau_scheduler", "solve_gradient", "effective_options", "DEFAULT_LR"]

#: learning rate used when none is given: the chapter's 1e-2 (LBFGS keeps its own default of 1)
DEFAULT_LR = 1e-2

_NEEDS_SPECIAL_PARAMETERS = {
    "sparseadam": "needs sparse gradients (embedding layers with sparse=True)",
    "muon": "only optimises 2-D weight matrices",
}


def _optimizer_classes() -> dict[str, type]:
    import torch.optim

    return {
        name.lower(): cls
        for name, cls in vars(torch.optim).items()
        if inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer
    }


def optimizer_names(plain_parameters_only: bool = True) -> list[str]:
    """Lower-case names of the ``torch.optim`` optimizers.

    Parameters
    ----------
    plain_parameters_only
        Leave out optimizers that cannot optimise a plain list of dense parameters
        (``SparseAdam``, ``Muon``).
    """
    names = sorted(_optimizer_classes())
    if plain_parameters_only:
        names = [n for n in names if n not in _NEEDS_SPECIAL_PARAMETERS]
    return names


def make_optimizer(
    spec: Any, params: Iterable[torch.Tensor], options: Mapping[str, Any] | None = None
) -> torch.optim.Optimizer:
    """Construct the optimizer ``spec`` over ``params``.

    Parameters
    ----------
    spec
        An optimizer name (``"adam"``), a ``torch.optim.Optimizer`` subclass, a factory
        ``params -> Optimizer``, or an optimizer instance: used as it is when it already holds
        exactly ``params`` (a module's parameters), else rebuilt over ``params`` with its settings.
    params
        The tensors to optimise.
    options
        Keyword arguments for the constructor.

    Returns
    -------
    torch.optim.Optimizer
    """
    import torch

    params = list(params)
    if isinstance(spec, torch.optim.Optimizer):
        return _adopt(spec, params, options)
    cls = _resolve(spec) if isinstance(spec, str) else spec
    kwargs = dict(options or {})
    accepted = _keyword_names(cls)
    unknown = sorted(set(kwargs) - accepted) if accepted is not None else []
    if unknown:
        raise OptionError(
            f"{cls.__name__} has no option '{unknown[0]}' — it accepts "
            f"{', '.join(sorted(accepted - {'params'}))}"
        )
    if accepted is not None and "lr" in accepted and "lr" not in kwargs and cls.__name__ != "LBFGS":
        kwargs["lr"] = DEFAULT_LR
    if cls.__name__ == "LBFGS":
        kwargs.setdefault("line_search_fn", "strong_wolfe")
    name = getattr(cls, "__name__", str(cls))
    shown = ", ".join(f"{k}={v!r}" for k, v in (options or {}).items())
    try:
        optimizer = cls(params, **kwargs)
        _trial_step(cls, kwargs, params)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for options it cannot use
        words = [k for k, v in (options or {}).items() if isinstance(v, str)]
        if isinstance(exc, TypeError) and words:  # a bare word where torch compares a number
            raise OptionError(
                f"cannot use {name}({shown}): {words[0]}={options[words[0]]!r} is not a number — give one, e.g. {words[0]}=0.01"
            ) from None
        raise OptionError(f"cannot use {name}({shown}): {first_line(exc)} — change or drop these options") from None
    return optimizer


def _trial_step(cls: Any, kwargs: Mapping[str, Any], params: list[torch.Tensor]) -> None:
    """One step of a twin optimizer on a scratch copy of the first tensor: options that torch accepts
    at construction but refuses at the first step (``capturable``, ``differentiable`` on a CPU) fail
    here, before the fit, not in the middle of it."""
    import torch

    if not params:
        return
    scratch = torch.zeros_like(params[0][:1].detach().reshape(-1)).requires_grad_(True)
    twin = cls([scratch], **kwargs)

    def closure() -> torch.Tensor:
        twin.zero_grad()
        loss = ((scratch - 1.0) ** 2).sum()
        loss.backward()
        return loss

    twin.step(closure)


def match_state_to_parameters(optimizer: torch.optim.Optimizer) -> None:
    """Give an optimizer's per-parameter state (Adam's moments...) its parameter's dtype and device.

    A fit moves a network to its own dtype and back; the state of an optimizer the user passed
    must follow, or its next step fails on mixed dtypes.
    """
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if getattr(value, "shape", None) == param.shape and value.is_floating_point():
                state[key] = value.to(dtype=param.dtype, device=param.device)


def _adopt(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], options: Mapping[str, Any] | None) -> torch.optim.Optimizer:
    held = [p for group in optimizer.param_groups for p in group["params"]]
    if len(held) == len(params) and all(a is b for a, b in zip(held, params)) and not options:
        match_state_to_parameters(optimizer)  # a warmed-up optimizer's state is in the module's own dtype
        return optimizer
    settings = {**optimizer.defaults, **(options or {})}
    accepted = _keyword_names(type(optimizer))
    if accepted is not None:
        settings = {k: v for k, v in settings.items() if k in accepted}
    return type(optimizer)(params, **settings)


def _resolve(name: str) -> type:
    classes = _optimizer_classes()
    key = name.lower().replace("-", "").replace("_", "")
    if key in _NEEDS_SPECIAL_PARAMETERS:
        raise OptionError(f"optimizer '{name}' {_NEEDS_SPECIAL_PARAMETERS[key]} — choose another")
    if key not in classes:
        raise OptionError(
            f"unknown optimizer '{name}' — choose one of {', '.join(optimizer_names())}"
        )
    return classes[key]


def _keyword_names(factory: Any) -> set[str] | None:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    return set(signature.parameters)


def make_plateau_scheduler(
    optimizer: torch.optim.Optimizer, patience: int = 10, factor: float = 0.5
) -> Any:
    """A reduce-on-plateau learning-rate schedule stepped with the monitored loss."""
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    return ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience)


def solve_gradient(problem: Problem, options: FitOptions) -> SolveOutcome:
    """Fit by gradient descent with a ``torch.optim`` optimizer inside the training loop.

    Parameters
    ----------
    problem
        The fit; module models are trained in place.
    options
        Optimizer (default Adam), its keyword arguments, scaling and the loop's stop rules.
    """
    problem = problem.on_torch()
    objective = _objective(problem, options.scale)
    optimizer = make_optimizer(options.optimizer or "adam", objective.tensors, options.optimizer_options)
    config = TrainConfig(
        epochs=options.epochs,
        batch_size=options.batch_size,
        target=options.target,
        patience=options.patience,
        seed=options.seed,
        plateau_patience=options.plateau,
        checkpoint_every=options.checkpoint_every,
    )
    fingerprint = _fingerprint(problem, optimizer, options)
    resume = load_checkpoint(options.resume, fingerprint) if options.resume else None
    if resume is not None:
        _check_resumed_epochs(resume, options.epochs, options.resume)
    save = _checkpoint_writer(options.checkpoint, fingerprint) if options.checkpoint else None
    with _seeded_randomness(options.seed, problem.train.y.device):
        outcome = run_training(objective, optimizer, config, options.callback, save, resume)
    success = outcome.stop not in (StopReason.DIVERGED, StopReason.INTERRUPTED, StopReason.NON_FINITE)
    theta = objective.result_theta() if isinstance(objective, ParametricObjective) else None
    predict = objective.evaluate if isinstance(objective, ModuleObjective) else None
    return SolveOutcome(
        theta,
        outcome.stop.name.lower(),
        _stop_message(outcome),
        success,
        outcome.epochs,
        History(tuple(outcome.train_history), tuple(outcome.val_history)),
        predict=predict,
        settings={"optimizer_options": effective_options(optimizer)},
    )


@contextlib.contextmanager
def _seeded_randomness(seed: int, device: Any) -> Iterator[None]:
    """Random layers (dropout) draw from torch's global generator: inside, it starts from the fit's
    seed, so that the same seed trains the same network; afterwards the user's own state is back."""
    import torch

    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device.index or 0] if cuda else []):
        if cuda:
            torch.cuda.manual_seed(seed)
        torch.default_generator.manual_seed(seed)
        yield


def effective_options(optimizer: Any) -> dict[str, Any]:
    """Every hyperparameter ``optimizer`` runs with (its ``defaults``, those given included), as
    numbers, text, flags or lists of numbers: what a result records."""
    def plain(value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value.item() if hasattr(value, "item") and getattr(value, "numel", lambda: 0)() == 1 else value

    recorded = {}
    for key, value in optimizer.defaults.items():
        value = plain(value)
        if value is None or isinstance(value, (bool, int, float, str)) or (isinstance(value, list) and all(isinstance(v, (int, float)) for v in value)):
            recorded[key] = value
    return recorded


def _fingerprint(problem: Problem, optimizer: Any, options: FitOptions) -> dict[str, Any]:
    """What must match between a checkpoint and the run that resumes it."""
    return {
        "model": problem.model.description,
        "parameters": list(getattr(problem.model, "param_names", ())),
        "n_train": problem.train.n_rows,
        "dtype": options.dtype,
        "data": _digest(problem),  # a SHA-256 of the data
        "optimizer": type(optimizer).__name__,
        "optimizer_options": {k: repr(v) for k, v in sorted(options.optimizer_options.items())},
        "loss": f"{options.loss} (scale {options.loss_scale!r})",
        "scale": options.scale,
        "seed": options.seed,
        "batch_size": options.batch_size,
        "plateau": options.plateau,  # the learning-rate schedule changes the path
    }


def _digest(problem: Problem) -> str:
    """SHA-256 of the training and validation data (inputs, targets, weights), as the fit sees them."""
    import hashlib

    digest = hashlib.sha256()
    for part in (problem.train, problem.val):
        if part is None:
            continue
        for name in sorted(part.inputs):
            digest.update(name.encode())
            digest.update(part.inputs[name].detach().cpu().numpy().tobytes())
        for values in (part.y, part.weights):
            digest.update(b"-" if values is None else values.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def _checkpoint_writer(path: str, fingerprint: dict[str, Any]) -> Any:
    """A callback that saves the loop's state atomically to ``path``."""
    import torch

    from gradfit.io import atomic_path

    def save(state: dict[str, Any]) -> None:
        with atomic_path(path) as temporary:
            torch.save({"gradfit_checkpoint": 1, "fingerprint": fingerprint, "state": state}, temporary)

    return save


def load_checkpoint(path: str, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Read a checkpoint written by ``checkpoint=`` and check it belongs to this fit.

    Raises
    ------
    OptionError
        If the file is missing, not a gradfit checkpoint, or was written for a different fit.
    """
    import torch

    try:
        record = torch.load(path, weights_only=True, map_location="cpu")  # restoring moves each part to the fit's device
    except FileNotFoundError:
        raise OptionError(f"checkpoint '{path}' not found — check the path or drop --resume") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise OptionError(f"'{path}' is not a gradfit checkpoint ({type(exc).__name__}) — drop --resume") from None
    if not isinstance(record, dict) or record.get("gradfit_checkpoint") != 1:
        raise OptionError(f"'{path}' is not a gradfit checkpoint — drop --resume")
    different = [k for k, v in fingerprint.items() if record["fingerprint"].get(k) != v]
    if different:
        raise OptionError(
            f"checkpoint '{path}' was written for a different fit ({different[0]}: "
            f"{record['fingerprint'].get(different[0])!r} vs {fingerprint[different[0]]!r}) — resume with the same settings"
        )
    return record["state"]


def _check_resumed_epochs(state: dict[str, Any], epochs: int, path: str) -> None:
    """A run resumed with fewer epochs than its checkpoint has done would do nothing."""
    if state["epoch"] >= epochs:
        raise OptionError(
            f"checkpoint '{path}' is at epoch {state['epoch']}, and this run stops at epoch {epochs} — "
            f"give more epochs than {state['epoch']} to continue it"
        )


def _objective(problem: Problem, scale: bool) -> ParametricObjective | ModuleObjective:
    from gradfit.losses import get_loss

    loss_fn = get_loss(problem.loss, problem.loss_scale)
    if isinstance(problem.model, ModuleModel):
        return ModuleObjective(problem.model, problem.train, problem.val, loss_fn, scale)
    return ParametricObjective(
        problem.model,
        problem.train,
        problem.val,
        loss_fn,
        problem.theta0,
        problem.free,
        problem.lower,
        problem.upper,
        scale,
    )


#: early stopping's message when the training loss was monitored
EARLY_STOPPED_ON_TRAINING = "training loss stopped improving (there is no validation set); restored the parameters of the best epoch"


def _stop_message(outcome: TrainOutcome) -> str:
    without_validation = outcome.stop is StopReason.EARLY_STOPPED and not outcome.val_history
    message = EARLY_STOPPED_ON_TRAINING if without_validation else outcome.stop.value
    if outcome.stop in (StopReason.EARLY_STOPPED, StopReason.DIVERGED, StopReason.INTERRUPTED):
        message += f" (epoch {outcome.best_epoch} of {outcome.epochs})"
    return message
